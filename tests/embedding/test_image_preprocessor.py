"""HFImagePreprocessor: the fast path (resize + rescale + normalise without the processor's per-call overhead) gives
the processor's own pixels, and is only taken where the processor does nothing else; input side; equality."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import pattern

from img_search.embedding.hf import HFImagePreprocessor, load_image_preprocessor


@pytest.mark.parametrize("family", ["siglip", "siglip2", "clip"])
def test_preprocessor_matches_the_checkpoint_processor(tiny_models: dict[str, Path], family: str) -> None:
    pre = load_image_preprocessor(str(tiny_models[family]))
    assert pre is not None
    images = [pattern(i, size) for i, size in enumerate([(96, 64), (640, 480), (33, 250), (224, 224)])]
    if family == "siglip":  # other modes go to the processor itself (the pipeline hands over RGB only)
        images += [images[0].convert("L"), images[1].convert("RGBA")]
    for image in images:
        got, want = pre(image), pre._slow(image)
        assert got.keys() == want.keys()
        for key in got:
            np.testing.assert_allclose(got[key], want[key], atol=1e-6)
            assert got[key].dtype == want[key].dtype
    proc = pre.image_processor
    simple = getattr(proc, "size", None) and getattr(proc.size, "get", None) and proc.size.get("height") \
        and not getattr(proc, "do_center_crop", False)
    assert (pre._fast is not None) == bool(simple)  # SigLIP: yes; CLIP (centre crop): no
    if family == "siglip":
        assert pre._fast is not None and pre.input_side == 32


def test_fast_path_is_refused_when_it_would_differ(tiny_siglip: Path) -> None:
    pre = load_image_preprocessor(str(tiny_siglip))
    assert pre is not None
    pre.image_processor.image_std = [0.25, 0.5, 0.5]  # a processor the probe catches if the plan ignored it
    twin = HFImagePreprocessor(pre.image_processor, pre.input_names)
    image = pattern(3, (120, 90))
    np.testing.assert_allclose(twin(image)["pixel_values"], twin._slow(image)["pixel_values"], atol=1e-6)
    broken = HFImagePreprocessor(pre.image_processor, pre.input_names)
    broken.FAST_PATH_TOLERANCE = -1.0  # nothing passes the probe: the processor runs
    broken(image)
    assert broken._fast is None


def test_preprocessor_pickles_and_compares_by_configuration(tiny_siglip: Path, siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    pre = load_image_preprocessor(str(tiny_siglip))
    assert pre is not None and pre == siglip_encoder.image_preprocessor()
    pre(pattern(1))
    clone = pickle.loads(pickle.dumps(pre))
    assert clone == pre
    np.testing.assert_array_equal(clone(pattern(2))["pixel_values"], pre(pattern(2))["pixel_values"])
