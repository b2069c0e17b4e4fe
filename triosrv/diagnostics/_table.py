"""The one table renderer every diagnostics command prints with.

Plain text, no colours, no box drawing: the output is read in terminals, pasted into
tickets and grepped, so columns are separated by two spaces and numbers are aligned
right the way ``ps`` and ``ss`` do it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def format_seconds(seconds: float | None) -> str:
    """``1.25`` -> ``"1.2s"``, ``75`` -> ``"1m15s"``, ``None``/inf -> ``"-"``."""
    if seconds is None or math.isinf(seconds) or math.isnan(seconds):
        return "-"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 10:
        return f"{sign}{seconds:.1f}s"
    if seconds < 60:
        return f"{sign}{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{sign}{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{sign}{hours}h{minutes:02d}m"


def format_cell(value: object) -> str:
    """How one value looks in a table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, indent: str = ""
) -> str:
    """Render rows under headers as aligned text; numeric columns align right.

    A column is numeric when every non-empty cell in it is an int or a float.
    Returns the lines joined with newlines, without a trailing newline.
    """
    cells = [[format_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [
        any(_is_number(row[i]) for row in rows)
        and all(row[i] is None or _is_number(row[i]) for row in rows)
        for i in range(len(headers))
    ]

    def line(texts: Sequence[str]) -> str:
        parts = [
            text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i])
            for i, text in enumerate(texts)
        ]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])
