"""The daemon on a pipe source, end to end: tools/canvas_stream.py renders golden-set digits on a noisy
160x120 canvas, ffmpeg converts them to raw gray / yuv420p into a FIFO, the daemon (real mosquitto,
shipped model) publishes results; and a producer killed mid-frame then restarted.
The ring holds every frame a test sends and no frame ages out, so the host's speed cannot decide
which frames get a result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.broker import Broker, Collector
from tests.helpers.daemon import REPO, AgentProcess, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODELS = REPO / "models"
W, H, ROI = 160, 120, (60, 40, 40, 40)
FRAME = W * H  # gray


def _paths() -> dict[str, Path]:
    paths = {"model": MODELS / "digit.card.json",
             "golden": MODELS / "golden.npz"}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        pytest.fail(f"the shipped model is not built yet ({', '.join(missing)}): run `make model`")
    return paths


def _start(tmp_path: Path, broker: Broker, fmt: str, **source: Any) -> tuple[AgentProcess, Collector, Path]:
    p = _paths()
    fifo = tmp_path / "camera.fifo"
    os.mkfifo(fifo)
    cfg = write_config(
        tmp_path / "c.toml", broker,
        source={"type": "pipe", "path": str(fifo), "width": W, "height": H, "pixel_format": fmt,
                "roi": list(ROI), "ring_slots": 512, "max_frame_age_ms": 0.0, "reopen_min_s": 0.05,
                "reopen_max_s": 0.5, **source},
        inference={"model": str(p["model"]), "golden": str(p["golden"]), "deadline_ms": 500.0},
        health={"interval_s": 0.2})
    sub = Collector(broker, "digit-agent/dev1/#")
    agent = AgentProcess(cfg)
    assert agent.wait_log("pipe source: reading", 60), agent.tail()
    return agent, sub, fifo


def _producer(fifo: Path, *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tools.canvas_stream", "--images", str(_paths()["golden"]),
           "--width", str(W), "--height", str(H), "--roi", ",".join(map(str, ROI)), "--out", str(fifo), *args]
    return subprocess.Popen(cmd, cwd=REPO)


def _source(sub: Collector) -> dict[str, Any]:
    health = sub.on("/health")
    return dict(health[-1].json()["source"]) if health else {}


def _served(sub: Collector) -> Any:
    """The variant of the shipped set the daemon reported serving (its health ``model`` section)."""
    from agent.inference.variants import find, read_model_set

    name = sub.on("/health")[-1].json()["model"]["variant"]
    v = find(read_model_set(_paths()["model"]), name)
    assert v is not None, name
    return v


def _reference_digits(fmt: str, count: int, variant: Any) -> np.ndarray:
    """The same frames through the same model variant in-process (Preprocessor on the ROI)."""
    from agent.inference import LoadedModel
    from agent.preprocess import Preprocessor
    from tools.canvas_stream import stream_frames

    with np.load(_paths()["golden"]) as data:
        images = np.asarray(data["images"], np.uint8)
    model = LoadedModel.load(variant.path, 1, variant.card)
    pre = Preprocessor.from_card(model.card, max_side=max(ROI[2:]))
    x, y = model.buffers(1)
    out = np.empty(count, np.int64)
    x0, y0, w, h = ROI
    for k, raw in enumerate(stream_frames(images, count, 0, W, H, ROI, "gray")):
        frame = np.frombuffer(raw, np.uint8).reshape(H, W)
        pre(frame[y0:y0 + h, x0:x0 + w], x[0])
        model.run(1)
        out[k] = int(y[0].argmax())
    return out


@pytest.mark.parametrize("pix_fmt,fmt", [("gray", "gray"), ("yuv420p", "yuv420")])
def test_ffmpeg_stream_accuracy_matches_the_model_card(tmp_path: Path, broker: Broker, pix_fmt: str,
                                                       fmt: str) -> None:
    count = 300
    agent, sub, fifo = _start(tmp_path, broker, fmt)
    try:
        producer = _producer(fifo, "--count", str(count), "--fps", "100", "--ffmpeg", pix_fmt)
        assert producer.wait(120) == 0
        assert sub.wait_for(lambda c: _source(c).get("bytes_in") == count * (FRAME if fmt == "gray" else FRAME * 3 // 2)
                            and _source(c).get("state") == "down", 60), _source(sub)
        assert sub.wait_for(lambda c: len(c.on("/result")) >= count, 120), (len(sub.on("/result")), agent.tail())
    finally:
        assert agent.stop() == 0, agent.tail()
    src = _source(sub)
    assert (src["frames_ok"], src["partial_frames"], src["frames_skipped"]) == (count, 0, 0)
    results = [m.json() for m in sub.on("/result")]
    with np.load(_paths()["golden"]) as data:
        labels = np.asarray(data["labels"])
    seqs = [r["frame_seq"] for r in results]
    assert len(set(seqs)) == len(seqs) and set(seqs) <= set(range(count))
    digits = np.array([r["digit"] for r in results])
    acc = float(np.mean(digits == labels[np.array(seqs) % len(labels)]))
    served = _served(sub)
    target = float(served.card["transformed_accuracy"])  # the card's figure for the variant that served
    ref = _reference_digits(fmt, count, served)
    agree = float(np.mean(digits == ref[seqs]))
    print(f"\n{fmt}: {len(results)} results, accuracy {acc * 100:.2f} % (card transformed test "
          f"{target * 100:.2f} %), agreement with in-process reference {agree * 100:.2f} %")
    assert len(results) == count, sub.on("/health")[-1].json()["frames"]
    assert acc >= target - 0.01
    if fmt == "gray":
        assert agree == 1.0  # a lossless stream: the daemon saw exactly the rendered frames
    else:
        assert agree >= 0.98  # ffmpeg's limited-range Y plane, not the same bytes


def test_producer_killed_mid_frame_and_restarted(tmp_path: Path, broker: Broker) -> None:
    n1, n2, partial = 40, 60, 1000
    agent, sub, fifo = _start(tmp_path, broker, "gray")
    try:
        first = _producer(fifo, "--count", str(n1), "--fps", "200", "--partial", str(partial), "--hold")
        assert sub.wait_for(lambda c: _source(c).get("bytes_in") == n1 * FRAME + partial, 60), _source(sub)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert sub.wait_for(lambda c: _source(c).get("state") == "down"
                            and _source(c).get("reopens") == 1, 30), _source(sub)
        assert agent.proc.poll() is None
        second = _producer(fifo, "--count", str(n2), "--start", str(n1), "--fps", "200")
        assert second.wait(60) == 0
        total = (n1 + n2) * FRAME + partial
        assert sub.wait_for(lambda c: _source(c).get("bytes_in") == total and _source(c).get("reopens") == 2,
                            30), _source(sub)
        assert sub.wait_for(lambda c: len(c.on("/result")) >= n1 + n2, 120), (len(sub.on("/result")), agent.tail())
        assert agent.proc.poll() is None  # both producers gone; the daemon keeps serving
    finally:
        assert agent.stop() == 0, agent.tail()
    src = _source(sub)
    assert {k: src[k] for k in ("state", "frames_ok", "frames_skipped", "partial_frames", "misaligned",
                                "reopens", "open_failures", "bytes_in", "frame_bytes")} == {
        "state": "stopped", "frames_ok": n1 + n2, "frames_skipped": 0, "partial_frames": 1, "misaligned": 1,
        "reopens": 2, "open_failures": 0, "bytes_in": total, "frame_bytes": FRAME}
    frames = sub.on("/health")[-1].json()["frames"]
    assert frames["in"] == n1 + n2 and frames["corrupt"] == 1
    results = [m.json() for m in sub.on("/result")]
    assert sorted(r["frame_seq"] for r in results) == list(range(n1 + n2))  # frame numbers run on
    assert f"{partial} of {FRAME} bytes" in agent.output()


def test_stdin_pipeline_and_eof_keeps_the_daemon_serving(tmp_path: Path, broker: Broker) -> None:
    """``canvas_stream | digit-agent run --set source.path=-``: EOF on stdin = down, not exit."""
    p, count = _paths(), 50
    cfg = write_config(
        tmp_path / "c.toml", broker,
        source={"type": "pipe", "path": "-", "width": W, "height": H, "pixel_format": "yuv420",
                "roi": list(ROI), "ring_slots": 64},
        inference={"model": str(p["model"]), "golden": str(p["golden"]), "deadline_ms": 500.0},
        health={"interval_s": 0.2})
    sub = Collector(broker, "digit-agent/dev1/#")
    producer = subprocess.Popen(
        [sys.executable, "-m", "tools.canvas_stream", "--images", str(p["golden"]), "--count", str(count),
         "--fps", "50", "--format", "yuv420", "--out", "-"], cwd=REPO, stdout=subprocess.PIPE)
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg)], cwd=REPO,
                             stdin=producer.stdout, stdout=log, stderr=subprocess.STDOUT)
    assert producer.stdout is not None
    producer.stdout.close()  # the agent holds the read end now
    try:
        assert producer.wait(120) == 0
        assert sub.wait_for(lambda c: _source(c).get("frames_ok") == count
                            and _source(c).get("state") == "down", 120), _source(sub)
        assert sub.wait_for(lambda c: len(c.on("/result")) >= count, 120), (len(sub.on("/result")), agent.tail())
        sub.wait_for(lambda c: False, 1.0)  # a second on: still serving, stdin not reopened
        assert agent.poll() is None
        src = _source(sub)
        assert (src["reopens"], src["partial_frames"], src["bytes_in"]) == (0, 0, count * FRAME * 3 // 2)
        assert "stdin is closed for good" in str(src["last_error"])
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, (tmp_path / "agent.log").read_text()[-3000:]
        log.close()
    assert sub.on("/status")[-1].payload == b"stopped"
