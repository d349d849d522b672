"""The benchmark's and the soak's figures, each drawn to answer one question at a glance.

* Frontier — which model gives the most accuracy for the least latency? Every point visible: the
  legend stands outside the axes and the crowded corner (our models, within a few µs and tenths of
  a percent) is repeated, numbered, in a zoomed inset.
* Latency — does the daemon meet its deadline, and how far is the tail? ECDF (left) and the
  exceedance 1 − ECDF on a log axis (right, where p99 and p99.9 are readable), with the deadline,
  p50 and p99 marked for every series. Runs recorded before the samples were kept as quantiles
  carry only p50/p99/p99.9/max: those points are drawn, marked "summary".
* Soak — does memory drift, and do latency or misses degrade over a long run? RSS change after the
  warm-up with a least-squares slope, the per-interval p99 inference latency, and the deadline
  misses per interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = ["QUANTILE_PROBS", "latency_series", "plot_frontier", "plot_histogram", "plot_soak", "quantiles"]

_KB = 1024
# What a result file keeps of a latency sample set: enough to redraw the ECDF and read its tail.
QUANTILE_PROBS: tuple[float, ...] = (*(i / 100 for i in range(100)), 0.995, 0.999, 0.9995, 0.9999, 1.0)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def quantiles(samples: Any) -> list[float]:
    """The samples at :data:`QUANTILE_PROBS` (µs, rounded to 0.1)."""
    d = np.asarray(samples, dtype=np.float64)
    return [round(float(q), 1) for q in np.quantile(d, QUANTILE_PROBS)] if len(d) else []


# --- frontier -------------------------------------------------------------------------------------

def _area(kb: float) -> float:
    return float(np.clip(kb, 2, None) ** 0.5 * 10 + 20)  # the smallest model stays visible


def plot_frontier(frontier: dict[str, Any], path: Path) -> None:
    """Accuracy vs batch-1 p50 latency (log); marker area ~ sqrt(model bytes); seed's figures hollow grey."""
    plt = _plt()
    from matplotlib.ticker import FuncFormatter

    rows = frontier["rows"]
    seeds = frontier.get("seed_published", [])
    colors = plt.get_cmap("tab10").colors
    fig = plt.figure(figsize=(12, 6))
    ax = fig.add_axes((0.07, 0.1, 0.55, 0.82))

    best = max(r["accuracy"] for r in rows) * 100
    crowd = [r for r in rows if r["accuracy"] * 100 >= best - 1.5]  # the crowded corner, zoomed below
    zoom = len(crowd) >= 3

    def draw(axis: Any, numbered: bool) -> None:
        for i, r in enumerate(rows):
            kb = r["file_bytes"] / _KB
            axis.scatter(r["b1_p50_us"], r["accuracy"] * 100, s=_area(kb), color=colors[i % 10], alpha=0.85,
                         edgecolors="black", linewidths=0.6, marker="o" if r["mode"] == "engine" else "s",
                         label=f"{i + 1}  {r['name']}: {r['accuracy'] * 100:.2f} %, {r['b1_p50_us']:.1f} µs, "
                               f"{kb:,.1f} KB" if not numbered else None, zorder=3)
            if numbered or (zoom and r not in crowd):
                axis.annotate(str(i + 1), (r["b1_p50_us"], r["accuracy"] * 100), fontsize=8, weight="bold",
                              xytext=(5, 4), textcoords="offset points", zorder=4)

    draw(ax, numbered=False)
    for s in seeds:
        ax.scatter(s["p50_us"], s["accuracy"] * 100, s=_area(s["file_kb"]), facecolors="none", edgecolors="grey",
                   label=f"{s['name']}: {s['accuracy'] * 100:.1f} %, {s['p50_us']:,.0f} µs, {s['file_kb']:,} KB")
        ax.annotate(s["name"].replace("seed: ", ""), (s["p50_us"], s["accuracy"] * 100), fontsize=7, color="grey",
                    xytext=(0, -16), textcoords="offset points", ha="center")
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency p50 (µs, log)")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_title("Accuracy vs latency: up and left is better", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    xs = [r["b1_p50_us"] for r in rows] + [s["p50_us"] for s in seeds]
    ys = [r["accuracy"] * 100 for r in rows] + [s["accuracy"] * 100 for s in seeds]
    ax.set_xlim(min(xs) / 2.5, max(xs) * 2.5)
    ax.set_ylim(min(ys) - 1.0, 100.3)

    if zoom:
        cx = [r["b1_p50_us"] for r in crowd]
        cy = [r["accuracy"] * 100 for r in crowd]
        inset = ax.inset_axes((0.2, 0.1, 0.38, 0.5))
        draw(inset, numbered=True)
        inset.set_xscale("log")
        inset.set_xlim(min(cx) / 1.15, max(cx) * 1.25)
        inset.set_ylim(min(cy) - 0.15, max(cy) + 0.15)
        inset.tick_params(labelsize=7, which="both")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        inset.xaxis.set_major_formatter(plain)
        inset.xaxis.set_minor_formatter(plain)
        inset.grid(True, which="both", alpha=0.3)
        inset.set_title("zoom: numbered as in the legend", fontsize=7)
        ax.indicate_inset_zoom(inset, edgecolor="grey")
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7.5, frameon=False, borderaxespad=0,
                       title="this project (circle: engine, square: naive ORT; area ~ sqrt(file size))\n"
                             "grey hollow: the seed's published figures", title_fontsize=7.5)
    legend._legend_box.align = "left"
    for handle in legend.legend_handles:
        handle.set_sizes([40])  # the file size is in the text; equal markers keep the list readable
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- latency --------------------------------------------------------------------------------------

