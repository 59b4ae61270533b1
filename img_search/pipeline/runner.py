"""The indexing loop: plan (scan + diff against the catalog) -> read -> encode -> write.

``index_folders`` is the one loop for folders. Planning is cheap and import-light (no torch): an
unchanged folder costs a directory walk and one query, and the model is loaded only when some file
needs embedding. Files are incremental by (path, size, mtime); a new path whose bytes already have a
vector (a moved, renamed or copied file) reuses it by content hash; files gone from an indexed
folder are marked deleted; ``recompute`` re-embeds everything, resumably: the catalog keeps which files a
recompute has re-embedded (``catalog.recompute``), so a run after an interrupted one, with or without ``recompute``,
embeds only the files it had left and keeps the vectors it committed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from img_search.catalog import Catalog, ImageRecord, ImageRow
from img_search.catalog.lock import IndexLock
from img_search.catalog.recompute import RecomputeLeft, RecomputeState
from img_search.data.excludes import check_excludes
from img_search.data.folder import FileEntry, ScanProblem, scan_folder
from img_search.data.images import check_pixel_limit, content_hash_file, too_large_pixels
from img_search.data.paths import canonical_folder
from img_search.embedding.base import Encoder
from img_search.embedding.precision import TowerChoice
from img_search.errors import ConflictError, ImgSearchError, InvalidInputError, ModelNotFoundError, NotFoundError
from img_search.pipeline.ocr import OcrCounts
from img_search.pipeline.progress import LogProgress, Progress
from img_search.settings import DEFAULT_BATCH_SIZE, SearchSettings

logger = logging.getLogger(__name__)



def default_workers() -> int:
    """Decode processes for ``index``: one per core, at most 4. On a CPU model they decode only while the model
    waits for a batch (``pipeline.reader.DecodeGate``), so every core decodes then and none competes with the model
    (issue 8: with one worker per two cores running beside an int8 model, the model lost 14-21 % of its speed); on
    an accelerator they overlap with the forward pass. Beyond 4 a worker adds memory (a decoded batch in flight)
    more than speed: a 1024x768 JPEG costs ~7.5 ms of CPU to decode and prepare, a base ViT forward ~35 ms on 2
    cores (docs/PERFORMANCE.md)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class IndexOptions:
    """What one ``index`` run does; validated on construction (InvalidInputError names the bad value).

    ``batch_size``: images per model forward (>= 1; clamped to the images to embed). ``workers``: decode
    processes (>= 0; 0 decodes in the calling process; clamped to the batches to do and to a multiple of the
    cores by ``run_loop``). ``max_image_pixels``: this run's pixel limit (>= 1, at most the process-wide limit
    set by ``data.images.configure_pixel_limit``; None: that limit). ``excludes``: gitignore-style patterns
    relative to each indexed folder (``data.excludes``), after ``DEFAULT_EXCLUDES`` unless
    ``default_excludes`` is False.
    """

    model: str
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int = field(default_factory=default_workers)
    recompute: bool = False
    max_image_pixels: int | None = None
    include_hidden: bool = False
    excludes: tuple[str, ...] = ()
    default_excludes: bool = True
    read_metadata: bool = True  # photo metadata (data.metadata): in the decode workers, back-filled for the rest
    ocr: bool = False  # read the text in each picture (pipeline.ocr); ocr_engine names a data.ocr.OCR_ENGINES entry
    ocr_engine: str = "rapidocr"
    # decode JPEGs in full, not at a reduced libjpeg scale (data.images "decode modes"); a collection that holds
    # vectors keeps its mode unless `recompute` (``decode_mode``)
    full_decode: bool = False

    def __post_init__(self) -> None:
        for name, value, low in (("batch_size", self.batch_size, 1), ("workers", self.workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(f"{name} must be a whole number >= {low}, got {value!r}")
        check_pixel_limit(self.max_image_pixels)
        object.__setattr__(self, "excludes", check_excludes(self.excludes))
        if self.ocr:
            from img_search.data.ocr import OCR_ENGINES

            OCR_ENGINES.get(self.ocr_engine)  # UnknownNameError listing the engines


@dataclass
class Failure:
    path: str
    reason: str


@dataclass
class IndexSummary:
    roots: list[str]
    model: str
    scanned: int = 0
    unchanged: int = 0
    embedded: int = 0
    reused: int = 0
    failed: list[Failure] = field(default_factory=list)
    failed_before: int = 0  # unchanged files that failed in an earlier run (not retried)
    deleted: int = 0
    ocr: OcrCounts | None = None  # text read this run (`--ocr`; None: off)
    metadata_read: int = 0  # files whose photo metadata was back-filled from their headers (not decoded this run)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    precision: str | None = None  # how the image tower computed this run's vectors ("int8 on onnxruntime")
    decode: str | None = None  # how this run decoded the images it embedded ("full", "reduced-1x"; kept per vector)
    interrupted: bool = False
    # files an unfinished --recompute of this model has still to re-embed after this run (interrupted, or under
    # folders this run did not index); the next `index` of their folders re-embeds them
    recompute_left: int = 0

    @property
    def images_per_second(self) -> float:
        """Images embedded (or failed) per second of the embedding loop (``embed_seconds``: from the model ready to
        the last batch written; model load, walk and index sync excluded)."""
        done = self.embedded + len(self.failed)
        return done / self.embed_seconds if self.embed_seconds > 0 else 0.0

    @property
    def run_images_per_second(self) -> float:
        """Images embedded (or failed) per second of the whole run (``seconds``: model load and all included)."""
        done = self.embedded + len(self.failed)
        return done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images_per_second"] = round(self.images_per_second, 3)
        d["run_images_per_second"] = round(self.run_images_per_second, 3)
        return d


@dataclass
class Plan:
    todo: list[FileEntry] = field(default_factory=list)
    reuse: list[ImageRecord] = field(default_factory=list)  # a vector of another path's content (moved, copied)
    touched: list[ImageRecord] = field(default_factory=list)  # same path, same bytes, new mtime: counted unchanged
    # new files with the bytes of a file in ``todo`` (cat.jpg, chelsea.jpg): (file, its hash, the path embedded);
    # they reuse its vector once the run has computed it, so each content is encoded once
    copies: list[tuple[FileEntry, bytes, str]] = field(default_factory=list)
    problems: list[ImageRecord] = field(default_factory=list)
    new_problems: list[Failure] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    scanned: int = 0
    unchanged: int = 0
    failed_before: int = 0
    recompute_todo: int = 0  # files in ``todo`` because an unfinished recompute has not re-embedded them yet


def _reusable(entry: FileEntry, catalog: Catalog, embedded: set[bytes], sizes: set[int]) -> ImageRecord | None:
    """A new or changed file whose bytes already have a vector for this model (moved, renamed, copied)."""
    if entry.size not in sizes:
        return None
    try:
        digest = content_hash_file(entry.path)  # in chunks: a large file costs no more memory than a small one
    except ImgSearchError:
        return None  # the reader will record the failure properly
    if digest not in embedded:
        return None
    width, height = catalog.dims_for_hash(digest)
    return ImageRecord(entry.path, entry.size, entry.mtime_ns, digest, width, height)


def _plan_entry(entry: FileEntry, row: ImageRow | None, plan: Plan, recompute: bool, embedded: set[bytes],
                max_pixels: int | None = None) -> bool:
    """Settle files whose catalog row is current; return False when the file needs more work. A file refused as
    too large is retried once ``max_pixels`` (the run's pixel limit) admits it, as its failure reason advises."""
    if recompute or row is None or row.size != entry.size or row.mtime_ns != entry.mtime_ns:
        return False
    if row.status == "error":
        pixels = too_large_pixels(row.error)
        if pixels is not None and max_pixels is not None and pixels <= max_pixels:
            return False
        plan.failed_before += 1
        return True
    if row.content_hash in embedded:
        if row.status == "ok":
            plan.unchanged += 1
        else:  # a deleted file came back untouched
            plan.reuse.append(ImageRecord(entry.path, entry.size, entry.mtime_ns, row.content_hash, row.width,
                                          row.height))
        return True
    return False


def plan_folder(
    catalog: Catalog, folder: str, model_id: int | None, *, recompute: bool, include_hidden: bool, plan: Plan,
    embedded: set[bytes], sizes: set[int], excludes: Sequence[str] = (), default_excludes: bool = True,
    max_pixels: int | None = None, redo: frozenset[int] = frozenset(), reuse: bool = True,
) -> None:
    """Add one folder's work to ``plan``; catalog rows under it that the walk no longer finds (deleted, or now
    excluded) become ``plan.vanished``. ``redo``: image ids an unfinished recompute has not re-embedded yet (each
    embedded again, never reused); ``reuse`` False: no vector is reused for a new or changed file (a recompute)."""
    scan = scan_folder(folder, include_hidden=include_hidden, excludes=excludes, default_excludes=default_excludes)
    known = catalog.images_under(folder)
    plan.scanned += len(scan.files)
    for entry in scan.files:
        row = known.pop(entry.path, None)
        if row is not None and row.id in redo:
            plan.todo.append(entry)
            plan.recompute_todo += 1
            continue
        if _plan_entry(entry, row, plan, recompute, embedded, max_pixels):
            continue
        reused = None if (recompute or not reuse or model_id is None) else _reusable(entry, catalog, embedded, sizes)
        if reused is not None and row is not None and row.status == "ok" and row.content_hash == reused.content_hash:
            plan.touched.append(reused)  # same bytes at the same path, new mtime (`touch`): unchanged, row updated
            plan.unchanged += 1
        elif reused is not None:
            plan.reuse.append(reused)
        else:
            plan.todo.append(entry)
    for problem in scan.problems:
        _plan_problem(problem, known.pop(problem.path, None), plan)
    plan.vanished.extend(path for path, row in known.items() if row.status != "deleted")


def _plan_problem(problem: ScanProblem, row: ImageRow | None, plan: Plan) -> None:
    plan.problems.append(ImageRecord(problem.path, None, None, error=problem.reason))
    if row is None or row.error != problem.reason:
        plan.new_problems.append(Failure(problem.path, problem.reason))
    else:
        plan.failed_before += 1


def make_plan(catalog: Catalog, folders: Sequence[str], model_id: int | None, *, recompute: bool = False,
              include_hidden: bool = False, excludes: Sequence[str] = (), default_excludes: bool = True,
              max_pixels: int | None = None, left: RecomputeLeft | None = None, reuse: bool = True) -> Plan:
    """What an ``index`` run over ``folders`` must do (``max_pixels``: the run's pixel limit, None: the process's).

    ``recompute``: every file is embedded again. ``left``: what an unfinished recompute has not re-embedded yet
    (``Catalog.recompute_left``): those files are embedded again, and vectors of their content are stale, so never
    reused; ``reuse`` False: no vector is reused for a new or changed file."""
    if max_pixels is None:
        max_pixels = check_pixel_limit(None)
    left = left or RecomputeLeft()
    plan = Plan()
    embedded = catalog.embedded_hashes(model_id) - left.hashes if model_id is not None else set()
    sizes = catalog.embedded_sizes(model_id) if model_id is not None else set()
    for folder in folders:
        plan_folder(catalog, folder, model_id, recompute=recompute, include_hidden=include_hidden, plan=plan,
                    embedded=embedded, sizes=sizes, excludes=excludes, default_excludes=default_excludes,
                    max_pixels=max_pixels, redo=left.image_ids, reuse=reuse)
    if reuse and not recompute and not left.image_ids:
        _split_copies(plan)
    return plan


def _split_copies(plan: Plan) -> None:
    """Keep one file of each content in ``plan.todo``; move the others to ``plan.copies``. Only files of a size
    shared with another file to embed are hashed (a read of each; an unreadable one stays for the reader)."""
    from collections import defaultdict

    by_size: dict[int, list[FileEntry]] = defaultdict(list)
    for entry in plan.todo:
        by_size[entry.size].append(entry)
    first: dict[bytes, str] = {}
    copies: set[str] = set()
    for entries in by_size.values():
        if len(entries) < 2:
            continue
        for entry in entries:
            try:
                digest = content_hash_file(entry.path)  # in chunks: bounded memory whatever the file's size
            except ImgSearchError:
                continue
            if digest in first:
                plan.copies.append((entry, digest, first[digest]))
                copies.add(entry.path)
            else:
                first[digest] = entry.path
    if copies:
        plan.todo = [e for e in plan.todo if e.path not in copies]


def _record_copies(catalog: Catalog, model_id: int | None, plan: Plan, summary: IndexSummary, *,
                   read_metadata: bool = False, progress: Progress | None = None) -> None:
    """Record ``plan.copies`` once their content has been embedded: each reuses that vector (counted reused); a copy
    of a file that failed fails with the same reason. With ``read_metadata`` the reused copies' photo metadata is read
    now, from each copy's own headers and XMP sidecar (metadata is per path: a copy may carry another sidecar), and
    counted in ``summary.metadata_read``; a run interrupted before that leaves it to the next run's back-fill."""
    embedded = catalog.embedded_hashes(model_id) if model_id is not None else set()
    reasons = {f.path: f.reason for f in summary.failed}
    records: list[ImageRecord] = []
    for entry, digest, original in plan.copies:
        if digest in embedded:
            records.append(ImageRecord(entry.path, entry.size, entry.mtime_ns, digest, *catalog.dims_for_hash(digest)))
            summary.reused += 1
        else:
            reason = reasons.get(original, f"same bytes as {original}, which was not embedded")
            records.append(ImageRecord(entry.path, entry.size, entry.mtime_ns, error=reason))
            summary.failed.append(Failure(entry.path, reason))
    if records:
        catalog.record(records)
    reused = [r.path for r in records if r.error is None]
    if read_metadata and reused:
        from img_search.pipeline.metadata import backfill_metadata

        summary.metadata_read += backfill_metadata(catalog, reused, progress=progress or LogProgress())


def _check_folders(folders: Sequence[str]) -> list[str]:
    """The folders to index by their canonical paths (``data.paths.canonical_folder``: symlinks and bind
    mounts resolved), each once: a folder inside another one given is walked with it.

    Raises NotFoundError for a missing folder, InvalidInputError for a path that is not a folder.
    """
    roots: list[str] = []
    for folder in folders:
        if not os.path.exists(os.path.expanduser(folder)):
            raise NotFoundError(f"folder {folder!r} does not exist")
        path = canonical_folder(folder)
        if not os.path.isdir(path):
            raise InvalidInputError(f"{folder!r} is not a folder; `index` takes folders (use `similar` for one image)")
        roots.append(path)
    out: list[str] = []
    for path in sorted(set(roots), key=len):  # parents before the folders inside them
        parent = next((r for r in out if r == "/" or path.startswith(r + "/")), None)
        if parent is not None:
            logger.info("%s is inside %s, which is indexed in the same run", path, parent)
            continue
        out.append(path)
    return sorted(out, key=roots.index)


def index_folders(
    folders: Sequence[str],
    index_dir: Path,
    options: IndexOptions,
    *,
    encoder_factory: Callable[[], Encoder],
    progress: Progress | None = None,
    search: SearchSettings | None = None,
) -> IndexSummary:
    """Bring the catalog in ``index_dir`` up to date with ``folders`` for ``options.model``, then the model's saved
    search index (built with ``search``, default ``SearchSettings()``) with the catalog."""
    from img_search.embedding.hf import canonical_model_id, looks_like_path

    roots = _check_folders(folders)
    if looks_like_path(options.model) and not os.path.isdir(os.path.expanduser(options.model)):
        # fail before the walk, even when nothing would need the model
        raise ModelNotFoundError(f"model directory {options.model!r} does not exist")
    if options.ocr:  # fail before the walk when the OCR libraries are missing (names the pip / system package)
        from img_search.data.ocr import check_ocr_engine

        check_ocr_engine(options.ocr_engine)
    model_name = canonical_model_id(options.model)
    summary = IndexSummary(roots=roots, model=model_name)
    t0 = time.monotonic()
    with IndexLock(index_dir), Catalog.in_dir(index_dir) as catalog:
        model_row = catalog.get_model(model_name)
        recompute, resumed = _resolve_recompute(catalog, model_row.id if model_row else None, roots, options)
        plan = make_plan(catalog, roots, model_row.id if model_row else None,
                         recompute=options.recompute and recompute is None, include_hidden=options.include_hidden,
                         excludes=options.excludes, default_excludes=options.default_excludes,
                         max_pixels=options.max_image_pixels,
                         left=catalog.recompute_left(recompute.model_id) if recompute is not None else None,
                         reuse=not options.recompute)
        if recompute is not None and resumed:
            _report_recompute_plan(recompute, plan, options)
        summary.scanned, summary.unchanged, summary.failed_before = plan.scanned, plan.unchanged, plan.failed_before
        summary.reused = len(plan.reuse)
        summary.failed.extend(plan.new_problems)
        if plan.reuse or plan.touched or plan.problems:
            catalog.record(plan.reuse + plan.touched + plan.problems)
        run_id = catalog.start_run(model_row.id if model_row else None)
        status = "finished"
        model_id = model_row.id if model_row else None
        ocr = _ocr_reader(catalog, options, summary)
        try:
            if options.read_metadata:
                summary.metadata_read = _backfill_metadata(catalog, roots, plan, options, progress)
            if plan.todo:
                model_id = _embed(plan.todo, encoder_factory, catalog, model_name, model_id, options, summary,
                                  progress or LogProgress(), ocr, recompute)
            if plan.copies:
                _record_copies(catalog, model_id, plan, summary, read_metadata=options.read_metadata,
                               progress=progress)
            if plan.vanished:  # once the model has loaded: a run that fails to load it has changed nothing to report
                summary.deleted = catalog.mark_deleted(plan.vanished)
            if ocr is not None and summary.ocr is not None:  # pictures indexed earlier, or reused, without text
                from img_search.pipeline.ocr import backfill_ocr
                from img_search.pipeline.reader import FileLoader

                summary.ocr.add(backfill_ocr(catalog, roots, ocr, FileLoader(options.max_image_pixels),
                                             batch_size=options.batch_size, workers=options.workers,
                                             progress=progress or LogProgress()))
            if recompute is not None:  # every file under the roots was re-embedded, failed, or is gone
                summary.recompute_left = _finish_recompute(catalog, recompute.model_id, roots,
                                                           _Finisher(index_dir, model_name))
            for root in roots:
                catalog.touch_root(root)
            if model_id is not None:
                _sync_vector_index(index_dir, catalog, model_name, search)
        except KeyboardInterrupt:
            status, summary.interrupted = "interrupted", True
            if recompute is not None:
                summary.recompute_left = _report_interrupted_recompute(catalog, recompute.model_id, roots,
                                                                       _Finisher(index_dir, model_name))
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            summary.seconds = time.monotonic() - t0
            catalog.finish_run(run_id, status=status, stats=summary.to_dict(), model_id=model_id)
    return summary


def _when(started_at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(started_at))


@dataclass(frozen=True, slots=True)
class _Finisher:
    """Where a recompute's files are embedded: the `img-search index` command over some folders that re-embeds them
    (``info.finish_command``: names the model and the index directory, which `index` does not default to)."""

    index_dir: Path
    model: str

    def command(self, folders: Sequence[str]) -> str:
        from img_search.info import finish_command

        return finish_command(os.path.abspath(self.index_dir), self.model, list(folders))


def _resolve_recompute(catalog: Catalog, model_id: int | None, roots: Sequence[str],
                       options: IndexOptions) -> tuple[RecomputeState | None, bool]:
    """The recompute this run takes part in (None: none), and whether it was under way before this run (resumed or
    continued, even with none of its files re-embedded yet) rather than started now.

    With ``options.recompute``: the model's unfinished recompute, extended to ``roots``, when it embeds with the decode
    mode asked now (the run resumes it: its files re-embedded are kept); else a new one over ``roots`` (an unfinished
    one with another decode mode is replaced, so the collection does not end with two modes). Without: the model's
    unfinished recompute, if any (the run continues it for the files under ``roots``). None when the model has no
    vector yet (every file is embedded anyway, and a re-run embeds only the files still without one)."""
    from img_search.data.images import DECODE_FULL, reduced_mode

    if model_id is None:
        return None, False
    # one with nothing left is not finished either (its run was interrupted before files new since its start were
    # embedded): only a run that walked all its folders drops it (``_finish_recompute``)
    state = catalog.recompute_state(model_id)
    if not options.recompute:
        return state, state is not None
    wanted = DECODE_FULL if options.full_decode else reduced_mode()
    if state is not None and state.decode == wanted:
        return catalog.extend_recompute(model_id, roots), True
    if state is not None:
        logger.warning("the unfinished --recompute started %s decoded images as %r; this one decodes them as %r, so it "
                       "starts over and re-embeds every file", _when(state.started_at), state.decode, wanted)
    return catalog.start_recompute(model_id, roots, decode=wanted), False


def _report_recompute_plan(recompute: RecomputeState, plan: Plan, options: IndexOptions) -> None:
    """Say that the run resumes (or continues) an unfinished recompute rather than starting one (said also when the
    interrupted run had re-embedded none of its files yet)."""
    kept = recompute.files - recompute.left
    if not plan.recompute_todo:
        return  # nothing of it left under these folders
    how = "resuming the interrupted" if options.recompute else "continuing the unfinished"
    logger.warning("%s --recompute started %s: %d files already re-embedded are kept, %d under these folders are "
                   "re-embedded now", how, _when(recompute.started_at), kept, plan.recompute_todo)


def _finish_recompute(catalog: Catalog, model_id: int, roots: Sequence[str], finisher: _Finisher) -> int:
    """Mark the recompute done under ``roots`` (``Catalog.finish_recompute``); return how many files it has left
    elsewhere, logged with the command that re-embeds them."""
    state = catalog.finish_recompute(model_id, roots)
    if state is None:
        return 0
    folders = catalog.recompute_folders_left(model_id)
    if folders:
        logger.warning("the --recompute started %s still has %d files to re-embed under %s; `%s` re-embeds them",
                       _when(state.started_at), state.left, ", ".join(folders), finisher.command(list(folders)))
    return state.left


def _report_interrupted_recompute(catalog: Catalog, model_id: int, roots: Sequence[str], finisher: _Finisher) -> int:
    """What an interrupted recompute has done and what a re-run does; returns the files it has left. Never raises
    (the interrupt is what the caller reports)."""
    try:
        state = catalog.recompute_state(model_id)
        elsewhere = catalog.recompute_folders_left(model_id, outside=roots)
    except (sqlite3.Error, ImgSearchError) as exc:
        logger.debug("cannot read the recompute's state: %s", exc)
        return 0
    if state is None or not state.left:
        return 0
    here = state.left - sum(elsewhere.values())
    also = f"; `{finisher.command(list(elsewhere))}` the {state.left - here} under other folders" if elsewhere else ""
    logger.warning("--recompute interrupted: %d of its %d files re-embedded (committed, kept); `%s` re-embeds only "
                   "the %d left%s", state.files - state.left, state.files,
                   finisher.command(roots), here, also)
    return state.left


def _backfill_metadata(catalog: Catalog, roots: Sequence[str], plan: Plan, options: IndexOptions,
                       progress: Progress | None) -> int:
    """Photo metadata of the live files the decode workers will not read this run (``pipeline.metadata``)."""
    from img_search.pipeline.metadata import backfill_metadata, stale_metadata

    stale = stale_metadata(catalog, roots, skip=[e.path for e in plan.todo], force=[r.path for r in plan.reuse])
    return backfill_metadata(catalog, stale, progress=progress or LogProgress())


def _ocr_reader(catalog: Catalog, options: IndexOptions, summary: IndexSummary) -> Any:
    """The run's ``data.ocr.OcrReader`` (None without ``--ocr``), skipping content read before."""
    if not options.ocr:
        return None
    from img_search.data.ocr import OcrReader
    from img_search.pipeline.ocr import ocr_threads

    summary.ocr = OcrCounts()
    return OcrReader(options.ocr_engine, skip=catalog.ocr_hashes(), threads=ocr_threads(options.workers))


def _sync_vector_index(index_dir: Path, catalog: Catalog, model_name: str, search: SearchSettings | None) -> None:
    """Keep the saved search index of this model in step with the catalog (incremental where it can be)."""
    from img_search.search.store import VectorStore

    model = catalog.get_model(model_name)
    if model is not None and model.dim is not None:
        VectorStore(index_dir, catalog, model, search or SearchSettings()).sync()


def prepare_encoder(encoder: Encoder, catalog: Catalog, model_id: int) -> TowerChoice:
    """Build the encoder's runtimes once (exported graphs, the fast text-query path) and record the parity check of
    each tower in the catalog; return how the image tower computes the vectors of this run.

    Raises ``ConflictError`` when the image tower's precision failed its parity check (now, or as recorded earlier):
    a collection never mixes in vectors of a precision whose check failed.
    """
    from img_search.embedding import encoder_choices
    from img_search.embedding.onnx_export import prepare_runtime

    if not hasattr(encoder, "choices"):  # encoders without precisions (Jina v4, test doubles): float32 torch
        return encoder_choices(encoder)["image"]
    verdicts = prepare_runtime(encoder)
    for v in verdicts.values():
        catalog.record_parity(model_id, tower=v.tower, precision=v.precision, runtime=v.runtime,
                              min_cosine=v.min_cosine, threshold=v.threshold, passed=v.passed)
        logger.info("parity %s %s on %s: min cosine to float32 %.5f (threshold %s) %s", v.tower, v.precision,
                    v.runtime, v.min_cosine, v.threshold, "passed" if v.passed else "FAILED")
    image = verdicts["image"]
    if not image.passed:
        raise ConflictError(
            f"the image tower at {image.precision} on {image.runtime} failed its parity check (min cosine to float32 "
            f"{image.min_cosine:.5f} < {image.threshold}); its vectors would not be faithful: use --precision auto "
            "or fp32"
        )
    return image.choice


def decode_mode(catalog: Catalog, model_id: int | None, *, full_decode: bool, recompute: bool) -> str:
    """How a run decodes the images it embeds for ``model_id``'s collection: the collection's own mode while it holds
    vectors of one mode only (so it never mixes them; switching takes ``recompute``, logged as a warning), else what
    is asked (``full_decode``: ``"full"``; default: reduced scale, ``data.images.reduced_mode()``)."""
    from img_search.data.images import DECODE_FULL, reduced_mode

    wanted = DECODE_FULL if full_decode else reduced_mode()
    held = catalog.decode_counts(model_id) if model_id is not None and not recompute else {}
    if len(held) == 1 and wanted not in held:
        [mode] = held
        logger.warning("the collection's %d vectors were computed from images decoded as %r: new images are decoded "
                       "the same way (to decode as %r, re-embed everything with --recompute)", held[mode], mode,
                       wanted)
        return mode
    if len(held) > 1:
        logger.warning("the collection mixes decode modes (%s): new images are decoded as %r; --recompute makes it "
                       "one", ", ".join(f"{m}: {n}" for m, n in held.items()), wanted)
    return wanted


def _embed(todo: list[FileEntry], encoder_factory: Callable[[], Encoder], catalog: Catalog, model_name: str,
           model_id: int | None, options: IndexOptions, summary: IndexSummary, progress: Progress,
           ocr: Any = None, recompute: RecomputeState | None = None) -> int:
    """Load the encoder, prepare its runtimes (``prepare_encoder``) and embed ``todo`` through the loop; return the
    model's id. The decode workers start before the encoder loads when the checkpoint's image preprocessor loads on
    its own (``pipeline.loop.EarlyStart``). ``ocr`` (a ``data.ocr.OcrReader``): also read each picture's text in
    the decode workers (from a full decode), counted in ``summary.ocr``. ``recompute``: the recompute the run takes
    part in; its decode mode is the run's."""
    from img_search.data.images import reduced_decode_side
    from img_search.embedding.base import ImagePreprocessor
    from img_search.pipeline.loop import EarlyStart, run_loop
    from img_search.pipeline.ocr import CountingSink, OcrLoader
    from img_search.pipeline.reader import FileLoader
    from img_search.pipeline.writer import CatalogWriter

    mode = summary.decode = _run_decode_mode(catalog, model_id, options, recompute)
    ready: dict[str, Any] = {}

    def start() -> Encoder:
        encoder = encoder_factory()
        info = encoder.info
        ready["model_id"] = catalog.ensure_model(
            model_name, family=info.family, dim=info.dim, logit_scale=info.logit_scale, logit_bias=info.logit_bias,
            recompute=options.recompute,
        )
        ready["choice"] = choice = prepare_encoder(encoder, catalog, ready["model_id"])
        summary.precision = f"{choice.precision} on {choice.runtime}"
        return encoder

    def loader_for(preprocess: ImagePreprocessor) -> Any:
        min_side = reduced_decode_side(getattr(preprocess, "input_side", None), mode)
        load = FileLoader(options.max_image_pixels, read_metadata=options.read_metadata, min_side=min_side,
                          keep_full=ocr is not None)
        return load if ocr is None else OcrLoader(load, ocr)

    def sink() -> Any:
        choice = ready["choice"]
        writer = CatalogWriter(catalog.path, ready["model_id"], precision=choice.precision, runtime=choice.runtime,
                               decode=mode)
        return writer if ocr is None or summary.ocr is None else CountingSink(writer, summary.ocr)

    early = _early_preprocessor(options.model)
    if early is not None:
        stats = run_loop(todo, loader_for(early), None, sink, batch_size=options.batch_size, workers=options.workers,
                         progress=progress, start=EarlyStart(early, start, loader_for))
    else:
        encoder = start()
        stats = run_loop(todo, loader_for(encoder.image_preprocessor()), encoder, sink,
                         batch_size=options.batch_size, workers=options.workers, progress=progress)
    summary.embedded += stats.embedded
    summary.failed.extend(Failure(i.source.path, i.error or "") for i in stats.failed)
    summary.embed_seconds = stats.seconds
    return int(ready["model_id"])


def _run_decode_mode(catalog: Catalog, model_id: int | None, options: IndexOptions,
                     recompute: RecomputeState | None) -> str:
    """``decode_mode``, except during a recompute: its own mode, so the files it has left match those it did."""
    if recompute is None:
        return decode_mode(catalog, model_id, full_decode=options.full_decode, recompute=options.recompute)
    if not options.recompute:
        from img_search.data.images import DECODE_FULL, reduced_mode

        wanted = DECODE_FULL if options.full_decode else reduced_mode()
        if wanted != recompute.decode:
            logger.warning("the unfinished --recompute decodes images as %r: the files it has left are decoded the "
                           "same way (to decode as %r, start a new one with --recompute)", recompute.decode, wanted)
    return recompute.decode


def _early_preprocessor(model: str) -> Any:
    """The checkpoint's image preprocessor loaded without the model (``embedding.hf.load_image_preprocessor``), or
    None when it cannot be (the loop then starts its workers after the encoder loads)."""
    from img_search.embedding.hf import load_image_preprocessor

    return load_image_preprocessor(model)
