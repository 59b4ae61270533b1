"""Parquet writer stage: embedding tables in the Hub layout, written so that a killed run loses nothing committed.

Layouts (``Layout``) name the columns of each kind of table:

* ``GALLERY``  — ``id, model_name, dataset_name, embedding`` (``pipeline.embed``, the release converter, export);
* ``CAPTIONS`` — ``caption_id, image_id, caption, model_name, dataset_name, embedding`` (``pipeline.embed_text``);
* ``QUERIES``  — ``query_id, query_text, supercategory, category, iconic_group, model_name, dataset_name,
  embedding, image_id`` (INQUIRE query shards; ``image_id`` lists each query's relevant gallery ids).

``ShardWriter`` writes numbered shard files of at most ``rows_per_shard`` rows; each file is written under a
temporary name and renamed into place, so a shard is either complete or absent. ``ParquetOutput`` is one output
*file* that several models and runs add to: rows are committed as part files in ``<file>.parts/`` while a run
goes, the ids already present for a (model, dataset) are what a re-run skips, and ``finalize`` merges the file
and its parts into a new file (``ParquetWriter`` created lazily at the first rows) that replaces the old one
atomically. A merge interrupted at any point leaves the old file and the parts; rows are de-duplicated by
(model_name, dataset_name, key) when merging, so re-running can never duplicate one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray

from img_search.errors import ImgSearchError, UnknownNameError
from img_search.files import output_write_error
from img_search.pipeline.reader import ReadBatch, ReadItem

logger = logging.getLogger(__name__)

EMBEDDING_COLUMN = "embedding"
MODEL_COLUMN = "model_name"
DATASET_COLUMN = "dataset_name"
DEFAULT_COMPRESSION = "zstd"
DEFAULT_ROWS_PER_SHARD = 2048
TMP_SUFFIX = ".tmp"
PARTS_SUFFIX = ".parts"

EMBEDDING_DTYPES: dict[str, pa.DataType] = {"float32": pa.float32(), "float16": pa.float16()}
_NP_DTYPES: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float16": np.float16}


class OutputError(ImgSearchError):
    """An output file exists with another layout, or cannot be written."""


def embedding_type(dtype: str) -> pa.DataType:
    if dtype not in EMBEDDING_DTYPES:
        raise UnknownNameError(f"unknown embedding dtype {dtype!r}; valid: {', '.join(EMBEDDING_DTYPES)}")
    return pa.list_(EMBEDDING_DTYPES[dtype])


@dataclass(frozen=True)
class Layout:
    """The columns of one kind of embedding table, in order; ``embedding`` takes the dtype chosen at write time."""

    name: str
    key: str  # the column that identifies a row within (model_name, dataset_name): what resume skips
    fields: tuple[pa.Field, ...]

    def schema(self, dtype: str) -> pa.Schema:
        return pa.schema([pa.field(EMBEDDING_COLUMN, embedding_type(dtype)) if f.name == EMBEDDING_COLUMN else f
                          for f in self.fields])

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]


_EMB = pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32()))
GALLERY = Layout("gallery", "id", (pa.field("id", pa.string()), pa.field(MODEL_COLUMN, pa.string()),
                                   pa.field(DATASET_COLUMN, pa.string()), _EMB))
CAPTIONS = Layout("captions", "caption_id", (
    pa.field("caption_id", pa.string()), pa.field("image_id", pa.string()), pa.field("caption", pa.string()),
    pa.field(MODEL_COLUMN, pa.string()), pa.field(DATASET_COLUMN, pa.string()), _EMB,
))
QUERIES = Layout("queries", "query_id", (
    pa.field("query_id", pa.int64()), pa.field("query_text", pa.string()), pa.field("supercategory", pa.string()),
    pa.field("category", pa.string()), pa.field("iconic_group", pa.string()), pa.field(MODEL_COLUMN, pa.string()),
    pa.field(DATASET_COLUMN, pa.string()), _EMB, pa.field("image_id", pa.list_(pa.string())),
))


def vectors_to_arrow(vectors: NDArray[Any], dtype: str) -> pa.Array:
    """(n, dim) -> a list<dtype> array without going through Python lists."""
    embedding_type(dtype)  # an unknown dtype raises the error listing the valid ones
    matrix = np.ascontiguousarray(vectors, dtype=_NP_DTYPES[dtype])
    n, dim = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))


def make_table(layout: Layout, columns: Mapping[str, Sequence[Any]], vectors: NDArray[Any], dtype: str) -> pa.Table:
    """A table of ``layout`` from metadata columns (every field but ``embedding``) and the vectors."""
    schema = layout.schema(dtype)
    arrays = []
    for f in schema:
        if f.name == EMBEDDING_COLUMN:
            arrays.append(vectors_to_arrow(vectors, dtype))
        else:
            arrays.append(pa.array(columns[f.name], type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_atomically(table: pa.Table, path: Path, *, compression: str = DEFAULT_COMPRESSION) -> None:
    """Write ``table`` to ``path`` under a temporary name, then rename: readers never see a half-written file."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        pq.write_table(table, tmp, compression=compression)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class AtomicParquetFile:
    """One Parquet file written under a temporary name and renamed into place when the ``with`` block succeeds.

    The ``ParquetWriter`` is created lazily, at the first table, so a block that writes nothing creates nothing;
    on an exception the temporary file is removed and ``path`` is left as it was. A write that fails (a full disk, an
    I/O error) raises ``UnavailableError`` (``StorageFullError`` for a full disk) naming ``path``
    (``files.output_write_error``) instead of pyarrow's ``OSError``.
    """

    def __init__(self, path: Path, schema: pa.Schema, *, compression: str = DEFAULT_COMPRESSION) -> None:
        self.path = Path(path)
        self.schema = schema
        self.compression = compression
        self.tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        try:
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.tmp, self.schema, compression=self.compression)
            self._writer.write_table(table.cast(self.schema))
        except OSError as exc:
            raise output_write_error(self.path, exc) from exc
        self.rows += table.num_rows

    def __enter__(self) -> AtomicParquetFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()  # flushes the last row group: may fail on a full disk too
            if exc_type is None and writer is not None:
                os.replace(self.tmp, self.path)
        except OSError as failed:
            self.tmp.unlink(missing_ok=True)
            if exc_type is None:
                raise output_write_error(self.path, failed) from failed
        finally:
            if exc_type is not None:
                self.tmp.unlink(missing_ok=True)


