"""`linkd up` in the foreground, `down` and `daemon`: the commands that drive the
runtime.

They need the supervisor, the daemon's API server (aiohttp) and netlink (pyroute2),
which the commands that only read must not pay for: linkd.cli.main imports this module only
when one of these commands runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from linkd import paths
from linkd.cli.build import before_up
from linkd.cli.progress import Progress
from linkd.cli.reading import table
from linkd.cli.stacks import dry_plan, load_stack, stack_name
from linkd.client.api import Client
from linkd.core import names
from linkd.core.cluster import ClusterConfig
from linkd.core.model import Stack
from linkd.core.state import to_plain
from linkd.errors import LinkdError, NotFoundError, UsageError
from linkd.runtime.containers import logs as log_files
from linkd.runtime.daemon import api
from linkd.runtime.kernel.netlink import Kernel
from linkd.runtime.stack import lifecycle, store, supervisor, teardown


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
    asyncio.run(api.serve(path, tcp=args.tcp or None, token_file=args.token_file,
                          cluster=cluster))
    return 0


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


def cmd_down(args: argparse.Namespace) -> int:
    name = stack_name(args)
    try:
        code = _down(name)
    finally:
        if args.forget:
            store.forget_lease(name)
    if args.volumes:
        from linkd.cli.volumes import remove_stack_volumes

        for kept in remove_stack_volumes(name):
            print(f"warning: {kept}", file=sys.stderr)
    return code


def _down(name: str) -> int:
    client = Client()
    if store.supervised(name) and client.available():
        hosted = {s["name"] for s in client.request("GET", "/v1/stacks")}
        if name in hosted:
            answer = client.request("DELETE", f"/v1/stacks/{name}")
            for notice in answer.get("notices", []):
                print(notice)
            print(f"stack {name} removed")
            return 0
    if not store.supervised(name):
        leftovers = Kernel.netns_names(names.netns_prefix(name))
        if not store.stack_dir(name).exists() and not leftovers:
            print(f"stack {name} is not up")
            return 0
        asyncio.run(teardown.down_unsupervised(name, Progress(sys.stdout, live=False).event))
        return 0
    state = store.load(name)
    if state.supervisor_pid is not None:
        if _is_daemon(state.supervisor_pid):
            raise LinkdError(
                f"stack {name} is run by the linkd daemon (pid {state.supervisor_pid}), "
                f"which does not answer on {paths.socket_path()}; stopping it would take every "
                "stack down: check its log, or stop it yourself if that is what you want"
            )
        os.kill(state.supervisor_pid, 15)
    grace = sum(c.stop_grace_period for c in state.plan.containers) + 30
    deadline = time.monotonic() + grace
    while store.supervised(name):
        if time.monotonic() > deadline:
            raise LinkdError(f"stack {name}: supervisor {state.supervisor_pid} did not stop")
        time.sleep(0.05)
    if store.stack_dir(name).exists():
        # Its teardown failed (a successful one removes the stack's directory; a failed
        # one leaves it "failed", its errors said by that `up`): try what is left once
        # more from here, so that this command says what failed and exits non-zero.
        asyncio.run(teardown.down_unsupervised(name, Progress(sys.stdout, live=False).event))
    else:
        print(f"stack {name} removed")
    return 0


def _is_daemon(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[1:4] == [b"-m", b"linkd", b"daemon"]
