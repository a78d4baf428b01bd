"""Compose's networking keys in real containers (issue 16 §5): a network shared by two
stacks (`external: true`), network modes, and the per-container DNS, sysctl and link
keys, seen from inside the containers."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from linkd.client.api import Client
from linkd.runtime.images.image_store import ImageStore
from tests.images import busybox_image, write_tar
from tests.integration.conftest import Linkd, fresh_linkd, snapshot
from tests.integration.test_dns_settings import Upstream
from tests.integration.test_stack import serve

# Inside a container: each name's IPv4 addresses through the system resolver (glibc:
# /etc/hosts, then linkd's DNS), retried for up to WAIT seconds (another stack's
# containers reach this stack's DNS within its follow interval); then a TCP exchange if
# asked.
RESOLVE = """
import json, socket, sys, time
found = {}
wait = float(sys.argv.pop(1))
for name in sys.argv[1:]:
    deadline = time.monotonic() + wait
    while True:
        try:
            found[name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 9000, socket.AF_INET)})
            break
        except socket.gaierror as exc:
            if time.monotonic() > deadline:
                found[name] = str(exc)
                break
            time.sleep(0.1)
print(json.dumps(found))
"""

CONNECT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
    print(c.recv(100).decode())
"""


def resolve(stack: Linkd, service: str, *names: str, wait: float = 10) -> dict[str, object]:
    """What `service` resolves each of `names` to (an error's text when it cannot), each
    name retried for up to `wait` seconds; `wait=0`, one try: for a name that must not
    resolve, once the stack's DNS is known to hold it (each stack's zone is one, scoped
    by who asks), so that waiting out the retries could only hide nothing."""
    out = stack.exec(service, "/usr/bin/python3", "-c", RESOLVE, str(wait), *names).stdout
    result: dict[str, object] = json.loads(out)
    return result


def addresses(stack: Linkd, container: str) -> dict[str, str]:
    """The container's address on each network, from `linkd inspect`."""
    (doc,) = json.loads(stack.run("inspect", "-p", stack.project, container).stdout)
    return {i["network"]: i["address"] for i in doc["plan"]["interfaces"]}


@pytest.fixture
def owner() -> Iterator[Linkd]:
    with fresh_linkd() as runner:
        yield runner


@pytest.fixture
def joiner() -> Iterator[Linkd]:
    with fresh_linkd() as runner:
        yield runner


def test_two_stacks_talk_by_name_over_an_external_network(
    owner: Linkd, joiner: Linkd
) -> None:
    owner.write(f"""
        services:
          web:
            command: {serve(9000)}
          db:
            command: sleep 300
            networks: [back]
        networks:
          back: {{}}
    """)
    joiner.write(f"""
        services:
          client:
            command: {serve(9000)}
            networks: [shop, own]
          lone:
            command: sleep 300
            networks: [own]
        networks:
          shop:
            external: true
            name: {owner.project}_default
          own: {{}}
    """)
    owner.up()
    owners = {b for b in snapshot().links if b.startswith("lkb-")}
    joiner.up()
    owner.wait_listening("web", 9000)
    joiner.wait_listening("client", 9000)
    web = addresses(owner, "web-1")["default"]
    client = addresses(joiner, "client-1")
    # One subnet, two stacks' containers, no address twice.
    assert client["shop"].rsplit(".", 1)[0] == web.rsplit(".", 1)[0]
    assert client["shop"] != web
    # The joiner's container resolves the owner's names, and reaches them...
    assert resolve(joiner, "client", "web", "web-1", f"web.{owner.project}.linkd") == {
        "web": [web], "web-1": [web], f"web.{owner.project}.linkd": [web]}
    got = joiner.exec("client", "/usr/bin/python3", "-c", CONNECT, "web", "9000")
    assert got.stdout.strip() == "web-1"
    # ... and the owner's resolves the joiner's, on that network only.
    assert resolve(owner, "web", "client", "client-1") == {
        "client": [client["shop"]], "client-1": [client["shop"]]}
    got = owner.exec("web", "/usr/bin/python3", "-c", CONNECT, "client", "9000")
    assert got.stdout.strip() == "client-1"
    # Neither stack's containers off the shared network see the other stack's names
    # (which their stacks' DNS holds: web and client resolved them above).
    db = resolve(owner, "db", "client", wait=0)["client"]
    lone = resolve(joiner, "lone", "web", wait=0)["web"]
    assert isinstance(db, str) and isinstance(lone, str), (db, lone)

    # The joiner goes: the owner's networks stay, whole, and its DNS has forgotten the
    # joiner's names by the time `down` returns (both stacks are the daemon's).
    joiner.down()
    assert owners == {b for b in snapshot().links if b.startswith("lkb-")}
    assert isinstance(resolve(owner, "web", "client", wait=0)["client"], str)
    got = owner.exec("web", "/usr/bin/python3", "-c", CONNECT, "web", "9000")
    assert got.stdout.strip() == "web-1"


