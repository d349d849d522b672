"""The typed configuration model: one frozen dataclass per TOML table.

Every field carries its limits in ``metadata`` (``min``/``max`` for numbers, ``choices`` for strings,
``pattern`` for identifiers, ``item_pattern`` for each item of an array); :mod:`agent.config.loader`
enforces them and rejects unknown keys.
Paths are resolved relative to the config file's directory by the loader (``path=True``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "DEVICE_ID_PATTERN",
    "DEVICE_ID_RULE",
    "HOST_PORT_PATTERN",
    "RESERVED_DEVICE_IDS",
    "Config",
    "DeviceConfig",
    "HealthConfig",
    "HomeAssistantConfig",
    "InferenceConfig",
    "MqttConfig",
    "OtaConfig",
    "SourceConfig",
]


def _f(default: Any, doc: str, **limits: Any) -> Any:
    """A dataclass field with its limits and a one-line description (shown in errors and docs)."""
    return field(default=default, metadata={"doc": doc, **limits})


_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# The device id is a topic level, the MQTT user name the broker ACL substitutes for %u, and Home
# Assistant's discovery node id, which HA only accepts in [a-zA-Z0-9_-]: used verbatim everywhere,
# so two different ids never meet in one topic, unique_id or device identifier.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
DEVICE_ID_RULE = ("1 to 64 characters from A-Z a-z 0-9 _ - (Home Assistant's discovery node ids and "
                  "mosquitto's %u ACL patterns accept nothing else; '.', '/', spaces are refused)")
# Topic levels of the fleet-wide OTA topics and the broker users of deploy/mosquitto/acl.
RESERVED_DEVICE_IDS = ("group", "ota", "operator", "monitor", "homeassistant")
_TOPIC_PATTERN = r"^[^#+\x00]{1,128}$"
HOST_PORT_PATTERN = r"^(\[[0-9A-Fa-f:.]{2,45}\]|[^\s:\[\]/]{1,253}):([0-9]{1,5})$"


@dataclass(frozen=True)
class DeviceConfig:
    id: str = _f("digit-demo", "device id, used verbatim in topics, as MQTT client id and user name, and "
                               "as Home Assistant node id", pattern=DEVICE_ID_PATTERN, rule=DEVICE_ID_RULE)


@dataclass(frozen=True)
class MqttConfig:
    host: str = _f("127.0.0.1", "broker host name or address", pattern=r"^\S{1,253}$")
    port: int = _f(1883, "broker TCP port", min=1, max=65535)
    hosts: tuple[str, ...] = _f((), "several brokers (the nodes of a cluster) as \"host:port\", tried in a random "
                                "order; replaces host and port", length=(0, 64), item_pattern=HOST_PORT_PATTERN,
                                rule="\"host:port\" or \"[ipv6]:port\"")
    session_expiry_s: int = _f(0, "keep the broker session (subscriptions, queued QoS 1 messages) this long "
                                  "after a disconnect: clean start = false; 0 = a clean session per connection",
                               min=0, max=0xFFFFFFFF)
    topic_prefix: str = _f("digit-agent", "first topic level; topics are <prefix>/<device.id>/...",
                           pattern=_TOPIC_PATTERN)
    qos: int = _f(1, "QoS of result messages", min=0, max=2)
    client_id: str = _f("", "MQTT client id; empty means the device id", pattern=r"^[A-Za-z0-9_.-]{0,64}$")
    protocol: str = _f("5", "MQTT protocol version", choices=("5", "3.1.1"))
    keepalive_s: int = _f(30, "MQTT keepalive interval", min=5, max=3600)
    username: str = _f("", "user name; the password comes from password_file, never from this file")
    password_file: str = _f("", "file holding the password; relative names are also looked up in "
                                "$CREDENTIALS_DIRECTORY (systemd LoadCredential=)", path=True)
    tls_ca: str = _f("", "CA bundle (PEM); setting it turns TLS on", path=True)
    tls_cert: str = _f("", "client certificate (PEM) for mutual TLS", path=True)
    tls_key: str = _f("", "client private key (PEM); may come from $CREDENTIALS_DIRECTORY", path=True)
    outbox_max: int = _f(10000, "messages kept while the broker is away; the oldest are dropped beyond",
                         min=1, max=1_000_000)
    reconnect_min_s: float = _f(0.5, "longest first reconnect delay; the bound doubles per attempt and each "
                                     "delay is random below it (full jitter)", min=0.05, max=60.0)
    reconnect_max_s: float = _f(30.0, "cap of the reconnect delay bound (exponential backoff, full jitter)",
                                min=0.1, max=3600.0)
    max_inflight: int = _f(64, "unacknowledged QoS>0 messages at once", min=1, max=65535)
    connect_timeout_s: float = _f(5.0, "TCP/TLS connect and CONNACK timeout", min=0.5, max=120.0)
    digit_debounce_frames: int = _f(3, "publish <prefix>/<id>/digit (retained) when a new digit was the "
                                       "result of this many frames in a row; 0 = never", min=0, max=10_000)
    rx_queue_max: int = _f(1024, "received messages waiting for their handler; newer ones are dropped "
                                 "beyond", min=1, max=1_000_000)

    @property
    def brokers(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every broker: the ``hosts`` list, else ``host``/``port``."""
        if not self.hosts:
            return [(self.host, self.port)]
        out = []
        for item in self.hosts:
            m = re.fullmatch(HOST_PORT_PATTERN, item)
            assert m is not None  # the loader checked every item
            out.append((m.group(1).strip("[]"), int(m.group(2))))
        return out


