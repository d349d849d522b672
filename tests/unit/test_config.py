"""The config model: strict keys, bounds, helpful errors, overrides; the CLI's exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config, parse_config
from tests.conftest import REPO


def errors(text: str, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.toml", overrides)
    return info.value.problems


def test_shipped_config_is_valid() -> None:
    cfg = load_config(REPO / "config.toml", environ={})
    assert cfg.source.type == "replay"
    assert Path(cfg.inference.model).is_absolute()
    assert cfg.topic("result") == "digit-agent/digit-demo/result"


def test_unknown_key_names_file_line_path_and_suggestion() -> None:
    (problem,) = errors("[device]\nid = 'a'\n\n[mqtt]\nhostt = 'x'\n")
    assert problem.startswith("site.toml:5: mqtt.hostt: unknown key")
    assert "did you mean 'host'" in problem


def test_out_of_range_port_names_the_bound() -> None:
    (problem,) = errors("[mqtt]\nport = 70000\n")
    assert "mqtt.port" in problem and "65535" in problem


@pytest.mark.parametrize(("text", "needle"), [
    ("[mqtt]\nport = '1883'\n", "expected int, got string"),
    ("[mqtt]\nqos = 3\n", "mqtt.qos"),
    ("[mqtt]\nqos = true\n", "expected int, got boolean"),
    ("[source]\ntype = 'serail'\n", "did you mean 'serial'"),
    ("[inference]\nbatch_max = 5\n", "inference.batch_max"),
    ("[inference]\ndeadline_ms = 0\n", "inference.deadline_ms"),
    ("[device]\nid = 'has space'\n", "device.id"),
    ("[device]\nid = 'pi.042'\n", "device.id: 'pi.042' is not allowed: 1 to 64 characters from A-Z a-z 0-9 _ -"),
    ("[device]\nid = 'ota'\n", "device.id: 'ota' is reserved"),
    ("[mqtt]\ntopic_prefix = 'a/#'\n", "mqtt.topic_prefix"),
    ("[source]\nroi = [1, 2]\n", "expected 0 or 4 items"),
    ("[sorce]\ntype = 'replay'\n", "did you mean 'source'"),
    ("[mqtt]\ntls_cert = 'c.pem'\ntls_key = 'k.pem'\n", "needs tls_ca"),
    ("[mqtt]\nreconnect_min_s = 10.0\nreconnect_max_s = 1.0\n", "reconnect_min_s"),
    ("[source]\ntype = 'pipe'\nwidth = 100\nheight = 100\nroi = [90, 90, 20, 20]\n", "does not fit"),
    ("mqtt = 3\n", "expected a table"),
    ("[source]\ntype = 'pipe'\nwidth = 640\nheight = 480\n", "set a roi"),
    ("[mqtt\n", "invalid TOML"),
    ("[source]\nring_slots = 4\n[inference]\nbatch_max = 4\n", "source.ring_slots: 4 must exceed inference.batch_max"),
    ("[source]\nring_slots = 2\n[inference]\nbatch_max = 3\n", "source.ring_slots"),
    ("[ota]\ngroups = ['#']\n", "ota.groups[0]: '#' does not match"),
    ("[ota]\ngroups = ['kitchen', 'a/b']\n", "ota.groups[1]: 'a/b' does not match"),
    ("[ota]\ngroups = ['+']\n", "ota.groups[0]"),
])
def test_each_problem_is_reported(text: str, needle: str) -> None:
    assert any(needle in p for p in errors(text)), errors(text)


def test_ring_slots_must_exceed_batch_max() -> None:
    # The inference loop holds up to batch_max slots and the source needs one more; with fewer,
    # FrameRing.acquire raised on the source thread at run time and the daemon stopped.
    (problem,) = errors("[source]\nring_slots = 4\n\n[inference]\nbatch_max = 4\n")
    assert problem.startswith("site.toml:2: source.ring_slots: ") and "inference.batch_max (4)" in problem
    cfg = parse_config("[source]\nring_slots = 5\n[inference]\nbatch_max = 4\n", "site.toml")
    assert (cfg.source.ring_slots, cfg.inference.batch_max) == (5, 4)
    assert parse_config("[source]\nring_slots = 2\n[inference]\nbatch_max = 1\n").source.ring_slots == 2


def test_ota_groups_entries_follow_the_device_id_pattern() -> None:
    from agent.config.schema import _ID_PATTERN

    (problem,) = errors("[ota]\ngroups = ['kitchen', '#']\n")
    assert problem.startswith("site.toml:2: ota.groups[1]: '#' does not match") and _ID_PATTERN in problem
    assert "ota.groups[0]" in errors("[ota]\ngroups = ['a/b']\n")[0]
    assert "ota.groups[0]" in errors("", ("ota.groups=['x y']",))[0]
    ok = parse_config("[ota]\ngroups = ['kitchen', 'canary-1', 'lab_2.b']\n")
    assert ok.ota.groups == ("kitchen", "canary-1", "lab_2.b")


def test_all_problems_reported_at_once() -> None:
    assert len(errors("[mqtt]\nport = 0\nqos = 9\nhots = 'x'\n")) == 3


def test_overrides_from_cli_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[mqtt]\nport = 1883\n")
    cfg = load_config(f, ["mqtt.host=broker.local", "source.roi=[1, 2, 3, 4]"],
                      environ={"DIGIT_AGENT__MQTT__PORT": "1884", "DIGIT_AGENT__MQTT__TOPIC_PREFIX": "site"})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.topic_prefix) == ("broker.local", 1884, "site")
    assert cfg.source.roi == (1, 2, 3, 4)
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        load_config(f, ["mqtt.port=99999"], environ={})
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(f, ["port=1"], environ={})


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    f = tmp_path / "etc" / "c.toml"
    f.parent.mkdir()
    f.write_text("[inference]\nmodel = 'm.onnx'\n[source]\ntype = 'serial'\nport = 'loop://'\n")
    cfg = load_config(f, environ={})
    assert cfg.inference.model == str(tmp_path / "etc" / "m.onnx")
    assert cfg.source.port == "loop://"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_check_config_exit_codes(tmp_path: Path) -> None:
    assert _cli("check-config", "--config", "config.toml").returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[mqtt]\nhsot = "x"\n')
    r = _cli("check-config", "--config", str(bad))
    assert r.returncode == 2
    assert "mqtt.hsot" in r.stderr and "did you mean 'host'" in r.stderr
    bad.write_text("[mqtt]\nport = 70000\n")
    r = _cli("check-config", "--config", str(bad))
    assert r.returncode == 2 and "65535" in r.stderr
    assert _cli("check-config", "--config", str(tmp_path / "missing.toml")).returncode == 2


def test_check_config_refuses_a_small_ring_and_bad_groups(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[source]\nring_slots = 3\n[inference]\nbatch_max = 4\n")
    r = _cli("check-config", "--config", str(bad))
    assert r.returncode == 2 and "bad.toml:2: source.ring_slots: 3 must exceed inference.batch_max" in r.stderr
    bad.write_text("[ota]\ngroups = ['#']\n")
    r = _cli("check-config", "--config", str(bad))
    assert r.returncode == 2 and "bad.toml:2: ota.groups[0]: '#' does not match" in r.stderr


def test_log_level_before_or_after_the_command() -> None:
    from agent.cli import _parser

    p = _parser()
    assert p.parse_args(["run"]).log_level == "INFO"
    assert p.parse_args(["--log-level", "DEBUG", "run"]).log_level == "DEBUG"
    assert p.parse_args(["run", "--log-level", "DEBUG"]).log_level == "DEBUG"
    assert p.parse_args(["--log-level", "ERROR", "check-config", "--log-level", "WARNING"]).log_level == "WARNING"
    assert p.parse_args(["--log-level", "ERROR", "version"]).log_level == "ERROR"
    r = _cli("check-config", "--log-level", "DEBUG", "--config", "config.toml")
    assert r.returncode == 0, r.stderr
    r = _cli("check-config", "--log-level", "LOUD", "--config", "config.toml")
    assert r.returncode == 2 and "--log-level" in r.stderr


def test_version_and_help() -> None:
    assert _cli("version").stdout.startswith("digit-agent ")
    for cmd in ("run", "check-config", "selftest"):
        r = _cli(cmd, "--help")
        assert r.returncode == 0 and "--config" in r.stdout


def test_reference_config_documents_every_key() -> None:
    """config.toml is the reference: every schema key must stand in it, with a value."""
    import dataclasses

    from agent.config.loader import _KeyLines
    from agent.config.schema import Config

    lines = _KeyLines((REPO / "config.toml").read_text())
    missing = [f"{sec.name}.{f.name}" for sec in dataclasses.fields(Config) if not sec.metadata.get("internal")
               for f in dataclasses.fields(sec.default_factory())  # type: ignore[misc,operator]
               if lines.find((sec.name, f.name)) in (None, lines.find((sec.name,)))]
    assert not missing, f"config.toml lacks {missing}"


def test_override_errors_name_the_override_not_a_file_line() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config("[mqtt]\nport = 1883\n", "site.toml", ["mqtt.port=70000"])
    assert str(e.value).startswith("override 'mqtt.port=70000': mqtt.port:"), str(e.value)
    assert "site.toml:2" not in str(e.value)


def test_overrides_of_text_keys_keep_the_text() -> None:
    cfg = parse_config("", "site.toml", ["mqtt.username=1234", "mqtt.host=inf", "device.id=007"])
    assert (cfg.mqtt.username, cfg.mqtt.host, cfg.device.id) == ("1234", "inf", "007")
    assert parse_config("", "site.toml", ["mqtt.port=1884"]).mqtt.port == 1884  # numbers stay numbers


def test_environment_override_errors_name_the_variable(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[mqtt]\nport = 1883\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, environ={"DIGIT_AGENT__MQTT__PORT": "abc"})
    assert str(e.value).startswith("environment variable DIGIT_AGENT__MQTT__PORT='abc': mqtt.port:"), str(e.value)
    with pytest.raises(ConfigError, match=r"^environment variable DIGIT_AGENT__MQTT='x': expected section\.key"):
        load_config(f, environ={"DIGIT_AGENT__MQTT": "x"})
    # --set wins over the environment, and is the one named when wrong
    with pytest.raises(ConfigError, match=r"^override 'mqtt.port=0'"):
        load_config(f, ["mqtt.port=0"], environ={"DIGIT_AGENT__MQTT__PORT": "1884"})


def test_stdin_path_needs_the_pipe_source() -> None:
    """'-' is standard input: a replay would try to open a file named '-' and the daemon not start."""
    with pytest.raises(ConfigError, match=r"override 'source.path=-': source.path: '-' \(standard input\) is "
                                          r"for type = \"pipe\""):
        parse_config("[source]\ntype = 'replay'\n", "c.toml", ["source.path=-"])
    assert parse_config("[source]\ntype = 'pipe'\n", "c.toml", ["source.path=-"]).source.path == "-"


def test_selftest_states_its_rule_and_why_a_slow_p99_passes() -> None:
    from types import SimpleNamespace

    from agent.cli import selftest_report
    from agent.inference.choice import Choice, Row

    cfg = parse_config("[inference]\ndeadline_ms = 5.0\nselftest_min_accuracy = 0.97\n")
    model = SimpleNamespace(variant="int8")

    def report(p99_us: float) -> list[str]:
        rows = [Row("int8", 1.0, "passes", 70.0, p99_us, served=True), Row("fp32", 1.0, "passes", 90.0, 9e3)]
        return selftest_report("m.onnx", 2, Choice(model, rows, "fastest"), cfg)  # type: ignore[arg-type]

    slow = report(8298.3)
    assert slow[0] == "selftest passed: model m.onnx version 2, variant int8"
    assert "the rule: golden accuracy ≥ inference.selftest_min_accuracy (97.0 %) and finite outputs" in slow[1]
    assert slow[2].startswith("  p99 8.298 ms is over inference.deadline_ms (5 ms): wall time"), slow
    assert len(report(180.0)) == 2  # the served variant is within: nothing to explain (fp32's p99 is not served)
    r = _cli("selftest", "--config", "config.toml")  # the real command prints the same report
    assert r.returncode == 0 and "  the rule: golden accuracy ≥" in r.stdout, r.stdout + r.stderr


def test_several_brokers_and_their_mistakes() -> None:
    cfg = parse_config('[mqtt]\nhosts = ["a.example:1883", "10.0.0.2:8883", "[fd00::3]:1884"]\n')
    assert cfg.mqtt.brokers == [("a.example", 1883), ("10.0.0.2", 8883), ("fd00::3", 1884)]
    assert parse_config("[mqtt]\nhost = 'b'\nport = 1\n").mqtt.brokers == [("b", 1)]
    for text, needle in [
        ('[mqtt]\nhost = "a"\nhosts = ["b:1"]\n', "<config>:3: mqtt.hosts: mqtt.hosts and mqtt.host cannot be mixed"),
        ('[mqtt]\nhosts = ["b:1"]\nport = 2\n', "mqtt.hosts and mqtt.port cannot be mixed"),
        ('[mqtt]\nhosts = ["b"]\n', "mqtt.hosts[0]: 'b' is not allowed: \"host:port\""),
        ('[mqtt]\nhosts = ["b:70000"]\n', "mqtt.hosts[0]: port 70000 is out of range"),
        ('[mqtt]\nhosts = ["b:1", "b:1"]\n', "mqtt.hosts[1]: b:1 is listed twice"),
        ("[mqtt]\nqos = 2\nsession_expiry_s = 60\n", "mqtt.session_expiry_s: a kept session"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_config(text)
        assert needle in str(e.value), (text, str(e.value))
    with pytest.raises(ConfigError) as e:  # an override of the one-broker form mixes too
        parse_config('[mqtt]\nhosts = ["b:1"]\n', overrides=["mqtt.port=2"])
    assert "cannot be mixed" in str(e.value)
