"""tools.frame_sender as people run it: a subprocess writing to stdout or to a real pty."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent.source.codec import FrameDecoder
from tests.helpers.pty_pair import PtyPair
from tools.frame_sender import synthetic_frames

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def sender(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tools.frame_sender", *args], cwd=REPO, env=env,
                          capture_output=True, timeout=timeout, check=False)


def decode(data: bytes, max_side: int = 28) -> tuple[FrameDecoder, dict[int, np.ndarray]]:
    dec, got = FrameDecoder(max_side), {}
    dec.feed(data, lambda s, h, w, px: got.__setitem__(s, px.copy()))
    return dec, got


def test_stdout_stream_is_exact(tmp_path: Path) -> None:
    images = synthetic_frames(7, seed=4)
    np.savez(tmp_path / "golden.npz", images=images, labels=np.arange(7))
    p = sender("--port", "-", "--source", str(tmp_path / "golden.npz"), "--rate", "0", "--count", "30",
               "--start-seq", str(2**32 - 10))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stderr.splitlines()[-1]) == {
        "frames": 30, "bytes": len(p.stdout), "corrupted": 0, "truncated": 0, "noise_bursts": 0}
    dec, got = decode(p.stdout)
    assert dec.frames_ok == 30 and dec.seq_gaps == 0 and dec.dropped_bytes == 0
    for k in range(30):
        np.testing.assert_array_equal(got[(2**32 - 10 + k) % 2**32], images[k % 7])


def test_injected_faults_are_seen_by_the_decoder() -> None:
    p = sender("--port", "-", "--source", "synthetic:20", "--rate", "0", "--count", "55",
               "--truncate-every", "10", "--noise", "0.3", "--seed", "3")
    assert p.returncode == 0, p.stderr
    tally = json.loads(p.stderr.splitlines()[-1])
    assert tally["truncated"] == 5 and tally["noise_bursts"] > 0
    dec, got = decode(p.stdout)
    pool = synthetic_frames(20, seed=3)
    assert sorted(got) == [k for k in range(55) if (k + 1) % 10]  # truncated frames only; noise costs none
    for seq, px in got.items():
        np.testing.assert_array_equal(px, pool[seq % 20])
    assert dec.seq_gaps == 5
    assert dec.crc_errors + dec.malformed >= 5

    p = sender("--port", "-", "--source", "synthetic:20", "--rate", "0", "--count", "50",
               "--corrupt-every", "5", "--seed", "3")
    dec, got = decode(p.stdout)
    assert json.loads(p.stderr.splitlines()[-1])["corrupted"] == 10
    assert 50 - 2 * 10 <= dec.frames_ok <= 40  # each flipped bit costs its frame, at most one more
    assert all(np.array_equal(px, pool[seq % 20]) for seq, px in got.items())


def test_writes_to_a_pty_through_pyserial(pty_pair: PtyPair) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tools.frame_sender", "--port", pty_pair.slave_path,
                             "--baud", "115200", "--source", "synthetic:10", "--rate", "500", "--count", "40"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dec, got = FrameDecoder(28), {}
    deadline = time.monotonic() + 30
    try:
        while dec.frames_ok < 40 and time.monotonic() < deadline:
            if select.select([pty_pair.master_fd], [], [], 0.2)[0]:
                dec.feed(os.read(pty_pair.master_fd, 4096), lambda s, h, w, px: got.__setitem__(s, px.copy()))
    finally:
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert sorted(got) == list(range(40))
    pool = synthetic_frames(10)
    assert all(np.array_equal(px, pool[s % 10]) for s, px in got.items())


@pytest.mark.parametrize("args", [["--port", "-", "--source", "/nonexistent.npz"], ["--port", "-", "--noise", "2"],
                                  ["--port", "-", "--rate", "-1"],
                                  ["--port", "/dev/nonexistent-tty", "--source", "synthetic:1"]])
def test_bad_arguments_are_clear_errors(args: list[str]) -> None:
    p = sender(*args)
    assert p.returncode == 2
    assert p.stdout == b""
    assert b"nonexistent" in p.stderr or b"must be" in p.stderr
    assert b"Traceback" not in p.stderr