class ShardWriter:
    """Numbered shards ``<prefix>-NNNNN.parquet`` of at most ``rows_per_shard`` rows, each written atomically."""

    def __init__(self, directory: Path, *, prefix: str, schema: pa.Schema, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                 compression: str = DEFAULT_COMPRESSION) -> None:
        if rows_per_shard < 1:
            raise OutputError(f"rows per shard must be >= 1, got {rows_per_shard}")
        self.directory = Path(directory)
        self.prefix = prefix
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.compression = compression
        self.paths: list[Path] = []
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table) -> None:
        self._pending.append(table.cast(self.schema))
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.rows_per_shard:
            merged = pa.concat_tables(self._pending)
            self._emit(merged.slice(0, self.rows_per_shard))
            rest = merged.slice(self.rows_per_shard)
            self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def flush(self) -> None:
        if self._pending_rows:
            self._emit(pa.concat_tables(self._pending))
            self._pending, self._pending_rows = [], 0

    def close(self) -> list[Path]:
        self.flush()
        return self.paths

    def _emit(self, table: pa.Table) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.prefix}-{len(self.paths):05d}.parquet"
        write_atomically(table, path, compression=self.compression)
        self.paths.append(path)
        self.rows += table.num_rows
        logger.debug("wrote %d rows to %s", table.num_rows, path)


RowColumns = Callable[[list[Any]], dict[str, list[Any]]]


class ParquetSink:
    """Sink of the pipeline loop: the ok items of each batch (with their vectors) become rows of ``layout``.

    ``row_columns`` turns the batch's sources into the layout's per-row columns; ``constants`` fills the rest
    (model and dataset names). Failed items are counted and kept in ``failed`` for the caller's report.
    """

    def __init__(self, writer: ShardWriter, layout: Layout, row_columns: RowColumns, *, constants: dict[str, Any],
                 dtype: str) -> None:
        self.writer = writer
        self.layout = layout
        self.row_columns = row_columns
        self.constants = constants
        self.dtype = dtype
        self.written = 0
        self.failed: list[ReadItem[Any]] = []

    def put(self, batch: ReadBatch[Any], vectors: NDArray[np.float32] | None) -> None:
        self.failed.extend(batch.failed)
        if not batch.ok or vectors is None:
            return
        columns = self.row_columns([item.source for item in batch.ok])
        n = len(batch.ok)
        for name, value in self.constants.items():
            columns[name] = [value] * n
        self.writer.write(make_table(self.layout, columns, vectors, self.dtype))
        self.written += n

    def close(self) -> None:
        self.writer.close()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:] or "model"


