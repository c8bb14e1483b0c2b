"""
End-to-end tests: the real daemon, started with ``twistd`` in a subprocess on
free loopback ports, driven over real sockets on the real reactor.

These are the only tests allowed real sockets and wall time; everything they
wait for is an event (a log line, a frame, a closed connection, a process
exit) with a timeout that fails clearly, never a fixed sleep.
"""
