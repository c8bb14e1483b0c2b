"""
Baseline for ``bench/rest_auth.py``: the smallest Klein app that answers
like the API.

One route, ``GET /api/v1/ping``, returning a small JSON envelope
(``{"code":200,"message":"success","data":{...},"timestamp":...,"request_id":...}``)
with the API's content type, from a Klein app served by a plain
``twisted.web.server.Site``. No accounts, tokens, storage, metrics, access
log or deadlines: it is what "a JSON route in Klein on Twisted" costs on this
machine at this moment. Run as its own process, like the daemon:

    python bench/rest_baseline.py PORT

It prints ``ready`` once listening on 127.0.0.1:PORT and exits on SIGTERM.
"""

import json
import sys
import time

from klein import Klein
from twisted.internet import reactor
from twisted.web.server import Site

app = Klein()
_count = 0


@app.route("/api/v1/ping", methods=["GET"])
def ping(request):
    global _count
    _count += 1
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return json.dumps({"code": 200, "message": "success", "data": {"status": "ok", "n": _count},
                       "timestamp": time.time(), "request_id": f"{_count:032x}"},
                      separators=(",", ":")).encode()


def main():
    port = int(sys.argv[1])
    site = Site(app.resource())
    # Bare: no access log (Twisted's default would send a line per request to the
    # legacy log, which nobody reads here).
    site.log = lambda request: None
    reactor.listenTCP(port, site, interface="127.0.0.1", backlog=1024)
    reactor.callWhenRunning(lambda: print("ready", flush=True))
    reactor.run()


if __name__ == "__main__":
    main()
