"""`linkd image pull|load|ls|inspect|rm` and `linkd pull`: the image store
(linkd.runtime.images) from the command line.

Its arguments are declared in linkd.cli.main, which imports this module only when an `image`
command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time

from linkd.cli.progress import Progress, megabytes
from linkd.errors import ConflictError, UsageError
from linkd.runtime.images.image_store import ImageStore, containers_using


def _progress() -> Progress:
    """A pull's layers, each a line redrawn in place on a terminal; on a pipe only the
    steps, a line each, on stderr (stdout says what was pulled)."""
    live = sys.stdout.isatty()
    return Progress(sys.stdout if live else sys.stderr, live=live)


def cmd_load(args: argparse.Namespace) -> int:
    start = time.monotonic()
    image = ImageStore().load(args.file, args.name)
    took = time.monotonic() - start
    print(f"loaded {', '.join(image.names)} ({image.id[:19]}, {len(image.layers)} layers, "
          f"{megabytes(image.size)}) in {took:.2f} s")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    # The pull's module imports aiohttp: only this command pays for it.
    from linkd.runtime.images.pull import parse_platform, pull

    start = time.monotonic()
    target = parse_platform(args.platform) if args.platform else None
    progress = _progress()
    pulled = asyncio.run(pull(args.reference, ImageStore(), target=target,
                              report=progress.event, transfer=progress.transfer))
    progress.finish()
    image = pulled.image
    took = time.monotonic() - start
    print(f"pulled {', '.join(image.names)} ({image.id[:19]}, {len(image.layers)} layers, "
          f"{megabytes(image.size)}; fetched {pulled.fetched} layers, "
          f"{megabytes(pulled.fetched_bytes)}) in {took:.2f} s")
    return 0


def cmd_pull_stack(args: argparse.Namespace) -> int:
    """`linkd pull [SERVICE...]`: pull the images of a stack's services again (a name
    without a registry, `redis:7`, from Docker Hub); files and built images are not
    pulled."""
    from linkd import loader
    from linkd.cli.stacks import print_warnings, read_source
    from linkd.runtime.images.pull import parse_platform, pull, pullable

    source, file = read_source(args.file, args.project, args.env_file, args.profile)
    stack = loader.load(source)
    print_warnings(file, stack.warnings)
    if unknown := set(args.service) - {s.name for s in stack.services}:
        raise UsageError(f"no service {', '.join(sorted(unknown))} in {file}")
    chosen = [s for s in stack.services if not args.service or s.name in args.service]
    refs = pullable(chosen, source.directory)
    if not refs:
        print(f"nothing to pull: no image of {file} is a registry's")

    async def pull_all() -> None:
        for ref, platform in refs:
            start = time.monotonic()
            target = parse_platform(platform) if platform else None
            progress = _progress()
            pulled = await pull(ref, ImageStore(), target=target, report=progress.event,
                                transfer=progress.transfer)
            progress.finish()
            print(f"pulled {ref} ({pulled.image.id[:19]}; fetched {pulled.fetched} layers, "
                  f"{megabytes(pulled.fetched_bytes)}) in {time.monotonic() - start:.2f} s")

    asyncio.run(pull_all())
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    rows = [("NAME", "ID", "PLATFORM", "LAYERS", "SIZE")]
    images = ImageStore()
    for image in [*images.list(), *images.unnamed()]:
        for name in image.names or ("<none>",):
            rows.append((name, image.id[7:19], str(image.config.platform),
                         str(len(image.layers)), megabytes(image.size)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    store = ImageStore()
    shown = []
    for name in args.name:
        image = store.get(name)
        shown.append({"id": image.id, "names": list(image.names),
                      "platform": str(image.config.platform), "size": image.size,
                      "layers": list(image.layers), "config": dataclasses.asdict(image.config)})
    print(json.dumps(shown, indent=2))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    images = ImageStore()
    for name in args.name:
        image = images.get(name)
        users = [name for name, _ in containers_using(image.id)]
        if users and len(image.names) == 1:
            raise ConflictError(f"image {name} is used by {', '.join(users)}: its layers are "
                                "their root filesystems; take those stacks down first")
        images.remove(name)
        print(f"removed {name}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Docker's rule: the images without a name that no container of a stack up runs;
    with --all, every image none runs."""
    if not args.force and sys.stdin.isatty():
        what = "all images" if args.all else "images without a name"
        answer = input(f"This removes {what} that no container of a stack that is up runs. "
                       "Go on? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    in_use = {image_id for _, image_id in containers_using()}
    removed, freed = ImageStore().prune(in_use, named=args.all)
    for image in removed:
        print(f"removed {', '.join(image.names) or '<none>'} ({image.id[:19]})")
    print(f"reclaimed {megabytes(freed)}")
    return 0
