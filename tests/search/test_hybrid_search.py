"""Issue 9 search: filters inside the search, query terms, hybrid fusion with the text index, sort by date,
temperature and expansion — on a catalog with planted vectors and a stub encoder whose text vectors are known."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from img_search.catalog import Catalog, ImageRecord, OcrText, PhotoMetadata
from img_search.embedding.base import ModelInfo
from img_search.errors import InvalidInputError, NotFoundError
from img_search.search import collection as collection_mod
from img_search.search.collection import Collection
from img_search.search.filters import build_filter, haversine_m
from img_search.search.searcher import Searcher, SearchOptions
from img_search.settings import SearchSettings

DIM = 16
AXES = {"dog": 0, "cat": 1, "beach": 2, "people": 3, "puppy": 4, "bakery": 5, "sign": 6, "car": 7}
SCALE, BIAS = math.log(10.0), -1.0


def _axis(i: int) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[i] = 1.0
    return v


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


class StubEncoder:
    """Texts -> the sum of their known words' axes (unknown words: a fixed 'noise' axis), L2-normalised."""

    def __init__(self) -> None:
        self.info = ModelInfo("stub", "siglip", DIM, SCALE, BIAS, 64)
        self.device = "cpu"
        self.texts: list[str] = []

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        out = []
        for text in texts:
            v = np.zeros(DIM, np.float32)
            for word in text.lower().split():
                v += _axis(AXES.get(word, DIM - 1))
            out.append(_unit(v))
        return np.stack(out)

    def encode_images(self, images: list[object]) -> np.ndarray:
        raise AssertionError("no image is embedded in these tests")

    def image_preprocessor(self) -> object:
        raise AssertionError("no image is embedded in these tests")

    def encode_batch(self, batch: object) -> np.ndarray:
        raise AssertionError("no image is embedded in these tests")


def _rng_noise(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=DIM).astype(np.float32) * 0.05
    v[DIM - 1] = 0.0
    return v


def _searcher(index_dir: Path) -> tuple[Searcher, StubEncoder]:
    encoder = StubEncoder()
    collection = Collection.open(index_dir, "stub", SearchSettings())
    return Searcher(collection, encoder), encoder  # type: ignore[arg-type]