def latency_series(e2e: dict[str, Any]) -> list[dict[str, Any]]:
    """Per series: ``label``, and ``samples`` (sorted µs), or ``quantiles`` at :data:`QUANTILE_PROBS`, or
    ``summary`` (p50/p99/p99.9/max) — the best the result file holds."""
    specs = [(f"replay {k.split('_')[1]}: frame→result", k, "frame_age_us", "frame_age")
             for k in ("replay_100fps", "replay_500fps")]
    specs.append(("serial pty 100 fps: frame→subscriber", "serial_100fps", "e2e_us", "frame_to_subscriber"))
    out = []
    for label, key, stem, summary_key in specs:
        run = e2e.get(key)
        if not isinstance(run, dict):
            continue
        s: dict[str, Any] = {"label": label}
        if run.get(f"{stem}_samples"):
            s["samples"] = np.sort(np.asarray(run[f"{stem}_samples"], dtype=np.float64))
        elif run.get(f"{stem}_quantiles"):
            s["quantiles"] = np.asarray(run[f"{stem}_quantiles"], dtype=np.float64)
        elif isinstance(run.get(summary_key), dict):
            s["summary"] = run[summary_key]
        else:
            continue
        out.append(s)
    return out


def _curve(s: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float, float, str]:
    """x (µs), ECDF y, p50, p99 and a note for the legend."""
    if "samples" in s:
        x = s["samples"]
        y = np.arange(1, len(x) + 1) / len(x)
        return x, y, float(np.quantile(x, 0.5)), float(np.quantile(x, 0.99)), f"n={len(x)}"
    if "quantiles" in s:
        x = s["quantiles"]
        y = np.asarray(QUANTILE_PROBS[:len(x)])
        return x, y, float(np.interp(0.5, y, x)), float(np.interp(0.99, y, x)), "recorded quantiles"
    m = s["summary"]
    n = m.get("n") or 0
    top = 1 - 1 / n if n else 1.0  # the slowest of n frames: 1/n of them are at it, none slower
    pts = [(m.get("p50_us"), 0.5), (m.get("p99_us"), 0.99), (m.get("p999_us"), 0.999), (m.get("max_us"), top)]
    # A quantile finer than 1/n is an interpolation between the last samples: not drawn.
    pts = [(float(v), p) for v, p in pts if v is not None and (p < top or p == pts[-1][1])]
    x = np.array([v for v, _ in pts])
    y = np.array([p for _, p in pts])
    return x, y, float(m["p50_us"]), float(m["p99_us"]), f"summary only, n={m.get('n', '?')}"


