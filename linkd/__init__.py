"""linkd: wire containers together by name.

The modules directly under `linkd/` are the pure core (parsing, planning, naming, state
encoding); `linkd.runtime` is the only package that touches the kernel, processes,
sockets, files and the clock.
"""

__version__ = "0.1.0"
