"""
One-to-one audio/video calls: the state machine and the media relay.

States: ringing -> active -> ended, or ringing -> rejected / cancelled /
timed out. A user is in at most one call. Timers (ring timeout, maximum
length) run on the injected clock.
"""

from __future__ import annotations

import attrs
from twisted.logger import Logger

from wecompany.domain.events import (
    CallAccepted, CallEnded, CallIncoming, CallRejected, CallRinging,
)
from wecompany.domain.ids import new_call_id
from wecompany.errors import Conflict, Forbidden, NotFound

RINGING = "ringing"
ACTIVE = "active"

# What a party does to a call; another node's client does it through the cluster.
ACCEPT, REJECT, END = "accept", "reject", "end"
OPERATIONS = (ACCEPT, REJECT, END)

# Results of CallService.relay
RELAYED, DROPPED, NOT_IN_CALL = 0, 1, 2

MAX_REASON = 64


@attrs.define(eq=False)
class Call:
    """A call that is ringing or active. Ended calls are forgotten."""

    call_id: str
    caller: object
    callee: object
    is_video: bool
    created_at: float
    state: str = RINGING
    answered_at: float | None = None
    timer: object = None
    relayed: int = 0
    dropped: int = 0

    def peer_of(self, client):
        return self.callee if client is self.caller else self.caller


