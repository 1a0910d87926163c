"""Every file a config names is read by bridge.core.files: a FIFO, a device or a binary file
is a one-line error naming the key, never a hang or a traceback, also when the file is read
outside the CLI's pre-flight (tokens at API start, passwords when a sink or session starts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.api.auth import load_tokens
from bridge.config.mqtt import MqttConfig
from bridge.core.errors import ConfigError
from bridge.core.files import read_text_file
from bridge.sinks.mqtt import read_password

pytestmark = pytest.mark.timeout(10)  # a FIFO read would block forever


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def test_special_and_binary_files_are_refused(fifo: Path, tmp_path: Path) -> None:
    binary = tmp_path / "bin"
    binary.write_bytes(b"\x00\x01\xff")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 70_000)
    cases = [(fifo, "(not a regular file)"), (Path("/dev/zero"), "(not a regular file)"),
             (tmp_path, "(a directory)"), (tmp_path / "missing", "(No such file or directory)"),
             (binary, "not UTF-8: byte 0xff at line 1, column 3"), (big, "larger than 65536 bytes")]
    for path, reason in cases:
        with pytest.raises(ValueError) as caught:
            read_text_file("x.file", path)
        assert str(caught.value).startswith("x.file: ") and reason in str(caught.value), caught.value
    good = tmp_path / "ok"
    good.write_text("secret\n")
    assert read_text_file("x.file", good) == "secret\n"


def test_tokens_and_passwords_from_a_fifo_are_config_errors(fifo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_tokens(fifo, None)
    assert caught.value.errors == [f"api.tokens_file: cannot read {fifo} (not a regular file)"]
    config = MqttConfig(host="127.0.0.1", password_file=fifo, username="u", spool_dir=tmp_path)
    with pytest.raises(ConfigError) as caught:
        read_password(config, "mqtt")
    assert caught.value.errors == [f"mqtt.password_file: cannot read {fifo} (not a regular file)"]
