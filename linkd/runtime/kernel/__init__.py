"""The kernel objects linkd makes: namespaces, veths, bridges, addresses and routes
(`netlink`, through a forked namespace helper `nshelper`), nftables tables over netlink
(`nft`), the firewall and forwarding applied from their pure rules, cgroups, and
`link_events` (netlink notifications). Only `netlink` imports pyroute2.
"""
