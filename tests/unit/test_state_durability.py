"""Crash-safe state: framing with checksums (linkd.core.state), the last good copy and the
fallback to it (linkd.runtime.stack.store). Pure file I/O under a temporary LINKD_RUN_DIR."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import struct
import zlib
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkd.core import state
from linkd.core.ipam import Lease
from linkd.core.model import Attachment, Network, Service, Stack
from linkd.core.state import ContainerState, StackState, StackStatus, StateError
from linkd.errors import NotFoundError
from linkd.runtime.stack import store
from tests.planning import realize

NET = IPv4Network("10.87.5.0/24")


def shop_state(status: StackStatus = "up", restarts: int = 0) -> StackState:
    stack = Stack(
        "shop",
        (Service("db", command=("sleep", "60"), networks=(Attachment("front"),)),),
        (Network("front"),),
    )
    plan = realize(stack, {"front": NET})
    containers = tuple(
        ContainerState(c.name, "running", pid=100, restarts=restarts) for c in plan.containers
    )
    return StackState(plan, "/srv/shop/stack.yaml", status, 42, containers)


OLD, NEW = shop_state(restarts=1), shop_state(restarts=2)
LEASE = Lease("shop", (("front", NET),), (("front", "shop-db-1", IPv4Address("10.87.5.2"), None),))


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LINKD_RUN_DIR", str(tmp_path / "run"))
    return tmp_path / "run"


def flip(data: bytes, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


def framed(kind: bytes, payload: bytes, version: int = state.VERSION, flags: int = 0) -> bytes:
    """The header as the docs in linkd/core/state.py describe it, built by hand."""
    prefix = struct.pack(
        ">4scBHII", b"\x89LKD", kind, flags, version, len(payload), zlib.crc32(payload)
    )
    return prefix + struct.pack(">I", zlib.crc32(prefix)) + payload


# -- the format ------------------------------------------------------------------------


def test_the_header_is_the_documented_one() -> None:
    data = state.encode(OLD)
    assert state.HEADER_SIZE == 20
    payload = data[20:]
    assert data == framed(b"S", payload)
    assert state.decode(data) == OLD
    lease = state.pack(LEASE)
    assert lease == framed(b"V", lease[20:])
    assert state.unpack(Lease, lease) == LEASE


def test_truncation_at_every_offset_is_detected() -> None:
    data = state.encode(OLD)
    for size in range(len(data)):
        with pytest.raises(StateError) as caught:
            state.decode(data[:size])
        message = str(caught.value)
        if size == 0:
            assert message == "empty (0 bytes)"
        elif size < state.HEADER_SIZE:
            assert message == f"truncated: {size} of at least 20 bytes"
        else:
            assert message == f"truncated: {size} of {len(data)} bytes"


def test_every_single_bit_flip_is_detected() -> None:
    data = state.encode(OLD)
    for bit in range(len(data) * 8):
        with pytest.raises(StateError) as caught:
            state.decode(flip(data, bit))
        message = str(caught.value)
        if bit < 32:
            assert message.startswith("corrupt, or not a linkd file"), message
        elif bit < 160:
            assert message.startswith("header checksum mismatch"), message
        else:
            assert message.startswith("checksum mismatch"), message


def test_stray_bytes_after_the_payload_are_detected() -> None:
    data = state.encode(OLD)
    with pytest.raises(StateError, match=r"^3 stray bytes after the \d+ the header counts$"):
        state.decode(data + b"abc")


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_state_error(data: bytes) -> None:
    for candidate in (data, framed(b"S", data), framed(b"V", data)):
        with contextlib.suppress(StateError):
            state.decode(candidate)
        with contextlib.suppress(StateError):
            state.unpack(Lease, candidate)


@settings(max_examples=100)
@given(st.data())
def test_a_damaged_run_of_bytes_is_detected(data: st.DataObject) -> None:
    encoded = state.encode(OLD)
    start = data.draw(st.integers(0, len(encoded) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=4))
    damaged = encoded[:start] + junk + encoded[start + len(junk) :]
    damaged = damaged[: len(encoded)]
    if damaged == encoded:
        return
    with pytest.raises(StateError):
        state.decode(damaged)


def test_a_file_from_another_version_is_refused_with_the_versions() -> None:
    payload = state.encode(OLD)[20:]
    with pytest.raises(StateError, match=r"^format version 3, this linkd reads version 2; "):
        state.decode(framed(b"S", payload, version=3))
    with pytest.raises(StateError, match=r"not version|format version 1, this linkd reads"):
        state.unpack(Lease, framed(b"V", state.pack(LEASE)[20:], version=1))


def test_a_damaged_header_with_another_version_says_both() -> None:
    data = bytearray(framed(b"S", state.encode(OLD)[20:], version=7))
    data[16] ^= 0xFF  # the header CRC
    with pytest.raises(StateError, match="header checksum mismatch; its version field says 7"):
        state.decode(bytes(data))


def test_unknown_flags_are_refused() -> None:
    with pytest.raises(StateError, match="unknown flags 0x01"):
        state.decode(framed(b"S", state.encode(OLD)[20:], flags=1))


def test_old_unframed_files_are_refused_clearly() -> None:
    """The choice: files of the unframed format (version 1) are not read; they had no
    checksum to trust, and /run does not outlive a reboot, so only a stack brought up by
    the older linkd has one (`linkd down` still removes it, by name)."""
    old_state = msgpack.packb({"v": 1, "stack": {"source": "x"}}, use_bin_type=True)
    with pytest.raises(
        StateError,
        match=r"unframed format of another linkd \(version 1\); this linkd reads version 2",
    ):
        state.decode(old_state)
    old_lease = msgpack.packb({"v": 1, "value": state.to_plain(LEASE)}, use_bin_type=True)
    with pytest.raises(StateError, match=r"unreadable Lease: in the unframed format"):
        state.unpack(Lease, old_lease)
    with pytest.raises(
        StateError, match=r"^corrupt, or not a linkd file \(it starts with b'hello'\)$"
    ):
        state.decode(b"hello")


def test_a_state_and_a_lease_are_not_mistaken_for_each_other() -> None:
    with pytest.raises(StateError, match="holds a value, not a stack state"):
        state.decode(state.pack(LEASE))
    with pytest.raises(StateError, match="unreadable Lease: holds a stack state, not a value"):
        state.unpack(Lease, state.encode(OLD))


def test_a_good_checksum_over_a_wrong_shape_is_still_a_state_error() -> None:
    with pytest.raises(StateError, match="checksum is good but the contents do not decode"):
        state.decode(framed(b"S", msgpack.packb({"plan": 1})))


def test_leases_are_framed_too() -> None:
    data = state.pack(LEASE)
    for size in range(len(data)):
        with pytest.raises(StateError, match=r"^unreadable Lease: (empty|truncated)"):
            state.unpack(Lease, data[:size])
    for bit in range(len(data) * 8):
        with pytest.raises(StateError, match=r"^unreadable Lease: "):
            state.unpack(Lease, flip(data, bit))


# -- the store: last good copy and fallback --------------------------------------------


def test_save_keeps_the_previous_state(run_dir: Path) -> None:
    store.save(OLD)
    assert not store.prev_path("shop").exists()  # nothing to keep yet
    store.save(NEW)
    assert store.load("shop") == NEW
    assert state.decode(store.prev_path("shop").read_bytes()) == OLD
    assert sorted(p.name for p in store.stack_dir("shop").iterdir()) == [
        "state.msgpack",
        "state.msgpack.prev",
    ]  # no temporary file left


def test_a_corrupt_state_falls_back_to_the_last_good_copy(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.save(OLD)
    store.save(NEW)
    path = store.state_path("shop")
    path.write_bytes(flip(path.read_bytes(), 8 * 300))
    with caplog.at_level(logging.WARNING, logger="linkd"):
        assert store.load("shop") == OLD
    [record] = caplog.records
    assert record.name == "linkd" and record.levelno == logging.WARNING
    message = record.getMessage()
    assert str(path) in message
    assert "checksum mismatch" in message
    assert f"using the last good copy, {store.prev_path('shop')}" in message
    assert store.stacks() == ["shop"]


@pytest.mark.parametrize("damage", ["torn", "empty", "missing"])
def test_a_torn_empty_or_missing_state_falls_back(
    run_dir: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    store.save(OLD)
    store.save(NEW)
    path = store.state_path("shop")
    if damage == "torn":
        path.write_bytes(path.read_bytes()[:100])
        expected = f"truncated: 100 of {len(state.encode(NEW))} bytes"
    elif damage == "empty":
        path.write_bytes(b"")
        expected = "empty (0 bytes)"
    else:
        path.unlink()
        expected = "missing"
    with caplog.at_level(logging.WARNING, logger="linkd"):
        assert store.load("shop") == OLD
    assert f"{path}: {expected}; using the last good copy" in caplog.text
    assert store.stacks() == ["shop"]


def test_both_corrupt_is_a_state_error_naming_both(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.save(OLD)
    store.save(NEW)
    path, prev = store.state_path("shop"), store.prev_path("shop")
    path.write_bytes(path.read_bytes()[:50])
    prev.write_bytes(flip(prev.read_bytes(), 8 * 10))  # the length field
    with pytest.raises(StateError) as caught:
        store.load("shop")
    message = str(caught.value)
    assert f"{path}: truncated: 50 of" in message
    assert f"{prev} (the last good copy): header checksum mismatch" in message
    assert "`linkd down -p shop`" in message
    assert not caplog.records  # no claim to have used anything
    assert store.stacks() == ["shop"]  # still listed, so `ps`/`down` can name it


def test_a_corrupt_state_without_a_copy_says_so(run_dir: Path) -> None:
    store.save(OLD)
    path = store.state_path("shop")
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(StateError) as caught:
        store.load("shop")
    message = str(caught.value)
    assert f"{path}: corrupt, or not a linkd file" in message
    assert "there is no last good copy" in message and "`linkd down -p shop`" in message


def test_no_state_at_all_is_not_found(run_dir: Path) -> None:
    with pytest.raises(NotFoundError, match="stack shop is not up"):
        store.load("shop")
    assert store.stacks() == []


def test_a_corrupt_current_is_not_rotated_over_the_good_copy(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.save(OLD)
    store.save(NEW)
    store.state_path("shop").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="linkd"):
        store.save(shop_state(restarts=3))
    assert "keeping state.msgpack.prev as the last good copy" in caplog.text
    assert state.decode(store.prev_path("shop").read_bytes()) == OLD
    assert store.load("shop") == shop_state(restarts=3)


def test_remove_stack_dir_removes_both_copies(run_dir: Path) -> None:
    store.save(OLD)
    store.save(NEW)
    store.remove_stack_dir("shop")
    assert store.stacks() == []
    assert not store.stack_dir("shop").exists()


# -- crashes in the middle of a save ---------------------------------------------------


def test_a_crash_leaving_a_temporary_file_loses_nothing(run_dir: Path) -> None:
    store.save(OLD)
    directory = store.stack_dir("shop")
    (directory / ".state.msgpack.999.0.tmp").write_bytes(state.encode(NEW)[:77])
    assert store.load("shop") == OLD
    assert store.stacks() == ["shop"]
    store.save(NEW)
    assert store.load("shop") == NEW


def test_a_crash_after_linking_the_copy_is_harmless(run_dir: Path) -> None:
    store.save(OLD)
    # Step 2 done, step 3 not: state.msgpack and .prev are the same file.
    os.link(store.state_path("shop"), store.prev_path("shop"))
    assert store.load("shop") == OLD
    store.save(NEW)
    assert store.load("shop") == NEW
    assert state.decode(store.prev_path("shop").read_bytes()) == OLD
    assert not [p for p in store.stack_dir("shop").iterdir() if p.suffix == ".tmp"]


def record_crash_points(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> list[Path]:
    """Copy the run directory aside before every call that changes the disk: each copy
    is what a crash of linkd at that instant leaves (the page cache outlives it)."""
    taken: list[Path] = []
    busy = False

    def snapshot(step: str) -> None:
        nonlocal busy
        if busy:
            return
        busy = True
        try:
            target = run_dir.parent / f"crash-{len(taken)}-{step}"
            shutil.copytree(run_dir, target)
            taken.append(target)
        finally:
            busy = False

    def wrap(name: str) -> None:
        real = getattr(os, name)

        def step(*args: Any, **kwargs: Any) -> Any:
            snapshot(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, step)

    for name in ("open", "write", "fsync", "link", "replace", "rename", "unlink"):
        wrap(name)
    return taken


@pytest.mark.parametrize("saves_before", [1, 2])
def test_a_crash_at_any_step_of_save_leaves_a_good_state(
    run_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    saves_before: int,
) -> None:
    older = shop_state(restarts=0)
    if saves_before == 2:
        store.save(older)
    store.save(OLD)
    with pytest.MonkeyPatch.context() as patch:
        snapshots = record_crash_points(patch, run_dir)
        store.save(NEW)
    steps = [snap.name.split("-")[-1] for snap in snapshots]
    # The new state to a temporary file, the old one linked and renamed to .prev, the
    # new one renamed into place; no fsync (store's docstring: /run does not outlive
    # the kernel, and neither does what the state describes).
    assert steps == ["open", "write", "link", "replace", "replace"]
    for snap in [*snapshots, run_dir]:
        monkeypatch.setenv("LINKD_RUN_DIR", str(snap))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="linkd"):
            assert store.load("shop") in (OLD, NEW), snap.name
            assert store.stacks() == ["shop"]
        assert not caplog.records, snap.name  # state.msgpack itself was whole throughout
        prev = store.prev_path("shop")
        if prev.exists():
            assert state.decode(prev.read_bytes()) in (older, OLD), snap.name
    assert store.load("shop") == NEW  # run_dir, last: the save went through


def test_write_atomic_fsyncs_the_file_and_the_directory(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = run_dir / "x" / "hosts"
    store.write_atomic(target, b"127.0.0.1 localhost\n")
    assert synced == ["file", "dir"]
    assert target.read_bytes() == b"127.0.0.1 localhost\n"
    assert [p.name for p in target.parent.iterdir()] == ["hosts"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save(OLD)

    def no_space(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "write", no_space)
        with pytest.raises(OSError, match="No space"):
            store.save(NEW)
    assert store.load("shop") == OLD
    assert [p.name for p in store.stack_dir("shop").iterdir()] == ["state.msgpack"]


# -- leases in the store ---------------------------------------------------------------


def test_a_corrupt_lease_is_ignored_with_a_warning(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.save_lease(LEASE)
    assert store.load_lease("shop") == LEASE
    path = store.lease_path("shop")
    path.write_bytes(flip(path.read_bytes(), 8 * 30))
    with caplog.at_level(logging.WARNING, logger="linkd"):
        assert store.load_lease("shop") is None
        assert store.leases() == []
    assert f"{path}: unreadable Lease: checksum mismatch" in caplog.text
    caplog.clear()
    assert store.load_lease("other") is None  # none at all: nothing to say
    assert not caplog.records
