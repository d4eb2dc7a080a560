"""Shared fixtures for the third-party interop tests.

One real `callhome serve` process per test session: port 0 on 127.0.0.1, a
fresh temporary data directory and a known admin password. It is stopped with
SIGTERM at the end and must exit 0 within 15 s.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "interop-Admin-pw-0123"
LISTENING_RE = re.compile(r"^callhome: listening http=(\S+)(?: mqtt=(\S+))?(?: tunnel=(\S+))?(?: device_http=(\S+))?\s*$", re.MULTILINE)
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15


def luhn_check_digit(body: str) -> str:
    """Check digit that makes `body + digit` pass the Luhn test."""
    total = 0
    # Walking from the right, the digit next to the (future) check digit is doubled.
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    return luhn_check_digit(number[:-1]) == number[-1]


_imei_counter = itertools.count(1)


def new_imei() -> str:
    """A fresh, valid 15-digit IMEI (8-digit TAC, 6-digit serial, Luhn check digit)."""
    body = "35209900%06d" % next(_imei_counter)
    imei = body + luhn_check_digit(body)
    assert len(imei) == 15 and luhn_valid(imei)
    return imei


def callhome_bin() -> Path:
    env = os.environ.get("CALLHOME_BIN")
    path = (Path(env) if env else REPO_ROOT / "target" / "debug" / "callhome").resolve()
    if not path.is_file():
        pytest.fail(
            f"callhome binary not found at {path}: run `cargo build -p callhome` "
            "or set CALLHOME_BIN",
            pytrace=False,
        )
    return path


@dataclass
class Server:
    base_url: str
    data_dir: Path
    admin_password: str
    proc: subprocess.Popen
    stdout_path: Path
    stderr_path: Path
    # The MQTT gateway's listening address, "127.0.0.1:PORT" (None if the server printed none).
    mqtt_addr: str | None = None
    device_http_addr: str | None = None
    _token: str | None = field(default=None, repr=False)

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def mqtt_port(self) -> int:
        """Port of the MQTT (mutual TLS) listener on 127.0.0.1."""
        assert self.mqtt_addr, "callhome serve printed no mqtt= address"
        return int(self.mqtt_addr.rpartition(":")[2])

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def admin_token(self, fresh: bool = False) -> str:
        """A bearer token for the `admin` user (cached unless `fresh`)."""
        if self._token is None or fresh:
            r = requests.post(
                self.url("/api/v1/auth/token"),
                json={"username": "admin", "password": self.admin_password},
                timeout=10,
            )
            assert r.status_code == 200, f"token: HTTP {r.status_code}: {r.text}"
            body = r.json()
            assert body["token_type"] == "Bearer", body
            self._token = body["access_token"]
        return self._token

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token()}"}

    def register_device(self, imei: str) -> dict:
        r = requests.post(
            self.url("/api/v1/devices"), json={"imei": imei}, headers=self.admin_headers(), timeout=10
        )
        assert r.status_code == 201, f"register {imei}: HTTP {r.status_code}: {r.text}"
        return r.json()


def _start_server(tmp_root: Path) -> Server:
    binary = callhome_bin()
    data_dir = tmp_root / "data"
    stdout_path = tmp_root / "server.stdout"
    stderr_path = tmp_root / "server.stderr"

    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHOME_")}
    env["CALLHOME_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    env.setdefault("NO_COLOR", "1")

    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [str(binary), "serve", "--data-dir", str(data_dir), "--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0", "--tunnel", "127.0.0.1:0", "--device-http", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=tmp_root,
        )

    deadline = time.monotonic() + START_TIMEOUT_S
    addr = mqtt_addr = device_http_addr = None
    while time.monotonic() < deadline:
        m = LISTENING_RE.search(stdout_path.read_text(errors="replace"))
        if m:
            addr, mqtt_addr, device_http_addr = m.group(1), m.group(2), m.group(4)
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)

    if addr is None:
        exited = proc.poll()
        if exited is None:
            proc.kill()
            proc.wait(timeout=10)
        why = (
            f"exited with code {exited} before printing its listening line"
            if exited is not None
            else f"did not print its listening line within {START_TIMEOUT_S} s (killed)"
        )
        pytest.fail(
            f"callhome serve {why}: {binary}\n--- stdout ---\n{stdout_path.read_text(errors='replace')}"
            f"\n--- stderr ---\n{stderr_path.read_text(errors='replace')}",
            pytrace=False,
        )

    host, _, port = addr.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0, addr
    if mqtt_addr is not None:
        mqtt_host, _, mqtt_port = mqtt_addr.rpartition(":")
        assert mqtt_host == "127.0.0.1" and int(mqtt_port) > 0, mqtt_addr
    return Server(
        base_url=f"http://{addr}",
        data_dir=data_dir,
        admin_password=ADMIN_PASSWORD,
        proc=proc,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        mqtt_addr=mqtt_addr,
        device_http_addr=device_http_addr,
    )


def _stop_server(server: Server) -> None:
    proc = server.proc
    if proc.poll() is not None:
        pytest.fail(
            f"callhome serve died during the tests (exit code {proc.returncode})\n"
            f"--- stderr ---\n{server.stderr()}",
            pytrace=False,
        )
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(
            f"callhome serve did not exit within {STOP_TIMEOUT_S} s of SIGTERM\n"
            f"--- stderr ---\n{server.stderr()}",
            pytrace=False,
        )
    assert rc == 0, f"callhome serve exited with {rc} after SIGTERM\n--- stderr ---\n{server.stderr()}"


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    """The running server: `.base_url`, `.mqtt_addr`/`.mqtt_port`, `.data_dir`, `.admin_token()`, `.url(path)`."""
    srv = _start_server(tmp_path_factory.mktemp("callhome"))
    print(
        f"\ncallhome serve at {srv.base_url}, mqtt {srv.mqtt_addr}, data dir {srv.data_dir}, "
        f"stderr {srv.stderr_path}"
    )
    try:
        yield srv
    finally:
        _stop_server(srv)


@pytest.fixture
def imei() -> str:
    """A fresh valid IMEI, not yet registered."""
    return new_imei()


# --- artifacts worth a look (screenshots), listed at the end of the run ------

_artifacts: list[tuple[str, Path]] = []


def record_artifact(label: str, path: Path) -> None:
    _artifacts.append((label, Path(path)))


def pytest_terminal_summary(terminalreporter):
    if _artifacts:
        terminalreporter.section("interop artifacts")
        for label, path in _artifacts:
            terminalreporter.write_line(f"{label}: {path}")
