"""The whole session runs in a simulated host (tests/simhost.py): linkd turns forwarding
on, writes nftables tables and creates bridges in a network namespace of the session's
own, never in the real host's. Entered here, at import, before pytest starts a thread."""

from tests.simhost import enter_session_host

enter_session_host()
