"""The `linkd` command line: parse arguments, read files, call the runtime, print.

Commands follow `docker compose`: `up`, `down`, `ps`, `logs`, `exec`, `inspect`,
`config`. A stack is named by `-p NAME`, else by its stack file (`-f FILE`, else the
first of linkd.yaml, compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml
in the current directory), else it is the only stack that is up.

A command people type all day has to answer at once, so this module imports nothing
costly up front. The commands that read (`ps`, `logs`, `env`, `config`, `port`, `dns`,
`inspect`) and `up -d` are here and import, inside each command, the pure code they
use; they talk to the daemon over its unix socket (linkd.client.api), and `ps` prints
the daemon's JSON as it comes, without decoding it into the state's classes. `up` in the
foreground, `down`, `exec` and `daemon` drive the runtime (asyncio, pyroute2, aiohttp)
and live in linkd.cli.lifecycle, `image` in linkd.cli.images: each is imported only when
its command runs, and only the parser of the command given is built.
tests/unit/test_cli_imports.py and tests/integration/test_cli_imports.py hold the
commands to this; `bench/run cli` measures it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from linkd import paths
from linkd.client.api import ANSWER_TIMEOUT, Client, DaemonError, ensure_daemon
from linkd.errors import LinkdError, NotFoundError, SpecError, user_error

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the 3 ms import (see linkd/__init__)
if TYPE_CHECKING:
    from typing import Any

    from linkd.core.model import Stack
    from linkd.core.plan import StackPlan
    from linkd.core.state import StackState

Handler = Callable[[argparse.Namespace], int]

DEFAULT_FILES = (
    "linkd.yaml",
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(argv).parse_args(argv)
    try:
        code = args.handler(args)
    except (LinkdError, BaseExceptionGroup) as exc:
        # The one place the command line unwraps task groups (linkd.errors.user_error):
        # a LinkdError however deep is said as its message; anything else is a bug and
        # keeps its traceback.
        error = user_error(exc)
        if not isinstance(error, LinkdError):
            raise
        code = _say(error)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _say(error: LinkdError) -> int:
    """Print `error` as the command's failure; the exit code it calls for."""
    if isinstance(error, SpecError):
        print(f"linkd: invalid stack file:\n{error}", file=sys.stderr)
    else:
        print(f"linkd: {error}", file=sys.stderr)
    return error.exit_code


def _later(module: str, name: str) -> Handler:
    """The handler `name` of `linkd.cli.<module>`, imported when its command runs."""

    def run(args: argparse.Namespace) -> int:
        handler: Handler = getattr(importlib.import_module(f"linkd.cli.{module}"), name)
        return handler(args)

    return run


def version() -> str:
    """The installed distribution's version; run from a source tree that is not
    installed (PYTHONPATH), the package's own, saying so."""
    from importlib import metadata

    try:
        return metadata.version("linkd")
    except metadata.PackageNotFoundError:
        import linkd

        return f"{linkd.__version__} (not installed; from {Path(linkd.__file__).parent})"


