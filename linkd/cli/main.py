"""The `linkd` command line: parse arguments, run the command, say its error.

Commands follow `docker compose`: `up`, `down`, `ps`, `logs`, `exec`, `inspect`,
`config`. A stack is named by `-p NAME`, else by its stack files (`-f FILE`, repeatable,
merged in order as Compose merges them; else the first of linkd.yaml, compose.yaml,
compose.yml, docker-compose.yml, docker-compose.yaml in the current directory, with an
override file beside it, compose.override.yaml and the like, merged onto it), else it is
the only stack that is up (linkd.cli.stacks).

A command people type all day has to answer at once, so this module imports nothing
costly up front. The commands that read (`ps`, `logs`, `env`, `config`, `port`, `dns`,
`inspect`) and `up -d` live in linkd.cli.reading, which imports, inside each command,
the pure code it uses. `up` in the foreground and `daemon` drive the runtime (asyncio,
pyroute2, aiohttp) and live in linkd.cli.lifecycle; `down` (linkd.cli.down) imports it
only for a stack no daemon runs; `exec` (the shim, exec'd) is in linkd.cli.container_exec,
`image` in linkd.cli.images, `build` in linkd.cli.build, `login` and `logout` in
linkd.cli.login: each is imported only when its command runs, and only the parser of the
command given is built. tests/unit/test_cli_imports.py and
tests/integration/test_cli_imports.py hold the commands to this; `bench/run cli` measures
it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from linkd.cli.reading import (
    cmd_config,
    cmd_dns,
    cmd_env,
    cmd_graph,
    cmd_inspect,
    cmd_logs,
    cmd_port,
    cmd_ps,
    up_detached,
)
from linkd.errors import LinkdError, SpecError, user_error

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the 3 ms import (see linkd/__init__)
if TYPE_CHECKING:
    from typing import Any

Handler = Callable[[argparse.Namespace], int]


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


def cmd_up(args: argparse.Namespace) -> int:
    if not args.detach:  # the stack runs in this process
        return _later("lifecycle", "cmd_up")(args)
    return up_detached(args)


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
    p.add_argument(*flags, action="append", metavar="FILE",
                   help="stack file (repeatable: merged in order, as Compose does; default: "
                        "linkd.yaml, compose.yaml, ..., and compose.override.yaml ...)")
    p.add_argument("-p", "--project-name", dest="project", help="stack name")
    p.add_argument("--env-file", action="append", metavar="FILE",
                   help="variables for ${VAR}, instead of the stack directory's .env "
                        "(repeatable; the shell's environment wins)")
    p.add_argument("--profile", action="append", metavar="NAME",
                   help="start the services of this profile too (repeatable; instead of "
                        "COMPOSE_PROFILES)")
    p.set_defaults(handler=handler)


def _up(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_up)
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument("--abort-on-container-exit", action="store_true",
                   help="take the stack down when any container exits")
    p.add_argument("--exit-code-from", metavar="SERVICE",
                   help="take the stack down when SERVICE exits and exit with its code")
    p.add_argument("--no-attach", action="store_true", help="do not print container output")
    p.add_argument("--build", action="store_true",
                   help="build the images of the services with build: first (else only "
                        "those missing from the store, and pull_policy: build)")
    p.add_argument("--no-build", action="store_true",
                   help="build nothing, even an image that is missing")


def _build(p: argparse.ArgumentParser) -> None:
    _stack_options(p, _later("build", "cmd_build"))
    p.add_argument("service", nargs="*", help="only these services (default: every one "
                                              "with build:)")
    p.add_argument("--no-cache", action="store_true", help="build every step again")
    p.add_argument("--pull", action="store_true", help="pull the FROM images again")


def _pull(p: argparse.ArgumentParser) -> None:
    _stack_options(p, _later("images", "cmd_pull_stack"))
    p.add_argument("service", nargs="*", help="only these services (default: every one "
                                              "whose image is a registry's)")


def _daemon(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", help="unix socket (default: $LINKD_SOCKET or "
                   "/run/linkd/linkd.sock)")
    p.add_argument("--tcp", metavar="ADDR:PORT",
                   help="also listen on loopback TCP (127.0.0.1:PORT or [::1]:PORT); "
                        "whoever can use the API is root on this host")
    p.add_argument("--token-file",
                   help="the bearer token for --tcp: a file only its owner can read, "
                        "32+ bytes (default: a new token in <run dir>/api.token)")
    cluster = p.add_argument_group("cluster (docs/cluster.md)")
    cluster.add_argument("--cluster", metavar="URLS",
                         help="join the cluster whose etcd answers at these endpoints, "
                              "http://E1:2379,http://E2:2379,...")
    cluster.add_argument("--node-name", metavar="NAME",
                         help="this node's name, a host name (default: the hostname)")
    cluster.add_argument("--node-address", metavar="ADDR",
                         help="the address other nodes reach this one at (default: the "
                              "source address of the route to the first etcd endpoint)")
    cluster.add_argument("--node-label", action="append", default=[], metavar="KEY=VALUE",
                         help="a label of this node (repeatable)")
    cluster.add_argument("--cluster-ttl", type=int, metavar="SECONDS",
                         help="the node's lease: a node that stops answering leaves the "
                              "cluster this long after (default 5)")
    p.set_defaults(handler=_later("lifecycle", "cmd_daemon"))


def _down(p: argparse.ArgumentParser) -> None:
    _stack_options(p, _later("down", "cmd_down"))
    p.add_argument("--forget", action="store_true",
                   help="also forget the stack's subnets and addresses (its lease)")
    p.add_argument("-v", "--volumes", action="store_true",
                   help="also remove the stack's named and anonymous volumes")


def _ps(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_ps)
    p.add_argument("-a", "--all", action="store_true", help="every stack that is up")
    p.add_argument("--filter", action="append", default=[], metavar="label=KEY[=VALUE]",
                   help="only containers with this label (repeatable: all must match)")


def _logs(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_logs, short_file=False)  # `-f` is follow, as in docker compose
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--tail", default="all", metavar="N",
                   help='only the last N lines of each container (default "all")')
    p.add_argument("service", help="service (all replicas) or container (web-2)")


def _exec(p: argparse.ArgumentParser) -> None:
    _stack_options(p, _later("container_exec", "cmd_exec"))
    p.add_argument("--index", type=int, default=1, help="replica (default 1)")
    p.add_argument("service", help="service or container (web-2)")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- command and arguments")


def _inspect(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_inspect)
    p.add_argument("target", nargs="?", help="service or container; omit for the stack")


def _graph(p: argparse.ArgumentParser) -> None:
    _stack_options(p, cmd_graph)
    p.add_argument("stack", nargs="?", help="the stack (as -p); default as for ps")
    p.add_argument("--format", choices=("svg", "dot", "mermaid"), default="svg",
                   help="svg (default: a self-contained picture), dot (Graphviz) or "
                        "mermaid")


def _ui(p: argparse.ArgumentParser) -> None:
    p.description = ("serve the daemon's topology page on 127.0.0.1 (a token in the URL it "
                     "prints is required on every request) until interrupted; opens nothing")
    p.add_argument("--port", type=int, default=0, help="the port (default: a free one)")
    p.set_defaults(handler=_later("ui", "cmd_ui"))


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


def _node(p: argparse.ArgumentParser) -> None:
    p.description = ("the nodes of the cluster the local daemon is in "
                     "(`linkd daemon --cluster ...`; docs/cluster.md)")
    nsub = p.add_subparsers(dest="node_command", required=True)
    ls = nsub.add_parser("ls", help="list the cluster's nodes; * marks this one")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    ls.set_defaults(handler=_later("nodes", "cmd_ls"))


def _image(p: argparse.ArgumentParser) -> None:
    p.description = ("pull, load, list, inspect and remove images (store: $LINKD_IMAGES "
                     "or /var/lib/linkd/images)")
    isub = p.add_subparsers(dest="image_command", required=True)
    pull = isub.add_parser("pull", help="pull an image from its registry (with the "
                                         "credentials of `linkd login`, if any)")
    pull.add_argument("reference", help="NAME[:TAG][@DIGEST], e.g. 127.0.0.1:5000/app:1")
    pull.add_argument("--platform", help="OS/ARCH[/VARIANT] (default: this machine's)")
    pull.set_defaults(handler=_later("images", "cmd_pull"))
    load = isub.add_parser("load", help="load an OCI layout, OCI archive or docker save archive")
    load.add_argument("file")
    load.add_argument("--name", help="store it under NAME[:TAG] (default: its own tag)")
    load.set_defaults(handler=_later("images", "cmd_load"))
    ls = isub.add_parser("ls", help="list the images in the store")
    ls.set_defaults(handler=_later("images", "cmd_ls"))
    inspect = isub.add_parser("inspect", help="an image as stored, as JSON (by name, "
                                               "reference or id)")
    inspect.add_argument("name", nargs="+")
    inspect.set_defaults(handler=_later("images", "cmd_inspect"))
    rm = isub.add_parser("rm", help="remove an image name (and layers nothing else uses)")
    rm.add_argument("name", nargs="+")
    rm.set_defaults(handler=_later("images", "cmd_rm"))
    prune = isub.add_parser("prune", help="remove images without a name that no container "
                                           "of a stack that is up runs (-a: every image "
                                           "none runs)")
    prune.add_argument("-a", "--all", action="store_true", help="named images too")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask")
    prune.set_defaults(handler=_later("images", "cmd_prune"))


def _login(p: argparse.ArgumentParser) -> None:
    p.add_argument("server", nargs="?", help="registry HOST[:PORT] (default: docker.io)")
    p.add_argument("-u", "--username", help="user name (asked on a terminal if not given)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("-p", "--password", help="password (visible to other users: "
                                                 "prefer --password-stdin)")
    secret.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input")
    p.set_defaults(handler=_later("login", "cmd_login"))


def _logout(p: argparse.ArgumentParser) -> None:
    p.add_argument("server", nargs="?", help="registry HOST[:PORT] (default: docker.io)")
    p.set_defaults(handler=_later("login", "cmd_logout"))


def _volume(p: argparse.ArgumentParser) -> None:
    p.description = ("create, list, inspect and remove volumes (store: $LINKD_VOLUMES or "
                     "/var/lib/linkd/volumes)")
    vsub = p.add_subparsers(dest="volume_command", required=True)
    create = vsub.add_parser("create", help="make a volume (one that stacks name external)")
    create.add_argument("name")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.set_defaults(handler=_later("volumes", "cmd_create"))
    ls = vsub.add_parser("ls", help="list volumes")
    ls.add_argument("-q", "--quiet", action="store_true", help="names only")
    ls.add_argument("--filter", action="append", default=[],
                    metavar="dangling=true|stack=NAME|name=TEXT|label=KEY[=VALUE]")
    ls.set_defaults(handler=_later("volumes", "cmd_ls"))
    inspect = vsub.add_parser("inspect", help="show volumes as JSON")
    inspect.add_argument("name", nargs="+")
    inspect.set_defaults(handler=_later("volumes", "cmd_inspect"))
    rm = vsub.add_parser("rm", help="remove volumes no stack that is up mounts")
    rm.add_argument("name", nargs="+")
    rm.add_argument("-f", "--force", action="store_true", help="no error for a missing one")
    rm.set_defaults(handler=_later("volumes", "cmd_rm"))
    prune = vsub.add_parser("prune", help="remove unused anonymous volumes")
    prune.add_argument("-a", "--all", action="store_true", help="unused named ones too")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask")
    prune.set_defaults(handler=_later("volumes", "cmd_prune"))


# name: (help, what declares its arguments), in the order `linkd --help` lists them
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "up": ("create and start the stack, and supervise it", _up),
    "daemon": ("run the linkd daemon (the HTTP API) in the foreground", _daemon),
    "down": ("stop and remove the stack's containers and networks", _down),
    "ps": ("list containers", _ps),
    "logs": ("show a service's or container's output", _logs),
    "exec": ("run a command inside a running container", _exec),
    "inspect": ("show a container's plan and state as JSON", _inspect),
    "graph": ("draw the stack's networks, containers, links and ports", _graph),
    "ui": ("serve the daemon's live topology page on 127.0.0.1, with a token", _ui),
    "config": ("validate the stack file and print it normalized", _config),
    "env": ("the environment a service's containers get, and why", _env),
    "dns": ("what a container's DNS lookup of NAME gives, and why", _dns),
    "port": ("the host address and port a container port is published on", _port),
    "image": ("pull, load, list and remove images", _image),
    "node": ("list the nodes of the daemon's cluster", _node),
    "volume": ("create, list, inspect and remove volumes", _volume),
    "build": ("build the images of the services with build: (with buildah)", _build),
    "pull": ("pull the images of the services from their registries", _pull),
    "login": ("check credentials for a registry and keep them in Docker's config.json",
              _login),
    "logout": ("forget the credentials for a registry", _logout),
}
