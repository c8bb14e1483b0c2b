"""
The child process of :mod:`wecompany.media.isolated`: one processing job.

Reads ``{"process_type", "src", "dst", "params", "limits", "address_space",
"niceness"}`` as JSON on stdin, runs :func:`wecompany.media.process.run`
and writes JSON lines on stdout: ``{"progress": f}`` as it goes, then
``{"result": {...}}`` or ``{"error": {"code", "error_code", "message"}}``.
"""

from __future__ import annotations

import json
import os
import resource
import sys

import attrs


def main() -> int:
    request = json.load(sys.stdin)
    os.nice(int(request.get("niceness", 0)))
    limit = request.get("address_space")
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    out = sys.stdout

    def say(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    from wecompany.errors import WeCompanyError
    from wecompany.media.process import Limits, run

    try:
        result = run(request["process_type"], request["src"], request["dst"], request["params"],
                     progress=lambda fraction: say({"progress": fraction}), limits=Limits(**request["limits"]))
    except WeCompanyError as error:
        say({"error": {"code": error.code, "error_code": error.error_code, "message": error.message}})
        return 0
    except MemoryError:
        say({"error": {"code": 422, "error_code": 4002, "message": "processing needed more memory than allowed"}})
        return 0
    say({"result": attrs.asdict(result)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
