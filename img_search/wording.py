"""Wording shared by the library's messages and the command line's output."""

from __future__ import annotations


def noun(n: int, singular: str, plural: str | None = None) -> str:
    """The noun alone, agreeing with ``n``: ``noun(1, "key")`` -> "key", ``noun(2, "key")`` -> "keys",
    ``noun(0, "entry", "entries")`` -> "entries" (``plural``: default ``singular + "s"``). For a message that lists
    the things rather than counting them: ``f"unknown {noun(len(bad), 'key')} {', '.join(bad)}"``."""
    return singular if n == 1 else plural or singular + "s"


def count(n: int, singular: str, plural: str | None = None) -> str:
    """``n`` with the noun that agrees with it: ``count(1, "Parquet file")`` -> "1 Parquet file", ``count(3, ...)``
    -> "3 Parquet files", ``count(0, "entry", "entries")`` -> "0 entries" (``plural``: default ``singular + "s"``)."""
    return f"{n} {noun(n, singular, plural)}"