class _Version(argparse.Action):
    """`--version`, looked up only when asked for (importlib.metadata is not free)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"linkd {version()}")
        parser.exit()


class _Formatter(argparse.HelpFormatter):
    """argparse's, but it learns the terminal's width as shutil.get_terminal_size does
    without importing shutil (and with it zlib, bz2 and lzma): argparse makes one for
    every argument declared, and the import was 2 of the 40 ms of a `linkd ps`."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            columns = 0
        if columns <= 0 and sys.__stdout__ is not None:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
            except (ValueError, OSError):
                columns = 0
        super().__init__(prog, width=(columns or 80) - 2)


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of the command `argv` starts with, alone: argparse takes a few
    milliseconds to make a parser for every command, a good part of a `linkd ps`. (Its
    usage line names them all; help, and a command line that names none, get them all.)"""
    parser = argparse.ArgumentParser(prog="linkd", description=__doc__.split("\n")[0],
                                     formatter_class=_Formatter)
    parser.add_argument("--version", action=_Version, help="print linkd's version and exit")
    command = argv[0] if argv and argv[0] in COMMANDS else None
    if command is None:
        sub = parser.add_subparsers(dest="command", required=True)
    else:
        sub = parser.add_subparsers(dest="command", required=True,
                                    metavar="{" + ",".join(COMMANDS) + "}")
    for name, (help, declare) in COMMANDS.items():
        if command in (None, name):
            declare(sub.add_parser(name, help=help, description=help,
                                   formatter_class=_Formatter))
    return parser


def _stack_options(p: argparse.ArgumentParser, handler: Handler, *,
                   short_file: bool = True) -> None:
    flags = ("-f", "--file") if short_file else ("--file",)
    p.add_argument(*flags, help="stack file (default: linkd.yaml, compose.yaml, ...)")
    p.add_argument("-p", "--project-name", dest="project", help="stack name")
    p.set_defaults(handler=handler)


def _up(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_up)
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument("--abort-on-container-exit", action="store_true",
                   help="take the stack down when any container exits")
    p.add_argument("--exit-code-from", metavar="SERVICE",
                   help="take the stack down when SERVICE exits and exit with its code")
    p.add_argument("--no-attach", action="store_true", help="do not print container output")


def _daemon(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", help="unix socket (default: $LINKD_SOCKET or "
                   "/run/linkd/linkd.sock)")
    p.add_argument("--tcp", metavar="ADDR:PORT",
                   help="also listen on loopback TCP (127.0.0.1:PORT or [::1]:PORT); "
                        "whoever can use the API is root on this host")
    p.add_argument("--token-file",
                   help="the bearer token for --tcp: a file only its owner can read, "
                        "32+ bytes (default: a new token in <run dir>/api.token)")
    p.set_defaults(handler=_later("lifecycle", "cmd_daemon"))


def _down(p: argparse.ArgumentParser) -> None:
    _stack_options(p, _later("lifecycle", "cmd_down"))
    p.add_argument("--forget", action="store_true",
                   help="also forget the stack's subnets and addresses (its lease)")


def _ps(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_ps)
    p.add_argument("-a", "--all", action="store_true", help="every stack that is up")


def _logs(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_logs, short_file=False)  # `-f` is follow, as in docker compose
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("service", help="service (all replicas) or container (web-2)")


def _exec(p: argparse.ArgumentParser) -> None:
    _stack_options(p, _later("lifecycle", "cmd_exec"))
    p.add_argument("--index", type=int, default=1, help="replica (default 1)")
    p.add_argument("service", help="service or container (web-2)")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- command and arguments")


def _inspect(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_inspect)
    p.add_argument("target", nargs="?", help="service or container; omit for the stack")


def _config(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_config)


def _env(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_env)
    p.add_argument("service", help="service (its first replica) or container (web-2)")
    p.add_argument("--host", action="store_true",
                   help="only the link variables, for a process on the host")


def _dns(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_dns)
    p.add_argument("name")
    p.add_argument("--from", dest="asker", required=True, metavar="SERVICE",
                   help="the service (its first replica) or container that asks")
    p.add_argument("--type", dest="qtype", default="A", help="record type (default A)")


def _port(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_port)
    p.add_argument("--index", type=int, default=1, help="replica (default 1)")
    p.add_argument("service")
    p.add_argument("port", help="container port, PORT or PORT/PROTO (default tcp)")


def _image(p: argparse.ArgumentParser) -> None:
    p.description = "load, list and remove images (store: $LINKD_IMAGES or /var/lib/linkd/images)"
    isub = p.add_subparsers(dest="image_command", required=True)
    load = isub.add_parser("load", help="load an OCI layout, OCI archive or docker save archive")
    load.add_argument("file")
    load.add_argument("--name", help="store it under NAME[:TAG] (default: its own tag)")
    load.set_defaults(handler=_later("images", "cmd_load"))
    ls = isub.add_parser("ls", help="list the images in the store")
    ls.set_defaults(handler=_later("images", "cmd_ls"))
    rm = isub.add_parser("rm", help="remove an image name (and layers nothing else uses)")
    rm.add_argument("name", nargs="+")
    rm.set_defaults(handler=_later("images", "cmd_rm"))


# name: (help, what declares its arguments), in the order `linkd --help` lists them
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "up": ("create and start the stack, and supervise it", _up),
    "daemon": ("run the linkd daemon (the HTTP API) in the foreground", _daemon),
    "down": ("stop and remove the stack's containers and networks", _down),
    "ps": ("list containers", _ps),
    "logs": ("show a service's or container's output", _logs),
    "exec": ("run a command inside a running container", _exec),
    "inspect": ("show a container's plan and state as JSON", _inspect),
    "config": ("validate the stack file and print it normalized", _config),
    "env": ("the environment a service's containers get, and why", _env),
    "dns": ("what a container's DNS lookup of NAME gives, and why", _dns),
    "port": ("the host address and port a container port is published on", _port),
    "image": ("load, list and remove images", _image),
}


# -- loading stacks -------------------------------------------------------------------


def _stack_file(path: str | None) -> Path | None:
    if path is not None:
        return Path(path)
    for name in DEFAULT_FILES:
        if Path(name).exists():
            return Path(name)
    return None


def load_stack(path: str | None, project: str | None) -> tuple[Stack, Path]:
    from linkd.spec import stack_file

    file = _stack_file(path)
    if file is None:
        raise NotFoundError(
            f"no stack file: pass -f FILE or create one of {', '.join(DEFAULT_FILES)}"
        )
    from linkd import files  # bounded: no FIFO, device or flood; UTF-8 or a clear no

    try:
        text = files.read_text(file, pipes=True)  # a pipe too: -f /dev/stdin, -f <(...)
    except OSError as exc:
        raise NotFoundError(f"cannot read stack file {file}: {exc.strerror}") from exc
    base = file.resolve().parent
    stack = stack_file.parse_stack(
        text,
        source=str(file),
        project_name=project,
        default_project=base.name,
        host_env=dict(os.environ),
        read_text=files.env_file_reader(base),
    )
    for warning in stack.warnings:
        print(f"linkd: warning: {file}: {warning}", file=sys.stderr)
    return stack, file


def dry_plan(stack: Stack, file: Path) -> StackPlan:
    """The stack planned on subnets picked as if nothing else were up: it proves the
    links and conventions render (so `up -d` fails here, not in the background), and
    shows provisional addresses for a stack that is not up."""
    from linkd.core import ipam
    from linkd.core.plan import realize
    from linkd.runtime.stack.conventions import load_conventions

    base = file.resolve().parent
    subnets = ipam.pick_subnets(stack.networks, [])
    if any(s.image is not None for s in stack.services):  # else no image store to read
        from linkd.runtime.images import image_store

        stack = image_store.resolve_stack(stack, base, load=False)  # images already in the store
    return realize(
        stack, subnets, workdir=str(base), conventions=load_conventions(stack, base)
    )


def daemon_state(name: str) -> dict[str, Any] | None:
    """The stack's state as the daemon's API gives it (JSON), or None when no daemon
    runs the stack (its supervisor is a foreground `up`, or nothing answers in time)."""
    if not paths.supervised(name):
        return None
    try:
        plain: dict[str, Any] = Client().request("GET", f"/v1/stacks/{name}",
                                                 timeout=ANSWER_TIMEOUT)
    except OSError:
        return None
    except DaemonError as exc:
        if exc.status != 404:
            raise
        return None
    return plain


def load_state(name: str) -> StackState:
    """The stack's state: from the daemon when it runs the stack, else from its file."""
    from linkd.core import state as state_codec
    from linkd.runtime.stack import store

    plain = daemon_state(name)
    if plain is None:
        return store.load(name)
    return state_codec.from_plain(state_codec.StackState, plain)


