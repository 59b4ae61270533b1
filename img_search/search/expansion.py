"""Query expansion (seed 003): related terms from an editable synonym file, and the two ways to merge the expanded
queries' scores.

**Terms.** ``get_query_context("dog")`` returns ``["puppy", "canine", "pet", "animal", "pup"]`` (the seed's function
and its list). The entries come from the shipped ``img_search/search/synonyms.toml`` (several dozen common photo-search
concepts: pets, people, places, events, food, weather, seasons, colours, vehicles, ...) merged with the user's own
``$XDG_CONFIG_HOME/img-search/synonyms.toml`` (default ``~/.config/img-search/synonyms.toml``): a user entry's terms
come first, then the shipped ones for the same key; a table ``[replace]`` in the user file replaces a shipped entry
(an empty list removes it). Keys are words or phrases matched as whole words, case-insensitively. A multi-word query
expands each word or phrase that has an entry (longest phrase first) into whole expanded query strings, one
replacement at a time, taking the matched phrases in turn: ``"dog on beach"`` -> ``"puppy on beach"``,
``"dog on seashore"``, ``"canine on beach"``, ... Words written as NOT-terms or image terms (``-people``,
``+img.jpg``) are never expanded. The number of variants is capped (``limit``, the seed's 5: "expanded_terms[:5]").

**Merging** (what the searcher does with the expanded queries):

* ``merge_max`` (default): each image's score is the max over the queries of its calibrated probability: an image
  matches when it matches any of the variants. ``merge_max_topk`` does the same on per-query top-k lists; its top
  ``limit`` equals the top ``limit`` of ``merge_max`` over the whole collection when each list holds that query's top
  ``limit`` (an image outside query q's top ``limit`` is beaten there by ``limit`` images whose max is at least as
  high).
* ``prompt_ensemble`` (option): one query vector, the normalised mean of the L2-normalised text embeddings: CLIP's
  prompt ensembling (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision",
  section 3.1.4, which averages the embeddings of 80 prompt templates per class). One search instead of n; the
  model's calibration was learned for single prompts, so the probability of the mean vector is an approximation.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import tomllib
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from img_search.errors import InvalidInputError

logger = logging.getLogger(__name__)

#: How many expanded queries by default (seed 003: ``for term in expanded_terms[:5]``).
DEFAULT_EXPANSIONS = 5
#: The file name, shipped beside this module and looked for in the user's config folder.
SYNONYMS_FILE = "synonyms.toml"
#: The user file's table whose entries replace the shipped ones instead of extending them.
REPLACE_TABLE = "replace"

# a word: letters/digits with inner apostrophes or hyphens ("jack-o'-lantern", "kid's")
_WORD = re.compile(r"\w+(?:['’-]\w+)*")

K = TypeVar("K", bound=Hashable)


def user_synonyms_path() -> Path:
    """``$XDG_CONFIG_HOME/img-search/synonyms.toml``, else ``~/.config/img-search/synonyms.toml`` (the XDG base
    directory spec's config home). The file need not exist."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "img-search" / SYNONYMS_FILE


def normalize_term(term: str) -> str:
    """The key a term is looked up by: its words, case-folded, joined by one space (``"Birthday  Party"`` ->
    ``"birthday party"``)."""
    return " ".join(w.casefold() for w in _WORD.findall(term))


@dataclass(frozen=True)
class Synonyms:
    """The merged synonym entries: normalised key -> related terms, best first (no duplicates, never the key)."""

    entries: Mapping[str, tuple[str, ...]]
    sources: tuple[Path, ...] = ()
    max_words: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_words", max((k.count(" ") + 1 for k in self.entries), default=1))

    def __len__(self) -> int:
        return len(self.entries)

    def related(self, term: str) -> tuple[str, ...]:
        """The related terms of ``term`` (a word or phrase, any case), best first; ``()`` when it has no entry."""
        return self.entries.get(normalize_term(term), ())

    def variants(self, query: str, limit: int = DEFAULT_EXPANSIONS) -> list[str]:
        """Up to ``limit`` expanded query strings of ``query`` (never ``query`` itself; no duplicates, compared
        case-insensitively): each replaces one matched word or phrase by one of its related terms, the rest of the
        query kept as written. Matched phrases take turns (first related term of each, then the second, ...)."""
        limit = _check_limit(limit)
        query = _check_query(query)
        spans = self._matches(query)
        seen = {query.casefold()}
        out: list[str] = []
        depth = max((len(terms) for _, _, terms in spans), default=0)
        for k in range(depth):
            for start, end, terms in spans:
                if len(out) >= limit:
                    return out
                if k >= len(terms):
                    continue
                variant = query[:start] + terms[k] + query[end:]
                if variant.casefold() not in seen:
                    seen.add(variant.casefold())
                    out.append(variant)
        return out

    def _matches(self, query: str) -> list[tuple[int, int, tuple[str, ...]]]:
        """(start, end, related terms) of each word or phrase of ``query`` with an entry, left to right, longest
        phrase first, not overlapping; words right after ``-`` / ``+`` (NOT-terms, image terms) are skipped."""
        words = [(m.start(), m.end(), m.group().casefold()) for m in _WORD.finditer(query)]
        found: list[tuple[int, int, tuple[str, ...]]] = []
        i = 0
        while i < len(words):
            start = words[i][0]
            if start > 0 and query[start - 1] in "-+" and (start == 1 or query[start - 2].isspace()):
                # skip the whole term (up to the next whitespace): "-people", "+beach.jpg"
                j = i + 1
                while j < len(words) and not any(c.isspace() for c in query[words[j - 1][1]:words[j][0]]):
                    j += 1
                i = j
                continue
            for n in range(min(self.max_words, len(words) - i), 0, -1):
                key = " ".join(w for _, _, w in words[i:i + n])
                terms = self.entries.get(key)
                if terms:
                    found.append((start, words[i + n - 1][1], terms))
                    i += n
                    break
            else:
                i += 1
        return found


# ---------------------------------------------------------------------------------------------------- loading
def _line_of(text: str, key: str, table: str | None) -> int | None:
    """The 1-based line where ``key`` is assigned (after ``[table]`` when given), best effort, for error messages."""
    lines = text.splitlines()
    begin = 0
    if table is not None:
        header = re.compile(r"^\s*\[\s*(\"?)" + re.escape(table) + r"\1\s*\]")
        begin = next((n + 1 for n, line in enumerate(lines) if header.match(line)), 0)
    assign = re.compile(r"^\s*(\"|')?" + re.escape(key) + r"(\"|')?\s*=")
    return next((n + 1 for n in range(begin, len(lines)) if assign.match(lines[n])), None)


def _entries_of(doc: Mapping[str, Any], path: Path, text: str, *, user: bool) -> tuple[dict[str, list[str]],
                                                                                    dict[str, list[str]]]:
    """(extend, replace) entries of one parsed file; raises ``InvalidInputError`` naming file, line and key."""
    extend: dict[str, list[str]] = {}
    replace: dict[str, list[str]] = {}

    def bad(key: str, table: str | None, why: str) -> InvalidInputError:
        line = _line_of(text, key, table)
        where = f"{path}, line {line}" if line is not None else str(path)
        return InvalidInputError(f"{where}: synonym entry {key!r} {why}; expected term = [\"related\", \"terms\"]")

    def add(target: dict[str, list[str]], key: str, value: Any, table: str | None) -> None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(key, table, "must be a list of strings")
        norm = normalize_term(key)
        if not norm:
            raise bad(key, table, "has no words")
        terms = [" ".join(v.split()) for v in value]
        if any(not t for t in terms):
            raise bad(key, table, "holds an empty string")
        target.setdefault(norm, []).extend(terms)

    for key, value in doc.items():
        if isinstance(value, dict):
            target = replace if (user and key == REPLACE_TABLE) else extend
            for sub_key, sub_value in value.items():
                if isinstance(sub_value, dict):
                    raise bad(sub_key, key, "is a table inside a table (one level of [section] only)")
                add(target, sub_key, sub_value, key)
        else:
            add(extend, key, value, None)
    return extend, replace


def _parse(path: Path, text: str, *, user: bool) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)" or "(at end of document)"
        message = str(exc)
        at = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if at is not None:
            where = f"line {at.group(1)}, column {at.group(2)}"
            message = message[:at.start()]
        else:
            where = f"line {max(len(text.splitlines()), 1)} (end of file)"
            message = re.sub(r"\s*\(at end of document\)$", "", message)
        raise InvalidInputError(f"{path}, {where}: not a valid synonyms file: {message}") from None
    return _entries_of(doc, path, text, user=user)