@dataclass(frozen=True)
class SourceConfig:
    type: str = _f("replay", "frame source", choices=("replay", "serial", "pipe"))
    # replay
    path: str = _f("models/golden.npz", "replay: IDX, NPY or NPZ (images[, labels]) file; pipe: FIFO path "
                                        "or '-' for stdin", path=True)
    rate_hz: float = _f(50.0, "replay: frames per second; 0 means as fast as possible",
                        min=0.0, max=1_000_000.0)
    loop: bool = _f(True, "replay: start again at the end of the file")
    limit: int = _f(0, "stop after this many frames (0 = never); for tests and benchmarks",
                    min=0, max=10**12)
    # serial
    port: str = _f("/dev/ttyAMA0", "serial: device path or pyserial URL (loop://, socket://host:port); on a Pi "
                                   "3, 4 or Zero W ttyAMA0 is the Bluetooth UART unless dtoverlay=disable-bt "
                                   "(docs/serial-protocol.md)")
    baudrate: int = _f(921600, "serial: line speed", min=300, max=12_000_000)
    reopen_min_s: float = _f(0.2, "serial/pipe: longest first reopen delay after the device went away",
                             min=0.01, max=60.0)
    reopen_max_s: float = _f(5.0, "serial/pipe: reopen delay cap", min=0.05, max=600.0)
    # pipe (raw video)
    width: int = _f(28, "pipe: frame width in pixels", min=1, max=4096)
    height: int = _f(28, "pipe: frame height in pixels", min=1, max=4096)
    pixel_format: str = _f("gray", "pipe: raw pixel format", choices=("gray", "yuv420"))
    roi: tuple[int, ...] = _f((), "pipe: region of interest [x, y, w, h]; empty = whole frame", lengths=(0, 4))
    max_fps: float = _f(0.0, "pipe: frames per second to keep; extra frames are skipped (0 = keep all)",
                        min=0.0, max=1000.0)
    # buffers
    ring_slots: int = _f(16, "preallocated frame slots; the oldest frame is dropped when full", min=2, max=4096)
    max_frame_side: int = _f(64, "largest accepted frame width/height for serial/replay", min=8, max=255)
    max_frame_age_ms: float = _f(1000.0, "serial/pipe: a frame that waited longer than this for inference "
                                         "is dropped and counted (health frames.dropped_stale); 0 = never drop",
                                 min=0.0, max=3_600_000.0)


