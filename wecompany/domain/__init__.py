"""
The shared domain: accounts, sessions and presence, text delivery, calls, files.

Plain Python. It knows its clients only through :class:`~wecompany.domain.interfaces.IClient`
and takes time from an injected clock (an ``IReactorTime``), so the TCP
protocol, the WebSocket signaling and the REST API can all drive it, and tests
drive it with ``task.Clock``.
"""
