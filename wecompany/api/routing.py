"""
Declaring REST endpoints.

Every handler is declared with :func:`endpoint`: method, path, who may call
it, the body and query fields, the success status and the shape of ``data``.
:func:`install` registers the declarations with a class's Klein app, wrapping
each handler so that, before the handler runs, the caller is authenticated
(unless the endpoint is public) and the body and query are validated, and so
that the handler's return value is wrapped in the JSON envelope. The same
declarations produce the OpenAPI document (:mod:`wecompany.api.openapi`).
"""

from __future__ import annotations

import re

import attrs
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound as RouteNotFound

from wecompany.api import envelope
from wecompany.api.validation import parse_json, parse_query
from wecompany.domain.ids import MAX_ID
from wecompany.errors import InternalError, InvalidInput, NotFound, WeCompanyError

PUBLIC, USER, ADMIN = "public", "user", "admin"

log = Logger()


@attrs.frozen
class Endpoint:
    method: str
    path: str  # werkzeug rule relative to /api, e.g. "/v1/meetings/<int:meeting_id>"
    summary: str
    tag: str
    auth: str
    body: dict | None
    query: dict | None
    status: int
    data: dict | None  # JSON schema of the envelope's data
    errors: tuple[int, ...]
    name: str = ""
    aliases: tuple[str, ...] = ()
    raw_body: str | None = None  # content type of a non-JSON body (multipart uploads)
    rate_limited: bool = False  # per client address, before anything else is looked at
    produces: str | None = None  # content type of a success that is not the JSON envelope (a stream)

    @property
    def label(self) -> str:
        """The route as a metrics label and OpenAPI path: /api/v1/meetings/{meeting_id}."""
        return "/api" + re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", self.path)


@attrs.define
class Call:
    """What a handler receives: the request, the caller, the validated input."""

    request: object
    user: object | None
    body: dict
    query: dict
    params: dict


def endpoint(method: str, path: str, *, summary: str, tag: str, auth: str = USER,
             body: dict | None = None, query: dict | None = None, status: int = 200,
             data: dict | None = None, errors: tuple[int, ...] = (), aliases: tuple[str, ...] = (),
             raw_body: str | None = None, rate_limited: bool = False, produces: str | None = None):
    """Declare a handler ``async def f(self, call: Call) -> data``."""

    def decorate(f):
        f.__wecompany_endpoint__ = Endpoint(method, path, summary, tag, auth, body, query, status, data,
                                            tuple(errors) + ((429,) if rate_limited else ()), f.__name__,
                                            tuple(aliases), raw_body, rate_limited, produces)
        return f

    return decorate


def endpoints_of(cls) -> list[Endpoint]:
    found = []
    for klass in reversed(cls.__mro__):
        for value in vars(klass).values():
            ep = getattr(value, "__wecompany_endpoint__", None)
            if ep is not None:
                found.append(ep)
    return found


def install(cls):
    """
    Class decorator: register every declared endpoint of ``cls`` with
    ``cls.app`` (a Klein instance) and the envelope error handler.

    The class must provide ``clock`` (``seconds()``) and
    ``async authenticate(request) -> user`` (raising Unauthenticated), and may
    provide ``observe(request, endpoint)`` for metrics.
    """
    for ep in endpoints_of(cls):
        handler = getattr(cls, ep.name)
        for path in (ep.path, *ep.aliases):
            cls.app.route(path, methods=[ep.method], strict_slashes=False,
                          endpoint=f"{ep.name}:{path}")(_wrap(handler, ep))

    @cls.app.handle_errors(Exception)
    def _errors(self, request, failure):
        return self.error_response(request, failure)

    cls._handle_errors = _errors
    return cls


def _wrap(handler, ep: Endpoint):
    async def wrapper(self, request, **params):
        request.wecompany_endpoint = ep
        envelope.request_id_for(request)
        for value in params.values():
            if isinstance(value, int) and not 0 < value <= MAX_ID:
                raise NotFound("no such resource")
        if ep.rate_limited:
            await self.address_limiter.hit(self.client_address(request))
        user = None
        if ep.auth != PUBLIC:
            user = await self.authenticate(request, admin=ep.auth == ADMIN)
        body = {}
        if ep.body is not None and not (ep.raw_body and getattr(request, "form", None) is not None):
            body = parse_json(read_body(request), ep.body)  # (a raw_body alternative is the handler's to read)
        query = parse_query(request.args, ep.query) if ep.query else {}
        result = await handler(self, Call(request, user, body, query, params))
        if isinstance(result, bytes) and not isinstance(result, envelope.Encoded):
            return result  # already rendered (avatars, Prometheus text)
        if IResource.providedBy(result):
            return result  # renders itself (a streamed download)
        return envelope.success(request, result, self.clock.seconds(), ep.status)

    wrapper.__name__ = ep.name
    return wrapper


def read_body(request) -> bytes:
    """The whole request body (stored by the Site before rendering)."""
    if getattr(request, "form", None) is not None:
        raise InvalidInput("this endpoint takes a JSON body, not multipart/form-data")
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    return content.read()


class ErrorMapping:
    """Mixin: turns any failure into the envelope (the one mapping of errors to HTTP)."""

    _log = Logger()

    def error_response(self, request, failure):
        if failure.check(CancelledError):
            return None  # the client went away; nothing to answer
        error = failure.value
        if isinstance(error, WeCompanyError):
            pass
        elif isinstance(error, MethodNotAllowed):
            error = WeCompanyError("method not allowed", code=405)
            allowed = failure.value.valid_methods or ()
            request.setHeader(b"allow", ", ".join(allowed).encode())
        elif isinstance(error, RouteNotFound):
            error = NotFound("no such endpoint")
        elif isinstance(error, HTTPException):
            error = WeCompanyError(error.description or error.name, code=error.code or 400)
        else:
            self._log.failure("unhandled error in {method} {path}", failure,
                              method=request.method, path=request.path)
            error = InternalError()
        return envelope.failure(request, error, self.clock.seconds())
