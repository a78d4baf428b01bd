"""The container shim: turns a command from the host filesystem into a container.

Standalone on purpose: standard library only, never ``import linkd``, so that it starts in
~10 ms (no site-packages scan, no package imports; run as an imported module from its
cached bytecode by ``linkd.runtime.containers.launch.shim_argv``, and without the ``signal``
module's enums).

``run SPEC_JSON STATUS_FD`` (spawned by ``process.start``) builds this tree::

    linkd runtime            never changes its own namespaces (DESIGN principle 6)
     └─ A  shim              host PID ns; inside the container's net/uts/ipc/mount ns
         └─ B  init          PID 1 of the new PID namespace: forwards signals, reaps zombies
             └─ C  command   PID 2: setsid, user, cwd, default signals, then execvpe

Why each piece exists:

* **A** enters the named network namespace (``setns``) and ``unshare``s UTS, IPC, mount and
  PID.  ``unshare(CLONE_NEWPID)`` never moves the caller, only its future children, so a fork
  is unavoidable; A stays behind as the runtime's direct child, so the runtime can watch it
  with a pidfd and learn the exit code, and as B's parent, the only process that can collect
  B's exit status.  A forwards the runtime's signals to B.
* **B** is needed because the kernel treats PID 1 specially: orphans are reparented to it
  (a plain command would leave zombies), and signals whose disposition is the default are
  dropped for it (a plain ``sleep`` as PID 1 would ignore SIGTERM).  B installs a handler for
  every catchable signal and forwards it to C, reaps every child, and exits with C's exit
  code (128+N for a signal death, Docker's convention).  When B exits the kernel SIGKILLs
  everything left in the namespace, so no process can outlive its container.
* **PR_SET_PDEATHSIG(SIGKILL)** in B: if A dies (SIGKILLed by a crashing daemon's cleanup,
  the OOM killer), B is killed and with it the whole namespace.  The prctl only covers deaths
  after the call, so B then checks A is still there.  ``getppid()`` cannot tell (A lives
  outside B's PID namespace, so it always reads 0), hence a pipe whose write end only A
  holds: EOF on it means A is gone.
* **STATUS_FD** tells the runtime when the command is running without any polling: A writes
  ``pid <B's host pid>``; C marks the fd close-on-exec, so a successful ``execve`` closes the
  last copy and the runtime sees EOF.  If anything fails first, the failing process writes one
  ``error: container NAME: ...`` line before exiting, and the runtime raises it.
* **Parent death.**  By default A dies with the process that started it: it arms
  PR_SET_PDEATHSIG(SIGKILL) first thing and then checks that ``getppid()`` is still the
  starter named in the spec (``parent``), which closes the race with a starter that died
  before the prctl; B then follows A as above.  With ``survive_parent`` in the spec A skips
  both, so the container outlives its starter, even a SIGKILLed one.  Either way A runs in
  its own session without a controlling terminal (the runtime starts it with ``setsid``),
  so a closing terminal's SIGHUP to the starter's process group never reaches it.
* **Exit file.**  A records the container's exit code (the command's, or 128+N) in the
  spec's ``exit_path`` just before it exits, so that a process that is not A's parent (a
  restarted daemon that adopted the container) can learn it.  Written as a temporary file
  renamed over ``exit``, so a reader sees all of it or nothing; the content is
  ``CODE\nshim PID\n`` (PID is A's, so a file left by an earlier run cannot be taken for
  this one's).  A opens the directory before creating the namespaces: in the container's
  mount namespace, which A shares, /tmp and /run/linkd are other file systems.  There is no
  file when A itself was killed (SIGKILL, the OOM killer).

Exit codes of the shim when the command never ran: 127 command not found, 126 found but not
executable (or the user/cwd could not be applied with EACCES/EPERM), 125 the namespace or
mount setup failed (Docker uses the same three).

The pieces, each a module beside this one (standard library only, imported by plain
name: the loader puts this directory last on sys.path, and the ``shim_`` prefix keeps
them from shadowing, or being shadowed by, a standard module):

* ``shim_base``: libc, kernel constants, SetupError and the exit codes, the spec
  (``load_spec``, with ``confine.marshal`` beside it), parent-death safety, signal
  forwarding.
* ``shim_mounts``: what B mounts: the host's files and directories bound read-only, a
  private /tmp, masked /proc and /sys paths, and for **images** (``rootfs_dir`` in the
  spec) the overlay root, its /dev, /sys and cgroups, and pivot_root; for runc
  (``rootfs_pivot`` false) C is ``runc run`` on a bundle, which does the rest itself.
* ``shim_volumes``: the container's `volumes:` and `tmpfs`: sources opened before
  anything hides them, volumes seeded from the image, everything mounted by depth.
* ``shim_command``: what C (and exec's child, and a health probe) does last:
  **confinement** (bounding set, capabilities, no_new_privs, seccomp), user, working
  directory, default signals, execve with the container's PATH.
* ``shim_entry``: ``exec INIT_PID SPEC_JSON [--remove-spec]`` (``linkd exec``): joining a
  running container, the one way in that health probes take too (``health_agent.py``).
"""
import os
import sys

