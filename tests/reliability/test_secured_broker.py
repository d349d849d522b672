"""The shipped secured broker (deploy/mosquitto/) against real mosquitto: who may connect, publish, read.

Every refusal is checked next to an allowed twin (same client, same moment), so a broker that
refused everything, or a test that could not observe delivery, would fail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.broker import Broker
from tests.helpers.daemon import AgentProcess, write_config
from tests.reliability.kit import models, wait_until
from tests.reliability.secured import USERS, Pki, TlsClient, make_pki, secured_broker

pytestmark = pytest.mark.integration

_NOT_AUTHORIZED = 0x87  # MQTT 5 reason code on PUBACK/SUBACK for an ACL refusal
_BAD_CREDENTIALS = 0x86
_NO_SUBSCRIBERS = 0x10  # PUBACK success: accepted, nobody subscribed


# Device ids as users name them (README's, mixed case, 16 characters): each must appear in HA.
HA_IDS = ("pi-042", "Kitchen_Sensor-2", "hall-cam_0123456")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), *USERS, *HA_IDS)


@pytest.fixture
def sbroker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    b = secured_broker(tmp_path, pki)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def clients(sbroker: Broker, pki: Pki) -> Iterator[list[TlsClient]]:
    made: list[TlsClient] = []
    yield made
    for c in made:
        c.close()


def _client(clients: list[TlsClient], broker: Broker, pki: Pki, user: str | None, password: str | None,
            cert: str | None = None) -> TlsClient:
    c = TlsClient(broker, pki, user, password, cert)
    clients.append(c)
    return c


def _ok(clients: list[TlsClient], broker: Broker, pki: Pki, name: str) -> TlsClient:
    c = _client(clients, broker, pki, name, pki.password(name), cert=name)
    rc = c.connect()
    assert rc is not None and rc.value == 0, f"{name} could not connect: {rc}"
    return c


def test_the_certificate_is_the_identity(sbroker: Broker, pki: Pki, clients: list[TlsClient]) -> None:
    """use_identity_as_username: the CN is the user name. Device 1's certificate with device 2's user
    name and password (or none at all, or a wrong one) logs in as dev1 and can act only as dev1."""
    watch = _ok(clients, sbroker, pki, "operator")
    watch.subscribe("digit-agent/#")
    for user, password in (("dev2", pki.password("dev2")), (None, None), ("dev1", "not-the-password")):
        c = _client(clients, sbroker, pki, user, password, cert="dev1")
        rc = c.connect()
        assert rc is not None and rc.value == 0, (user, rc)
        assert c.publish("digit-agent/dev2/result", b"as dev2?") == _NOT_AUTHORIZED, user
        assert c.publish("digit-agent/dev1/result", user.encode() if user else b"-") == 0, user
        c.close()
    assert watch.wait_received("digit-agent/dev1/result", n=3) == [b"dev2", b"-", b"dev1"]
    assert watch.received("digit-agent/dev2/result") == []


def test_no_client_certificate_is_refused(sbroker: Broker, pki: Pki, clients: list[TlsClient]) -> None:
    nocert = _client(clients, sbroker, pki, "dev1", pki.password("dev1"), cert=None)
    rc = nocert.connect(timeout=5.0)
    assert rc is None or rc.is_failure, f"client without certificate got CONNACK {rc}"


def test_device_cannot_publish_as_another(sbroker: Broker, pki: Pki, clients: list[TlsClient]) -> None:
    op = _ok(clients, sbroker, pki, "operator")
    op.subscribe("digit-agent/#")
    dev1 = _ok(clients, sbroker, pki, "dev1")
    assert dev1.publish("digit-agent/dev2/result", b"forged") == _NOT_AUTHORIZED
    assert dev1.publish("digit-agent/dev2/ota/status", b"forged") == _NOT_AUTHORIZED
    assert dev1.publish("digit-agent/dev1/ota/manifest", b"self-signed?") == _NOT_AUTHORIZED
    assert dev1.publish("digit-agent/dev1/result", b"mine") == 0
    assert op.wait_received("digit-agent/dev1/result") == [b"mine"]
    assert op.received("digit-agent/dev2/result") == []
    assert op.received("digit-agent/dev2/ota/status") == []
    assert op.received("digit-agent/dev1/ota/manifest") == []


def test_device_reads_only_its_own_ota_topics(sbroker: Broker, pki: Pki, clients: list[TlsClient]) -> None:
    dev1 = _ok(clients, sbroker, pki, "dev1")
    # mosquitto 2.0 grants the SUBACK and filters at delivery: what arrives is what counts.
    for topic in ("digit-agent/dev2/ota/manifest", "digit-agent/dev1/ota/manifest",
                  "digit-agent/group/lab/ota/manifest", "digit-agent/dev2/result"):
        dev1.subscribe(topic)
    op = _ok(clients, sbroker, pki, "operator")
    for topic in ("digit-agent/dev2/ota/manifest", "digit-agent/dev1/ota/manifest",
                  "digit-agent/group/lab/ota/manifest"):
        assert op.publish(topic, topic.encode()) == 0
    dev2 = _ok(clients, sbroker, pki, "dev2")
    assert dev2.publish("digit-agent/dev2/result", b"r") == 0
    assert dev1.wait_received("digit-agent/dev1/ota/manifest") == [b"digit-agent/dev1/ota/manifest"]
    assert dev1.wait_received("digit-agent/group/lab/ota/manifest") == [b"digit-agent/group/lab/ota/manifest"]
    assert dev1.received("digit-agent/dev2/ota/manifest") == []
    assert dev1.received("digit-agent/dev2/result") == []


def test_operator_publishes_ota_but_not_results(sbroker: Broker, pki: Pki, clients: list[TlsClient]) -> None:
    mon = _ok(clients, sbroker, pki, "monitor")
    mon.subscribe("digit-agent/#")
    op = _ok(clients, sbroker, pki, "operator")
    assert op.publish("digit-agent/ota/chunk/job1", b"OTC1") == 0
    assert op.publish("digit-agent/dev1/result", b"forged") == _NOT_AUTHORIZED
    assert mon.publish("digit-agent/dev1/ota/manifest", b"forged") == _NOT_AUTHORIZED
    assert mon.wait_received("digit-agent/ota/chunk/job1") == [b"OTC1"]
    assert mon.received("digit-agent/dev1/result") == []
    assert mon.received("digit-agent/dev1/ota/manifest") == []


def test_home_assistant_discovery_only_under_own_node_id(sbroker: Broker, pki: Pki,
                                                          clients: list[TlsClient]) -> None:
    mon = _ok(clients, sbroker, pki, "monitor")
    mon.subscribe("homeassistant/#")
    dev1 = _ok(clients, sbroker, pki, "dev1")
    assert dev1.publish("homeassistant/sensor/dev1/digit/config", b"{}") == 0
    assert dev1.publish("homeassistant/sensor/dev2/digit/config", b"{}") == _NOT_AUTHORIZED
    assert mon.wait_received("homeassistant/sensor/dev1/digit/config") == [b"{}"]
    assert mon.received("homeassistant/sensor/dev2/digit/config") == []


def test_device_receives_home_assistants_birth_message(sbroker: Broker, pki: Pki,
                                                       clients: list[TlsClient]) -> None:
    """HA publishes "online" on homeassistant/status when it (re)starts; devices re-announce discovery
    on it, so they must be able to read it, and nobody but HA may publish it."""
    dev1 = _ok(clients, sbroker, pki, "dev1")
    dev1.subscribe("homeassistant/status")
    ha = _ok(clients, sbroker, pki, "homeassistant")
    assert dev1.publish("homeassistant/status", b"forged") == _NOT_AUTHORIZED
    mon = _ok(clients, sbroker, pki, "monitor")
    assert mon.publish("homeassistant/status", b"forged") == _NOT_AUTHORIZED
    assert ha.publish("homeassistant/status", b"online") == 0
    assert dev1.wait_received("homeassistant/status") == [b"online"]


def test_home_assistant_publishes_commands_and_reads_the_fleet(sbroker: Broker, pki: Pki,
                                                               clients: list[TlsClient]) -> None:
    dev1 = _ok(clients, sbroker, pki, "dev1")
    dev1.subscribe("digit-agent/dev1/cmd")
    ha = _ok(clients, sbroker, pki, "homeassistant")
    ha.subscribe("digit-agent/#")
    ha.subscribe("homeassistant/#")
    cmd = b'{"cmd":"ota_install","version":"latest"}'
    assert ha.publish("digit-agent/dev1/cmd", cmd) == 0
    assert dev1.wait_received("digit-agent/dev1/cmd") == [cmd]
    assert dev1.publish("digit-agent/dev1/result", b"r") == 0
    assert dev1.publish("homeassistant/sensor/dev1/digit/config", b"{}") == 0
    assert ha.wait_received("digit-agent/dev1/result") == [b"r"]
    assert ha.wait_received("homeassistant/sensor/dev1/digit/config") == [b"{}"]


def test_home_assistant_cannot_publish_results_status_or_ota(sbroker: Broker, pki: Pki,
                                                             clients: list[TlsClient]) -> None:
    op = _ok(clients, sbroker, pki, "operator")
    op.subscribe("digit-agent/#")
    op.subscribe("homeassistant/#")
    ha = _ok(clients, sbroker, pki, "homeassistant")
    refused = ["digit-agent/dev1/result", "digit-agent/dev1/health", "digit-agent/dev1/status",
               "digit-agent/dev1/ota/status", "digit-agent/dev1/ota/request", "digit-agent/dev1/ota/manifest",
               "digit-agent/dev1/ota/chunk/job1", "digit-agent/group/lab/ota/manifest",
               "digit-agent/ota/chunk/job1", "homeassistant/sensor/dev1/digit/config",
               # what the device %u patterns would grant a client whose user name is "homeassistant"
               "digit-agent/homeassistant/result", "digit-agent/homeassistant/ota/status",
               "homeassistant/sensor/homeassistant/digit/config"]
    for topic in refused:
        assert ha.publish(topic, b"forged") == _NOT_AUTHORIZED, topic
    assert ha.publish("digit-agent/dev1/cmd", b"allowed twin") == 0
    assert op.wait_received("digit-agent/dev1/cmd") == [b"allowed twin"]
    assert [t for t, _ in op.r.messages if t in refused] == []


def _dev1_config(tmp_path: Path, sbroker: Broker, pki: Pki, **sections: dict[str, Any]) -> Path:
    """The daemon as device dev1 on the secured broker: TLS, client certificate, password file."""
    model, golden, _ = models(tmp_path)
    source = {"path": str(golden), **sections.pop("source", {})}
    return write_config(
        tmp_path / "agent.toml", sbroker,
        mqtt={"tls_ca": str(pki.ca), "tls_cert": str(pki.cert("dev1")), "tls_key": str(pki.key("dev1")),
              "username": "dev1", "password_file": str(pki.password_file("dev1"))},
        source=source, inference={"model": str(model), "golden": str(golden)}, **sections)


def test_daemon_rediscovers_on_home_assistants_birth_over_tls(tmp_path: Path, sbroker: Broker, pki: Pki,
                                                              clients: list[TlsClient]) -> None:
    """The real daemon as dev1: it reads HA's birth message through the ACL, announces again and
    sends one health message right after (the health interval is an hour: only the announce can
    have sent it), so Home Assistant's sensors do not read unknown after its restart."""
    from agent.config import load_config
    from agent.publish.discovery import discovery_messages

    mon = _ok(clients, sbroker, pki, "monitor")
    mon.subscribe("homeassistant/+/dev1/#")
    mon.subscribe("digit-agent/dev1/health")
    cfg = _dev1_config(tmp_path, sbroker, pki, source={"rate_hz": 20.0, "loop": True},
                       homeassistant={"rediscover_jitter_s": 0.0}, health={"interval_s": 3600.0})
    expected = {m.topic for m in discovery_messages(load_config(cfg)) if m.payload}
    assert expected

    def configs() -> list[str]:
        return [t for t, p in mon.r.messages if t.endswith("/config") and p]

    agent = AgentProcess(cfg)
    try:
        assert agent.wait_log("MQTT connected", 60), agent.tail()
        wait_until(lambda: set(configs()) == expected, 30)
        assert set(configs()) == expected, configs()
        time.sleep(1.0)
        n = len(configs())
        assert n == len(expected), "announced once before the birth message"
        assert mon.wait_received("digit-agent/dev1/health"), "no health after the first announce"
        healths = len(mon.received("digit-agent/dev1/health"))
        ha = _ok(clients, sbroker, pki, "homeassistant")
        assert ha.publish("homeassistant/status", b"online") == 0
        wait_until(lambda: len(configs()) >= n + len(expected), 30)
        assert len(configs()) >= n + len(expected), agent.tail()
        assert len(mon.wait_received("digit-agent/dev1/health", n=healths + 1, timeout=15)) > healths
    finally:
        agent.stop()
    assert "WARNING agent.publish" not in agent.output(), agent.tail()


