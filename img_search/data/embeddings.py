"""Precomputed embedding tables (gallery and query vectors) read from Parquet shards, a saved dataset, or the Hub.

An ``EmbeddingDatasetSpec`` says where the vectors live and which columns hold what; it maps one to one onto the
Hydra groups ``image_dataset/`` and ``query_dataset/`` of ``img_search/config/search_eval``. Three sources:

* ``data_files`` (with ``path`` unset or ``"parquet"``): local Parquet shards, read with pyarrow batch by batch.
  A glob string, a list of globs, or a mapping split -> glob(s); a ``{split}`` placeholder in a glob is filled
  with the split name. A directory stands for every ``*.parquet`` file below it.
* ``load_from_disk``: a directory written by ``datasets.Dataset(Dict).save_to_disk``.
* ``path``: a Hugging Face Hub dataset repo id (with config ``name``), loaded through ``datasets.load_dataset``.
  Offline this fails with ``EmbeddingDatasetError`` naming the local alternatives.

Splits ``val`` and ``validation`` are the same split wherever a split is looked up. Vectors come back as one
float32 ``(n, dim)`` matrix, filled chunk by chunk: into RAM, or into a ``.npy`` memmap under ``memmap_path`` so a
gallery larger than memory never exists twice (nor as Python lists) while it is read.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray

from img_search.errors import ImgSearchError
from img_search.wording import count, noun

logger = logging.getLogger(__name__)

FloatMatrix = NDArray[np.float32]
DataFiles = str | list[str] | dict[str, str | list[str]]

# rows converted per chunk; bounds the transient float32 copy of a batch (8192 x 1152 dims ~ 38 MB)
DEFAULT_READ_BATCH_SIZE = 8192

# builder names that mean "the data_files are local Parquet shards" rather than a Hub repo id
_LOCAL_PARQUET_BUILDERS = frozenset({"parquet"})

# each group of names denotes one split
_SPLIT_ALIASES: tuple[frozenset[str], ...] = (frozenset({"val", "validation", "valid", "dev"}),)


class EmbeddingDatasetError(ImgSearchError):
    """Embedding vectors could not be located or read: missing files, columns, splits, nulls, ragged vectors."""


def split_candidates(split: str) -> list[str]:
    """``split`` first, then the other names of the same split (``val`` <-> ``validation``)."""
    names = [split]
    for group in _SPLIT_ALIASES:
        if split in group:
            names += sorted(group - {split}, key=lambda s: (s not in ("val", "validation"), s))
    return names


@dataclass(frozen=True)
class EmbeddingDatasetSpec:
    """Where a table of embedding vectors lives and which columns hold ids, vectors and relevance labels."""

    path: str | None = None
    name: str | None = None
    split: str = "train"
    data_files: DataFiles | None = None
    load_from_disk: str | None = None
    revision: str | None = None
    id_column: str = "id"
    embedding_column: str = "embedding"
    relevance_column: str | None = None
    text_column: str | None = None
    # the column naming the model that produced each vector; missing columns are fine
    model_column: str | None = "model_name"
    # the expected model: filters rows by ``model_column`` when the column exists, else declares the model
    model_name: str | None = None
    memmap_path: str | None = None
    read_batch_size: int = DEFAULT_READ_BATCH_SIZE

    def __post_init__(self) -> None:
        if self.load_from_disk and (self.data_files or self.path):
            raise EmbeddingDatasetError("`load_from_disk` is a source of its own: leave `path` and `data_files` unset")
        if not (self.load_from_disk or self.data_files or self.path):
            raise EmbeddingDatasetError(
                "an embedding dataset needs a source: a Hub repo id in `path`, local Parquet shards in `data_files`, "
                "or a saved dataset directory in `load_from_disk`"
            )
        if self.path in _LOCAL_PARQUET_BUILDERS and not self.data_files:
            raise EmbeddingDatasetError(f"path={self.path!r} reads local files: set `data_files` to a glob")
        if not self.id_column or not self.embedding_column:
            raise EmbeddingDatasetError("id_column and embedding_column must name columns")
        if self.read_batch_size < 1:
            raise EmbeddingDatasetError(f"read_batch_size must be >= 1, got {self.read_batch_size}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EmbeddingDatasetSpec:
        """Build from a plain mapping (a resolved Hydra group); unknown keys are an error listing the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - valid)
        if unknown:
            raise EmbeddingDatasetError(
                f"unknown embedding dataset {noun(len(unknown), 'key')} {', '.join(unknown)}; "
                f"valid keys: {', '.join(sorted(valid))}"
            )
        values = dict(config)
        if isinstance(values.get("data_files"), Sequence) and not isinstance(values["data_files"], str):
            values["data_files"] = [str(v) for v in values["data_files"]]
        return cls(**values)

    @property
    def is_local_parquet(self) -> bool:
        return bool(self.data_files) and (self.path is None or self.path in _LOCAL_PARQUET_BUILDERS)

    def describe(self) -> str:
        if self.load_from_disk:
            source = f"saved dataset {self.load_from_disk}"
        elif self.is_local_parquet:
            source = f"Parquet files {self.data_files}"
        else:
            source = f"Hub dataset {self.path}" + (f" (config {self.name})" if self.name else "")
        return f"{source}, split {self.split!r}"


