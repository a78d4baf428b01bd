"""The pure planner and its models: data in, data out.

`model` (the validated stack), `plan` (`realize`: the desired state of a stack),
`reconcile` (desired vs observed -> actions), `ipam`, `names` (kernel names), `restart`
and `health` (verdicts), `state` (the versioned state codec), `hosts` and `bindings`
(file contents), `firewall`, `forwarding` and `nftables` (rules as data),
`confinement` and `seccomp_profile` (with its data file `seccomp_default.rules`),
`image_format`, `layer_rules` and `image_config` (OCI documents, layer entries and load
limits, and what an image gives a service),
`api_schema` (the daemon API's requests).

Pure: it may import `linkd.conventions` (rendering), `linkd.errors`, msgpack and the
standard library; never asyncio, sockets, subprocesses, aiohttp or pyroute2, nor the
runtime, client or CLI; it reads no files (the shell hands conventions and file
contents in).
"""
