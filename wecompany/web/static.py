"""
Static files on the HTTP site: the built-in web console at ``/`` (or, with
``--web-root``, another web client's files there, and the console at
``/console/``), and Swagger UI at ``/api/docs/``.

:class:`StaticFiles` serves a directory (or several, searched in order) by
these rules:

* only files: no directory listings (a directory is its ``index.html``);
* no way out: a path segment that is ``.``, ``..``, hidden (``.git``,
  ``.env``), or has a slash, backslash or NUL in it once decoded is not
  found, and neither is a file whose real path (symbolic links resolved)
  is outside the directory;
* content types from a fixed table (the same on every system), and
  ``X-Content-Type-Options: nosniff`` so a browser never guesses;
* ``ETag`` / ``If-None-Match`` and ``Last-Modified`` / ``If-Modified-Since``
  (304), ``HEAD``, and the ``Cache-Control`` a :class:`Policy` says;
* ``Range`` (one range -> 206, one that names no byte -> 416, ``If-Range``)
  as for the API's downloads (:mod:`wecompany.web.download`), so a web
  client's own audio and video assets play in every browser (Safari asks
  for ranges and will not play a file served without them);
* the look-up and the reads happen in the disk thread pool, never on the
  reactor thread: a small file in one read, a larger one streamed a block
  at a time while the client keeps up (any size, one block of memory);
* for a single-page app (``spa_fallback``), a path that names no file and
  does not look like one (no ``.`` in its last segment) is answered with
  the root ``index.html``, so the app's client-side routes load;
* every answer carries the policy's ``Content-Security-Policy`` (at least
  ``frame-ancestors 'none'``), ``X-Frame-Options`` and ``Referrer-Policy``.

The site's own paths (``/api``, ``/ws``, ``/health``, ``/metrics``) are
children of its root and are found before anything here (:class:`FallbackRoot`).
"""

from __future__ import annotations

import math
import os

import attrs
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from wecompany.web.download import StorageStream, Unsatisfiable, etag_matches, parse_range

#: The console's files (package data).
CONSOLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "console")
#: The page and script that start Swagger UI on this daemon's OpenAPI document.
API_DOCS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apidocs")
OPENAPI_URL = "/api/v1/openapi.json"

#: By extension; anything else is application/octet-stream.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".json": "application/json", ".map": "application/json",
    ".webmanifest": "application/manifest+json", ".txt": "text/plain; charset=utf-8",
    ".xml": "application/xml", ".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp", ".avif": "image/avif",
    ".ico": "image/x-icon", ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf",
    ".otf": "font/otf", ".wasm": "application/wasm", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
    ".wav": "audio/wav", ".mp4": "video/mp4", ".webm": "video/webm", ".pdf": "application/pdf",
}

#: The console: its own scripts and styles only, no inline script, talking to this origin only.
CONSOLE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
#: Swagger UI: the same, but it sets inline styles (its React components do).
API_DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
#: Another web client's files (--web-root): what any page of this origin needs; the rest is the client's.
WEB_ROOT_CSP = "frame-ancestors 'none'"


@attrs.frozen
class Policy:
    """The headers of what a :class:`StaticFiles` serves."""

    csp: str
    #: For HTML (and the SPA fallback): always revalidate, so a new release is seen at once.
    html_cache: str = "no-cache"
    #: For everything else.
    asset_cache: str = "no-cache"


CONSOLE_POLICY = Policy(CONSOLE_CSP)
API_DOCS_POLICY = Policy(API_DOCS_CSP)
#: A built client's assets are usually named by their content; an hour bounds the staleness of any that are not.
WEB_ROOT_POLICY = Policy(WEB_ROOT_CSP, asset_cache="public, max-age=3600")

#: Bytes: a file up to this size is read whole, in one trip to the disk pool; a larger one is streamed.
WHOLE_FILE = 256 << 10
#: Bytes read at a time from a streamed file.
BLOCK_SIZE = 256 << 10


