"""Credentials: files and $CREDENTIALS_DIRECTORY, clear start-up errors, a real password-protected
mosquitto (right and wrong password) and a real TLS listener (server and mutual TLS)."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config.schema import Config, MqttConfig
from agent.publish import CredentialError, Publisher, load_credentials
from tests.helpers.broker import Broker, Collector, free_port
from tests.integration.test_publisher import make_cfg


def _mqtt(**kw: object) -> MqttConfig:
    return dataclasses.replace(MqttConfig(), **kw)  # type: ignore[arg-type]


# -- file resolution (no broker) ----------------------------------------------------------------
def test_missing_password_file_names_key_and_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "mqtt-password"
    with pytest.raises(CredentialError, match=r"mqtt\.password_file: no such file: .*nope/mqtt-password"):
        load_credentials(_mqtt(username="u", password_file=str(missing)), environ={})
    cfg = Config(mqtt=_mqtt(username="u", password_file=str(missing)))
    with pytest.raises(CredentialError, match=r"mqtt\.password_file"):
        Publisher(cfg, threading.Event(), environ={})  # at construction, before any connect


def test_credentials_directory_is_searched_first(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from-systemd\n")
    (tmp_path / "mqtt-password").write_text("from-config-dir\n")
    cfg = _mqtt(username="u", password_file=str(tmp_path / "mqtt-password"))
    got = load_credentials(cfg, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert got.password == "from-systemd" and "from-systemd" not in repr(got)
    # Not in the credentials directory: the configured path is used.
    (creds / "mqtt-password").unlink()
    assert load_credentials(cfg, environ={"CREDENTIALS_DIRECTORY": str(creds)}).password == "from-config-dir"
    # Only in the credentials directory (the config names a file that is not beside it).
    (creds / "pw").write_text("only-here")
    cfg2 = _mqtt(username="u", password_file="/etc/digit-agent/pw")
    assert load_credentials(cfg2, environ={"CREDENTIALS_DIRECTORY": str(creds)}).password == "only-here"
    with pytest.raises(CredentialError, match=r"\$CREDENTIALS_DIRECTORY.* or /etc/digit-agent/pw"):
        load_credentials(_mqtt(username="u", password_file="/etc/digit-agent/pw"),
                         environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_bad_secret_files_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(CredentialError, match=r"mqtt.password_file: .*empty is empty"):
        load_credentials(_mqtt(username="u", password_file=str(empty)), environ={})
    unreadable = tmp_path / "dir-not-file"
    unreadable.mkdir()
    with pytest.raises(CredentialError, match=r"mqtt.password_file: no such file"):
        load_credentials(_mqtt(username="u", password_file=str(unreadable)), environ={})
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    with pytest.raises(CredentialError, match=r"mqtt.tls_ca: .*ca.pem: not a usable PEM"):
        load_credentials(_mqtt(tls_ca=str(junk)), environ={})
    with pytest.raises(CredentialError, match=r"mqtt.tls_ca: no such file"):
        load_credentials(_mqtt(tls_ca=str(tmp_path / "missing.pem")), environ={})


# -- password broker ------------------------------------------------------------------------------
@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Broker]:
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "agent", "s3cret"], check=True,
                   capture_output=True, timeout=30)
    port = free_port()
    extra = f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pwfile}\nuser root\n"
    b = Broker(tmp_path, port=port, extra=extra).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.integration
def test_password_login_works(password_broker: Broker, tmp_path: Path) -> None:
    pw = tmp_path / "agent.pw"
    pw.write_text("s3cret\n")
    col = Collector(password_broker, "digit-agent/dev1/#", username="agent", password="s3cret")
    cfg = make_cfg(password_broker.host, password_broker.port, username="agent", password_file=str(pw))
    pub = Publisher(cfg, threading.Event(), environ={})
    pub.start()
    try:
        assert pub.wait_connected(10), pub.stats()
        pub.publish("result", b'{"seq":1}', qos=1)
        assert col.wait_for(lambda c: len(c.on("/result")) == 1, 10)
    finally:
        pub.stop(3)
        col.close()


@pytest.mark.integration
def test_wrong_password_is_reported_without_crashing(password_broker: Broker, tmp_path: Path) -> None:
    pw = tmp_path / "agent.pw"
    pw.write_text("wrong")
    cfg = make_cfg(password_broker.host, password_broker.port, username="agent", password_file=str(pw))
    pub = Publisher(cfg, threading.Event(), environ={})
    pub.start()
    try:
        pub.publish("result", b"x", qos=1)
        deadline = time.monotonic() + 10
        while int(pub.stats()["connect_failures"] or 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        s = pub.stats()
        assert s["connected"] is False and int(s["connect_failures"] or 0) >= 2  # keeps retrying
        err = str(s["last_error"])
        assert "refused" in err and "mqtt.password_file" in err
        assert s["queued"] == 1 and pub.alive()
    finally:
        pub.stop(1)


# -- TLS broker -----------------------------------------------------------------------------------
def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey]
          | None, ca: bool) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    iname, ikey = issuer if issuer else (name, key)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(iname).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(ikey, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(path.with_suffix(".crt")), str(path.with_suffix(".key"))


@pytest.mark.integration
def test_mutual_tls(tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca=True)
    ca_crt, _ = _write(tmp_path / "ca", ca, ca_key)
    issuer = (ca.subject, ca_key)
    srv_key, cli_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    srv_crt, srv_k = _write(tmp_path / "server", _cert("127.0.0.1", srv_key, issuer, ca=False), srv_key)
    cli_crt, cli_k = _write(tmp_path / "client", _cert("dev1", cli_key, issuer, ca=False), cli_key)
    port, plain = free_port(), free_port()
    extra = (f"listener {plain} 127.0.0.1\nallow_anonymous true\nuser root\n"
             f"listener {port} 127.0.0.1\ncafile {ca_crt}\ncertfile {srv_crt}\nkeyfile {srv_k}\n"
             "require_certificate true\n")
    b = Broker(tmp_path, port=plain, extra=extra).start()
    col = Collector(b, "digit-agent/dev1/#")
    pub = Publisher(make_cfg(b.host, port, tls_ca=ca_crt, tls_cert=cli_crt, tls_key=cli_k),
                    threading.Event(), environ={})
    no_cert = Publisher(make_cfg(b.host, port, tls_ca=ca_crt), threading.Event(), environ={})
    try:
        pub.start()
        no_cert.start()
        assert pub.wait_connected(10), pub.stats()
        pub.publish("result", b'{"seq":1}', qos=1)
        assert col.wait_for(lambda c: len(c.on("/result")) == 1, 10)
        assert not no_cert.stats()["connected"]  # the broker requires a client certificate
        print("no client cert:", no_cert.stats()["last_error"])
        assert no_cert.stats()["last_error"]
    finally:
        pub.stop(3)
        no_cert.stop(1)
        col.close()
        b.stop()
