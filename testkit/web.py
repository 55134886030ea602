"""HTTP GET against a server daemon with an optional basic auth login and CA, the controller's one
copy. (The agent, the janitor and testkit/dashboard_queries.py run elsewhere as single files and
build their own.)"""

from __future__ import annotations

import base64
import ssl
import urllib.request
from http.client import HTTPResponse
from typing import Dict, Optional, Tuple


def basic_auth_header(username: str, password: str) -> Dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Endpoint:
    """A base URL with its login and the CA that signed its certificate (both optional)."""

    def __init__(
        self, url: str, username: Optional[str] = None, password: Optional[str] = None, ca_file: Optional[str] = None
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = basic_auth_header(username, password or "") if username else {}
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def open(self, path: str, timeout: float = 5.0) -> HTTPResponse:
        request = urllib.request.Request(self.url + path, headers=self.headers)
        return urllib.request.urlopen(request, timeout=timeout, context=self.context)

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        with self.open(path, timeout) as response:
            return response.read()

    def counter(self, metric: str, *label_parts: str, timeout: float = 5.0) -> float:
        """The sum of metric's samples in the server's own /metrics whose label text holds every one of
        label_parts (`handler="/api/v1/write"`, or a prefix such as `code="2`)."""
        total = 0.0
        for line in self.get("/metrics", timeout).decode().splitlines():
            if line.split("{", 1)[0].split(" ", 1)[0] == metric and all(part in line for part in label_parts):
                total += float(line.rsplit(" ", 1)[1])
        return total


def http_get(
    url: str, timeout: float = 2.0, auth: Optional[Tuple[str, str]] = None, ca_file: Optional[str] = None
) -> bytes:
    username, password = auth or (None, None)
    return Endpoint(url, username, password, ca_file).get("", timeout)