@dataclass(frozen=True)
class InferenceConfig:
    model: str = _f("models/digit.card.json", "model served until an OTA update commits: a model card listing its "
                    "variants, or one ONNX file", path=True)
    model_card: str = _f("", "card of a bare ONNX model; empty = <model>.card.json beside it", path=True)
    golden: str = _f("models/golden.npz", "golden set for the start-up self-test and the OTA gate", path=True)
    deadline_ms: float = _f(5.0, "per-inference deadline; misses are counted and flagged",
                            min=0.05, max=10_000.0)
    batch_max: int = _f(4, "largest micro-batch when frames are waiting", min=1, max=4)
    watchdog_factor: float = _f(20.0, "abort a run stuck this many deadlines long", min=2.0, max=1000.0)
    selftest_min_accuracy: float = _f(0.97, "golden-set accuracy the model must reach to serve",
                                      min=0.0, max=1.0)
    variant: str = _f("auto", "model variant to serve: \"auto\" = the fastest on this CPU that passes the golden "
                      "set, or a variant name from the model card (still gated)", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    variant_time_s: float = _f(1.0, "seconds of interleaved timing per variant when choosing (cached per "
                               "model files, CPU and onnxruntime version)", min=0.001, max=60.0)


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float = _f(10.0, "seconds between health messages", min=0.1, max=86_400.0)
    thermal_zone: str = _f("/sys/class/thermal/thermal_zone0/temp", "CPU temperature file (millidegrees)")


@dataclass(frozen=True)
class OtaConfig:
    enabled: bool = _f(True, "accept OTA model updates (refused anyway while no trusted key exists)")
    state_dir: str = _f("state", "A/B model slots and OTA state", path=True)
    trusted_keys: str = _f("keys", "directory of trusted Ed25519 public keys (*.pub, PEM or raw base64)",
                           path=True)
    groups: tuple[str, ...] = _f((), "fleet groups whose OTA topics this device follows", length=(0, 16),
                                 item_pattern=_ID_PATTERN)
    min_accuracy: float = _f(0.98, "device floor for the golden-set accuracy of a new model",
                             min=0.0, max=1.0)
    max_model_bytes: int = _f(4 * 1024 * 1024, "largest model file accepted", min=1024, max=256 * 1024 * 1024)
    max_chunks: int = _f(4096, "largest chunk count accepted", min=1, max=65536)
    test_window_s: float = _f(30.0, "seconds a new model is watched before it is committed",
                              min=0.0, max=86_400.0)
    test_max_miss_ratio: float = _f(0.05, "deadline-miss ratio in the test window that rolls back",
                                    min=0.0, max=1.0)
    max_attempts: int = _f(2, "restarts while a model is still on test before it is rolled back",
                           min=1, max=10)
    family: str = _f("digit-28x28", "model family this device accepts; manifests for another are refused",
                     pattern=_ID_PATTERN)
    max_chunk_bytes: int = _f(64 * 1024, "largest chunk accepted (keep well under the broker's message limit)",
                              min=256, max=1024 * 1024)
    stall_s: float = _f(3.0, "seconds without a new chunk before the device asks for the missing ones",
                        min=0.1, max=3600.0)
    clock_skew_s: float = _f(300.0, "tolerated clock difference for a manifest's created time",
                             min=0.0, max=86_400.0)


@dataclass(frozen=True)
class HomeAssistantConfig:
    discovery: bool = _f(True, "publish Home Assistant MQTT discovery configs; false publishes their removal")
    discovery_mode: str = _f("device", "device: one config per device (HA >= 2024.11); component: one per "
                                       "entity (older HA)", choices=("device", "component"))
    prefix: str = _f("homeassistant", "Home Assistant discovery prefix", pattern=_TOPIC_PATTERN)
    node_name: str = _f("", "device name shown in Home Assistant; empty = the device id",
                        pattern=r"^[^\x00-\x1f]{0,64}$")
    rediscover_jitter_s: float = _f(5.0, "random delay before re-announcing after Home Assistant restarts "
                                         "(spreads a fleet's answers)", min=0.0, max=600.0)


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    ota: OtaConfig = field(default_factory=OtaConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    # Where the config came from; not a TOML key.
    source_file: Optional[str] = field(default=None, compare=False, metadata={"internal": True})

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or self.device.id

    def topic(self, *parts: str) -> str:
        """``<topic_prefix>/<device.id>/<parts...>``."""
        return "/".join((self.mqtt.topic_prefix, self.device.id, *parts))
