"""Alternative encodings of the agent's push body for bench/ingest.py's variants.

text      the exposition exactly as files/push_monitor.py prints it
nohelp    the same without its # HELP lines (the gateway stores every group's help strings and
          reconciles them on each scrape)
protobuf  the same families as length-delimited io.prometheus.client.MetricFamily messages, the
          Pushgateway's other accepted body format (hand-encoded: the standard library has no protobuf)
"""

from __future__ import annotations

import re
import struct
from typing import Dict, List, Tuple

PROTOBUF_CONTENT_TYPE = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BODY_FORMATS = ("text", "nohelp", "protobuf")
# io.prometheus.client.MetricType
METRIC_TYPES = {"counter": 0, "gauge": 1, "summary": 2, "untyped": 3, "histogram": 4}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def content_type(body_format: str) -> str:
    return PROTOBUF_CONTENT_TYPE if body_format == "protobuf" else TEXT_CONTENT_TYPE


def encode(exposition: str, body_format: str) -> bytes:
    if body_format == "text":
        return exposition.encode()
    if body_format == "nohelp":
        return "".join(line for line in exposition.splitlines(keepends=True) if not line.startswith("# HELP ")).encode()
    if body_format == "protobuf":
        return b"".join(delimited(family_message(*family)) for family in parse_families(exposition))
    raise ValueError(f"unknown body format {body_format!r}")


Family = Tuple[str, str, str, List[Tuple[List[Tuple[str, str]], float]]]


def parse_families(exposition: str) -> List[Family]:
    """(name, help, type, [(labels, value)]) per family of a text exposition as the agent writes it
    (counters carry their _total suffix in the samples, as prometheus_client writes them)."""
    helps: Dict[str, str] = {}
    types: Dict[str, str] = {}
    order: List[str] = []
    samples: Dict[str, List[Tuple[List[Tuple[str, str]], float]]] = {}
    for line in exposition.splitlines():
        if line.startswith("# HELP "):
            name, _, text = line[7:].partition(" ")
            helps[name] = text.replace("\\n", "\n").replace("\\\\", "\\")
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            types[name] = kind
            order.append(name)
            samples[name] = []
        elif line and not line.startswith("#"):
            match = SAMPLE.match(line)
            if match is None or not order:
                raise ValueError(f"cannot parse exposition line {line!r}")
            labels = [(k, unescape(v)) for k, v in LABEL.findall(match.group(2) or "")]
            samples[order[-1]].append((labels, float(match.group(3))))
    return [(name, helps.get(name, ""), types[name], samples[name]) for name in order]


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_double(number: int, value: float) -> bytes:
    return varint(number << 3 | 1) + struct.pack("<d", value)


def family_message(name: str, help_text: str, kind: str, samples: List[Tuple[List[Tuple[str, str]], float]]) -> bytes:
    metric_type = METRIC_TYPES.get(kind, METRIC_TYPES["untyped"])
    message = field_bytes(1, name.encode()) + field_bytes(2, help_text.encode()) + field_varint(3, metric_type)
    for labels, value in samples:
        metric = b"".join(field_bytes(1, field_bytes(1, k.encode()) + field_bytes(2, v.encode())) for k, v in labels)
        # Metric: gauge = 2, counter = 3, untyped = 5; each holds its value in field 1.
        value_field = {METRIC_TYPES["gauge"]: 2, METRIC_TYPES["counter"]: 3}.get(metric_type, 5)
        metric += field_bytes(value_field, field_double(1, value))
        message += field_bytes(4, metric)
    return message


def delimited(message: bytes) -> bytes:
    return varint(len(message)) + message
