"""The client side: what a user's program or test runs to use a daemon.

`api` (HTTP/1.0 over the unix socket, standard library only: what the CLI uses too),
`stacks` (the Python API: `linkd.Stack`, `linkd.AsyncStack`; built of `loading`, the
stack sent, `async_form`, the one implementation, `sync_form`, which runs it, and
`container_exec`, `exec` as `subprocess.run`), `waits` (wait strategies),
`host_names` (container names resolvable from the host, for tests), `pytest_plugin` (the
`linkd_stack` marker and fixtures, registered as a pytest11 entry point).

It may import the pure packages, `linkd.errors`, `linkd.paths` and `linkd.files`; never
`linkd.runtime` (it talks to the daemon over its API) or `linkd.cli`.
"""