@attrs.frozen
class _Found:
    """A file to answer with, as the disk pool found it; ``content`` only when it is small."""

    path: str
    name: str
    size: int
    modified: int
    mtime_ns: int
    content: bytes | None

    @property
    def etag(self) -> str:
        # Size and modification time, as nginx does: it changes when a release replaces the file.
        return '"%x-%x"' % (self.size, self.mtime_ns)


class _LocalFiles:
    """The ``read`` a :class:`~wecompany.web.download.StorageStream` asks for, from local files in the disk pool."""

    def __init__(self, run) -> None:
        self.run = run

    def read(self, path: str, offset: int, length: int):
        return self.run(_read_block, path, offset, length)


def _read_block(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)

_NOT_FOUND = b"<!DOCTYPE html><title>Not found</title><h1>Not found</h1>"


def _safe_segment(segment: bytes) -> str | None:
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.startswith(".") or any(c in text for c in "/\\\x00"):
        return None
    return text


class StaticFiles(Resource):
    """
    The files of ``roots`` (directories searched in order) below the point
    where it is mounted (see the module docstring for the rules).

    :param mount: the absolute path it is mounted at, ending in ``/``
        (``b"/console/"``): a request for the mount point without its slash
        is redirected there, so relative links in its pages resolve.
    :param spa_fallback: answer the root ``index.html`` for paths that name no file.
    :param run: runs the file work (looking the path up, reading the file:
        blocking) -> Deferred; the daemon's disk thread pool. Default: in place.
    :param whole_file: files up to this size are read whole; larger ones streamed.
    :param block_size: bytes read at a time from a streamed file.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, roots, policy: Policy, *, mount: bytes = b"/", spa_fallback: bool = False, run=None,
                 whole_file: int = WHOLE_FILE, block_size: int = BLOCK_SIZE) -> None:
        super().__init__()
        self.roots = [os.path.realpath(root) for root in ([roots] if isinstance(roots, str) else roots)]
        self.policy = policy
        self.mount = mount
        self.spa_fallback = spa_fallback
        self.run = run or maybeDeferred
        self.whole_file = whole_file
        self.block_size = block_size
        self._files = _LocalFiles(self.run)

    def render_GET(self, request):
        self._security_headers(request)
        if not request.postpath:  # the mount point without its slash
            request.setResponseCode(301)
            request.setHeader(b"location", self.mount)
            request.setHeader(b"cache-control", b"no-cache")
            return b""
        segments = [_safe_segment(s) for s in request.postpath if s != b""]
        if None in segments:
            return self._not_found(request)
        gone: list = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = self.run(self._load, segments)
        d.addCallback(self._respond, request, gone)
        d.addErrback(self._failed, request, gone)
        return NOT_DONE_YET

    render_HEAD = render_GET

    def _load(self, segments: list[str]) -> _Found | None:
        """The file to answer with, or None (in the disk pool)."""
        found = self._find(segments)
        if found is None and self.spa_fallback and (not segments or "." not in segments[-1]):
            found = self._find([])
        if found is None:
            return None
        with open(found, "rb") as f:
            stat = os.fstat(f.fileno())
            content = f.read(self.whole_file + 1) if stat.st_size <= self.whole_file else None
        if content is not None and len(content) > self.whole_file:  # it grew since: streamed, as large ones are
            content = None
        size = stat.st_size if content is None else len(content)
        # Whole seconds, rounded up, as Twisted's setLastModified sends them (If-Range compares the text).
        modified = math.ceil(stat.st_mtime)
        return _Found(found, os.path.basename(found), size, modified, stat.st_mtime_ns, content)

    def _find(self, segments: list[str]) -> str | None:
        """The file the segments name (a directory: its index.html) in the first root that has it."""
        for root in self.roots:
            path = os.path.join(root, *segments)
            if os.path.isdir(path):
                path = os.path.join(path, "index.html")
            if not os.path.isfile(path):
                continue
            real = os.path.realpath(path)
            if not real.startswith(root + os.sep):
                continue  # a link out of the directory
            return real
        return None

    def _respond(self, found: _Found | None, request, gone) -> None:
        if gone:
            return
        if found is None:
            self._finish(request, self._not_found(request))
            return
        extension = os.path.splitext(found.name)[1].lower()
        request.setHeader(b"content-type", CONTENT_TYPES.get(extension, "application/octet-stream").encode())
        cache = self.policy.html_cache if extension in (".html", ".htm") else self.policy.asset_cache
        request.setHeader(b"cache-control", cache.encode())
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"etag", found.etag.encode("ascii"))
        none_match = request.getHeader(b"if-none-match")
        if none_match is not None:
            # When both are sent, If-None-Match decides and If-Modified-Since is ignored (RFC 9110 13.1.3).
            request.setHeader(b"last-modified", http.datetimeToString(found.modified))
            if etag_matches(none_match.decode("latin-1"), found.etag):
                request.setResponseCode(304)
                self._finish(request, b"")
                return
        elif request.setLastModified(found.modified) is http.CACHED:
            self._finish(request, b"")
            return
        wanted = request.getHeader(b"range")
        if_range = request.getHeader(b"if-range")
        if if_range is not None and if_range.decode("latin-1").strip() not in (
                found.etag, http.datetimeToString(found.modified).decode("ascii")):
            wanted = None  # the client holds another version: all of this one
        try:
            span = parse_range(wanted.decode("latin-1") if wanted is not None else None, found.size)
        except Unsatisfiable:
            request.setResponseCode(416)
            request.setHeader(b"content-range", b"bytes */%d" % found.size)
            request.setHeader(b"content-length", b"0")
            self._finish(request, b"")
            return
        start, length = (0, found.size) if span is None else (span[0], span[1] - span[0] + 1)
        if span is not None:
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (span[0], span[1], found.size))
        request.setHeader(b"content-length", b"%d" % length)
        if found.content is not None or request.method == b"HEAD" or length == 0:
            self._finish(request, (found.content or b"")[start:start + length])
            return
        StorageStream(request, self._files, found.path, start, length, self.block_size).begin()

    @staticmethod
    def _finish(request, body: bytes) -> None:
        if request.method != b"HEAD" and body:
            request.write(body)
        request.finish()

    def _failed(self, failure, request, gone) -> None:
        self.log.failure("serving a static file failed", failure)
        if not gone:
            request.setResponseCode(500)
            request.finish()

    def _security_headers(self, request) -> None:
        request.setHeader(b"content-security-policy", self.policy.csp.encode())
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"no-referrer")

    @staticmethod
    def _not_found(request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        return _NOT_FOUND


class FallbackRoot(Resource):
    """
    Its children first (at the site's root: ``api``, ``ws``, ``health``, ...;
    at ``/api``: ``docs``), and any other path is ``fallback``'s, which sees
    the whole rest of the path.
    """

    def __init__(self, fallback) -> None:
        super().__init__()
        self.fallback = fallback

    def getChild(self, path, request):
        # The segment just taken off the path is the fallback's too.
        request.postpath.insert(0, request.prepath.pop())
        return self.fallback


def console_files(run=None, mount: bytes = b"/") -> StaticFiles:
    """The built-in console, at ``mount``."""
    return StaticFiles(CONSOLE_DIR, CONSOLE_POLICY, mount=mount, run=run)


def web_root_files(directory: str, run=None) -> StaticFiles:
    """Another web client's files (``--web-root``), at ``/``: a single-page app."""
    return StaticFiles(directory, WEB_ROOT_POLICY, spa_fallback=True, run=run)


def swagger_ui_dir() -> str:
    """Swagger UI's files, from the ``swagger-ui-bundle`` package."""
    from swagger_ui_bundle import swagger_ui_path
    return str(swagger_ui_path)


def api_docs_files(run=None) -> StaticFiles:
    """``/api/docs/``: this daemon's page and script first, then Swagger UI's files."""
    return StaticFiles([API_DOCS_DIR, swagger_ui_dir()], API_DOCS_POLICY, mount=b"/api/docs/", run=run)