def test_daemon_over_tls_with_client_certificate(tmp_path: Path, sbroker: Broker, pki: Pki,
                                                 clients: list[TlsClient]) -> None:
    """The real daemon on the secured broker: TLS + client certificate + password file, results,
    health, status and Home Assistant discovery all inside what the ACL grants device dev1."""
    mon = _ok(clients, sbroker, pki, "monitor")
    mon.subscribe("digit-agent/dev1/#")
    mon.subscribe("homeassistant/#")
    cfg = _dev1_config(tmp_path, sbroker, pki, source={"rate_hz": 100.0, "limit": 300},
                       health={"interval_s": 0.5})
    agent = AgentProcess(cfg)
    try:
        assert agent.wait(120) == 0, agent.tail()
    finally:
        agent.stop()
    out = agent.output()
    assert "MQTT connected" in out and "WARNING agent.publish" not in out, out[-3000:]
    results = mon.wait_received("digit-agent/dev1/result", n=300, timeout=30)
    assert len({json.loads(p)["seq"] for p in results}) == 300
    assert mon.wait_received("digit-agent/dev1/health")
    assert mon.wait_received("digit-agent/dev1/status")[-1] == b"stopped"
    # Discovery (when the daemon publishes it) must stay under node id dev1, where the ACL allows it.
    discovery = [t for t, _ in mon.r.messages if t.startswith("homeassistant/")]
    assert all(t.split("/")[2] == "dev1" for t in discovery), discovery