def test_the_owner_going_first_leaves_the_network_to_the_joiner(
    owner: Linkd, joiner: Linkd
) -> None:
    owner.write("""
        services:
          web:
            command: sleep 300
        networks:
          default:
            name: shared-net
    """)
    joiner.write(f"""
        services:
          a:
            command: {serve(9000)}
          b:
            command: sleep 300
        networks:
          default:
            external: true
            name: shared-net
    """)
    owner.up()
    joiner.up()
    bridge = {b for b in snapshot().links if b.startswith("lkb-")}
    down = owner.down()
    # As Docker keeps a network with active endpoints (Compose's down says so and goes
    # on): the bridge stays for the joiner's containers, which still talk over it.
    assert "kept" in down.stdout + down.stderr, down
    assert bridge <= snapshot().links
    joiner.wait_listening("a", 9000)
    got = joiner.exec("b", "/usr/bin/python3", "-c", CONNECT, "a", "9000")
    assert got.stdout.strip() == "a-1"
    # The owner comes back on the same bridge and subnet, and its names answer again.
    owner.up()
    web = addresses(owner, "web-1")["default"]
    assert resolve(joiner, "a", "web") == {"web": [web]}
    owner.down()
    # The last one out removes it.
    joiner.down()
    assert not bridge & snapshot().links


def test_a_missing_external_network_is_an_error_that_creates_nothing(joiner: Linkd) -> None:
    joiner.write("""
        services:
          a:
            command: sleep 300
            networks: [proxy]
        networks:
          proxy:
            external: true
    """)
    # `linkd config` takes it without looking for the network.
    config = joiner.run("config", "-p", joiner.project)
    assert "external: true" in config.stdout
    before = snapshot()
    failed = joiner.run("up", "-d", "-p", joiner.project, check=False)
    assert failed.returncode != 0
    assert ("network proxy declared as external, but could not be found: create it with "
            "another stack first") in failed.stderr, failed.stderr
    after = snapshot()
    assert after.netns == before.netns and after.links == before.links
    ps = joiner.run("ps", "-p", joiner.project, check=False)
    assert "a-1" not in ps.stdout


# --- network_mode ---------------------------------------------------------------------

# A TCP server on loopback only: reachable from its own network namespace, nowhere else.
LOCAL_SERVER = (
    "/usr/bin/python3 -c \"import socket,os;"
    "s=socket.create_server(('127.0.0.1',PORT));"
    "[c.sendall(os.uname().nodename.encode()) or c.close() for c in iter(lambda:s.accept()[0],0)]\""
)

SAME_NAMESPACE = """
import json, os, socket
print(json.dumps({
    "netns": os.readlink("/proc/self/ns/net"),
    "links": sorted(name for _, name in socket.if_nameindex()),
    "hostname": socket.gethostname(),
    "resolv": open("/etc/resolv.conf").read(),
}))
"""


