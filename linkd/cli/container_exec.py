"""`linkd exec`: a command run inside a running container.

Its own module, away from linkd.cli.lifecycle: entering a container needs the stack's
state and the shim's command line, not the daemon's server, netlink or the supervisor,
whose imports alone took ~0.4 s of every `exec` (and of every `exec` a test or a
Python API user makes).
"""

from __future__ import annotations

import argparse
import os
import sys

from linkd import paths
from linkd.cli.stacks import containers, load_state, stack_name
from linkd.errors import LinkdError, NotFoundError, SpecError
from linkd.runtime.containers import launch


def cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SpecError([("exec", None, "give the command after --, e.g. linkd exec web -- sh")])
    name = stack_name(args)
    state = load_state(name)
    targets = containers(state, args.service)
    target = targets[0] if len(targets) == 1 else f"{args.service}-{args.index}"
    if target not in targets:
        raise NotFoundError(f"service {args.service} has no replica {args.index}")
    current = state.container(target)
    if current.status != "running" or current.init_pid is None:
        raise LinkdError(f"container {target} is not running ({current.status})")
    container = state.plan.container(target)
    spec_path = paths.container_dir(name, target) / f"exec-{os.getpid()}.spec"
    launch.write_exec_spec(
        str(spec_path), tuple(argv), container.env, container.working_dir, container.user,
        name=target, image=container.image is not None, group_add=container.group_add,
    )
    # This process becomes the shim: killing `linkd exec` (a cancelled Python API exec
    # does) is killing the shim, whose guard then ends the command's whole tree. A parent
    # waiting for the shim would die alone and leave both running.
    argv = launch.exec_argv(current.init_pid, str(spec_path), remove_spec=True)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as e:
        spec_path.unlink(missing_ok=True)
        raise LinkdError(f"container {target}: cannot start the shim ({argv[0]}): {e}"
                         ) from e