def plot_histogram(e2e: dict[str, Any], path: Path) -> None:
    """ECDF and exceedance of the end-to-end latencies, deadline/p50/p99 marked (name kept for callers)."""
    plt = _plt()
    series = latency_series(e2e)
    deadline_us = float(e2e.get("deadline_ms") or 0) * 1000
    colors = plt.get_cmap("tab10").colors
    fig, (ax, tail) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, s in enumerate(series):
        x, y, p50, p99, note = _curve(s)
        c = colors[i % 10]
        summary = "summary" in s
        style = {"color": c, "lw": 1.4, "ls": ":" if summary else "-", "marker": "o" if summary else None, "ms": 4}
        label = f"{s['label']} ({note}): p50 {p50 / 1000:.2f} ms, p99 {p99 / 1000:.2f} ms"
        exceed = np.clip(1 - y, 1e-5, None)
        if summary:  # four recorded points, not a distribution: joined only to be read together
            ax.plot(x, y, label=label, **style)
            tail.plot(x, exceed, **style)
        else:
            ax.step(x, y, where="post", label=label, **style)
            tail.step(x, exceed, where="post", **style)
        for a, (v, p) in ((ax, (p50, 0.5)), (ax, (p99, 0.99)), (tail, (p99, 0.01))):
            a.plot([v], [p], marker="D" if p in (0.99, 0.01) else "o", color=c, ms=6, mec="black", zorder=4)
    for a in (ax, tail):
        a.set_xscale("log")
        a.grid(True, which="both", alpha=0.3)
        a.set_xlabel("latency (µs, log)")
        if deadline_us:
            a.axvline(deadline_us, color="red", lw=1.2, ls="--")
    if deadline_us:
        ax.text(deadline_us, 0.02, f" deadline {deadline_us / 1000:g} ms", color="red", fontsize=8)
    ax.axhline(0.5, color="grey", lw=0.6)
    ax.axhline(0.99, color="grey", lw=0.6)
    ax.set_ylabel("fraction of frames at or below")
    ax.set_ylim(0, 1.02)
    ax.set_title("ECDF (circle p50, diamond p99)", fontsize=10)
    tail.set_yscale("log")
    n_max = max((len(s.get("samples", ())) or int(s.get("summary", {}).get("n") or 0) for s in series), default=0)
    tail.set_ylim(min(1e-4, 0.5 / n_max) if n_max else 1e-4, 1.2)  # the slowest frame stays in view
    tail.axhline(0.01, color="grey", lw=0.6)
    tail.axhline(0.001, color="grey", lw=0.6)
    tail.text(tail.get_xlim()[0], 0.011, " p99", fontsize=7, color="grey")
    tail.text(tail.get_xlim()[0], 0.0011, " p99.9", fontsize=7, color="grey")
    tail.set_ylabel("fraction of frames slower (log)")
    tail.set_title("tail: 1 − ECDF", fontsize=10)
    note = ("\nsummary only: this result file holds p50 / p99 / p99.9 / max per series, drawn as points "
            "(dotted lines only join them)" if any("summary" in s for s in series) else "")
    fig.legend(loc="lower center", ncol=1, fontsize=8, frameon=False, title=note.strip() or None,
               title_fontsize=8)
    fig.tight_layout(rect=(0, 0.04 * len(series) + (0.09 if note else 0.04), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- soak -----------------------------------------------------------------------------------------

def _slope_per_min(t: np.ndarray, v: np.ndarray) -> Optional[float]:
    if len(t) < 3 or float(np.ptp(t)) <= 0:
        return None
    return float(np.polyfit(t, v, 1)[0] * 60)


def plot_soak(samples: list[dict[str, float]], path: Path, title: str, warmup_t: float,
              deadline_ms: Optional[float] = None) -> None:
    """RSS change after warm-up with a fitted slope, p99 inference latency and misses per interval."""
    plt = _plt()
    steady = [s for s in samples if s["t_s"] >= warmup_t and not s.get("stopping")]
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    t_all = np.array([s["t_s"] for s in samples])

    ax = axes[0]
    if steady:
        t = np.array([s["t_s"] for s in steady])
        rss = np.array([s["rss_mb"] for s in steady])
        base = float(np.mean(rss[:max(1, len(rss) // 10)]))
        ax.plot(t, (rss - base) * 1024, lw=1, marker=".", ms=3, label="RSS − mean of the first tenth after warm-up")
        slope = _slope_per_min(t, rss)
        if slope is not None:
            fit = np.polyval(np.polyfit(t, (rss - base) * 1024, 1), t)
            ax.plot(t, fit, color="red", lw=1.2, label=f"least-squares slope {slope * 1024:+.2f} KiB/min over "
                                                    f"{(t[-1] - t[0]) / 60:.1f} min")
        ax.legend(fontsize=8, loc="upper left")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_ylabel("RSS change (KiB)")
    ax.set_title(title, fontsize=10)

    interval = np.diff(t_all, prepend=t_all[0]) if len(t_all) else t_all
    ax = axes[1]
    p99 = [(s["t_s"], float(s["p99_us"])) for s in samples if "p99_us" in s and np.isfinite(s["p99_us"])]
    if p99:
        ax.plot([a for a, _ in p99], [b / 1000 for _, b in p99], lw=1, marker=".", ms=3,
                label="p99 inference latency of the interval")
        if deadline_ms:
            ax.axhline(deadline_ms, color="red", ls="--", lw=1.2, label=f"deadline {deadline_ms:g} ms")
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "p99 per interval not recorded in this run", transform=ax.transAxes, ha="center",
                color="grey")
    ax.set_ylabel("p99 latency (ms)")

    ax = axes[2]
    if samples and all("misses" in s for s in samples):
        misses = np.array([s["misses"] for s in samples], dtype=np.float64)
        per = np.diff(misses, prepend=misses[0])
        width = float(np.median(interval[1:])) if len(interval) > 1 else 1.0
        ax.bar(t_all, per, width=max(width, 0.1) * 0.8, color="tab:red",
               label=f"deadline misses per interval (total {int(misses[-1])})")
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "misses per interval not recorded in this run", transform=ax.transAxes, ha="center",
                color="grey")
    ax.set_ylabel("misses")
    ax.set_xlabel("seconds since start (shaded: warm-up, not judged)")
    for a in axes:
        a.axvspan(0, warmup_t, color="grey", alpha=0.12)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