def inside(stack: Linkd, service: str) -> dict[str, Any]:
    out = stack.exec(service, "/usr/bin/python3", "-c", SAME_NAMESPACE).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def test_a_sidecar_shares_its_services_namespace(linkd: Linkd) -> None:
    linkd.write(f"""
        services:
          app:
            command: {LOCAL_SERVER.replace("PORT", "9100")}
          side:
            command: sleep 300
            network_mode: "service:app"
          peer:
            command: {serve(9000)}
    """)
    up = linkd.up()
    linkd.wait_listening("app", 9100)
    # The same namespace: the same interfaces and addresses, localhost between them.
    app, side = inside(linkd, "app"), inside(linkd, "side")
    assert side["netns"] == app["netns"] and side["links"] == app["links"] == ["eth0", "lo"]
    assert side["hostname"] == app["hostname"] == "app-1"
    got = linkd.exec("side", "/usr/bin/python3", "-c", CONNECT, "127.0.0.1", "9100")
    assert got.stdout.strip() == "app-1"
    # The same resolver: the stack's names resolve from the sidecar as from app.
    peer = addresses(linkd, "peer-1")["default"]
    assert resolve(linkd, "side", "peer", "app") == {
        "peer": [peer], "app": [addresses(linkd, "app-1")["default"]]}
    # It has no address of its own, and others reach its ports at app's address.
    assert "side-1" in up.stdout
    (doc,) = json.loads(linkd.run("inspect", "-p", linkd.project, "side-1").stdout)
    assert doc["plan"]["interfaces"] == [] and doc["plan"]["network_mode"] == "container"
    # (One try: the stack's own names are all in its DNS once `up` returns.)
    assert isinstance(resolve(linkd, "peer", "side", wait=0)["side"], str)
    # app restarting (its process anew) leaves the namespace, linkd's, where it was: the
    # sidecar, still running, reaches the new process.
    Client().request("POST", f"/v1/stacks/{linkd.project}/containers/app-1/restart")
    linkd.wait_listening("app", 9100)
    got = linkd.exec("side", "/usr/bin/python3", "-c", CONNECT, "127.0.0.1", "9100")
    assert got.stdout.strip() == "app-1"


def test_network_mode_host_is_the_hosts_network(linkd: Linkd) -> None:
    import socket
    import time

    with socket.socket() as probe:  # a free port of the (simulated) host
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    linkd.write(f"""
        services:
          web:
            command: {LOCAL_SERVER.replace("PORT", str(port))}
            network_mode: host
          other:
            command: sleep 300
    """)
    up = linkd.up()
    assert "network_mode host" in up.stderr, up.stderr
    # Its server listens on the host's loopback: this test's process reaches it.
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                assert c.recv(100) == b"web-1"
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    web = inside(linkd, "web")
    assert web["netns"] == os.readlink("/proc/self/ns/net")
    assert any(str(link).startswith("lkb-") for link in web["links"])  # the host's bridges
    with open("/etc/resolv.conf") as host_resolv:
        assert web["resolv"] == host_resolv.read()
    assert "127.0.0.11" in str(inside(linkd, "other")["resolv"])


def test_container_mode_joins_another_stacks_container(owner: Linkd, joiner: Linkd) -> None:
    owner.write(f"""
        services:
          db:
            command: {LOCAL_SERVER.replace("PORT", "9200")}
    """)
    joiner.write("""
        services:
          tool:
            command: sleep 300
            network_mode: "container:db-1"
    """)
    owner.up()
    owner.wait_listening("db", 9200)
    joiner.up()
    got = joiner.exec("tool", "/usr/bin/python3", "-c", CONNECT, "127.0.0.1", "9200")
    assert got.stdout.strip() == "db-1"
    assert inside(joiner, "tool")["netns"] == inside(owner, "db")["netns"]
    joiner.down()
    owner.down()


@pytest.mark.parametrize("runtime", ["linkd", "runc"])
def test_network_modes_of_image_containers(linkd: Linkd, runtime: str) -> None:
    name = "linkd-test/netmode:1"
    image = busybox_image(Cmd=["sleep", "300"])
    image.name = name
    write_tar(image.oci_files(), linkd.directory / "bb.oci.tar")
    store = ImageStore()
    before = {n for i in store.list() for n in i.names}
    linkd.write(f"""
        services:
          web:
            image: ./bb.oci.tar
            x-linkd: {{runtime: {runtime}}}
          side:
            image: ./bb.oci.tar
            network_mode: "service:web"
            x-linkd: {{runtime: {runtime}}}
          hosty:
            image: ./bb.oci.tar
            network_mode: host
            x-linkd: {{runtime: {runtime}}}
    """)
    try:
        linkd.up()

        def netns(service: str) -> str:
            return linkd.exec(service, "readlink", "/proc/self/ns/net").stdout.strip()

        assert netns("side") == netns("web") != netns("hosty")
        assert netns("hosty") == os.readlink("/proc/self/ns/net")
        links = linkd.exec("hosty", "ls", "/sys/class/net").stdout.split()
        assert any(link.startswith("lkb-") for link in links), links
        mac = linkd.exec("web", "cat", "/sys/class/net/eth0/address").stdout
        assert linkd.exec("side", "cat", "/sys/class/net/eth0/address").stdout == mac
        linkd.down()
    finally:
        if name not in before and name in {n for i in store.list() for n in i.names}:
            store.remove(name)