@dataclass(frozen=True)
class EmbeddingTable:
    """Ids and float32 vectors of one split; ``relevant`` holds each row's relevant gallery ids for query tables."""

    ids: list[str]
    vectors: FloatMatrix
    model_name: str | None
    source: str
    relevant: list[list[str]] | None = None
    texts: list[str] | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)


def load_embeddings(spec: EmbeddingDatasetSpec) -> EmbeddingTable:
    """Read ids, vectors (and relevance labels / query texts when their columns are configured) of ``spec``."""
    columns = _wanted_columns(spec)
    total_rows, batches = _open_source(spec, columns)
    reader = _TableReader(spec, total_rows)
    for batch in batches:
        reader.consume(batch)
    table = reader.finish()
    logger.info("loaded %d vectors of %d dims from %s", len(table), table.dim, table.source)
    return table


def load_gallery(spec: EmbeddingDatasetSpec) -> EmbeddingTable:
    return load_embeddings(spec)


def load_queries(spec: EmbeddingDatasetSpec) -> EmbeddingTable:
    """Like ``load_embeddings`` but a relevance column is required (it is what the queries are scored against)."""
    if not spec.relevance_column:
        raise EmbeddingDatasetError(
            f"query dataset {spec.describe()} has no `relevance_column`; set it to the column listing each query's "
            "relevant gallery ids (image_id in the INQUIRE layout)"
        )
    return load_embeddings(spec)


# ---------------------------------------------------------------------------------------------------------------
# sources: each yields pyarrow tables holding the wanted columns


def _wanted_columns(spec: EmbeddingDatasetSpec) -> list[str]:
    wanted = [spec.id_column, spec.embedding_column, spec.relevance_column, spec.text_column]
    return [c for c in dict.fromkeys(wanted) if c]


def _open_source(spec: EmbeddingDatasetSpec, columns: list[str]) -> tuple[int, Iterator[pa.Table]]:
    if spec.load_from_disk:
        return _open_saved_dataset(spec, columns)
    if spec.is_local_parquet:
        return _open_parquet(spec, columns)
    return _open_hub_dataset(spec, columns)


def resolve_data_files(data_files: DataFiles, split: str) -> list[Path]:
    """The Parquet files of ``split``: a mapping is looked up by split (or its alias), globs are expanded."""
    if isinstance(data_files, Mapping):
        for candidate in split_candidates(split):
            if candidate in data_files:
                return _expand_globs(data_files[candidate], candidate)
        raise EmbeddingDatasetError(
            f"split {split!r} is not among the data_files splits {', '.join(map(str, data_files))}"
        )
    for candidate in split_candidates(split):
        files = _expand_globs(data_files, candidate, missing_ok=True)
        if files:
            return files
        if "{split}" not in str(data_files):
            break
    raise EmbeddingDatasetError(f"no Parquet files match {data_files!r} (split {split!r}); check the path or glob")


