"""Config fuzzing (issue 14): seeded mutations of config.example.toml and the golden cases, each
run through ``plcbridge check``.

Asserted for every case: no exception escapes (a traceback), the case finishes within
CASE_SECONDS (no hang), the exit status is 0 or 2 as documented, and on 2 every stderr line is
``FILE: WHAT``. Deterministic: case ``i`` of a target always builds the same bytes, so a
failure message names ``target#i`` and reproduces with :func:`build_case`.

Bounded for ``make test`` (DEFAULT_CASES per target, in-process); ``FUZZ_CASES=N`` runs N per
target (``make fuzz``).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.config import load_config
from bridge.core.errors import WriteRefusedError
from bridge.sinks.writeback import check_value

ROOT = Path(__file__).resolve().parent.parent
SEEDS: list[bytes] = [(ROOT / "config.example.toml").read_bytes()] + [
    (case / "config.toml").read_bytes() for case in sorted((ROOT / "tests" / "cases").iterdir())]
DEFAULT_CASES = 150  # x 9 targets: ~8 s
CASES = int(os.environ.get("FUZZ_CASES", DEFAULT_CASES))
CASE_SECONDS = 10.0

# Values that have broken config loaders: wrong TOML types, non-finite and huge numbers, type
# limits and one past them, strings that are paths to things that never end, control chars.
VALUES = [
    "true", "false", '"1.0"', '"1"', "1.0", "nan", "+nan", "-nan", "inf", "-inf", "1e999",
    "-1e999", "0", "-1", "65535", "65536", "70000", "-32769", "4294967296", "9223372036854775808",
    "1" * 4301, "0.1e-400", "[]", "{}", "[1, \"a\"]", "[[1]]", '""', '"\\u0000"', '"a\\u0000b"',
    '"/dev/zero"', '"/dev/urandom"', '"/proc/self/mem"', '"."', '"ü"', '"\\ud7ff"', '"\u202e"',
    '"' + "x" * 5000 + '"', "1979-05-27T07:32:00Z", "07:32:00", "0x10", "0o7", "0b1", "1_000",
]
JUNK = [b"\x00", b"\xff", b"\xfe", b"\xef\xbb\xbf", b"\xfc", b"\x80", b"[", b"]", b"{", b"}", b"=",
        b'"', b"'", b"\n", b"\r", b"[[", b"]]", b".", b"#", b"\\", b'"""', "ü".encode(),
        "\u2028".encode(), b"\xed\xa0\x80"]  # the last: a UTF-8-encoded surrogate (invalid)
ASSIGNMENT = re.compile(rb"^(\s*[A-Za-z0-9_.\"-]+\s*=\s*)(.*)$", re.MULTILINE)


def _flip(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data) + 1)]


