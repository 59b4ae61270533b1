"""INQUIRE (https://github.com/inquire-benchmark/INQUIRE): the rerank image table, the raw release's precomputed
gallery embeddings, and the text queries with their relevance annotations.

* ``InquireDataset`` — the ``evendrow/INQUIRE-Rerank`` Hub dataset (columns ``image, query, relevant, clip_score,
  inat24_image_id, inat24_file_name, supercategory, category, iconic_group, ...``; splits ``validation`` and
  ``test``) as an ``ImageDataset`` whose stable id is ``inat24_file_name``. An image judged for several queries
  appears in several rows and is embedded once.
* ``release_shards`` / ``read_release_shard`` — the raw release in clip-retrieval layout:
  ``metadata/metadata_N.parquet`` (column ``image_path``, without ".jpg") paired by N with
  ``img_emb/img_emb_N.npy``; every pair is checked (both present, same row count) before anything is read.
* ``read_queries`` — ``inquire_queries_{test,val}.csv`` (header ``,query_id,query_text,supercategory,category,
  iconic_group`` with a leading unnamed index column) joined with ``inquire_annotations.csv``
  (``query_id,image_id,image_path``): each query's relevant gallery ids are the annotations' ``image_path`` with
  the extension stripped — exactly the ``id`` the release converter writes. ``download_query_files`` fetches the
  three CSVs from the public repository (and fails clearly offline).
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.data.images import IMAGE_EXTENSIONS
from img_search.data.parquet_images import DataFiles, ParquetImageDataset
from img_search.errors import DatasetError
from img_search.wording import noun

logger = logging.getLogger(__name__)

INQUIRE_RERANK_REPO = "evendrow/INQUIRE-Rerank"
INQUIRE_SPLITS = ("validation", "test")
INQUIRE_ID_COLUMN = "inat24_file_name"

# the public release's query and annotation CSVs
INQUIRE_DATA_URL = "https://raw.githubusercontent.com/inquire-benchmark/INQUIRE/main/data/inquire"
ANNOTATIONS_FILE = "inquire_annotations.csv"
QUERY_FILES = {"test": "inquire_queries_test.csv", "val": "inquire_queries_val.csv"}
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}
DOWNLOAD_TIMEOUT_SECONDS = 30.0

_METADATA_RE = re.compile(r"^metadata_(\d+)\.parquet$")
_EMBEDDING_RE = re.compile(r"^img_emb_(\d+)\.npy$")
RELEASE_ID_COLUMN = "image_path"


def strip_image_extension(value: str) -> str:
    """``"train/x/abc.jpg"`` -> ``"train/x/abc"``; ids without an image extension are returned unchanged."""
    text = value.strip()
    stem, ext = os.path.splitext(text)
    return stem if ext.lower() in IMAGE_EXTENSIONS and stem else text


class InquireDataset(ParquetImageDataset):
    """The INQUIRE rerank images, from the Hub or from local Parquet files of the same schema."""

    def __init__(
        self,
        *,
        name: str = "inquire",
        path: str | None = INQUIRE_RERANK_REPO,
        data_files: DataFiles | None = None,
        load_from_disk: str | None = None,
        splits: Sequence[str] = INQUIRE_SPLITS,
        image_column: str = "image",
        id_column: str = INQUIRE_ID_COLUMN,
        revision: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            name=name, path=None if (data_files or load_from_disk) else path, data_files=data_files,
            load_from_disk=load_from_disk, splits=splits, image_column=image_column, id_column=id_column,
            revision=revision, cache_dir=cache_dir,
        )


# ---------------------------------------------------------------------------------------------------------------
# the raw release: metadata_N.parquet + img_emb_N.npy


@dataclass(frozen=True)
class ReleaseShard:
    number: int
    metadata: Path
    embeddings: Path
    rows: int
    dim: int


def _numbered(folder: Path, pattern: re.Pattern[str], what: str) -> dict[int, Path]:
    if not folder.is_dir():
        raise DatasetError(f"{what} folder {folder} does not exist")
    found = {int(m.group(1)): folder / name for name in os.listdir(folder) if (m := pattern.match(name))}
    if not found:
        raise DatasetError(f"{what} folder {folder} holds no files named like {pattern.pattern}")
    return found


def release_shards(metadata_dir: Path, embeddings_dir: Path) -> list[ReleaseShard]:
    """Pair ``metadata_N.parquet`` with ``img_emb_N.npy`` by N and check each pair's row counts agree."""
    import pyarrow.parquet as pq

    metadata = _numbered(Path(metadata_dir), _METADATA_RE, "metadata")
    embeddings = _numbered(Path(embeddings_dir), _EMBEDDING_RE, "embeddings")
    unpaired = sorted(set(metadata) ^ set(embeddings))
    if unpaired:
        raise DatasetError(
            f"{noun(len(unpaired), 'shard number')} {', '.join(map(str, unpaired))} "
            f"{'has' if len(unpaired) == 1 else 'have'} a metadata file or an embedding file but not both "
            f"(metadata: {metadata_dir}, embeddings: {embeddings_dir})"
        )
    shards = []
    for number in sorted(metadata):
        meta_file = pq.ParquetFile(metadata[number])
        if RELEASE_ID_COLUMN not in meta_file.schema_arrow.names:
            raise DatasetError(f"{metadata[number]} has no `{RELEASE_ID_COLUMN}` column "
                               f"(it has: {', '.join(meta_file.schema_arrow.names)})")
        vectors = np.load(embeddings[number], mmap_mode="r")
        if vectors.ndim != 2:
            raise DatasetError(f"{embeddings[number]} holds an array of shape {vectors.shape}, not (rows, dim)")
        rows = meta_file.metadata.num_rows
        if rows != vectors.shape[0]:
            raise DatasetError(
                f"shard {number}: {metadata[number].name} has {rows} rows but {embeddings[number].name} has "
                f"{vectors.shape[0]} vectors; the release is incomplete or the files are mismatched"
            )
        shards.append(ReleaseShard(number, metadata[number], embeddings[number], rows, int(vectors.shape[1])))
    dims = {s.dim for s in shards}
    if len(dims) > 1:
        raise DatasetError(f"the release's embedding files disagree on the dimension: {sorted(dims)}")
    return shards


