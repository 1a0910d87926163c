"""Bearer tokens for the REST API: read and admin scopes, constant-time comparison.

Tokens come from a file (``[api] tokens_file``) and/or an environment variable
(``[api] tokens_env``). Both use one line per token, ``SCOPE TOKEN [NAME]`` (the variable
may separate entries with commas instead of newlines); ``#`` starts a comment. Only SHA-256
digests are kept in memory, and every request compares against every digest so that the
time taken says nothing about which token was close.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from bridge.core.errors import ConfigError
from bridge.core.files import read_text_file

__all__ = ["SCOPES", "TokenSet", "load_tokens", "parse_tokens"]

SCOPES = ("read", "admin")
_MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    scope: str
    name: str


class TokenSet:
    def __init__(self, entries: list[_Entry]) -> None:
        self._entries = entries

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def scope_of(self, token: str) -> tuple[str, str] | None:
        """(scope, name) of ``token``, or None. Constant time in the position of a match."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: _Entry | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return None if found is None else (found.scope, found.name)


def _parse(text: str, source: str, separator_commas: bool) -> list[_Entry]:
    entries = []
    lines = text.replace(",", "\n").splitlines() if separator_commas else text.splitlines()
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        # Never echo the line: it holds a secret.
        where = f"{source}: entry {number}"
        if len(parts) not in (2, 3):
            raise ConfigError([f"{where}: expected 'SCOPE TOKEN [NAME]'"])
        scope, token = parts[0], parts[1]
        if scope not in SCOPES:
            raise ConfigError([f"{where}: scope {scope!r} is not one of {', '.join(SCOPES)}"])
        if len(token) < _MIN_TOKEN_LENGTH:
            raise ConfigError([f"{where}: token is shorter than {_MIN_TOKEN_LENGTH} characters"])
        name = parts[2] if len(parts) == 3 else f"{source}#{number}"
        entries.append(_Entry(hashlib.sha256(token.encode()).digest(), scope, name))
    return entries


def parse_tokens(text: str, source: str = "tokens") -> TokenSet:
    """Tokens from text in the file format (for embedding and tests)."""
    return TokenSet(_parse(text, source, separator_commas=False))


def load_tokens(tokens_file: Path | None, tokens_env: str | None) -> TokenSet:
    """Load the configured tokens. A configured but missing or empty source is an error:
    silently serving without authentication would be worse than not starting."""
    entries: list[_Entry] = []
    if tokens_file is not None:
        try:
            text = read_text_file("api.tokens_file", tokens_file)
        except ValueError as exc:
            raise ConfigError([str(exc)]) from None
        entries += _parse(text, "api.tokens_file", separator_commas=False)
    if tokens_env is not None:
        value = os.environ.get(tokens_env)
        if not value:
            raise ConfigError([f"api.tokens_env: environment variable {tokens_env} is not set"])
        entries += _parse(value, f"api.tokens_env ({tokens_env})", separator_commas=True)
    if (tokens_file is not None or tokens_env is not None) and not entries:
        raise ConfigError(["api.tokens_file: no tokens configured"])
    return TokenSet(entries)
