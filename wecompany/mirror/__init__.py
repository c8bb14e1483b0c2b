"""
The cluster: several daemons that act as one service over Redis.

With ``--redis`` a node mirrors its sessions, presence, calls and room
members to Redis and talks to the other nodes over Redis pub/sub
(:mod:`wecompany.mirror.cluster`); without it, :class:`~wecompany.mirror.cluster.LocalCluster`
stands in and no Redis code runs. ``docs/cluster.rst`` describes the keys,
the channels and what happens when a node or Redis fails.
"""
