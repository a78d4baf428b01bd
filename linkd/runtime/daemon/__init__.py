"""The daemon: one process hosting every stack (`daemon`), its HTTP API over the unix socket
(`api`, aiohttp) and the optional TCP listener with its token (`api_tcp`).
"""
