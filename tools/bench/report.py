"""Markdown tables, target verdicts and PNG plots from a result document (pure: dict in, files out)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tools.bench.plots import plot_frontier, plot_histogram  # the figures are drawn in plots.py

__all__ = ["PI_FACTORS", "frontier_table", "perframe_table", "pi_estimate", "plot_frontier", "plot_histogram",
           "plumbing_targets", "targets", "write_markdown"]

_KB = 1024


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def frontier_table(frontier: dict[str, Any]) -> str:
    header = ["model", "run as", "acc %", "file KB", "weights KB", "peak act. KB", "b1 p50 µs", "b1 p99 µs",
              "b1 p99.9 µs", "b1 max µs", "b4 µs/frame p50", "b4 p99", "CPU µs/inf b1", "CPU µs/frame b4",
              "RSS MB after load"]
    rows = [[r["name"], r["mode"], round(r["accuracy"] * 100, 2), r["file_bytes"] / _KB, r["weight_bytes"] / _KB,
             r["peak_activation_bytes"] / _KB, r["b1_p50_us"], r["b1_p99_us"], r["b1_p999_us"], r["b1_max_us"],
             r["b4_frame_p50_us"], r["b4_frame_p99_us"], r["b1_cpu_us"], r["b4_cpu_us_per_frame"],
             r["rss_after_load_bytes"] / 2**20] for r in frontier["rows"]]
    rows += [[s["name"], "published", s["accuracy"] * 100, float(s["file_kb"]), None, None, s["p50_us"], None,
              None, None, None, None, None, None, None] for s in frontier["seed_published"]]
    return _table(header, rows)


# Slow-down of a Pi core vs the bench machine's core, per kind of work (assumptions, see
# docs/benchmarks.md): "kernel" = int8 conv MAC throughput (peak MACs/cycle x clock: x86 AVX2
# vpmaddubsw 64/cycle at the bench clock; A72 NEON without dot-product ~8/cycle at 1.8 GHz; A76
# with SDOT/UDOT 32/cycle at 2.4 GHz); "python" = scalar single-thread speed (interpreter work:
# preprocessing, JSON, MQTT, thread hand-offs), Pi 5 assumed 2x slower than the bench core and
# Pi 4 a further 2.27x (published sysbench single-thread ratio Pi 5 / Pi 4: 1847 / 812 events/s).
PI_FACTORS = {"Raspberry Pi 4 (A72 1.8 GHz)": {"kernel": 64 * 2.45 / (8 * 1.8), "python": 2.0 * 2.27},
              "Raspberry Pi 5 (A76 2.4 GHz)": {"kernel": 64 * 2.45 / (32 * 2.4), "python": 2.0}}


def _int8_cost_split(rows: Sequence[dict[str, Any]], dep: dict[str, Any]) -> tuple[float, float]:
    """The deployed model's batch-1 CPU µs as (fixed per-run part, part proportional to conv MACs),
    from a least-squares line through the int8 rows (µs = a + b·MACs). ORT's per-run and per-node
    costs are interpreter-like work, not MAC throughput, so they must not scale with MAC peaks.
    With fewer than two int8 rows of different size (quick mode) everything counts as MAC work."""
    pts = [(float(r["macs"]), float(r["b1_cpu_us"])) for r in rows
           if r["name"].startswith("int8") and r.get("mode") != "naive" and r.get("macs") and r.get("b1_cpu_us")]
    total = float(dep["b1_cpu_us"])
    if len({m for m, _ in pts}) < 2:
        return 0.0, total
    macs, us = np.array([m for m, _ in pts]), np.array([u for _, u in pts])
    slope = max(float(np.polyfit(macs, us, 1)[0]), 0.0)
    mac_part = min(slope * float(dep["macs"]), total)
    return total - mac_part, mac_part


def pi_estimate(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-frame figures scaled to a Pi: the MAC-proportional part of inference by MAC throughput,
    ORT's fixed per-run cost and the daemon's Python work by scalar speed."""
    frontier = doc.get("frontier", {"rows": []})
    dep = _row(frontier, "int8 deployed")
    tput = (doc.get("e2e") or {}).get("throughput_qos0")
    if not dep:
        return []
    fixed_us, mac_us = _int8_cost_split(frontier["rows"], dep)
    kernel_us = float(dep["b1_cpu_us"])  # = fixed_us + mac_us
    frame_cpu = float(tput["cpu_us_per_frame"]) if tput else None
    wall_per_cpu = float(dep["b1_p50_us"]) / kernel_us if kernel_us else 1.0
    out = []
    for board, f in PI_FACTORS.items():
        inf = fixed_us * f["python"] + mac_us * f["kernel"]
        row: dict[str, Any] = {"board": board, "inference_p50_us": round(inf * wall_per_cpu, 1),
                               "inference_cpu_us": round(inf, 1), "fixed_cpu_us": round(fixed_us, 1),
                               "mac_cpu_us": round(mac_us, 1)}
        if frame_cpu is not None:
            per_frame = inf + max(frame_cpu - kernel_us, 0.0) * f["python"]
            row.update(daemon_cpu_us_per_frame=round(per_frame, 1), max_fps_one_core=round(1e6 / per_frame))
        out.append(row)
    return out