def _dedupe(key: str, terms: Iterable[str]) -> tuple[str, ...]:
    seen = {key}
    out = []
    for term in terms:
        folded = normalize_term(term)
        if folded and folded not in seen:
            seen.add(folded)
            out.append(term)
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _shipped() -> tuple[Path, dict[str, list[str]]]:
    res = resources.files("img_search.search").joinpath(SYNONYMS_FILE)
    path = Path(str(res))
    extend, _ = _parse(path, res.read_text(encoding="utf-8"), user=False)
    return path, extend


@functools.lru_cache(maxsize=8)
def _merged(user_path: Path | None, stamp: tuple[int, int] | None) -> Synonyms:
    shipped_path, shipped = _shipped()
    merged = {k: list(v) for k, v in shipped.items()}
    sources = [shipped_path]
    if user_path is not None and stamp is not None:
        try:
            text = user_path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"{user_path}: not a valid synonyms file: not UTF-8 text") from None
        except OSError as exc:
            raise InvalidInputError(f"{user_path}: cannot read the synonyms file: {exc.strerror or exc}") from None
        extend, replace = _parse(user_path, text, user=True)
        for key, terms in extend.items():
            merged[key] = terms + merged.get(key, [])
        for key, terms in replace.items():
            merged[key] = list(terms)
        sources.append(user_path)
        logger.debug("synonyms: %d shipped entries, %d user entries from %s", len(shipped),
                     len(extend) + len(replace), user_path)
    entries = {k: _dedupe(k, v) for k, v in merged.items()}
    return Synonyms({k: v for k, v in entries.items() if v}, tuple(sources))


