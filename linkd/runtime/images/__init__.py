"""The OCI image store: `image_store` (load, list, remove, resolve a stack's images),
`layers` (verify, then unpack layer blobs) and `beneath` (openat2 RESOLVE_BENEATH: every
path of a layer resolved beneath its root).
"""
