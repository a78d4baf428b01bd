"""DNS without I/O, like h11: `zone` builds the immutable, requester-scoped snapshot from
the stacks' plans; `answers` answers a query (bytes in, bytes out) from it, with dnslib as
the codec. The server that owns the sockets is `linkd.runtime.stack.dns_server`.

Pure: it may import `linkd.core`, `linkd.errors`, dnslib and the standard library.
"""