def _build(index_dir: Path, items: list[tuple[str, np.ndarray, dict]]) -> None:
    """items: (path, vector, extra ImageRecord fields)."""
    with Catalog.in_dir(index_dir) as cat:
        mid = cat.ensure_model("stub", family="siglip", dim=DIM, logit_scale=SCALE, logit_bias=BIAS)
        records = [ImageRecord(path, 10, 1_600_000_000 * 10**9, bytes([i % 256, i // 256]) * 8,
                               extra.pop("width", 800), extra.pop("height", 600), **extra)
                   for i, (path, _, extra) in enumerate(items)]
        cat.record(records, model_id=mid, vectors=np.stack([_unit(v) for _, v, _ in items]))


@pytest.fixture()
def cameras_dir(tmp_path: Path) -> Path:
    """300 images: 30 from a Pixel 7 (spread over the ranking), the rest from a Canon; dog-ness decreasing with i."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(300):
        v = _axis(AXES["dog"]) * (1.0 - i / 400) + _axis(AXES["cat"]) * (i / 400) + _rng_noise(rng)
        camera = ("Google", "Pixel 7") if i % 10 == 7 else ("Canon", "Canon EOS R5")
        meta = PhotoMetadata(taken_at=f"2023-{1 + i % 12:02d}-15T12:00:00", camera_make=camera[0],
                             camera_model=camera[1])
        items.append((f"/photos/{'a' if i < 150 else 'b'}/img{i:03d}.jpg", v, {"metadata": meta}))
    _build(tmp_path, items)
    return tmp_path


def _brute_force(searcher: Searcher, query: str, allowed: set[int], k: int) -> list[int]:
    q = searcher.encoder.encode_texts([query])[0]
    ids, vectors = searcher.collection.catalog().live_vectors(searcher.collection.model.id, DIM, sorted(allowed))
    order = np.argsort(-(vectors @ q), kind="stable")[:k]
    return [int(ids[j]) for j in order]


@pytest.mark.parametrize("exact_subset_max", [4096, 8], ids=["exact-subset", "widening-overfetch"])
def test_filter_returns_limit_matching_hits_in_true_order(cameras_dir: Path, exact_subset_max: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collection_mod, "EXACT_SUBSET_MAX", exact_subset_max)
    searcher, _ = _searcher(cameras_dir)
    options = SearchOptions(filter=build_filter(cameras=["pixel 7"]), hybrid="off")
    hits = searcher.search_text("dog", limit=10, options=options)
    assert len(hits) == 10
    pixel_ids = {r.image_id for r in searcher.collection.catalog().filter_rows() if r.camera == "Google Pixel 7"}
    assert len(pixel_ids) == 30 and {h.image_id for h in hits} <= pixel_ids
    assert [h.image_id for h in hits] == _brute_force(searcher, "dog", pixel_ids, 10)
    # asking for more than match returns exactly the matches
    assert len(searcher.search_text("dog", limit=1000, options=options)) == 30


def test_two_filters_and_folder(cameras_dir: Path) -> None:
    searcher, _ = _searcher(cameras_dir)
    flt = build_filter(after="2023-05-01", before="2023-09-01", folders=["/photos/b"])
    hits = searcher.search_text("dog", limit=1000, options=SearchOptions(filter=flt))
    rows = {r.image_id: r for r in searcher.collection.catalog().filter_rows()}
    expected = {i for i, r in rows.items() if r.path.startswith("/photos/b/") and
                "2023-05-01" <= (r.taken_at or "") < "2023-09-01"}
    assert expected and {h.image_id for h in hits} == expected
    assert not searcher.search_text("dog", options=SearchOptions(filter=build_filter(folders=["/photos/c"])))
    # "/photos/a" must not match "/photos/ab..." style siblings: every hit is inside the folder
    hits_a = searcher.search_text("dog", limit=1000, options=SearchOptions(filter=build_filter(folders=["/photos/a"])))
    assert len(hits_a) == 150 and all(h.path.startswith("/photos/a/") for h in hits_a)


def test_near_tag_text_and_size_filters(tmp_path: Path) -> None:
    paris, london = (48.8566, 2.3522), (51.5074, -0.1278)
    items = [
        ("/p/paris.jpg", _axis(0), {"metadata": PhotoMetadata(latitude=paris[0], longitude=paris[1])}),
        ("/p/versailles.jpg", _axis(0), {"metadata": PhotoMetadata(latitude=48.8049, longitude=2.1204)}),
        ("/p/london.jpg", _axis(0), {"metadata": PhotoMetadata(latitude=london[0], longitude=london[1])}),
        ("/p/nowhere.jpg", _axis(0), {}),
        ("/p/sign.jpg", _axis(1), {"ocr": OcrText("BAKERY", 0.9, "t"), "width": 4000, "height": 3000}),
    ]
    _build(tmp_path, items)
    assert 340_000 < float(haversine_m(paris[0], paris[1], *london)) < 345_000  # Paris-London ~343.5 km
    searcher, _ = _searcher(tmp_path)
    near = lambda spec: {Path(h.path).name for h in searcher.search_text(  # noqa: E731
        "dog", limit=10, options=SearchOptions(filter=build_filter(near=spec), hybrid="off"))}
    assert near("48.85,2.35,5km") == {"paris.jpg"}
    assert near("48.85,2.35,25km") == {"paris.jpg", "versailles.jpg"}
    assert near("48.85,2.35,400km") == {"paris.jpg", "versailles.jpg", "london.jpg"}
    with Catalog.in_dir(tmp_path) as cat:
        cat.add_tags(["/p/london.jpg"], ["Holiday"])
    searcher, _ = _searcher(tmp_path)
    tagged = searcher.search_text("dog", options=SearchOptions(filter=build_filter(tags=["holiday"])))
    assert [Path(h.path).name for h in tagged] == ["london.jpg"]
    with_text = searcher.search_text("dog", options=SearchOptions(filter=build_filter(has_text=True)))
    assert [Path(h.path).name for h in with_text] == ["sign.jpg"]
    big = searcher.search_text("dog", options=SearchOptions(filter=build_filter(min_size="1920x1080")))
    assert [Path(h.path).name for h in big] == ["sign.jpg"]
    assert len(searcher.search_text("dog", options=SearchOptions(filter=build_filter(has_text=False)))) == 4


@pytest.mark.parametrize("kwargs", [
    {"after": "May 1st"}, {"near": "48.85,2.35"}, {"near": "95,2.35,1km"}, {"near": "1,2,0km"},
    {"min_size": "big"}, {"after": "2023-05-02", "before": "2023-05-01"}, {"after": "2023-05-01T00:00+02:00"},
])
def test_bad_filter_values_are_clear_errors(kwargs: dict) -> None:
    with pytest.raises(InvalidInputError):
        build_filter(**kwargs)


@pytest.mark.parametrize("kwargs", [{"hybrid": "both"}, {"weight": 1.5}, {"sort": "name"}, {"temperature": 0},
                                    {"temperature": float("nan")}, {"expand_merge": "mean"}])
def test_bad_options_are_clear_errors(kwargs: dict) -> None:
    with pytest.raises(InvalidInputError):
        SearchOptions(**kwargs)


@pytest.fixture()
def beach_dir(tmp_path: Path) -> Path:
    b, p, d = _axis(AXES["beach"]), _axis(AXES["people"]), _axis(AXES["dog"])
    items = [
        ("/p/beach_crowd.jpg", b + 0.3 * p, {}),  # cosine to "beach" 0.958
        ("/p/beach_empty.jpg", b + 0.4 * _axis(AXES["car"]), {}),  # 0.928
        ("/p/beach_dog.jpg", b + d, {}),  # 0.707
        ("/p/street_people.jpg", p, {}),
        ("/p/bakery_front.jpg", _axis(AXES["car"]), {"ocr": OcrText("BOULANGERIE\nBAKERY", 0.95, "t")}),
        ("/p/dog.jpg", d, {}),
        ("/p/puppy.jpg", _axis(AXES["puppy"]), {}),
    ]
    _build(tmp_path, items)
    return tmp_path


def _names(hits: list) -> list[str]:
    return [Path(h.path).name for h in hits]


def test_not_term_reorders_but_never_empties(beach_dir: Path) -> None:
    searcher, encoder = _searcher(beach_dir)
    plain = _names(searcher.search_text("beach", limit=3, options=SearchOptions(hybrid="off")))
    assert plain[0] == "beach_crowd.jpg"
    negated = searcher.search_text("beach -people", limit=3, options=SearchOptions(hybrid="off"))
    assert _names(negated)[0] != "beach_crowd.jpg" and len(negated) == 3
    assert _names(negated)[0] == "beach_empty.jpg"
    # the probability shown is the model's for the words alone: sigmoid(10 * cos(image, "beach") - 1)
    empty = next(h for h in negated if h.path.endswith("beach_empty.jpg"))
    cos_words = 1 / math.sqrt(1 + 0.4**2)
    assert empty.probability == pytest.approx(1 / (1 + math.exp(-(10 * cos_words - 1))), rel=1e-5)
    assert empty.cosine is not None and empty.cosine < cos_words  # ranked by the cosine to "beach - 0.5 people"
    with pytest.raises(InvalidInputError, match="only NOT-terms"):
        searcher.search_text("-people")
    with pytest.raises(NotFoundError):
        searcher.search_text("beach +/no/such/photo.jpg")
    assert "people" in encoder.texts


def test_plus_image_term_uses_the_stored_vector(beach_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    searcher, _ = _searcher(beach_dir)
    # an image term naming a catalogued file: its stored vector is found by content, so write a file whose bytes hash
    # like nothing -> it would need the encoder; instead point at a catalogued path through the catalog's own vector
    folder = tmp_path_factory.mktemp("q")
    query_image = folder / "dog.png"
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 100, 50)).save(query_image)
    with Catalog.in_dir(beach_dir) as cat:  # make the file's content known: give it the dog image's vector
        from img_search.data.images import content_hash

        h = content_hash(query_image.read_bytes())
        mid = cat.get_model("stub").id  # type: ignore[union-attr]
        cat.record([ImageRecord(str(query_image), 1, 1, h, 8, 8)], model_id=mid, vectors=_unit(_axis(0))[None])
    searcher, _ = _searcher(beach_dir)
    hits = searcher.search_text(f"beach +{query_image}", limit=2, options=SearchOptions(hybrid="off"))
    assert _names(hits)[0] == "beach_dog.jpg"  # beach AND like the dog picture
    assert str(query_image) not in [h.path for h in hits]  # the example image itself is left out


def test_hybrid_rrf_finds_text_in_images_that_the_embedding_misses(beach_dir: Path) -> None:
    searcher, _ = _searcher(beach_dir)
    off = searcher.search_text("BAKERY", limit=3, options=SearchOptions(hybrid="off"))
    assert "bakery_front.jpg" not in _names(off)  # its vector is about cars
    rrf = searcher.search_text("BAKERY", limit=3, options=SearchOptions(hybrid="rrf"))
    assert _names(rrf)[0] == "bakery_front.jpg" and rrf[0].matched in ("text", "both")
    assert rrf[0].text_score is not None and rrf[0].text_score > 0
    # auto: the collection holds OCR text, so rrf
    auto = searcher.search_text("BAKERY", limit=3)
    assert _names(auto)[0] == "bakery_front.jpg"
    # the threshold applies to the calibrated probability; the text match has none and stays
    kept = searcher.search_text("BAKERY", limit=3, threshold=0.99, options=SearchOptions(hybrid="rrf"))
    assert _names(kept) == ["bakery_front.jpg"]


def test_weighted_order_moves_with_w(beach_dir: Path) -> None:
    searcher, _ = _searcher(beach_dir)
    top = lambda w: _names(searcher.search_text(  # noqa: E731
        "bakery beach", limit=7, options=SearchOptions(hybrid="weighted", weight=w)))[0]
    assert top(1.0) in {"beach_crowd.jpg", "beach_empty.jpg", "beach_dog.jpg"}  # embedding only
    assert top(0.0) == "bakery_front.jpg"  # text only
    scores = [searcher.search_text("bakery beach", limit=7, options=SearchOptions(hybrid="weighted", weight=w))
              for w in (0.2, 0.8)]
    assert _names(scores[0]) != _names(scores[1])


def test_expansion_finds_related_terms(beach_dir: Path) -> None:
    searcher, encoder = _searcher(beach_dir)
    plain = _names(searcher.search_text("dog", limit=2, options=SearchOptions(hybrid="off")))
    assert "puppy.jpg" not in plain
    expanded = searcher.search_text("dog", limit=2, options=SearchOptions(hybrid="off", expand=True))
    assert set(_names(expanded)) == {"dog.jpg", "puppy.jpg"}
    assert "puppy" in encoder.texts  # the shipped synonyms expand dog -> puppy, ...


def test_temperature_overrides_the_learned_calibration(beach_dir: Path) -> None:
    searcher, _ = _searcher(beach_dir)
    hit = searcher.search_text("dog", limit=1, options=SearchOptions(hybrid="off", temperature=25))[0]
    assert hit.probability == pytest.approx(1 / (1 + math.exp(-25 * hit.cosine)), rel=1e-6)
    learned = searcher.search_text("dog", limit=1, options=SearchOptions(hybrid="off"))[0]
    assert learned.probability == pytest.approx(1 / (1 + math.exp(-(10 * learned.cosine - 1))), rel=1e-6)


def test_sort_by_date_falls_back_to_mtime_and_says_so(tmp_path: Path) -> None:
    items = [
        ("/p/old.jpg", _axis(0), {"metadata": PhotoMetadata(taken_at="2019-01-01T10:00:00")}),
        ("/p/new.jpg", 0.5 * _axis(0) + _axis(1), {"metadata": PhotoMetadata(taken_at="2024-06-01T10:00:00")}),
        ("/p/undated.jpg", _axis(0) + 0.1 * _axis(1), {}),  # mtime 2020-09-13 (1.6e9 s)
    ]
    _build(tmp_path, items)
    searcher, _ = _searcher(tmp_path)
    hits = searcher.search_text("dog", options=SearchOptions(sort="date", hybrid="off"))
    assert _names(hits) == ["new.jpg", "undated.jpg", "old.jpg"]
    assert [h.date_source for h in hits] == ["taken", "modified", "taken"]
    assert hits[0].date == "2024-06-01T10:00:00"
    assert hits[1].to_dict()["date_source"] == "modified"
    # a date filter sees the mtime fallback too
    flt = build_filter(after="2020-01-01", before="2021-01-01")
    assert _names(searcher.search_text("dog", options=SearchOptions(filter=flt))) == ["undated.jpg"]
    assert os.sep == "/"


def test_filtered_exact_subset_reads_the_saved_matrix_under_the_delta(tmp_path: Path) -> None:
    """A saved generation keeps its vectors (vectors.npy); a filtered search scores a subset from it, overlaid by what
    was committed since (added, removed, re-embedded): the same hits as brute force over the catalog's vectors."""
    from img_search.search.store import VectorStore

    rng = np.random.default_rng(3)
    items = [(f"/p/{'a' if i % 2 else 'b'}/{i}.jpg", rng.normal(size=DIM).astype(np.float32), {}) for i in range(60)]
    _build(tmp_path, items)
    with Catalog.in_dir(tmp_path) as cat:
        model = cat.get_model("stub")
        assert model is not None
        VectorStore(tmp_path, cat, model, SearchSettings()).sync()
        generations = list((tmp_path / "vectors").glob("model-*/*/vectors.npy"))
        assert len(generations) == 1 and np.load(generations[0]).shape == (60, DIM)
        cat.mark_deleted(["/p/a/1.jpg", "/p/b/2.jpg"])
        extra = [ImageRecord(f"/p/a/new{i}.jpg", 1, 1, bytes([200 + i]) * 16, 8, 8) for i in range(5)]
        cat.record(extra, model_id=model.id, vectors=np.stack([_unit(rng.normal(size=DIM).astype(np.float32))
                                                               for _ in extra]))
        cat.upsert_vectors(model.id, [bytes([3, 0]) * 8], _unit(rng.normal(size=DIM).astype(np.float32))[None])
    searcher, _ = _searcher(tmp_path)
    assert searcher.collection.generation is not None  # the saved generation, caught up in memory
    assert searcher.collection._view.vectors is not None  # subsets are scored from its vectors.npy
    flt = build_filter(folders=["/p/a"])
    allowed = set(searcher.collection.allowed_ids(flt).tolist())
    for query in ("dog", "cat beach", "car sign"):
        hits = searcher.search_text(query, limit=8, options=SearchOptions(filter=flt, hybrid="off"))
        assert [h.image_id for h in hits] == _brute_force(searcher, query, allowed, 8)
        assert all(h.path.startswith("/p/a/") and not h.path.endswith("/1.jpg") for h in hits)
