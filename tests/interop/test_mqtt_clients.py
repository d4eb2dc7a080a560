"""The MQTT gateway against third-party MQTT 3.1.1 clients: Eclipse paho-mqtt
(Python, 2.x callback API) and Debian's mosquitto-clients (`mosquitto_sub`,
`mosquitto_pub`, libmosquitto).

Each test enrolls its own device the way a modem's provisioning would: register
the IMEI, make a key and a CSR with CN = IMEI (Python `cryptography`), have the
CSR signed over the REST API, then connect over mutual TLS to `localhost` (the
gateway certificate's SAN) with the client id equal to the certificate's CN.

Every wait is bounded: a few seconds for MQTT events and REST polls.
"""

from __future__ import annotations

import json
import queue
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paho.mqtt.client as mqtt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from conftest import Server, new_imei

HOST = "localhost"  # the gateway certificate's SANs: localhost, 127.0.0.1, ::1
WAIT_S = 5.0  # an MQTT event or a REST state change
CLI_TIMEOUT_S = 15  # a mosquitto_* process, start to exit


# --- enrollment --------------------------------------------------------------


@dataclass
class DeviceCreds:
    imei: str
    ca: Path  # `ca_chain` from the signing answer: what the modem trusts
    cert: Path  # the device certificate, CN = IMEI
    key: Path  # its private key (PKCS#8, unencrypted)


def enroll(server: Server, workdir: Path, imei: str | None = None) -> DeviceCreds:
    """Register a device and get it a client certificate from the Callhome CA."""
    imei = imei or new_imei()
    server.register_device(imei)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, imei)]))
        .sign(key, hashes.SHA256())
    )
    r = requests.post(
        server.url(f"/api/v1/devices/{imei}/certificate"),
        json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()},
        headers=server.admin_headers(),
        timeout=30,
    )
    assert r.status_code == 201, f"sign {imei}: HTTP {r.status_code}: {r.text}"
    body = r.json()

    # The chain handed to the device holds the CA served at /api/v1/ca/certificate.
    ca_served = requests.get(server.url("/api/v1/ca/certificate"), timeout=10)
    assert ca_served.status_code == 200, ca_served.text
    assert ca_served.text.strip() in body["ca_chain"], body["ca_chain"][:300]

    d = workdir / imei
    d.mkdir(parents=True, exist_ok=True)
    creds = DeviceCreds(imei=imei, ca=d / "ca.pem", cert=d / "dev.crt", key=d / "dev.key")
    creds.ca.write_text(body["ca_chain"])
    creds.cert.write_text(body["certificate"])
    creds.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    creds.key.chmod(0o600)
    return creds


# --- REST helpers ------------------------------------------------------------