def plain_state(name: str) -> dict[str, Any]:
    """`load_state` in the API's JSON form, decoded only when it comes from the file."""
    plain = daemon_state(name)
    if plain is None:
        if name not in paths.stacks():  # said without loading the state codec
            raise NotFoundError(f"stack {name} is not up; `linkd ps --all` lists the "
                                "stacks that are")
        from linkd.core.state import to_plain
        from linkd.runtime.stack import store

        plain = to_plain(store.load(name))
    return plain


def stack_name(args: argparse.Namespace) -> str:
    if args.project:
        return str(args.project).lower()
    file = _stack_file(args.file)
    if file is not None:
        return _name_in(file) or load_stack(args.file, None)[0].name
    up = paths.stacks()
    if len(up) == 1:
        return up[0]
    if not up:
        raise NotFoundError("no stack is up")
    raise NotFoundError(f"several stacks are up ({', '.join(up)}); name one with -p")


_TOP_NAME = re.compile(
    r"name:(?:[ \t]+(?P<value>[a-z0-9][a-z0-9_-]*))?(?:[ \t]+(#.*)?)?$")


def _name_in(file: Path) -> str | None:
    """The stack name of `file` without the parser, where the text says it plainly: a
    top-level `name: NAME`, or no top-level `name` at all (then the directory's name, as
    Compose normalizes it); None where only the parser can tell (a quoted or
    interpolated value, flow style, a merge key at the top)."""
    try:
        text = file.read_text()
    except (OSError, UnicodeError):
        return None
    found = None
    for line in text.splitlines():
        if line.startswith(("name:", "{", "<<", "? ", "---", "%", "'", '"')):
            match = _TOP_NAME.match(line) if line.startswith("name:") else None
            if match is None or match["value"] is None or found is not None:
                return None
            found = match["value"]
    if found is not None:
        return found
    name = re.sub(r"[^a-z0-9_-]", "", file.resolve().parent.name.lower()).lstrip("_-")
    return name if name and len(name) <= 24 else None  # else the parser says what is wrong


