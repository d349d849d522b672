"""The real daemon and ``digit-agent selftest`` with a multi-variant model: choice, health, cache, pin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.broker import Broker, Collector
from tests.helpers.daemon import REPO, AgentProcess, write_config
from tests.helpers.models import make_model, make_variant_set

pytestmark = pytest.mark.integration


def _set(tmp_path: Path) -> Path:
    return make_variant_set(tmp_path / "m", extra={"tiny": make_model(tmp_path / "tiny.onnx")})


def _selftest(cfg: Path, *sets: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "agent", "selftest", "--config", str(cfg)]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_selftest_prints_the_table_and_caches_the_choice(tmp_path: Path, broker: Broker) -> None:
    card = _set(tmp_path)
    cfg = write_config(tmp_path / "c.toml", broker, inference={"model": str(card), "variant_time_s": 0.05})
    first = _selftest(cfg)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].split()[:4] == ["variant", "golden", "p50", "µs"]
    rows = {ln.split()[0]: ln for ln in lines[1:4]}
    assert set(rows) == {"int8", "fp32", "tiny"}
    assert "refused" in rows["tiny"] and "serves" not in rows["tiny"]
    assert "measured now" in first.stdout
    served = next(n for n, ln in rows.items() if ln.endswith("<- serves"))
    version = json.loads(card.read_text())["version"]
    assert f"selftest passed: model digit.{served}.onnx version {version}, variant {served}" in first.stdout
    cache = json.loads((tmp_path / "state" / "variant-choice.json").read_text())
    assert cache["entries"][0]["choice"] == served
    again = _selftest(cfg)  # same files, CPU and runtime: no new measurement
    assert again.returncode == 0 and "cached measurement" in again.stdout and f"variant {served}" in again.stdout
    pinned = _selftest(cfg, "inference.variant=int8")
    assert pinned.returncode == 0 and "pinned by inference.variant" in pinned.stdout
    missing = _selftest(cfg, "inference.variant=int4")
    assert missing.returncode == 1 and "inference.variant = 'int4'" in missing.stderr
    refused = _selftest(cfg, "inference.variant=tiny")
    assert refused.returncode == 1 and "inference.variant = 'tiny': that variant refused" in refused.stderr


def test_daemon_serves_a_variant_and_health_says_which(tmp_path: Path, broker: Broker) -> None:
    card = _set(tmp_path)
    sub = Collector(broker, "digit-agent/dev1/health")
    cfg = write_config(tmp_path / "c.toml", broker, source={"limit": 200},
                       inference={"model": str(card), "variant_time_s": 0.05})
    agent = AgentProcess(cfg)
    assert agent.wait(120) == 0, agent.output()[-3000:]
    assert sub.wait_for(lambda c: len(c.messages) >= 1, 20)
    model = sub.messages[-1].json()["model"]
    assert model["variant"] in ("int8", "fp32") and model["choice"]["how"] == "fastest"
    assert set(model["choice"]["p50_us"]) == {"int8", "fp32"} and "tiny" in model["choice"]["refused"]
    assert Path(model["path"]).name == f"digit.{model['variant']}.onnx"
    sub.close()
