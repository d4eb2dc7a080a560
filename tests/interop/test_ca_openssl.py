"""The Callhome CA against third-party X.509 tooling: the `openssl` command and
Python `cryptography`.

CSRs made by other tools must be signed; the certificates must verify with
`openssl verify` against the CA certificate served at /api/v1/ca/certificate;
revocation must show up in the CRL served at /api/v1/ca/crl so that
`openssl verify -crl_check` rejects the certificate.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import Server, new_imei

PROBLEM_JSON = "application/problem+json"


def openssl(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"openssl {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
            pytrace=False,
        )
    return proc


def openssl_csr(workdir: Path, cn: str, name: str = "device") -> tuple[Path, Path]:
    """EC P-256 key + CSR made by the openssl command; returns (key, csr) paths."""
    key, csr = workdir / f"{name}.key.pem", workdir / f"{name}.csr.pem"
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", f"/CN={cn}", "-keyout", key.name, "-out", csr.name,
        cwd=workdir,
    )
    return key, csr


def rsa_csr(workdir: Path, cn: str, name: str = "device") -> tuple[Path, Path]:
    """RSA-2048 key + CSR made by Python `cryptography`; returns (key, csr) paths."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(private_key, hashes.SHA256())
    )
    key, csr = workdir / f"{name}.key.pem", workdir / f"{name}.csr.pem"
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    csr.write_bytes(request.public_bytes(serialization.Encoding.PEM))
    return key, csr


def sign_csr(server: Server, imei: str, csr_pem: str) -> requests.Response:
    return requests.post(
        server.url(f"/api/v1/devices/{imei}/certificate"),
        json={"csr": csr_pem},
        headers=server.admin_headers(),
        timeout=30,
    )


def fetch_ca(server: Server, workdir: Path) -> Path:
    r = requests.get(server.url("/api/v1/ca/certificate"), timeout=10)
    assert r.status_code == 200, r.text
    assert "-----BEGIN CERTIFICATE-----" in r.text, r.text[:200]
    ca = workdir / "ca.pem"
    ca.write_text(r.text)
    return ca


def fetch_crl(server: Server, workdir: Path) -> Path:
    r = requests.get(server.url("/api/v1/ca/crl"), timeout=10)
    assert r.status_code == 200, r.text
    assert "-----BEGIN X509 CRL-----" in r.text, r.text[:200]
    crl = workdir / "crl.pem"
    crl.write_text(r.text)
    return crl


def issue(server: Server, workdir: Path, imei: str, csr: Path) -> tuple[dict, Path]:
    """Register `imei`, have `csr` signed, save the certificate as cert.pem."""
    server.register_device(imei)
    r = sign_csr(server, imei, csr.read_text())
    assert r.status_code == 201, f"sign: HTTP {r.status_code}: {r.text}"
    body = r.json()
    for key in ("certificate", "ca_chain", "serial", "not_after"):
        assert key in body, f"{key} missing from {sorted(body)}"
    cert = workdir / "cert.pem"
    cert.write_text(body["certificate"])
    return body, cert


def check_issued(server: Server, workdir: Path, imei: str, key: Path, body: dict, cert: Path) -> None:
    """What every issued device certificate must satisfy, checked with openssl."""
    ca = fetch_ca(server, workdir)

    # The chain of trust, as a TLS peer would check it: the root served as the trust
    # anchor, the issuing CA from the chain handed out with the certificate.
    chain = body["ca_chain"]
    chain_text = "".join(chain) if isinstance(chain, list) else chain
    (workdir / "chain.pem").write_text(chain_text)
    v = openssl("verify", "-CAfile", ca.name, "-untrusted", "chain.pem", cert.name, cwd=workdir)
    assert v.stdout.strip() == "cert.pem: OK", v.stdout + v.stderr
    # Without the issuing CA the root alone does not vouch for the device.
    alone = openssl("verify", "-CAfile", ca.name, cert.name, cwd=workdir, check=False)
    assert alone.returncode != 0, alone.stdout

    # Subject CN is the IMEI; EKU is TLS client authentication and nothing else.
    out = openssl("x509", "-in", cert.name, "-noout", "-subject", "-ext", "extendedKeyUsage", cwd=workdir).stdout
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    subject = lines[0]
    assert subject.replace(" ", "") == f"subject=CN={imei}", out
    assert "X509v3 Extended Key Usage:" in lines[1], out
    assert lines[2:] == ["TLS Web Client Authentication"], out

    # The certificate carries the CSR's public key.
    cert_pub = openssl("x509", "-in", cert.name, "-noout", "-pubkey", cwd=workdir).stdout
    key_pub = openssl("pkey", "-in", key.name, "-pubout", cwd=workdir).stdout
    assert cert_pub == key_pub

    # Cross-check with `cryptography`: serial and not_after as reported, issuer is the CA.
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    issuing = x509.load_pem_x509_certificates(chain_text.encode())[0]
    assert parsed.issuer == issuing.subject
    assert int(body["serial"], 16) == parsed.serial_number, (body["serial"], hex(parsed.serial_number))
    eku = parsed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = parsed.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    # The chain the API returns ends in the root served separately.
    assert chain_text.strip().endswith(ca.read_text().strip()), chain_text[:300]


def test_openssl_ec_p256_csr_is_signed_and_verifies(server: Server, tmp_path: Path, imei: str):
    key, csr = openssl_csr(tmp_path, imei)
    body, cert = issue(server, tmp_path, imei, csr)
    check_issued(server, tmp_path, imei, key, body, cert)
    pub = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"


