"""The I/O shell: the only code that touches the kernel, processes, files and the clock.

Split along its seams:

- `kernel`: netlink (the one module that imports pyroute2) and its namespace helper,
  nftables over netlink, routes, link events, forwarding, the firewall, cgroups;
- `containers`: starting and confining processes (the standalone `shim` and
  `health_agent`, run by path), their root filesystems, health checks and logs;
- `images`: the OCI image store, its layers, and path resolution beneath a root;
- `stack`: one stack's life: the supervisor and its parts (planner, containers,
  publisher, recovery, teardown), its state on disk, its DNS server, the conventions it
  names read from their files;
- `daemon`: the process hosting every stack and its HTTP API;
- `cluster`: a daemon's membership in a cluster of nodes (etcd), for `--cluster` only.

It may import the pure packages and the shared modules (`linkd.errors`, `linkd.paths`,
`linkd.files`); never `linkd.cli` or `linkd.client`.
"""
