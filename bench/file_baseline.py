"""
Baseline for ``bench/media_transfer.py``: a bare Twisted static file server.

``GET /files/<name>`` is ``twisted.web.static.File`` over a directory (it
reads 64 KiB at a time on the reactor thread and writes with a producer);
``POST /upload`` streams the raw body to a file in that directory as it
arrives, writing each chunk on the reactor thread, and answers 201. No
accounts, multipart parsing, hashing, thread pool, sniffing, probing,
storage or database: what "files over Twisted" costs on this machine at this
moment. Run as its own process, like the daemon:

    python bench/file_baseline.py PORT DIRECTORY

It prints ``ready`` once listening on 127.0.0.1:PORT and exits on SIGTERM.
"""

import os
import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.static import File


class StreamingRequest(Request):
    """Writes a POST body to ``<directory>/upload-<n>`` chunk by chunk instead of buffering it."""

    count = 0

    def gotLength(self, length):
        StreamingRequest.count += 1
        self.target = os.path.join(self.channel.site.directory, f"upload-{StreamingRequest.count}")
        self.content = open(self.target, "wb")

    def handleContentChunk(self, data):
        self.content.write(data)

    def requestReceived(self, command, path, version):
        self.uploaded = self.content.tell()
        self.content.close()
        self.content = open(os.devnull, "rb")
        super().requestReceived(command, path, version)


class Upload(Resource):
    isLeaf = True

    def render_POST(self, request):
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"application/json")
        return b'{"size":%d}' % request.uploaded


def main():
    port, directory = int(sys.argv[1]), sys.argv[2]
    root = Resource()
    root.putChild(b"files", File(directory))
    root.putChild(b"upload", Upload())
    site = Site(root, requestFactory=StreamingRequest)
    site.directory = directory
    site.log = lambda request: None  # no access log: the cheapest server
    reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.callWhenRunning(lambda: (sys.stdout.write("ready\n"), sys.stdout.flush()))
    reactor.run()


if __name__ == "__main__":
    main()
