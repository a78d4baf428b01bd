"""nf_tables over netlink: linkd's one encoder of nftables rules, and the talk with the kernel.

Two users. The namespace helper writes each container's DNS redirect (`replace_dns_redirect`,
in the container's namespace); `linkd.runtime.kernel.firewall` writes each stack's table in the
host's namespace. Neither runs the nft tool: a host may have none (Debian without the
nftables package), and a fork and exec costs 7-20 ms where a batch costs ~0.1.

The parts, each over the one below it:

    rules          `Rule`: one rule's expressions, match by match as nft encodes them
    transactions   `Batch`, `commit`: messages applied all or none, and the kernel's answers
    readback       `dump`, `table_names`, `table_state`: what the kernel holds, listed back
    dns_redirect   the namespace helper's one table (127.0.0.11:53 to linkd's DNS server)
    wire           the kernel's numbers, netlink attributes and messages, the socket

This package is the API its users import (`from linkd.runtime.kernel import nft`); a test of
the wire format reaches into `wire` itself. No imports beyond `_socket`, `os` and `sys`
(not `socket`, which imports `enum`): it is loaded into the namespace helper.
"""

from linkd.runtime.kernel.nft.dns_redirect import dns_redirect_batch, replace_dns_redirect
from linkd.runtime.kernel.nft.readback import dump, table_names, table_state
from linkd.runtime.kernel.nft.rules import Rule
from linkd.runtime.kernel.nft.transactions import Batch, commit
from linkd.runtime.kernel.nft.wire import (
    FAMILIES,
    L4PROTOS,
    NFPROTO_INET,
    NFPROTO_IPV4,
    NFPROTO_IPV6,
    NFT_CT_STATE,
    NFT_CT_STATUS,
    attributes,
)

__all__ = [
    "FAMILIES",
    "L4PROTOS",
    "NFPROTO_INET",
    "NFPROTO_IPV4",
    "NFPROTO_IPV6",
    "NFT_CT_STATE",
    "NFT_CT_STATUS",
    "Batch",
    "Rule",
    "attributes",
    "commit",
    "dns_redirect_batch",
    "dump",
    "replace_dns_redirect",
    "table_names",
    "table_state",
]