def poll(what: str, fetch: Callable[[], object], ok: Callable[[object], bool], timeout: float = WAIT_S):
    """Call `fetch` until `ok(result)`; fail with the last result after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        last = fetch()
        if ok(last):
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not reached within {timeout} s; last: {last!r}", pytrace=False)
        time.sleep(0.1)


def get_device(server: Server, imei: str) -> dict:
    r = requests.get(server.url(f"/api/v1/devices/{imei}"), headers=server.admin_headers(), timeout=10)
    assert r.status_code == 200, f"device {imei}: HTTP {r.status_code}: {r.text}"
    return r.json()


def wait_online(server: Server, imei: str, online: bool) -> dict:
    return poll(f"device {imei} online={online}", lambda: get_device(server, imei), lambda d: d["online"] is online)


def queue_command(server: Server, imei: str, command: str, timeout_s: int = 10) -> dict:
    """POST a command without waiting; 202 (queued or already sent)."""
    r = requests.post(
        server.url(f"/api/v1/devices/{imei}/commands"),
        json={"command": command, "timeout_s": timeout_s},
        headers=server.admin_headers(),
        timeout=10,
    )
    assert r.status_code == 202, f"queue {command} on {imei}: HTTP {r.status_code}: {r.text}"
    cmd = r.json()
    assert cmd["command"] == command and cmd["imei"] == imei, cmd
    assert cmd["state"] in ("queued", "sent"), cmd
    return cmd


def get_command(server: Server, cmd_id: str, wait_s: int = 0) -> dict:
    r = requests.get(
        server.url(f"/api/v1/commands/{cmd_id}"),
        params={"wait_s": wait_s} if wait_s else None,
        headers=server.admin_headers(),
        timeout=wait_s + 10,
    )
    assert r.status_code == 200, f"command {cmd_id}: HTTP {r.status_code}: {r.text}"
    return r.json()


def audit_actions(server: Server, imei: str) -> list[str]:
    """Actions in the audit log done by the device `imei` (newest first)."""
    r = requests.get(
        server.url("/api/v1/audit"), params={"actor": imei}, headers=server.admin_headers(), timeout=10
    )
    assert r.status_code == 200, f"audit: HTTP {r.status_code}: {r.text}"
    return [e["action"] for e in r.json()["items"]]


# --- paho-mqtt ---------------------------------------------------------------


class Paho:
    """A paho-mqtt 2.x client (MQTT 3.1.1, mutual TLS) whose callbacks feed queues.

    The network loop runs in paho's own thread (`loop_start`); the test waits on
    the queues with a timeout, so nothing blocks for long.
    """

    def __init__(self, creds: DeviceCreds, port: int, client_id: str | None = None):
        self.port = port
        self.connacks: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=creds.imei if client_id is None else client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,  # a refusal must stay a refusal
        )
        self.c.tls_set(
            ca_certs=str(creds.ca),
            certfile=str(creds.cert),
            keyfile=str(creds.key),
            cert_reqs=ssl.CERT_REQUIRED,  # verify the gateway (chain and hostname)
            tls_version=ssl.PROTOCOL_TLS_CLIENT,  # TLS 1.2 at least, asserted after connecting
        )
        self.c.on_connect = lambda c, u, flags, rc, props: self.connacks.put(rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put((mid, rcs))
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self._started = False

    def connect(self):
        """Connect and return the CONNACK's reason code (success or refusal)."""
        self.c.connect(HOST, self.port, keepalive=30)
        self.c.loop_start()
        self._started = True
        return take(self.connacks, "CONNACK")

    def tls_version(self) -> str:
        sock = self.c.socket()
        assert isinstance(sock, ssl.SSLSocket), sock
        return sock.version()

    def subscribe(self, topic: str, qos: int = 1) -> list:
        """SUBSCRIBE one filter; the SUBACK's reason codes."""
        rc, mid = self.c.subscribe(topic, qos=qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(rc)
        got_mid, codes = take(self.subacks, f"SUBACK for {topic}")
        assert got_mid == mid, (got_mid, mid)
        return codes

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> mqtt.MQTTMessageInfo:
        info = self.c.publish(topic, payload, qos=qos)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
        return info

    def close(self):
        if self._started:
            if self.c.is_connected():
                self.c.disconnect()
            self.c.loop_stop()
            self._started = False


def take(q: queue.Queue, what: str, timeout: float = WAIT_S):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no {what} within {timeout} s", pytrace=False)


@pytest.fixture
def paho_clients():
    """Makes `Paho` clients and stops their network threads at the end."""
    made: list[Paho] = []

    def make(creds: DeviceCreds, port: int, client_id: str | None = None) -> Paho:
        p = Paho(creds, port, client_id)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def connected(paho_clients, server: Server, creds: DeviceCreds) -> Paho:
    client = paho_clients(creds, server.mqtt_port)
    rc = client.connect()
    assert not rc.is_failure and rc == "Success", f"CONNACK refused: {rc}"
    assert client.tls_version() in ("TLSv1.2", "TLSv1.3"), client.tls_version()
    return client


# --- mosquitto-clients -------------------------------------------------------


def mosquitto_args(server: Server, creds: DeviceCreds, with_cert: bool = True) -> list[str]:
    args = ["-h", HOST, "-p", str(server.mqtt_port), "--cafile", str(creds.ca), "-V", "mqttv311"]
    if with_cert:
        args += ["--cert", str(creds.cert), "--key", str(creds.key)]
    return args


def mosquitto_pub(server: Server, creds: DeviceCreds, topic: str, message: str, with_cert: bool = True):
    return subprocess.run(
        ["mosquitto_pub", *mosquitto_args(server, creds, with_cert), "-i", creds.imei,
         "-t", topic, "-m", message, "-q", "1"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )


# --- 1. paho-mqtt: the whole modem round trip --------------------------------


def test_paho_modem_round_trip(server: Server, tmp_path: Path, paho_clients):
    creds = enroll(server, tmp_path)
    imei = creds.imei
    assert get_device(server, imei)["online"] is False

    client = connected(paho_clients, server, creds)
    codes = client.subscribe(f"{imei}/AT", qos=1)
    assert len(codes) == 1 and not codes[0].is_failure and codes[0].value == 1, codes  # granted QoS 1
    wait_online(server, imei, True)

    # A command queued over REST arrives on {IMEI}/AT, exactly as written.
    cmd = queue_command(server, imei, "AT+CSQ")
    msg = take(client.messages, "the command on the AT topic")
    assert msg.topic == f"{imei}/AT", msg.topic
    assert msg.payload == b"AT+CSQ", msg.payload
    assert msg.qos == 1, msg.qos

    reply = "+CSQ: 20,99\r\n\r\nOK"
    client.publish(f"{imei}/ATR", reply, qos=1).wait_for_publish(timeout=WAIT_S)
    done = get_command(server, cmd["id"], wait_s=10)
    assert done["state"] == "succeeded", done
    assert done["reply"] == reply, done
    assert done["result"] == "OK", done
    assert done["attempts"] == 1 and done["sent_at"] and done["completed_at"], done
    assert get_device(server, imei)["online"] is True

    # A status report on {IMEI}/dns shows up as parsed fields.
    client.publish(f"{imei}/dns", json.dumps({"csq": 20}), qos=1).wait_for_publish(timeout=WAIT_S)

    def status():
        r = requests.get(
            server.url(f"/api/v1/devices/{imei}/status"), headers=server.admin_headers(), timeout=10
        )
        return r.status_code, (r.json() if r.status_code == 200 else r.text)

    _, st = poll("status of " + imei, status, lambda s: s[0] == 200)
    assert st["fields"] == {"csq": 20}, st
    assert st["topic"] == f"{imei}/dns", st
    assert json.loads(st["payload"]) == {"csq": 20}, st

    # A clean DISCONNECT takes the device offline.
    client.c.disconnect()
    rc = take(client.disconnects, "on_disconnect after disconnect()")
    assert not rc.is_failure, rc
    wait_online(server, imei, False)


# --- 2. mosquitto_sub / mosquitto_pub: the same round trip from the shell ----


def test_mosquitto_sub_and_pub_round_trip(server: Server, tmp_path: Path):
    creds = enroll(server, tmp_path)
    imei = creds.imei

    # mosquitto_sub waits for one command (-C 1) and exits; -W bounds its life.
    sub = subprocess.Popen(
        ["mosquitto_sub", *mosquitto_args(server, creds), "-i", imei, "-t", f"{imei}/AT",
         "-q", "1", "-C", "1", "-W", str(CLI_TIMEOUT_S)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_online(server, imei, True)
        # Queued over REST; the gateway sends it once the SUBSCRIBE has been granted.
        cmd = queue_command(server, imei, "AT+CSQ")
        out, err = sub.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(timeout=5)
    assert sub.returncode == 0, f"mosquitto_sub exited {sub.returncode}\n{out}\n{err}"
    assert out == "AT+CSQ\n", (out, err)
    assert get_command(server, cmd["id"])["state"] == "sent"

    # Ordering matters here. mosquitto_pub is a second connection with the same
    # client id (the IMEI, which must equal the certificate's CN), and a second
    # connection takes over the first: the gateway kills the older session. That
    # is harmless only because mosquitto_sub has already got its one message and
    # exited (communicate() above returned), so there is nothing left to take over
    # and the command is still in flight (`sent`), waiting for its reply. Starting
    # mosquitto_pub before mosquitto_sub exited would race the command delivery.
    pub = mosquitto_pub(server, creds, f"{imei}/ATR", "OK")
    assert pub.returncode == 0, f"mosquitto_pub exited {pub.returncode}\n{pub.stdout}\n{pub.stderr}"

    done = get_command(server, cmd["id"], wait_s=10)
    wait_online(server, imei, False)
    assert done["state"] == "succeeded", f"the reply from mosquitto_pub was not taken: {done}"
    assert done["reply"] == "OK", done
    assert done["result"] == "OK", done


# --- 3. what the gateway refuses, seen from the same clients -----------------


def test_paho_client_id_other_than_cn_is_identifier_rejected(server: Server, tmp_path: Path, paho_clients):
    creds = enroll(server, tmp_path)
    client = paho_clients(creds, server.mqtt_port, client_id=creds.imei + "-x")
    rc = client.connect()
    # MQTT 3.1.1 CONNACK return code 2, "identifier rejected"; paho names it so.
    assert rc.is_failure, rc
    assert rc == "Client identifier not valid", f"{rc} ({rc.value})"
    assert "mqtt.connect.identity_mismatch" in audit_actions(server, creds.imei)
    assert get_device(server, creds.imei)["online"] is False


def test_mosquitto_pub_without_client_certificate_fails(server: Server, tmp_path: Path):
    creds = enroll(server, tmp_path)
    imei = creds.imei
    refused = mosquitto_pub(server, creds, f"{imei}/dns", "csq=11", with_cert=False)
    assert refused.returncode != 0, f"published without a client certificate:\n{refused.stdout}\n{refused.stderr}"
    # The same command with the certificate gets through: the refusal was the missing certificate.
    control = mosquitto_pub(server, creds, f"{imei}/dns", "csq=12")
    assert control.returncode == 0, f"mosquitto_pub exited {control.returncode}\n{control.stdout}\n{control.stderr}"
    r = requests.get(server.url(f"/api/v1/devices/{imei}/status/history"), headers=server.admin_headers(), timeout=10)
    assert r.status_code == 200, r.text
    assert [s["payload"] for s in r.json()["items"]] == ["csq=12"], r.json()


def test_paho_subscribe_to_another_devices_command_topic_is_refused(server: Server, tmp_path: Path, paho_clients):
    creds = enroll(server, tmp_path)
    other = enroll(server, tmp_path)
    client = connected(paho_clients, server, creds)

    codes = client.subscribe(f"{other.imei}/AT", qos=1)
    assert len(codes) == 1 and codes[0].is_failure and codes[0].value == 0x80, codes
    assert "mqtt.subscribe.denied" in audit_actions(server, creds.imei)

    # The refusal is per filter: the connection stays up and its own topic works.
    codes = client.subscribe(f"{creds.imei}/AT", qos=1)
    assert len(codes) == 1 and not codes[0].is_failure, codes
    assert client.c.is_connected()
    assert client.disconnects.empty()


def test_paho_publish_to_another_devices_reply_topic_is_disconnected(server: Server, tmp_path: Path, paho_clients):
    creds = enroll(server, tmp_path)
    other = enroll(server, tmp_path)
    client = connected(paho_clients, server, creds)
    wait_online(server, creds.imei, True)

    client.publish(f"{other.imei}/ATR", "OK", qos=1)
    rc = take(client.disconnects, "disconnection after publishing to another device's reply topic")
    # MQTT 3.1.1 has no server DISCONNECT: the gateway closes the connection, which
    # paho reports as an unexpected disconnection.
    assert rc.is_failure, rc
    assert "mqtt.publish.denied" in audit_actions(server, creds.imei)
    wait_online(server, creds.imei, False)
