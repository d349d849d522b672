"""The benchmark harness's pure parts: graph sizes, percentile summaries, verdicts, pruning, plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.models import make_model
from tools.bench.graph import graph_sizes
from tools.bench.machine import machine_info, summarise_us
from tools.bench.report import plot_frontier, plot_histogram, targets
from tools.bench.zoo import recipe_from_card

REPO = Path(__file__).resolve().parents[2]


def test_graph_sizes_of_a_known_graph(tmp_path: Path) -> None:
    # input [1,1,28,28] f32 -> Flatten (784 f32) -> MatMul with w (784x10) -> (10) -> Softmax (10)
    sizes = graph_sizes(make_model(tmp_path / "m.onnx"))
    assert sizes["weight_bytes"] == 784 * 10 * 4
    # Flatten's input and output are alive together: 2 x 3136 bytes; later nodes hold less.
    assert sizes["peak_activation_bytes"] == 2 * 784 * 4
    assert sizes["largest_tensor_bytes"] == 784 * 4
    assert sizes["file_bytes"] == (tmp_path / "m.onnx").stat().st_size > sizes["weight_bytes"]
    assert sizes["ops"] == ["Flatten", "MatMul", "Softmax"]


def test_summarise_us_percentiles() -> None:
    s = summarise_us(np.arange(1, 1001) * 1000)  # 1..1000 µs
    assert s["n"] == 1000 and s["max_us"] == 1000.0
    assert 499 <= s["p50_us"] <= 501 and 989 <= s["p99_us"] <= 991 and 998 <= s["p999_us"] <= 1000
    assert summarise_us([]) == {"n": 0}


def test_machine_info_names_cpu_and_runtime() -> None:
    m = machine_info()
    assert m["cpu_model"] and m["cpu_count"] >= 1 and m["onnxruntime"]
    assert m["git"] is None or len(m["git"].split("+")[0]) == 12


def test_bench_int8_rows_use_the_shipped_recipe_exactly() -> None:
    card = json.loads((REPO / "models" / "digit.card.json").read_text())
    assert recipe_from_card(card).tag == card["quant_recipe"]


def _doc(p50: float, b1_cpu: float, b4_cpu: float, fps: float, idle: float) -> dict[str, Any]:
    row = {"name": "int8 deployed", "b1_p50_us": p50, "b1_p99_us": 2 * p50, "b1_p999_us": 3 * p50,
           "b1_cpu_us": b1_cpu, "b4_cpu_us_per_frame": b4_cpu}
    same = {"name": "fp32 deployed arch (t12)", "b1_p50_us": 2 * p50}
    return {"frontier": {"rows": [row, same]},
            "e2e": {"throughput_qos0": {"frames_per_s": fps, "rss_bytes": {"start": 50 * 2**20,
                                                                            "100000": 50 * 2**20,
                                                                            "1000000": 52 * 2**20}},
                    "idle": {"cpu_percent": idle}}}


def test_targets_judge_each_limit_in_the_right_direction() -> None:
    good = {t["target"]: t for t in targets(_doc(10.0, 20.0, 5.0, 20000.0, 0.1))}
    assert good["inference p50 (batch 1, int8)"]["met"] is True
    assert good["int8 p50 / fp32 p50 of the same net"]["value"] == 0.5
    assert good["micro-batch 4 frames per CPU-second vs batch 1"]["met"] is True
    assert good["sustained frames/s on one core, QoS 0"]["met"] is True
    assert good["RSS drift 100k → 1M frames"]["met"] is False  # 2 MB > 1 MB
    assert good["frame→result p99 at 500 fps (daemon timestamps)"]["met"] is None  # not measured
    bad = {t["target"]: t for t in targets(_doc(100.0, 20.0, 15.0, 900.0, 3.0))}
    for name in ("inference p50 (batch 1, int8)", "micro-batch 4 frames per CPU-second vs batch 1",
                 "sustained frames/s on one core, QoS 0", "idle CPU"):
        assert bad[name]["met"] is False


def test_prune_keeps_the_strongest_filters() -> None:
    torch = pytest.importorskip("torch")
    from tools.bench.zoo import prune
    from tools.model.net import DigitNet, count_params

    torch.manual_seed(0)
    net = DigitNet("bench-lenet").eval()
    same = prune(net, "bench-lenet", 1.0).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(net(x), same(x), atol=1e-5)  # keep=1 is the identity
        first = next(m for m in net.features if isinstance(m, torch.nn.Conv2d)).weight
        strongest = set(first.abs().sum(dim=(1, 2, 3)).argsort(descending=True)[:16].tolist())
    half = prune(net, "bench-lenet", 0.5)
    assert [m.out_channels for m in half.modules() if isinstance(m, torch.nn.Conv2d)] == [16, 32, 64, 10]
    assert count_params(half) < count_params(net) / 3
    half_first = next(m for m in half.features if isinstance(m, torch.nn.Conv2d)).weight
    kept = {i for i in range(32) if any(torch.equal(first[i], w) for w in half_first)}
    assert kept == strongest


def test_plots_are_written(tmp_path: Path) -> None:
    row = {"name": "a", "mode": "engine", "file_bytes": 14000, "b1_p50_us": 40.0, "accuracy": 0.99}
    fr = {"rows": [row, {**row, "name": "b", "mode": "naive", "b1_p50_us": 80.0}],
          "seed_published": [{"name": "seed", "accuracy": 0.97, "p50_us": 12000.0, "file_kb": 800}]}
    plot_frontier(fr, tmp_path / "f.png")
    rng = np.random.default_rng(0)
    plot_histogram({"replay_500fps": {"frame_age_us_samples": rng.integers(50, 900, 500).tolist()},
                    "serial_100fps": {"e2e_us_samples": rng.integers(200, 3000, 300).tolist()}}, tmp_path / "h.png")
    for name in ("f.png", "h.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_profile_summary_of_collapsed_stacks() -> None:
    from tools.bench.profile import summarise_raw

    raw = ("thread (1): MainThread;run (a.py:1);infer (b.py:2) 60\n"
           "thread (1): MainThread;run (a.py:1);publish (c.py:3) 20\n"
           "thread (2): mqtt-loop;loop (d.py:4) 20\n"
           "garbage line\n")
    s = summarise_raw(raw)
    assert s["samples"] == 100
    assert s["threads"] == [["MainThread", 80.0], ["mqtt-loop", 20.0]]
    assert s["self"][0] == ["infer (b.py:2)", 60.0]
    assert ["run (a.py:1)", 80.0] in s["inclusive"]
    assert summarise_raw("")["samples"] == 0


def test_pi_estimate_scales_kernel_and_python_parts_separately() -> None:
    from tools.bench.report import PI_FACTORS, pi_estimate

    # One int8 row: all of its inference CPU counts as MAC work.
    doc = {"frontier": {"rows": [{"name": "int8 deployed", "b1_p50_us": 50.0, "b1_cpu_us": 40.0, "macs": 10**6}]},
           "e2e": {"throughput_qos0": {"cpu_us_per_frame": 140.0}}}
    rows = {r["board"]: r for r in pi_estimate(doc)}
    assert set(rows) == set(PI_FACTORS)
    for board, f in PI_FACTORS.items():
        r = rows[board]
        assert r["inference_cpu_us"] == round(40.0 * f["kernel"], 1)
        assert r["daemon_cpu_us_per_frame"] == round(40.0 * f["kernel"] + 100.0 * f["python"], 1)
    pi4, pi5 = rows["Raspberry Pi 4 (A72 1.8 GHz)"], rows["Raspberry Pi 5 (A76 2.4 GHz)"]
    assert pi4["max_fps_one_core"] < pi5["max_fps_one_core"]
    assert pi_estimate({}) == []


def test_pi_estimate_separates_fixed_cost_from_mac_work() -> None:
    from tools.bench.report import PI_FACTORS, pi_estimate

    # int8 rows on the line µs = 30 + 10 per M MACs: the deployed (2 M MACs) = 30 fixed + 20 MAC.
    rows = [{"name": "int8 deployed", "b1_p50_us": 50.0, "b1_cpu_us": 50.0, "macs": 2 * 10**6},
            {"name": "int8 tiny", "b1_p50_us": 31.0, "b1_cpu_us": 31.0, "macs": 10**5},
            {"name": "int8 big", "b1_p50_us": 70.0, "b1_cpu_us": 70.0, "macs": 4 * 10**6},
            {"name": "fp32 big", "b1_p50_us": 9.0, "b1_cpu_us": 9.0, "macs": 4 * 10**6}]
    out = pi_estimate({"frontier": {"rows": rows}})
    assert {r["board"] for r in out} == set(PI_FACTORS)
    for r in out:
        f = PI_FACTORS[r["board"]]
        assert (r["fixed_cpu_us"], r["mac_cpu_us"]) == (30.0, 20.0)
        assert r["inference_cpu_us"] == round(30.0 * f["python"] + 20.0 * f["kernel"], 1)


def test_variants_side_by_side_report_served_over_fastest(tmp_path: Path) -> None:
    from tests.helpers.models import make_model, make_variant_set
    from tools.bench.variants import measure_variants, served_variant, variants_table, variants_target

    card = make_variant_set(tmp_path / "set", extra={"tiny": make_model(tmp_path / "tiny.onnx")})
    doc = measure_variants(card, seconds_each=0.05, choice_seconds=0.02)
    rows = {r["name"]: r for r in doc["rows"]}
    assert set(rows) == {"int8", "fp32", "tiny"}
    for r in rows.values():
        assert r["p999_us"] >= r["p99_us"] >= r["p50_us"] > 0 and r["cpu_us"] > 0 and r["runs"] >= 48
    assert not rows["tiny"]["passes"] and not rows["tiny"]["served"]  # refused: never served, never "fastest"
    assert doc["served"] in ("int8", "fp32") and doc["fastest"] in ("int8", "fp32")
    assert doc["served_over_fastest"] >= 1.0  # served passes, so it is at best the fastest of this run
    assert variants_target(doc)["met"] in (True, False)
    table = variants_table(doc)
    assert all(f"| {n} |" in table for n in rows) and "served ÷ fastest" in table
    name, path = served_variant(card, seconds_each=0.02)  # what other benches run as "the served model"
    assert name in ("int8", "fp32") and path == card.parent / f"digit.{name}.onnx"
    single = REPO / "models" / "digit.int8.onnx"
    assert served_variant(single)[1] == single


def test_frontier_lists_every_shipped_variant() -> None:
    from tools.bench.frontier import variant_entries

    card_path = REPO / "models" / "digit.card.json"
    if not card_path.exists():
        pytest.skip("no model-version card (run `make model`)")
    card = json.loads(card_path.read_text())
    entries = variant_entries(REPO / "models")
    assert [e.path.name for e in entries] == [v["file"] for v in card["variants"]]
    assert all(e.path.is_file() and e.mode == "engine" for e in entries)
    assert {e.precision for e in entries} == {"int8", "fp32"}
    assert variant_entries(REPO / "tests") == []  # no card there: no rows
