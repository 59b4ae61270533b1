"""Vectors out of the system, in the Hub layout the evaluation harness reads (``id, model_name, dataset_name,
embedding``), and onto the Hugging Face Hub.

* ``export_catalog`` — a folder index's vectors (``img-search export --format parquet``): one row per live image
  and model, ``id`` the image's absolute path (names that are not UTF-8 keep their bytes as ``\\xNN``). The
  harness then evaluates a user's own collection: ``image_dataset=inquire_local image_dataset.data_files=FILE``.
* ``convert_inquire_release`` — the raw INQUIRE release (clip-retrieval layout) into zstd Parquet shards with
  fp16 vectors, one shard per ``metadata_N`` / ``img_emb_N`` pair, after every pair has been checked.
* ``push_to_hub`` — upload a folder of shards to a Hub dataset repo with ``huggingface_hub``'s API and register
  them as a named configuration in the repo card. A failed push raises ``HubPushError``; local files are never
  touched by it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from img_search.errors import CatalogNotFoundError, HubPushError
from img_search.files import check_output_file
from img_search.optional import require
from img_search.registry import Registry
from img_search.wording import count

logger = logging.getLogger(__name__)

RELEASE_CHUNK_ROWS = 65_536  # rows read from a release shard at a time (65k x 1152 fp16 ~ 150 MB)
RELEASE_DTYPE = "float16"
GALLERY_SPLIT = "train"
GALLERY_PREFIX = "train"


@dataclass
class ExportSummary:
    output: str
    dataset_name: str
    rows: int = 0
    models: list[dict[str, Any]] = field(default_factory=list)  # name, dim, rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _printable(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _require_pyarrow(needed_for: str) -> None:
    """``UnavailableError`` naming the ``eval`` extra (pyproject.toml: the one that installs pyarrow) without it."""
    require("pyarrow.parquet", extra="eval", needed_for=needed_for, package="pyarrow")


def export_parquet(index_dir: Path, output: Path, *, model: str | None = None, dataset_name: str | None = None,
                   dtype: str = "float32") -> ExportSummary:
    """Every live image's vector of ``model`` (default: of every model) in the catalog, as one Parquet file.

    Checked before the catalog is opened: pyarrow is installed (else ``UnavailableError`` naming the ``eval``
    extra) and ``output`` can name a file (else ``InvalidInputError``: a folder, or a parent folder that does not
    exist; ``files.check_output_file``). Raises ``CatalogNotFoundError`` when there is nothing to export (no file is
    written then). The file is written under ``<output>.tmp`` and renamed into place, so a failure leaves no debris.
    """
    _require_pyarrow("exporting to Parquet")
    output = check_output_file(output, "--output")
    from img_search.catalog import Catalog
    from img_search.pipeline.parquet_writer import DATASET_COLUMN, GALLERY, MODEL_COLUMN, AtomicParquetFile, make_table
    from img_search.search.collection import resolve_model

    index_dir = Path(index_dir)
    dataset_name = dataset_name or index_dir.resolve().name
    summary = ExportSummary(output=str(output), dataset_name=dataset_name)
    with Catalog.in_dir(index_dir, readonly=True) as catalog:
        rows = [resolve_model(catalog, model)] if model else catalog.models()
        if not rows:
            raise CatalogNotFoundError(
                f"the catalog at {index_dir} holds no model: run `img-search index FOLDER` first")
        with AtomicParquetFile(output, GALLERY.schema(dtype)) as out:
            for row in rows:
                if row.dim is None:
                    logger.warning("model %s has no recorded dimension; skipped", row.name)
                    continue
                image_ids, vectors = catalog.load_vectors(row.id, row.dim)
                images = catalog.images_by_id(image_ids.tolist())
                ids = [_printable(images[int(i)].path) for i in image_ids]
                n = len(ids)
                out.write(make_table(GALLERY, {"id": ids, MODEL_COLUMN: [row.name] * n,
                                               DATASET_COLUMN: [dataset_name] * n}, vectors, dtype))
                summary.models.append({"name": row.name, "dim": row.dim, "rows": n})
        summary.rows = out.rows
    if summary.rows == 0:
        raise CatalogNotFoundError(f"the catalog at {index_dir} holds no vectors to export; nothing was written")
    logger.info("exported %d vectors to %s", summary.rows, output)
    return summary


Exporter = Callable[..., ExportSummary]
EXPORT_FORMATS: Registry[Exporter] = Registry("export format")
EXPORT_FORMATS.add("parquet", export_parquet)


def export_catalog(index_dir: Path, output: Path, *, fmt: str = "parquet", **options: Any) -> ExportSummary:
    return EXPORT_FORMATS.get(fmt)(index_dir, output, **options)


# ---------------------------------------------------------------------------------------------------------------
# the raw INQUIRE release


@dataclass
class ConvertSummary:
    output_dir: str
    files: list[str] = field(default_factory=list)
    rows: int = 0
    dim: int = 0


def convert_inquire_release(metadata_dir: Path, embeddings_dir: Path, output_dir: Path, *, model_name: str,
                            dataset_name: str, overwrite: bool = False,
                            chunk_rows: int = RELEASE_CHUNK_ROWS) -> ConvertSummary:
    """``metadata_N.parquet`` + ``img_emb_N.npy`` -> ``<output_dir>/train-NNNNN-of-MMMMM.parquet`` (zstd, fp16).

    ``UnavailableError`` (naming the ``eval`` extra) without pyarrow, before anything is read."""
    _require_pyarrow("converting the INQUIRE release")
    from img_search.data.inquire import read_release_shard, release_shards
    from img_search.pipeline.parquet_writer import (
        DATASET_COLUMN,
        DEFAULT_COMPRESSION,
        GALLERY,
        MODEL_COLUMN,
        AtomicParquetFile,
        OutputError,
        make_table,
    )

    shards = release_shards(Path(metadata_dir), Path(embeddings_dir))  # every pair is checked before any write
    output_dir = Path(output_dir)
    existing = sorted(output_dir.glob("*.parquet")) if output_dir.is_dir() else []
    if existing and not overwrite:
        raise OutputError(f"{output_dir} already holds {count(len(existing), 'Parquet file')}; "
                          "pass --overwrite to replace")
    for path in existing:
        path.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = ConvertSummary(output_dir=str(output_dir), dim=shards[0].dim)
    schema = GALLERY.schema(RELEASE_DTYPE)
    for k, shard in enumerate(shards):
        target = output_dir / f"{GALLERY_PREFIX}-{k:05d}-of-{len(shards):05d}.parquet"
        with AtomicParquetFile(target, schema, compression=DEFAULT_COMPRESSION) as out:
            for ids, vectors in read_release_shard(shard, chunk_rows):
                n = len(ids)
                out.write(make_table(GALLERY, {"id": ids, MODEL_COLUMN: [model_name] * n,
                                               DATASET_COLUMN: [dataset_name] * n}, vectors, RELEASE_DTYPE))
        summary.files.append(str(target))
        summary.rows += out.rows
        logger.info("shard %d: %d rows -> %s", shard.number, out.rows, target)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# the Hub


def _card_text(api: Any, repo_id: str, config_name: str, data_files: list[dict[str, str]]) -> str:
    """The repo card with ``config_name`` (re)declared and every other configuration kept."""
    import yaml
    from huggingface_hub import DatasetCard
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    metadata: dict[str, Any] = {}
    body = f"\n# {repo_id}\n\nEmbedding shards written by img-search.\n"
    try:
        existing = DatasetCard.load(repo_id, repo_type="dataset", token=api.token)
        metadata, body = existing.data.to_dict(), existing.text
    except (EntryNotFoundError, RepositoryNotFoundError):
        pass  # a new repo: start a card
    configs = [c for c in metadata.get("configs") or [] if c.get("config_name") != config_name]
    configs.append({"config_name": config_name, "data_files": data_files})
    metadata["configs"] = configs
    return f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n{body}"


def push_to_hub(folder: Path, repo_id: str, *, token: str | None = None, path_in_repo: str = "data",
                config_name: str = "default", splits: Mapping[str, str] | None = None, private: bool | None = None,
                api: Any = None) -> str:
    """Upload the Parquet files under ``folder`` to ``repo_id``/``path_in_repo`` and declare them as a config.

    ``splits`` maps a split name to a glob relative to ``folder`` (default: every file is the train split).
    Returns the repo URL. Any failure of the remote calls becomes ``HubPushError``; ``folder`` is left intact.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    files = sorted(folder.rglob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise HubPushError(f"there are no Parquet files under {folder} to push")
    splits = dict(splits or {GALLERY_SPLIT: "*.parquet"})
    data_files = [{"split": split, "path": f"{path_in_repo}/{pattern}"} for split, pattern in splits.items()]
    api = api or HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        card = _card_text(api, repo_id, config_name, data_files)
        api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder), path_in_repo=path_in_repo,
                          allow_patterns=["*.parquet", "**/*.parquet"],
                          commit_message=f"Add {config_name} shards ({len(files)} files)")
        api.upload_file(path_or_fileobj=card.encode("utf-8"), path_in_repo="README.md", repo_id=repo_id,
                        repo_type="dataset", commit_message=f"Declare the {config_name} configuration")
    except Exception as exc:  # network, auth, quota, bad repo id: every failure of the remote side ends here
        raise HubPushError(
            f"pushing {count(len(files), 'Parquet file')} from {folder} to the Hub dataset {repo_id} failed "
            f"({type(exc).__name__}: {exc}). The local files are intact; fix the cause (network access, token, "
            "repo id) and push again"
        ) from exc
    url = f"https://huggingface.co/datasets/{repo_id}"
    logger.info("pushed %s to %s (config %s)", count(len(files), "Parquet file"), url, config_name)
    return url