class ParquetOutput:
    """One Parquet file of ``layout`` that several models and runs add rows to; see the module docstring."""

    def __init__(self, path: Path, layout: Layout, *, dtype: str = "float32", compression: str = DEFAULT_COMPRESSION,
                 rows_per_part: int = DEFAULT_ROWS_PER_SHARD) -> None:
        self.path = Path(path)
        self.layout = layout
        self.dtype = dtype
        self.schema = layout.schema(dtype)
        self.compression = compression
        self.rows_per_part = rows_per_part
        self.parts_dir = self.path.with_name(self.path.name + PARTS_SUFFIX)

    def remove(self) -> None:
        """Delete the file and any uncommitted parts (``overwrite``)."""
        self.path.unlink(missing_ok=True)
        self.path.with_name(self.path.name + TMP_SUFFIX).unlink(missing_ok=True)
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def part_files(self) -> list[Path]:
        if not self.parts_dir.is_dir():
            return []
        return sorted(self.parts_dir.glob("*.parquet"))

    def _files(self) -> list[Path]:
        return ([self.path] if self.path.exists() else []) + self.part_files()

    def _open(self, path: Path) -> pq.ParquetFile:
        try:
            handle = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise OutputError(f"cannot read {path}: {exc}; move it away or set output.overwrite=true") from exc
        missing = [n for n in self.layout.names if n not in handle.schema_arrow.names]
        if missing:
            raise OutputError(
                f"{path} exists but is not a {self.layout.name} embedding table (it lacks {', '.join(missing)}); "
                "write to another output_path or set output.overwrite=true"
            )
        return handle

    def existing_keys(self, model_name: str, dataset_name: str) -> set[str]:
        """Keys of the rows already committed (file and parts) for this model and dataset."""
        keys: set[str] = set()
        columns = [self.layout.key, MODEL_COLUMN, DATASET_COLUMN]
        for path in self._files():
            for batch in self._open(path).iter_batches(columns=columns):
                mask = pc.and_(pc.equal(batch.column(1), model_name), pc.equal(batch.column(2), dataset_name))
                keys.update(str(k) for k in batch.column(0).filter(mask).to_pylist())
        return keys

    def part_writer(self, model_name: str) -> ShardWriter:
        """A writer of new part files; the random token keeps the names of successive runs apart."""
        prefix = f"{_slug(model_name)}-{uuid.uuid4().hex[:8]}"
        return ShardWriter(self.parts_dir, prefix=prefix, schema=self.schema, rows_per_shard=self.rows_per_part,
                           compression=self.compression)

    def finalize(self) -> int:
        """Merge the file and its parts into the file (rows de-duplicated); returns the rows it now holds."""
        parts = self.part_files()
        if not parts:
            return pq.ParquetFile(self.path).metadata.num_rows if self.path.exists() else 0
        sources = ([self.path] if self.path.exists() else []) + parts
        seen: set[tuple[str, str, str]] = set()
        with AtomicParquetFile(self.path, self.schema, compression=self.compression) as merged:
            for table in self._tables(sources):
                merged.write(table.filter(self._fresh(table, seen)))
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        logger.info("%s now holds %d rows", self.path, merged.rows)
        return merged.rows

    def _tables(self, paths: list[Path]) -> Iterator[pa.Table]:
        for path in paths:
            for batch in self._open(path).iter_batches(columns=self.layout.names):
                yield pa.Table.from_batches([batch]).select(self.layout.names).cast(self.schema)

    def _fresh(self, table: pa.Table, seen: set[tuple[str, str, str]]) -> pa.Array:
        """Mask of the rows whose (model, dataset, key) has not been written yet (a part merged twice, or a
        merge interrupted after the rename but before the parts were removed)."""
        keys = zip(table.column(MODEL_COLUMN).to_pylist(), table.column(DATASET_COLUMN).to_pylist(),
                   (str(k) for k in table.column(self.layout.key).to_pylist()), strict=True)
        flags = []
        for key in keys:
            flags.append(key not in seen)
            seen.add(key)
        return pa.array(flags, type=pa.bool_())
