"""Generate docs/config-reference.md from the config schema and config.example.toml.

The schema (bridge.config) gives every key, its type, default and limits; the example file
gives the one-line meaning (the comment after the key). A test regenerates the page and fails
when it differs from the committed one, so code, example and reference cannot drift apart.
Run ``python -m bridge.config.reference > docs/config-reference.md`` after changing either.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from bridge.config import Config

__all__ = ["example_comments", "render"]

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
_HEADER = re.compile(r"^\s*#?\s*(\[\[?[\w.]+\]\]?)\s*(?:#\s*(.+?))?\s*$")
_KEY = re.compile(r"^\s*#?\s*([a-z_][a-z0-9_]*)\s*=\s*.*?#\s*(.+?)\s*$")


def example_comments(text: str) -> dict[tuple[str, str], str]:
    """(table, key) -> the comment after ``key = value`` in the example, commented out or not."""
    comments: dict[tuple[str, str], str] = {}
    table = ""
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and "=" not in line.split("#")[0]:
            table = header.group(1).strip("[]")
            parent, _, key = table.rpartition(".")
            if header.group(2):
                # A table's own comment documents the key that holds it in its parent.
                comments.setdefault((parent, key), header.group(2))
            continue
        key = _KEY.match(line)
        if key:
            # The first commented occurrence in a table documents the key.
            comments.setdefault((table, key.group(1)), key.group(2))
    return comments


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes inside an annotation (lists, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found += _models(arg)
    return found


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _type_name(get_args(annotation)[0])
    if origin is Literal:
        return " \\| ".join(repr(a).replace("'", '"') for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        parts = [_type_name(a) for a in get_args(annotation) if a is not type(None)]
        return " \\| ".join(parts) + (" (optional)" if type(None) in get_args(annotation) else "")
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if origin is dict:
        return "table"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "table"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                "Path": "path"}.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _limits(field: Any) -> str:
    parts = []
    for item in field.metadata:
        if isinstance(item, Ge):
            parts.append(f">= {item.ge}")
        elif isinstance(item, Gt):
            parts.append(f"> {item.gt}")
        elif isinstance(item, Le):
            parts.append(f"<= {item.le}")
        elif isinstance(item, Lt):
            parts.append(f"< {item.lt}")
        elif isinstance(item, MinLen):
            parts.append(f"length >= {item.min_length}")
        elif isinstance(item, MaxLen):
            parts.append(f"length <= {item.max_length}")
    return ", ".join(parts)


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "`[]`" if value == [] else ("(table)" if isinstance(value, BaseModel) else f"`{value}`")
    value = field.default
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value!r}`".replace("'", '"')


# Where each model appears in a TOML file, and the table its example comments live under.
def _sections() -> list[tuple[str, type[BaseModel], str]]:
    sections: list[tuple[str, type[BaseModel], str]] = []
    for key, field in Config.model_fields.items():
        for model in _models(field.annotation):
            array = get_origin(field.annotation) is list
            title = f"[[{key}]]" if array else f"[{key}]"
            suffix = ""
            if len(_models(field.annotation)) > 1:
                protocol = model.model_fields.get("protocol")
                kind = get_args(protocol.annotation)[0] if protocol is not None else model.__name__
                suffix = f" (protocol = \"{kind}\")"
            sections.append((title + suffix, model, key))
            for sub_key, sub in model.model_fields.items():
                for child in _models(sub.annotation):
                    sub_array = get_origin(sub.annotation) is list
                    path = f"{key}.{sub_key}"
                    sub_title = f"[[{path}]]" if sub_array else f"[{path}]"
                    sections.append((sub_title + suffix, child, path))
                    # Inline tables of one kind (score = {...}, anomaly = {...}) share a section.
                    inline: dict[type[BaseModel], list[str]] = {}
                    for leaf_key, leaf in child.model_fields.items():
                        for grand in _models(leaf.annotation):
                            inline.setdefault(grand, []).append(leaf_key)
                    for grand, keys in inline.items():
                        sections.append((f"{path}: {' / '.join(keys)} = {{ ... }}", grand, path))
    unique: list[tuple[str, type[BaseModel], str]] = []
    for item in sections:
        if item not in unique:
            unique.append(item)
    return unique


def render(example_text: str | None = None) -> str:
    comments = example_comments(example_text if example_text is not None else EXAMPLE.read_text())
    lines = [
        "# Configuration reference",
        "",
        "Generated by `python -m bridge.config.reference` from the schema in `bridge/config/`",
        "and the comments in `config.example.toml`; do not edit by hand (a test checks it).",
        "Durations are seconds unless the key ends in `_ms`; Modbus addresses are zero-based.",
        "",
    ]
    for title, model, table in _sections():
        lines += [f"## `{title}`", ""]
        doc = (model.__doc__ or "").strip().splitlines()
        if doc:
            lines += [doc[0], ""]
        lines += ["| key | type | default | limits | meaning |", "|---|---|---|---|---|"]
        for key, field in model.model_fields.items():
            meaning = comments.get((table, key), "").replace("|", "\\|")
            if not meaning and _models(field.annotation):
                meaning = "a table of its own: see below"
            lines.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | "
                         f"{_limits(field)} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