class CallService:
    """
    Places, answers and ends calls between :class:`IClient` s and relays
    their media.

    :param clock: ``IReactorTime`` used for the ring timeout and the maximum length.
    :param recorder: optional :class:`~wecompany.domain.recording.CallRecorder`.
    :param cluster: the :class:`~wecompany.mirror.cluster.Cluster` (or
        ``LocalCluster``). A call belongs to its caller's node, which keeps
        its state and relays its media; the callee may be on another node,
        whose client this service sees as a proxy. A local client in a call
        another node owns acts on it through the cluster (``forward``), and
        the cluster is told when a call finishes (its locks go).
    """

    log = Logger()

    def __init__(self, clock, ring_timeout: float = 30.0, max_duration: float = 3600.0,
                 recorder=None, make_call_id=new_call_id, cluster=None) -> None:
        from wecompany.mirror.cluster import LocalCluster

        self.cluster = cluster if cluster is not None else LocalCluster()
        self.clock = clock
        self.ring_timeout = ring_timeout
        self.max_duration = max_duration
        self.recorder = recorder
        self._make_call_id = make_call_id
        self._calls: dict[str, Call] = {}
        self._by_client: dict[object, Call] = {}
        self.relayed_packets = 0
        self.dropped_packets = 0

    # -- queries ------------------------------------------------------------
    def call_of(self, client) -> Call | None:
        return self._by_client.get(client)

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    @property
    def active_count(self) -> int:
        return sum(1 for c in self._calls.values() if c.state == ACTIVE)

    @property
    def count(self) -> int:
        return len(self._calls)

    def in_progress(self) -> list[Call]:
        """The calls ringing or active on this node, oldest first (the console's dashboard lists them)."""
        return sorted(self._calls.values(), key=lambda call: call.created_at)

    def new_call_id(self) -> str:
        return self._make_call_id()

    # -- transitions --------------------------------------------------------
    def place(self, caller, target, callee_client, is_video: bool, call_id: str | None = None) -> Call | None:
        """
        ``caller`` calls the user ``target`` (an Identity, or None when no such
        user exists) whose chat client is ``callee_client`` (None if offline).

        A call that cannot be placed is answered at once with CALL_REJECT to
        the caller and leaves nothing behind; returns the new Call otherwise.
        """
        if caller in self._by_client:
            raise Conflict("you are already in a call")
        reason = None
        if target is None:
            reason = "not_found"
        elif target.user_id == caller.identity.user_id:
            reason = "self"
        elif callee_client is None:
            reason = "offline"
        elif callee_client in self._by_client:
            reason = "busy"
        call_id = call_id or self._make_call_id()
        if reason is not None:
            caller.send_event(CallRejected(call_id, reason))
            return None
        call = Call(call_id, caller, callee_client, bool(is_video), self.clock.seconds())
        self._calls[call.call_id] = call
        self._by_client[caller] = call
        self._by_client[callee_client] = call
        call.timer = self.clock.callLater(self.ring_timeout, self._ring_timeout, call)
        self.log.info("call {call_id}: {caller} rings {callee}", call_id=call.call_id,
                      caller=caller.identity.user_id, callee=target.user_id)
        caller.send_event(CallRinging(call.call_id, target.user_id, call.is_video))
        callee_client.send_event(CallIncoming(call.call_id, caller.identity.user_id,
                                              caller.identity.username, call.is_video))
        return call

    def accept(self, client, call_id: str) -> None:
        if call_id not in self._calls and self.cluster.forward(client, ACCEPT, call_id):
            return
        call = self._party_call(client, call_id)
        if client is not call.callee:
            raise Forbidden("only the callee may accept a call")
        if call.state != RINGING:
            raise Conflict("call is already active")
        call.timer.cancel()
        call.state = ACTIVE
        call.answered_at = self.clock.seconds()
        call.timer = self.clock.callLater(self.max_duration, self._max_duration, call)
        event = CallAccepted(call.call_id)
        call.caller.send_event(event)
        call.callee.send_event(event)

    def reject(self, client, call_id: str, reason: str = "") -> None:
        if call_id not in self._calls and self.cluster.forward(client, REJECT, call_id, reason[:MAX_REASON]):
            return
        call = self._party_call(client, call_id)
        if client is not call.callee:
            raise Forbidden("only the callee may reject a call; the caller ends it with CALL_END")
        if call.state != RINGING:
            raise Conflict("an active call is ended with CALL_END")
        reason = (reason or "rejected")[:MAX_REASON]
        self._finish(call, CallRejected(call.call_id, reason))

    def end(self, client, call_id: str) -> None:
        """Hang up an active call, or cancel (caller) / decline (callee) a ringing one."""
        if call_id not in self._calls and self.cluster.forward(client, END, call_id):
            return
        call = self._party_call(client, call_id)
        if call.state == RINGING:
            reason = "cancelled" if client is call.caller else "declined"
        else:
            reason = "hangup"
        self._finish(call, CallEnded(call.call_id, reason))

    def session_closed(self, client, reason: str = "disconnected") -> None:
        """The client went away: its call, if any, ends for both."""
        call = self._by_client.get(client)
        if call is not None:
            self._finish(call, CallEnded(call.call_id, reason))

    def end_all(self, reason: str = "shutdown") -> None:
        """End every call of this node: those it owns, and its clients' calls another node owns."""
        for call in list(self._calls.values()):
            self._finish(call, CallEnded(call.call_id, reason))
        self.cluster.end_remote_calls(reason)

    # -- media --------------------------------------------------------------
    def relay(self, client, data: bytes) -> int:
        """Forward one media packet to the other party of ``client``'s active call."""
        call = self._by_client.get(client)
        if call is None:
            # In a call another node owns: the media goes there to be relayed.
            return RELAYED if self.cluster.forward_media(client, data) else NOT_IN_CALL
        if call.state != ACTIVE:
            return NOT_IN_CALL
        if client is call.caller:
            peer, direction = call.callee, "caller"
        else:
            peer, direction = call.caller, "callee"
        if self.recorder is not None:
            self.recorder.write(call.call_id, direction, data)
        if peer.send_media(call.call_id, data):
            call.relayed += 1
            self.relayed_packets += 1
            return RELAYED
        call.dropped += 1
        self.dropped_packets += 1
        return DROPPED

    # -- internals ----------------------------------------------------------
    def _party_call(self, client, call_id: str) -> Call:
        call = self._calls.get(call_id)
        if call is None:
            raise NotFound("no such call")
        if client is not call.caller and client is not call.callee:
            raise Forbidden("not a party to this call")
        return call

    def _ring_timeout(self, call: Call) -> None:
        call.timer = None
        self._finish(call, CallRejected(call.call_id, "timeout"))

    def _max_duration(self, call: Call) -> None:
        call.timer = None
        self._finish(call, CallEnded(call.call_id, "max_duration"))

    def _finish(self, call: Call, event) -> None:
        if self._calls.pop(call.call_id, None) is None:
            return
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None
        for party in (call.caller, call.callee):
            if self._by_client.get(party) is call:
                del self._by_client[party]
        if self.recorder is not None:
            self.recorder.close_call(call.call_id)
        self.cluster.call_finished(call)
        self.log.info("call {call_id} finished: {event}, {relayed} packets relayed, {dropped} dropped",
                      call_id=call.call_id, event=type(event).__name__, relayed=call.relayed,
                      dropped=call.dropped)
        call.caller.send_event(event)
        call.callee.send_event(event)
