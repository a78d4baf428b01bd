"""`realize` as the shell calls it: with the conventions the stack names, built-in ones
included, read from their files first (`linkd.core.plan` reads no files)."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from linkd.core import plan
from linkd.core.model import Stack
from linkd.runtime.stack.conventions import load_conventions


def realize(stack: Stack, subnets: Mapping[str, IPv4Network], **options: Any) -> plan.StackPlan:
    options.setdefault("conventions", load_conventions(stack, Path(options.get("workdir", "."))))
    return plan.realize(stack, subnets, **options)
