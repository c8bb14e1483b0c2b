"""
The read caches of every node, kept true to the shared database.

Each node's store tells its own caches of its writes
(:class:`~wecompany.domain.usercache.UserCache`,
:class:`~wecompany.domain.meetingpages.MeetingPages`); in a cluster it also
tells a :class:`CacheRelay`, which publishes the invalidation on the
cluster's ``all`` channel, and every other node forgets the same entry
(:class:`~wecompany.mirror.cluster.ClusterNode`). A revoked token, a ban, a
role change made on one node is therefore refused on every node as soon as
the message arrives (about a millisecond on a LAN), not when the caches'
backstop runs out. A node that was cut off from Redis forgets everything
when it is back: it may have missed some.
"""

from __future__ import annotations

from wecompany.mirror.codec import dumps

#: The caches that follow the database, by the name their invalidations carry.
USERS, MEETINGS = "users", "meetings"


class CacheRelay:
    """
    One of a store's ``user_caches`` or ``meeting_caches``: each
    ``invalidate(key)`` goes to the other nodes.

    Made before the store (which is made before the domain), so it holds
    the link and the channel, not the cluster.

    :param link: the node's :class:`~wecompany.mirror.redis.RedisLink`.
    :param channel: the cluster's ``all`` channel.
    :param node_id: this node (its own messages come back to it and are ignored).
    :param cache: :data:`USERS` or :data:`MEETINGS`.
    """

    def __init__(self, link, channel: str, node_id: str, cache: str) -> None:
        self.link = link
        self.channel = channel
        self.node_id = node_id
        self.cache = cache

    def invalidate(self, key: int) -> None:
        if not self.link.up:
            return  # the other nodes forget everything when they hear from this one again
        d = self.link.publish(self.channel, dumps({"t": "invalidate", "from": self.node_id, "cache": self.cache,
                                                   "key": key}))
        d.addErrback(lambda failure: None)  # the link reports the outage; the backstop bounds the damage


def relays(link, channel: str, node_id: str) -> tuple[CacheRelay, CacheRelay]:
    """The user and meeting relays of a node, for its store's cache lists."""
    return CacheRelay(link, channel, node_id, USERS), CacheRelay(link, channel, node_id, MEETINGS)
