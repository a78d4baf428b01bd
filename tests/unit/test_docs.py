"""The documentation's examples are valid stacks (documentation must not rot)."""

from __future__ import annotations

from pathlib import Path

from linkd.spec.stack_file import parse_stack

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_stack_file_example_parses_without_warnings() -> None:
    text = (DOCS / "stack-files.md").read_text()
    start = text.index("```yaml\n") + len("```yaml\n")
    example = text[start : text.index("```", start)]
    stack = parse_stack(example, source="docs", read_text=lambda path: "MODE=test\n")
    assert stack.name == "shop"
    assert not stack.warnings
    assert [s.name for s in stack.services] == ["db", "web", "tool"]
    assert stack.service("tool").networks == ()
    assert stack.dns.domain == "shop.internal"


def yaml_blocks(page: str) -> list[str]:
    text = (DOCS / page).read_text()
    blocks = []
    start = text.find("```yaml\n")
    while start >= 0:
        start += len("```yaml\n")
        end = text.index("```", start)
        blocks.append(text[start:end])
        start = text.find("```yaml\n", end)
    return blocks


def test_the_conventions_example_gives_what_it_says() -> None:
    from ipaddress import IPv4Network

    from tests.planning import realize

    blocks = yaml_blocks("conventions.md")
    (example,) = [b for b in blocks if "conventions:" in b and "services:" in b]
    stack = parse_stack(example, source="docs", default_project="shop")
    assert not stack.warnings
    plan = realize(stack, {"default": IPv4Network("10.87.0.0/24")})
    env = dict(plan.container("web-1").env)
    db = str(plan.container("db-1").interfaces[0].address)
    assert env["DB_PORT"] == "5432"  # explicit wins over docker-links' tcp://...
    assert env["DB_NAME"] == "/web-1/db"
    assert env["DB_SERVICE_HOST"] == db
    assert env["DB_ENV_POSTGRES_DB"] == "shop"
    assert env["DATABASE_URL"] == f"postgres://app@{db}:5432/shop"
    assert not any(k.startswith("LINKD_") for k in env)  # the service chose its own
