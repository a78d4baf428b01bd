"""A stack of several files brought up by the daemon (`linkd up -d`, issue 16 §4): the
command line sends the texts of the files it found (the stack file and the override file
beside it), the daemon merges them and reads the file `include:` names beneath the
stack's directory, and the containers run what the merge says."""

from __future__ import annotations

import json

from tests.integration.conftest import Linkd


def test_up_d_runs_the_stack_file_merged_with_its_override_and_include(linkd: Linkd) -> None:
    linkd.write("""\
        include: [lib/db.yaml]
        services:
          web:
            command: sleep 300
            environment: {A: base, B: base}
            depends_on: [db]
        """, "compose.yaml")
    linkd.write("""\
        services:
          web:
            environment: {B: override}
            command: sleep 301
        """, "compose.override.yaml")
    (linkd.directory / "lib").mkdir()
    linkd.write("services:\n  db:\n    command: sleep 302\n    env_file: db.env\n",
                "lib/db.yaml")
    (linkd.directory / "lib" / "db.env").write_text("FROM=lib\n")  # beside lib/db.yaml
    linkd.up()
    web = linkd.exec("web", "/usr/bin/env").stdout.splitlines()
    assert "A=base" in web and "B=override" in web
    (inspected,) = json.loads(linkd.run("inspect", "-p", linkd.project, "web").stdout)
    assert inspected["plan"]["argv"] == ["sleep", "301"]  # the override's command, whole
    assert "FROM=lib" in linkd.exec("db", "/usr/bin/env").stdout.splitlines()
    linkd.down()
