"""
The SFU's HTTP routes (``/api/v1/webrtc``), as the family's browser client calls them.

Their answers are the bare JSON objects that client reads (``{peer_id,
answer}``...), not the API's envelope; errors keep the envelope, whose
``message`` the client shows (and a 404 whose message says ``peer not
found`` makes it reconnect). The client sends no token on most of these
calls: a peer is bound to the caller's open signaling session in the room
(:mod:`wecompany.domain.sfu`), and a Bearer token, when one is sent, must be
that user's (``--sfu-require-token`` makes it required). In a cluster the
calls go to the node that serves the room (:mod:`wecompany.mirror.sfu`),
with the user the token proved. See docs/sfu.rst.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from wecompany.api.envelope import dumps, request_id_for
from wecompany.api.routing import PUBLIC, Call, endpoint
from wecompany.api.validation import Field
from wecompany.errors import Forbidden, Unauthenticated, Unavailable

TAG = "webrtc"
ROOM_ID = Field("string", required=True, min_length=1, max_length=128)
USER_ID = Field("id", required=True, description="the caller's user id (a number or its decimal string)")
SDP = Field("string", required=True, min_length=1, max_length=128 * 1024)
OFFER = Field("object", required=True, fields={"type": Field("string", required=True, choices=("offer",)),
                                               "sdp": SDP})
ANSWER = Field("object", required=True, fields={"type": Field("string", choices=("answer",)), "sdp": SDP})
CANDIDATE = Field("object", required=True, nullable=True, description="RTCIceCandidate.toJSON(); null: no more")
PEER_ID = Field("string", required=True, min_length=1, max_length=128)

_MESSAGE = {"type": "object", "properties": {"message": {"type": "string"}, "peer_id": {"type": "string"}}}
_SDP = {"type": "object", "properties": {"type": {"type": "string"}, "sdp": {"type": "string"}}}
_ERRORS = (400, 401, 403, 404, 429, 503)


async def _result(value):
    """The domain answers with values or Deferreds."""
    if isinstance(value, Deferred):
        value = await value
    return value


def _json(request, obj, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"x-request-id", request_id_for(request).encode())
    request.setHeader(b"cache-control", b"no-store")
    return dumps(obj)


class WebRTCRoutes:
    """
    Mixin of :class:`~wecompany.api.app.RestAPI`: needs ``self.sfu`` (None
    when ``--no-sfu``), the domain's ``sfu_routes``: the SfuService itself,
    or in a cluster the router that forwards to the room's node.
    """

    def _sfu(self):
        if self.sfu is None:
            raise Unavailable("the SFU is off on this server")
        return self.sfu

    async def _caller(self, request):
        """
        The id of the user a Bearer token proves, or None when none is sent
        (and none is required). The SFU checks it against the user of the
        peer or the request (``identity``).
        """
        if request.getHeader(b"authorization") is None:
            if self.domain.config.sfu_require_token:
                raise Unauthenticated("this server requires a bearer token on SFU calls")
            return None
        return (await self.authenticate(request)).id

    @endpoint("POST", "/v1/webrtc/answer", summary="Open an SFU connection: the browser's offer in, the "
              "server's answer and a new peer id out", tag=TAG, auth=PUBLIC,
              body={"room_id": ROOM_ID, "user_id": USER_ID, "offer": OFFER},
              data={"type": "object", "properties": {"peer_id": {"type": "string"}, "answer": _SDP}},
              errors=_ERRORS)
    async def webrtc_answer(self, call: Call):
        sfu = self._sfu()
        caller = await self._caller(call.request)
        body = call.body
        await self.sfu_limiter.hit(self.client_address(call.request))  # each is a DTLS handshake in a worker
        opened = await _result(sfu.answer(body["room_id"], body["user_id"], body["offer"]["sdp"], identity=caller))
        return _json(call.request, {"peer_id": opened["peer_id"],
                                    "answer": {"type": "answer", "sdp": opened["answer_sdp"]}})

    @endpoint("POST", "/v1/webrtc/ice-candidate", summary="A trickled ICE candidate of the browser", tag=TAG,
              auth=PUBLIC, body={"peer_id": PEER_ID, "candidate": CANDIDATE}, data=_MESSAGE, errors=_ERRORS)
    async def webrtc_ice_candidate(self, call: Call):
        sfu = self._sfu()
        caller = await self._caller(call.request)
        peer_id = call.body["peer_id"]
        await _result(sfu.add_candidate(peer_id, call.body["candidate"], identity=caller))
        return _json(call.request, {"message": "candidate added", "peer_id": peer_id})

    @endpoint("GET", "/v1/webrtc/peer/<string:peer_id>/ice-candidates", summary="The server's ICE candidates "
              "since the last poll (each once); complete once it has no more", tag=TAG, auth=PUBLIC,
              data={"type": "object", "properties": {"peer_id": {"type": "string"},
                                                     "candidates": {"type": "array"},
                                                     "complete": {"type": "boolean"}}}, errors=_ERRORS)
    async def webrtc_candidates(self, call: Call):
        sfu = self._sfu()
        peer_id = call.params["peer_id"]
        caller = await self._caller(call.request)
        found = await _result(sfu.candidates(peer_id, identity=caller))
        return _json(call.request, {"peer_id": peer_id, "candidates": found["candidates"],
                                    "complete": found["complete"]})

    @endpoint("GET", "/v1/webrtc/peer/<string:peer_id>/offer", summary="The server's pending renegotiation "
              "offer (204 when there is none)", tag=TAG, auth=PUBLIC,
              data={"type": "object", "properties": {"peer_id": {"type": "string"}, "offer": _SDP}},
              errors=_ERRORS)
    async def webrtc_offer(self, call: Call):
        sfu = self._sfu()
        peer_id = call.params["peer_id"]
        caller = await self._caller(call.request)
        sdp = await _result(sfu.pending_offer(peer_id, identity=caller))
        if sdp is None:
            call.request.setResponseCode(204)
            call.request.setHeader(b"cache-control", b"no-store")
            return b""
        return _json(call.request, {"peer_id": peer_id, "offer": {"type": "offer", "sdp": sdp}})

    @endpoint("POST", "/v1/webrtc/peer/<string:peer_id>/answer", summary="The browser's answer to the "
              "server's offer", tag=TAG, auth=PUBLIC, body={"answer": ANSWER}, data=_MESSAGE, errors=_ERRORS)
    async def webrtc_peer_answer(self, call: Call):
        sfu = self._sfu()
        peer_id = call.params["peer_id"]
        caller = await self._caller(call.request)
        await _result(sfu.answer_offer(peer_id, call.body["answer"]["sdp"], identity=caller))
        return _json(call.request, {"message": "answer applied", "peer_id": peer_id})

    @endpoint("POST", "/v1/webrtc/room/<string:room_id>/leave", summary="Close the caller's SFU connections in "
              "the room (without a token: those whose signaling session has left it)", tag=TAG, auth=PUBLIC,
              body={"user_id": USER_ID}, data=_MESSAGE, errors=_ERRORS)
    async def webrtc_leave(self, call: Call):
        sfu = self._sfu()
        caller = await self._caller(call.request)
        room_id, user_id = call.params["room_id"], call.body["user_id"]
        closed = await _result(sfu.leave(room_id, user_id, identity=caller))
        return _json(call.request, {"message": "left the room", "room_id": room_id, "user_id": str(user_id),
                                    "closed": closed})

    @endpoint("POST", "/v1/webrtc/room/<string:room_id>/join", summary="Check that the caller may use the "
              "room's SFU (the family's test suites call it before /answer)", tag=TAG, auth=PUBLIC,
              body={"user_id": USER_ID}, errors=_ERRORS)
    async def webrtc_join(self, call: Call):
        sfu = self._sfu()
        caller = await self._caller(call.request)
        room_id, user_id = call.params["room_id"], call.body["user_id"]
        if caller is not None and caller != user_id:
            raise Forbidden("the token is another user's")
        return _json(call.request, await _result(sfu.join_room(room_id, user_id)))

    @endpoint("GET", "/v1/webrtc/room/<string:room_id>/peers", summary="The room's SFU connections", tag=TAG,
              auth=PUBLIC, errors=_ERRORS)
    async def webrtc_peers(self, call: Call):
        sfu = self._sfu()
        await self._caller(call.request)
        room_id = call.params["room_id"]
        return _json(call.request, await _result(sfu.room_peers(room_id)))

    @endpoint("GET", "/v1/webrtc/room/<string:room_id>/stats", summary="The room's SFU connections and streams",
              tag=TAG, auth=PUBLIC, errors=_ERRORS)
    async def webrtc_stats(self, call: Call):
        sfu = self._sfu()
        await self._caller(call.request)
        room_id = call.params["room_id"]
        return _json(call.request, await _result(sfu.room_stats(room_id)))
