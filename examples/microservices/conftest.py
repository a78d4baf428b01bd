"""The stack for test_example.py: up once for the module, torn down after it (also on
failure or Ctrl-C); the plugin is linkd's pytest plugin (entry point `linkd`)."""

from linkd.client import waits
from linkd.client.pytest_plugin import stack_fixture

shop = stack_fixture(
    "stack.yaml",
    scope="module",
    wait={
        "store": waits.http(7000, "/health"),
        "api": waits.http(8080, "/health", status=200),
        "worker": waits.log(r"^worker: ready"),
    },
)
