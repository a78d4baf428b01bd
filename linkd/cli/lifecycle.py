"""`linkd up` in the foreground and `daemon`: the commands that drive the runtime.

They need the supervisor, the daemon's API server (aiohttp) and netlink (pyroute2),
which the commands that only read must not pay for: linkd.cli.main imports this module only
when one of these commands runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from linkd import paths
from linkd.cli.build import before_up
from linkd.cli.progress import Progress
from linkd.cli.reading import table
from linkd.cli.stacks import dry_plan, load_stack
from linkd.core.cluster import ClusterConfig
from linkd.core.model import Stack
from linkd.core.state import to_plain
from linkd.errors import NotFoundError, UsageError
from linkd.runtime.containers import logs as log_files
from linkd.runtime.daemon import api
from linkd.runtime.stack import lifecycle, store, supervisor


def cmd_up(args: argparse.Namespace) -> int:
    """`up` in the foreground: the stack runs in this process."""
    stack, file = load_stack(args.file, args.project, args.env_file, args.profile)
    dry_plan(stack, file)
    before_up(stack, file.resolve().parent, build=args.build, no_build=args.no_build)
    abort = frozenset(s.name for s in stack.services) if args.abort_on_container_exit else None
    if args.exit_code_from:
        if args.exit_code_from not in {s.name for s in stack.services}:
            raise NotFoundError(f"--exit-code-from: no service {args.exit_code_from} in {file}")
        abort = frozenset({args.exit_code_from}) if abort is None else abort
    options = lifecycle.UpOptions(abort or frozenset(), args.exit_code_from)
    progress = Progress(sys.stdout, live=sys.stdout.isatty())
    return asyncio.run(_up(stack, str(file.resolve()), options, progress, not args.no_attach))


async def _up(
    stack: Stack, source: str, options: lifecycle.UpOptions, progress: Progress, attach: bool
) -> int:
    stop_logs = asyncio.Event()
    followers: list[asyncio.Task[None]] = []

    def on_up(sup: supervisor.Supervisor) -> None:
        progress.finish()
        assert sup.plan is not None
        print(table(to_plain(store.load(stack.name))), flush=True)
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
        return await lifecycle.run(
            stack, source, options, progress.event, on_up=on_up, before_down=before_down,
            transfer=progress.transfer,
        )
    finally:
        stop_logs.set()
        for task in followers:
            await task
        progress.finish()


def cmd_daemon(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s linkd: %(message)s",
                        stream=sys.stderr)
    if args.token_file and not args.tcp:
        raise UsageError("--token-file goes with --tcp ADDR:PORT (the unix socket needs none)")
    path = Path(args.socket) if args.socket else paths.socket_path()
    cluster = _cluster_config(args)
    # --tcp and the token are checked, and the port bound, before any stack is recovered
    # (linkd.runtime.daemon.api_tcp); without --token-file the daemon makes a token and says where.
    _collect_seldom()
    asyncio.run(api.serve(path, tcp=args.tcp or None, token_file=args.token_file,
                          cluster=cluster))
    return 0


def _collect_seldom() -> None:
    """The daemon answers every container's DNS queries: a full collection of its heap
    (the plans and zones of hundreds of containers) stops it for 50-120 ms, and with
    Python's thresholds one came every few seconds while stacks came and went. What is
    loaded by now is never garbage (frozen: never scanned again), and a full collection
    waits for 100 collections of the middle generation rather than 10; young cycles, most
    of the garbage, go as before."""
    import gc

    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 100)


def _cluster_config(args: argparse.Namespace) -> ClusterConfig | None:
    """`--cluster` and the options that go with it, checked; None without it."""
    from linkd.core import cluster

    if not args.cluster:
        if args.node_name or args.node_address or args.node_label or args.cluster_ttl:
            raise UsageError("--node-name, --node-address, --node-label and --cluster-ttl "
                             "go with --cluster URLS")
        return None
    name = args.node_name
    if name is None:
        import socket

        name = socket.gethostname().lower()
        problem = cluster.node_name_problem(name)
        if problem:
            raise UsageError(f"this host's name cannot name a node ({problem}): give one "
                             "with --node-name")
    ttl = cluster.DEFAULT_TTL if args.cluster_ttl is None else args.cluster_ttl
    return cluster.config(args.cluster, name, args.node_address, args.node_label, ttl)