def load_synonyms(user_file: str | os.PathLike[str] | None = None, *, include_user: bool = True) -> Synonyms:
    """The shipped entries merged with the user's file (``user_file``, default ``user_synonyms_path()``; a missing
    file is no error). ``include_user=False``: the shipped entries only. Cached until the user file changes (its
    mtime and size). Raises ``InvalidInputError`` naming the file and line when a file is malformed."""
    if not include_user:
        return _merged(None, None)
    path = Path(user_file) if user_file is not None else user_synonyms_path()
    path = Path(os.path.expanduser(path))
    try:
        st = path.stat()
    except FileNotFoundError:
        return _merged(None, None)
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the synonyms file: {exc.strerror or exc}") from None
    return _merged(path, (st.st_mtime_ns, st.st_size))


# ------------------------------------------------------------------------------------------------------ expansion
def _check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 0:
        raise InvalidInputError(f"the expansion limit must be a whole number >= 0, got {limit!r}")
    return int(limit)


def _check_query(query: Any) -> str:
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError("the query text is empty")
    return query.strip()


def get_query_context(query: str, *, limit: int = DEFAULT_EXPANSIONS, synonyms: Synonyms | None = None) -> list[str]:
    """Up to ``limit`` expanded queries for ``query`` (the seed's function): for a query that is one entry's key,
    its related terms (``get_query_context("dog")`` -> ``["puppy", "canine", "pet", "animal", "pup"]``); for a longer
    query, the query with one matched word or phrase replaced (``"dog on beach"`` -> ``["puppy on beach",
    "dog on seashore", ...]``). ``[]`` when nothing in the query has an entry. ``synonyms`` defaults to
    ``load_synonyms()`` (shipped + user file). Raises ``InvalidInputError`` for an empty query, a negative limit or a
    malformed user file."""
    return (synonyms if synonyms is not None else load_synonyms()).variants(query, limit)


def expand_query(query: str, limit: int = DEFAULT_EXPANSIONS, *, synonyms: Synonyms | None = None) -> list[str]:
    """``[query, *get_query_context(query, limit=limit)]``: the original first, then up to ``limit`` variants (so at
    most ``limit + 1`` strings); the query is stripped of surrounding whitespace."""
    variants = get_query_context(query, limit=limit, synonyms=synonyms)
    return [query.strip(), *variants]


# -------------------------------------------------------------------------------------------------------- merging
def merge_max(probabilities: ArrayLike) -> NDArray[np.float64]:
    """The default merge of expanded queries: ``probabilities`` (n_queries, n_images), each row one query's calibrated
    probabilities (or cosines, for a model without calibration) over the same images -> (n_images,) float64, the max
    over the queries. Raises ``InvalidInputError`` unless the input is a 2-D array with at least one query row."""
    arr = np.asarray(probabilities, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InvalidInputError(f"merge_max expects a (n_queries >= 1, n_images) array, got shape {arr.shape}")
    if arr.shape[1] == 0:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(arr.max(axis=0), dtype=np.float64)


def merge_max_topk(per_query: Sequence[Sequence[tuple[K, float]]], limit: int) -> list[tuple[K, float, int]]:
    """``merge_max`` on per-query top-k lists: each list holds (key, score) pairs of one query (any order); returns
    up to ``limit`` (key, best score, index of the query that gave it), best first (ties: lower query index, then
    first seen). Exact (equal to the top ``limit`` of ``merge_max`` over everything) when every list holds its
    query's top ``limit``. Raises ``InvalidInputError`` for a limit < 1."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError(f"limit must be a whole number >= 1, got {limit!r}")
    best: dict[K, tuple[float, int]] = {}
    for qi, pairs in enumerate(per_query):
        for key, score in pairs:
            s = float(score)
            if math.isnan(s):
                continue
            held = best.get(key)
            if held is None or s > held[0]:
                best[key] = (s, qi)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[1][1]))
    return [(key, score, qi) for key, (score, qi) in ranked[:limit]]


def prompt_ensemble(text_vectors: ArrayLike) -> NDArray[np.float32]:
    """Prompt ensembling (CLIP, Radford et al. 2021, section 3.1.4): ``text_vectors`` (n, dim), the embeddings of the
    original query and its variants -> (dim,) float32 of unit length: the mean of the L2-normalised rows, normalised
    again. Raises ``InvalidInputError`` for an input that is not (n >= 1, dim >= 1), holds non-finite values or a zero
    row, or whose rows cancel out (mean of norm ~0)."""
    arr = np.asarray(text_vectors, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInputError(f"prompt_ensemble expects a (n >= 1, dim) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("prompt_ensemble: the text vectors hold NaN or infinity")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if np.any(norms <= 1e-12):
        raise InvalidInputError("prompt_ensemble: a text vector is all zeros")
    mean = (arr / norms).mean(axis=0)
    length = float(np.linalg.norm(mean))
    if length <= 1e-6:
        raise InvalidInputError("prompt_ensemble: the text vectors cancel out (their mean is ~0)")
    return (mean / length).astype(np.float32)
