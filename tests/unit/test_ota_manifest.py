"""Manifest codec and Ed25519 verification: real keys, real signatures, every refusal reason."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.control.ota.keys import KeyRing, keyid_of, load_keyring, parse_public_key, raw_public
from agent.control.ota.manifest import Limits, ManifestError, open_envelope, parse_envelope, parse_manifest
from tests.helpers.ota import model_bytes, write_pub
from tools.ota.package import PackageSpec, build_manifest, sign

_FUZZ_KEY = Ed25519PrivateKey.generate()
LIMITS = Limits(max_model_bytes=4 << 20, max_chunks=4096, max_chunk_bytes=64 << 10, family="digit-28x28")
NOW = 1_800_000_000
MODEL = model_bytes("good", tag=1)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _kid(k: Ed25519PrivateKey) -> str:
    return keyid_of(raw_public(k.public_key()))


def _envelope(key: Ed25519PrivateKey, **kw: object) -> bytes:
    spec = PackageSpec(job=str(kw.pop("job", "job-1")), version=int(kw.pop("version", 2)),  # type: ignore[call-overload]
                       created=NOW - 10, **kw)  # type: ignore[arg-type]
    return sign(build_manifest(MODEL, spec, _kid(key)), [key])


def test_valid_manifest_opens(key: Ed25519PrivateKey) -> None:
    m = open_envelope(_envelope(key), KeyRing.of(key.public_key()), LIMITS, NOW)
    assert (m.job, m.version, m.size, m.keyid) == ("job-1", 2, len(MODEL), _kid(key))
    assert m.chunk_count == -(-len(MODEL) // m.chunk_size)
    assert m.chunk_len(m.chunk_count - 1) == len(MODEL) - (m.chunk_count - 1) * m.chunk_size
    assert m.input.shape == (None, 1, 28, 28) and m.output.name == "probs"
    assert m.card["version"] == 2


def test_no_trusted_key_refuses(key: Ed25519PrivateKey) -> None:
    with pytest.raises(ManifestError, match="no trusted key"):
        open_envelope(_envelope(key), KeyRing({}), LIMITS, NOW)


def test_unknown_key_refused(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ManifestError, match="unknown key"):
        open_envelope(_envelope(key), KeyRing.of(other.public_key()), LIMITS, NOW)


def test_bad_signature_refused(key: Ed25519PrivateKey) -> None:
    env = json.loads(_envelope(key))
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[5] ^= 1
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(ManifestError, match="bad signature"):
        open_envelope(json.dumps(env).encode(), KeyRing.of(key.public_key()), LIMITS, NOW)


def test_fields_altered_after_signing_refused(key: Ed25519PrivateKey) -> None:
    env = json.loads(_envelope(key))
    body = json.loads(base64.b64decode(env["manifest"]))
    body["gate"]["min_accuracy"] = 0.0
    env["manifest"] = base64.b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(ManifestError, match="bad signature"):
        open_envelope(json.dumps(env).encode(), KeyRing.of(key.public_key()), LIMITS, NOW)


def test_expired_and_future_refused(key: Ed25519PrivateKey) -> None:
    ring = KeyRing.of(key.public_key())
    with pytest.raises(ManifestError, match="expired"):
        open_envelope(_envelope(key, ttl_s=5), ring, LIMITS, NOW)
    with pytest.raises(ManifestError, match="future"):
        open_envelope(_envelope(key), ring, LIMITS, NOW - 3600)


def test_second_signature_by_trusted_key_suffices(key: Ed25519PrivateKey) -> None:
    old, new = Ed25519PrivateKey.generate(), key
    body = build_manifest(MODEL, PackageSpec(job="j", version=3, created=NOW), _kid(new))
    env = sign(body, [old, new])  # old key unknown to this device, new one trusted
    assert open_envelope(env, KeyRing.of(new.public_key()), LIMITS, NOW).version == 3


@pytest.mark.parametrize("override, reason", [
    ({"family": "other-family"}, "incompatible model family"),
    ({"format": 9}, "unsupported manifest format"),
    ({"version": 0}, "version=0 outside"),
    ({"version": "3"}, "version must be an integer"),
    ({"version": True}, "version must be an integer"),
    ({"job": "../etc"}, "job="),
    ({"file": {"size": 10 << 20, "sha256": "0" * 64}}, "file.size"),
    ({"chunks": {"size": 16384, "sha256": ["0" * 64]}}, "chunk hashes for"),
    ({"gate": {"min_accuracy": float("nan"), "max_p99_ms": 5}}, "min_accuracy"),
    ({"keys_revoke": ["xyz"]}, "keys_revoke"),
    ({"card": {"family": "mnist-digit"}}, "card family 'mnist-digit' differs from the manifest's 'digit-28x28'"),
])
def test_invalid_fields_refused(key: Ed25519PrivateKey, override: dict[str, object], reason: str) -> None:
    env = _envelope(key, overrides=override)
    with pytest.raises(ManifestError, match=reason):
        open_envelope(env, KeyRing.of(key.public_key()), LIMITS, NOW)


def test_too_many_chunks_for_device_limit(key: Ed25519PrivateKey) -> None:
    env = _envelope(key, chunk_size=256)
    small = Limits(4 << 20, max_chunks=8, max_chunk_bytes=64 << 10, family="digit-28x28")
    with pytest.raises(ManifestError, match=r"chunks\.sha256 has"):
        open_envelope(env, KeyRing.of(key.public_key()), small, NOW)


@pytest.mark.parametrize("data, reason", [
    (b"{not json", "not UTF-8 JSON"),
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"[1,2]", "expected a JSON object"),
    (b'{"manifest": 5, "signatures": []}', "base64 string"),
    (b'{"manifest": "!!!", "signatures": []}', "not valid base64"),
    (b'{"manifest": "e30=", "signatures": []}', "signatures must be"),
    (b'{"manifest": "e30=", "signatures": [{"keyid": "zz", "sig": "AA=="}]}', "keyid"),
    (b'{"manifest": "e30=", "signatures": [{"keyid": "0123456789abcdef", "sig": 7}]}', "base64"),
])
def test_malformed_envelopes(data: bytes, reason: str) -> None:
    with pytest.raises(ManifestError, match=reason):
        parse_envelope(data, 1 << 20)


def test_oversize_envelope_refused() -> None:
    with pytest.raises(ManifestError, match="too large"):
        parse_envelope(b" " * 2000, 1000)


def test_signed_but_malformed_manifest_refused(key: Ed25519PrivateKey) -> None:
    for body in (b"not json", b"[]", b'{"format": 1}'):
        with pytest.raises(ManifestError, match=r"malformed manifest|missing field"):
            open_envelope(sign(body, [key]), KeyRing.of(key.public_key()), LIMITS, NOW)


def test_keyring_loads_pem_and_raw_and_skips_junk(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    write_pub(tmp_path, key, "pem")
    other = Ed25519PrivateKey.generate()
    (tmp_path / "raw.pub").write_text(base64.b64encode(raw_public(other.public_key())).decode())
    (tmp_path / "junk.pub").write_text("hello")
    ring = load_keyring(str(tmp_path))
    assert set(ring) == {_kid(key), _kid(other)}
    assert len(ring.problems) == 1 and "junk.pub" in ring.problems[0]
    assert len(load_keyring(str(tmp_path / "missing"))) == 0


def test_rotation_file_adds_and_revokes(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    keys, state = tmp_path / "keys", tmp_path / "state"
    write_pub(keys, key)
    state.mkdir()
    new = Ed25519PrivateKey.generate()
    b64 = base64.b64encode(raw_public(new.public_key())).decode()
    (state / "keys.json").write_text(json.dumps({"added": {_kid(new): b64}, "revoked": [_kid(key)]}))
    assert set(load_keyring(str(keys), str(state))) == {_kid(new)}
    with pytest.raises(ValueError):
        parse_public_key(b"AAAA")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_envelope_bytes_never_crash(data: bytes) -> None:
    ring = KeyRing.of(_FUZZ_KEY.public_key())
    with contextlib.suppress(ManifestError):
        open_envelope(data, ring, LIMITS, NOW)


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["format", "job", "version", "family", "requires", "file", "chunks",
                                        "gate", "created", "expires", "keyid", "card", "keys_add"]),
                       _JSONISH, max_size=13))
def test_fuzz_signed_manifest_structures(doc: dict[str, object]) -> None:
    """Signed by a trusted key yet arbitrary: only ManifestError may come out."""
    k = _FUZZ_KEY
    with contextlib.suppress(ManifestError):
        open_envelope(sign(json.dumps(doc).encode(), [k]), KeyRing.of(k.public_key()), LIMITS, NOW)


_VALID_DOC = json.loads(build_manifest(MODEL, PackageSpec(job="j", version=2, created=NOW), "0" * 16))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_VALID_DOC)), st.sampled_from([None, "requires", "file", "chunks", "gate"]),
       _JSONISH)
def test_fuzz_one_field_of_a_valid_manifest(key: str, sub: str | None, value: object) -> None:
    """A valid manifest with one (possibly nested) field replaced by arbitrary JSON."""
    k = _FUZZ_KEY
    doc = json.loads(json.dumps(_VALID_DOC))
    doc["keyid"] = _kid(k)
    if sub and isinstance(doc[sub], dict):
        doc[sub][sorted(doc[sub])[hash(key) % len(doc[sub])]] = value
    else:
        doc[key] = value
    with contextlib.suppress(ManifestError):
        open_envelope(sign(json.dumps(doc).encode(), [k]), KeyRing.of(k.public_key()), LIMITS, NOW)


def _with_variants(variants: Any, size: int = 300) -> bytes:
    import json as _json
    doc = _json.loads(build_manifest(b"x" * size, PackageSpec(job="j", version=2, chunk_size=256,
                                                               overrides={"requires": _REQ}), "0" * 16))
    doc["variants"] = variants
    return _json.dumps(doc).encode()


_LIMITS_V = LIMITS
_REQ = {"onnxruntime": "1.17", "opset": 13, "input": {"name": "input", "shape": [None, 1, 28, 28], "dtype": "float32"},
        "output": {"name": "probs", "shape": [None, 10], "dtype": "float32"}}


def test_variants_are_offsets_into_the_file() -> None:
    h = "ab" * 32
    m = parse_manifest(_with_variants([{"name": "int8", "size": 100, "sha256": h},
                                       {"name": "fp32", "size": 200, "sha256": h}]), _LIMITS_V)
    assert [(v.name, v.offset, v.size) for v in m.variants] == [("int8", 0, 100), ("fp32", 100, 200)]
    assert parse_manifest(_with_variants([{"name": "a", "size": 300, "sha256": h}]), _LIMITS_V).variants[0].size == 300


@pytest.mark.parametrize(("variants", "needle"), [
    ([], r"variants must list 1 to 8"),
    ([{"name": "a", "size": 100, "sha256": "ab" * 32}], r"add up to 100 bytes, file\.size is 300"),
    ([{"name": "a", "size": 150, "sha256": "ab" * 32}, {"name": "a", "size": 150, "sha256": "ab" * 32}],
     r"variants\[1\]\.name 'a' appears twice"),
    ([{"name": "a", "size": 300, "sha256": "AB" * 32}], r"variants\[0\]\.sha256=.* is malformed"),
    ([{"name": "a/b", "size": 300, "sha256": "ab" * 32}], r"variants\[0\]\.name=.* is malformed"),
    ([{"name": "a", "size": 0, "sha256": "ab" * 32}], r"variants\[0\]\.size=0 outside"),
    (["a"], r"variants\[0\] must be an object"),
    ([{"name": str(i), "size": 30, "sha256": "ab" * 32} for i in range(10)], r"variants has 10 items > 8"),
])
def test_bad_variant_lists_are_refused_naming_the_field(variants: Any, needle: str) -> None:
    with pytest.raises(ManifestError, match=needle):
        parse_manifest(_with_variants(variants), _LIMITS_V)


def test_package_reads_a_variant_card_as_one_bundle(tmp_path: Path) -> None:
    import hashlib

    from tools.ota.package import bundle, load_payload
    a, b = model_bytes("good", tag=1), model_bytes("good", tag=2)
    (tmp_path / "m.int8.onnx").write_bytes(a)
    (tmp_path / "m.fp32.onnx").write_bytes(b)
    card = {"version": 3, "variants": [
        {"name": "int8", "file": "m.int8.onnx", "sha256": hashlib.sha256(a).hexdigest()},
        {"name": "fp32", "file": "m.fp32.onnx", "sha256": hashlib.sha256(b).hexdigest()}]}
    (tmp_path / "m.card.json").write_text(json.dumps(card))
    p = load_payload(tmp_path / "m.card.json")
    assert p.data == a + b == bundle(p.variants) and [n for n, _ in p.variants] == ["int8", "fp32"]
    assert p.card == card
    body = build_manifest(p.data, PackageSpec(job="j", version=3, variants=p.variants), "0" * 16)
    m = parse_manifest(body, LIMITS)
    assert [(v.name, v.offset, v.size) for v in m.variants] == [("int8", 0, len(a)), ("fp32", len(a), len(b))]
    assert load_payload(tmp_path / "m.int8.onnx").data == a  # a bare file: one-file job
    (tmp_path / "m.fp32.onnx").write_bytes(a)
    with pytest.raises(ValueError, match=r"variants\[1\] \(fp32\): m\.fp32\.onnx does not match its sha256"):
        load_payload(tmp_path / "m.card.json")
    with pytest.raises(ValueError, match="must be bundle"):
        build_manifest(a, PackageSpec(job="j", version=3, variants=p.variants), "0" * 16)
