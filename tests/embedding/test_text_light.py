"""The light text-query path: tokenizers identical to transformers, vectors equal to the torch path, no torch
import, fallback to torch when nothing is exported yet, and the cache's reuse, invalidation and atomicity."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import pattern

from img_search.embedding import load_encoder, load_text_encoder, prepare_runtime
from img_search.embedding.hf import HFEncoder
from img_search.embedding.onnx_export import RuntimeCache, default_cache_dir, export_tower
from img_search.embedding.precision import TowerChoice
from img_search.embedding.text_light import TOKENIZER_PROBES, LightTextEncoder, load_light_tokenizer
from img_search.errors import UnavailableError

FAMILIES = ("siglip", "siglip2", "clip")
TEXTS = ["a dog on the beach", "A Red Car!", "two cats, in the snow; at night?", "x", "Café 東京 🐶",
         "a very long caption " * 20]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    """Seeded strings mixing words, case, punctuation, whitespace runs, non-ASCII and special-token spellings."""
    rng = random.Random(seed)
    pool = ["dog", "Cat", "RED", "a", "the", "on", "beach", "Zürich", "naïve", "東京", "🐶", "---", "!!", "?",
            "(x)", "3.14", "e.g.", "it's", "</s>", "<unk>", "<pad>", "▁", "  ", "\t", "\n", "“q”", "é", "ß"]
    return ["".join(rng.choice(pool) + rng.choice(["", " ", "  "]) for _ in range(rng.randint(0, 30)))
            for _ in range(n)]


@pytest.fixture(scope="module")
def prepared(tiny_models: dict[str, Path], runtime_cache: Path) -> dict[str, HFEncoder]:
    """prepare_runtime (what `index` calls) once per family, with auto precision."""
    out = {}
    for family in FAMILIES:
        enc = load_encoder(str(tiny_models[family]), device="cpu", precision="auto", cache_dir=runtime_cache)
        prepare_runtime(enc, cache_dir=runtime_cache)
        out[family] = enc
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_light_tokenizer_is_token_for_token_transformers(prepared: dict[str, HFEncoder], family: str) -> None:
    enc = prepared[family]
    cache = enc.cache()
    assert cache is not None
    manifest = cache.manifest()
    assert manifest is not None and manifest["tokenizer"] is not None
    light = load_light_tokenizer(cache.tokenizer_dir, manifest["tokenizer"])
    texts = list(TOKENIZER_PROBES) + _random_texts(300, seed=hash(family) % 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = enc.tokenize(texts)
    got = light(texts)
    assert set(got) == set(ref)
    for key, value in ref.items():
        mismatched = [texts[i] for i in range(len(texts)) if not np.array_equal(value[i], got[key][i])]
        assert not mismatched, f"{key} differs on {mismatched[:3]}"
    assert got["input_ids"].shape == (len(texts), enc.text_max_length)


@pytest.mark.parametrize("family", FAMILIES)
def test_light_path_equals_torch_path(prepared: dict[str, HFEncoder], tiny_models: dict[str, Path],
                                      runtime_cache: Path, family: str) -> None:
    torch_enc = load_encoder(str(tiny_models[family]), device="cpu")
    ref = torch_enc.encode_texts(TEXTS)
    light = load_text_encoder(str(tiny_models[family]), "fp32", cache_dir=runtime_cache)
    assert isinstance(light, LightTextEncoder) and light.text_choice == TowerChoice("text", "fp32", "onnxruntime")
    assert light.info == torch_enc.info
    got = light.encode_texts(TEXTS)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.sum(got * ref, axis=1).min() >= 0.9999
    auto = load_text_encoder(str(tiny_models[family]), cache_dir=runtime_cache)
    assert isinstance(auto, LightTextEncoder)
    assert auto.text_choice == prepared[family].session("text").choice
    assert np.sum(auto.encode_texts(TEXTS) * ref, axis=1).min() >= 0.995  # int8 on a tiny model (test_runtimes)
    assert auto.encode_texts([]).shape == (0, ref.shape[1])


def test_light_path_imports_neither_torch_nor_transformers(prepared: dict[str, HFEncoder], tiny_siglip: Path,
                                                           runtime_cache: Path) -> None:
    code = (
        "import sys, json\n"
        "from img_search.embedding import load_text_encoder\n"
        f"enc = load_text_encoder({str(tiny_siglip)!r}, cache_dir={str(runtime_cache)!r})\n"
        "vec = enc.encode_texts(['a dog'])\n"
        "print(json.dumps({'cls': type(enc).__name__, 'torch': 'torch' in sys.modules,\n"
        "                  'transformers': 'transformers' in sys.modules, 'vec': vec[0].tolist()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {**out, "cls": "LightTextEncoder", "torch": False, "transformers": False}
    np.testing.assert_allclose(out["vec"], prepared["siglip"].encode_texts(["a dog"])[0], atol=1e-5)


def test_light_encoder_answers_image_queries_through_torch(prepared: dict[str, HFEncoder], tiny_siglip: Path,
                                                           runtime_cache: Path) -> None:
    light = load_text_encoder(str(tiny_siglip), cache_dir=runtime_cache)
    assert isinstance(light, LightTextEncoder)
    images = [pattern(i) for i in range(3)]
    got = light.encode_images(images)
    ref = prepared["siglip"].encode_images(images)  # same auto image choice, read from the same cache
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_falls_back_to_torch_when_nothing_is_exported(tiny_siglip: Path, tmp_path: Path) -> None:
    enc = load_text_encoder(str(tiny_siglip), cache_dir=tmp_path / "empty-cache")
    assert isinstance(enc, HFEncoder)
    assert enc.session("text").choice == TowerChoice("text", "fp32", "torch")
    assert not (tmp_path / "empty-cache").exists()  # a search never exports


def test_auto_light_path_needs_a_passed_parity(prepared: dict[str, HFEncoder], tiny_siglip: Path,
                                               runtime_cache: Path) -> None:
    cache = prepared["siglip"].cache()
    assert cache is not None
    choice = prepared["siglip"].session("text").choice
    saved = cache.read_parity(choice)
    assert saved is not None
    try:
        cache.write_parity(choice, {**{k: v for k, v in saved.items() if k != "format"}, "passed": False})
        enc = load_text_encoder(str(tiny_siglip), cache_dir=runtime_cache)
        assert not (isinstance(enc, LightTextEncoder) and enc.text_choice == choice)
    finally:
        cache.write_parity(choice, {k: v for k, v in saved.items() if k != "format"})


# -- the cache ------------------------------------------------------------------------------------------------------
def test_cache_is_reused_and_keyed_by_the_checkpoint(tiny_models: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_models["clip"], model)
    before = sorted(p.name for p in model.iterdir())
    enc = load_encoder(str(model), device="cpu", precision="int8", runtime="onnxruntime", cache_dir=tmp_path / "c")
    enc.session("text")
    cache = enc.cache()
    assert cache is not None and cache.has_graph("text", "onnx-int8") and cache.has_graph("text", "onnx-fp32")
    assert str(cache.dir).startswith(str(tmp_path / "c" / "runtimes"))
    assert sorted(p.name for p in model.iterdir()) == before  # nothing written into the model folder
    graph_mtime = cache.graph_path("text", "onnx-int8").stat().st_mtime_ns

    import img_search.embedding.onnx_export as onnx_export

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "_export_fp32", no_export)
    monkeypatch.setattr(onnx_export, "_quantize", no_export)
    again = load_encoder(str(model), device="cpu", precision="int8", runtime="onnxruntime", cache_dir=tmp_path / "c")
    again.session("text")  # reused: no export
    assert cache.graph_path("text", "onnx-int8").stat().st_mtime_ns == graph_mtime
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # the checkpoint changed
    changed = RuntimeCache(str(model), tmp_path / "c")
    assert changed.dir != cache.dir and not changed.has_graph("text", "onnx-int8")
    with pytest.raises(AssertionError, match="exported again"):
        load_encoder(str(model), device="cpu", precision="int8", runtime="onnxruntime",
                     cache_dir=tmp_path / "c").session("text")


def test_publish_is_atomic_and_first_writer_wins(tiny_siglip: Path, tmp_path: Path) -> None:
    cache = RuntimeCache(str(tiny_siglip), tmp_path)

    def failing(tmp: Path) -> None:
        (tmp / "model.onnx").write_bytes(b"half")
        raise RuntimeError("killed mid-export")

    with pytest.raises(RuntimeError):
        cache.publish("text-onnx-fp32", failing)
    assert not cache.has_graph("text", "onnx-fp32")
    assert [p.name for p in cache.dir.iterdir()] == []  # no partial folder, no temporary left behind

    def racing(tmp: Path) -> None:  # another process publishes while this one is still building
        (tmp / "model.onnx").write_bytes(b"mine")
        (cache.dir / "text-onnx-fp32").mkdir()
        (cache.dir / "text-onnx-fp32" / "model.onnx").write_bytes(b"theirs")

    cache.publish("text-onnx-fp32", racing)
    assert cache.graph_path("text", "onnx-fp32").read_bytes() == b"theirs"
    assert sorted(p.name for p in cache.dir.iterdir()) == ["text-onnx-fp32"]


def test_unwritable_cache_is_unavailable_and_auto_falls_back(tiny_siglip: Path, tmp_path: Path,
                                                             read_only_mount) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "ro-cache"
    folder.mkdir()
    ro = read_only_mount(folder)
    enc = load_encoder(str(tiny_siglip), device="cpu", precision="int8", runtime="onnxruntime", cache_dir=ro)
    cache = enc.cache()
    assert cache is not None
    with pytest.raises(UnavailableError, match="cannot be written"):
        export_tower(enc, "text", "onnx-fp32", cache)
    auto = load_encoder(str(tiny_siglip), device="cpu", precision="auto", cache_dir=ro)
    assert auto.session("text").choice.runtime == "torch"  # no graph possible: torch, parity still checked
    assert auto.parity["text"].passed


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "img-search"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "img-search"
