"""One stack's life, in parts with one job each:

- `supervisor`: the reconciler of one stack (plan, wire, start, update, repair, tear
  down), made of the parts below and sharing their view of the stack (`live`);
- `planner`: images and conventions resolved, subnets, addresses and host ports picked
  and the plan recorded, under the global lock from the pick to the record;
- `containers`: the processes: start after their dependencies, monitor, restart, stop;
- `publisher`: the one on-change hook: state file (`state_writer`, `store`), DNS zone
  (`dns_server`, answering with `linkd.dns`), live bindings, events;
- `resolvers`: linkd's resolver at 127.0.0.11:53 inside each container;
- `recovery`: taking a stack over from a supervisor that died;
- `teardown`: the one removal path (`down`, a failed `up`, crash recovery, orphans);
- `lifecycle`: a stack's life around the supervisor, in the foreground or the daemon;
- `container_files`: the files a container gets (/etc/hosts, resolv.conf, bindings);
- `conventions`: the conventions a stack names, read from their files.
"""
