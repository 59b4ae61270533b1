"""User tags and descriptions: ``img-search tag`` and ``img-search import-metadata`` (docs/FORMATS.md).

Both name images by path, resolved the way the catalog names them (``catalog_names``: ``~`` expanded, made absolute,
the folder's canonical path, ``data.paths.canonical_folder``, with the plain absolute path as a fallback), and both
write under the catalog's writer lock (``catalog.lock.IndexLock``, the lock `index` takes), so they never race an
index run: while one runs they fail at once with ``CatalogLockedError``.

Only what changes is written and counted: a tag an image already has (in any case: tags match case-insensitively, as
the search filter does, and the spelling it has is kept) or a description it already has leaves it as it is, and the
image is reported ``unchanged`` rather than ``updated``.

Paths the catalog does not know as live images are never dropped silently: each comes back in
``AnnotateResult.unknown`` with the reason (not indexed, marked deleted, failed to index); the known ones are
updated all the same. Tags are added to what an image has (``tag --remove`` takes them off); a description replaces
the user's previous one. Re-running the same command or import changes nothing more, so an interrupted one is
finished by running it again.

Import files (``read_metadata_file``): CSV (UTF-8, a header row with a ``path`` column and ``tags`` and/or
``description``) or JSON (a list of objects with ``path``, or an object keyed by path), relative paths resolved
against the file's folder. A malformed file raises ``InvalidInputError`` naming the line (CSV, JSON syntax) or the
entry (JSON structure), before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from img_search.catalog.catalog import CATALOG_FILENAME, Catalog
from img_search.catalog.lock import IndexLock
from img_search.data.paths import canonical_folder
from img_search.errors import CatalogNotFoundError, InvalidInputError, NotFoundError

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("path", "tags", "description")
IMPORT_SUFFIXES = (".csv", ".json")
# the CSV ``tags`` cell is split on ';' when it holds one, else on ',' ("Paris, France;trip" keeps its comma)
TAG_SEPARATORS = (";", ",")


@dataclass(frozen=True)
class UnknownPath:
    """A path given by the user that names no live image of the catalog, and why."""

    path: str
    reason: str
    where: str | None = None  # "line 3" / "entry 2" of an import file


@dataclass
class AnnotateResult:
    """What ``tag_images`` / ``import_metadata`` did: the catalog paths that changed (``updated``), the known ones
    already as asked (``unchanged``), the paths not known (with reasons), and counts of the changes made
    (``tags_added``: (image, tag) pairs written, not those already there). ``added_tags`` / ``removed_tags``: each
    tag written / deleted, as the catalog stores it (white space normalised, the spelling an image had when
    removing), in order."""

    updated: list[str] = field(default_factory=list)
    unknown: list[UnknownPath] = field(default_factory=list)
    tags_added: int = 0
    tags_removed: int = 0
    descriptions_set: int = 0
    descriptions_cleared: int = 0
    entries: int = 0  # import: entries read from the file
    ignored_fields: list[str] = field(default_factory=list)  # import: columns / keys that are not read
    unchanged: list[str] = field(default_factory=list)
    added_tags: list[str] = field(default_factory=list)
    removed_tags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MetadataEntry:
    """One entry of an import file: the path as written and where (``line 3``, ``entry 2``), its tags and
    description (None: leave the image's description as it is)."""

    path: str
    where: str
    tags: tuple[str, ...] = ()
    description: str | None = None


# -- paths --------------------------------------------------------------------------------------------------------
class _Resolver:
    """User paths -> the catalog's name for them, with the folder lookups cached (an import names many files of few
    folders)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._folders: dict[str, str] = {}

    def candidates(self, path: str, base: str | None = None) -> list[str]:
        expanded = os.path.expanduser(path)
        absolute = os.path.normpath(os.path.join(base or os.getcwd(), expanded))
        folder, name = os.path.split(absolute)
        if folder not in self._folders:
            self._folders[folder] = canonical_folder(folder)
        canonical = os.path.join(self._folders[folder], name)
        return [canonical] if canonical == absolute else [canonical, absolute]

    def resolve(self, path: str, base: str | None = None, where: str | None = None) -> str | UnknownPath:
        """The catalog path of a live image, or why there is none."""
        rows = [r for r in (self.catalog.image(c) for c in self.candidates(path, base)) if r is not None]
        live = next((r for r in rows if r.status == "ok"), None)
        if live is not None:
            return live.path
        if not rows:
            where_now = self.candidates(path, base)[0]
            reason = ("is a folder; name image files" if os.path.isdir(where_now)
                      else "not in the catalog (run `img-search index` on its folder)" if os.path.exists(where_now)
                      else "no such file, and not in the catalog")
            return UnknownPath(path, reason, where)
        row = rows[0]
        if row.status == "deleted":
            return UnknownPath(path, "marked deleted in the catalog (the file was gone at the last index run)", where)
        return UnknownPath(path, f"failed to index ({row.error or 'unreadable'}); fix the file and re-run index",
                           where)


def catalog_names(paths: Sequence[str], index_dir: Path, base: str | None = None) -> list[str | UnknownPath]:
    """Each of ``paths`` (relative ones against ``base``, default the working directory) as the catalog names it,
    or an ``UnknownPath``. Read-only."""
    with Catalog(Path(index_dir) / CATALOG_FILENAME, readonly=True) as catalog:
        resolver = _Resolver(catalog)
        return [resolver.resolve(p, base) for p in paths]


def _open_writer(index_dir: Path) -> Catalog:
    path = Path(index_dir) / CATALOG_FILENAME
    if not path.is_file():
        raise CatalogNotFoundError(f"no catalog at {path}: run `img-search index FOLDER` first")
    return Catalog(path)


_KEEP = object()  # a description left as it is


def _apply(catalog: Catalog, result: AnnotateResult, paths: Sequence[str], *, add: Mapping[str, Sequence[str]],
           remove: Sequence[str] = (), descriptions: Mapping[str, str | None] | None = None,
           source: str) -> None:
    """Write the changes that change something and record them in ``result``: ``add`` {path: tags} (cleaned),
    ``remove`` tags taken off every path (any case), ``descriptions`` {path: text, or None to clear}. ``paths``:
    the known catalog paths, in the order to report them."""
    descriptions = descriptions or {}
    off = {t.lower() for t in remove}
    to_add: dict[str, list[str]] = {}
    to_remove: dict[str, list[str]] = {}
    to_set: dict[str, str] = {}
    to_clear: list[str] = []
    for path in paths:
        row = catalog.image(path)
        if row is None:  # resolved under the writer lock: cannot happen
            continue
        have = catalog.tags_of(row.id)
        held = {t.lower() for t in have}
        if adding := [t for t in add.get(path, ()) if t.lower() not in held]:
            to_add[path] = adding
        if removing := [t for t in have if t.lower() in off]:
            to_remove[path] = removing
        wanted = descriptions.get(path, _KEEP)
        if wanted is not _KEEP and wanted != catalog.description_of(row.id):
            if wanted is None:
                to_clear.append(path)
            else:
                to_set[path] = str(wanted)
    if to_remove:
        catalog.remove_tags(list(to_remove), sorted({t for ts in to_remove.values() for t in ts}))
    if to_clear:
        catalog.set_description(to_clear, None)
    if to_add or to_set:
        catalog.annotate(to_add, to_set, source=source)  # one transaction, the text index refreshed once per image
    changed = {*to_add, *to_remove, *to_set, *to_clear}
    result.updated = [p for p in paths if p in changed]
    result.unchanged = [p for p in paths if p not in changed]
    result.tags_added = sum(len(ts) for ts in to_add.values())
    result.tags_removed = sum(len(ts) for ts in to_remove.values())
    result.descriptions_set, result.descriptions_cleared = len(to_set), len(to_clear)
    result.added_tags = list(dict.fromkeys(t for ts in to_add.values() for t in ts))
    result.removed_tags = list(dict.fromkeys(t for ts in to_remove.values() for t in ts))


# -- tag ----------------------------------------------------------------------------------------------------------
def clean_tags(tags: Iterable[str], what: str = "tag") -> tuple[str, ...]:
    """Tags with surrounding and repeated white space removed, duplicates dropped (first spelling kept).
    ``InvalidInputError`` for an empty one."""
    out: dict[str, str] = {}
    for tag in tags:
        clean = " ".join(str(tag).split())
        if not clean:
            raise InvalidInputError(f"empty {what}: tags need at least one visible character")
        out.setdefault(clean.lower(), clean)
    return tuple(out.values())


def tag_images(index_dir: Path, paths: Sequence[str], *, add: Sequence[str] = (), remove: Sequence[str] = (),
               description: str | None = None, clear_description: bool = False) -> AnnotateResult:
    """Add and remove user tags and set or clear the user's description of each of ``paths`` (image files, named
    as on the command line: relative to the working directory).

    The known paths are updated where that changes them (``updated``; the rest: ``unchanged``), the others
    returned in ``unknown`` (nothing is written for them). Tags are stored cleaned (``clean_tags``). Raises
    ``InvalidInputError`` when there is nothing to do, a tag is empty, a tag is both added and removed, or a
    description is both given and cleared; ``CatalogNotFoundError`` without a catalog; ``CatalogLockedError`` while
    `index` (or another writer) runs.
    """
    add_tags, remove_tags = clean_tags(add), clean_tags(remove)
    both = {t.lower() for t in add_tags} & {t.lower() for t in remove_tags}
    if both:
        raise InvalidInputError(f"tag {sorted(both)[0]!r} is both added and removed; give it once")
    if description is not None and clear_description:
        raise InvalidInputError("--description and --clear-description contradict each other; give one")
    if description is not None and not description.strip():
        raise InvalidInputError("the description is empty; use --clear-description to remove one")
    if not (add_tags or remove_tags or description is not None or clear_description):
        raise InvalidInputError("nothing to do: give --add TAG, --remove TAG, --description TEXT or "
                                "--clear-description")
    if not paths:
        raise InvalidInputError("no image paths given")
    result = AnnotateResult()
    with IndexLock(index_dir), _open_writer(index_dir) as catalog:
        resolver = _Resolver(catalog)
        known: list[str] = []
        for path in paths:
            resolved = resolver.resolve(path)
            if isinstance(resolved, UnknownPath):
                result.unknown.append(resolved)
            elif resolved not in known:
                known.append(resolved)
        # tags match case-insensitively (as the tag filter does): every spelling present is removed
        new_description = None if description is None else description.strip()
        _apply(catalog, result, known, add=dict.fromkeys(known, add_tags), remove=remove_tags,
               descriptions=dict.fromkeys(known, new_description) if description is not None or clear_description
               else None, source="user")
    for unknown in result.unknown:
        logger.info("not tagged: %s: %s", unknown.path, unknown.reason)
    return result


# -- import files -------------------------------------------------------------------------------------------------
def split_tags(cell: str) -> list[str]:
    """A ``tags`` cell (or JSON string) -> tags: split on ';' when the text holds one, else on ',' (``TAG_SEPARATORS``);
    blanks dropped."""
    sep = next((s for s in TAG_SEPARATORS if s in cell), None)
    parts = cell.split(sep) if sep else [cell]
    return [p for p in (" ".join(part.split()) for part in parts) if p]


def _decode(file: Path) -> str:
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{file} is a folder; give a .csv or .json file") from None
    except OSError as exc:
        raise InvalidInputError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidInputError(f"{file}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it as "
                                "UTF-8") from None


def _parse_csv(file: Path, text: str) -> tuple[list[MetadataEntry], list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    entries: list[MetadataEntry] = []
    header: list[str] | None = None
    start = 1
    try:
        for row in reader:
            where = f"line {start}"
            start = reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue  # blank lines
            if header is None:
                header = [cell.strip().lower() for cell in row]
                dupes = sorted({c for c in header if header.count(c) > 1 and c})
                if dupes:
                    raise InvalidInputError(f"{file}: {where}: column {dupes[0]!r} appears twice in the header")
                if "path" not in header:
                    raise InvalidInputError(f"{file}: {where}: the header has no 'path' column (found: "
                                            f"{', '.join(repr(c) for c in header)}); columns: {', '.join(CSV_COLUMNS)}")
                if "tags" not in header and "description" not in header:
                    raise InvalidInputError(f"{file}: {where}: the header needs a 'tags' or a 'description' column "
                                            "beside 'path'")
                continue
            if len(row) > len(header):
                raise InvalidInputError(f"{file}: {where}: {len(row)} fields but the header has {len(header)} "
                                        "(quote cells that contain commas)")
            cells = dict(zip(header, row, strict=False))
            path = cells.get("path", "").strip()
            if not path:
                raise InvalidInputError(f"{file}: {where}: the path is empty")
            tags = clean_tags(split_tags(cells.get("tags", "")))
            description = cells.get("description", "").strip() or None
            entries.append(MetadataEntry(path, where, tags, description))
    except csv.Error as exc:
        raise InvalidInputError(f"{file}: line {reader.line_num}: malformed CSV ({exc})") from None
    if header is None:
        raise InvalidInputError(f"{file}: empty: expected a header row ({', '.join(CSV_COLUMNS)}) and one row per "
                                "image")
    return entries, [c for c in header if c not in CSV_COLUMNS]


def _json_entry(file: Path, where: str, path: Any, fields: dict[str, Any], ignored: set[str]) -> MetadataEntry:
    if not isinstance(path, str) or not path.strip():
        raise InvalidInputError(f"{file}: {where}: 'path' must be a non-empty string (got {path!r})")
    tags_value = fields.get("tags")
    if tags_value is None:
        tags: tuple[str, ...] = ()
    elif isinstance(tags_value, str):
        tags = clean_tags(split_tags(tags_value))
    elif isinstance(tags_value, list) and all(isinstance(t, str) for t in tags_value):
        tags = clean_tags(tags_value)
    else:
        raise InvalidInputError(f"{file}: {where}: 'tags' must be a list of strings or one string (got "
                                f"{json.dumps(tags_value)[:60]})")
    description = fields.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidInputError(f"{file}: {where}: 'description' must be a string (got {json.dumps(description)[:60]})")
    ignored.update(k for k in fields if k not in CSV_COLUMNS)
    return MetadataEntry(path.strip(), where, tags, (description or "").strip() or None)


def _parse_json(file: Path, text: str) -> tuple[list[MetadataEntry], list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{file}: line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})") from None
    ignored: set[str] = set()
    entries: list[MetadataEntry] = []
    if isinstance(data, list):
        for n, item in enumerate(data, 1):
            if not isinstance(item, dict):
                raise InvalidInputError(f"{file}: entry {n}: expected an object with 'path', got "
                                        f"{type(item).__name__}")
            entries.append(_json_entry(file, f"entry {n}", item.get("path"), item, ignored))
    elif isinstance(data, dict):
        for n, (key, value) in enumerate(data.items(), 1):
            if not isinstance(value, dict):
                raise InvalidInputError(f"{file}: entry {n} ({key!r}): expected an object with 'tags' and/or "
                                        f"'description', got {type(value).__name__}")
            entries.append(_json_entry(file, f"entry {n} ({key!r})", key, value, ignored))
        ignored.discard("path")
    else:
        raise InvalidInputError(f"{file}: expected a list of objects with 'path' or an object keyed by path, got "
                                f"{type(data).__name__}")
    return entries, sorted(ignored)


def read_metadata_file(file: Path) -> tuple[list[MetadataEntry], list[str]]:
    """Parse an import file (by its suffix: .csv or .json); returns the entries in file order and the columns /
    keys that are ignored. Raises ``InvalidInputError`` naming the line or entry of the first problem."""
    file = Path(file)
    suffix = file.suffix.lower()
    if file.is_dir():  # what is wrong first: a folder, or a missing file, whatever its name ends with
        raise InvalidInputError(f"{file} is a folder; give a .csv or .json file")
    if not file.exists():
        raise NotFoundError(f"{file}: no such file")
    if suffix not in IMPORT_SUFFIXES:
        raise InvalidInputError(f"{file}: unknown format {suffix or '(no suffix)'!r}; import takes .csv or .json files")
    text = _decode(file)
    return _parse_csv(file, text) if suffix == ".csv" else _parse_json(file, text)


def import_metadata(index_dir: Path, file: Path) -> AnnotateResult:
    """Apply an import file's tags (added to the image's) and descriptions (replacing the user's; an empty cell or
    a missing one leaves it) to the images it names; later entries for the same image add their tags and their
    description wins. Relative paths resolve against the file's folder. The file is parsed whole before anything
    is written (``InvalidInputError`` naming the line or entry); unknown paths are returned, not dropped. Only what
    changes is written and counted (``AnnotateResult``)."""
    file = Path(file)
    entries, ignored = read_metadata_file(file)
    base = os.path.dirname(os.path.abspath(file))
    result = AnnotateResult(entries=len(entries), ignored_fields=ignored)
    with IndexLock(index_dir), _open_writer(index_dir) as catalog:
        resolver = _Resolver(catalog)
        tags: dict[str, list[str]] = {}
        descriptions: dict[str, str | None] = {}
        for entry in entries:
            resolved = resolver.resolve(entry.path, base, entry.where)
            if isinstance(resolved, UnknownPath):
                result.unknown.append(resolved)
                continue
            tags.setdefault(resolved, []).extend(entry.tags)
            if entry.description is not None:
                descriptions[resolved] = entry.description
        # one spelling per tag and image, the first one (the file may name an image twice)
        _apply(catalog, result, list(tags), add={p: clean_tags(ts) for p, ts in tags.items()},
               descriptions=descriptions, source="import")
    return result
