"""`linkd build`, and the builds `up` makes first (linkd.runtime.images.build does them).

The command line builds, never the daemon: it has the terminal the build's output goes
to, and a build runs before the stack is handed on, so a failed build creates nothing.
`up` in the foreground builds after checking the stack and before bringing it up; `up
-d` builds before it sends the stack to the daemon, which only finds the images in the
store. What `up` builds: every service with `build:` whose image is not in the store
(Compose builds what is missing), or whose `pull_policy` is `build`; all of them with
`--build`, none with `--no-build`.

`up -d` stays quick for a stack that builds nothing: it reads the file for builds only
when its text says `build` somewhere (or `--build` is given); linkd.cli.reading asks here.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from linkd.cli.stacks import print_warnings, read_source
from linkd.core.model import Service, Stack
from linkd.errors import UsageError
from linkd.runtime.images.build import build_service, to_build
from linkd.runtime.images.image_store import ImageStore

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the import (see linkd/__init__)
if TYPE_CHECKING:
    from linkd.loader import StackSource


def cmd_build(args: argparse.Namespace) -> int:
    """`linkd build [SERVICE...]`: build the images of the services with `build:`."""
    from linkd import loader

    source, file = read_source(args.file, args.project, args.env_file, args.profile)
    stack = loader.load(source)
    print_warnings(file, stack.warnings)
    chosen = to_build(stack, ImageStore(), services=args.service, always=True)
    if without := [s.name for s in stack.services
                   if s.name in args.service and s.build is None]:
        raise UsageError(f"service {', '.join(without)} has no build: section in {file}")
    if not chosen:
        print(f"nothing to build: no service of {file} has a build: section")
    build_all(chosen, source.directory, no_cache=args.no_cache, pull=args.pull)
    return 0


def before_up(stack: Stack, directory: Path, *, build: bool, no_build: bool) -> None:
    """What `up` builds before the stack comes up (see the module's docstring)."""
    _check_flags(build, no_build)
    if not no_build:
        build_all(to_build(stack, ImageStore(), always=build), directory)


def before_up_detached(args: argparse.Namespace, source: StackSource) -> None:
    """`up -d`'s builds: the stack file is parsed here only when it may build."""
    _check_flags(args.build, args.no_build)
    if args.no_build or not (args.build or "build" in source.text):
        return
    from linkd import loader

    stack = loader.load(source)  # its warnings are the daemon's to say, once
    build_all(to_build(stack, ImageStore(), always=args.build), source.directory)


def _check_flags(build: bool, no_build: bool) -> None:
    if build and no_build:
        raise UsageError("--build and --no-build cannot both be given")


def build_all(services: Sequence[Service], directory: Path, *, no_cache: bool = False,
              pull: bool = False) -> None:
    """Build each service's image in turn, its output as plain lines on stdout
    (`no_cache`, `pull`: as if each `build:` said so)."""
    for service in services:
        build = service.build
        assert build is not None
        service = dataclasses.replace(service, build=dataclasses.replace(
            build, no_cache=build.no_cache or no_cache, pull=build.pull or pull))
        print(f"building {service.name} ({service.image})", flush=True)

        def emit(line: str, prefix: str = service.name) -> None:
            print(f"{prefix} | {line}", flush=True)

        stored = build_service(service, directory, emit)
        print(f"built {', '.join(stored.names)} ({stored.id[:19]}, {len(stored.layers)} "
              "layers)", flush=True)