def _expand_globs(patterns: str | list[str], split: str, *, missing_ok: bool = False) -> list[Path]:
    files: list[Path] = []
    for pattern in [patterns] if isinstance(patterns, str) else list(patterns):
        pattern = str(pattern).replace("{split}", split)
        if Path(pattern).is_dir():
            pattern = str(Path(pattern) / "**" / "*.parquet")
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches and not missing_ok:
            raise EmbeddingDatasetError(f"no files match {pattern!r}; check the path or glob")
        files += [Path(m) for m in matches if Path(m).is_file()]
    return list(dict.fromkeys(files))


def _open_parquet(spec: EmbeddingDatasetSpec, columns: list[str]) -> tuple[int, Iterator[pa.Table]]:
    assert spec.data_files is not None  # guaranteed by is_local_parquet
    files = resolve_data_files(spec.data_files, spec.split)
    handles: list[pq.ParquetFile] = []
    for file in files:
        try:
            handle = pq.ParquetFile(file)
        except (OSError, pa.ArrowInvalid) as exc:
            raise EmbeddingDatasetError(f"cannot read Parquet file {file}: {exc}") from exc
        _check_columns(handle.schema_arrow.names, columns, str(file), spec)
        handles.append(handle)
    model_column = _present_model_column(spec, handles[0].schema_arrow.names if handles else [])
    read = columns + ([model_column] if model_column else [])
    logger.info("reading %s for %s", count(len(files), "Parquet file"), spec.describe())

    def batches() -> Iterator[pa.Table]:
        for handle in handles:
            for batch in handle.iter_batches(batch_size=spec.read_batch_size, columns=read):
                yield pa.Table.from_batches([batch])

    return sum(h.metadata.num_rows for h in handles), batches()


