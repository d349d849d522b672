"""The device command parser: only well-formed, known commands pass."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.control.commands import Command, CommandError, parse_command


def test_install_latest_and_numbered() -> None:
    assert parse_command(b'{"cmd":"ota_install","version":"latest"}') == Command("ota_install", "latest")
    assert parse_command(b'{"cmd":"ota_install"}') == Command("ota_install", "latest")
    assert parse_command(b'{"cmd":"ota_install","version":7}') == Command("ota_install", 7)


@pytest.mark.parametrize(("payload", "needle"), [
    (b"", "not JSON"), (b"\xff", "not JSON"), (b"[]", "JSON object"), (b'{"cmd":"reboot"}', "unknown command"),
    (b'{"cmd":"ota_install","version":0}', "version"), (b'{"cmd":"ota_install","version":true}', "version"),
    (b'{"cmd":"ota_install","version":"1"}', "version"), (b'{"cmd":"ota_install","url":"x"}', "unknown field"),
    (b'{"cmd":"ota_install","pad":"' + b"x" * 2000 + b'"}', "exceeds"),
])
def test_bad_commands_are_refused_with_a_reason(payload: bytes, needle: str) -> None:
    with pytest.raises(CommandError, match=needle):
        parse_command(payload)


@given(st.binary(max_size=300))
def test_any_bytes_give_a_command_or_a_command_error(payload: bytes) -> None:
    with contextlib.suppress(CommandError):
        parse_command(payload)