# What each role may publish (the shipped ACL); everything else on this list is refused for it.
_WRITES: dict[str, tuple[str, ...]] = {
    "dev1": ("digit-agent/dev1/result", "digit-agent/dev1/health", "digit-agent/dev1/status",
             "digit-agent/dev1/digit", "digit-agent/dev1/ota/status", "digit-agent/dev1/ota/request",
             "digit-agent/dev1/ota/reply",
             "homeassistant/device/dev1/config", "homeassistant/sensor/dev1/x/config"),
    "operator": ("digit-agent/dev1/ota/manifest", "digit-agent/dev1/ota/chunk/j1",
                 "digit-agent/group/lab/ota/manifest", "digit-agent/ota/chunk/j1", "digit-agent/dev1/cmd"),
    "homeassistant": ("homeassistant/status", "digit-agent/dev1/cmd"),
    "monitor": (),
}
_NON_DEVICE = ("operator", "monitor", "homeassistant")
_PROBES = sorted({t for ts in _WRITES.values() for t in ts} | {
    "digit-agent/dev2/result", "digit-agent/dev2/status", "digit-agent/dev2/ota/status",
    "homeassistant/device/dev2/config", "homeassistant/sensor/dev2/x/config",
    # what the device patterns would grant the non-device users under their own names
    *(f"digit-agent/{u}/{leaf}" for u in _NON_DEVICE for leaf in ("result", "status", "digit", "ota/status")),
    *(f"homeassistant/{c}/{u}/config" for u in _NON_DEVICE for c in ("device", "sensor"))})


