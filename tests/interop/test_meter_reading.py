"""Meter reading through Callhome with a third-party Modbus stack (pymodbus 3.x).

The meter is a pymodbus Modbus RTU server (RTU framing over TCP, device id 1,
holding registers 0..9) running in a thread of the test process. A simulated
modem (`callhome sim --meter tcp:...`) has it on its "serial port": when the
modem opens a TEMPORALCLIENT tunnel it connects to the meter and relays bytes
both ways.

1. Rendezvous: a local TCP port bridged to a rendezvous session; a pymodbus
   client (RTU framer over TCP) dials it and reads the registers, then hangs up,
   and the session is closed by the reader (`reader_closed`) with byte counts.
   The bridge is `callhome connect`, or the same thing written in Python with `websockets`
   (a third-party client on the session's WebSocket).
2. Direct: the reading platform is a Python `ssl` server presenting Callhome's
   own server certificate and requiring a client certificate from Callhome's
   CA. The modem dials it, sends its MTX_IDClient (the IMEI) and relays; the
   test sends a raw RTU request over the TLS socket and checks the answer.
   The request is built with pymodbus's PDU and RTU framer classes
   (`ReadHoldingRegistersRequest` + `FramerRTU.buildFrame`); its CRC and the
   response's CRC are checked with an independent, hand-written Modbus CRC-16.

Every wait is bounded; the simulator and `callhome connect` are stopped with
SIGINT (their Ctrl-C handling) at teardown and their output is printed there,
which pytest shows for a failed test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import requests
from pymodbus import FramerType
from pymodbus.client import ModbusTcpClient
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadHoldingRegistersResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from conftest import Server, callhome_bin, new_imei

WAIT_S = 5.0  # a REST state change, a process printing its first line, a socket read
START_S = 20.0  # the simulator enrolling and connecting over mutual TLS (busy CI machines)
READ_S = 10.0  # a Modbus answer through a tunnel that is still being set up
STOP_S = 10.0  # a subprocess exiting after SIGINT

UNIT = 1
REGISTERS = [1234, 5678, 9012, 3456, 7890, 4321, 8765, 2109, 6543, 1000]
# Read holding registers 0..9 of unit 1, the textbook RTU frame (CRC low byte first).
REQUEST_FRAME = bytes.fromhex("01 03 00 00 00 0a c5 cd")
# Unit, function, byte count, 10 registers, CRC.
RESPONSE_LEN = 3 + 2 * len(REGISTERS) + 2


def crc16_modbus(data: bytes) -> bytes:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF), as sent: low byte first."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


# --- the meter: a pymodbus RTU server in its own thread ----------------------


class ModbusMeter:
    """pymodbus `ModbusTcpServer` with the RTU framer on 127.0.0.1:<free port>.

    It runs on its own asyncio loop in a daemon thread; `received` collects the
    raw bytes it got (through pymodbus's `trace_packet` hook).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="modbus-meter", daemon=True)
        self.server: ModbusTcpServer | None = None
        self.port = 0
        self.received = bytearray()
        self.connections = 0
        self._lock = threading.Lock()

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            with self._lock:
                self.received += data
        return data

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            with self._lock:
                self.connections += 1

    async def _start(self) -> int:
        device = SimDevice(id=UNIT, simdata=[SimData(0, values=list(REGISTERS), datatype=DataType.REGISTERS)])
        self.server = ModbusTcpServer(
            device,
            address=("127.0.0.1", 0),
            framer=FramerType.RTU,
            trace_packet=self._trace_packet,
            trace_connect=self._trace_connect,
        )
        await self.server.serve_forever(background=True)
        return self.server.transport.sockets[0].getsockname()[1]

    def start(self) -> None:
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(WAIT_S)
        assert self.port > 0

    def received_bytes(self) -> bytes:
        with self._lock:
            return bytes(self.received)

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(WAIT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the pymodbus server thread did not stop"
        self.loop.close()


@pytest.fixture
def meter():
    m = ModbusMeter()
    m.start()
    try:
        yield m
    finally:
        m.stop()


def test_the_meter_answers_a_direct_pymodbus_client(meter: ModbusMeter):
    """Control: the meter, without Callhome in between, answers the same read."""
    client = ModbusTcpClient("127.0.0.1", port=meter.port, framer=FramerType.RTU, timeout=WAIT_S, retries=0)
    try:
        assert client.connect(), "cannot connect to the pymodbus server"
        rr = client.read_holding_registers(0, count=len(REGISTERS), device_id=UNIT)
    finally:
        client.close()
    assert not rr.isError(), rr
    assert rr.registers == REGISTERS, rr
    assert meter.received_bytes() == REQUEST_FRAME, meter.received_bytes().hex()


# --- subprocesses ------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def output(self) -> str:
        return (
            f"--- {self.name} (pid {self.popen.pid}, exit {self.popen.poll()}) stdout ---\n{self.stdout()}"
            f"--- {self.name} stderr ---\n{self.stderr_path.read_text(errors='replace')}"
        )

    def stop(self) -> int:
        """SIGINT (Ctrl-C) and wait; SIGKILL after STOP_S. The exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
                print(f"{self.name} did not exit within {STOP_S} s of SIGINT: killed")
        return self.popen.returncode


@pytest.fixture
def spawn(tmp_path: Path):
    """Starts `callhome` subprocesses; stops them (SIGINT) at teardown and prints their output."""
    started: list[Proc] = []

    def start(name: str, args: list[str], token: str, extra_env: dict[str, str] | None = None) -> Proc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHOME_")}
        env["CALLHOME_TOKEN"] = token  # read by --token's env fallback: not on the command line
        env.setdefault("NO_COLOR", "1")
        env.update(extra_env or {})
        slug = name.replace(" ", "-")
        out, err = tmp_path / f"{slug}.stdout", tmp_path / f"{slug}.stderr"
        with open(out, "wb") as o, open(err, "wb") as e:
            popen = subprocess.Popen(
                [str(callhome_bin()), *args], stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=env, cwd=tmp_path
            )
        p = Proc(name, popen, out, err)
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        p.stop()
        print(p.output())


def wait_for(what: str, fetch: Callable[[], object], ok: Callable[[object], bool], timeout: float = WAIT_S,
             procs: tuple[Proc, ...] = ()):
    """Call `fetch` until `ok(result)`; fail with the last result (and the output of a
    process in `procs` that exited meanwhile) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        last = fetch()
        if ok(last):
            return last
        for p in procs:
            if p.popen.poll() is not None:
                pytest.fail(f"{what}: {p.name} exited with {p.popen.returncode}; last: {last!r}\n{p.output()}",
                            pytrace=False)
        if time.monotonic() >= deadline:
            extra = "".join("\n" + p.output() for p in procs)
            pytest.fail(f"{what}: not reached within {timeout} s; last: {last!r}{extra}", pytrace=False)
        time.sleep(0.1)


# --- REST helpers ------------------------------------------------------------


def device_or_none(server: Server, imei: str) -> dict | None:
    r = requests.get(server.url(f"/api/v1/devices/{imei}"), headers=server.admin_headers(), timeout=10)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, f"device {imei}: HTTP {r.status_code}: {r.text}"
    return r.json()


def sessions_of(server: Server, imei: str) -> list[dict]:
    r = requests.get(server.url(f"/api/v1/devices/{imei}/sessions"), headers=server.admin_headers(), timeout=10)
    assert r.status_code == 200, f"sessions of {imei}: HTTP {r.status_code}: {r.text}"
    return r.json()["items"]


def get_session(server: Server, session_id: str) -> dict:
    r = requests.get(server.url(f"/api/v1/sessions/{session_id}"), headers=server.admin_headers(), timeout=10)
    assert r.status_code == 200, f"session {session_id}: HTTP {r.status_code}: {r.text}"
    return r.json()


def start_sim(server: Server, spawn, tmp_path: Path, meter: ModbusMeter) -> tuple[str, Proc]:
    """One simulated modem with the meter on its serial side; waits until it is online."""
    imei = new_imei()
    sim = spawn(
        "callhome sim",
        ["sim", "--api", server.base_url, "--broker", f"localhost:{server.mqtt_port}", "--modems", "1",
         "--first-imei", imei[:14], "--cache-dir", str(tmp_path / "sim-cache"),
         "--meter", f"tcp:127.0.0.1:{meter.port}"],
        server.admin_token(),
        {"RUST_LOG": "callhome_sim=info,warn"},  # tunnel open/close lines, for a failure's output
    )
    wait_for(f"simulated modem {imei} online", lambda: device_or_none(server, imei),
             lambda d: d is not None and d["online"] is True, timeout=START_S, procs=(sim,))
    return imei, sim


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """`n` bytes (the socket's timeout bounds each read); fails on EOF."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            pytest.fail(f"EOF after {len(buf)} of {n} bytes: {bytes(buf).hex()}", pytrace=False)
        buf += chunk
    return bytes(buf)


# --- 1. rendezvous: pymodbus client -> local TCP port -> WebSocket -> modem -> meter


def read_through_rendezvous(server: Server, imei: str, sim: Proc, meter: ModbusMeter, port: int,
                            bridge: Proc | None = None) -> dict:
    """Reads the meter with pymodbus through the local port `port` (a bridge to a rendezvous
    session), hangs up, and returns the closed session after checking its end."""
    procs = (sim,) if bridge is None else (sim, bridge)
    # Legacy reading software: Modbus RTU framing over a plain TCP connection. It sends at
    # once; the bytes wait in the local socket while the session pairs. No retries: a
    # retry would put a second request on the line and blur the byte counts.
    client = ModbusTcpClient("127.0.0.1", port=port, framer=FramerType.RTU, timeout=READ_S, retries=0)
    try:
        assert client.connect(), f"cannot connect to the bridge on 127.0.0.1:{port}"
        rr = client.read_holding_registers(0, count=len(REGISTERS), device_id=UNIT)
        assert not rr.isError(), rr
        assert isinstance(rr, ReadHoldingRegistersResponse), rr
        assert rr.dev_id == UNIT, rr
        assert rr.registers == REGISTERS, rr

        [session] = sessions_of(server, imei)
        assert session["mode"] == "rendezvous", session
        assert session["state"] == "active", session
        assert session["modem_addr"] and session["reader_addr"], session
    finally:
        client.close()

    # The reader hanging up ends the session, with what went each way.
    closed = wait_for(f"session {session['id']} closed", lambda: get_session(server, session["id"]),
                      lambda s: s["state"] == "closed", procs=procs)
    assert closed["close_reason"] == "reader_closed", closed
    assert closed["error"] is None, closed
    assert closed["bytes_to_modem"] == len(REQUEST_FRAME), closed
    assert closed["bytes_from_modem"] == RESPONSE_LEN, closed
    assert closed["closed_at"] and closed["active_at"], closed
    assert sessions_of(server, imei)[0] == closed

    # The meter saw exactly one textbook request, on a connection the modem opened.
    assert meter.received_bytes() == REQUEST_FRAME, meter.received_bytes().hex()
    assert meter.connections == 1, meter.connections
    return closed


def test_meter_read_with_pymodbus_through_callhome_connect(server: Server, tmp_path: Path, meter: ModbusMeter, spawn):
    imei, sim = start_sim(server, spawn, tmp_path, meter)

    port = free_port()
    conn = spawn(
        "callhome connect",
        ["connect", imei, "--api", server.base_url, "--listen", f"127.0.0.1:{port}", "--once",
         "--timeout-s", "30", "--pairing-timeout-s", "10"],
        server.admin_token(),
    )

    def listening() -> str:
        return conn.stdout()

    wait_for("callhome connect listening", listening, lambda out: f"on 127.0.0.1:{port}" in out, procs=(conn,))

    closed = read_through_rendezvous(server, imei, sim, meter, port, bridge=conn)

    # --once: connect reports how the session ended and exits by itself.
    try:
        rc = conn.popen.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"callhome connect --once still running after the session closed\n{conn.output()}", pytrace=False)
    assert rc == 0, conn.output()
    assert f"session {closed['id']} closed (reader_closed)" in conn.stdout(), conn.output()

    assert sim.popen.poll() is None, sim.output()
    assert sim.stop() == 0, f"callhome sim exited {sim.popen.returncode} after SIGINT\n{sim.output()}"


class WebSocketBridge:
    """What `callhome connect --once` does, in Python with the `websockets` library: one
    local TCP client on 127.0.0.1:<port>; for it, a rendezvous session opened over REST and
    joined on its WebSocket with the one-time token; bytes moved both ways until either
    side ends (the local client hanging up closes the WebSocket)."""

    def __init__(self, server: Server, imei: str):
        self.server, self.imei = server, imei
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT_S)
        self.port = self.listener.getsockname()[1]
        self.created: dict | None = None
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="ws-bridge", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            local, _ = self.listener.accept()
        except OSError as e:
            self.errors.append(f"accept: {e!r}")
            return
        finally:
            self.listener.close()
        with local:
            try:
                self._bridge(local)
            except Exception as e:  # reported by the test through self.errors
                self.errors.append(f"{type(e).__name__}: {e}")

    def _bridge(self, local: socket.socket) -> None:
        r = requests.post(
            self.server.url(f"/api/v1/devices/{self.imei}/sessions"),
            json={"mode": "rendezvous", "timeout_s": 30, "pairing_timeout_s": 10},
            headers=self.server.admin_headers(),
            timeout=10,
        )
        assert r.status_code == 201, f"rendezvous session: HTTP {r.status_code}: {r.text}"
        self.created = r.json()
        reader = self.created["reader"]
        url = self.server.base_url.replace("http://", "ws://", 1) + reader["stream_path"] + "?token=" + reader["token"]
        with ws_connect(url, open_timeout=WAIT_S, close_timeout=WAIT_S, compression=None, proxy=None) as ws:

            def up() -> None:  # local client -> meter
                try:
                    while data := local.recv(4096):
                        ws.send(data)  # bytes: a binary frame
                except OSError:
                    pass
                ws.close()

            upstream = threading.Thread(target=up, name="ws-bridge-up", daemon=True)
            upstream.start()
            try:
                for msg in ws:  # meter -> local client, until the WebSocket closes
                    local.sendall(msg if isinstance(msg, bytes) else msg.encode())
            except ConnectionClosed:
                pass
            with contextlib.suppress(OSError):
                local.shutdown(socket.SHUT_WR)
            upstream.join(WAIT_S)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the WebSocket bridge thread did not end"


def test_meter_read_with_pymodbus_through_rendezvous_websocket(server: Server, tmp_path: Path, meter: ModbusMeter,
                                                               spawn):
    imei, sim = start_sim(server, spawn, tmp_path, meter)
    bridge = WebSocketBridge(server, imei)
    try:
        closed = read_through_rendezvous(server, imei, sim, meter, bridge.port)
    finally:
        bridge.stop()
    assert not bridge.errors, bridge.errors
    assert bridge.created and bridge.created["id"] == closed["id"], bridge.created
    assert bridge.created["state"] == "requested", bridge.created

    assert sim.popen.poll() is None, sim.output()
    assert sim.stop() == 0, f"callhome sim exited {sim.popen.returncode} after SIGINT\n{sim.output()}"


# --- 2. direct: the modem dials the reading platform's TLS server -------------


def platform_tls_context(server: Server) -> ssl.SSLContext:
    """The reading platform's TLS server: Callhome's own server identity (it covers
    127.0.0.1 and chains to Callhome's CA, which the modem trusts), and a client
    certificate from Callhome's CA required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ca_dir = server.data_dir / "ca"
    ctx.load_cert_chain(ca_dir / "server.crt.pem", ca_dir / "server.key.pem")
    r = requests.get(server.url("/api/v1/ca/certificate"), timeout=10)
    assert r.status_code == 200, f"CA certificate: HTTP {r.status_code}: {r.text}"
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=r.text)
    return ctx


def peer_cn(tls: ssl.SSLSocket) -> str:
    cert = tls.getpeercert()
    assert cert, "the modem presented no certificate"
    cns = [v for rdn in cert["subject"] for (k, v) in rdn if k == "commonName"]
    assert len(cns) == 1, cert["subject"]
    return cns[0]


def test_meter_read_over_direct_session_to_python_tls_server(server: Server, tmp_path: Path, meter: ModbusMeter,
                                                             spawn):
    imei, sim = start_sim(server, spawn, tmp_path, meter)
    ctx = platform_tls_context(server)

    # The RTU request, built with pymodbus's PDU and framer classes; its CRC checked by hand.
    framer = FramerRTU(DecodePDU(False))
    request = framer.buildFrame(ReadHoldingRegistersRequest(dev_id=UNIT, address=0, count=len(REGISTERS)))
    assert request == REQUEST_FRAME, request.hex()
    assert crc16_modbus(request[:-2]) == request[-2:], request.hex()

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(READ_S)
        port = listener.getsockname()[1]
        # Direct sessions go only to listed targets, and loopback only when an entry inside
        # 127.0.0.0/8 says so (docs/security.md): list this reading platform first.
        r = requests.post(
            server.url("/api/v1/session-targets"),
            json={"network": "127.0.0.1/32", "ports": str(port), "note": "interop reading platform"},
            headers=server.admin_headers(),
            timeout=10,
        )
        assert r.status_code == 201, f"session target: HTTP {r.status_code}: {r.text}"
        r = requests.post(
            server.url(f"/api/v1/devices/{imei}/sessions"),
            json={"mode": "direct", "host": "127.0.0.1", "port": port, "timeout_s": 60},
            headers=server.admin_headers(),
            timeout=10,
        )
        assert r.status_code == 201, f"direct session: HTTP {r.status_code}: {r.text}"
        created = r.json()
        sid = created["id"]
        assert created["mode"] == "direct" and created["host"] == "127.0.0.1" and created["port"] == port, created
        assert created["reader"] is None, created  # no WebSocket side in direct mode
        assert created["state"] in ("requested", "active"), created

        try:
            raw, _ = listener.accept()
        except TimeoutError:
            pytest.fail(f"the modem did not dial 127.0.0.1:{port} within {READ_S} s; "
                        f"session {get_session(server, sid)}\n{sim.output()}", pytrace=False)
        raw.settimeout(WAIT_S)
        with ctx.wrap_socket(raw, server_side=True) as tls:  # handshake: the modem's certificate verified
            assert tls.version() in ("TLSv1.2", "TLSv1.3"), tls.version()
            assert peer_cn(tls) == imei

            # MTX_IDClient first: the IMEI, 15 bytes, no terminator.
            assert recv_exactly(tls, 15) == imei.encode()

            tls.sendall(request)
            response = recv_exactly(tls, RESPONSE_LEN)
            assert response[:3] == bytes([UNIT, 0x03, 2 * len(REGISTERS)]), response.hex()
            assert crc16_modbus(response[:-2]) == response[-2:], f"bad CRC: {response.hex()}"
            assert list(struct.unpack(f">{len(REGISTERS)}H", response[3:-2])) == REGISTERS, response.hex()
            # And pymodbus's own RTU decoder agrees.
            used, pdu = framer.handleFrame(response, UNIT, 0)
            assert used == RESPONSE_LEN and isinstance(pdu, ReadHoldingRegistersResponse), (used, pdu)
            assert pdu.registers == REGISTERS, pdu

            active = wait_for(f"direct session {sid} active", lambda: get_session(server, sid),
                              lambda s: s["state"] == "active", procs=(sim,))
            assert active["active_at"] and active["command_id"], active
            assert meter.received_bytes() == REQUEST_FRAME, meter.received_bytes().hex()

            r = requests.delete(server.url(f"/api/v1/sessions/{sid}"), headers=server.admin_headers(), timeout=10)
            assert r.status_code == 200, f"DELETE session: HTTP {r.status_code}: {r.text}"
            deleted = r.json()
            assert deleted["state"] == "closed" and deleted["close_reason"] == "cancelled", deleted
            assert get_session(server, sid)["state"] == "closed"
            # Closing our end (close_notify) ends the modem's tunnel.

    assert sim.popen.poll() is None, sim.output()
    assert sim.stop() == 0, f"callhome sim exited {sim.popen.returncode} after SIGINT\n{sim.output()}"
