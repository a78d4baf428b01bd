"""Every key of the Compose specification (a service's and the top level's), and what
linkd does with it: the one table behind the parser's warnings for keys it does not
implement and behind the README's table (tests/unit/test_compose_keys.py holds the two
together, and the list against the specification's).

Each key is one of:

- `supported`: read with Compose's meaning;
- `differs`: read, with a difference the note says;
- `ignored`: accepted with one warning that says what linkd does instead;
- `refused`: an error that says why and what to do.

A key that is none of these is unknown: a typo, warned with the closest known key.
"""

from __future__ import annotations

from typing import Literal

Handling = Literal["supported", "differs", "ignored", "refused"]

_NOT_YET = "linkd does not implement it yet"

SERVICE: dict[str, tuple[Handling, str]] = {
    "annotations": ("ignored", "OCI annotations: linkd's own launcher has no use for them"),
    "attach": ("ignored", "every service's output is attached in the foreground"),
    "blkio_config": ("ignored", "no block I/O limits (cgroups io is not set up)"),
    "build": ("differs", "built with buildah into linkd's store (under `image:`, else "
                         "`<project>-<service>`) when missing, by `linkd build` and `up "
                         "--build`; no remote context; docs/images.md lists its keys"),
    "cap_add": ("supported", ""),
    "cap_drop": ("supported", ""),
    "cgroup": ("ignored", "every container has a cgroup namespace of its own (private)"),
    "cgroup_parent": ("ignored", "containers live under linkd's own cgroup"),
    "command": ("supported", ""),
    "configs": ("supported", "a read-only file at the target (default /NAME)"),
    "container_name": ("differs", "the container's name within its stack (stacks scope "
                                  "names), also its hostname and DNS name"),
    "cpu_count": ("ignored", "Windows only; use `cpus`"),
    "cpu_percent": ("ignored", "Windows only; use `cpus`"),
    "cpu_period": ("ignored", "use `cpus`"),
    "cpu_quota": ("ignored", "use `cpus`"),
    "cpu_rt_period": ("ignored", "no real-time scheduling"),
    "cpu_rt_runtime": ("ignored", "no real-time scheduling"),
    "cpu_shares": ("ignored", "use `cpus`"),
    "cpus": ("supported", ""),
    "cpuset": ("ignored", "no CPU pinning; use `cpus`"),
    "credential_spec": ("ignored", "Windows only"),
    "depends_on": ("supported", ""),
    "deploy": ("differs", "`replicas`, `resources.limits` and `placement.constraints` (a "
                          "cluster places by them; one daemon runs every service itself); "
                          "the other Swarm keys are warned"),
    "develop": ("ignored", "no `watch`: linkd runs what the file says"),
    "device_cgroup_rules": ("ignored", "no devices cgroup"),
    "devices": ("supported", ""),
    "dns": ("differs", "linkd's DNS (127.0.0.11) stays the resolver, answering the "
                       "stack's names, and forwards the container's other names to these "
                       "servers (on the host's network: its resolv.conf's servers)"),
    "dns_opt": ("supported", "in its resolv.conf; one given replaces linkd's `ndots:0`"),
    "dns_search": ("supported", ""),
    "domainname": ("supported", ""),
    "driver_opts": ("ignored", "no network drivers"),
    "entrypoint": ("supported", ""),
    "env_file": ("supported", ""),
    "environment": ("supported", ""),
    "expose": ("supported", ""),
    "extends": ("differs", "as Compose (same file, or `file:`); `up -d` reads that file "
                           "only beneath the stack's directory"),
    "external_links": ("ignored", "join the other stack's network instead"),
    "extra_hosts": ("differs", "in the hosts file, and answered by linkd's DNS to that "
                               "container too; `host-gateway` is the host's side of its "
                               "first network"),
    "gpus": ("ignored", "no GPU access"),
    "group_add": ("supported", "names from the image's /etc/group (the host's for a host "
                               "command), or numbers"),
    "healthcheck": ("supported", ""),
    "hostname": ("supported", ""),
    "image": ("supported", ""),
    "init": ("differs", "always on: linkd's init is every container's PID 1"),
    "ipc": ("ignored", "every container has an IPC namespace of its own"),
    "isolation": ("ignored", "Windows only"),
    "label_file": ("supported", "KEY=VALUE lines, as an env file's; `labels:` wins"),
    "labels": ("supported", "shown by `linkd inspect`, filtered by `linkd ps --filter "
                            "label=KEY[=VALUE]`"),
    "links": ("supported", ""),
    "logging": ("ignored", "each container logs to a file of its own (`linkd logs`)"),
    "mac_address": ("supported", "its first network's interface (or "
                                 "`networks.N.mac_address`)"),
    "mem_limit": ("supported", ""),
    "mem_reservation": ("ignored", "use `mem_limit`"),
    "mem_swappiness": ("ignored", "use `mem_limit`"),
    "memswap_limit": ("ignored", "use `mem_limit`"),
    "models": ("ignored", "no model runner"),
    "network_mode": ("differs", "`service:X` and `container:NAME` share that namespace (X "
                                "restarting keeps it: the namespace is linkd's, so the "
                                "sharer is not restarted); `host` is warned (no linkd DNS); "
                                "`bridge` is the stack's default network"),
    "networks": ("supported", ""),
    "oom_kill_disable": ("ignored", "the kernel's OOM killer applies"),
    "oom_score_adj": ("ignored", "the kernel's OOM score applies"),
    "pid": ("ignored", "every container has a PID namespace of its own"),
    "pids_limit": ("supported", ""),
    "platform": ("differs", "checked against the image's: linkd runs images as they are, "
                            "without emulation"),
    "ports": ("supported", ""),
    "post_start": ("ignored", "no lifecycle hooks"),
    "pre_stop": ("ignored", "no lifecycle hooks"),
    "privileged": ("supported", ""),
    "profiles": ("supported", "active ones from `--profile` or COMPOSE_PROFILES"),
    "provider": ("ignored", "no providers"),
    "pull_policy": ("differs", "`build` builds at every `up`; an image from a registry is "
                               "pulled when missing (`always`: at every `up`, `never`: not "
                               "at all, `daily`, `weekly`, `every_<duration>`: also once its "
                               "last pull is that old), a built one built when missing"),
    "pull_refresh_after": ("ignored", "`pull_policy: every_<duration>` says when to pull "
                                      "again"),
    "read_only": ("supported", ""),
    "restart": ("supported", ""),
    "runtime": ("ignored", "choose with `x-linkd: runtime: runc | linkd`"),
    "scale": ("supported", ""),
    "secrets": ("supported", "a read-only file at /run/secrets/NAME (or the target)"),
    "security_opt": ("supported", ""),
    "shm_size": ("ignored", "not applied"),
    "stdin_open": ("ignored", "containers run without stdin; `linkd exec -it` for a shell"),
    "stop_grace_period": ("supported", ""),
    "stop_signal": ("supported", ""),
    "storage_opt": ("ignored", "no storage driver options"),
    "sysctls": ("differs", "namespaced ones only (`net.*` with a network namespace of its "
                           "own, `kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`); "
                           "others refused, as Docker refuses them"),
    "tmpfs": ("differs", "a host command's target must exist on the host (linkd creates "
                         "nothing there); Docker's defaults noexec, nosuid, nodev"),
    "tty": ("ignored", "containers run without a terminal; `linkd exec -it` for a shell"),
    "ulimits": ("supported", ""),
    "use_api_socket": ("ignored", "no Docker API inside containers"),
    "user": ("supported", ""),
    "userns_mode": ("ignored", "no user namespaces"),
    "uts": ("ignored", "every container has a UTS namespace of its own"),
    "volumes": ("differs", "bind mounts, named and anonymous volumes (kept under "
                           "/var/lib/linkd/volumes), tmpfs; SELinux `z`/`Z`, consistency "
                           "and propagation flags are accepted and have no effect; an "
                           "anonymous volume is named after its stack, container and path, "
                           "so `down` then `up` finds it again (`down -v` removes it)"),
    "volumes_from": ("supported", "a service, or `container:NAME` of the same stack"),
    "working_dir": ("supported", ""),
}

