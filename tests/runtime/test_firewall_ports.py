"""Host ports before anything is created: bind checks, holders, random ports, other stacks.

No root needed: the ports are unprivileged and the run directory is a temporary one.
"""

from __future__ import annotations

import os
import socket
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from linkd.core import firewall
from linkd.core.plan import StackPlan
from linkd.core.state import StackState
from linkd.errors import ConflictError
from linkd.runtime.kernel import firewall as runtime_firewall
from linkd.runtime.stack import store
from linkd.spec.stack_file import parse_stack
from tests.planning import realize


def plan_of(ports: str, name: str = "shop", subnet: str = "10.87.0.0/24") -> StackPlan:
    stack = parse_stack(f"services:\n  web: {{command: x, ports: {ports}}}\n",
                        source="linkd.yaml", project_name=name)
    return realize(stack, {"default": IPv4Network(subnet)})


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LINKD_RUN_DIR", str(tmp_path))
    return tmp_path


def test_a_port_a_host_process_holds_is_refused_naming_the_process() -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        with pytest.raises(ConflictError) as caught:
            runtime_firewall.publish_ports(plan_of(f'["{port}:80"]'))
    assert str(caught.value) == (
        f"service web: host port {port}/tcp on 0.0.0.0 is already in use by process "
        f"{os.getpid()} ({Path('/proc/self/comm').read_text().strip()})"
    )


def test_a_udp_port_held_and_an_address_not_of_this_host_are_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("0.0.0.0", 0))
        port = held.getsockname()[1]
        with pytest.raises(ConflictError, match=rf"host port {port}/udp on 0\.0\.0\.0 is already"):
            runtime_firewall.publish_ports(plan_of(f'["{port}:53/udp"]'))
    with pytest.raises(ConflictError, match=r"203\.0\.113\.7 of port 8080 is not an address"):
        runtime_firewall.publish_ports(plan_of('["203.0.113.7:8080:80"]'))


def test_random_ports_come_from_the_kernel_and_another_stack_is_a_holder() -> None:
    plan = runtime_firewall.publish_ports(plan_of('["80", "127.0.0.1::81"]'))
    (first,) = firewall.port_of(plan, "web", 80)
    (second,) = firewall.port_of(plan, "web", 81)
    assert first.startswith("0.0.0.0:") and int(first.split(":")[1]) > 1024
    assert second.startswith("127.0.0.1:")
    # Recorded as the stack's state, that stack now holds the port for everyone else.
    store.save(StackState(plan, "/x/linkd.yaml", "up", os.getpid(), ()))
    port = int(first.split(":")[1])
    other = plan_of(f'["{port}:8080"]', name="other", subnet="10.87.1.0/24")
    with pytest.raises(ConflictError, match="already published by stack shop service web"):
        runtime_firewall.publish_ports(other)