@pytest.mark.parametrize("role", sorted(_WRITES))
def test_every_role_publishes_what_it_may_and_nothing_else(role: str, sbroker: Broker, pki: Pki,
                                                           clients: list[TlsClient]) -> None:
    """monitor only reads; operator never publishes what a device or Home Assistant owns; Home
    Assistant only its birth message and commands; a device only its own topics and discovery."""
    watch = TlsClient(sbroker, pki, None, None, cert="operator", client_id="watch")  # reads everything
    clients.append(watch)
    assert watch.connect() is not None
    watch.subscribe("digit-agent/#")
    watch.subscribe("homeassistant/#")
    c = _ok(clients, sbroker, pki, role)
    allowed = set(_WRITES[role])
    got = {t: c.publish(t, f"{role}:{t}".encode()) for t in _PROBES}
    assert {t for t, rc in got.items() if rc == 0} == allowed, got
    assert {t for t, rc in got.items() if rc == _NOT_AUTHORIZED} == set(_PROBES) - allowed, got
    for t in sorted(allowed):
        assert watch.wait_received(t) == [f"{role}:{t}".encode()], t
    delivered = {t for t, p in watch.r.messages if p.startswith(f"{role}:".encode())}
    assert delivered == allowed


def test_monitor_reads_the_fleet(sbroker: Broker, pki: Pki, clients: list[TlsClient]) -> None:
    mon = _ok(clients, sbroker, pki, "monitor")
    mon.subscribe("digit-agent/#")
    mon.subscribe("homeassistant/#")
    dev1 = _ok(clients, sbroker, pki, "dev1")
    for t in ("digit-agent/dev1/result", "digit-agent/dev1/digit", "homeassistant/device/dev1/config"):
        assert dev1.publish(t, b"r") == 0
        assert mon.wait_received(t) == [b"r"], t


