"""The `linkd` command line: parse arguments, read files, call the runtime, print.

Commands follow `docker compose`: `up`, `down`, `ps`, `logs`, `exec`, `inspect`,
`config`. A stack is named by `-p NAME`, else by its stack file (`-f FILE`, else the
first of linkd.yaml, compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml
in the current directory), else it is the only stack that is up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dnslib
import yaml

from linkd import cli_images, dns, firewall, ipam, names, spec
from linkd import state as state_codec
from linkd.conventions import load_conventions
from linkd.dns_zone import build_zone, forwards_for, requester_of
from linkd.errors import LinkdError, NotFoundError, SpecError
from linkd.health import summary_of as health_summary
from linkd.model import Stack
from linkd.plan import StackPlan, realize
from linkd.runtime import api, images, process, store, supervisor
from linkd.runtime import logs as log_files
from linkd.runtime.client import Client, DaemonError, ensure_daemon
from linkd.runtime.daemon import socket_path as daemon_socket
from linkd.runtime.netlink import Kernel
from linkd.runtime.progress import Progress
from linkd.state import StackState, to_plain

DEFAULT_FILES = (
    "linkd.yaml",
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        code = args.handler(args)
    except SpecError as exc:
        print(f"linkd: invalid stack file:\n{exc}", file=sys.stderr)
        code = exc.exit_code
    except LinkdError as exc:
        print(f"linkd: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linkd", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, handler: Any, help: str, *, short_file: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        flags = ("-f", "--file") if short_file else ("--file",)
        p.add_argument(*flags, help="stack file (default: linkd.yaml, compose.yaml, ...)")
        p.add_argument("-p", "--project-name", dest="project", help="stack name")
        p.set_defaults(handler=handler)
        return p

    up = command("up", cmd_up, "create and start the stack, and supervise it")
    up.add_argument("-d", "--detach", action="store_true", help="run in the background")
    up.add_argument("--abort-on-container-exit", action="store_true",
                    help="take the stack down when any container exits")
    up.add_argument("--exit-code-from", metavar="SERVICE",
                    help="take the stack down when SERVICE exits and exit with its code")
    up.add_argument("--no-attach", action="store_true", help="do not print container output")
    up.add_argument("--supervisor", action="store_true", help=argparse.SUPPRESS)

    daemon = sub.add_parser("daemon", help="run the linkd daemon (the HTTP API) in the foreground",
                            description="run the linkd daemon (the HTTP API) in the foreground")
    daemon.add_argument("--socket", help="unix socket (default: $LINKD_SOCKET or "
                        "/run/linkd/linkd.sock)")
    daemon.add_argument("--tcp", metavar="HOST:PORT",
                        help="also listen on TCP, loopback only; needs --token-file")
    daemon.add_argument("--token-file", help="file holding the bearer token for --tcp")
    daemon.set_defaults(handler=cmd_daemon)

    down = command("down", cmd_down, "stop and remove the stack's containers and networks")
    down.add_argument("--forget", action="store_true",
                      help="also forget the stack's subnets and addresses (its lease)")
    ps = command("ps", cmd_ps, "list containers")
    ps.add_argument("-a", "--all", action="store_true", help="every stack that is up")
    # `-f` means follow for `logs`, as in docker compose.
    logs = command("logs", cmd_logs, "show a service's or container's output", short_file=False)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("service", help="service (all replicas) or container (web-2)")
    ex = command("exec", cmd_exec, "run a command inside a running container")
    ex.add_argument("--index", type=int, default=1, help="replica (default 1)")
    ex.add_argument("service", help="service or container (web-2)")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="-- command and arguments")
    inspect = command("inspect", cmd_inspect, "show a container's plan and state as JSON")
    inspect.add_argument("target", nargs="?", help="service or container; omit for the stack")
    command("config", cmd_config, "validate the stack file and print it normalized")
    env = command("env", cmd_env, "the environment a service's containers get, and why")
    env.add_argument("service", help="service (its first replica) or container (web-2)")
    env.add_argument("--host", action="store_true",
                     help="only the link variables, for a process on the host")
    dns = command("dns", cmd_dns, "what a container's DNS lookup of NAME gives, and why")
    dns.add_argument("name")
    dns.add_argument("--from", dest="asker", required=True, metavar="SERVICE",
                     help="the service (its first replica) or container that asks")
    dns.add_argument("--type", dest="qtype", default="A", help="record type (default A)")
    port = command("port", cmd_port, "the host address and port a container port is published on")
    port.add_argument("--index", type=int, default=1, help="replica (default 1)")
    port.add_argument("service")
    port.add_argument("port", help="container port, PORT or PORT/PROTO (default tcp)")
    cli_images.add_parser(sub)
    return parser


# -- loading stacks -------------------------------------------------------------------


def _stack_file(path: str | None) -> Path | None:
    if path is not None:
        return Path(path)
    for name in DEFAULT_FILES:
        if Path(name).exists():
            return Path(name)
    return None


def load_stack(path: str | None, project: str | None) -> tuple[Stack, Path]:
    file = _stack_file(path)
    if file is None:
        raise NotFoundError(
            f"no stack file: pass -f FILE or create one of {', '.join(DEFAULT_FILES)}"
        )
    try:
        text = file.read_text()
    except OSError as exc:
        raise NotFoundError(f"cannot read stack file {file}: {exc.strerror}") from exc
    base = file.resolve().parent

    def read_text(name: str) -> str:
        return (base / name).read_text()

    stack = spec.parse_stack(
        text,
        source=str(file),
        project_name=project,
        default_project=base.name,
        host_env=dict(os.environ),
        read_text=read_text,
    )
    for warning in stack.warnings:
        print(f"linkd: warning: {file}: {warning}", file=sys.stderr)
    return stack, file


def dry_plan(stack: Stack, file: Path) -> StackPlan:
    """The stack planned on subnets picked as if nothing else were up: it proves the
    links and conventions render (so `up -d` fails here, not in the background), and
    shows provisional addresses for a stack that is not up."""
    base = file.resolve().parent
    subnets = ipam.pick_subnets(stack.networks, [])
    stack = images.resolve_stack(stack, base, load=False)  # images already in the store
    return realize(
        stack, subnets, workdir=str(base), conventions=load_conventions(stack, base)
    )


def load_state(name: str) -> StackState:
    """The stack's state: from the daemon when it runs the stack, else from its file."""
    client = Client()
    if store.supervised(name) and client.available():
        try:
            plain = client.request("GET", f"/v1/stacks/{name}")
        except DaemonError as exc:
            if exc.status != 404:
                raise
        else:
            return state_codec.from_plain(StackState, plain)
    return store.load(name)


