"""`linkd image pull|load|ls|rm`: the image store (linkd.runtime.images) from the command line.

Its arguments are declared in linkd.cli.main, which imports this module only when an `image`
command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from linkd.errors import ConflictError
from linkd.runtime.images.image_store import ImageStore, containers_using


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def cmd_load(args: argparse.Namespace) -> int:
    start = time.monotonic()
    image = ImageStore().load(args.file, args.name)
    took = time.monotonic() - start
    print(f"loaded {', '.join(image.names)} ({image.id[:19]}, {len(image.layers)} layers, "
          f"{_mb(image.size)}) in {took:.2f} s")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    # The pull's module imports aiohttp: only this command pays for it.
    from linkd.runtime.images.pull import parse_platform, pull

    start = time.monotonic()
    target = parse_platform(args.platform) if args.platform else None
    pulled = asyncio.run(pull(args.reference, ImageStore(), target=target))
    image = pulled.image
    took = time.monotonic() - start
    print(f"pulled {', '.join(image.names)} ({image.id[:19]}, {len(image.layers)} layers, "
          f"{_mb(image.size)}; fetched {pulled.fetched} layers, {_mb(pulled.fetched_bytes)}) "
          f"in {took:.2f} s")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    rows = [("NAME", "ID", "PLATFORM", "LAYERS", "SIZE")]
    for image in ImageStore().list():
        for name in image.names:
            rows.append((name, image.id[7:19], str(image.config.platform),
                         str(len(image.layers)), _mb(image.size)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
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