# Not `from typing import ...` at run time (start-up time; see shim_base, also for
# `_signal`). The shim's modules by plain name: run as the shim, this directory is on
# sys.path; imported as part of linkd (the type checker, tests), they are its siblings.
TYPE_CHECKING = False
if TYPE_CHECKING or __package__:
    import signal
    from typing import Any, NoReturn

    from . import shim_base as base
    from . import shim_command as command
    from . import shim_mounts as mounts
else:
    import _signal as signal

    import shim_base as base
    import shim_command as command
    import shim_mounts as mounts


def run(spec_path: str, status_fd: int, gate_fd: int | None = None) -> "NoReturn":
    """A: enter the netns, create the other namespaces, start init, mirror its exit.

    With `gate_fd` (a shim started ahead of its container: process.WarmShim), first wait
    there for "go", which says the spec is written; EOF instead (the runtime dropped the
    start, or died) ends the shim before it has done anything."""
    if gate_fd is not None:
        said = os.read(gate_fd, 2)  # "go" arrives whole: a pipe write under PIPE_BUF
        os.close(gate_fd)
        if said != b"go":
            os._exit(0)
    spec = base.load_spec(spec_path)
    name = spec["name"]
    if not spec.get("survive_parent"):
        base.libc.prctl(base.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != spec.get("parent", os.getppid()):  # the starter died first
            os._exit(base.EXIT_SETUP_FAILED)
    # Opened while A still sees the host's mounts (see "Exit file" above).
    exit_dir_fd = _open_exit_dir(spec.get("exit_path"))
    # Blocked until each process has its handlers and someone to forward to; a signal sent
    # earlier stays pending instead of being lost (an init with a default disposition drops
    # it).
    signal.pthread_sigmask(signal.SIG_BLOCK, base.FORWARDED_SIGNALS)
    base.set_comm(b"linkd-shim")
    try:
        _join_netns(spec["netns"])
        base.check(
            base.libc.unshare(base.CLONE_NEWUTS | base.CLONE_NEWIPC | base.CLONE_NEWNS
                              | base.CLONE_NEWPID),
            "creating uts/ipc/mount/pid namespaces",
        )
        hostname = os.fsencode(spec["hostname"])
        base.check(base.libc.sethostname(hostname, len(hostname)),
                   f"setting hostname {spec['hostname']!r}")
        _domain_and_sysctls(spec)
        alive_r, alive_w = os.pipe()  # both ends close-on-exec: C never holds them
        child = os.fork()
    except (base.SetupError, OSError) as e:
        base.fail(status_fd, name, e)
    if child == 0:
        os.close(alive_w)
        if exit_dir_fd is not None:
            os.close(exit_dir_fd)
        _init(spec, status_fd, alive_r)
    os.close(alive_r)
    try:
        os.write(status_fd, f"pid {child}\n".encode())
    except OSError:
        # The starter is gone before it could learn about this container: nobody could
        # ever adopt or stop it, so it must not run.  B follows A (PDEATHSIG).
        os._exit(base.EXIT_SETUP_FAILED)
    os.close(status_fd)
    base.forward_to(child)
    base.install_forwarding(base.FORWARDED_SIGNALS)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    # alive_w stays open until A exits: its closing is B's "parent gone" signal.
    code = base.wait_child(child)
    if exit_dir_fd is not None:
        _write_exit_file(exit_dir_fd, os.path.basename(spec["exit_path"]), code)
    os._exit(code)


def _join_netns(netns: str) -> None:
    """Enter /run/netns/<netns>: the container's (wired), or the one it shares
    (network_mode service:/container:). "" is network_mode host: the shim's own, the
    host's, stays."""
    if not netns:
        return
    netns_path = os.path.join("/run/netns", netns)
    try:
        ns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise base.SetupError(
            f"network namespace {netns!r} ({netns_path}): {e.strerror}",
            base.EXIT_SETUP_FAILED,
        ) from None
    try:
        base.check(base.libc.setns(ns_fd, base.CLONE_NEWNET),
                   f"entering network namespace {netns_path}")
    finally:
        os.close(ns_fd)


def _domain_and_sysctls(spec: "dict[str, Any]") -> None:
    """Compose's domainname and sysctls, in the namespaces A has just joined or made
    (UTS; network and IPC: /proc/sys/net and kernel.shm*, ... show the writer's own), for
    both launchers: runc would refuse them in namespaces it did not make."""
    domain = spec.get("domainname")
    if domain:
        import ctypes  # loaded already, by shim_base

        base.libc.setdomainname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
        name = os.fsencode(domain)
        base.check(base.libc.setdomainname(name, len(name)),
                   f"setting domainname {domain!r}")
    for key, value in spec.get("sysctls") or []:
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as e:
            raise base.SetupError(f"sysctl {key}={value}: {e.strerror}",
                                  base.EXIT_SETUP_FAILED) from None


def _init(spec: "dict[str, Any]", status_fd: int, alive_fd: int) -> "NoReturn":
    """B: PID 1 of the container."""
    name = spec["name"]
    try:
        base.die_with_parent(alive_fd)
        base.set_comm(b"linkd-init")
        # Private, recursively, before mounting anything: no mount of ours may propagate to
        # the host (on systemd hosts / is shared).
        base.mount(None, "/", None, base.MS_REC | base.MS_PRIVATE, None)
        # runc joins the container's network namespace by its /run/netns path: keep it.
        runc = spec.get("rootfs_dir") and not spec.get("rootfs_pivot", True)
        keep = os.fsencode("/run/netns/" + spec["netns"]) if runc and spec["netns"] else b""
        mounts.hide_namespace_mounts(keep)
        for cgroup in spec.get("cgroups") or []:  # limits: before anything is allocated
            _join_cgroup(cgroup)
        conf = spec.get("confine") or {}
        if runc:
            spec["confine_command"] = False  # C is `runc run`: runc confines its command
        elif conf.get("cgroupns"):
            # The container's cgroup is the root of what it sees (/proc/self/cgroup says /).
            base.check(base.libc.unshare(base.CLONE_NEWCGROUP), "creating a cgroup namespace")
        volumes = _volumes() if spec.get("mounts") or spec.get("tmpfs") else None
        # Opened before pivot_root or the private /tmp can hide them.
        sources = volumes.open_sources(spec) if volumes else []
        if spec.get("rootfs_dir"):
            # An image: overlay root, files bound in, pivot_root; /proc and /tmp below.
            mounts.image_root(spec, _volume_points(spec, sources) if sources else None)
        # Bind files first: their sources are host paths, possibly under /tmp or /proc,
        # which the mounts below hide.
        mounts.bind_host_paths(spec)
        # A proc instance belongs to the PID namespace of the process that mounts it, which
        # is why B (not A) mounts it.
        base.mount("proc", "/proc", "proc", base.MS_NOSUID | base.MS_NODEV | base.MS_NOEXEC,
                   None)
        if not runc:
            mounts.mask_paths(conf.get("masked") or [], conf.get("readonly") or [])
        mounts.private_tmp(spec.get("keep_dirs", []))
        if volumes and not runc:  # runc mounts its bundle's
            volumes.mount_all(spec, sources, image=bool(spec.get("rootfs_dir")))
    except (base.SetupError, OSError) as e:
        base.fail(status_fd, name, e)

    base.install_forwarding(base.FORWARDED_SIGNALS)
    try:
        child = os.fork()
    except OSError as e:
        base.report(status_fd, name, f"fork of the command failed: {e.strerror}")
        os._exit(base.EXIT_SETUP_FAILED)
    if child == 0:
        _command(spec, status_fd)
    os.close(status_fd)  # C holds the last copy; its exec closes it -> runtime sees EOF
    base.forward_to(child)
    # Signals that arrived since A blocked them are delivered here, and now reach C.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:  # cannot happen while C lives; be safe anyway
            os._exit(base.EXIT_SETUP_FAILED)
        if pid == child and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            # Exiting as PID 1 makes the kernel SIGKILL whatever is left in the namespace.
            os._exit(base.exit_code(status))


def _volumes() -> "Any":
    """shim_volumes, imported only by a container with something to mount (start-up)."""
    if TYPE_CHECKING or __package__:
        from . import shim_volumes as volumes
    else:
        import shim_volumes as volumes
    return volumes


def _volume_points(spec: "dict[str, Any]", sources: "list[int | None]") -> "Any":
    """What `image_root` does with the image's root before covering it: the volumes'
    seeds copied, their mount points made (a file for a file, as the source is)."""
    volumes = _volumes()

    def on_root(root: str) -> None:
        volumes.seed(spec, sources, lambda target: mounts.in_root(root, target))
        for entry, fd in zip(spec["mounts"], sources, strict=True):
            mounts.mount_point(root, entry[2], volumes.is_dir(fd))

    return on_root


def _join_cgroup(directory: str) -> None:
    """Move B (and so all it forks) into a cgroup linkd created with the limits set."""
    try:
        with open(os.path.join(directory, "cgroup.procs"), "w") as f:
            f.write("0")  # 0: the writing process
    except OSError as e:
        raise base.SetupError(f"joining cgroup {directory}: {e.strerror}",
                              base.EXIT_SETUP_FAILED) from None


def _command(spec: "dict[str, Any]", status_fd: int) -> "NoReturn":
    """C: becomes the container's command."""
    try:
        os.setsid()
        os.set_inheritable(status_fd, False)  # closes at exec: that EOF means "running"
        command.exec_command(spec)
    except base.SetupError as e:
        base.report(status_fd, spec["name"], str(e))
        os._exit(e.code)
    except BaseException as e:  # anything else still must not return into B's code
        base.report(status_fd, spec["name"], f"starting the command failed: {e!r}")
        os._exit(base.EXIT_SETUP_FAILED)


def _open_exit_dir(exit_path: str | None) -> int | None:
    if not exit_path:
        return None
    try:
        return os.open(
            os.path.dirname(exit_path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        )
    except OSError:
        return None  # no exit file then; an adopter reports the exit as a kill


def _write_exit_file(dir_fd: int, name: str, code: int) -> None:
    """Write `code` to `name` in `dir_fd`, atomically: a temporary file renamed over it."""
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644,
                     dir_fd=dir_fd)
        try:
            os.write(fd, f"{code}\nshim {os.getpid()}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        # Best effort: the directory may have been removed meanwhile (`linkd down`).
        try:  # noqa: SIM105  (no contextlib: start-up time)
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass


def main(argv: list[str]) -> "NoReturn":
    if len(argv) in (4, 5) and argv[1] == "run":
        run(argv[2], int(argv[3]), int(argv[4]) if len(argv) == 5 else None)
    if len(argv) in (4, 5) and argv[1] == "exec" and argv[4:] in ([], ["--remove-spec"]):
        # Only here: a container's start does not load what entering one takes.
        if TYPE_CHECKING or __package__:
            from . import shim_entry as entry
        else:
            import shim_entry as entry
        entry.exec_in(int(argv[2]), argv[3], remove_spec=len(argv) == 5)
    sys.stderr.write("usage: shim.py run SPEC STATUS_FD [GATE_FD] | "
                     "shim.py exec INIT_PID SPEC [--remove-spec]\n")
    sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
