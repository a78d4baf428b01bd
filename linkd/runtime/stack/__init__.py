"""One stack's life: the `supervisor` (plan, wire, start, monitor, tear down), its state on
disk (`store`, written through `state_writer`), its DNS server (`dns_server`, answering with
`linkd.dns`), and the conventions it names, read from their files.
"""
