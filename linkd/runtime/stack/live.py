"""One stack as it is now, shared by the parts of its supervisor.

The supervisor is several parts with one job each (`planner`, `containers`, `publisher`,
`recovery`, `teardown`); what they all read and change is here: the plan, each
container's state and process, the stack's status, the task group every long-lived task
of the stack lives in, and where progress is reported. Mutable, and only ever touched on
the event loop, so no part needs a lock to read it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from linkd.core.plan import StackPlan
from linkd.core.state import ContainerState, StackState, StackStatus
from linkd.runtime.containers import process
from linkd.runtime.stack import store

Report = Callable[[str, str], None]  # (object, what happened), for progress displays


@dataclass(eq=False)
class LiveStack:
    name: str
    source: str  # the stack file; its directory is the stack's base
    report: Report
    plan: StackPlan | None = None
    status: StackStatus = "starting"
    states: dict[str, ContainerState] = field(default_factory=dict)
    processes: dict[str, process.ContainerProcess] = field(default_factory=dict)
    # Set by whoever runs the stack, for its lifetime: every monitor, probe and resolver
    # task lives in it, so none outlives the stack and a failing one ends it.
    tasks: asyncio.TaskGroup | None = None

    @property
    def base(self) -> Path:
        return Path(self.source).parent

    def state(self, name: str) -> ContainerState:
        return self.states.get(name) or ContainerState(name)

    def snapshot(self) -> StackState | None:
        """The stack's state as it is now (what the state file will hold)."""
        if self.plan is None:
            return None
        containers = tuple(self.state(c.name) for c in self.plan.containers)
        return StackState(self.plan, self.source, self.status, os.getpid(), containers)

    def running(self) -> set[str]:
        return {n for n, st in self.states.items() if st.status == "running"}

    def container_dir(self, name: str) -> Path:
        return store.container_dir(self.name, name)
