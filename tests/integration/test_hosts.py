"""linkd on stock hosts, each one simulated (tests/simhost.py): forwarding off as on a new
machine, a dockerd with its iptables rules beside linkd (its FORWARD policy ACCEPT, as
Debian's dockerd 20.10 leaves it, and DROP, as newer Docker and many administrators set
it), br_netfilter sending bridged traffic through iptables.

Each test brings up one stack in its simulated host: `client` and `web` (a published
port) share `front`, `other` is alone on `back`. It checks what a user relies on: the
client reaches web by name and the outside (masqueraded: the outside sees the host's
address), never `other`; the outside reaches web through the published port; and
`down` leaves the host as it found it, but for the forwarding switch linkd turned on
(docs/host.md says why it stays on).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netprobe
from tests.simhost import SimulatedHost, simulated_host, wait_for

STACK = """
services:
  web:
    command: python3 srv.py web 0.0.0.0 80
    ports: ["8080:80"]
    networks: [front]
  client:
    command: sleep infinity
    networks: [front]
  other:
    command: python3 srv.py other 0.0.0.0 80
    networks: [back]
networks:
  front:
  back:
"""

STACK6 = """
services:
  web:
    command: sleep infinity
networks:
  default:
    enable_ipv6: true
"""

OUTSIDE_PORT = 9999


class Stack:
    def __init__(self, host: SimulatedHost, text: str = STACK) -> None:
        self.host = host
        self.name = "h" + secrets.token_hex(3)
        self.directory = host.run_dir / self.name
        self.directory.mkdir()
        (self.directory / "linkd.yaml").write_text(text)
        (self.directory / "srv.py").write_text(netprobe.SERVER)
        self._addresses: dict[str, list[str]] | None = None

    def linkd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.host.linkd(*args, cwd=self.directory)

    def up(self) -> str:
        done = self.linkd("up", "-d", "-p", self.name)
        return done.stdout + done.stderr

    def down(self) -> None:
        self.linkd("down", "--forget", "-p", self.name)

    def address(self, container: str) -> str:
        if self._addresses is None:  # read once: the plan does not change while it is up
            import json

            plan = json.loads(self.linkd("inspect", "-p", self.name).stdout)["plan"]
            self._addresses = {c["name"]: [str(i["address"]) for i in c["interfaces"]]
                               for c in plan["containers"]}
        (found,) = self._addresses[container]
        return found

    def probe_from(self, service: str, *targets: str) -> dict[str, str | None]:
        done = self.linkd("exec", "-p", self.name, service, "--",
                          *netprobe.probe_argv(targets))
        return netprobe.parse(done.stdout)

    def wait_serving(self) -> None:
        web = f"{self.address('web-1')}:80"
        wait_for(lambda: self.probe_from("client", web)[web], timeout=15,
                 what="web to serve")


def host_state(host: SimulatedHost) -> dict[str, object]:
    """What a stack may not leave behind in its host (forwarding aside)."""
    links = host.run("ip", "-o", "link", "show").stdout
    return {
        "links": sorted(line.split(":")[1].strip().split("@")[0]
                        for line in links.splitlines()),
        "tables": host.run("nft", "list", "tables").stdout.split("\n"),
        "iptables": host.run("iptables-save").stdout.count("LINKD"),
        "netns": host.run("ls", "/run/netns").stdout.split(),
        "addresses": sorted(  # link-local ones come and go with the kernel's DAD
            (line.split()[1], line.split()[3])
            for line in host.run("ip", "-o", "addr", "show").stdout.splitlines()
            if " fe80:" not in line
        ),
        "routes": host.run("ip", "route", "show").stdout,
    }


@contextlib.contextmanager
def outside(host: SimulatedHost) -> Iterator[None]:
    """A server on the outside end of the host's uplink, which has no route to linkd's
    subnets: an answer to a container proves the masquerade."""
    server = netprobe.start_server("outside", host.outside_address, OUTSIDE_PORT)
    try:
        yield
    finally:
        server.kill()  # started above
        server.wait()


def check_stack(stack: Stack, out_of_reach: tuple[str, ...] = ()) -> None:
    """What the stack's client reaches (and not: `other`, and `out_of_reach`'s addresses,
    all tried at once, so that their timeouts are waited out once)."""
    host = stack.host
    stack.wait_serving()
    web, other = f"{stack.address('web-1')}:80", f"{stack.address('other-1')}:80"
    far = f"{host.outside_address}:{OUTSIDE_PORT}"
    seen = stack.probe_from("client", "web:80", web, other, far, *out_of_reach)
    client = stack.address("client-1")
    assert seen["web:80"] == f"web {client}", seen  # by name, on the bridge
    assert seen[web] == f"web {client}", seen
    assert seen[other] is None, seen  # another network: isolated
    assert [seen[t] for t in out_of_reach] == [None] * len(out_of_reach), seen
    assert seen[far] == f"outside {host.address}", seen  # out, masqueraded
    published = f"{host.address}:8080"
    assert netprobe.probe_here(published)[published] == f"web {host.outside_address}"


def test_a_host_with_forwarding_off_gets_it_on_and_says_so() -> None:
    with simulated_host() as host, outside(host):
        assert host.sysctl("net.ipv4.ip_forward") == "0"  # a new machine
        before = host_state(host)
        stack = Stack(host)
        output = stack.up()
        try:
            assert "IPv4 forwarding was off on this host: turned it on" in output, output
            assert host.sysctl("net.ipv4.ip_forward") == "1"
            check_stack(stack)
        finally:
            stack.down()
        assert host_state(host) == before
        assert host.sysctl("net.ipv4.ip_forward") == "1"  # documented: it stays on
        again = Stack(host, STACK6)
        try:
            output = again.up()
            assert "IPv4 forwarding" not in output, output  # said once: it is on now
            assert "IPv6 forwarding was off on this host: turned it on" in output, output
            assert host.sysctl("net.ipv6.conf.all.forwarding") == "1"
        finally:
            again.down()


@pytest.mark.parametrize("call_iptables", ["1", "0"])
def test_br_netfilter_and_a_forward_policy_of_drop(call_iptables: str) -> None:
    """An administrator's iptables FORWARD policy DROP, with bridged traffic sent through
    iptables (br_netfilter) or not: containers of one network still talk, and get out."""
    with simulated_host() as host, outside(host):
        if not Path("/proc/sys/net/bridge").is_dir():
            pytest.skip("br_netfilter is not loaded on this machine (linkd's tests never "
                        "load kernel modules)")
        host.set_sysctl("net.bridge.bridge-nf-call-iptables", call_iptables)
        host.run("iptables", "-P", "FORWARD", "DROP")
        before = host_state(host)
        stack = Stack(host)
        stack.up()
        try:
            rules = host.run("iptables", "-S").stdout
            assert "-A FORWARD -j LINKD-FORWARD" in rules, rules
            check_stack(stack)
        finally:
            stack.down()
        assert host_state(host) == before
        assert "-P FORWARD DROP" in host.run("iptables", "-S").stdout  # never changed


class Dockerd:
    """A dockerd of the test's own in the simulated host, with its iptables rules there."""

    def __init__(self, host: SimulatedHost) -> None:
        self.host = host
        self.root = host.run_dir / "docker"
        self.socket = self.root / "exec" / "docker.sock"
        self.cgroup_parent = f"lkt-docker-{secrets.token_hex(3)}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.root / "exec").mkdir(parents=True)
        log = open(self.root / "dockerd.log", "wb")  # noqa: SIM115 (the process keeps it)
        self.process = self.host.popen(
            "dockerd", "--iptables=true", f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}", f"--pidfile={self.root / 'dockerd.pid'}",
            "-H", f"unix://{self.socket}", f"--cgroup-parent={self.cgroup_parent}",
            stdout=log.fileno(),
        )
        log.close()
        deadline = time.monotonic() + 60
        while self.docker("info", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("dockerd did not start:\n"
                                     + (self.root / "dockerd.log").read_text()[-3000:])
            time.sleep(0.2)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.run("docker", "-H", f"unix://{self.socket}", *args, check=check)

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        """`docker ARGS` started: its stdout a pipe, as `docker`'s (its stderr dropped)."""
        return subprocess.Popen(
            self.host.command(["docker", "-H", f"unix://{self.socket}", *args]),
            env=self.host.env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=self.host.run_dir)

    def stop(self) -> None:
        if self.process is None:
            return
        self.docker("rm", "-f", "web", check=False)
        self.process.send_signal(signal.SIGTERM)  # started by this test
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            for directory, subdirs, _ in os.walk(hierarchy, topdown=False):
                if self.cgroup_parent not in directory:
                    if directory.count("/") > 8:
                        subdirs.clear()
                    continue
                for pid in Path(directory, "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)  # a container of this dockerd
                with contextlib.suppress(OSError):
                    os.rmdir(directory)


def run_docker_web(dockerd: Dockerd, tmp: Path) -> None:
    from tests.images import busybox_image, write_tar

    archive = write_tar(busybox_image().save_files(), tmp / "busybox.tar")
    dockerd.docker("load", "-i", str(archive))
    dockerd.docker("run", "-d", "--name", "web", "-p", "8081:80", "test/busybox:1",
                   "sh", "-c", "while true; do echo docker | nc -l -p 80; done")


def test_beside_a_dockerd_with_its_iptables_rules(tmp_path: Path) -> None:
    with simulated_host() as host, outside(host):
        dockerd = Dockerd(host)
        try:
            dockerd.start()
            run_docker_web(dockerd, tmp_path)
            docker_web = dockerd.docker(
                "inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web").stdout.strip()
            for policy in ("ACCEPT", "DROP"):
                host.run("iptables", "-P", "FORWARD", policy)
                before = host_state(host)
                stack = Stack(host)
                stack.up()
                try:
                    stack.wait_serving()
                    # Linkd's containers stay out of docker's reach: a try that only its
                    # timeout ends, made while the checks below run.
                    reaching = dockerd.popen("exec", "web", "sh", "-c",
                                             f"nc -w 1 {stack.address('web-1')} 80 </dev/null")
                    try:
                        # With DROP, docker's containers are out of reach but for their ports.
                        check_stack(stack, (f"{docker_web}:80",) if policy == "DROP" else ())
                        check_docker_keeps_its_own(stack, dockerd)
                        reached, _ = reaching.communicate(timeout=30)
                    finally:
                        if reaching.poll() is None:
                            reaching.kill()  # started above
                            reaching.wait()
                    assert reached == b"", reached
                finally:
                    stack.down()
                assert host_state(host) == before, policy
        finally:
            dockerd.stop()


def check_docker_keeps_its_own(stack: Stack, dockerd: Dockerd) -> None:
    host = stack.host
    published = f"{host.address}:8081"
    wait_for(lambda: netprobe.probe_here(published)[published], timeout=15,
             what="docker's published port")
    far = f"{host.outside_address} {OUTSIDE_PORT}"
    out = dockerd.docker("exec", "web", "sh", "-c", f"nc -w 2 {far} </dev/null").stdout
    assert out.startswith("outside "), out  # docker's container still gets out
    through = f"{host.address}:8081"
    seen = stack.probe_from("client", through)
    assert seen[through] == "docker\n", seen  # a published port is for everyone
