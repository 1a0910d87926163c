"""Reading the small files a config names (the config itself, passwords, tokens, TLS files)
without trusting them: a regular file only, bounded in size, UTF-8. A FIFO, a device such as
/dev/zero, a directory or a binary file gets a one-line reason instead of a hang or a
traceback."""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["MAX_SECRET_BYTES", "decode_text", "read_regular_file", "read_text_file"]

MAX_SECRET_BYTES = 64 * 1024  # passwords and token lists: far below this

_BOMS = ((b"\xef\xbb\xbf", "starts with a UTF-8 byte order mark (BOM); save it as UTF-8 without BOM"),
         (b"\xff\xfe", "is UTF-16 (byte order mark FF FE); save it as UTF-8"),
         (b"\xfe\xff", "is UTF-16 (byte order mark FE FF); save it as UTF-8"))


def read_regular_file(path: Path, limit: int) -> bytes:
    """The file's bytes, if it is a regular file of at most ``limit`` bytes. Raises ValueError
    with the reason (message without the path). Never blocks: a FIFO or device is refused by
    its type before it is opened."""
    try:
        info = path.stat()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise ValueError(f"cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        what = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ValueError(f"cannot read ({what})")
    try:
        # O_NONBLOCK: should the file be swapped for a FIFO after stat, open does not wait.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise ValueError("cannot read (not a regular file)")
            data = file.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"cannot read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def decode_text(data: bytes) -> str:
    """UTF-8 text, or ValueError saying where and why it is not."""
    for mark, message in _BOMS:
        if data.startswith(mark):
            raise ValueError(message)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ValueError(f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line}, column {column} "
                         "(save the file as UTF-8)") from None
    if "\0" in text:
        # A NUL usually means a binary or UTF-16 file.
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ValueError(f"not a text file: NUL byte at line {line}")
    return text


def read_text_file(key: str, path: Path, limit: int = MAX_SECRET_BYTES) -> str:
    """The text of the file the config key ``key`` names. Raises ValueError with a one-line
    message that starts with the key and names the file: ``api.tokens_file: cannot read
    /etc/x (No such file or directory)``."""
    try:
        return decode_text(read_regular_file(path, limit))
    except ValueError as exc:
        message = str(exc)
        if message.startswith("cannot read ("):
            raise ValueError(f"{key}: cannot read {path} {message[len('cannot read '):]}") from None
        raise ValueError(f"{key}: {path}: {message}") from None
