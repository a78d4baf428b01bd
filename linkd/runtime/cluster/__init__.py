"""The node's side of a cluster of linkd nodes sharing one etcd (docs/cluster.md).

- `etcd`: the calls to etcd a node makes; the one module that imports aetcd, and only a
  daemon started with `--cluster` imports it;
- `membership`: the node's record under its lease, kept alive, lost and regained;
- `registry`: overlay networks' VNIs, subnets and addresses, claimed cluster-wide;
- `endpoints`: this node's endpoint records published under its lease, everyone's
  watched into a cache.

What records look like and where they live is pure data, in linkd.core.cluster,
linkd.core.cluster_ipam and linkd.core.cluster_endpoints.
"""
