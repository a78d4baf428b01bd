"""The state writer (linkd.runtime.stack.state_writer): a burst of changes is a few writes, each
encoded and written off the event loop, in order, and none after close. Real files under
a temporary LINKD_RUN_DIR."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from linkd.core.state import StackState
from linkd.runtime.stack import store
from linkd.runtime.stack.state_writer import StateWriter
from tests.unit.test_state_durability import shop_state


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LINKD_RUN_DIR", str(tmp_path / "run"))
    return tmp_path / "run"


class Recorder:
    """store.save, noting which thread wrote which state."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes: list[tuple[int, int]] = []  # (restarts of the state, thread id)
        real = store.save

        def save(state: StackState) -> None:
            self.writes.append((state.containers[0].restarts, threading.get_ident()))
            real(state)

        monkeypatch.setattr(store, "save", save)


async def test_a_burst_of_changes_is_a_few_writes_off_the_loop_ending_with_the_last(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(monkeypatch)
    current = {"state": shop_state(restarts=0)}
    writer = StateWriter(lambda: current["state"])
    for restarts in range(1, 501):  # 500 changes, as a stack of 500 coming up makes
        current["state"] = shop_state(restarts=restarts)
        writer.changed()
    await writer.flush()
    assert 1 <= len(recorder.writes) <= 3  # was one full encode and write per change
    assert all(thread != threading.get_ident() for _, thread in recorder.writes)
    written = [restarts for restarts, _ in recorder.writes]
    assert written == sorted(written) and written[-1] == 500
    assert store.load("shop") == current["state"]


async def test_flush_returns_once_the_change_before_it_is_on_disk(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = {"state": shop_state(restarts=1)}
    writer = StateWriter(lambda: current["state"])
    writer.changed()
    await asyncio.sleep(0)  # the first write under way
    current["state"] = shop_state(restarts=2)
    await writer.flush()
    assert store.load("shop").containers[0].restarts == 2


async def test_nothing_is_written_after_close(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(monkeypatch)
    writer = StateWriter(lambda: shop_state(restarts=7))
    writer.changed()
    await writer.close()  # what was pending is written
    assert [r for r, _ in recorder.writes] == [7]
    store.remove_stack_dir("shop")
    writer.changed()  # a late change: the directory must not come back
    await asyncio.sleep(0.05)
    assert not store.stack_dir("shop").exists()
    assert len(recorder.writes) == 1
