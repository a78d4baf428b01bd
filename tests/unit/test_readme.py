"""The README's stack-file example is a valid stack (documentation must not rot)."""

from __future__ import annotations

from pathlib import Path

from linkd.spec import parse_stack

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_stack_example_parses_without_warnings() -> None:
    text = README.read_text()
    start = text.index("```yaml\n") + len("```yaml\n")
    example = text[start : text.index("```", start)]
    stack = parse_stack(example, source="README.md", read_text=lambda path: "MODE=test\n")
    assert stack.name == "shop"
    assert not stack.warnings
    assert [s.name for s in stack.services] == ["db", "web", "tool"]
    assert stack.service("tool").networks == ()
    assert stack.dns.domain == "shop.internal"