def _splice(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        data = data[:at] + rng.choice(JUNK) * rng.choice((1, 1, 2, 50)) + data[at:]
    return data


def _swap_value(rng: random.Random, data: bytes) -> bytes:
    matches = list(ASSIGNMENT.finditer(data))
    if not matches:
        return data + b"\nx = " + rng.choice(VALUES).encode() + b"\n"
    for match in rng.sample(matches, min(len(matches), rng.randint(1, 3))):
        value = rng.choice(VALUES).encode()
        data = data.replace(match.group(0), match.group(1) + value, 1)
    return data


def _nest(rng: random.Random, data: bytes) -> bytes:
    depth = rng.choice((5, 31, 32, 33, 100, 600, 3000))
    kind = rng.randrange(4)
    if kind == 0:
        deep = b"[" * depth + b"1" + b"]" * depth
    elif kind == 1:
        deep = b"{a = " * depth + b"1" + b"}" * depth
    elif kind == 2:
        return data + b"\n" + b"x" + b".y" * depth + b" = 1\n"
    else:
        return data + b"\n[" + b".".join([b"t"] * depth) + b"]\n"
    matches = list(ASSIGNMENT.finditer(data))
    if not matches:
        return data + b"\nx = " + deep + b"\n"
    match = rng.choice(matches)
    return data.replace(match.group(0), match.group(1) + deep, 1)


def _encode(rng: random.Random, data: bytes) -> bytes:
    text = data.decode("utf-8", "replace") + "\n# Müller Straße\n"
    choice = rng.randrange(5)
    if choice == 0:
        return text.encode("utf-16")
    if choice == 1:
        return text.encode("utf-16-be")
    if choice == 2:
        return text.encode("latin-1", "replace")
    if choice == 3:
        return b"\xef\xbb\xbf" + data
    return text.encode("utf-32")


def _unicode(rng: random.Random, data: bytes) -> bytes:
    chars = ["\u200b", "\u202e", "\ufeff", "é", "😀", "\u0301", "\x7f", "\x1b", "\u00a0", "\u2028"]
    text = data.decode("utf-8", "replace")
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice(chars) + text[at:]
    return text.encode("utf-8")


def _lines(rng: random.Random, data: bytes) -> bytes:
    lines = data.split(b"\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    action = rng.randrange(3)
    if action == 0:
        lines.insert(j, lines[i])  # duplicate: duplicate keys, tables, array entries
    elif action == 1:
        del lines[i]
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


MUTATORS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "flip": _flip, "truncate": _truncate, "splice": _splice, "swap_value": _swap_value,
    "nest": _nest, "encode": _encode, "unicode": _unicode, "lines": _lines,
}


def _combined(rng: random.Random, data: bytes) -> bytes:
    for name in rng.sample(sorted(MUTATORS), rng.randint(2, 3)):
        data = MUTATORS[name](rng, data)
    return data


TARGETS = {**MUTATORS, "combined": _combined}


def build_case(target: str, index: int) -> bytes:
    """The bytes of case ``index`` of ``target``: the same on every run and machine."""
    rng = random.Random(f"{target}#{index}")
    # Half the cases start from the example (valid: mutations reach deep checks), half from
    # the golden cases (each already wrong in one known way).
    seed = SEEDS[0] if index % 2 == 0 else SEEDS[1 + (index // 2) % (len(SEEDS) - 1)]
    return TARGETS[target](rng, seed)


def _check_in_process(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["check", str(path)])
    return status, out.getvalue(), err.getvalue()


def _problem(path: Path, status: int, out: str, err: str, seconds: float) -> str | None:
    """What is wrong with one answer of ``check``, or None."""
    if seconds > CASE_SECONDS:
        return f"took {seconds:.1f} s"
    if "Traceback" in err:
        return f"traceback: {err[-300:]}"
    if status == 0:
        return None if out.startswith(f"{path}: valid") else f"exit 0 without 'valid': {out[:200]}"
    if status != 2:
        return f"exit {status}: {err[:300]}"
    lines = err.splitlines()
    if not lines or not all(line.startswith(f"{path}: ") and len(line) > len(f"{path}: ")
                            for line in lines):
        return f"exit 2 without FILE: WHAT lines: {err[:300]!r}"
    return None


def _unusable_fail_safe(path: Path) -> str | None:
    """A config ``check`` calls valid must not hold a fail-safe value the write path refuses
    (issue 14 item 8: the PLC would never get its safe value)."""
    for model in load_config(path).models:
        for key, target in (model.writeback.targets().items() if model.writeback else ()):
            if target.fail_safe is not None:
                try:
                    check_value(key, target, target.fail_safe)
                except WriteRefusedError as exc:
                    return f"valid, but the fail-safe value is refused at run time: {exc}"
    return None


@pytest.mark.timeout(60 + CASES * len(SEEDS) // 10)
@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz_check(target: str, tmp_path: Path) -> None:
    failures = []
    valid = 0
    path = tmp_path / "config.toml"
    for index in range(CASES):
        path.write_bytes(build_case(target, index))
        start = time.monotonic()
        try:
            status, out, err = _check_in_process(path)
        except BaseException as exc:  # what would be a traceback on the console
            failures.append(f"{target}#{index}: {type(exc).__name__}: {exc}"[:300])
            continue
        valid += status == 0
        problem = _problem(path, status, out, err, time.monotonic() - start) \
            or (_unusable_fail_safe(path) if status == 0 else None)
        if problem:
            failures.append(f"{target}#{index}: {problem}")
    print(f"fuzz {target}: {CASES} cases ({valid} valid), {len(failures)} failures")
    assert not failures, "\n".join(failures[:10])


SUBPROCESS_CASES = [("encode", 0), ("nest", 5), ("splice", 3), ("swap_value", 7), ("flip", 11),
                    ("combined", 2)]


@pytest.mark.parametrize(("target", "index"), SUBPROCESS_CASES)
def test_fuzz_check_subprocess(target: str, index: int, tmp_path: Path) -> None:
    """A few cases through the real command: what the operator sees, in a fresh interpreter."""
    path = tmp_path / "config.toml"
    path.write_bytes(build_case(target, index))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bridge.cli", "check", str(path)], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    problem = _problem(path, result.returncode, result.stdout, result.stderr,
                       time.monotonic() - start - 5.0)  # interpreter start-up is not the case's
    assert problem is None, f"{target}#{index}: {problem}"
