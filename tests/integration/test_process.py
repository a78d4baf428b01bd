"""Container processes for real: namespaces, mounts, signals and exit codes (needs root).

Every test runs in a fresh, uniquely named network namespace holding a veth pair
(``lkt0``/``lkt1``), so "same network" can be told from the host's.  The fixtures remove the
namespace even when a test fails, and check that no shim, init or command process, nor
anything else in a container's PID namespace, outlives the test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from linkd.errors import ContainerError
from linkd.runtime.containers import launch
from linkd.runtime.containers.process import (
    ContainerProcess,
    ProcessSpec,
    exec_argv,
    start,
    warm,
    write_exec_spec,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, mounts)")

PATH_ENV = ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")


# --- /proc helpers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    state: str
    nspid: tuple[int, ...]  # pid in each namespace, outermost first
    comm: str


def proc_info(pid: int) -> ProcInfo | None:
    try:
        fields = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    except OSError:
        return None
    return ProcInfo(
        pid=pid,
        ppid=int(fields["PPid"]),
        state=fields["State"].split()[0],
        nspid=tuple(int(p) for p in fields["NSpid"].split()),
        comm=fields["Name"],
    )


def pid_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def members(ns: str) -> list[ProcInfo]:
    """Every process (zombies included) whose PID namespace is `ns`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
        except OSError:
            continue  # exited meanwhile, or a zombie without ns links
        info = proc_info(int(entry))
        if info is not None:
            found.append(info)
    return found


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"linkd-t{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # No dummy module on every kernel; a veth pair inside the namespace does as well.
        subprocess.run(
            ["ip", "-n", name, "link", "add", "lkt0", "type", "veth", "peer", "name", "lkt1"],
            check=True,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert (
        name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )


@dataclass
class Runner:
    """Starts containers for a test and remembers them for the leftover check."""

    netns: str
    tmp: Path
    started: list[tuple[ContainerProcess, str | None]] = field(default_factory=list)

    def spec(self, *argv: str, **overrides: object) -> ProcessSpec:
        name = str(overrides.pop("name", f"web-{len(self.started) + 1}"))
        run_dir = self.tmp / name
        values: dict[str, object] = {
            "name": name,
            "netns": self.netns,
            "hostname": name,
            "argv": argv,
            "env": (PATH_ENV,),
            "working_dir": None,
            "user": None,
            "bind_files": (),
            "log_path": str(self.tmp / f"{name}.log"),
            "run_dir": str(run_dir),
        }
        values.update(overrides)
        return ProcessSpec(**values)  # type: ignore[arg-type]

    async def start(self, spec: ProcessSpec) -> ContainerProcess:
        proc = await start(spec)
        self.track(proc)
        return proc

    def track(self, proc: ContainerProcess) -> None:
        try:
            ns = pid_ns(proc.init_pid)
        except (FileNotFoundError, PermissionError):
            # A short command on a busy machine: init is already dead, or dying (the
            # kernel refuses to show a dying task's namespaces: EACCES).
            ns = None
        self.started.append((proc, ns))

    async def run(self, spec: ProcessSpec) -> tuple[int, str]:
        """Run to completion; return the exit code and the log."""
        proc = await self.start(spec)
        async with asyncio.timeout(5):
            code = await proc.wait()
        return code, Path(spec.log_path).read_text()


@pytest.fixture
async def runner(netns: str, tmp_path: Path) -> AsyncIterator[Runner]:
    r = Runner(netns, tmp_path)
    try:
        yield r
    finally:
        for proc, _ in r.started:
            proc.kill()
        for proc, _ in r.started:
            async with asyncio.timeout(5):
                await proc.wait()
    # Checked after the cleanup above so a failed test still cleans up.
    for proc, ns in r.started:
        if ns is not None:
            assert members(ns) == [], f"processes left in {proc.name}'s PID namespace"
        info = proc_info(proc.pid)
        assert info is None or info.comm != "linkd-shim", f"shim of {proc.name} survived"


async def wait_for_log(spec: ProcessSpec, text: str, timeout: float = 5.0) -> str:
    async with asyncio.timeout(timeout):
        while True:
            log = Path(spec.log_path).read_text() if os.path.exists(spec.log_path) else ""
            if text in log:
                return log
            await asyncio.sleep(0.01)


# --- identity: hostname, PIDs, mounts, environment, user ------------------------------------


async def test_hostname_is_the_specs(runner: Runner) -> None:
    code, log = await runner.run(runner.spec("hostname", hostname="db-primary"))
    assert (code, log) == (0, "db-primary\n")
    assert os.uname().nodename != "db-primary"


async def test_command_runs_as_pid_2_under_an_init(runner: Runner) -> None:
    code, log = await runner.run(runner.spec("sh", "-c", "echo $$; cat /proc/1/comm"))
    assert (code, log) == (0, "2\nlinkd-init\n")


async def test_bind_files_replace_files_only_inside(runner: Runner, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.89.0.7 db\n")
    host_hosts = Path("/etc/hosts").read_text()
    host_mounts = Path("/proc/self/mounts").read_text()
    spec = runner.spec(
        "sh",
        "-c",
        "cat /etc/hosts; (echo x >> /etc/hosts) 2>/dev/null || echo read-only; "
        "echo ready; exec sleep 60",
        bind_files=((str(hosts), "/etc/hosts"),),
    )
    proc = await runner.start(spec)
    log = await wait_for_log(spec, "ready")
    assert log == "10.89.0.7 db\nread-only\nready\n"
    # While it runs, the host sees neither the bind mount nor /proc, /tmp of the container.
    assert Path("/proc/self/mounts").read_text() == host_mounts
    assert Path("/etc/hosts").read_text() == host_hosts
    assert await proc.stop(signal.SIGTERM, 5) == 143
    assert hosts.read_text() == "10.89.0.7 db\n"


async def test_bind_target_must_exist(runner: Runner, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(ContainerError, match="/etc/linkd-no-such-file is not an existing file"):
        await runner.start(runner.spec("true", bind_files=((str(src), "/etc/linkd-no-such-file"),)))


async def test_tmp_is_private(runner: Runner, tmp_path: Path) -> None:
    marker = f"linkd-test-{secrets.token_hex(4)}"
    code, log = await runner.run(
        runner.spec("sh", "-c", f"ls -A /tmp; echo secret > /tmp/{marker} && echo wrote")
    )
    assert (code, log) == (0, "wrote\n")  # the host's /tmp (and tmp_path in it) is hidden
    assert tmp_path.is_relative_to("/tmp") and tmp_path.exists()
    assert not os.path.exists(f"/tmp/{marker}")


async def test_container_does_not_pin_other_network_namespaces(runner: Runner) -> None:
    # Copies of /run/netns/* bind mounts would keep those namespaces (and veths) alive
    # after `ip netns del` on the host.
    spec = runner.spec("sh", "-c", "echo ready; exec sleep 60")
    proc = await runner.start(spec)
    await wait_for_log(spec, "ready")
    mountinfo = Path(f"/proc/{proc.init_pid}/mountinfo").read_text()
    assert " nsfs " not in mountinfo
    assert " - proc " in mountinfo and " /tmp " in mountinfo


async def test_env_is_exactly_the_given_env(runner: Runner) -> None:
    env = (PATH_ENV, ("DB_URL", "postgres://db:5432/app"), ("SPACED", "a b  c"), ("EMPTY", ""))
    code, log = await runner.run(runner.spec("env", env=env))
    assert code == 0
    assert log.splitlines() == [f"{k}={v}" for k, v in env]


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("nobody", "65534\n65534\n65534\n"),
        ("1234:5678", "1234\n5678\n5678\n"),
        ("nobody:daemon", "65534\n1\n1\n"),
    ],
)
async def test_working_dir_and_user_are_applied(runner: Runner, user: str, expected: str) -> None:
    spec = runner.spec("sh", "-c", "pwd; id -u; id -g; id -G", user=user, working_dir="/usr/lib")
    code, log = await runner.run(spec)
    assert (code, log) == (0, "/usr/lib\n" + expected)


async def test_unknown_user_is_reported(runner: Runner) -> None:
    with pytest.raises(ContainerError, match="user 'linkd-nouser' not found"):
        await runner.start(runner.spec("true", user="linkd-nouser"))


# --- exit codes, stop, signals, zombies ------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [(("true",), 0), (("sh", "-c", "exit 3"), 3)])
async def test_exit_code_is_the_commands(
    runner: Runner, argv: tuple[str, ...], expected: int
) -> None:
    proc = await runner.start(runner.spec(*argv))
    waits = await asyncio.gather(proc.wait(), proc.wait(), proc.wait())
    assert list(waits) == [expected] * 3
    assert proc.returncode == expected
    proc.send_signal(signal.SIGTERM)  # gone already: no error
    assert await proc.stop(signal.SIGTERM, 1) == expected


async def test_stop_with_sigterm_gives_143(runner: Runner) -> None:
    proc = await runner.start(runner.spec("sleep", "60"))
    assert proc.returncode is None
    started = time.monotonic()
    assert await proc.stop(signal.SIGTERM, 5) == 143
    assert time.monotonic() - started < 1


async def test_stop_kills_after_grace_when_sigterm_is_ignored(runner: Runner) -> None:
    spec = runner.spec("sh", "-c", "trap '' TERM; echo ready; sleep 60")
    proc = await runner.start(spec)
    await wait_for_log(spec, "ready")
    started = time.monotonic()
    assert await proc.stop(signal.SIGTERM, 0.5) == 137
    assert 0.5 <= time.monotonic() - started < 1.0


async def test_signal_reaches_the_command(runner: Runner) -> None:
    spec = runner.spec(
        "sh", "-c", "trap 'echo got-usr1; exit 0' USR1; echo ready; while :; do sleep 0.02; done"
    )
    proc = await runner.start(spec)
    await wait_for_log(spec, "ready")
    proc.send_signal(signal.SIGUSR1)
    async with asyncio.timeout(5):
        assert await proc.wait() == 0
    assert Path(spec.log_path).read_text() == "ready\ngot-usr1\n"


async def test_orphans_are_reaped_by_init(runner: Runner) -> None:
    spec = runner.spec("sh", "-c", "(sleep 0.3 &); (sleep 0.3 &); echo spawned; exec sleep 60")
    proc = await runner.start(spec)
    await wait_for_log(spec, "spawned")
    ns = pid_ns(proc.init_pid)
    orphans = [p for p in members(ns) if p.ppid == proc.init_pid and p.nspid[-1] != 2]
    assert len(orphans) == 2, "the subshells' children were not reparented to init"
    async with asyncio.timeout(3):
        while len(members(ns)) > 2:
            if all(p.state == "Z" for p in members(ns) if p.nspid[-1] > 2):
                await asyncio.sleep(0.2)  # give a missing reap the chance to show
                break
            await asyncio.sleep(0.02)
    left = {p.nspid[-1]: (p.comm, p.state) for p in members(ns)}
    assert left == {1: ("linkd-init", "S"), 2: ("sleep", "S")}


# --- start failures --------------------------------------------------------------------------


async def test_command_not_found_names_the_command(runner: Runner) -> None:
    with pytest.raises(ContainerError) as info:
        await runner.start(runner.spec("linkd-no-such-command", "--flag", name="api-1"))
    message = str(info.value)
    assert "container api-1" in message and "'linkd-no-such-command' not found in PATH" in message
    assert info.value.exit_code == 127
    assert processes_mentioning(str(runner.tmp / "api-1")) == []


async def test_command_not_executable_exits_126(runner: Runner) -> None:
    with pytest.raises(ContainerError, match="cannot execute '/etc/hosts'") as info:
        await runner.start(runner.spec("/etc/hosts"))
    assert info.value.exit_code == 126


async def test_missing_network_namespace_is_reported(runner: Runner) -> None:
    with pytest.raises(ContainerError, match="network namespace 'linkd-tmissing'"):
        await runner.start(runner.spec("true", netns="linkd-tmissing"))


async def test_cancelled_start_leaves_nothing(runner: Runner) -> None:
    spec = runner.spec("sleep", "60", name="cancelled")
    task = asyncio.create_task(start(spec))
    await asyncio.sleep(0.005)  # the shim is spawned but the command not yet exec'd
    task.cancel()
    try:
        proc = await task
    except asyncio.CancelledError:
        pass
    else:  # the machine was faster than the sleep: still must be cleaned up
        runner.track(proc)
    async with asyncio.timeout(3):
        while processes_mentioning(spec.run_dir):
            await asyncio.sleep(0.01)


async def test_a_warm_shim_runs_the_spec_written_after_it_started(runner: Runner) -> None:
    spec = runner.spec("sh", "-c", "echo started; hostname", name="warmed")
    shim = warm(spec.run_dir, spec.log_path)
    # At its gate: nothing of the container exists before start writes the spec.
    await asyncio.sleep(0.3)
    assert shim.child.poll() is None
    assert not Path(spec.run_dir, "spec.marshal").exists()
    assert [p for p in processes_mentioning(spec.run_dir) if p != shim.child.pid] == []
    proc = await start(spec, shim)
    runner.track(proc)
    assert proc.pid == shim.child.pid  # the warm shim, not a new one
    async with asyncio.timeout(5):
        assert await proc.wait() == 0
    assert Path(spec.log_path).read_text() == "started\nwarmed\n"


async def test_a_discarded_warm_shim_starts_nothing_and_is_gone(runner: Runner) -> None:
    spec = runner.spec("sleep", "60", name="dropped")
    shim = warm(spec.run_dir, spec.log_path)
    shim.discard()
    assert shim.child.returncode is not None
    assert processes_mentioning(spec.run_dir) == []


@pytest.mark.parametrize("closefrom", [True, False], ids=["posix_spawn", "subprocess"])
async def test_a_shim_gets_its_stdio_status_pipe_and_gate_only(
    runner: Runner, closefrom: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As subprocess with close_fds gave it, on both spawn paths (glibc's posix_spawn, and
    subprocess where glibc has no closefrom): stdin /dev/null, stdout and stderr the log,
    the status pipe and the gate, nothing else of ours; a session of its own."""
    monkeypatch.setattr(launch, "_HAS_CLOSEFROM", closefrom)
    leak = os.open("/dev/null", os.O_RDONLY)  # inheritable, as a careless library's fd
    os.set_inheritable(leak, True)
    try:
        spec = runner.spec("true", name="fds")
        shim = warm(spec.run_dir, spec.log_path)
        pid = shim.child.pid
        try:
            # The shim's interpreter opens and closes its modules' files as it starts, up
            # to the gate: look once it waits there (a leaked fd never goes, and fails
            # below); one closed between the listing and its readlink is looked at again.
            deadline = time.monotonic() + 5
            while True:
                try:
                    fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}")
                           for fd in os.listdir(f"/proc/{pid}/fd")}
                except FileNotFoundError:
                    fds = {}
                if len(fds) == 5 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)
            status, gate = sorted(fds)[3:5]
            assert sorted(fds) == [0, 1, 2, status, gate]
            assert fds[0] == "/dev/null" and fds[1] == fds[2] == spec.log_path
            assert fds[status].startswith("pipe:") and fds[gate].startswith("pipe:")
            assert os.getsid(pid) == pid
        except BaseException:
            shim.discard()  # a failed look leaves no shim waiting at its gate
            raise
        proc = await start(spec, shim)
        runner.track(proc)
        async with asyncio.timeout(5):
            assert await proc.wait() == 0
    finally:
        os.close(leak)


def test_a_warm_shim_whose_starter_dies_exits_without_starting(tmp_path: Path) -> None:
    """The gate's EOF (the runtime died with it open) ends the shim: no orphan waits."""
    starter = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from linkd.runtime.containers.process import warm
shim = warm({str(tmp_path / "orphan")!r}, {str(tmp_path / "orphan.log")!r})
print(shim.child.pid, flush=True)
"""  # exits at once, gate still closed
    done = subprocess.run(["python3", "-c", starter], capture_output=True, text=True,
                          check=True, timeout=10)
    pid = int(done.stdout)
    deadline = time.monotonic() + 5
    while (info := proc_info(pid)) is not None and info.state != "Z":
        assert time.monotonic() < deadline, "the warm shim outlived its starter"
        time.sleep(0.02)
    assert not (tmp_path / "orphan" / "spec.marshal").exists()


# --- exec ------------------------------------------------------------------------------------


async def run_exec(proc: ContainerProcess, tmp: Path, *argv: str, **kw: object) -> tuple[int, str]:
    spec_path = str(tmp / f"exec-{secrets.token_hex(3)}.json")
    write_exec_spec(
        spec_path,
        argv,
        kw.get("env", (PATH_ENV,)),  # type: ignore[arg-type]
        kw.get("working_dir"),  # type: ignore[arg-type]
        kw.get("user"),  # type: ignore[arg-type]
        name=proc.name,
    )
    done = await asyncio.to_thread(
        subprocess.run,
        exec_argv(proc.init_pid, spec_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return done.returncode, done.stdout + done.stderr


async def test_exec_joins_the_running_container(runner: Runner, tmp_path: Path) -> None:
    spec = runner.spec("sleep", "60", hostname="cache-2")
    proc = await runner.start(spec)
    code, out = await run_exec(
        proc,
        tmp_path,
        "sh",
        "-c",
        "hostname; echo $$; cat /proc/1/comm /proc/2/comm; pwd; id -u; cat /proc/net/dev; exit 5",
        working_dir="/usr",
        user="nobody",
    )
    assert code == 5
    lines = out.splitlines()
    assert lines[0] == "cache-2"
    assert int(lines[1]) > 2  # its own pid in the container's PID namespace
    assert lines[2:6] == ["linkd-init", "sleep", "/usr", "65534"]
    interfaces = {line.split(":")[0].strip() for line in lines[6:] if ":" in line}
    assert interfaces == {"lo", "lkt0", "lkt1"}  # the container's netns, not the host's

    code, out = await run_exec(proc, tmp_path, "env", env=(PATH_ENV, ("MODE", "debug")))
    assert (code, out) == (0, f"{PATH_ENV[0]}={PATH_ENV[1]}\nMODE=debug\n")

    code, out = await run_exec(proc, tmp_path, "linkd-no-such-command")
    assert code == 127
    assert "container web-1: command 'linkd-no-such-command' not found in PATH" in out

    # The exec'd processes are gone; the container still runs undisturbed.
    assert [p.comm for p in members(pid_ns(proc.init_pid))] == ["linkd-init", "sleep"]
    assert proc.returncode is None


async def test_exec_forwards_signals_and_dies_with_its_shim(runner: Runner, tmp_path: Path) -> None:
    proc = await runner.start(runner.spec("sleep", "60"))
    ns = pid_ns(proc.init_pid)
    spec_path = str(tmp_path / "exec.json")
    # A tree, as a shell command often is: sh and two sleeps, which are not the shim's
    # children, so PDEATHSIG alone would not reach them.
    write_exec_spec(spec_path, ["sh", "-c", "sleep 30 & sleep 30; wait"], [PATH_ENV], None,
                    None)

    async def exec_started() -> subprocess.Popen[bytes]:
        shim = subprocess.Popen(exec_argv(proc.init_pid, spec_path))
        async with asyncio.timeout(5):
            while len([p for p in members(ns) if p.state != "Z"]) < 5:
                await asyncio.sleep(0.01)
        return shim

    async def all_of_it_gone() -> None:
        # Orphaned, the command is reparented to the host's PID 1 (the reaper of its dead
        # parent's namespace, not the container's init), so it may linger briefly as a
        # zombie; so may the sleeps, reparented to the container's init.
        async with asyncio.timeout(2):
            while [p for p in members(ns) if p.nspid[-1] > 2 and p.state != "Z"]:
                await asyncio.sleep(0.01)
            while processes_mentioning(spec_path):  # the shim's guard too
                await asyncio.sleep(0.01)

    shim = await exec_started()
    shim.send_signal(signal.SIGTERM)  # to the command's group, as a terminal's ^C would
    assert await asyncio.to_thread(shim.wait, 5) == 143
    await all_of_it_gone()

    shim = await exec_started()
    shim.kill()  # no chance to forward anything: its guard must end the command's group
    await asyncio.to_thread(shim.wait, 5)
    await all_of_it_gone()


async def test_exec_on_a_terminal_gives_the_command_its_foreground(
    runner: Runner, tmp_path: Path
) -> None:
    """On a terminal (an interactive shell's case) the command's group is the terminal's
    foreground: it sees itself there, and ^C reaches it, sleep and all."""
    proc = await runner.start(runner.spec("sleep", "60"))
    spec_path = str(tmp_path / "exec.json")
    script = ("read -r pid comm state ppid pgrp session tty tpgid rest < /proc/self/stat; "
              'echo "ids $pid $pgrp $tpgid"; sleep 30')
    write_exec_spec(spec_path, ["sh", "-c", script], [PATH_ENV], None, None)
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # in the shim, before exec: its session's terminal
        import fcntl
        import termios

        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    shim = subprocess.Popen(exec_argv(proc.init_pid, spec_path), stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True,
                            preexec_fn=controlling_terminal)
    os.close(slave)
    try:
        seen = b""
        async with asyncio.timeout(5):
            while b"ids" not in seen or not seen.endswith(b"\n"):
                seen += await asyncio.to_thread(os.read, master, 1024)
        pid, pgrp, tpgid = seen.split(b"ids ")[1].split()
        assert pid == pgrp == tpgid, seen  # a group of its own, in the foreground
        os.write(master, b"\x03")  # ^C: the terminal's SIGINT to the foreground group
        assert await asyncio.to_thread(shim.wait, 5) == 130
        async with asyncio.timeout(2):  # sleep too
            while [p for p in members(pid_ns(proc.init_pid))
                   if p.nspid[-1] > 2 and p.state != "Z"]:
                await asyncio.sleep(0.01)
    finally:
        if shim.poll() is None:
            shim.kill()  # started above
            shim.wait()
        os.close(master)
