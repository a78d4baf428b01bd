"""Container processes: `process` starts and stops them through `shim` (run by path as a
standalone, standard-library-only program, never imported by linkd, made of the `shim_*`
modules beside it), `confine` and `rootfs` prepare what the shim applies, `health` runs
probes through `health_agent` (standalone too, and kept in the same directory as the
shim, whose modules it loads), `logs` reads their output.
"""