# --- dns, dns_search, dns_opt, sysctls, domainname, mac_address, hostname ---------------

READ = """
import fcntl, json, os, socket, struct
def read(path):
    with open(path) as f:
        return f.read().strip()
def mac(ifname):  # SIOCGIFHWADDR: the namespace's own (a host command's /sys is the host's)
    with socket.socket() as s:
        raw = fcntl.ioctl(s, 0x8927, struct.pack("256s", ifname.encode()))[18:24]
    return ":".join(f"{b:02x}" for b in raw)
print(json.dumps({
    "resolv": read("/etc/resolv.conf"),
    "somaxconn": read("/proc/sys/net/core/somaxconn"),
    "shmmni": read("/proc/sys/kernel/shmmni"),
    "msg_max": read("/proc/sys/fs/mqueue/msg_max"),
    "hostname": socket.gethostname(),
    "etc_hostname": read("/etc/hostname"),
    "domainname": read("/proc/sys/kernel/domainname"),
    "fqdn": socket.getfqdn(),
    "mac": mac("eth0"),
}))
"""


def test_resolver_sysctls_names_and_mac_inside_a_container(linkd: Linkd) -> None:
    linkd.write("""
        services:
          web:
            command: sleep 300
            hostname: web-host
            domainname: example.test
            dns_search: [svc.test, example.test]
            dns_opt: ["ndots:2", edns0]
            sysctls:
              net.core.somaxconn: 1234
              kernel.shmmni: 1111
            mac_address: "02:42:ac:11:00:42"
          plain:
            command: sleep 300
            sysctls: ["fs.mqueue.msg_max=33"]
    """)
    linkd.up()
    web = json.loads(linkd.py("web", READ).stdout)
    assert web["resolv"].splitlines()[2:] == [
        "nameserver 127.0.0.11", "search svc.test example.test", "options ndots:2 edns0"]
    assert (web["somaxconn"], web["shmmni"]) == ("1234", "1111")
    assert web["hostname"] == web["etc_hostname"] == "web-host"
    assert web["domainname"] == "example.test"
    assert web["fqdn"] == "web-host.example.test"
    assert web["mac"] == "02:42:ac:11:00:42"
    plain = json.loads(linkd.py("plain", READ).stdout)
    # Each container's own namespaces: web's settings are not plain's, nor the host's.
    assert plain["msg_max"] == "33" and web["msg_max"] != "33"
    assert plain["somaxconn"] != "1234" and plain["shmmni"] != "1111"
    with open("/proc/sys/fs/mqueue/msg_max") as host:
        assert host.read().strip() != "33"
    assert plain["resolv"].splitlines()[2:] == ["nameserver 127.0.0.11", "options ndots:0"]
    assert plain["domainname"] in ("(none)", "")


def test_a_sysctl_the_kernel_does_not_have_fails_the_start(linkd: Linkd) -> None:
    linkd.write("""
        services:
          a:
            command: sleep 300
            sysctls: {net.core.no_such_setting: 1}
    """)
    failed = linkd.run("up", "-d", "-p", linkd.project, check=False)
    assert failed.returncode != 0
    assert "sysctl net.core.no_such_setting=1" in failed.stdout + failed.stderr, failed


