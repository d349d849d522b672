"""CI smoke test of the benchmark harness: `python -m tools.bench --quick` into a tmp dir.

It checks that the harness runs end to end against the real daemon, mosquitto and ONNX Runtime and
writes valid, complete results. No timing is asserted: this machine's speed is not under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "tools.bench", "--quick", "--out", str(out)]
    try:  # generous: a loaded 2-core machine; the harness's own errors carry the daemon's log tail
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"bench --quick still running after {exc.timeout:g} s; output tail:\n"
                             f"{_text(exc.stdout)[-2000:]}\n{_text(exc.stderr)[-4000:]}") from None
    assert proc.returncode == 0, (f"exit code {proc.returncode}; output tail:\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return out, proc.stdout


def _text(data: object) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data or "")


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(str(path))
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert float(img[..., :3].std()) > 0.01  # something was drawn


def test_quick_writes_json_markdown_and_plots(quick_results: tuple[Path, str]) -> None:
    out, stdout = quick_results
    (js,) = out.glob("*-quick.json")
    doc = json.loads(js.read_text())
    assert doc["quick"] is True
    assert "quick mode" in stdout and "not a benchmark" in stdout
    m = doc["machine"]
    for key in ("cpu_model", "cpu_count", "onnxruntime", "simd_flags", "load_average_start"):
        assert key in m
    md = js.with_suffix(".md").read_text()
    assert "## Frontier" in md and "## End to end" in md and "## Targets" in md
    for suffix in ("-frontier.png", "-latency.png"):
        _png_ok(out / (js.stem + suffix))


def test_quick_frontier_rows_are_complete(quick_results: tuple[Path, str]) -> None:
    out, _ = quick_results
    doc = json.loads(next(out.glob("*-quick.json")).read_text())
    rows = {r["name"]: r for r in doc["frontier"]["rows"]}
    assert set(rows) == {"int8 deployed", "int8 deployed, naive ORT"}
    assert rows["int8 deployed"]["mode"] == "engine" and rows["int8 deployed, naive ORT"]["mode"] == "naive"
    assert doc["frontier"]["test_images"] == 10000
    for r in rows.values():
        assert r["accuracy"] > 0.9  # the shipped model on the full test set through the daemon's path
        assert 0 < r["weight_bytes"] < r["file_bytes"] <= 16 * 1024
        assert r["peak_activation_bytes"] >= 28 * 28 * 4
        assert 0 < r["b1_p50_us"] <= r["b1_p99_us"] <= r["b1_p999_us"] <= r["b1_max_us"]
        assert r["b1_cpu_us"] > 0 and r["b4_cpu_us_per_frame"] > 0
        assert r["rss_after_load_bytes"] > r["rss_model_delta_bytes"] > 0
    assert len(doc["frontier"]["seed_published"]) == 4


def test_quick_e2e_sections_are_complete(quick_results: tuple[Path, str]) -> None:
    out, _ = quick_results
    e2e = json.loads(next(out.glob("*-quick.json")).read_text())["e2e"]
    for qos in (0, 1):
        t = e2e[f"throughput_qos{qos}"]
        assert t["qos"] == qos and t["frames"] > 0 and t["frames_per_s"] > 0 and t["cpu_us_per_frame"] > 0
        assert t["rss_bytes"]["start"] > 0
    for key, sent in (("replay_100fps", 300), ("replay_500fps", 1500), ("serial_100fps", 300)):
        r = e2e[key]
        assert 0 < r["results"] <= sent
        assert r["frame_age"]["n"] == r["results"] and r["frame_age"]["p50_us"] > 0
    sub = e2e["serial_100fps"]["frame_to_subscriber"]
    assert sub["n"] > 0 and sub["p50_us"] > 0  # sender → pty → daemon → mosquitto → subscriber
    assert 0 <= e2e["idle"]["cpu_percent"] < 100 and e2e["idle"]["window_s"] > 0


def test_quick_targets_have_verdicts(quick_results: tuple[Path, str]) -> None:
    out, _ = quick_results
    targets = json.loads(next(out.glob("*-quick.json")).read_text())["targets"]
    names = {t["target"] for t in targets}
    assert {"inference p50 (batch 1, int8)", "sustained frames/s on one core, QoS 0", "idle CPU",
            "served variant p50 ÷ fastest variant p50"} <= names
    for t in targets:
        assert t["met"] in (True, False, None)
        if t["value"] is not None:
            assert t["met"] is not None


def test_quick_per_frame_side_by_side_is_complete(quick_results: tuple[Path, str]) -> None:
    """The daemon, the naive script and the bare model measured in the same run, and the four
    plumbing ratios present with a verdict each (values only sane: finite and positive)."""
    import math

    out, stdout = quick_results
    doc = json.loads(next(out.glob("*-quick.json")).read_text())
    pf = doc["e2e"]["per_frame"]
    assert pf["rounds"] == len(pf["daemon"]["rounds"]) == len(pf["naive"]["rounds"]) == len(pf["hotloop_rounds"])
    for who in ("daemon", "naive"):
        assert pf[who]["cpu_us_per_frame"] > 0 and pf[who]["frames_per_s"] > 0
    pieces = pf["pieces_cpu_us"]
    for key in ("inference", "preprocess_28px", "preprocess_40px", "preprocess_64px", "encode", "serial_decode"):
        assert math.isfinite(pieces[key]) and pieces[key] > 0, key
    assert 0 < pf["inference_p50_us"] <= pf["inference_p99_us"]
    for key in ("daemon_over_inference", "daemon_over_naive"):
        per_round = pf["ratios"][f"{key}_rounds"]
        assert len(per_round) == pf["rounds"] and all(math.isfinite(r) and r > 0 for r in per_round)
        assert min(per_round) <= pf["ratios"][key] <= max(per_round)
    ratios = {t["target"]: t for t in doc["targets"] if t["unit"] == "×" and "÷" in t["target"]}
    wanted = ["daemon CPU per frame ÷ bare inference", "daemon CPU per frame ÷ naive script's",
              "frame→result p99 at 100 fps ÷", "frame→result p99 at 500 fps ÷", "preprocessing 28×28 px ÷",
              "preprocessing 40×40 px ÷", "preprocessing 64×64 px ÷"]
    for prefix in wanted:
        (t,) = [t for name, t in ratios.items() if name.startswith(prefix)]
        assert t["value"] is not None and math.isfinite(t["value"]) and t["value"] > 0, t
        assert t["met"] is (t["value"] <= t["limit"])
        assert t["target"] in stdout
    md = next(out.glob("*-quick.md")).read_text()
    assert "## CPU per frame: daemon, naive script, bare model" in md and "naive script" in md
    assert "decoder CPU µs/frame" in md
