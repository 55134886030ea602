#!/usr/bin/env python3
"""A webhook receiver for the default scenario: appends every POSTed notification body (one JSON
document per line) to the file given as its second argument. Stdlib only; run as a transient unit."""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with open(sys.argv[2], "a", encoding="utf-8") as out:
            out.write(json.dumps(body) + "\n")
        self.send_response(200)
        self.end_headers()


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