def _topics_in(conf: Any) -> set[str]:
    """Every ``*_topic`` / availability ``topic`` value anywhere in a discovery payload."""
    if isinstance(conf, dict):
        out = {v for k, v in conf.items() if isinstance(v, str) and (k == "topic" or k.endswith("_topic"))}
        return out.union(*(_topics_in(v) for v in conf.values()))
    if isinstance(conf, list):
        return set().union(*(_topics_in(v) for v in conf))
    return set()


@pytest.mark.parametrize("dev", HA_IDS)
def test_home_assistant_sees_every_entity_of_real_device_ids(dev: str, sbroker: Broker, pki: Pki,
                                                             clients: list[TlsClient]) -> None:
    """With the shipped ACL every discovery config of a device named like a real one is accepted
    (retained on the broker), and every topic those configs point at is one the device may publish
    (its state topics) or read (its command topic)."""
    import threading

    from agent.config.schema import Config, DeviceConfig, HomeAssistantConfig, MqttConfig
    from agent.publish import Publisher
    from agent.publish.discovery import Discovery, discovery_messages

    cfg = Config(device=DeviceConfig(id=dev), homeassistant=HomeAssistantConfig(rediscover_jitter_s=0.0),
                 mqtt=MqttConfig(host=sbroker.host, port=sbroker.port, tls_ca=str(pki.ca),
                                 tls_cert=str(pki.cert(dev)), tls_key=str(pki.key(dev)), username=dev,
                                 password_file=str(pki.password_file(dev)), reconnect_min_s=0.1))
    expected = {m.topic: json.loads(m.payload) for m in discovery_messages(cfg)}
    stop = threading.Event()
    pub = Publisher(cfg, stop)
    pub.start()
    disc = Discovery(cfg, pub, stop)
    disc.start()
    try:
        assert pub.wait_connected(15) and pub.flush(15)
        stats = pub.stats()
    finally:
        disc.stop()
        pub.stop(2.0)
    assert stats["rejected"] == 0 and stats["dropped"] == 0, stats
    ha = _ok(clients, sbroker, pki, "homeassistant")  # retained: what HA finds when it subscribes
    ha.subscribe("homeassistant/#")
    for topic in expected:
        assert [json.loads(p) for p in ha.wait_received(topic)] == [expected[topic]], topic
    referenced = set().union(*(_topics_in(c) for c in expected.values()))
    command = f"digit-agent/{dev}/cmd"
    assert command in referenced and all(t.startswith(f"digit-agent/{dev}/") for t in referenced), referenced
    device = _ok(clients, sbroker, pki, dev)
    for topic in sorted(referenced - {command}):
        assert device.publish(topic, b"x") in (0, _NO_SUBSCRIBERS), topic  # both: accepted
    device.subscribe(command)
    assert ha.publish(command, b'{"cmd":"ota_install"}') == 0
    assert device.wait_received(command) == [b'{"cmd":"ota_install"}']
