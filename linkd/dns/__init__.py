"""DNS without I/O, like h11: `zone` builds the immutable, requester-scoped snapshot
(`snapshot`) from the stacks' plans, with the names only one requester sees
(`requesters`); `answers` answers a query (bytes in, bytes out) from it, with dnslib as
the codec, `resolve` deciding what the question means on a cache miss; `explain` says
why, in sentences. The server that owns the sockets is `linkd.runtime.stack.dns_server`.

Pure: it may import `linkd.core`, `linkd.errors`, dnslib and the standard library.
"""
