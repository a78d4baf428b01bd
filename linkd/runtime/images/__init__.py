"""The OCI image store: `image_store` (load, list, remove, resolve a stack's images),
`sources` (read a layout or archive, and plan what a load stores), `layers` (verify, then
unpack layer blobs), `beneath` (openat2 RESOLVE_BENEATH: every path of a layer
resolved beneath its root), `registry` and `pull` (an image by reference from an OCI
registry, fetched as a layout and loaded like one) and `build` (a service's `build:`
built with buildah, then loaded like any archive).
"""
