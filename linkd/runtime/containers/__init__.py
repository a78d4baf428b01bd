"""Container processes: `process` starts and stops them through `shim` (run by path as a
standalone, standard-library-only script, never imported by linkd), `confine` and `rootfs`
prepare what the shim applies, `health` runs probes through `health_agent` (standalone
too, and kept in the same directory as the shim, which it loads), `logs` reads their
output.
"""
