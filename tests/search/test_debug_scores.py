"""`debug_scores` and `img-search debug-scores`: raw cosine, learned probability, temperature scores, IMAGE's rank
(checked against a direct search) and the collection's score distribution."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import make_jpeg
from test_cli import cli

from img_search.catalog import Catalog, ImageRecord
from img_search.data.images import content_hash
from img_search.embedding.base import ModelInfo
from img_search.errors import InvalidInputError, NotFoundError
from img_search.pipeline.runner import IndexOptions, index_folders
from img_search.search.calibration import Calibration, calibrate_siglip_score
from img_search.search.collection import Collection
from img_search.search.debug import debug_scores, format_report
from img_search.search.searcher import Searcher, open_searcher
from img_search.settings import load_settings


class _PlantedEncoder:
    """An encoder whose text vectors are planted (no model): ``encode_texts`` looks each text up."""

    device = "cpu"

    def __init__(self, texts: dict[str, np.ndarray], bias: float | None) -> None:
        dim = len(next(iter(texts.values())))
        self.info = ModelInfo("planted", "siglip" if bias is not None else "clip", dim, math.log(10.0), bias, 16)
        self._texts = texts

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._texts[t] for t in texts]).astype(np.float32)

    def encode_images(self, images: list[Any]) -> np.ndarray:
        raise AssertionError("an indexed image must be searched by its stored vector")


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def _planted(tmp_path: Path, bias: float | None = -5.0) -> tuple[Searcher, list[Path], np.ndarray, dict[str, Any]]:
    """A catalog of 30 real files with planted random vectors, and a searcher whose text vectors are planted."""
    rng = np.random.default_rng(11)
    vectors = _unit(rng.standard_normal((30, 8)))
    files = [make_jpeg(tmp_path / "photos" / f"p{i:02d}.jpg", seed=i) for i in range(30)]
    cat = Catalog.in_dir(tmp_path / "idx")
    mid = cat.ensure_model("planted", family="siglip" if bias is not None else "clip", dim=8,
                           logit_scale=math.log(10.0), logit_bias=bias)
    records = [ImageRecord(str(f), f.stat().st_size, 1, content_hash(f.read_bytes()), 96, 64) for f in files]
    cat.record(records, model_id=mid, vectors=vectors)
    cat.close()
    texts = {f"q{j}": _unit(rng.standard_normal(8)) for j in range(3)}
    encoder = _PlantedEncoder(texts, bias)
    searcher = Searcher(Collection.open(tmp_path / "idx"), lambda: encoder)  # type: ignore[arg-type, return-value]
    return searcher, files, vectors, texts


def test_planted_scores_rank_and_histogram(tmp_path: Path) -> None:
    searcher, files, vectors, texts = _planted(tmp_path)
    image = 7
    report = debug_scores(searcher, files[image], ["q0", "q1", "q2"], temperatures=(10, 25), bins=6)
    assert report.vector_source == "catalog" and report.collection_size == 30
    assert report.image_id is not None and report.temperatures == (10.0, 25.0)
    assert report.calibration == Calibration(math.log(10.0), -5.0)
    for q in report.queries:
        cosines = vectors.astype(np.float64) @ texts[q.query].astype(np.float64)
        assert q.cosine == pytest.approx(cosines[image], abs=1e-6)
        # the rank is IMAGE's place when every image is ordered by its cosine to the query
        assert q.rank == 1 + int(np.count_nonzero(cosines > cosines[image]))
        assert q.probability == pytest.approx(1 / (1 + math.exp(-(10.0 * cosines[image] - 5.0))), rel=1e-6)
        assert [t for t, _ in q.temperature_scores] == [10.0, 25.0]
        assert [p for _, p in q.temperature_scores] == pytest.approx(
            [1 / (1 + math.exp(-t * cosines[image])) for t in (10.0, 25.0)], rel=1e-6)
        d = q.distribution
        assert sum(d.counts) == d.count == 30 and len(d.counts) == 6 and len(d.edges) == 7
        assert d.minimum == pytest.approx(cosines.min(), abs=1e-6) and d.maximum == pytest.approx(cosines.max(),
                                                                                                 abs=1e-6)
        assert d.image_bin is not None and d.edges[d.image_bin] <= q.cosine <= d.edges[d.image_bin + 1]
        direct = [float(h.cosine or 0.0) for h in searcher.search_vectors(texts[q.query][None, :], limit=30)[0]]
        expected_counts, expected_edges = np.histogram(direct, bins=6)
        assert list(d.counts) == expected_counts.tolist() and list(d.edges) == pytest.approx(expected_edges, abs=1e-6)
    text = format_report(report)
    assert text.count("<- image") == 3 and "T=25" in text and f"{report.queries[0].rank}/30" in text
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["queries"][1]["rank"] == report.queries[1].rank
    assert set(payload["queries"][0]["temperature_scores"]) == {"10", "25"}


def test_rank_is_the_position_in_a_direct_search(tmp_path: Path) -> None:
    searcher, files, _, texts = _planted(tmp_path)
    for image in (0, 13, 29):
        report = debug_scores(searcher, files[image], list(texts))
        for q in report.queries:
            hits = searcher.search_vectors(texts[q.query][None, :], limit=30)[0]
            assert [h.path for h in hits].index(str(files[image])) + 1 == q.rank
            assert hits[q.rank - 1].cosine == pytest.approx(q.cosine, abs=1e-6)


def test_clip_has_no_learned_probability(tmp_path: Path) -> None:
    searcher, files, _, _ = _planted(tmp_path, bias=None)
    report = debug_scores(searcher, files[0], ["q0"])
    q = report.queries[0]
    assert report.calibration is None and q.probability is None
    assert [p for _, p in q.temperature_scores] == pytest.approx(
        [float(calibrate_siglip_score(q.cosine, t)) for t in (10, 15, 20, 25, 30)])
    assert "learned p is '-'" in format_report(report)


def test_a_copy_elsewhere_uses_the_stored_vector_and_ranks_where_it_would_land(tmp_path: Path) -> None:
    searcher, files, _, _ = _planted(tmp_path)
    copy = shutil.copy(files[4], tmp_path / "copy.jpg")
    own = debug_scores(searcher, files[4], ["q1"]).queries[0]
    report = debug_scores(searcher, copy, ["q1"])
    assert report.image_id is None and report.vector_source == "catalog"
    assert report.queries[0].cosine == own.cosine and report.queries[0].rank == own.rank


def test_bad_input(tmp_path: Path) -> None:
    searcher, files, _, _ = _planted(tmp_path)
    with pytest.raises(NotFoundError, match="no such file"):
        debug_scores(searcher, tmp_path / "missing.jpg", ["q0"])
    with pytest.raises(InvalidInputError, match="at least one query"):
        debug_scores(searcher, files[0], [])
    with pytest.raises(InvalidInputError, match="empty"):
        debug_scores(searcher, files[0], ["q0", "  "])
    with pytest.raises(InvalidInputError, match="temperature"):
        debug_scores(searcher, files[0], ["q0"], temperatures=(10, 0))
    with pytest.raises(InvalidInputError, match="bins"):
        debug_scores(searcher, files[0], ["q0"], bins=0)
    not_image = tmp_path / "notes.jpg"
    not_image.write_bytes(b"not an image at all")
    with pytest.raises(InvalidInputError):  # ImageDecodeError, before any model runs
        debug_scores(searcher, not_image, ["q0"])


# ------------------------------------------------------------------------------------------------ real tiny model
def test_tiny_siglip_unindexed_image_is_embedded(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                                 siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    idx = tmp_path / "idx"
    index_folders([str(photo_dir)], idx, IndexOptions(model=str(tiny_siglip), workers=0),
                  encoder_factory=lambda: siglip_encoder)
    searcher = open_searcher(load_settings(idx), encoder=siglip_encoder)
    outside = make_jpeg(tmp_path / "outside.jpg", seed=999)
    report = debug_scores(searcher, outside, ["a dog", "a red car"])
    assert report.vector_source == "encoded" and report.image_id is None and report.collection_size == 12
    from PIL import Image

    image_vec = siglip_encoder.encode_images([Image.open(outside).convert("RGB")])[0]
    for q in report.queries:
        text_vec = siglip_encoder.encode_texts([q.query])[0]
        assert q.cosine == pytest.approx(float(image_vec @ text_vec), abs=1e-4)
        hits = searcher.search_text(q.query, limit=12)
        assert q.rank == 1 + sum(h.cosine is not None and h.cosine > q.cosine for h in hits)
        assert q.probability == pytest.approx(float(searcher.calibration.probability(q.cosine)))  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------------------ CLI
@pytest.fixture()
def indexed_env(photo_dir: Path, tmp_path: Path, tiny_siglip: Path) -> dict[str, str]:
    env = {"IMG_SEARCH_INDEX_DIR": str(tmp_path / "idx"), "IMG_SEARCH_MODEL": str(tiny_siglip)}
    assert json.loads(cli("index", str(photo_dir), "--json", env=env).stdout)["embedded"] == 12
    return env


def test_cli_debug_scores(indexed_env: dict[str, str], photo_dir: Path, tmp_path: Path) -> None:
    image = photo_dir / "a" / "img05.jpg"
    proc = cli("debug-scores", str(image), "--query", "a dog", "-q", "a cat", "--json", env=indexed_env)
    report = json.loads(proc.stdout)
    assert [q["query"] for q in report["queries"]] == ["a dog", "a cat"]
    assert report["vector_source"] == "catalog" and report["collection_size"] == 12
    for q in report["queries"]:
        hits = json.loads(cli("search", q["query"], "--json", "-n", "12", env=indexed_env).stdout)
        assert [h["path"] for h in hits].index(str(image)) + 1 == q["rank"]
        assert hits[q["rank"] - 1]["cosine"] == pytest.approx(q["cosine"], abs=1e-5)  # the query encoded as search does
        assert set(q["temperature_scores"]) == {"10", "15", "20", "25", "30"}
        assert sum(q["distribution"]["histogram"]["counts"]) == 12
    human = cli("debug-scores", str(image), "-q", "a dog", "--temperature", "18", "--bins", "4",
                env=indexed_env).stdout
    assert "T=18" in human and "T=25" not in human and "<- image" in human
    assert f"{report['queries'][0]['rank']}/12" in human and "learned p" in human

    missing = cli("debug-scores", str(tmp_path / "nope.jpg"), "-q", "a dog", env=indexed_env, check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no such file" in missing.stderr
    assert missing.stdout == ""
    no_query = cli("debug-scores", str(image), env=indexed_env, check=False)
    assert no_query.returncode == 2 and "--query" in no_query.stderr
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"junk")
    bad = cli("debug-scores", str(junk), "-q", "a dog", env=indexed_env, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith(f"error: {junk}:")
