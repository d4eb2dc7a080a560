"""EST (RFC 7030) enrolment with clients we did not write: the `openssl` and `curl`
commands, and Python's `email` module for the multipart `serverkeygen` answer.

A device gets a single-use bootstrap secret through the API; `openssl req` makes its key
and a DER PKCS#10, which goes base64 to `simpleenroll` with `curl -u IMEI:SECRET`; the
base64 PKCS#7 answer is decoded and read by `openssl pkcs7 -print_certs`, and the
certificate must pass `openssl verify` against `cacerts` (itself a PKCS#7 turned into PEM
by openssl). The new certificate then re-enrols with `curl --cert/--key` to
`simplereenroll`, and asks `serverkeygen` for a key made by the server. A wrong secret gets
401 with the Basic challenge.
"""

from __future__ import annotations

import email
import email.policy
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import Server

TIMEOUT_S = 60


def run(script: str, cwd: Path) -> str:
    """Runs a bash pipeline (errors anywhere in it fail the test); returns its stdout."""
    proc = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{script}"],
        cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{script}\nexited {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout


def est_url(server: Server, op: str) -> str:
    assert server.device_http_addr, "callhome serve printed no device_http= address"
    return f"https://{server.device_http_addr}/.well-known/est/{op}"


def bootstrap_secret(server: Server, imei: str) -> str:
    r = requests.post(
        server.url(f"/api/v1/devices/{imei}/bootstrap-secret"),
        json={"expires_in_s": 3600}, headers=server.admin_headers(), timeout=10,
    )
    assert r.status_code == 201, r.text
    return r.json()["secret"]


def trust_anchor(server: Server, workdir: Path) -> Path:
    """The CA certificate from the API: what a device is given to trust the EST server."""
    r = requests.get(server.url("/api/v1/ca/certificate"), timeout=10)
    assert r.status_code == 200, r.text
    path = workdir / "anchor.pem"
    path.write_text(r.text)
    return path


def enrolled(server: Server, tmp_path: Path, imei: str) -> Path:
    """Registers `imei`, gives it a bootstrap secret and fetches cacerts as PEM."""
    server.register_device(imei)
    anchor = trust_anchor(server, tmp_path)
    run(
        f"curl -sS --fail-with-body --cacert {anchor} {est_url(server, 'cacerts')}"
        " | base64 -d > cacerts.p7\n"
        "openssl pkcs7 -inform DER -in cacerts.p7 -print_certs -out cacerts.pem",
        tmp_path,
    )
    assert "BEGIN CERTIFICATE" in (tmp_path / "cacerts.pem").read_text()
    return anchor


def verify(tmp_path: Path, cert: str, imei: str) -> None:
    out = run(f"openssl verify -CAfile cacerts.pem {cert}", tmp_path)
    assert out.strip() == f"{cert}: OK", out
    subject = run(f"openssl x509 -in {cert} -noout -subject -nameopt RFC2253", tmp_path)
    assert subject.strip() == f"subject=CN={imei}", subject


def test_openssl_and_curl_enrol_reenrol_and_get_a_server_made_key(server: Server, tmp_path: Path, imei: str):
    anchor = enrolled(server, tmp_path, imei)
    secret = bootstrap_secret(server, imei)

    # simpleenroll: openssl req | base64 | curl -u IMEI:SECRET | base64 -d | openssl pkcs7.
    run(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
        f" -subj /CN={imei} -keyout key.pem -outform DER | base64"
        f" | curl -sS --fail-with-body --cacert {anchor} -u {imei}:{secret}"
        " -H 'Content-Type: application/pkcs10' --data-binary @-"
        f" {est_url(server, 'simpleenroll')} | base64 -d > cert.p7\n"
        "openssl pkcs7 -inform DER -in cert.p7 -print_certs -out cert.pem",
        tmp_path,
    )
    verify(tmp_path, "cert.pem", imei)

    # simplereenroll: authenticated by that certificate, for a fresh key.
    run(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
        f" -subj /CN={imei} -keyout key2.pem -outform DER | base64"
        f" | curl -sS --fail-with-body --cacert {anchor} --cert cert.pem --key key.pem"
        " -H 'Content-Type: application/pkcs10' --data-binary @-"
        f" {est_url(server, 'simplereenroll')} | base64 -d > cert2.p7\n"
        "openssl pkcs7 -inform DER -in cert2.p7 -print_certs -out cert2.pem",
        tmp_path,
    )
    verify(tmp_path, "cert2.pem", imei)
    serial = lambda c: run(f"openssl x509 -in {c} -noout -serial", tmp_path).strip()
    assert serial("cert.pem") != serial("cert2.pem")

    # serverkeygen: the key comes from the server, in a multipart/mixed answer.
    run(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
        f" -subj /CN={imei} -keyout throwaway.pem -outform DER | base64"
        f" | curl -sS --fail-with-body --cacert {anchor} --cert cert2.pem --key key2.pem"
        " -H 'Content-Type: application/pkcs10' --data-binary @- -D keygen.headers"
        f" {est_url(server, 'serverkeygen')} > keygen.body",
        tmp_path,
    )
    headers = (tmp_path / "keygen.headers").read_bytes()
    content_type = next(
        line.split(b":", 1)[1].strip()
        for line in headers.splitlines()
        if line.lower().startswith(b"content-type:")
    )
    assert content_type.startswith(b"multipart/mixed"), content_type
    message = email.message_from_bytes(
        b"Content-Type: " + content_type + b"\r\n\r\n" + (tmp_path / "keygen.body").read_bytes(),
        policy=email.policy.default,
    )
    assert message.is_multipart()
    parts = {p.get_content_type(): p.get_payload(decode=True) for p in message.iter_parts()}
    assert set(parts) == {"application/pkcs8", "application/pkcs7-mime"}, list(parts)
    (tmp_path / "key3.der").write_bytes(parts["application/pkcs8"])
    (tmp_path / "cert3.p7").write_bytes(parts["application/pkcs7-mime"])
    run(
        "openssl pkey -inform DER -in key3.der -out key3.pem\n"
        "openssl pkcs7 -inform DER -in cert3.p7 -print_certs -out cert3.pem",
        tmp_path,
    )
    verify(tmp_path, "cert3.pem", imei)
    key_pub = run("openssl pkey -in key3.pem -pubout", tmp_path)
    cert_pub = run("openssl x509 -in cert3.pem -noout -pubkey", tmp_path)
    assert key_pub == cert_pub, "the served key is the certificate's"
    curve = run("openssl pkey -in key3.pem -noout -text", tmp_path)
    assert "prime256v1" in curve or "P-256" in curve, curve

    # The inventory records each operation.
    r = requests.get(
        server.url(f"/api/v1/devices/{imei}/certificates"), headers=server.admin_headers(), timeout=10
    )
    assert r.status_code == 200, r.text
    assert sorted(c["issued_by"] for c in r.json()) == [
        "est:serverkeygen", "est:simpleenroll", "est:simplereenroll"
    ]


def test_a_wrong_bootstrap_secret_gets_401_with_the_basic_challenge(server: Server, tmp_path: Path, imei: str):
    anchor = enrolled(server, tmp_path, imei)
    bootstrap_secret(server, imei)
    out = run(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
        f" -subj /CN={imei} -keyout key.pem -outform DER | base64"
        f" | curl -sS --cacert {anchor} -u {imei}:not-the-secret"
        " -H 'Content-Type: application/pkcs10' --data-binary @- -D refused.headers"
        f" -o refused.body -w '%{{http_code}}' {est_url(server, 'simpleenroll')}",
        tmp_path,
    )
    assert out == "401", out
    headers = (tmp_path / "refused.headers").read_text().lower()
    assert 'www-authenticate: basic realm="callhome-est"' in headers, headers
    body = (tmp_path / "refused.body").read_text()
    assert "invalid IMEI or bootstrap secret" in body, body
