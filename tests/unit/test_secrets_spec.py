"""`secrets:` and `configs:` read as Compose reads them: sources from a file, a variable or
inline content; short and long service forms with their default targets; bad input named;
and a secret's content kept out of what `linkd inspect` shows."""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Network
from typing import Any

import pytest

from linkd.core.model import FileMount, Stack
from linkd.core.plan import hide_secrets, realize
from linkd.core.state import to_plain
from linkd.errors import SpecError
from linkd.spec.stack_file import parse_stack


def parse(text: str, **env: str) -> Stack:
    return parse_stack(textwrap.dedent(text), source="compose.yaml", default_project="p",
                       directory="/srv/app", host_env={"TOKEN": "s3cret", **env})


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse(text)
    return [p[2] for p in info.value.problems]


STACK = """
    services:
      app:
        image: app
        secrets:
          - db_password
          - source: token
            target: api_token
            uid: "1000"
            gid: "1000"
            mode: 0400
        configs:
          - nginx
          - source: settings
            target: /etc/app/settings.ini
            mode: 0440
    secrets:
      db_password: {file: ./secrets/db.txt}
      token: {environment: TOKEN}
    configs:
      nginx: {file: /etc/nginx/nginx.conf}
      settings:
        content: |
          [app]
          debug = ${DEBUG:-false}
"""


def test_sources_and_targets_as_compose_gives_them() -> None:
    files = parse(STACK).service("app").files
    assert files == (
        FileMount("/run/secrets/db_password", "/srv/app/secrets/db.txt", secret=True),
        FileMount("/run/secrets/api_token", content="s3cret", uid=1000, gid=1000,
                  mode=0o400, secret=True),
        FileMount("/nginx", "/etc/nginx/nginx.conf"),
        FileMount("/etc/app/settings.ini", content="[app]\ndebug = false\n", mode=0o440),
    )


def test_inspect_shows_no_secrets_content() -> None:
    stack = parse(STACK)
    subnets = {n.name: IPv4Network("10.99.0.0/24") for n in stack.networks}
    plain: Any = hide_secrets(to_plain(realize(stack, subnets)))
    files = plain["containers"][0]["files"]
    assert files[1]["content"] == "(hidden: a secret)"
    assert files[3]["content"] == "[app]\ndebug = false\n"  # a config is no secret
    assert "s3cret" not in repr(plain)


@pytest.mark.parametrize(("text", "says"), [
    ("services: {a: {image: x, secrets: [nope]}}",
     'secret "nope" is not declared in the top-level secrets: (declared: none)'),
    ("services: {a: {image: x}}\nsecrets: {s: {file: a, environment: B}}",
     "secret s needs exactly one of file or environment (or external), got file, "
     "environment"),
    ("services: {a: {image: x, configs: [{target: /x}]}}\nconfigs: {c: {content: x}}",
     'needs "source"'),
    ("services: {a: {image: x, configs: [{source: c, target: /proc/x}]}}\n"
     "configs: {c: {content: x}}", "inside /proc"),
    ("services: {a: {image: x, secrets: [{source: s, mode: rw}]}}\n"
     "secrets: {s: {file: ./f}}", "expected a file mode"),
])
def test_bad_input_is_named(text: str, says: str) -> None:
    found = problems(text)
    assert any(says in p for p in found), found


def test_external_ones_are_warned_and_left_out() -> None:
    stack = parse("""
        services: {a: {image: x, secrets: [swarm]}}
        secrets: {swarm: {external: true}}
    """)
    assert stack.service("a").files == ()
    assert len(stack.warnings) == 1 and "live in a Swarm's store" in stack.warnings[0]


def test_an_unset_variable_is_warned_and_kept_for_up_to_refuse() -> None:
    stack = parse("""
        services: {a: {image: x, secrets: [s]}}
        secrets: {s: {environment: UNSET_HERE}}
    """)
    assert stack.service("a").files == (FileMount("/run/secrets/s", secret=True,
                                                  unset="UNSET_HERE"),)
    assert "variable UNSET_HERE is not set" in stack.warnings[0]
