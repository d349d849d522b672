"""Home Assistant's install button: ``{"cmd":"ota_install"}`` on ``<prefix>/<id>/cmd``."""

from __future__ import annotations

import pytest

from agent.control.ota import store as store_mod
from tests.helpers.ota import disk_full, model_bytes
from tests.helpers.ota_device import Bench, Device

pytestmark = pytest.mark.integration

V2 = model_bytes("good", tag=2)
INSTALL = b'{"cmd":"ota_install","version":"latest"}'


def test_install_without_an_update_says_so(bench: Bench, device: Device) -> None:
    since = len(bench.statuses())
    bench.watch.publish("digit-agent/dev1/cmd", INSTALL)
    assert bench.watch.wait_for(lambda _: any(s["reason"] == "no installable update"
                                              for s in bench.statuses()[since:]), 20)
    assert device.daemon.engine.model.version == 1


def test_install_restarts_a_failed_signed_update(bench: Bench, device: Device,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = store_mod._write_all  # SIMULATED disk full while installing the slot:
    monkeypatch.setattr(store_mod, "_write_all", disk_full(real, when=lambda data: len(data) == len(V2)))
    pusher = bench.push(bench.envelope(V2, 2), V2)
    try:
        assert bench.wait_state("job-v2")["state"] == "failed"
        monkeypatch.setattr(store_mod, "_write_all", real)  # space freed; the operator is not around
        since = len(bench.statuses())
        bench.watch.publish("digit-agent/dev1/cmd", INSTALL)
        assert bench.wait_state("job-v2", since=since, timeout=60)["state"] == "committed"
    finally:
        pusher.close()
    assert device.daemon.ota.stats()["version"] == 2
