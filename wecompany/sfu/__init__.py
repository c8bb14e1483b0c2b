"""
The SFU media engine: worker processes running aiortc that forward encoded
media between the WebRTC peers of a room (:mod:`wecompany.sfu.worker`,
:mod:`wecompany.sfu.forwarding`), and the daemon side that drives them
(:mod:`wecompany.sfu.engine`). The wire protocol between the two is one JSON
object per line over the worker's stdin and stdout.
"""
