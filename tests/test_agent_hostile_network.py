"""The agent's transport against servers that misbehave (scripted on loopback) and a real Pushgateway's
error answers: every request ends within the timeout, the next one starts clean, and an outage costs
the gateway no more than one attempt per slot."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from typing import Callable, Iterator, List

import pytest

import push_monitor as pm
from conftest import FakeClock, Pushgateway, agent_command, agent_env, wait_until
from testkit.process import proc_status

pytestmark = pytest.mark.integration

Behaviour = Callable[["ScriptedServer", socket.socket], None]


class ScriptedServer:
    """A TCP server on loopback whose every connection is handled by one behaviour function."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self.finished = 0  # connections the server has closed
        self.requests: List[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            self.behaviour(self, conn)
        except OSError:
            pass
        finally:
            conn.close()
            self.finished += 1

    def read_request(self, conn: socket.socket) -> bool:
        """Reads one request (head and Content-Length body); False when the client closed."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += conn.recv(65536)
        self.requests.append(head.split(b" ")[0].decode())
        return True

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def answer(status: str, body: bytes = b"", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def keep_answering(response: bytes) -> Behaviour:
    def behaviour(server: ScriptedServer, conn: socket.socket) -> None:
        while server.read_request(conn):
            conn.sendall(response)

    return behaviour


def answer_once_then_close(server: ScriptedServer, conn: socket.socket) -> None:
    """Answers one request and closes without saying so (an idle timeout, a restarted gateway)."""
    if server.read_request(conn):
        conn.sendall(answer("200 OK"))


def chunked(server: ScriptedServer, conn: socket.socket) -> None:
    while server.read_request(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n400\r\n" + b"x" * 1024)
        conn.sendall(b"\r\n0\r\nX-Trailer: 1\r\n\r\n")


def unframed_body(server: ScriptedServer, conn: socket.socket) -> None:
    """A body without a length on a connection the server keeps open: reading it would never end."""
    while server.read_request(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + b"y" * 3000)


def extra_bytes(server: ScriptedServer, conn: socket.socket) -> None:
    while server.read_request(conn):
        conn.sendall(answer("200 OK") + b"HTTP/1.1 500 Stale\r\nContent-Length: 0\r\n\r\n")


def interim_then_ok(server: ScriptedServer, conn: socket.socket) -> None:
    while server.read_request(conn):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + answer("202 Accepted", b"{}"))


def reset(server: ScriptedServer, conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST


def garbage(server: ScriptedServer, conn: socket.socket) -> None:
    while server.read_request(conn):
        conn.sendall(b"<html><body>Welcome to the hotel network</body></html>\r\n\r\n")


def trickle(server: ScriptedServer, conn: socket.socket) -> None:
    """Answers PUT at once and anything else one byte every 0.1 s, for up to a minute."""
    while server.read_request(conn):
        if server.requests[-1] == "PUT":
            conn.sendall(answer("200 OK"))
            continue
        for byte in answer("202 Accepted", b"x" * 600):
            if server.closed.is_set():
                return
            conn.sendall(bytes([byte]))
            time.sleep(0.1)


def trickle_everything(server: ScriptedServer, conn: socket.socket) -> None:
    server.requests.append("PUT")
    server.read_request(conn)
    for byte in answer("200 OK", b"x" * 600):
        if server.closed.is_set():
            return
        conn.sendall(bytes([byte]))
        time.sleep(0.1)


@pytest.fixture
def scripted() -> Iterator[Callable[[Behaviour], ScriptedServer]]:
    servers: List[ScriptedServer] = []

    def start(behaviour: Behaviour) -> ScriptedServer:
        servers.append(ScriptedServer(behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def client(url: str, timeout: float = 2.0) -> pm.PushgatewayClient:
    return pm.PushgatewayClient(pm.Config(pushgateway_url=url, timeout=timeout), "serial")


# ---------------------------------------------------------------------------- every answer ends cleanly


@pytest.mark.parametrize(
    ("behaviour", "connections"),
    [
        (keep_answering(answer("200 OK", b"z" * 1024)), 1),
        (keep_answering(answer("202 Accepted", b"z" * 70_000)), 5),  # longer than the agent reads: dropped
        (keep_answering(answer("200 OK", b"", "Connection: close\r\n")), 5),
        (chunked, 1),
        (interim_then_ok, 1),
        (unframed_body, 5),
        (extra_bytes, 5),
        (answer_once_then_close, 5),
    ],
    ids=["1KB-body", "long-body", "connection-close", "chunked", "100-continue", "unframed", "extra", "idle-close"],
)
def test_whatever_the_answer_the_next_push_starts_clean(scripted, behaviour, connections) -> None:
    server = scripted(behaviour)
    pusher = client(server.url)
    for _ in range(5):
        pusher.push(b"up 1\n")  # raises PushError on any failure
        if behaviour is answer_once_then_close:  # as between two slots: the close has arrived
            wait_until(lambda: server.finished == server.connections, 5, message="server-side close")
    pusher.close()
    assert server.requests == ["PUT"] * 5
    assert server.connections == connections


def test_a_real_gateways_long_400_answer_fails_each_push_alike(pushgateway: Pushgateway) -> None:
    """A metric of another type under the same name: the gateway refuses every push with a long body."""
    conflict = urllib.request.Request(
        pushgateway.url + "/metrics/job/other",
        data=b"# TYPE system_processes counter\nsystem_processes 1\n",
        method="PUT",
    )
    urllib.request.urlopen(conflict, timeout=5).close()
    agent = pm.Agent(pm.Config(pushgateway_url=pushgateway.url, job="j", timeout=2), "dev", hostname="h")
    body = agent.collect()
    kinds = []
    for _ in range(5):
        with pytest.raises(pm.PushError) as raised:
            agent.client.push(body)
        kinds.append(raised.value.kind)
        assert "system_processes" in str(raised.value)
    assert kinds == ["http-400"] * 5
    urllib.request.urlopen(urllib.request.Request(pushgateway.url + "/metrics/job/other", method="DELETE")).close()
    wait_until(lambda: not any(g["labels"]["job"] == "other" for g in pushgateway.groups()), 5, message="deleted")
    agent.client.push(body)
    agent.client.close()
    assert pushgateway.group("j", "dev") is not None


@pytest.mark.parametrize("behaviour", [garbage, reset])
def test_a_broken_answer_is_one_failure_and_the_connection_is_dropped(scripted, behaviour) -> None:
    server = scripted(behaviour)
    pusher = client(server.url)
    with pytest.raises(pm.PushError) as raised:
        pusher.push(b"up 1\n")
    assert raised.value.kind in ("protocol", "connection")
    assert pusher._socket is None
    assert server.connections == 1


def test_a_trickling_server_cannot_hold_a_push_beyond_the_timeout(scripted) -> None:
    server = scripted(trickle_everything)
    pusher = client(server.url, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(pm.PushError) as raised:
        pusher.push(b"up 1\n")
    # The answer would take 60 s at this pace; the bound is the timeout plus scheduling slack.
    assert time.monotonic() - started < 3, "the timeout must bound the whole request"
    assert raised.value.kind == "timeout"
    assert pusher._socket is None


# ---------------------------------------------------------------------------- one attempt per slot


@pytest.mark.parametrize(
    "behaviour",
    [
        reset,
        garbage,
        keep_answering(answer("500 Oops", b"e" * 700)),
        keep_answering(answer("302 Found", b"", "Location: /x\r\n")),
    ],
    ids=["reset", "garbage", "500", "redirect"],
)
def test_an_outage_costs_one_attempt_per_slot_reconnects_included(scripted, behaviour) -> None:
    server = scripted(behaviour)
    clock = FakeClock()
    interval, cycles = 2.0, 6
    config = pm.Config(pushgateway_url=server.url, interval=interval, timeout=1.0, top_n=1)
    agent = pm.Agent(config, "outage", hostname="h", clock=clock, sleep=clock.sleep)
    started = clock.now
    agent.run(max_cycles=cycles)
    agent.client.close()
    assert server.connections <= cycles
    assert len(server.requests) <= cycles
    # Slots are start + k x interval: the last of `cycles` attempts is never sooner than slot cycles - 1.
    assert clock.now - started >= (cycles - 1) * interval
    assert agent.exposition.push_failures == cycles


# ---------------------------------------------------------------------------- signals


def caught_signals(pid: int) -> int:
    return int(proc_status(pid, "SigCgt"), 16)


@contextlib.contextmanager
def running_agent(url: str, *args: str) -> Iterator[subprocess.Popen]:
    """The agent as a subprocess with its stderr piped; killed at the end if it has not exited."""
    command = agent_command("--pushgateway", url, "--device-serial", "sig", "--top-n", "1", *args)
    process = subprocess.Popen(command, env=agent_env(), stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT)],
    ids=["term-term", "int-int", "term-int"],
)
@pytest.mark.parametrize("when", ["at-start", "while-running"])
def test_repeated_signals_are_one_clean_exit(scripted, signals, when) -> None:
    server = scripted(keep_answering(answer("200 OK")))
    with running_agent(server.url, "--interval", "0.5", "--delete-on-exit") as process:
        term_bit = 1 << (signal.SIGTERM - 1)
        wait_until(lambda: caught_signals(process.pid) & term_bit, 15, interval=0.001, message="handlers")
        if when == "while-running":
            wait_until(lambda: "PUT" in server.requests, 15, message="first push")
        for signum in signals:
            process.send_signal(signum)
        code = process.wait(15)
        stderr = process.stderr.read()
    assert code == 0, stderr
    assert "Traceback" not in stderr


def test_delete_on_exit_is_bounded_by_the_timeout_and_survives_a_second_signal(scripted) -> None:
    server = scripted(trickle)
    with running_agent(server.url, "--interval", "2", "--timeout", "0.8", "--delete-on-exit") as process:
        wait_until(lambda: "PUT" in server.requests, 15, message="first push")
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: "DELETE" in server.requests, 15, message="the DELETE")
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGINT)
        code = process.wait(15)  # the trickled answer would take a minute
        stderr = process.stderr.read()
    assert code == 0, stderr
    assert "could not delete the group" in stderr and "no complete answer within 0.8 s" in stderr
    assert "Traceback" not in stderr


def test_sighup_is_logged_and_ignored(scripted) -> None:
    server = scripted(keep_answering(answer("200 OK")))
    lines: List[str] = []
    with running_agent(server.url, "--interval", "0.2") as process:
        reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
        reader.start()
        wait_until(lambda: "PUT" in server.requests, 15, message="first push")
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: any("SIGHUP ignored" in line for line in lines), 10, message="SIGHUP log line")
        pushed = len(server.requests)
        wait_until(lambda: len(server.requests) > pushed + 2, 10, message="pushes after SIGHUP")
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    reader.join(5)
    assert sum("SIGHUP ignored" in line for line in lines) == 1


def test_odd_hostname_and_interface_bytes_reach_the_gateway_distinct(pushgateway: Pushgateway) -> None:
    """Names that are not UTF-8 (as the OS hands them over) are kept as escapes, never merged."""
    odd = [b"eth\xff".decode("utf-8", "surrogateescape"), b"eth\xfe".decode("utf-8", "surrogateescape")]
    agent = pm.Agent(pm.Config(pushgateway_url=pushgateway.url, job="j", timeout=2), "odd", hostname=odd[0])
    snapshot = agent.sampler.sample()
    counters = next(iter(snapshot.network.values()))
    agent.client.push(agent.exposition.render(snapshot._replace(network=dict.fromkeys(odd, counters))))
    agent.client.close()
    group = pushgateway.group("j", "odd")
    interfaces = [m["labels"]["interface"] for m in group["network_receive_bytes_total"]["metrics"]]
    assert interfaces == ["eth\\xfe", "eth\\xff"]
    assert json.dumps(group["system_processes"]["metrics"][0]["labels"]["hostname"]) == '"eth\\\\xff"'
