"""The `linkd` command: argument parsing and printing.

`main` parses every command and runs the ones that only read (`ps`, `logs`, `env`,
`config`, `dns`, ...); it reaches `lifecycle` (`up`, `down`, `exec`, `daemon`) and
`images` (`image load|ls|rm`) through importlib only when such a command runs, so that
the reading commands answer at once (tests/unit/test_cli_imports.py). `progress` prints
`up` and `down` as they go.

It may import anything in linkd; nothing imports it but `linkd.__main__`.
"""
