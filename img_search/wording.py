"""Wording shared by the library's messages and the command line's output."""

from __future__ import annotations


def count(n: int, singular: str, plural: str | None = None) -> str:
    """``n`` with the noun that agrees with it: ``count(1, "Parquet file")`` -> "1 Parquet file", ``count(3, ...)``
    -> "3 Parquet files", ``count(0, "entry", "entries")`` -> "0 entries" (``plural``: default ``singular + "s"``)."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"
