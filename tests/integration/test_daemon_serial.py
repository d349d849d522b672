"""The whole daemon over a real pty serial link: the tools' sender, injected faults, exact results.

The codec is pure, so decoding the very same byte stream in-process tells exactly which frames a
correct receiver must deliver; the daemon must publish a result for each of them and for no other.
The ring holds the whole stream and no frame ages out, so how fast this host infers cannot decide
which frames get a result (a live source otherwise drops the oldest when inference falls behind).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from agent.source.codec import FrameDecoder
from tests.helpers.broker import Broker, Collector
from tests.helpers.daemon import REPO, AgentProcess, write_config
from tests.helpers.pty_pair import PtyPair
from tools.frame_sender import frame_stream

pytestmark = pytest.mark.integration

N = 2000


def _expected_seqs(chunks: list[bytes]) -> list[int]:
    seqs: list[int] = []
    dec = FrameDecoder(64)
    dec.feed(b"".join(chunks), lambda seq, h, w, px: seqs.append(seq))
    return seqs


def test_serial_pty_faults_no_corrupt_frame_inferred(tmp_path: Path, broker: Broker, pty_pair: PtyPair) -> None:
    with np.load(REPO / "models" / "golden.npz") as data:
        images, labels = np.asarray(data["images"]), np.asarray(data["labels"])
    tally: dict[str, int] = {}
    chunks = list(frame_stream(images, N, corrupt_every=50, truncate_every=97, noise=0.02, seed=3, tally=tally))
    expected = _expected_seqs(chunks)
    assert N - len(expected) >= tally["corrupted"] + tally["truncated"] > 0
    sub = Collector(broker, "digit-agent/dev1/result", "digit-agent/dev1/health")
    cfg = write_config(tmp_path / "c.toml", broker,
                       source={"type": "serial", "port": pty_pair.slave_path, "baudrate": 921600,
                               "ring_slots": 2048, "max_frame_age_ms": 0.0})
    agent = AgentProcess(cfg)
    try:
        agent.wait_started()
        for chunk in chunks:  # paced like a fast sensor (~1000 fps); the ring buffers any backlog
            pty_pair.write(chunk)
            time.sleep(0.001)
        if not sub.wait_for(lambda c: len(c.on("/result")) >= len(expected), 120):
            health = sub.on("/health")[-1].json() if sub.on("/health") else {}
            raise AssertionError(f"{len(sub.on('/result'))} of {len(expected)} results; last health frames "
                                 f"{health.get('frames')} source {health.get('source')}; daemon log tail:\n"
                                 f"{agent.tail()}")
        time.sleep(1.5)  # nothing more may arrive
    finally:
        agent.signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    results = [m.json() for m in sub.on("/result")]
    assert sorted(r["frame_seq"] for r in results) == expected  # every good frame once, no other
    acc = np.mean([r["digit"] == labels[r["frame_seq"] % len(labels)] for r in results])
    assert acc >= 0.99, acc
    last = sub.on("/health")[-1].json()
    src = last["source"]
    assert src["frames_ok"] == len(expected)
    assert src["crc_errors"] + src["malformed"] >= tally["corrupted"] + tally["truncated"] - src["oversize"]
    assert last["frames"]["dropped"] == 0 and last["frames"]["ok"] == len(expected), last["frames"]
    sub.close()