def read_release_shard(shard: ReleaseShard, chunk_rows: int) -> Iterator[tuple[list[str], NDArray[Any]]]:
    """(ids, vectors) chunks of one shard, vectors in the file's dtype, read from a memory map."""
    import pyarrow.parquet as pq

    vectors = np.load(shard.embeddings, mmap_mode="r")
    start = 0
    for batch in pq.ParquetFile(shard.metadata).iter_batches(batch_size=chunk_rows, columns=[RELEASE_ID_COLUMN]):
        paths = batch.column(0).to_pylist()
        if any(p is None for p in paths):
            raise DatasetError(f"{shard.metadata} has rows without an `{RELEASE_ID_COLUMN}` near row {start}")
        ids = [strip_image_extension(str(p)) for p in paths]
        yield ids, np.asarray(vectors[start : start + len(ids)])
        start += len(ids)


# ---------------------------------------------------------------------------------------------------------------
# queries and relevance annotations


@dataclass(frozen=True)
class InquireQuery:
    query_id: int
    query_text: str
    supercategory: str
    category: str
    iconic_group: str
    relevant: list[str] = field(default_factory=list)  # gallery ids (annotation image_path without extension)


def query_split(split: str) -> str:
    """The release's name of a split: ``test`` or ``val`` (``validation`` is accepted for ``val``)."""
    name = _SPLIT_ALIASES.get(split, split)
    if name not in QUERY_FILES:
        raise DatasetError(f"unknown INQUIRE query split {split!r}; valid: {', '.join(QUERY_FILES)} (or validation)")
    return name


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(
                f"{path} lacks {noun(len(missing), 'column')} {', '.join(missing)} (header: {reader.fieldnames})"
            )
        return list(reader)


def read_annotations(path: Path) -> dict[int, list[str]]:
    """query_id -> relevant gallery ids (image_path without extension), in file order, without repeats."""
    relevant: dict[int, list[str]] = {}
    for line, row in enumerate(_read_csv(path, ("query_id", "image_path")), start=2):
        try:
            query_id = int(row["query_id"])
        except ValueError:
            raise DatasetError(f"{path} line {line}: query_id {row['query_id']!r} is not an integer") from None
        ids = relevant.setdefault(query_id, [])
        image_id = strip_image_extension(row["image_path"] or "")
        if image_id and image_id not in ids:
            ids.append(image_id)
    return relevant


def read_queries(
    queries_dir: Path, splits: Sequence[str], *, limit: int | None = None
) -> dict[str, list[InquireQuery]]:
    """split (as given) -> its queries with relevance lists; ``limit`` keeps the first N queries of each split."""
    queries_dir = Path(queries_dir)
    relevant = read_annotations(queries_dir / ANNOTATIONS_FILE)
    columns = ("query_id", "query_text", "supercategory", "category", "iconic_group")
    out: dict[str, list[InquireQuery]] = {}
    for split in splits:
        path = queries_dir / QUERY_FILES[query_split(split)]
        queries = []
        for line, row in enumerate(_read_csv(path, columns), start=2):
            try:
                query_id = int(row["query_id"])
            except ValueError:
                raise DatasetError(f"{path} line {line}: query_id {row['query_id']!r} is not an integer") from None
            queries.append(InquireQuery(query_id, row["query_text"], row["supercategory"], row["category"],
                                        row["iconic_group"], relevant.get(query_id, [])))
        without = sum(1 for q in queries if not q.relevant)
        if without:
            logger.warning("%d of %d %s queries have no relevance annotation", without, len(queries), split)
        out[split] = queries[:limit] if limit else queries
    return out


def default_download_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "img-search" / "inquire"


def download_query_files(dest: Path | None = None, *, base_url: str | None = None,
                         timeout: float = DOWNLOAD_TIMEOUT_SECONDS) -> Path:
    """Fetch the query and annotation CSVs of the public release into ``dest`` (kept for later runs)."""
    dest = Path(dest) if dest else default_download_dir()
    base = (base_url or INQUIRE_DATA_URL).rstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    for name in (ANNOTATIONS_FILE, *QUERY_FILES.values()):
        target = dest / name
        if target.is_file() and target.stat().st_size > 0:
            continue
        url = f"{base}/{name}"
        logger.info("downloading %s", url)
        partial: str | None = None
        try:
            with (urllib.request.urlopen(url, timeout=timeout) as response,
                  tempfile.NamedTemporaryFile(dir=dest, delete=False, suffix=".part") as tmp):
                partial = tmp.name
                shutil.copyfileobj(response, tmp)
            os.replace(partial, target)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            if partial:
                Path(partial).unlink(missing_ok=True)
            raise DatasetError(
                f"could not download {url} ({exc}). Without network access, download the release's "
                f"{ANNOTATIONS_FILE}, {QUERY_FILES['test']} and {QUERY_FILES['val']} elsewhere and pass the folder "
                "holding them with --queries-dir"
            ) from exc
    return dest