def test_cryptography_rsa2048_csr_is_signed_and_verifies(server: Server, tmp_path: Path, imei: str):
    key, csr = rsa_csr(tmp_path, imei)
    body, cert = issue(server, tmp_path, imei, csr)
    check_issued(server, tmp_path, imei, key, body, cert)
    pub = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048


def assert_problem(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, f"expected HTTP {status}, got {r.status_code}: {r.text}"
    ctype = r.headers.get("content-type", "").split(";")[0].strip()
    assert ctype == PROBLEM_JSON, f"content-type {ctype!r}: {r.text}"
    problem = r.json()
    assert problem.get("status") == status, problem
    assert problem.get("title"), problem
    return problem


@pytest.mark.parametrize(
    "garbage",
    [
        "garbage",
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n",
        "",
    ],
    ids=["not-pem", "pem-not-der", "empty"],
)
def test_garbage_csr_is_a_400_problem(server: Server, imei: str, garbage: str):
    server.register_device(imei)
    assert_problem(sign_csr(server, imei, garbage), 400)


def test_csr_with_a_bad_signature_is_a_400_problem(server: Server, imei: str):
    """A CSR whose self-signature does not verify (proof of possession fails)."""
    server.register_device(imei)
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, imei)]))
        .sign(key, hashes.SHA256())
    )
    der = bytearray(request.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # a bit inside the signature's INTEGER
    pem = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der)).decode()
        + "-----END CERTIFICATE REQUEST-----\n"
    )
    assert_problem(sign_csr(server, imei, pem), 400)


def test_rsa1024_csr_is_a_400_problem(server: Server, tmp_path: Path, imei: str):
    server.register_device(imei)
    openssl("req", "-new", "-newkey", "rsa:1024", "-nodes", "-subj", f"/CN={imei}",
            "-keyout", "k.pem", "-out", "c.pem", cwd=tmp_path)
    assert_problem(sign_csr(server, imei, (tmp_path / "c.pem").read_text()), 400)


def test_csr_requested_extensions_are_not_honoured(server: Server, tmp_path: Path, imei: str):
    """Subject extras, SANs, a server EKU and CA:TRUE asked for in the CSR are ignored."""
    key, csr = tmp_path / "device.key.pem", tmp_path / "device.csr.pem"
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", f"/O=Someone Else/CN={imei}",
        "-addext", "subjectAltName=DNS:evil.example",
        "-addext", "extendedKeyUsage=serverAuth,codeSigning",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-keyout", key.name, "-out", csr.name,
        cwd=tmp_path,
    )
    body, cert = issue(server, tmp_path, imei, csr)
    check_issued(server, tmp_path, imei, key, body, cert)
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    with pytest.raises(x509.ExtensionNotFound):
        parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_csr_for_another_cn_is_a_400_problem(server: Server, tmp_path: Path, imei: str):
    server.register_device(imei)
    other = new_imei()
    _, csr = openssl_csr(tmp_path, other)
    problem = assert_problem(sign_csr(server, imei, csr.read_text()), 400)
    # Nothing was issued for the device.
    r = requests.get(
        server.url(f"/api/v1/devices/{imei}/certificates"), headers=server.admin_headers(), timeout=10
    )
    assert r.status_code == 200, r.text
    listed = r.json()
    items = listed.get("items", listed) if isinstance(listed, dict) else listed
    assert items == [], (problem, listed)


def test_revoked_certificate_fails_openssl_crl_check(server: Server, tmp_path: Path, imei: str):
    key, csr = openssl_csr(tmp_path, imei)
    body, cert = issue(server, tmp_path, imei, csr)
    ca = fetch_ca(server, tmp_path)
    (tmp_path / "chain.pem").write_text(body["ca_chain"])
    verify_crl = (
        "verify", "-crl_check", "-CAfile", ca.name, "-untrusted", "chain.pem",
        "-CRLfile", "crl.pem", cert.name,
    )

    # Before revocation: the CRL is valid, signed by the CA, and does not list the cert.
    fetch_crl(server, tmp_path)
    before = openssl(*verify_crl, cwd=tmp_path, check=False)
    assert before.returncode == 0 and before.stdout.strip() == "cert.pem: OK", before.stdout + before.stderr

    r = requests.post(
        server.url(f"/api/v1/certificates/{body['serial']}/revoke"),
        json={"reason": "key_compromise"},
        headers=server.admin_headers(),
        timeout=10,
    )
    assert r.status_code in (200, 204), f"revoke: HTTP {r.status_code}: {r.text}"

    # After: the fresh CRL lists the serial with its reason, and verify fails.
    crl = fetch_crl(server, tmp_path)
    # The CRL's signature checks out with the issuing CA (the first of the chain).
    openssl("crl", "-in", crl.name, "-noout", "-CAfile", "chain.pem", cwd=tmp_path)
    parsed = x509.load_pem_x509_crl(crl.read_bytes())
    entry = parsed.get_revoked_certificate_by_serial_number(int(body["serial"], 16))
    assert entry is not None, f"serial {body['serial']} not in the CRL"
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise

    after = openssl(*verify_crl, cwd=tmp_path, check=False)
    assert after.returncode != 0, after.stdout + after.stderr
    assert "certificate revoked" in (after.stdout + after.stderr), after.stdout + after.stderr

    # Without -crl_check the chain itself is still fine: the CRL is what rejects it.
    plain = openssl("verify", "-CAfile", ca.name, "-untrusted", "chain.pem", cert.name, cwd=tmp_path)
    assert plain.stdout.strip() == "cert.pem: OK"
