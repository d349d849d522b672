"""Fixtures for the OTA integration tests: a device's files (``bench``) and the daemon in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.broker import Broker
from tests.helpers.ota_device import Bench, Device


@pytest.fixture
def bench(tmp_path: Path, broker: Broker) -> Iterator[Bench]:
    b = Bench(tmp_path, broker)
    yield b
    b.close()


@pytest.fixture
def device(bench: Bench) -> Iterator[Device]:
    d = Device(bench.cfg_path)
    bench.wait_state(None, ("idle",), 20)
    yield d
    d.stop()
