"""The commands that read, and `up -d`: `config`, `env`, `ps`, `logs`, `port`, `dns`,
`inspect`, `graph`, and `up -d`, which hands the stack file to the daemon.

They answer at once: each imports, inside the command, the pure code it uses, and none
imports the runtime's daemon, supervisor or netlink (pyproject's import contracts;
tests/unit/test_cli_imports.py checks what a run really imports). They talk to the
daemon over its unix socket (linkd.client.api), and `ps` prints the daemon's JSON as it
comes, without decoding it into the state's classes. `up -d` sends the stack files' texts
with what loading them needs (linkd.loader.StackSource), and the daemon loads them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from linkd import paths
from linkd.cli.stacks import (
    containers,
    containers_of,
    dry_plan,
    find_file,
    load_stack,
    load_state,
    plain_state,
    print_warnings,
    read_source,
    stack_name,
)
from linkd.client.api import Client, DaemonError, ensure_daemon
from linkd.errors import NotFoundError, SpecError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the 3 ms import (see linkd/__init__)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from linkd.core.plan import StackPlan


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from linkd.spec.dump import stack_to_dict

    stack, file = load_stack(args.file, args.project, args.env_file, args.profile)
    dry_plan(stack, file)
    print(yaml.safe_dump(stack_to_dict(stack), sort_keys=False), end="")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """`NAME=VALUE  # where it comes from`, values quoted for a shell."""
    import shlex

    plan: StackPlan | None = None
    if args.file is None and (args.project or find_file(None) is None):
        plan = load_state(stack_name(args)).plan
    else:
        stack, file = load_stack(args.file, args.project, args.env_file, args.profile)
        if stack.name in paths.stacks():
            plan = load_state(stack.name).plan
        else:
            plan = dry_plan(stack, file)
            print(f"linkd: stack {stack.name} is not up: addresses are provisional",
                  file=sys.stderr)
    container = plan.container(containers_of(plan, args.service)[0])
    sources = {name: f"{conv}, link {alias}" for name, conv, alias in container.env_sources}
    for name, value in container.env:
        why = sources.get(name)
        if args.host and why is None:
            continue
        print(f"{name}={shlex.quote(value)}  # {why or 'environment'}")
    return 0


def up_detached(args: argparse.Namespace) -> int:
    """Hand the stack file to the daemon (starting one if none runs); return once the
    stack is up, or changed to the file where it already runs.

    The daemon loads the source (linkd.loader), with this shell's environment for
    `${VAR}` and the file's directory for relative paths, and answers with its warnings
    and errors: this command imports no parser or planner, and starts at once.
    """
    source, file = read_source(args.file, args.project, args.env_file, args.profile)
    # A stack whose texts never say "build", nor include or extend other files that
    # might, has nothing to build: no parse here then.
    texts = [source.text, *(text for _, text in source.overrides)]
    if args.build or args.no_build or any(
            word in text for text in texts for word in ("build", "include", "extends")):
        from linkd.cli.build import before_up_detached

        before_up_detached(args, source)  # here, with the terminal; the daemon only loads
    body = {
        "yaml": source.text, "name": source.project_name, "directory": str(source.directory),
        "source": source.source, "default_project": source.default_project,
        "environment": dict(source.environment),
        # The daemon reads them beside the file, as `linkd config` does here.
        "env_files": list(source.env_files) if source.env_files is not None
        else [".env"] if (source.directory / ".env").is_file() else [],
        # the other files given (-f b.yml, compose.override.yaml), merged by the daemon
        "overrides": [{"source": name, "yaml": text} for name, text in source.overrides],
    }
    try:
        if sys.stdout.isatty():
            client = ensure_daemon(Client())  # its events are drawn from the start
            with _drawn(client, source.project_name or source.default_project):
                answer = client.request("PUT", "/v1/stacks", body)
        else:
            try:
                answer = Client().request("PUT", "/v1/stacks", body)
            except (FileNotFoundError, ConnectionRefusedError):  # no daemon yet: start one
                answer = ensure_daemon(Client()).request("PUT", "/v1/stacks", body)
    except DaemonError as exc:
        if exc.status == 422:  # the stack file: said as `linkd config` says it
            raise SpecError(exc.problems, str(file)) from None
        for line in exc.progress:
            print(line, file=sys.stderr)
        raise
    print_warnings(file, answer.get("warnings", []))
    for notice in answer.get("notices", []):
        print(f"linkd: {notice}", file=sys.stderr)
    changes = answer.get("changes")
    if changes and any(changes.get(k) for k in ("added", "changed", "removed")):
        print("updated: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in changes.items() if v))
    elif changes is not None:
        print("no change: the stack already runs as the file says")
    print(table(answer))  # the state the stack is in now, as `ps` shows it
    return 0


@contextlib.contextmanager
def _drawn(client: Client, stack: str) -> Iterator[None]:
    """What the daemon does for `stack` meanwhile (image pulls layer by layer, networks,
    containers), drawn on the terminal as a foreground `up` draws it. (In a pipe
    `up -d` draws nothing: the daemon's log has it, and a failure shows its last
    steps.)"""
    from linkd.cli.progress import Progress
    from linkd.client.events import StackEvents

    progress = Progress(sys.stdout, live=True)

    def draw(event: dict[str, Any]) -> None:
        if event.get("type") == "progress":
            progress.event(str(event.get("subject")), str(event.get("message")))
        elif event.get("type") == "transfer":
            progress.transfer(str(event.get("subject")), int(event.get("bytes", 0)),
                              int(event.get("total", 0)))

    try:
        events = StackEvents(client.path, stack, draw)
    except OSError:  # no stream: the answer alone, as in a pipe
        yield
        return
    try:
        yield
    finally:
        events.close()
        progress.finish()


def cmd_ps(args: argparse.Namespace) -> int:
    wanted = [_label_filter(f) for f in args.filter]
    stacks = paths.stacks() if args.all else [stack_name(args)]
    if not stacks:
        print("no stack is up")
    for name in stacks:
        print(table(plain_state(name), wanted))
    return 0


def _label_filter(text: str) -> tuple[str, str | None]:
    kind, _, label = text.partition("=")
    if kind != "label" or not label:
        raise SpecError([("--filter", None, f"expected label=KEY or label=KEY=VALUE, got "
                                            f"{text!r}")], "the command line")
    key, eq, value = label.partition("=")
    return key, value if eq else None


def table(state: dict[str, Any], wanted: Sequence[tuple[str, str | None]] = ()) -> str:
    """`linkd ps`'s table of a stack's state in its JSON form (`linkd.core.state.to_plain`);
    `wanted`: (label, value or None for any) every container shown has. A stack spanning
    nodes (its `cluster` part) gets a NODE column and the other nodes' containers."""
    cluster = state.get("cluster")
    rows = [("STACK", "SERVICE", "CONTAINER", *(("NODE",) if cluster else ()), "ADDRESSES",
             "STATE")]
    plan = state["plan"]
    current = {c["name"]: c for c in state["containers"]}
    for container in plan["containers"]:
        labels = dict(container.get("labels") or ())
        if not all(key in labels and value in (None, labels[key]) for key, value in wanted):
            continue
        now = current[container["name"]]
        addresses = ", ".join(
            f"{i['network']}={i['address']}" + (f",{i['address6']}" if i["address6"] else "")
            for i in container["interfaces"]
        )
        status: str = now["status"]
        if now["exit_code"] is not None and status != "running":
            status += f" ({now['exit_code']})"
        if status == "running" and now["health"] is not None:
            from linkd.core.health import summary_of  # only for a stack with healthchecks

            status += " " + summary_of(now["health"])  # as docker ps: (healthy)
        if now["restarts"]:
            status += f" restarts={now['restarts']}"
        rows.append((plan["stack"], container["service"], container["name"],
                     *((cluster["node"],) if cluster else ()), addresses, status))
    if cluster and not wanted:  # what other nodes say of theirs has no labels to filter
        for far in cluster["remote"]:
            addresses = ", ".join(f"{i['network']}={i['address']}" for i in far["interfaces"])
            rows.append((plan["stack"], far["service"], far["name"], far["node"], addresses,
                         far["status"]))
        rows[1:] = sorted(rows[1:], key=lambda r: r[2])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def cmd_logs(args: argparse.Namespace) -> int:
    import asyncio

    from linkd.core.api_schema import tail_lines
    from linkd.runtime.containers import logs as log_files

    try:
        tail = tail_lines(args.tail)
    except ValueError as exc:
        raise SpecError([("--tail", None, str(exc))]) from None
    name = stack_name(args)
    state = load_state(name)
    sources = [(c, paths.log_path(name, c)) for c in containers(state, args.service)]
    width = max(len(c) for c, _ in sources)

    def emit(container: str, line: str) -> None:
        prefix = f"{container:<{width}} | " if len(sources) > 1 else ""
        print(f"{prefix}{line}", flush=True)

    stop = asyncio.Event()
    if not args.follow:
        stop.set()
    try:
        asyncio.run(log_files.follow(sources, emit, stop, tail=tail))
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_port(args: argparse.Namespace) -> int:
    from linkd.core import firewall

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
    from linkd.dns import answers
    from linkd.dns.zone import forwards_for, requester_of, served_zone

    state = load_state(stack_name(args))
    asker = state.plan.container(containers(state, args.asker)[0])
    try:
        # The zone the running server holds: without the containers that stopped, and
        # with those not (yet) healthy held back.
        found = answers.lookup(served_zone(state), args.name, args.qtype,
                               requester_of(state.plan.stack, asker))
    except ValueError as exc:
        raise SpecError([("dns --type", None, str(exc))]) from None
    for line in found.explain:
        print(line)
    if found.rcode is not None:
        print(f"answer: {found.rcode}")
        for name, qtype, ttl, data in found.records:
            print(f"  {name} {ttl} {qtype} {data}")
    elif forwards_for(asker):
        print("answer: forwarded to the upstream resolvers (not a name of this stack)")
    else:
        print("answer: REFUSED (not a name of this stack, and the container has no route out)")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    """The stack's topology on stdout (linkd.core.graph_formats)."""
    from linkd.core.graph_formats import render
    from linkd.core.topology import topology

    if args.stack:
        args.project = args.stack
    sys.stdout.write(render(topology(load_state(stack_name(args))), args.format))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from linkd.core.plan import hide_secrets
    from linkd.core.state import to_plain

    state = load_state(stack_name(args))
    if args.target is None:
        print(json.dumps(hide_secrets(to_plain(state)), indent=2))
        return 0
    result = [
        {"plan": hide_secrets(to_plain(state.plan.container(c))),
         "state": to_plain(state.container(c))}
        for c in containers(state, args.target)
    ]
    print(json.dumps(result, indent=2))
    return 0
