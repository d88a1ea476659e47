"""One univariate series from a CSV file, for `npylstm sine --data FILE.csv [--column NAME]`.

    read_series(path, column=None) -> (values : (S,) float64, name : str)

The first row is a header when any of its cells is not a number. `column` is a header name or a
0-based index (a name wins when a header cell is spelled like a number); None takes the only column,
or the last one when there are several (a time stamp first and the value last is the common layout).
Blank lines are skipped. Every failure is a CommandError that names the file and what is wrong with
it: missing or unreadable, no such column, a cell that is not a number, a NaN or an infinity.
"""

import csv

import numpy as np

from .common import CommandError


def _number(cell):
    try:
        return float(cell)
    except ValueError:
        return None


def _pick_column(where, column, header, width):
    """The index of `column` (name, index as a string, or None) in rows `width` cells wide."""
    if column is None:
        return width - 1
    if header is not None and column in header:
        return header.index(column)
    try:
        k = int(column)
    except ValueError:
        names = ", ".join(repr(h) for h in header) if header is not None else "none (the file has no header row)"
        raise CommandError(f"{where}: no column {column!r}; the columns are {names}") from None
    if not 0 <= k < width:
        raise CommandError(f"{where}: column index {k} is out of range: the file has {width} column(s), "
                           f"indices 0..{width - 1}")
    return k


def read_series(path, column=None):
    """values : (S,) float64 and the column's name (its header, or "column K") from a CSV file."""
    where = f"--data {path}"
    try:
        with open(path, newline="") as f:
            rows = [[c.strip() for c in r] for r in csv.reader(f) if any(c.strip() for c in r)]
    except FileNotFoundError:
        raise CommandError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CommandError(f"{where}: cannot read it as a CSV file ({e})") from None
    if not rows:
        raise CommandError(f"{where}: the file is empty")
    header = rows[0] if any(_number(c) is None for c in rows[0]) else None
    body, first_line = (rows[1:], 2) if header is not None else (rows, 1)
    width = len(rows[0])
    k = _pick_column(where, column, header, width)
    name = header[k] if header is not None else f"column {k}"
    values = np.empty(len(body))
    for i, r in enumerate(body):
        cell = r[k] if k < len(r) else ""
        v = _number(cell)
        if v is None:
            raise CommandError(f"{where}: column {name!r} is not numeric: row {i + first_line} holds {cell!r}")
        if not np.isfinite(v):
            raise CommandError(f"{where}: column {name!r} holds {cell!r} at row {i + first_line}; "
                               f"the series must be finite (no NaN or infinity)")
        values[i] = v
    return values, name
