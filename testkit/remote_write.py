"""Remote write seen from the receiving end: the WriteRequest decoded by the real protobuf package
(the agent encodes it by hand), a loopback receiver that records requests and answers as told, and
a real VictoriaMetrics (Debian's binary) on a free loopback port."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import urllib.parse
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import snappy
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from testkit.process import free_port, start_daemon, stop_process
from testkit.web import http_get

VICTORIA_METRICS_BIN = "/usr/bin/victoria-metrics"


def _write_request_class() -> type:
    """prometheus.WriteRequest of remote write 1.0 (prompb/remote.proto, types.proto), built at run time."""
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="remote_write_test.proto", package="prometheus", syntax="proto3")
    messages = {
        "Label": [("name", 1, field.TYPE_STRING, ""), ("value", 2, field.TYPE_STRING, "")],
        "Sample": [("value", 1, field.TYPE_DOUBLE, ""), ("timestamp", 2, field.TYPE_INT64, "")],
        "TimeSeries": [("labels", 1, field.TYPE_MESSAGE, "Label"), ("samples", 2, field.TYPE_MESSAGE, "Sample")],
        "WriteRequest": [("timeseries", 1, field.TYPE_MESSAGE, "TimeSeries")],
    }
    for name, fields in messages.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            entry = message.field.add(name=field_name, number=number, type=kind)
            entry.label = field.LABEL_REPEATED if type_name else field.LABEL_OPTIONAL
            if type_name:
                entry.type_name = f".prometheus.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))


WriteRequest = _write_request_class()


class Series(NamedTuple):
    labels: Tuple[Tuple[str, str], ...]  # in the order sent
    samples: Tuple[Tuple[int, float], ...]  # (timestamp ms, value)

    @property
    def name(self) -> str:
        return dict(self.labels)["__name__"]


def decode(body: bytes, compressed: bool = True) -> List[Series]:
    request = WriteRequest()
    request.ParseFromString(snappy.uncompress(body) if compressed else body)
    return [
        Series(
            tuple((label.name, label.value) for label in series.labels),
            tuple((sample.timestamp, sample.value) for sample in series.samples),
        )
        for series in request.timeseries
    ]


class Received(NamedTuple):
    headers: Dict[str, str]
    body: bytes


class Receiver:
    """A loopback HTTP server that records every POST and answers with self.status."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.requests: List[Received] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                answer = b"" if receiver.status == 204 else f"answer {receiver.status}\n".encode()
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/write"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def series(self) -> Iterator[Series]:
        for request in list(self.requests):
            yield from decode(request.body)


class VictoriaMetrics:
    """A real single-node VictoriaMetrics with its data in workdir, on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "victoria-metrics.log"
        self.args = [
            VICTORIA_METRICS_BIN,
            f"-storageDataPath={workdir / 'victoria-metrics-data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=1",
        ]
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.process = start_daemon(self.args, self.log, lambda: http_get(self.url + "/health", 0.5).strip() == b"OK")

    def stop(self) -> None:
        stop_process(self.process, 15)
        self.process = None

    def export(self, selector: str) -> List[Dict]:
        """Raw samples of the matching series (/api/v1/export: one JSON object per line)."""
        query = urllib.parse.urlencode({"match[]": selector})
        lines = http_get(f"{self.url}/api/v1/export?{query}", 10).decode().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
