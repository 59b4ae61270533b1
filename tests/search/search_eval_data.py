"""Data of the evaluation-harness tests: small local shards in the layout the dataset scripts write.

A plain module with a unique name (not ``conftest``) so test files can import it without depending on which
``conftest`` module pytest imported last."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_GALLERY, N_QUERIES, DIM, N_CLUSTERS = 300, 20, 32, 10
MODEL = "tiny-model"


@dataclass(frozen=True)
class EvalShards:
    root: Path
    gallery_ids: list[str]
    gallery: np.ndarray  # float32 as read back (the shards hold fp16)
    queries: dict[str, np.ndarray]  # split folder -> vectors
    relevant: dict[str, list[list[str]]]

    @property
    def gallery_glob(self) -> str:
        return str(self.root / "gallery" / "*.parquet")

    def query_glob(self, folder: str = "queries") -> str:
        return str(self.root / folder / "{split}" / "*.parquet")

    def local_args(self, query_folder: str = "queries") -> list[str]:
        return [
            "image_dataset=inquire_local",
            f"image_dataset.data_files='{self.gallery_glob}'",
            "query_dataset=inquire_local",
            f"query_dataset.data_files='{self.query_glob(query_folder)}'",
        ]


def _write_queries(folder: Path, vectors: np.ndarray, relevant: list[list[str]]) -> None:
    n = len(vectors)
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "query_id": list(range(n)),
            "query_text": [f"query {i}" for i in range(n)],
            "supercategory": ["Animalia"] * n,
            "category": ["Birds"] * n,
            "iconic_group": ["Aves"] * n,
            "embedding": pa.array(list(vectors.astype(np.float32)), type=pa.list_(pa.float32())),
            "image_id": relevant,
        }
    )
    pq.write_table(table, folder / "part-00000.parquet")


def build_eval_shards(root: Path) -> EvalShards:
    """300 clustered gallery vectors (3 fp16 shards) and 20 queries per split (test, validation) of 32 dims.

    A query's relevant ids are the 12 gallery items of its cluster closest to the cluster centre, written with a
    ".jpg" suffix the gallery ids lack (as in INQUIRE's annotations), so id normalisation is exercised.
    """
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((N_CLUSTERS, DIM)) * 2.0
    labels = np.arange(N_GALLERY) % N_CLUSTERS
    gallery = (centres[labels] + rng.standard_normal((N_GALLERY, DIM))).astype(np.float16)
    ids = [f"img{i:05d}" for i in range(N_GALLERY)]
    for shard, part in enumerate(np.array_split(np.arange(N_GALLERY), 3)):
        (root / "gallery").mkdir(exist_ok=True)
        table = pa.table(
            {
                "id": [ids[i] for i in part],
                "model_name": [MODEL] * len(part),
                "dataset_name": ["tiny_eval"] * len(part),
                "embedding": pa.array(list(gallery[part]), type=pa.list_(pa.float16())),
            }
        )
        pq.write_table(table, root / "gallery" / f"part-{shard:05d}.parquet")
    closest: list[list[str]] = []
    for c in range(N_CLUSTERS):
        members = np.flatnonzero(labels == c)
        dist = np.linalg.norm(gallery[members].astype(np.float32) - centres[c], axis=1)
        closest.append([f"{ids[i]}.jpg" for i in members[np.argsort(dist)[:12]]])
    queries: dict[str, np.ndarray] = {}
    relevant: dict[str, list[list[str]]] = {}
    for split, seed in (("test", 1), ("validation", 2)):
        q_rng = np.random.default_rng(seed)
        q_labels = np.arange(N_QUERIES) % N_CLUSTERS
        queries[split] = (centres[q_labels] + 0.7 * q_rng.standard_normal((N_QUERIES, DIM))).astype(np.float32)
        relevant[split] = [closest[c] for c in q_labels]
        _write_queries(root / "queries" / split, queries[split], relevant[split])
    # queries of another dimension, for the mismatch error
    _write_queries(root / "queries16" / "test", rng.standard_normal((4, 16)).astype(np.float32), [[ids[0]]] * 4)
    return EvalShards(root, ids, gallery.astype(np.float32), queries, relevant)


@dataclass(frozen=True)
class EntryResult:
    code: int
    out: str
    err: str