def test_a_containers_dns_servers_get_its_names_outside_the_zone(linkd: Linkd) -> None:
    stack_upstream = Upstream("192.0.2.10")
    own = FixedUpstream("192.0.2.20", ("127.0.0.77", 53))  # `dns:` takes addresses, port 53
    try:
        linkd.write(f"""
            x-linkd: {{dns: {{upstreams: ["127.0.0.1:{stack_upstream.port}"]}}}}
            services:
              mine:
                command: sleep 300
                dns: 127.0.0.77
              other:
                command: sleep 300
        """)
        linkd.up()
        lookup = """
            import socket
            print(socket.getaddrinfo('api.example.test', 443, socket.AF_INET)[0][4][0])
        """
        assert linkd.py("mine", lookup).stdout.strip() == "192.0.2.20"
        assert linkd.py("other", lookup).stdout.strip() == "192.0.2.10"
        # The stack's names still answer from linkd's DNS, which stays the resolver.
        assert resolve(linkd, "mine", "other")["other"] == [
            addresses(linkd, "other-1")["default"]]
        assert "api.example.test." in own.seen
        assert "127.0.0.11" in linkd.exec("mine", "cat", "/etc/resolv.conf").stdout
    finally:
        own.close()
        stack_upstream.close()


class FixedUpstream(Upstream):
    """The test's upstream DNS server, on a given address (of the simulated host)."""

    def __init__(self, address: str, where: tuple[str, int]) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(where)
        self.port = where[1]
        self.sock.settimeout(0.05)
        self.seen: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()


@pytest.mark.parametrize("runtime", ["linkd", "runc"])
def test_per_container_keys_in_image_containers(linkd: Linkd, runtime: str) -> None:
    name = "linkd-test/netkeys:1"
    image = busybox_image(Cmd=["sleep", "300"])
    image.name = name
    write_tar(image.oci_files(), linkd.directory / "bb.oci.tar")
    store = ImageStore()
    before = {n for i in store.list() for n in i.names}
    linkd.write(f"""
        services:
          web:
            image: ./bb.oci.tar
            x-linkd: {{runtime: {runtime}}}
            domainname: example.test
            dns_search: [svc.test]
            sysctls: {{net.ipv4.ip_default_ttl: 33, kernel.msgmax: 4321}}
            mac_address: 02:42:ac:11:00:43
    """)
    try:
        linkd.up()

        def cat(path: str) -> str:
            return linkd.exec("web", "cat", path).stdout.strip()

        assert cat("/proc/sys/net/ipv4/ip_default_ttl") == "33"
        assert cat("/proc/sys/kernel/msgmax") == "4321"
        assert cat("/proc/sys/kernel/domainname") == "example.test"
        assert cat("/sys/class/net/eth0/address") == "02:42:ac:11:00:43"
        assert "search svc.test" in cat("/etc/resolv.conf")
        linkd.down()
    finally:
        if name not in before and name in {n for i in store.list() for n in i.names}:
            store.remove(name)


def test_recreating_the_namespace_owner_recreates_its_sharers(linkd: Linkd) -> None:
    text = f"""
        services:
          app:
            command: {LOCAL_SERVER.replace("PORT", "9100")}
            environment: {{VERSION: "1"}}
          side:
            command: sleep 300
            network_mode: "service:app"
    """
    linkd.write(text)
    linkd.up()
    before = inside(linkd, "side")["netns"]
    linkd.write(text.replace('VERSION: "1"', 'VERSION: "2"'))
    updated = linkd.up()
    assert "side-1" in updated.stdout, updated.stdout  # changed with app
    linkd.wait_listening("app", 9100)
    side, app = inside(linkd, "side"), inside(linkd, "app")
    assert side["netns"] == app["netns"] != before
    got = linkd.exec("side", "/usr/bin/python3", "-c", CONNECT, "127.0.0.1", "9100")
    assert got.stdout.strip() == "app-1"


def test_a_swarm_file_on_one_host_runs_here_and_says_so(owner: Linkd) -> None:
    """`driver: overlay` and placement constraints mean something on a cluster daemon;
    without one, the network is a bridge here and every service runs here, said by up."""
    owner.write("""
        services:
          web:
            command: sleep 300
            networks: [back]
            deploy: {placement: {constraints: ["node.hostname == elsewhere"]}}
        networks:
          back: {driver: overlay}
    """)
    done = owner.up()
    said = done.stdout + done.stderr
    assert "network back: driver overlay spans nodes on a cluster daemon" in said, said
    assert "service web: deploy.placement.constraints place services on a cluster" in said
    assert "running" in owner.run("ps", "-p", owner.project).stdout
    assert any(b.startswith("lkb-") for b in snapshot().links)  # a bridge of this host
