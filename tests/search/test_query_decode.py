"""Image queries that must be embedded (`similar` on a file not indexed, uploads) decode like the collection's
vectors were decoded: at a reduced JPEG scale by default, in full for a collection indexed with --full-decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import make_jpeg

from img_search.catalog import Catalog
from img_search.data.images import decode_image, read_file
from img_search.pipeline.runner import IndexOptions, index_folders
from img_search.search.searcher import open_searcher
from img_search.settings import load_settings


@pytest.mark.parametrize("full_decode", [False, True])
def test_image_queries_decode_like_the_collection(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                                  siglip_encoder, full_decode: bool) -> None:  # type: ignore[no-untyped-def]
    idx = tmp_path / "idx"
    index_folders([str(photo_dir)], idx, IndexOptions(model=str(tiny_siglip), workers=0, full_decode=full_decode),
                  encoder_factory=lambda: siglip_encoder)
    query = make_jpeg(tmp_path / "query" / "q.jpg", seed=77, size=(160, 120))  # not indexed: embedded now
    data = read_file(str(query))
    side = siglip_encoder.image_preprocessor().input_side
    reduced = siglip_encoder.encode_images([decode_image(data, min_side=side)])[0]
    full = siglip_encoder.encode_images([decode_image(data)])[0]
    expected, other = (full, reduced) if full_decode else (reduced, full)
    with Catalog.in_dir(idx) as cat:
        model_id = cat.get_model(str(tiny_siglip)).id
        _, vecs = cat.load_vectors(model_id, 32)
    top = np.sort(vecs @ expected)[::-1][:5]
    assert np.abs(np.sort(vecs @ other)[::-1][:5] - top).max() > 1e-4  # the two decodes are told apart

    searcher = open_searcher(load_settings(idx), encoder=siglip_encoder)
    for hits in (searcher.search_image(str(query), limit=5), searcher.search_bytes(data, limit=5)):
        np.testing.assert_allclose([h.cosine for h in hits], top, atol=1e-5)
