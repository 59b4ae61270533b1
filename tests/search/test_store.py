"""The saved per-model search index: incremental sync with the catalog, backend switch, config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from img_search.catalog import Catalog, ImageRecord
from img_search.search.collection import Collection, resolve_model
from img_search.search.store import ConfigError, SearchConfig, VectorStore

DIM = 8


def _add(cat: Catalog, mid: int, start: int, n: int, rng: np.random.Generator) -> None:
    recs = [ImageRecord(f"/p/{i}.jpg", 1, 1, i.to_bytes(16, "big"), 1, 1) for i in range(start, start + n)]
    cat.record(recs, model_id=mid, vectors=rng.standard_normal((n, DIM)).astype(np.float32))


def _exact_top(cat: Catalog, mid: int, q: np.ndarray, k: int) -> list[int]:
    ids, vecs = cat.load_vectors(mid, DIM)
    vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return ids[np.argsort(-(vecs @ q))[:k]].tolist()


@pytest.mark.parametrize("backend", ["exact", "hnswlib", "qdrant_edge"])
def test_incremental_sync_matches_catalog(tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(0)
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip", dim=DIM, logit_scale=1.0, logit_bias=0.0)
    _add(cat, mid, 0, 50, rng)
    cfg = SearchConfig(ann_backend=backend, ann_threshold=0)
    store = VectorStore(tmp_path, cat, cat.get_model("m"), cfg)
    store.sync()
    assert (tmp_path / "vectors" / f"model-{mid}" / backend / "state.json").exists()

    _add(cat, mid, 50, 10, rng)  # new images
    cat.mark_deleted(["/p/3.jpg", "/p/7.jpg"])  # deleted
    cat.record([ImageRecord("/p/5.jpg", 2, 2, b"\x99" * 16, 1, 1)], model_id=mid,
               vectors=rng.standard_normal((1, DIM)).astype(np.float32))  # changed content
    again = VectorStore(tmp_path, cat, cat.get_model("m"), cfg)
    index = again.open()
    assert again.changed and len(index) == 58
    q = rng.standard_normal(DIM).astype(np.float32)
    q /= np.linalg.norm(q)
    got = index.search(q[None, :], 5)[0][0].tolist()
    assert got == _exact_top(cat, mid, q, 5)
    again.save(index)
    third = VectorStore(tmp_path, cat, cat.get_model("m"), cfg)
    third.open()
    assert not third.changed  # nothing left to apply


def test_backend_follows_threshold(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip", dim=DIM, logit_scale=1.0, logit_bias=0.0)
    _add(cat, mid, 0, 30, rng)
    model = resolve_model(cat, None)
    assert Collection(cat, model, config=SearchConfig(ann_backend="hnswlib", ann_threshold=31)).backend == "exact"
    assert Collection(cat, model, config=SearchConfig(ann_backend="hnswlib", ann_threshold=30)).backend == "hnswlib"
    override = SearchConfig().with_overrides(backend="faiss")
    assert override.backend_for(1) == "faiss"


def test_config_file(tmp_path: Path) -> None:
    assert SearchConfig.load(tmp_path) == SearchConfig()
    (tmp_path / "config.toml").write_text(
        '[search]\nann_backend = "usearch"\nann_threshold = 500\n[search.params.usearch]\nM = 32\n')
    cfg = SearchConfig.load(tmp_path)
    assert (cfg.ann_backend, cfg.ann_threshold, cfg.params) == ("usearch", 500, {"usearch": {"M": 32}})
    (tmp_path / "config.toml").write_text('[search]\nann_backend = "annoy"\n')
    with pytest.raises(ConfigError, match="unknown index backend 'annoy'"):
        SearchConfig.load(tmp_path)
    (tmp_path / "config.toml").write_text('[search]\nthreshold = 5\n')
    with pytest.raises(ConfigError, match=r"unknown .search. key"):
        SearchConfig.load(tmp_path)
    (tmp_path / "config.toml").write_text("[search\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SearchConfig.load(tmp_path)


def test_damaged_saved_index_is_rebuilt(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip", dim=DIM, logit_scale=1.0, logit_bias=0.0)
    _add(cat, mid, 0, 20, rng)
    cfg = SearchConfig(ann_backend="hnswlib", ann_threshold=0)
    VectorStore(tmp_path, cat, cat.get_model("m"), cfg).sync()
    for f in (tmp_path / "vectors" / f"model-{mid}" / "hnswlib" / "index").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    store = VectorStore(tmp_path, cat, cat.get_model("m"), cfg)
    assert len(store.open()) == 20 and store.changed


def test_default_backend_and_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import img_search.search.store as store
    from img_search.index import BackendUnavailableError

    cfg = SearchConfig()
    assert cfg.backend_for(19_999) == "exact"
    assert cfg.backend_for(20_000) == "qdrant_edge"

    def missing(name: str):  # type: ignore[no-untyped-def]
        raise BackendUnavailableError(f"index backend {name!r} needs a library that is not installed")

    monkeypatch.setattr(store, "resolve_backend", missing)
    assert cfg.backend_for(20_000) == "hnswlib"
    assert SearchConfig(ann_backend="faiss").backend_for(20_000) == "faiss"  # an explicit choice is kept
