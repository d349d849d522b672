"""MQTT credentials: the password and TLS material come from files, never from config.toml.

A configured file is looked up first in the systemd credentials directory
(``$CREDENTIALS_DIRECTORY/<file name>``, filled by ``LoadCredential=``), then at its configured
path (the loader made it absolute, relative to the config file). Anything missing, unreadable
or malformed raises :class:`CredentialError` at start-up, naming the config key and the file.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from agent.config.schema import MqttConfig

__all__ = ["CredentialError", "Credentials", "load_credentials", "resolve_secret_file"]

_MAX_PASSWORD_BYTES = 65535  # the MQTT string limit


class CredentialError(ValueError):
    """A secret file named in the config cannot be used; the message names the key and file."""


@dataclass(frozen=True)
class Credentials:
    username: Optional[str]
    password: Optional[str]
    tls: Optional[ssl.SSLContext]

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(username={self.username!r}, password={'***' if self.password else None}, " \
               f"tls={self.tls is not None})"


def resolve_secret_file(key: str, configured: str, environ: Optional[Mapping[str, str]] = None) -> Path:
    """The file to read for config key ``key``; raises CredentialError naming every place tried."""
    env = os.environ if environ is None else environ
    tried: list[str] = []
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cand = Path(cred_dir) / Path(configured).name
        if cand.is_file():
            return cand
        tried.append(f"{cand} ($CREDENTIALS_DIRECTORY)")
    path = Path(configured)
    if path.is_file():
        return path
    tried.append(str(path))
    raise CredentialError(f"mqtt.{key}: no such file: {' or '.join(tried)}")


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialError(f"mqtt.{key}: cannot read {path}: {exc.strerror or exc}") from None


def _password(cfg: MqttConfig, environ: Optional[Mapping[str, str]]) -> Optional[str]:
    if not cfg.password_file:
        return None
    path = resolve_secret_file("password_file", cfg.password_file, environ)
    raw = _read("password_file", path)
    # Files written by editors or `echo` end with a newline that is not part of the password.
    raw = raw.rstrip(b"\r\n")
    if not raw:
        raise CredentialError(f"mqtt.password_file: {path} is empty")
    if len(raw) > _MAX_PASSWORD_BYTES:
        raise CredentialError(f"mqtt.password_file: {path} is longer than {_MAX_PASSWORD_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError(f"mqtt.password_file: {path} is not UTF-8 text") from None


def _tls(cfg: MqttConfig, environ: Optional[Mapping[str, str]]) -> Optional[ssl.SSLContext]:
    if not cfg.tls_ca:
        return None
    ca = resolve_secret_file("tls_ca", cfg.tls_ca, environ)
    _read("tls_ca", ca)  # a clear "cannot read" before ssl's terser errors
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise CredentialError(f"mqtt.tls_ca: {ca}: not a usable PEM CA bundle: {exc}") from None
    if cfg.tls_cert:
        cert = resolve_secret_file("tls_cert", cfg.tls_cert, environ)
        key = resolve_secret_file("tls_key", cfg.tls_key, environ)
        _read("tls_cert", cert)
        _read("tls_key", key)
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise CredentialError(
                f"mqtt.tls_cert/tls_key: {cert} with {key}: not a matching PEM certificate and key: {exc}"
            ) from None
    return ctx


def load_credentials(cfg: MqttConfig, environ: Optional[Mapping[str, str]] = None) -> Credentials:
    """Read every secret the config names; raises CredentialError on the first problem."""
    return Credentials(username=cfg.username or None, password=_password(cfg, environ),
                       tls=_tls(cfg, environ))