# -- commands ---------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from linkd.spec.dump import stack_to_dict

    stack, file = load_stack(args.file, args.project)
    dry_plan(stack, file)
    print(yaml.safe_dump(stack_to_dict(stack), sort_keys=False), end="")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """`NAME=VALUE  # where it comes from`, values quoted for a shell."""
    import shlex

    plan: StackPlan | None = None
    if args.file is None and (args.project or _stack_file(None) is None):
        plan = load_state(stack_name(args)).plan
    else:
        stack, file = load_stack(args.file, args.project)
        if stack.name in paths.stacks():
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
    if not args.detach:  # the stack runs in this process
        return _later("lifecycle", "cmd_up")(args)
    return _up_detached(args)


def _up_detached(args: argparse.Namespace) -> int:
    """Hand the stack file to the daemon (starting one if none runs); return once the
    stack is up, or changed to the file where it already runs.

    The daemon parses the text, with this shell's environment for `${VAR}` and the
    file's directory for relative paths, and answers with its warnings and errors: this
    command imports no parser or planner, and starts at once.
    """
    from linkd import files  # bounded: no FIFO, device or flood; UTF-8 or a clear no

    file = _stack_file(args.file)
    if file is None:
        raise NotFoundError(
            f"no stack file: pass -f FILE or create one of {', '.join(DEFAULT_FILES)}"
        )
    try:
        text = files.read_text(file, pipes=True)
    except OSError as exc:
        raise NotFoundError(f"cannot read stack file {file}: {exc.strerror}") from exc
    base = file.resolve().parent
    body = {
        "yaml": text, "name": args.project, "directory": str(base), "source": str(file),
        "default_project": base.name, "environment": dict(os.environ),
    }
    try:
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
    for warning in answer.get("warnings", []):
        print(f"linkd: warning: {file}: {warning}", file=sys.stderr)
    for notice in answer.get("notices", []):
        print(f"linkd: {notice}", file=sys.stderr)
    changes = answer.get("changes")
    if changes and any(changes.get(k) for k in ("added", "changed", "removed")):
        print("updated: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in changes.items() if v))
    elif changes is not None:
        print("no change: the stack already runs as the file says")
    print(table(answer))  # the state the stack is in now, as `ps` shows it
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    stacks = paths.stacks() if args.all else [stack_name(args)]
    if not stacks:
        print("no stack is up")
    for name in stacks:
        print(table(plain_state(name)))
    return 0


def table(state: dict[str, Any]) -> str:
    """`linkd ps`'s table of a stack's state in its JSON form (`linkd.core.state.to_plain`)."""
    rows = [("STACK", "SERVICE", "CONTAINER", "ADDRESSES", "STATE")]
    plan = state["plan"]
    current = {c["name"]: c for c in state["containers"]}
    for container in plan["containers"]:
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
        rows.append((plan["stack"], container["service"], container["name"], addresses, status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def containers(state: StackState, target: str) -> list[str]:
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
    import asyncio

    from linkd.runtime.containers import logs as log_files

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
        asyncio.run(log_files.follow(sources, emit, stop))
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


def cmd_inspect(args: argparse.Namespace) -> int:
    from linkd.core.state import to_plain

    state = load_state(stack_name(args))
    if args.target is None:
        print(json.dumps(to_plain(state), indent=2))
        return 0
    result = [
        {"plan": to_plain(state.plan.container(c)), "state": to_plain(state.container(c))}
        for c in containers(state, args.target)
    ]
    print(json.dumps(result, indent=2))
    return 0
