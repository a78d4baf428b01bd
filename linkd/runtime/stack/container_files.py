"""The files a container gets from the host: /etc/hosts, /etc/hostname and
/etc/resolv.conf bind-mounted over its own, the live bindings under /run/linkd, and the
process spec that tells the shim where all of them are.

All of a container's files live in its run directory (`store.container_dir`); this
module is the one place that names them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from linkd.core import bindings
from linkd.core.hosts import hosts_file, resolv_conf
from linkd.core.plan import ContainerPlan, StackPlan
from linkd.runtime.containers import process
from linkd.runtime.stack import store

HOST_HOSTS = "/etc/hosts"
HOST_RESOLV_CONF = "/etc/resolv.conf"


def write_etc_files(directory: Path, plan: StackPlan, container: ContainerPlan) -> None:
    """The files bind-mounted over /etc/hosts, /etc/hostname and /etc/resolv.conf: they
    follow from the plan alone, so nothing else writes them meanwhile (the supervisor
    writes them in a thread, beside the container's network setup)."""
    directory.mkdir(parents=True, exist_ok=True)
    hosts, resolv = _hosts_and_resolver(plan, container)
    store.write_atomic(directory / "hosts", hosts.encode(), durable=False)
    store.write_atomic(directory / "hostname", f"{container.hostname}\n".encode(), durable=False)
    store.write_atomic(directory / "resolv.conf", resolv.encode(), durable=False)


def _hosts_and_resolver(plan: StackPlan, container: ContainerPlan) -> tuple[str, str]:
    """Its hosts file and resolv.conf. A container on the host's network gets the host's
    (no linkd DNS there), with its extra_hosts; one sharing another container's
    namespace gets that one's hosts file (Docker shares the very file)."""
    if container.network_mode == "host":
        hosts = _host_file(HOST_HOSTS) + "".join(
            f"{address}\t{host}\n" for host, address in container.added_hosts)
        return hosts, resolv_conf(container, _host_file(HOST_RESOLV_CONF))
    shared = next((c for c in plan.containers
                   if c.owns_netns() and c.netns == container.netns), container)
    return hosts_file(plan, shared), resolv_conf(container)


def _host_file(path: str) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return text if not text or text.endswith("\n") else text + "\n"


def write_bindings(
    directory: Path, plan: StackPlan, container: ContainerPlan, running: Collection[str],
    elsewhere: Sequence[ContainerPlan] = (),
) -> None:
    """/run/linkd/links.env and links.json inside the container, replaced atomically
    (`elsewhere`: the stack's containers running on other nodes)."""
    target = directory / "bindings"
    target.mkdir(parents=True, exist_ok=True)
    store.write_atomic(target / bindings.ENV_FILE, bindings.links_env(container).encode(),
                       durable=False)
    document = bindings.links_json(plan, container, running, elsewhere)
    store.write_atomic(target / bindings.JSON_FILE, document.encode(), durable=False)


def process_spec(
    directory: Path, container: ContainerPlan, *, keep_dirs: tuple[str, ...] = ()
) -> process.ProcessSpec:
    """How the shim runs `container`, with its files in `directory`."""
    return process.ProcessSpec(
        name=container.name,
        netns=container.netns,
        hostname=container.hostname,
        argv=container.argv,
        env=container.env,
        working_dir=container.working_dir,
        user=container.user,
        group_add=container.group_add,
        bind_files=(
            (str(directory / "hosts"), "/etc/hosts"),
            (str(directory / "hostname"), "/etc/hostname"),
            (str(directory / "resolv.conf"), "/etc/resolv.conf"),
        ),
        log_path=str(directory / "log"),
        run_dir=str(directory),
        keep_dirs=keep_dirs,
        bind_dirs=((str(directory / "bindings"), bindings.DIRECTORY),),
        rlimits=container.limits.ulimits,
        tmpfs=container.tmpfs,
        domainname=container.net.domainname,
        sysctls=container.net.sysctls,
    )


def under_tmp(directory: str) -> tuple[str, ...]:
    """The stack's directory, if it lies under /tmp, which every container has privately.

    Containers run commands from the host's filesystem in that directory by default, so
    it stays visible inside; the rest of /tmp does not.
    """
    return (directory,) if directory.startswith("/tmp/") else ()