def _open_saved_dataset(spec: EmbeddingDatasetSpec, columns: list[str]) -> tuple[int, Iterator[pa.Table]]:
    import datasets  # imported here: only this source and the Hub need the library

    assert spec.load_from_disk is not None
    try:
        loaded = datasets.load_from_disk(spec.load_from_disk)
    except (OSError, ValueError) as exc:
        raise EmbeddingDatasetError(f"cannot load the saved dataset at {spec.load_from_disk}: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        for candidate in split_candidates(spec.split):
            if candidate in loaded:
                return _iter_dataset(loaded[candidate], spec, columns)
        raise EmbeddingDatasetError(
            f"split {spec.split!r} not in the saved dataset {spec.load_from_disk} (splits: {', '.join(loaded)})"
        )
    return _iter_dataset(loaded, spec, columns)


def _open_hub_dataset(spec: EmbeddingDatasetSpec, columns: list[str]) -> tuple[int, Iterator[pa.Table]]:
    import datasets

    kwargs: dict[str, Any] = {"revision": spec.revision}
    if spec.data_files:
        kwargs["data_files"] = spec.data_files
    last_error: Exception | None = None
    for candidate in split_candidates(spec.split):
        try:
            loaded = datasets.load_dataset(spec.path, spec.name, split=candidate, **kwargs)
        except ValueError as exc:
            if "split" not in str(exc).lower():
                raise EmbeddingDatasetError(f"cannot load {spec.describe()}: {exc}") from exc
            last_error = exc  # unknown split name: try its alias
            continue
        except (OSError, ImportError) as exc:  # ConnectionError and FileNotFoundError are OSErrors
            raise EmbeddingDatasetError(
                f"cannot load {spec.describe()} from the Hugging Face Hub: {exc}. Without network access, point the "
                "config at local shards, e.g. `image_dataset=inquire_local "
                "image_dataset.data_files='DIR/*.parquet'` (or `load_from_disk=DIR`); "
                "set HF_HUB_OFFLINE=1 to fail at once instead of retrying"
            ) from exc
        return _iter_dataset(loaded, spec, columns)
    raise EmbeddingDatasetError(f"cannot load {spec.describe()}: {last_error}")


def _iter_dataset(dataset: Any, spec: EmbeddingDatasetSpec, columns: list[str]) -> tuple[int, Iterator[pa.Table]]:
    names = list(dataset.column_names)
    _check_columns(names, columns, spec.describe(), spec)
    model_column = _present_model_column(spec, names)
    read = columns + ([model_column] if model_column else [])
    subset = dataset.select_columns(read).with_format("arrow")

    def batches() -> Iterator[pa.Table]:
        yield from subset.iter(batch_size=spec.read_batch_size)

    return len(dataset), batches()


def _check_columns(available: Sequence[str], wanted: Sequence[str], where: str, spec: EmbeddingDatasetSpec) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise EmbeddingDatasetError(
            f"{where} lacks {noun(len(missing), 'column')} {', '.join(missing)} (it has: {', '.join(available)}); "
            "set id_column / embedding_column / relevance_column / text_column to the right names"
        )


def _present_model_column(spec: EmbeddingDatasetSpec, available: Sequence[str]) -> str | None:
    if spec.model_column and spec.model_column in available:
        return spec.model_column
    return None


# ---------------------------------------------------------------------------------------------------------------
# extraction


class _TableReader:
    """Accumulates batches into ids, a preallocated float32 matrix (RAM or memmap) and optional labels."""

    def __init__(self, spec: EmbeddingDatasetSpec, total_rows: int) -> None:
        self.spec = spec
        self.total_rows = total_rows
        self.ids: list[str] = []
        self.relevant: list[list[str]] | None = [] if spec.relevance_column else None
        self.texts: list[str] | None = [] if spec.text_column else None
        self.models: set[str] = set()
        self.rows_seen = 0
        self._matrix: FloatMatrix | None = None
        self._filled = 0

    def consume(self, table: pa.Table) -> None:
        spec = self.spec
        first_row = self.rows_seen
        self.rows_seen += table.num_rows
        table = self._filter_model(table)
        if table.num_rows == 0:
            return
        ids = table.column(spec.id_column)
        if ids.null_count:
            raise EmbeddingDatasetError(
                f"{spec.describe()}: {count(ids.null_count, 'row')} near row {first_row} "
                f"{'has' if ids.null_count == 1 else 'have'} no id in `{spec.id_column}`"
            )
        batch_ids = [str(v) for v in ids.to_pylist()]
        if "" in batch_ids:
            raise EmbeddingDatasetError(f"{spec.describe()}: empty id in `{spec.id_column}` near row {first_row}")
        vectors = _list_column_to_matrix(table.column(spec.embedding_column), spec, batch_ids)
        self._store(vectors)
        self.ids += batch_ids
        if self.relevant is not None and spec.relevance_column:
            self.relevant += [_as_id_list(v) for v in table.column(spec.relevance_column).to_pylist()]
        if self.texts is not None and spec.text_column:
            self.texts += ["" if v is None else str(v) for v in table.column(spec.text_column).to_pylist()]

    def _filter_model(self, table: pa.Table) -> pa.Table:
        column = self.spec.model_column
        if not column or column not in table.column_names:
            return table
        self.models.update(str(v) for v in pc.unique(table.column(column)).to_pylist() if v is not None)
        if self.spec.model_name:
            table = table.filter(pc.equal(table.column(column), self.spec.model_name))
        return table.drop_columns([column])

    def _store(self, vectors: FloatMatrix) -> None:
        if self._matrix is None:
            self._matrix = self._allocate(vectors.shape[1])
        elif vectors.shape[1] != self._matrix.shape[1]:
            raise EmbeddingDatasetError(
                f"{self.spec.describe()}: vectors change dimension from {self._matrix.shape[1]} to {vectors.shape[1]}"
            )
        end = self._filled + vectors.shape[0]
        if end > self._matrix.shape[0]:  # a source whose row count was an estimate
            raise EmbeddingDatasetError(f"{self.spec.describe()}: more rows than the {self.total_rows} announced")
        self._matrix[self._filled : end] = vectors
        self._filled = end

    def _allocate(self, dim: int) -> FloatMatrix:
        if not self.spec.memmap_path:
            return np.empty((self.total_rows, dim), dtype=np.float32)
        path = memmap_file(self.spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        logger.info("extracting vectors into the memmap %s (%d x %d float32)", path, self.total_rows, dim)
        matrix: FloatMatrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self.total_rows, dim))
        return matrix

    def finish(self) -> EmbeddingTable:
        spec = self.spec
        if len(self.models) > 1 and not spec.model_name:
            raise EmbeddingDatasetError(
                f"{spec.describe()} mixes vectors of several models ({', '.join(sorted(self.models))}); "
                "pick one with `model_name=...`"
            )
        if not self.ids:
            if spec.model_name and self.models:
                raise EmbeddingDatasetError(
                    f"{spec.describe()} holds no vectors of model {spec.model_name!r} "
                    f"(models present: {', '.join(sorted(self.models))}); fix `model_name`"
                )
            raise EmbeddingDatasetError(f"{spec.describe()} holds no vectors ({self.rows_seen} rows read)")
        assert self._matrix is not None
        matrix = self._matrix[: self._filled]
        if isinstance(matrix, np.memmap):
            matrix.flush()
        # the column's value wins over the configured name when they agree; rows of other models were filtered out
        model = spec.model_name or (next(iter(self.models)) if self.models else None)
        return EmbeddingTable(
            ids=self.ids,
            vectors=matrix,
            model_name=model,
            source=spec.describe(),
            relevant=self.relevant,
            texts=self.texts,
        )


