"""The load generator's worker side for bench/ingest.py: simulated devices sending over asyncio.

Each worker process owns the devices whose index is congruent to its number modulo the worker count
and keeps one kept-alive HTTP/1.1 connection per device, as the agent does. A device sends on a fixed
grid (its period: 1 s to a gateway, the send interval for remote write) with its own phase; a slot
missed by a slow request is skipped, not bursted. A request fails on a non-2xx answer, a lost
connection or no answer within the timeout. Latency runs from writing the request to the last response
byte.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import snappy

from push_monitor import varint  # bench/ingest.py puts files/ on the path


def timestamp_placeholder(cycle: int) -> int:
    """The ms timestamp standing for cycle `cycle` of a batch: a 6-byte varint, as current ms
    timestamps are, whose bytes hardly occur in a request otherwise."""
    return (1 << 41) + 0x3F_FFFF_FF00 + cycle


PLACEHOLDERS = [varint(timestamp_placeholder(cycle)) for cycle in range(64)]


@dataclass
class Device:
    path: str  # the device's group at the Pushgateway
    body: bytes  # the agent's text exposition of one cycle
    phase: float  # share of its period after the step's start at which it sends
    # The cycles of one send as the agent encodes them (one TimeSeries per series), cycle i stamped
    # timestamp_placeholder(i): every send gets the current times and is compressed anew.
    write_request: bytes = b""
    samples: int = 0  # in write_request


@dataclass
class StepCommand:
    """What one worker does for one step; sent over a pipe, so plain data only."""

    host: str
    port: int
    devices: int  # devices 0..devices-1 exist in this step
    prepopulate_only: bool
    start: float  # time.monotonic() (system-wide on Linux) at which the load starts
    duration: float
    period: float  # seconds between a device's requests
    timeout: float
    remote_write: bool = False
    cycles: int = 1  # remote write: 1 s cycles per request


@dataclass
class StepResult:
    latencies: List[float] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)


def build_request(device: Device, cmd: StepCommand) -> bytes:
    if cmd.remote_write:
        # The cycles of the last cmd.cycles seconds, the newest now.
        now_ms = int(time.time() * 1000)
        body = device.write_request
        for cycle in range(cmd.cycles):
            body = body.replace(PLACEHOLDERS[cycle], varint(now_ms - 1000 * (cmd.cycles - 1 - cycle)))
        body = snappy.compress(body)
        head = (
            f"POST /api/v1/write HTTP/1.1\r\nHost: {cmd.host}:{cmd.port}\r\nUser-Agent: push_monitor/bench-ingest\r\n"
            "Content-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\n"
            f"X-Prometheus-Remote-Write-Version: 0.1.0\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("ascii") + body
    head = (
        f"PUT {device.path} HTTP/1.1\r\nHost: {cmd.host}:{cmd.port}\r\nUser-Agent: push_monitor/bench-ingest\r\n"
        f"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {len(device.body)}\r\n\r\n"
    )
    return head.encode("ascii") + device.body


class HttpExchange(asyncio.Protocol):
    """One HTTP/1.1 client connection: a request at a time, the response framed by Content-Length."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray()
        self.waiter: Optional[asyncio.Future] = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        lengths = [line.split(":", 1)[1] for line in head[1:] if line.lower().startswith("content-length:")]
        length = int(lengths[0]) if lengths else 0
        if len(self.buffer) >= end + 4 + length:
            del self.buffer[: end + 4 + length]
            self.waiter.set_result(int(head[0].split()[1]))

    async def exchange(self, request: bytes, timeout: float) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await asyncio.wait_for(self.waiter, timeout)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


class Worker:
    """One load-generating process: its share of the devices and their connections across steps."""

    def __init__(self, number: int, count: int, devices: List[Device]) -> None:
        self.number = number
        self.count = count
        self.devices = devices
        self.connections: Dict[int, HttpExchange] = {}
        self.populated: set = set()
        self.target: Optional[tuple] = None

    def reset_for(self, host: str, port: int) -> None:
        """A new server: every connection and every 'already sent' mark belongs to the old one."""
        if self.target != (host, port):
            for connection in self.connections.values():
                connection.close()
            self.connections.clear()
            self.populated.clear()
            self.target = (host, port)

    async def push(self, index: int, cmd: StepCommand, result: StepResult) -> bool:
        request = build_request(self.devices[index], cmd)
        started = time.perf_counter()
        protocol = self.connections.get(index)
        try:
            if protocol is None or protocol.closed:
                connecting = asyncio.get_running_loop().create_connection(HttpExchange, cmd.host, cmd.port)
                _, protocol = await asyncio.wait_for(connecting, cmd.timeout)
                self.connections[index] = protocol
            status = await protocol.exchange(request, max(cmd.timeout - (time.perf_counter() - started), 0.001))
        except (asyncio.TimeoutError, OSError) as err:
            # The agent closes a connection after a timeout or error and opens a fresh one next time.
            result.failures["timeout" if isinstance(err, asyncio.TimeoutError) else type(err).__name__] += 1
            if protocol is not None:
                protocol.close()
            self.connections.pop(index, None)
            return False
        if not 200 <= status < 300:
            result.failures[f"http-{status}"] += 1
            return False
        result.latencies.append(time.perf_counter() - started)
        return True

    async def prepopulate(self, cmd: StepCommand) -> StepResult:
        """Sends for every new device once, so the step starts with N groups (or N devices' series)."""
        result = StepResult()
        limit = asyncio.Semaphore(32)
        patient = StepCommand(**{**cmd.__dict__, "timeout": max(cmd.timeout, 10.0)})

        async def one(index: int) -> None:
            async with limit:
                if await self.push(index, patient, result):
                    self.populated.add(index)

        mine = range(self.number, cmd.devices, self.count)
        await asyncio.gather(*(one(i) for i in mine if i not in self.populated))
        return result

    async def load(self, cmd: StepCommand) -> StepResult:
        result = StepResult()
        end = cmd.start + cmd.duration
        mine = range(self.number, cmd.devices, self.count)
        await asyncio.gather(*(self.device_loop(i, cmd, end, result) for i in mine))
        return result

    async def device_loop(self, index: int, cmd: StepCommand, end: float, result: StepResult) -> None:
        slot = cmd.start + self.devices[index].phase * cmd.period
        while slot < end:
            delay = slot - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.push(index, cmd, result)
            slot += max(1, math.ceil((time.monotonic() - slot) / cmd.period)) * cmd.period


def worker_main(number: int, count: int, devices: List[Device], pipe) -> None:  # noqa: ANN001 (a Connection)
    """Serves step commands from the pipe until it gets None; answers each with a StepResult."""
    worker = Worker(number, count, devices)
    # One loop for the worker's life: kept-alive connections belong to it and outlive a step.
    loop = asyncio.new_event_loop()
    while True:
        cmd = pipe.recv()
        if cmd is None:
            break
        try:
            worker.reset_for(cmd.host, cmd.port)
            pipe.send(loop.run_until_complete(worker.prepopulate(cmd) if cmd.prepopulate_only else worker.load(cmd)))
        except Exception as err:  # report, do not hang the parent
            pipe.send(err)
    worker.reset_for("", 0)
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    pipe.close()
