"""The load generator's worker side for bench/ingest.py: simulated devices pushing over asyncio.

Each worker process owns the devices whose index is congruent to its number modulo the worker count,
keeps one kept-alive HTTP/1.1 connection per device (as the agent does), and pushes each device's
body on a fixed 1 s grid with a per-device phase, the agent's way: a slot missed by a slow push is
skipped, not bursted. A push fails on a non-2xx answer, a lost connection or no answer within the
agent's timeout. Latency runs from writing the request to the last response byte;
lag is how late the generator itself started a push (its own overload, reported separately).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional

HEADER_END = b"\r\n\r\n"


@dataclass
class Device:
    path: str
    body: bytes  # the agent's text exposition for this device
    phase: float


@dataclass
class StepCommand:
    """What one worker does for one step; sent over a pipe, so plain data only."""

    host: str
    port: int
    devices: int  # devices 0..devices-1 exist in this step
    prepopulate_only: bool
    start: float  # time.monotonic() (system-wide on Linux) at which the load starts
    duration: float
    interval: float
    timeout: float


@dataclass
class StepResult:
    latencies: List[float] = field(default_factory=list)
    lags: List[float] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)
    pushes: int = 0


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
        status = self._complete_response()
        if status is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def _complete_response(self) -> Optional[int]:
        end = self.buffer.find(HEADER_END)
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if len(self.buffer) < end + 4 + length:
            return None
        del self.buffer[: end + 4 + length]
        return int(head[0].split()[1])

    async def exchange(self, request: bytes, timeout: float) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await asyncio.wait_for(self.waiter, timeout)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


def build_request(device: Device, cmd: StepCommand) -> bytes:
    lines = [
        f"PUT {device.path} HTTP/1.1",
        f"Host: {cmd.host}:{cmd.port}",
        "User-Agent: push_monitor.py/bench-ingest",
        "Content-Type: text/plain; version=0.0.4; charset=utf-8",
        f"Content-Length: {len(device.body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + device.body


class Worker:
    """One load-generating process: its share of the devices and their connections across steps."""

    def __init__(self, number: int, count: int, devices: List[Device]) -> None:
        self.number = number
        self.count = count
        self.devices = devices
        self.connections: Dict[int, HttpExchange] = {}
        self.populated: set = set()
        self.target: Optional[tuple] = None

    def mine(self, upto: int) -> List[int]:
        return list(range(self.number, upto, self.count))

    def reset_for(self, host: str, port: int) -> None:
        """A new gateway: every connection and every 'already pushed' mark belongs to the old one."""
        if self.target != (host, port):
            for connection in self.connections.values():
                connection.close()
            self.connections.clear()
            self.populated.clear()
            self.target = (host, port)

    async def connection(self, index: int, cmd: StepCommand) -> HttpExchange:
        current = self.connections.get(index)
        if current is not None and not current.closed:
            return current
        loop = asyncio.get_running_loop()
        connecting = loop.create_connection(HttpExchange, cmd.host, cmd.port)
        _, protocol = await asyncio.wait_for(connecting, cmd.timeout)
        self.connections[index] = protocol
        return protocol

    async def push(self, index: int, cmd: StepCommand, result: StepResult) -> bool:
        request = build_request(self.devices[index], cmd)
        started = time.perf_counter()
        protocol: Optional[HttpExchange] = None
        try:
            protocol = await self.connection(index, cmd)
            remaining = cmd.timeout - (time.perf_counter() - started)
            status = await protocol.exchange(request, max(remaining, 0.001))
        except asyncio.TimeoutError:
            result.failures["timeout"] += 1
            self._drop(index, protocol)
            return False
        except OSError as err:
            result.failures[f"connection: {type(err).__name__}"] += 1
            self._drop(index, protocol)
            return False
        result.pushes += 1
        if not 200 <= status < 300:
            result.failures[f"http-{status}"] += 1
            return False
        result.latencies.append(time.perf_counter() - started)
        return True

    def _drop(self, index: int, protocol: Optional[HttpExchange]) -> None:
        # The agent closes a connection after a timeout or error and opens a fresh one next time.
        if protocol is not None:
            protocol.close()
        self.connections.pop(index, None)

    async def prepopulate(self, cmd: StepCommand) -> StepResult:
        """Pushes every new device once so the step starts with N groups in the gateway."""
        result = StepResult()
        limit = asyncio.Semaphore(32)
        prepopulate_cmd = StepCommand(**{**cmd.__dict__, "timeout": max(cmd.timeout, 10.0)})

        async def one(index: int) -> None:
            async with limit:
                if await self.push(index, prepopulate_cmd, result):
                    self.populated.add(index)

        await asyncio.gather(*(one(i) for i in self.mine(cmd.devices) if i not in self.populated))
        return result

    async def load(self, cmd: StepCommand) -> StepResult:
        result = StepResult()
        end = cmd.start + cmd.duration
        await asyncio.gather(*(self.device_loop(i, cmd, end, result) for i in self.mine(cmd.devices)))
        return result

    async def device_loop(self, index: int, cmd: StepCommand, end: float, result: StepResult) -> None:
        slot = cmd.start + self.devices[index].phase * cmd.interval
        while slot < end:
            delay = slot - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            result.lags.append(max(0.0, time.monotonic() - slot))
            await self.push(index, cmd, result)
            # Next slot on this device's grid; slots missed by a slow push are skipped, not bursted.
            elapsed = time.monotonic() - slot
            slot += max(1, math.ceil(elapsed / cmd.interval)) * cmd.interval

    def run(self, loop: asyncio.AbstractEventLoop, cmd: StepCommand) -> StepResult:
        self.reset_for(cmd.host, cmd.port)
        if cmd.prepopulate_only:
            return loop.run_until_complete(self.prepopulate(cmd))
        return loop.run_until_complete(self.load(cmd))


def worker_main(number: int, count: int, devices: List[Device], pipe) -> None:  # noqa: ANN001 (a Connection)
    """Serves step commands from the pipe until it gets None; answers each with a StepResult."""
    random.seed(number)
    worker = Worker(number, count, devices)
    # One loop for the worker's life: kept-alive connections belong to it and outlive a step.
    loop = asyncio.new_event_loop()
    while True:
        cmd = pipe.recv()
        if cmd is None:
            break
        try:
            pipe.send(worker.run(loop, cmd))
        except Exception as err:  # report, do not hang the parent
            pipe.send(err)
    worker.reset_for("", 0)
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    pipe.close()