def stack_name(args: argparse.Namespace) -> str:
    if args.project:
        return str(args.project).lower()
    if args.file or _stack_file(None) is not None:
        return load_stack(args.file, None)[0].name
    up = store.stacks()
    if len(up) == 1:
        return up[0]
    if not up:
        raise NotFoundError("no stack is up")
    raise NotFoundError(f"several stacks are up ({', '.join(up)}); name one with -p")


# -- commands ---------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    stack, file = load_stack(args.file, args.project)
    dry_plan(stack, file)
    print(yaml.safe_dump(spec.stack_to_dict(stack), sort_keys=False), end="")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """`NAME=VALUE  # where it comes from`, values quoted for a shell."""
    plan: StackPlan | None = None
    if args.file is None and (args.project or _stack_file(None) is None):
        plan = load_state(stack_name(args)).plan
    else:
        stack, file = load_stack(args.file, args.project)
        if stack.name in store.stacks():
            plan = load_state(stack.name).plan
        else:
            plan = dry_plan(stack, file)
            print(f"linkd: stack {stack.name} is not up: addresses are provisional",
                  file=sys.stderr)
    container = plan.container(_containers_of(plan, args.service)[0])
    sources = {name: f"{conv}, link {alias}" for name, conv, alias in container.env_sources}
    for name, value in container.env:
        why = sources.get(name)
        if args.host and why is None:
            continue
        print(f"{name}={shlex.quote(value)}  # {why or 'environment'}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    stack, file = load_stack(args.file, args.project)
    dry_plan(stack, file)
    if args.detach and not args.supervisor:
        return _up_detached(stack, file)
    abort = frozenset(s.name for s in stack.services) if args.abort_on_container_exit else None
    if args.exit_code_from:
        if args.exit_code_from not in {s.name for s in stack.services}:
            raise NotFoundError(f"--exit-code-from: no service {args.exit_code_from} in {file}")
        abort = frozenset({args.exit_code_from}) if abort is None else abort
    options = supervisor.UpOptions(abort or frozenset(), args.exit_code_from)
    progress = Progress(sys.stdout, live=sys.stdout.isatty() and not args.supervisor)
    return asyncio.run(_up(stack, str(file.resolve()), options, progress, not args.no_attach))


async def _up(
    stack: Stack, source: str, options: supervisor.UpOptions, progress: Progress, attach: bool
) -> int:
    stop_logs = asyncio.Event()
    followers: list[asyncio.Task[None]] = []

    def on_up(sup: supervisor.Supervisor) -> None:
        progress.finish()
        assert sup.plan is not None
        print(_table(store.load(stack.name)), flush=True)
        if attach:
            sources = [(c.name, store.log_path(stack.name, c.name)) for c in sup.plan.containers]
            width = max(len(name) for name, _ in sources)

            def emit(name: str, line: str) -> None:
                print(f"{name:<{width}} | {line}", flush=True)

            followers.append(asyncio.create_task(log_files.follow(sources, emit, stop_logs)))

    async def before_down() -> None:
        # One more poll of the log files, so the last words of a container that ended
        # the stack (--exit-code-from) come before the lines about stopping the others.
        await asyncio.sleep(log_files.POLL * 2)

    try:
        return await supervisor.run(
            stack, source, options, progress.event, on_up=on_up, before_down=before_down
        )
    finally:
        stop_logs.set()
        for task in followers:
            await task
        progress.finish()


def _up_detached(stack: Stack, file: Path) -> int:
    """Hand the stack to the daemon (starting one if none runs); return once it is up.

    The daemon gets the stack normalized (`linkd config`'s form: variables interpolated,
    env files read), so it needs nothing of this shell's environment.
    """
    client = ensure_daemon(Client())
    body = {
        "name": stack.name,
        "spec": spec.stack_to_dict(stack),
        "directory": str(file.resolve().parent),
    }
    try:
        # PUT: a stack the daemon already runs changes to the file, only where it differs.
        answer = client.request("PUT", f"/v1/stacks/{stack.name}", body)
    except DaemonError as exc:
        for line in exc.progress:
            print(line, file=sys.stderr)
        raise
    changes = answer.get("changes") if isinstance(answer, dict) else None
    if changes and any(changes.get(k) for k in ("added", "changed", "removed")):
        print("updated: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in changes.items() if v))
    elif changes is not None:
        print("no change: the stack already runs as the file says")
    print(_table(load_state(stack.name)))
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s linkd: %(message)s",
                        stream=sys.stderr)
    tcp = None
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            raise SpecError([("--tcp", None, f"expected HOST:PORT, got {args.tcp}")])
        tcp = (host.strip("[]"), int(port))
    token = None
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    path = Path(args.socket) if args.socket else daemon_socket()
    asyncio.run(api.serve(path, tcp=tcp, token=token))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    name = stack_name(args)
    try:
        return _down(name)
    finally:
        if args.forget:
            store.forget_lease(name)


def _down(name: str) -> int:
    client = Client()
    if store.supervised(name) and client.available():
        hosted = {s["name"] for s in client.request("GET", "/v1/stacks")}
        if name in hosted:
            client.request("DELETE", f"/v1/stacks/{name}")
            print(f"stack {name} removed")
            return 0
    if not store.supervised(name):
        leftovers = Kernel.netns_names(names.netns_prefix(name))
        if not store.stack_dir(name).exists() and not leftovers:
            print(f"stack {name} is not up")
            return 0
        asyncio.run(supervisor.down_unsupervised(name, Progress(sys.stdout, live=False).event))
        return 0
    state = store.load(name)
    if state.supervisor_pid is not None:
        if _is_daemon(state.supervisor_pid):
            raise LinkdError(
                f"stack {name} is run by the linkd daemon (pid {state.supervisor_pid}), "
                f"which does not answer on {daemon_socket()}; stopping it would take every "
                "stack down: check its log, or stop it yourself if that is what you want"
            )
        os.kill(state.supervisor_pid, 15)
    grace = sum(c.stop_grace_period for c in state.plan.containers) + 30
    deadline = time.monotonic() + grace
    while store.supervised(name):
        if time.monotonic() > deadline:
            raise LinkdError(f"stack {name}: supervisor {state.supervisor_pid} did not stop")
        time.sleep(0.05)
    print(f"stack {name} removed")
    return 0


def _is_daemon(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[1:4] == [b"-m", b"linkd", b"daemon"]


def cmd_ps(args: argparse.Namespace) -> int:
    stacks = store.stacks() if args.all else [stack_name(args)]
    if not stacks:
        print("no stack is up")
    for name in stacks:
        print(_table(load_state(name)))
    return 0


def _table(state: StackState) -> str:
    rows = [("STACK", "SERVICE", "CONTAINER", "ADDRESSES", "STATE")]
    for container in state.plan.containers:
        current = state.container(container.name)
        addresses = ", ".join(
            f"{i.network}={i.address}" + (f",{i.address6}" if i.address6 else "")
            for i in container.interfaces
        )
        status: str = current.status
        if current.exit_code is not None and status != "running":
            status += f" ({current.exit_code})"
        if status == "running" and current.health is not None:
            status += " " + health_summary(current.health)  # as docker ps: (healthy)
        if current.restarts:
            status += f" restarts={current.restarts}"
        rows.append((state.plan.stack, container.service, container.name, addresses, status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def _containers(state: StackState, target: str) -> list[str]:
    return _containers_of(state.plan, target)


def _containers_of(plan: StackPlan, target: str) -> list[str]:
    if any(c.name == target for c in plan.containers):
        return [target]
    found = [c.name for c in plan.of_service(target)]
    if not found:
        raise NotFoundError(
            f"stack {plan.stack} has no service or container {target}; "
            f"it has {', '.join(c.name for c in plan.containers)}"
        )
    return found


def cmd_logs(args: argparse.Namespace) -> int:
    name = stack_name(args)
    state = load_state(name)
    sources = [(c, store.log_path(name, c)) for c in _containers(state, args.service)]
    width = max(len(c) for c, _ in sources)

    def emit(container: str, line: str) -> None:
        prefix = f"{container:<{width}} | " if len(sources) > 1 else ""
        print(f"{prefix}{line}", flush=True)

    stop = asyncio.Event()
    if not args.follow:
        stop.set()
    try:
        asyncio.run(log_files.follow(sources, emit, stop))
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SpecError([("exec", None, "give the command after --, e.g. linkd exec web -- sh")])
    name = stack_name(args)
    state = load_state(name)
    targets = _containers(state, args.service)
    target = targets[0] if len(targets) == 1 else f"{args.service}-{args.index}"
    if target not in targets:
        raise NotFoundError(f"service {args.service} has no replica {args.index}")
    current = state.container(target)
    if current.status != "running" or current.init_pid is None:
        raise LinkdError(f"container {target} is not running ({current.status})")
    container = state.plan.container(target)
    spec_path = store.container_dir(name, target) / f"exec-{os.getpid()}.spec"
    process.write_exec_spec(
        str(spec_path), tuple(argv), container.env, container.working_dir, container.user,
        name=target,
    )
    try:
        return subprocess.call(process.exec_argv(current.init_pid, str(spec_path)))
    finally:
        spec_path.unlink(missing_ok=True)


def cmd_port(args: argparse.Namespace) -> int:
    state = load_state(stack_name(args))
    number, _, proto = str(args.port).partition("/")
    if not number.isdigit():
        raise SpecError([("port", None, f"expected PORT or PORT/PROTO, got {args.port!r}")])
    try:
        found = firewall.port_of(state.plan, args.service, int(number), proto or "tcp",
                                 args.index)
    except KeyError as exc:
        raise NotFoundError(f"stack {state.plan.stack} has no container {exc.args[0]}") from None
    if not found:
        raise NotFoundError(f"no public port {args.port} published for {args.service}")
    print("\n".join(found))
    return 0


def cmd_dns(args: argparse.Namespace) -> int:
    state = load_state(stack_name(args))
    asker = state.plan.container(_containers(state, args.asker)[0])
    requester = requester_of(state.plan.stack, asker)
    # The same snapshot the running server holds: without the containers that stopped.
    gone = [c.name for c in state.containers if c.status in ("exited", "failed")]
    zone = build_zone([state.plan.without(gone)], domain=state.plan.dns.domain)
    for line in dns.explain(zone, args.name, requester):
        print(line)
    try:
        query = dnslib.DNSRecord.question(args.name, args.qtype.upper()).pack()
    except Exception as exc:  # dnslib raises plain exceptions for unknown types
        raise SpecError([("dns --type", None, f"unknown record type: {exc}")]) from None
    reply = dns.answer(zone, query, requester, max_size=None)
    if isinstance(reply, dns.Answered):
        parsed = dnslib.DNSRecord.parse(reply.data)
        print(f"answer: {dnslib.RCODE[parsed.header.rcode]}")
        for record in parsed.rr:
            print(f"  {record.rname} {record.ttl} {dnslib.QTYPE[record.rtype]} {record.rdata}")
    elif forwards_for(asker):
        print("answer: forwarded to the upstream resolvers (not a name of this stack)")
    else:
        print("answer: REFUSED (not a name of this stack, and the container has no route out)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    state = load_state(stack_name(args))
    if args.target is None:
        print(json.dumps(to_plain(state), indent=2))
        return 0
    result = [
        {"plan": to_plain(state.plan.container(c)), "state": to_plain(state.container(c))}
        for c in _containers(state, args.target)
    ]
    print(json.dumps(result, indent=2))
    return 0
