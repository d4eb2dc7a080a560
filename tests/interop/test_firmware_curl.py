"""Firmware downloads against third-party HTTP tooling: the `curl` command and
`openssl`.

A modem is played by paho-mqtt (its command channel) and curl (its downloads), both with
the device's own client certificate: curl uploads the firmware (multipart; a
signature made by `openssl` is refused by this server, which has no signing key to check
it with), the campaign sends the update command with a tokenised URL,
curl fetches the first part of the file, then `curl -C -` resumes it with a Range
request (206), the whole file matches the upload's SHA-256, curl posts the JSR-118
install status, the "modem" reconnects on the new version and the execution ends
`updated`. Another device's certificate gets 403 for the same URL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import Server
from test_mqtt_clients import Paho, enroll, poll, wait_online

CURL_TIMEOUT_S = 60


def curl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=CURL_TIMEOUT_S)
    if check and proc.returncode != 0:
        pytest.fail(
            f"curl {' '.join(args)} exited {proc.returncode}\n{proc.stderr.decode(errors='replace')}",
            pytrace=False,
        )
    return proc


class FakeModem:
    """The command channel of a modem: answers VERSION with its version and the
    update command with OK, and remembers the update URL."""

    def __init__(self, creds, server: Server, version: str):
        self.creds, self.server, self.version = creds, server, version
        self.update_url: str | None = None
        self.client: Paho | None = None

    def connect(self):
        self.client = Paho(self.creds, self.server.mqtt_port)
        rc = self.client.connect()
        assert not rc.is_failure, rc
        self.client.c.on_message = self._on_message
        self.client.subscribe(f"{self.creds.imei}/AT")
        # The model, as a status message reports it.
        self.client.publish(f"{self.creds.imei}/dns", json.dumps({"model": "EHS6", "fw": self.version}))

    def _on_message(self, _c, _u, msg):
        cmd = msg.payload.decode()
        if cmd == "AT^MTXTUNNEL=VERSION":
            reply = f"MTX-Tunnel v{self.version}\r\nOK\r\n"
        elif cmd.startswith("AT^MTXTUNNEL=FWUPDATE,"):
            self.update_url = cmd.split(",")[1]
            reply = "OK\r\n"
        else:
            reply = "ERROR\r\n"
        self.client.c.publish(f"{self.creds.imei}/ATR", reply, qos=1)

    def restart(self, version: str):
        self.client.close()
        time.sleep(0.2)
        self.version = version
        self.connect()


def test_curl_resumes_a_firmware_download_and_the_campaign_succeeds(server: Server, tmp_path: Path):
    assert server.device_http_addr, "callhome serve printed no device_http= address"
    creds = enroll(server, tmp_path)
    other = enroll(server, tmp_path)
    modem = FakeModem(creds, server, "1.0.0")
    modem.connect()
    wait_online(server, creds.imei, True)
    poll(
        "the model reported",
        lambda: requests.get(server.url(f"/api/v1/devices/{creds.imei}"), headers=server.admin_headers(), timeout=10).json(),
        lambda d: d["model"] == "EHS6",
    )

    # A 300 KB image, signed by an Ed25519 key made with openssl.
    image = tmp_path / "fw.bin"
    image.write_bytes(bytes((i * 31 + 7) % 256 for i in range(300_000)))
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    (tmp_path / "fw.sha256").write_bytes(bytes.fromhex(sha))
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", "k.pem"], cwd=tmp_path, check=True, capture_output=True)
    sig = subprocess.run(
        ["openssl", "pkeyutl", "-sign", "-inkey", "k.pem", "-rawin", "-in", "fw.sha256"],
        cwd=tmp_path, check=True, capture_output=True,
    ).stdout
    def upload(metadata: dict) -> tuple[str, str]:
        up = curl(
            "-X", "POST", server.url("/api/v1/firmware"),
            "-H", f"Authorization: Bearer {server.admin_token()}",
            "-F", f"metadata={json.dumps(metadata)};type=application/json",
            "-F", f"file=@{image}",
            "-w", "\n%{http_code}",
        )
        body, _, code = up.stdout.decode().rpartition("\n")
        return code, body

    # This server has no signing key configured: a signature cannot be checked, and is
    # refused rather than ignored.
    signed = {"version": "2.0.0", "models": ["EHS6"], "kind": "image", "signature": base64.b64encode(sig).decode()}
    code, body = upload(signed)
    assert code == "422" and "no firmware signing key" in body, body
    code, body = upload({"version": "2.0.0", "models": ["EHS6"], "kind": "image"})
    assert code == "201", body
    fw = json.loads(body)
    assert fw["sha256"] == sha and fw["size"] == 300_000, fw
    assert fw["signed_by"] is None, fw

    r = requests.post(
        server.url("/api/v1/jobs"),
        json={"operation": {"type": "firmware_update", "firmware_id": fw["id"], "install_timeout_s": 60},
              "target": {"imeis": [creds.imei]}},
        headers=server.admin_headers(), timeout=10,
    )
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    url = poll("the update command", lambda: modem.update_url, lambda u: u is not None, timeout=30)
    host_port = server.device_http_addr
    assert url.startswith("https://"), url
    # The URL names the listener modems are told to use; on this test server it is the bound one.
    assert url.split("/")[2].endswith(host_port.rpartition(":")[2]), (url, host_port)

    tls = ["--cacert", str(creds.ca), "--cert", str(creds.cert), "--key", str(creds.key)]
    part = tmp_path / "download.bin"
    # The first 100,000 bytes, as a download cut short would leave them.
    first = curl(*tls, "-r", "0-99999", "-o", str(part), "-w", "%{http_code}", url)
    assert first.stdout.decode() == "206", first.stdout
    assert part.stat().st_size == 100_000
    # `curl -C -` resumes from the file's size: Range: bytes=100000-.
    resumed = curl(*tls, "-C", "-", "-o", str(part), "-w", "%{http_code} %{size_download}", "-D", str(tmp_path / "h.txt"), url)
    status, size = resumed.stdout.decode().split()
    assert status == "206" and int(size) == 200_000, resumed.stdout
    headers = (tmp_path / "h.txt").read_text().lower()
    assert "content-range: bytes 100000-299999/300000" in headers, headers
    assert f'etag: "{sha}"' in headers, headers
    assert hashlib.sha256(part.read_bytes()).hexdigest() == sha

    # Another device's certificate: 403, as problem+json.
    other_tls = ["--cacert", str(other.ca), "--cert", str(other.cert), "--key", str(other.key)]
    denied = curl(*other_tls, "-o", "/dev/null", "-w", "%{http_code}", url, check=False)
    assert denied.stdout.decode() == "403", denied.stdout
    # A range past the end: 416.
    past = curl(*tls, "-r", "300000-", "-o", "/dev/null", "-w", "%{http_code}", url, check=False)
    assert past.stdout.decode() == "416", past.stdout

    # The install status, then the restart onto the new version.
    notified = curl(*tls, "--data-binary", "900 Success", "-w", "%{http_code}", "-o", "/dev/null", url + "/notify")
    assert notified.stdout.decode() == "200"
    modem.restart("2.0.0")
    done = poll(
        "the execution's end",
        lambda: requests.get(server.url(f"/api/v1/jobs/{job}/devices/{creds.imei}"), headers=server.admin_headers(), timeout=10).json(),
        lambda e: e["state"] not in ("pending", "in_progress"),
        timeout=60,
    )
    assert done["state"] == "succeeded" and done["outcome"] == "updated", done
    assert done["result"]["download"]["bytes_served"] == 300_000, done
    assert done["result"]["download"]["resumptions"] == 1, done
    kinds = [e["kind"] for e in done["events"]]
    assert "download_resumed" in kinds and "install_notified" in kinds, kinds
    # The token ended with its execution.
    gone = curl(*tls, "-o", "/dev/null", "-w", "%{http_code}", url, check=False)
    assert gone.stdout.decode() == "410", gone.stdout
    modem.client.close()
