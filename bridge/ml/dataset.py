"""Recorded or labelled CSV data (SKAB format) for training and evaluation.

The format is SKAB's: ``;``-separated, one header row, a ``datetime`` column
(``YYYY-MM-DD hh:mm:ss`` or ISO 8601), numeric signal columns, and optionally ``anomaly`` (0/1
label), ``changepoint`` (0/1) and ``quality`` (``good | uncertain | bad`` per row, as recorded by
the bridge). Every problem is a ``DataError`` naming the file, and the row or column.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bridge.core.errors import PlcBridgeError
from bridge.core.tags import Quality

__all__ = ["LABEL_COLUMNS", "DataError", "Table", "load_csv"]

TIME_COLUMN = "datetime"
LABEL_COLUMN = "anomaly"
QUALITY_COLUMN = "quality"
# Columns that are never signals: a model must not be fed its own labels.
LABEL_COLUMNS = frozenset({LABEL_COLUMN, "changepoint", QUALITY_COLUMN})


class DataError(PlcBridgeError):
    """A data file that cannot be used; the message names the file and the row or column."""


@dataclass(frozen=True)
class Table:
    """One CSV file as arrays. Row ``i`` is ``times[i]``, ``values[i]``, ``labels[i]``."""

    path: Path
    times: np.ndarray  # [T] float64 epoch seconds (naive timestamps are read as UTC)
    columns: tuple[str, ...]  # signal column names, file order
    values: np.ndarray  # [T, C] float64; NaN where the cell is empty or not finite
    labels: np.ndarray | None  # [T] int8 0/1, or None when the file has no `anomaly` column
    good: np.ndarray  # [T] bool: row quality is good (True when the file has no quality column)

    def __len__(self) -> int:
        return len(self.times)

    def select(self, inputs: Sequence[str]) -> np.ndarray:
        """The [T, len(inputs)] values of these columns, in this order."""
        missing = [name for name in inputs if name not in self.columns]
        if missing:
            raise DataError(
                f"{self.path}: no column {', '.join(repr(m) for m in missing)} "
                f"(columns: {', '.join(self.columns)})"
            )
        return self.values[:, [self.columns.index(name) for name in inputs]]

    def head(self, rows: int) -> Table:
        """The first ``rows`` rows (the SKAB training part is the first 400)."""
        return Table(self.path, self.times[:rows], self.columns, self.values[:rows],
                     None if self.labels is None else self.labels[:rows], self.good[:rows])

    def sha256(self, inputs: Sequence[str]) -> str:
        """Digest of the times and selected values: identifies the training data in the contract."""
        data = np.column_stack([self.times, self.select(inputs)])
        return hashlib.sha256(np.ascontiguousarray(data, dtype="<f8").tobytes()).hexdigest()


def _parse_time(text: str, where: str) -> float:
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DataError(f"{where}: {TIME_COLUMN} {text!r} is not a date and time") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _parse_float(text: str) -> float:
    """A cell as float; empty or non-finite cells become NaN (a bad reading, not an error)."""
    text = text.strip()
    if not text:
        return math.nan
    number = float(text)  # ValueError handled by the caller, who knows the row and column
    return number if math.isfinite(number) else math.nan


def load_csv(path: Path | str) -> Table:
    """Read a SKAB-format CSV. Raises ``DataError`` for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, delimiter=";"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as a ';'-separated CSV ({exc})") from exc
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise DataError(f"{path}: empty file (expected a header row with {TIME_COLUMN!r})")
    header = [cell.strip() for cell in rows[0]]
    if TIME_COLUMN not in header:
        raise DataError(f"{path}: no {TIME_COLUMN!r} column in the header {header} (is it ';'-separated?)")
    if len(set(header)) != len(header):
        raise DataError(f"{path}: duplicate column names in the header {header}")
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    if not body:
        raise DataError(f"{path}: no data rows")
    t_col = header.index(TIME_COLUMN)
    signals = [i for i, name in enumerate(header) if name != TIME_COLUMN and name not in LABEL_COLUMNS]
    times = np.empty(len(body))
    values = np.empty((len(body), len(signals)))
    labels = np.zeros(len(body), dtype=np.int8) if LABEL_COLUMN in header else None
    good = np.ones(len(body), dtype=bool)
    for r, row in enumerate(body):
        line = r + 2  # 1-based, after the header
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
        times[r] = _parse_time(row[t_col], f"{path}: line {line}")
        for c, i in enumerate(signals):
            try:
                values[r, c] = _parse_float(row[i])
            except ValueError:
                raise DataError(
                    f"{path}: line {line}, column {header[i]!r}: {row[i]!r} is not a number") from None
        if QUALITY_COLUMN in header:
            cell = row[header.index(QUALITY_COLUMN)].strip().lower()
            try:
                good[r] = Quality(cell) is Quality.GOOD
            except ValueError:
                raise DataError(
                    f"{path}: line {line}, column {QUALITY_COLUMN!r}: {cell!r} is not one of "
                    f"{', '.join(q.value for q in Quality)}") from None
        if labels is not None:
            cell = row[header.index(LABEL_COLUMN)].strip()
            if cell == "" and not good[r]:
                # `record` leaves a tag blank on a row it could not read, the label tag too; the
                # row is never scored (its windows are invalid), so it needs no label.
                continue
            if cell not in ("0", "1", "0.0", "1.0"):
                raise DataError(f"{path}: line {line}, column {LABEL_COLUMN!r}: {cell!r} is not 0 or 1")
            labels[r] = int(float(cell))
    if np.any(np.diff(times) <= 0):
        bad = int(np.argmax(np.diff(times) <= 0)) + 3
        raise DataError(f"{path}: line {bad}: {TIME_COLUMN} does not increase")
    return Table(path, times, tuple(header[i] for i in signals), values, labels, good)