def memmap_file(spec: EmbeddingDatasetSpec) -> Path:
    """``memmap_path`` itself when it names a ``.npy`` file, else a file in that directory named after the source."""
    assert spec.memmap_path is not None
    target = Path(spec.memmap_path)
    if target.suffix == ".npy":
        return target
    source = f"{spec.path}|{spec.name}|{spec.data_files}|{spec.load_from_disk}|{spec.model_name}"
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(spec.name or spec.path or "local")).strip("_") or "local"
    return target / f"{stem}-{spec.split}-{digest}.npy"


def _list_column_to_matrix(
    column: pa.ChunkedArray | pa.Array, spec: EmbeddingDatasetSpec, ids: list[str]
) -> FloatMatrix:
    """A list<float16|float32|float64> column (fixed size or not) as a float32 (rows, dim) array."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    where = f"{spec.describe()}, column `{spec.embedding_column}`"
    if array.null_count:
        bad = [ids[i] for i in np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[:5]]
        raise EmbeddingDatasetError(f"{where}: {count(array.null_count, 'row')} "
                                    f"{'has' if array.null_count == 1 else 'have'} no embedding "
                                    f"({noun(len(bad), 'id')} {', '.join(bad)})")
    if pa.types.is_fixed_size_list(array.type):
        dim = array.type.list_size
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        dim = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and (lengths != dim).any():
            bad_row = int(np.flatnonzero(lengths != dim)[0])
            raise EmbeddingDatasetError(
                f"{where}: ragged vectors ({dim} values in row of id {ids[0]}, {int(lengths[bad_row])} in id "
                f"{ids[bad_row]})"
            )
    else:
        raise EmbeddingDatasetError(f"{where}: expected a list of floats, got {array.type}")
    if dim == 0:
        raise EmbeddingDatasetError(f"{where}: vectors are empty")
    values = array.flatten()
    if values.null_count or not pa.types.is_floating(values.type):
        raise EmbeddingDatasetError(f"{where}: vectors must hold non-null floats, got {values.type}")
    flat = values.to_numpy(zero_copy_only=False)
    matrix: FloatMatrix = flat.reshape(len(array), dim).astype(np.float32, copy=False)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = [ids[i] for i in np.flatnonzero(~finite)[:5]]
        raise EmbeddingDatasetError(f"{where}: non-finite values in the vectors of ids {', '.join(bad)}")
    return matrix


def _as_id_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | int | np.integer):
        return [str(value)]
    return [str(v) for v in value if v is not None]