TOP_LEVEL: dict[str, tuple[Handling, str]] = {
    "version": ("supported", "obsolete, as in Compose: read and not used"),
    "name": ("supported", ""),
    "include": ("differs", "as Compose; `up -d` reads the files only beneath the stack's "
                           "directory"),
    "services": ("supported", ""),
    "networks": ("differs", "`external: true` joins a network another linkd stack made, "
                            "by its `name:` (a network made outside linkd cannot be "
                            "joined); `driver: overlay` spans the nodes of a cluster "
                            "daemon (VXLAN), elsewhere it is a bridge on this host (said "
                            "by `up`); `attachable`, `labels` and "
                            "`driver_opts` are warned and ignored"),
    "volumes": ("differs", "every volume is a directory (the local driver); other "
                           "drivers and `driver_opts` other than a bind are warned"),
    "secrets": ("differs", "`file:` and `environment:`; `external:` ones live in a Swarm's "
                           "store: warned, and services start without them"),
    "configs": ("differs", "`file:`, `environment:` and `content:`; `external:` ones live "
                           "in a Swarm's store: warned, and services start without them"),
    "models": ("ignored", "no model runner"),
}


def ignored(table: dict[str, tuple[Handling, str]]) -> dict[str, str]:
    """The warning for each key of `table` that linkd accepts and does not use."""
    return {
        key: f"not supported by linkd, ignored: {note}"
        for key, (handling, note) in table.items()
        if handling == "ignored"
    }
