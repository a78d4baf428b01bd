"""linkd's DNS server inside containers, through the system resolver (real namespaces)."""

from __future__ import annotations

import subprocess

from tests.integration.conftest import Linkd


def test_names_resolve_through_linkd_dns_not_only_the_hosts_file(linkd: Linkd) -> None:
    linkd.write("""
        services:
          server:
            command: sleep 300
            scale: 2
          client:
            command: sleep 300
    """)
    linkd.up()
    fqdn = f"server.default.{linkd.project}.linkd"  # in no hosts file: only DNS knows it
    got = linkd.py("client", f"""
        import socket
        print(sorted({{a[4][0] for a in socket.getaddrinfo('{fqdn}', 80, socket.AF_INET)}}))
        print(open('/etc/resolv.conf').read())
    """).stdout
    addresses = eval(got.splitlines()[0])
    assert len(addresses) == 2
    assert "nameserver 127.0.0.11" in got
    # An in-zone name that does not exist is NXDOMAIN at once, never forwarded.
    missing = linkd.py("client", f"""
        import socket
        socket.getaddrinfo('nothere.{linkd.project}.linkd', 80)
    """, check=False)
    assert missing.returncode != 0 and "Name or service not known" in missing.stderr


def test_a_container_can_still_run_its_own_dns_server_on_port_53(linkd: Linkd) -> None:
    linkd.write("""
        services:
          ownsdns:
            command: >-
              /usr/bin/python3 -c "import socket;
              u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 53));
              t=socket.create_server(('0.0.0.0', 53)); print('bound 53', flush=True);
              import time; time.sleep(300)"
    """)
    linkd.up()
    import time

    deadline = time.monotonic() + 5
    while "bound 53" not in linkd.run("logs", "-p", linkd.project, "ownsdns").stdout:
        assert time.monotonic() < deadline, linkd.run("logs", "-p", linkd.project, "ownsdns")
        time.sleep(0.05)
    # linkd's resolver still answers inside that container.
    got = linkd.py("ownsdns", f"""
        import socket
        print(socket.getaddrinfo('ownsdns.default.{linkd.project}.linkd', 80,
                                 socket.AF_INET)[0][4][0])
    """).stdout.strip()
    assert got.startswith("10.")
    rules = subprocess.run(
        ["ip", "netns", "exec", f"linkd-{linkd.project}.ownsdns-1", "nft", "list", "ruleset"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "dnat to 127.0.0.11:" in rules
    host_rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True)
    assert "linkd_dns" not in host_rules.stdout  # the host's firewall is untouched


def test_linkd_dns_explains_and_link_aliases_are_scoped(linkd: Linkd) -> None:
    linkd.write("""
        services:
          db:
            command: sleep 300
            networks:
              back:
                aliases: [database]
          api:
            command: sleep 300
            networks: [back]
            links: ["db:store"]
          other:
            command: sleep 300
            networks: [back]
        networks:
          back:
    """)
    linkd.up()
    explained = linkd.run("dns", "-p", linkd.project, "database", "--from", "api").stdout
    assert "alias" in explained and "answer: NOERROR" in explained
    assert " A " in explained
    scoped = linkd.run("dns", "-p", linkd.project, "store", "--from", "other").stdout
    assert "answer: NXDOMAIN" in scoped
    linked = linkd.run("dns", "-p", linkd.project, "store", "--from", "api").stdout
    assert "link alias" in linked and "answer: NOERROR" in linked
    outside = linkd.run("dns", "-p", linkd.project, "example.org", "--from", "api").stdout
    assert "forwarded" in outside
    # Through the system resolver inside the container, FQDN only DNS knows:
    fqdn = f"database.back.{linkd.project}.linkd"
    got = linkd.py("api", f"import socket; print(socket.gethostbyname('{fqdn}'))").stdout
    assert got.strip() in explained


def test_a_stopped_container_leaves_dns_and_a_running_one_is_there(linkd: Linkd) -> None:
    linkd.write("""
        services:
          oneshot:
            command: sh -c 'sleep 1.5'
          client:
            command: sleep 300
    """)
    linkd.up()
    fqdn = f"oneshot.default.{linkd.project}.linkd"
    lookup = f"import socket; print(socket.gethostbyname('{fqdn}'))"
    # While it runs (1.5 s), its name resolves.
    assert linkd.py("client", lookup).stdout.strip().startswith("10.")
    import json
    import time

    deadline = time.monotonic() + 10
    while json.loads(linkd.run("inspect", "-p", linkd.project, "oneshot").stdout)[0][
        "state"
    ]["status"] != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    gone = linkd.py("client", lookup, check=False)
    assert gone.returncode != 0 and "Name or service not known" in gone.stderr
    explained = linkd.run("dns", "-p", linkd.project, "oneshot", "--from", "client").stdout
    assert "answer: NXDOMAIN" in explained


def test_srv_records_for_exposed_ports(linkd: Linkd) -> None:
    linkd.write("""
        services:
          api:
            command: sleep 300
            scale: 2
            expose: ["8080"]
          client:
            command: sleep 300
    """)
    linkd.up()
    got = linkd.run("dns", "-p", linkd.project, "_8080._tcp.api", "--from", "client",
                    "--type", "SRV").stdout
    assert "answer: NOERROR" in got
    assert got.count(" SRV ") == 2
    assert f"api-1.default.{linkd.project}.linkd." in got


def test_linkd_dns_answers_as_the_server_does_for_a_service_not_yet_healthy(
    linkd: Linkd,
) -> None:
    """`linkd dns` builds the zone as the running server holds it: a container whose
    healthcheck has not passed is held back from its service's name (it used to be
    listed, while the server answered SERVFAIL)."""
    linkd.write("""
        services:
          sick:
            command: sleep 300
            healthcheck: {test: ["CMD", "false"], interval: 100ms, retries: 1}
          client:
            command: sleep 300
    """)
    linkd.up()
    explained = linkd.run("dns", "-p", linkd.project, "sick", "--from", "client").stdout
    assert "answer: SERVFAIL" in explained, explained
    # What the container's own resolver says of it: no address, try again later.
    code = ("import socket\ntry:\n    socket.getaddrinfo('sick', 80)\n"
            "except socket.gaierror as e:\n    print(e.errno == socket.EAI_AGAIN)")
    assert linkd.py("client", code).stdout.strip() == "True"
    answered = linkd.run("dns", "-p", linkd.project, "client", "--from", "sick").stdout
    assert "answer: NOERROR" in answered  # a service without a healthcheck is there
