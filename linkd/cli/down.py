"""`linkd down`: a stack taken down, by whoever runs it.

Its own module, and a light one: a stack the daemon runs goes down over its API, and a
stack that is not up is said to be so, without importing the runtime (the supervisor,
netlink, aiohttp: ~0.4 s of linkd.cli.lifecycle's imports, paid by every `down`). Only a
stack that no daemon runs (a foreground `up`, or what a crash left) is taken down here,
with the runtime imported then.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from linkd import paths
from linkd.cli.stacks import stack_name
from linkd.client.api import Client
from linkd.core import names
from linkd.errors import LinkdError


def cmd_down(args: argparse.Namespace) -> int:
    name = stack_name(args)
    try:
        code = _down(name)
    finally:
        if args.forget:
            paths.forget_lease(name)
    if args.volumes:
        from linkd.cli.volumes import remove_stack_volumes

        for kept in remove_stack_volumes(name):
            print(f"warning: {kept}", file=sys.stderr)
    return code


def _down(name: str) -> int:
    client = Client()
    if paths.supervised(name) and client.available():
        hosted = {s["name"] for s in client.request("GET", "/v1/stacks")}
        if name in hosted:
            answer = client.request("DELETE", f"/v1/stacks/{name}")
            for notice in answer.get("notices", []):
                print(notice)
            print(f"stack {name} removed")
            return 0
    if not paths.supervised(name):
        from linkd.runtime.kernel import nshelper

        leftovers = nshelper.netns_names(names.netns_prefix(name))
        if not paths.stack_dir(name).exists() and not leftovers:
            print(f"stack {name} is not up")
            return 0
        _teardown_here(name)
        return 0
    from linkd.runtime.stack import store

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
    while paths.supervised(name):
        if time.monotonic() > deadline:
            raise LinkdError(f"stack {name}: supervisor {state.supervisor_pid} did not stop")
        time.sleep(0.05)
    if paths.stack_dir(name).exists():
        # Its teardown failed (a successful one removes the stack's directory; a failed
        # one leaves it "failed", its errors said by that `up`): try what is left once
        # more from here, so that this command says what failed and exits non-zero.
        _teardown_here(name)
    else:
        print(f"stack {name} removed")
    return 0


def _is_daemon(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[1:4] == [b"-m", b"linkd", b"daemon"]


def _teardown_here(name: str) -> None:
    import asyncio

    from linkd.cli.progress import Progress
    from linkd.runtime.stack import teardown

    asyncio.run(teardown.down_unsupervised(name, Progress(sys.stdout, live=False).event))
