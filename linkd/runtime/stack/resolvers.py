"""linkd's resolver inside each container: 127.0.0.11:53, UDP and TCP.

The sockets are made inside the container's namespace by the namespace helper, which also
writes the namespace's rule sending 127.0.0.11:53 to them; the stack's one DNS server
(the publisher's) answers on all of them, told for each which container asks (queries
arrive over the container's loopback, so the source address cannot say). A container
keeps its ports across a daemon restart (`dns_ports` in its state): the new sockets
bind them again, and the rule stays right.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace

from linkd.core.plan import ContainerPlan
from linkd.dns.zone import forwards_for, requester_of
from linkd.runtime.kernel.netlink import Kernel
from linkd.runtime.stack.live import LiveStack
from linkd.runtime.stack.publisher import Publisher


class Resolvers:
    def __init__(self, live: LiveStack, publisher: Publisher, kernel: Kernel) -> None:
        self.live = live
        self.publisher = publisher
        self.kernel = kernel
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}  # per container

    async def serve(self, container: ContainerPlan) -> None:
        """The resolver inside `container`, before it starts."""
        dns, tasks = self.publisher.dns, self.live.tasks
        if dns is None or tasks is None:
            return
        before = self.live.states.get(container.name)
        udp, tcp = await self.kernel.dns_sockets(
            container.netns, before.dns_ports if before is not None else None
        )
        ports = (udp.getsockname()[1], tcp.getsockname()[1])
        if before is None or before.dns_ports != ports:
            # Saved with the next state change (its start follows at once): one write
            # of the state file per container, not two.
            self.live.states[container.name] = replace(
                self.live.state(container.name), dns_ports=ports
            )
        me = requester_of(self.live.name, container)
        out = forwards_for(container)
        # Compose's dns: this container's names outside the zone go to its own servers.
        theirs = [(server, 53) for server in container.net.dns] or None
        self._tasks.setdefault(container.name, []).extend([
            tasks.create_task(dns.serve_udp(udp, requester_override=me, forward=out,
                                            upstreams=theirs)),
            tasks.create_task(dns.serve_tcp(tcp, requester_override=me, forward=out,
                                            upstreams=theirs)),
        ])

    def serves(self, container: str) -> bool:
        return container in self._tasks

    async def stop(self, names: Iterable[str]) -> None:
        """Close the resolver sockets of these containers: they live in the containers'
        namespaces and would keep them, and their veths, alive after removal."""
        tasks = [t for n in list(names) for t in self._tasks.pop(n, [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop_all(self) -> None:
        await self.stop(list(self._tasks))
