"""Volumes: `store` keeps named and anonymous volumes as directories under
/var/lib/linkd/volumes (or $LINKD_VOLUMES), each with a small record of whose it is;
`mounts` turns a container's planned mounts into what its shim mounts (host paths,
volumes made, bind sources checked) and checks a stack's before anything is created.
"""