def _row(frontier: dict[str, Any], name: str) -> Optional[dict[str, Any]]:
    return next((r for r in frontier["rows"] if r["name"] == name), None)


def _get(d: Optional[dict[str, Any]], key: str) -> Optional[float]:
    v = d.get(key) if d else None
    return None if v is None else float(v)


def _verdict(name: str, value: Optional[float], limit: float, higher_ok: bool = False,
             unit: str = "") -> dict[str, Any]:
    met = None if value is None else (value >= limit if higher_ok else value <= limit)
    return {"target": name, "value": value, "limit": limit, "unit": unit, "met": met}


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each issue target, the measured value and whether it was met (None = not measured)."""
    fr, e2e = doc.get("frontier", {}), doc.get("e2e", {})
    dep = _row(fr, "int8 deployed") if fr else None
    same = next((r for r in fr.get("rows", []) if r["name"].startswith("fp32 deployed arch")), None)
    ratio = round(dep["b1_p50_us"] / same["b1_p50_us"], 3) if dep and same else None
    b4_gain = round(dep["b1_cpu_us"] / dep["b4_cpu_us_per_frame"], 2) if dep else None
    out = [
        _verdict("inference p50 (batch 1, int8)", _get(dep, "b1_p50_us"), 15, unit="µs"),
        _verdict("inference p99 (batch 1, int8)", _get(dep, "b1_p99_us"), 30, unit="µs"),
        _verdict("inference p99.9 (batch 1, int8)", _get(dep, "b1_p999_us"), 60, unit="µs"),
        _verdict("int8 p50 / fp32 p50 of the same net", ratio, 1.0, unit="×"),
        _verdict("micro-batch 4 frames per CPU-second vs batch 1", b4_gain, 2.0, higher_ok=True, unit="×"),
    ]
    r500 = e2e.get("replay_500fps")
    out.append(_verdict("frame→result p99 at 500 fps (daemon timestamps)",
                        _get(r500 and r500["frame_age"], "p99_us"), 500, unit="µs"))
    t0 = e2e.get("throughput_qos0")
    out.append(_verdict("sustained frames/s on one core, QoS 0", _get(t0, "frames_per_s"), 10000,
                        higher_ok=True, unit="fps"))
    rss = (t0 or {}).get("rss_bytes", {})
    peak = round(max(rss.values()) / 2**20, 1) if rss else None
    out.append(_verdict("RSS", peak, 64, unit="MB"))
    if "1000000" in rss and "100000" in rss:
        out.append(_verdict("RSS drift 100k → 1M frames", round((rss["1000000"] - rss["100000"]) / 2**20, 2), 1,
                            unit="MB"))
    out.append(_verdict("idle CPU", _get(e2e.get("idle"), "cpu_percent"), 0.5, unit="%"))
    if doc.get("variants"):
        from tools.bench.variants import variants_target
        out.append(variants_target(doc["variants"]))
    return out + plumbing_targets(e2e)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 3) if a is not None and b else None


def plumbing_targets(e2e: dict[str, Any]) -> list[dict[str, Any]]:
    """The daemon's cost per frame against its model's and against the naive script's, all from the
    side-by-side ``per_frame`` section (one core, same run), and latency under load against the
    hot-loop inference p99 of the same run."""
    pf = e2e.get("per_frame")
    if not pf:
        return []
    pieces = pf["pieces_cpu_us"]
    inf = _get(pieces, "inference")
    daemon = _get(pf["daemon"], "cpu_us_per_frame")
    paired = pf.get("ratios") or {}  # median of per-round ratios; older files: ratio of medians
    out = [_verdict("daemon CPU per frame ÷ bare inference CPU (QoS 0, one core)",
                    _get(paired, "daemon_over_inference") or _ratio(daemon, inf), 2.0, unit="×"),
           _verdict("daemon CPU per frame ÷ naive script's (same core, broker, model)",
                    _get(paired, "daemon_over_naive") or _ratio(daemon, _get(pf["naive"], "cpu_us_per_frame")),
                    0.5, unit="×")]
    p99 = _get(pf, "inference_p99_us")
    for rate in (100, 500):
        r = e2e.get(f"replay_{rate}fps")
        out.append(_verdict(f"frame→result p99 at {rate} fps ÷ hot-loop inference p99",
                            _ratio(_get(r and r["frame_age"], "p99_us"), p99), 3.0, unit="×"))
    for side in (28, 40, 64):
        out.append(_verdict(f"preprocessing {side}×{side} px ÷ inference (CPU per frame)",
                            _ratio(_get(pieces, f"preprocess_{side}px"), inf), 0.25, unit="×"))
    return out


def perframe_table(e2e: dict[str, Any]) -> str:
    """CPU µs per frame of the daemon, the naive script and each piece, and × the bare inference."""
    pf = e2e.get("per_frame")
    if not pf:
        return ""
    p = pf["pieces_cpu_us"]
    inf = float(p["inference"])
    sub = (e2e.get("serial_100fps") or {}).get("frame_to_subscriber") or {}
    rows: list[list[Any]] = [
        ["daemon, QoS 0 flat out (replay)", pf["daemon"]["cpu_us_per_frame"], pf["daemon"]["frames_per_s"]],
        ["… its main thread (ring, preprocess, inference, encode, send)", pf["daemon"].get("main_thread_us_per_frame"),
         None],
        ["… its other threads (replay source, MQTT loop, health)", pf["daemon"].get("other_threads_us_per_frame"),
         None],
        ["naive script (ORT 1 thread, numpy, json.dumps, paho)", pf["naive"]["cpu_us_per_frame"],
         pf["naive"]["frames_per_s"]],
        ["bare inference, served model, hot loop (batch 1)", inf, None],
    ]
    rows += [[f"preprocessing {s}×{s} px", p.get(f"preprocess_{s}px"), None] for s in (28, 40, 64)]
    rows.append(["result encoder", p.get("encode"), None])
    rows.append(["serial decoder, 28×28 frame (pure Python)", p.get("serial_decode"), None])
    if "serial_decode_cobs_package" in p:
        rows.append(["serial decoder, the cobs package (reference)", p["serial_decode_cobs_package"], None])
    for r in rows:
        r.append(round(float(r[1]) / inf, 2) if r[1] is not None and inf else None)
    paired = pf.get("ratios") or {}
    rounds = (f" (the verdicts on the daemon's ratios use the median of each round's ratio: "
              f"{paired['daemon_over_inference']}× the model, {paired['daemon_over_naive']}× the naive script)"
              if paired else "")
    text = (f"\nSide by side on CPU {pf['pinned_cpus']}, model file {pf.get('model')}: {pf['rounds']} rounds of "
            f"{pf['window_s']} s each, medians{rounds}. Hot-loop inference p50 "
            f"{pf['inference_p50_us']} µs, p99 {pf['inference_p99_us']} µs; frame→subscriber p99 over the pty "
            f"at 100 fps: {sub.get('p99_us')} µs.\n")
    quiet = [(who, pf[who].get("least_preempted_round")) for who in ("daemon", "naive")]
    if all(q for _, q in quiet):
        text += ("Least disturbed round (fewest involuntary context switches per frame: other processes taking "
                 "the core): " + "; ".join(f"{who} {q['cpu_us_per_frame']} µs/frame at {q['preempted_per_frame']} "
                                             "preemptions/frame" for who, q in quiet) + ".\n")
    text += "\n"
    return text + _table(["per frame", "CPU µs", "frames/s", "× bare inference"],
                         [[r[0], r[1], r[2], r[3]] for r in rows])


def _e2e_tables(e2e: dict[str, Any]) -> str:
    rows = []
    for key in ("throughput_qos0", "throughput_qos1"):
        t = e2e.get(key)
        if t:
            rows.append([key, t["frames_per_s"], t["cpu_us_per_frame"], t["cpu_percent_of_one_core"], t["frames"],
                         (t["health_last"].get("mqtt") or {}).get("dropped")])
    text = _table(["run", "frames/s", "CPU µs/frame", "CPU % of one core", "frames", "outbox dropped"], rows)
    lat = []
    decoder = ((e2e.get("per_frame") or {}).get("pieces_cpu_us") or {}).get("serial_decode")
    for key in ("replay_100fps", "replay_500fps", "serial_100fps"):
        r = e2e.get(key)
        if r:
            fa, inf = r["frame_age"], r["inference"]
            sub = r.get("frame_to_subscriber", {})
            frames = (r.get("health_last") or {}).get("frames") or {}
            lat.append([key, r["results"], fa.get("p50_us"), fa.get("p99_us"), fa.get("max_us"), inf.get("p50_us"),
                        inf.get("p99_us"), sub.get("p50_us"), sub.get("p99_us"), sub.get("max_us"),
                        r["deadline_missed"], frames.get("dropped_stale"),
                        decoder if key.startswith("serial") else None])
    text += "\n" + _table(["run", "results", "frame→result p50 µs", "p99", "max", "inference p50 µs", "p99",
                           "frame→subscriber p50 µs", "p99", "max", "deadline misses", "stale dropped",
                           "decoder CPU µs/frame"], lat)
    long = e2e.get("throughput_qos0") or {}
    inf = (long.get("health_last") or {}).get("inference") or {}
    if inf:
        text += (f"\nLongest run (QoS 0 flat out, {long.get('frames'):,} frames in the window): "
                 f"{inf.get('inferences')} inferences, {inf.get('deadline_misses')} deadline misses, "
                 f"{inf.get('aborted')} aborted.\n")
    return text


def write_markdown(doc: dict[str, Any], path: Path, images: dict[str, str]) -> str:
    m = doc["machine"]
    parts = [f"# Benchmark {doc['date']} on {m['host']}\n",
             f"CPU: {m['cpu_model']} ({m['cpu_count']} cores; SIMD {', '.join(m['simd_flags'])}); "
             f"onnxruntime {m['onnxruntime']}; Python {m['python']}; load average at start "
             f"{m['load_average_start']}, at end {doc.get('load_average_end')}.\n",
             f"Mode: {'quick' if doc['quick'] else 'full'}. {doc.get('frontier', {}).get('note', '')}\n"]
    if "frontier" in doc:
        parts += ["## Frontier\n", frontier_table(doc["frontier"])]
    if "e2e" in doc:
        parts += ["\n## End to end (daemon + mosquitto)\n", _e2e_tables(doc["e2e"])]
        if doc["e2e"].get("per_frame"):
            parts += ["\n## CPU per frame: daemon, naive script, bare model\n", perframe_table(doc["e2e"])]
        idle = doc["e2e"].get("idle")
        if idle:
            parts.append(f"\nIdle: {idle['cpu_percent']} % CPU over {idle['window_s']} s, "
                         f"RSS {idle['rss_bytes'] / 2**20:.1f} MB.\n")
    if doc.get("variants"):
        from tools.bench.variants import variants_table
        parts += ["\n## Model variants on this CPU\n", variants_table(doc["variants"])]
    parts += ["\n## Targets\n", _table(["target", "measured", "limit", "met"],
                                       [[t["target"], f"{_fmt(t['value'])} {t['unit']}", f"{t['limit']} {t['unit']}",
                                         {True: "yes", False: "**no**", None: "not measured"}[t["met"]]]
                                        for t in doc["targets"]])]
    pi = pi_estimate(doc)
    if pi:
        parts += ["\n## Raspberry Pi estimate (scaled, not measured)\n",
                  _table(["board", "inference p50 µs", "inference CPU µs", "daemon CPU µs/frame", "max frames/s"],
                         [[p["board"], p["inference_p50_us"], p["inference_cpu_us"], p.get("daemon_cpu_us_per_frame"),
                           p.get("max_fps_one_core")] for p in pi])]
    parts += [f"\n![{k}]({v})\n" for k, v in images.items()]
    text = "\n".join(parts)
    path.write_text(text, encoding="utf-8")
    return text
