"""The operator CLI end to end (``python -m tools.ota``) against a real broker and the daemon:
keygen, package, push to a group, watch, and key rotation by a signed update."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.broker import Broker
from tests.helpers.daemon import REPO
from tests.helpers.ota import model_bytes
from tests.helpers.ota_device import CARD, Bench, Device

pytestmark = pytest.mark.integration


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.ota", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_keygen_package_push_watch_and_rotate(tmp_path: Path, broker: Broker) -> None:
    ops = tmp_path / "operator"
    r = _cli("keygen", "--out", str(ops / "old.key"))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((ops / "old.key").stat().st_mode) == 0o600
    old_id = r.stdout.split("key id")[1].split()[0]
    assert _cli("keygen", "--out", str(ops / "old.key")).returncode == 2  # never overwrites
    assert _cli("keygen", "--out", str(REPO / "leak.key")).returncode == 2  # never into the repo
    assert not (REPO / "leak.key").exists()

    bench = Bench(tmp_path, broker, trusted=False, ota={"groups": ["kitchen"]})
    (bench.keys_dir / "old.pub").write_bytes((ops / "old.pub").read_bytes())
    (ops / "card.json").write_text(json.dumps(CARD))
    device = Device(bench.cfg_path)
    conn = ["--host", broker.host, "--port", str(broker.port)]
    try:
        for v in (2, 3, 4):
            (ops / f"v{v}.onnx").write_bytes(model_bytes("good", tag=v))

        def package(v: int, *keys: str, extra: tuple[str, ...] = ()) -> Path:
            out = ops / f"v{v}-{len(keys)}.ota.json"
            args = ["package", "--model", str(ops / f"v{v}.onnx"), "--card", str(ops / "card.json"),
                    "--job", f"job-v{v}-{len(keys)}", "--version", str(v), "--chunk-size", "4096",
                    "--min-accuracy", "0.9", "--max-p99-ms", "20", "--out", str(out), *extra]
            for k in keys:
                args += ["--key", str(ops / k)]
            r = _cli(*args)
            assert r.returncode == 0, r.stderr
            return out

        r = _cli("push", *conn, "--envelope", str(package(2, "old.key")), "--model", str(ops / "v2.onnx"),
                 "--group", "kitchen", "--expect", "1", "--timeout", "60")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "committed" in r.stdout and "100.0 %" in r.stdout and "done: 1/1 committed" in r.stdout
        assert device.engine.model.version == 2

        r = _cli("watch", *conn, "--device", "dev1", "--timeout", "10")  # the retained status
        assert r.returncode == 0 and "committed" in r.stdout, r.stdout + r.stderr

        # rotation: v3 co-signed by old + new, adds new and revokes old once committed
        assert _cli("keygen", "--out", str(ops / "new.key")).returncode == 0
        env3 = package(3, "old.key", "new.key", extra=("--add-key", str(ops / "new.pub"), "--revoke-key", old_id))
        r = _cli("push", *conn, "--envelope", str(env3), "--model", str(ops / "v3.onnx"), "--device", "dev1",
                 "--timeout", "60")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "keys added" in r.stdout and f"revoked {old_id}" in r.stdout

        r = _cli("push", *conn, "--envelope", str(package(4, "old.key")), "--model", str(ops / "v4.onnx"),
                 "--device", "dev1", "--timeout", "30")
        assert r.returncode == 1 and "unknown key" in r.stdout, r.stdout + r.stderr
        r = _cli("push", *conn, "--envelope", str(package(4, "new.key", "new.key")),
                 "--model", str(ops / "v4.onnx"), "--device", "dev1", "--timeout", "60")
        assert r.returncode == 0, r.stdout + r.stderr
        assert device.engine.model.version == 4
    finally:
        device.stop()
        bench.close()
