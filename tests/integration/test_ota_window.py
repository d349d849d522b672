"""OTA after activation and under network trouble: the test window rolls back a model that passed the
gate but misses deadlines in the field; a broker cut mid-transfer resumes without starting over."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from tests.helpers.broker import Broker
from tests.helpers.ota import model_bytes
from tests.helpers.ota_device import Bench, Device
from tools.ota.package import bundle

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("multi", [False, True], ids=["one-file", "multi-variant"])
def test_test_window_rolls_back_a_model_that_misses_deadlines_live(tmp_path: Path, broker: Broker,
                                                                    multi: bool) -> None:
    blanks = tmp_path / "blanks.npz"  # what this device's sensor shows: no digit at all
    np.savez(blanks, images=np.zeros((20, 28, 28), np.uint8), labels=np.zeros(20, np.uint8))
    bench = Bench(tmp_path, broker, source={"path": str(blanks), "rate_hz": 50.0},
                  inference={"deadline_ms": 5.0}, ota={"test_window_s": 3.0, "test_max_miss_ratio": 0.05})
    device = Device(bench.cfg_path)
    try:
        bench.wait_state(None, ("idle",), 20)
        sneaky = model_bytes("slow_on_blank", tag=2)  # fast and accurate on the golden digits
        spec: dict[str, Any] = {}
        if multi:  # both variants pass the gate; whichever serves misses its deadlines live
            variants = [("int8", sneaky), ("fp32", model_bytes("slow_on_blank", tag=3))]
            sneaky, spec = bundle(variants), {"variants": variants}
        p = bench.push(bench.envelope(sneaky, 2, max_p99_ms=5.0, **spec), sneaky)
        done = bench.wait_state("job-v2", timeout=30)
        p.close()
        states = [s["state"] for s in bench.statuses() if s.get("job") == "job-v2"]
        assert "testing" in states, states
        assert done["state"] == "rolled_back" and "deadline miss" in done["reason"], done
        n0 = len(bench.results())
        assert bench.watch.wait_for(lambda c: len(bench.results()) > n0 + 20, 20)
        assert bench.results()[-1]["model_version"] == 1 and device.engine.model.version == 1
        assert device.engine.swaps == 2  # to the new model and back, each between two batches
        state = json.loads((tmp_path / "state" / "state.json").read_text())
        assert state["pending"] is None and state["committed"] is None and "job-v2" in state["seen_jobs"]
    finally:
        device.stop()
        bench.close()


def test_broker_cut_mid_transfer_resumes(tmp_path: Path, broker: Broker) -> None:
    bench = Bench(tmp_path, broker)
    device = Device(bench.cfg_path)
    v2 = model_bytes("good", tag=2)
    cut = threading.Event()
    had_at_cut: set[int] = set()  # chunks the device held when the broker went down
    sent_after_cut: list[int] = []  # chunk indices the operator tool sent from then on

    def slow_then_cut(i: int, payload: bytes) -> list[tuple[Optional[str], bytes]]:
        if cut.is_set():
            sent_after_cut.append(i)
        elif i == 12:
            had_at_cut.update(_chunks_held(device))
            cut.set()
            threading.Thread(target=broker.restart, kwargs={"down_s": 1.0}, daemon=True).start()
        return [(None, payload)]

    try:
        bench.wait_state(None, ("idle",), 20)
        env = bench.envelope(v2, 2, chunk_size=1024)
        p = bench.push(env, v2, mutate=slow_then_cut, rate=60.0)
        assert cut.wait(20)
        time.sleep(1.5)
        p.send_manifest(device="dev1")  # the operator tool re-announces after its reconnect
        done = bench.wait_state("job-v2", timeout=40)
        p.close()
        assert done["state"] == "committed", done
        count = -(-len(v2) // 1024)
        assert p.sent < 2 * count, f"resumed, not restarted: {p.sent} chunks sent for {count}"
        # A restart from chunk 0 (device forgetting its bitmap, or the tool starting over) would send
        # again chunks the device already held; a resume asks only for what it lacks.
        assert had_at_cut, "the device held no chunk when the broker was cut: nothing to resume from"
        again = had_at_cut & set(sent_after_cut)
        assert not again, f"restarted, not resumed: chunks {sorted(again)} held before the cut were sent again"
        assert sent_after_cut and len(set(sent_after_cut)) <= count - len(had_at_cut)
        assert device.engine.model.version == 2
        assert device.daemon.publisher.stats()["connects"] >= 2
    finally:
        device.stop()
        bench.close()


def _chunks_held(device: Device, timeout: float = 10.0) -> set[int]:
    """The chunk indices the device's download holds now (waits until it holds at least one). Chunks
    are only ever added during a download, so each index read here is held from now on."""
    deadline = time.monotonic() + timeout
    while True:
        dl = device.daemon.ota._dl
        held = {i for i in range(dl.bitmap.count) if i in dl.bitmap} if dl is not None else set()
        if held or time.monotonic() > deadline:
            return held
        time.sleep(0.01)


def test_push_refuses_chunks_larger_than_the_brokers_maximum_packet(tmp_path: Path) -> None:
    """mosquitto announces max_packet_size in its MQTT 5 CONNACK; the push tool respects it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.helpers.ota_device import CARD
    from tools.ota.package import PackageSpec, build_manifest, sign
    from tools.ota.push import Connection, Pusher, read_manifest

    broker = Broker(tmp_path, extra="max_packet_size 3000").start()
    try:
        v2 = model_bytes("good", tag=2)
        key = Ed25519PrivateKey.generate()
        for chunk, ok in ((4096, False), (2048, True)):
            env = sign(build_manifest(v2, PackageSpec(job=f"j{chunk}", version=2, card=CARD, chunk_size=chunk),
                                      "0" * 16), [key])
            conn = Connection(broker.host, broker.port, client_id=f"op{chunk}")
            if ok:
                Pusher(conn, "digit-agent", env, v2, read_manifest(env)).close()
            else:
                with pytest.raises(ValueError, match="maximum packet size 3000"):
                    Pusher(conn, "digit-agent", env, v2, read_manifest(env))
    finally:
        broker.stop()
