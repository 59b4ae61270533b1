"""Fine-tuning a tiny random SigLIP on a planted set (img_search.training.finetune, scripts/finetune_siglip.py).

The planted set: 40 Pillow drawings, 8 colours x 5 shapes on grey, captioned "a <colour> <shape>", under neutral
file names (so nothing but the pixels and the caption links them). A quarter is held out: those colour-shape
combinations are never seen in training, so held-out recall@1 only rises if the towers learn colours and shapes.
Everything is seeded and runs single-threaded, so the figures are the same on every run of one torch build.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from img_search.errors import ConflictError, InvalidInputError, NotFoundError
from img_search.training.finetune import (
    EpochResult,
    FinetuneOptions,
    FinetuneReport,
    TrainingDataError,
    evaluate,
    finetune,
    pair_dataset,
    read_pairs,
    sigmoid_loss,
    split_pairs,
)

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20),
           "orange": (250, 140, 0), "purple": (140, 40, 170), "black": (10, 10, 10), "white": (250, 250, 250)}
SHAPES = ("circle", "square", "triangle", "cross", "bar")
# 30 epochs of 3 steps (30 training pairs, batch 10): ~5 s single-threaded; seeds 0-3 all end with held-out
# recall@1 between 0.6 and 1.0 in both directions from 0.0-0.2
OPTIONS = dict(num_epochs=30, batch_size=10, lr=1e-3, val_fraction=0.25, seed=0, device="cpu")
# appended after the 40 good lines: (line number, what the report must say)
BAD_LINES = [
    ('{"image": "missing.png", "caption": "a ghost"}', 41, "missing.png"),
    ("this is not json", 42, "not valid JSON"),
    ("", 43, None),  # blank: ignored, not reported
    ('{"image": "p00.png"}', 44, "'caption'"),
    ('{"image": "truncated.png", "caption": "a broken picture"}', 45, "truncated.png"),
    ('{"image": "p01.png", "caption": "   "}', 46, "caption"),
]
REPO = Path(__file__).resolve().parents[2]


def draw(shape: str, rgb: tuple[int, int, int], size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size), (128, 128, 128))
    d = ImageDraw.Draw(img)
    a, b = size * 0.15, size * 0.85
    if shape == "circle":
        d.ellipse([a, a, b, b], fill=rgb)
    elif shape == "square":
        d.rectangle([a, a, b, b], fill=rgb)
    elif shape == "triangle":
        d.polygon([(size / 2, a), (a, b), (b, b)], fill=rgb)
    elif shape == "cross":
        d.rectangle([size * 0.4, a, size * 0.6, b], fill=rgb)
        d.rectangle([a, size * 0.4, b, size * 0.6], fill=rgb)
    else:  # bar
        d.rectangle([a, size * 0.4, b, size * 0.6], fill=rgb)
    return img


@dataclass
class Planted:
    folder: Path  # the images (and nothing else)
    pairs: Path  # pairs.jsonl, outside the image folder, with relative paths into it
    captions: dict[str, str]  # file name -> caption


def make_planted(root: Path) -> Planted:
    folder = root / "images"
    folder.mkdir(parents=True)
    lines, captions = [], {}
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        name = f"p{i:02d}.png"
        draw(shape, COLOURS[colour]).save(folder / name)
        captions[name] = f"a {colour} {shape}"
        lines.append(json.dumps({"image": f"images/{name}", "caption": captions[name]}))
    broken = root / "truncated.png"
    data = (folder / "p00.png").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    lines += [text.replace('"p0', '"images/p0') for text, _, _ in BAD_LINES]
    pairs = root / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Planted(folder=folder, pairs=pairs, captions=captions)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return make_planted(tmp_path_factory.mktemp("planted"))


@pytest.fixture()
def one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Trained:
    report: FinetuneReport
    out: Path
    events: list[Any]


@pytest.fixture(scope="module")
def trained(planted: Planted, tiny_siglip: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("finetuned") / "model"
        events: list[Any] = []
        report = finetune(planted.pairs, out, FinetuneOptions(model=str(tiny_siglip), **OPTIONS),  # type: ignore[arg-type]
                          on_baseline=lambda r: events.append(("baseline", r.before)), on_epoch=events.append)
    finally:
        torch.set_num_threads(threads)
    yield Trained(report=report, out=out, events=events)


# -- the pairs file ------------------------------------------------------------------------------------------------
def test_bad_lines_are_reported_with_line_numbers_and_skipped(planted: Planted,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="img_search.training.finetune"):
        pair_set = read_pairs(planted.pairs)
    assert len(pair_set.pairs) == 40 and [p.line for p in pair_set.pairs] == list(range(1, 41))
    assert pair_set.pairs[0].image == planted.folder / "p00.png"  # relative to the JSONL's folder
    expected = [(line, text) for _, line, text in BAD_LINES if text is not None]
    assert [p.line for p in pair_set.problems] == [line for line, _ in expected]
    for problem, (line, text) in zip(pair_set.problems, expected, strict=True):
        assert text in problem.reason, problem
        assert f"line {line}:" in caplog.text
    assert "line 43" not in caplog.text  # a blank line is no problem


def test_empty_and_invalid_files_are_clear_errors(tmp_path: Path, planted: Planted) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(TrainingDataError, match="is empty"):
        read_pairs(empty)
    with pytest.raises(NotFoundError, match="does not exist"):
        read_pairs(tmp_path / "nope.jsonl")
    document = tmp_path / "pairs.json"
    document.write_text(json.dumps([{"image": "images/p00.png", "caption": "a red circle"}] * 2, indent=2))
    with pytest.raises(TrainingDataError, match="one JSON array over several lines, not JSON Lines"):
        read_pairs(document)
    all_bad = tmp_path / "bad.jsonl"
    all_bad.write_text('{"image": "x.png", "caption": "x"}\n[1, 2]\n')
    with pytest.raises(TrainingDataError, match=r"no usable pair .*line 1: image"):
        read_pairs(all_bad)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TrainingDataError, match="not UTF-8"):
        read_pairs(binary)


def test_split_is_deterministic_by_seed(planted: Planted) -> None:
    pair_set = read_pairs(planted.pairs, check_images=False)
    assert len(pair_set.pairs) == 42  # unchecked: the lines naming a missing and a damaged image are kept
    pairs = pair_set.pairs[:40]
    train, held = split_pairs(pairs, 0.25, seed=0)
    assert len(held) == 10 and len(train) == 30 and not {p.line for p in train} & {p.line for p in held}
    assert split_pairs(pairs, 0.25, seed=0) == (train, held)
    assert split_pairs(pairs, 0.25, seed=1)[1] != held
    assert [p.line for p in held] == sorted(p.line for p in held)  # file order kept
    assert split_pairs(pairs, 0.0, seed=0) == (list(pairs), [])
    assert len(split_pairs(pairs[:5], 0.01, seed=0)[1]) == 1  # a positive fraction holds out at least one
    with pytest.raises(TrainingDataError, match="at least 2 pairs"):
        split_pairs(pairs[:2], 0.5, seed=0)
    with pytest.raises(InvalidInputError):
        split_pairs(pairs, 1.0, seed=0)


# -- the loss ------------------------------------------------------------------------------------------------------
def test_sigmoid_loss_is_the_papers_and_transformers_loss(tiny_siglip: Path) -> None:
    import torch
    from transformers import AutoModel

    gen = torch.Generator().manual_seed(0)
    img, txt = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    scale, bias = torch.tensor([1.7]), torch.tensor([-3.0])
    got = float(sigmoid_loss(img, txt, scale, bias))
    xi = img / img.norm(dim=1, keepdim=True)
    yj = txt / txt.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(5):
        for j in range(5):
            z = math.exp(1.7) * float(xi[i] @ yj[j]) - 3.0
            total += -math.log(1 / (1 + math.exp(-(1 if i == j else -1) * z)))
    assert got == pytest.approx(total / 5, rel=1e-5)

    model = AutoModel.from_pretrained(str(tiny_siglip)).eval()
    input_ids = torch.randint(3, 200, (4, 16), generator=gen)
    pixels = torch.randn(4, 3, 32, 32, generator=gen)
    with torch.no_grad():
        reference = float(model(input_ids=input_ids, pixel_values=pixels, return_loss=True).loss)
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(input_ids=input_ids)
        image = getattr(image, "pooler_output", image)
        text = getattr(text, "pooler_output", text)
        ours = float(sigmoid_loss(image, text, model.logit_scale, model.logit_bias))
    assert ours == pytest.approx(reference, rel=1e-5)
    with pytest.raises(InvalidInputError):
        sigmoid_loss(img, txt[:3], scale, bias)


# -- a run -------------------------------------------------------------------------------------------------------
def test_finetuning_lowers_the_loss_and_raises_held_out_recall(trained: Trained) -> None:
    report = trained.report
    assert report.n_train == 30 and report.n_held_out == 10 and len(report.problems) == 5
    assert [p.split(":")[0] for p in report.problems] == ["line 41", "line 42", "line 44", "line 45", "line 46"]
    # the baseline comes first, then one event per epoch
    assert trained.events[0] == ("baseline", report.before)
    epochs = trained.events[1:]
    assert [e.epoch for e in epochs] == list(range(1, 31)) and all(isinstance(e, EpochResult) for e in epochs)
    assert all(e.steps == 3 for e in epochs)  # 30 pairs in batches of 10
    # training loss: the last epochs far below the first
    first, last = epochs[0].train_loss, float(np.mean([e.train_loss for e in epochs[-3:]]))
    assert last < 0.3 * first, (first, last)
    assert report.before_loss is not None and report.after_loss is not None
    assert report.after_loss < 0.5 * report.before_loss
    # held-out recall@1 on colour-shape combinations never trained on
    before, after = report.before, report.after
    assert before is not None and after is not None and before.n == after.n == 10
    assert after.text_to_image > before.text_to_image and after.image_to_text > before.image_to_text
    gain = (after.text_to_image + after.image_to_text - before.text_to_image - before.image_to_text) / 2
    assert gain >= 0.3, (before, after)
    # the learned calibration moved with the towers
    assert abs(epochs[-1].logit_scale - report.logit_scale_before) > 1e-3
    assert abs(epochs[-1].logit_bias - report.logit_bias_before) > 1e-3
    saved = json.loads((trained.out / "finetune.json").read_text())
    assert saved["after"] == {"text_to_image": after.text_to_image, "image_to_text": after.image_to_text, "n": 10}


def test_saved_checkpoint_loads_offline_with_its_trained_calibration(trained: Trained, tiny_siglip: Path,
                                                                     planted: Planted) -> None:
    from img_search.embedding import load_encoder

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    tuned = load_encoder(str(trained.out), device="cpu")
    base = load_encoder(str(tiny_siglip), device="cpu")
    last = trained.report.epochs[-1]
    assert tuned.info.family == "siglip" and tuned.info.dim == base.info.dim
    assert tuned.info.logit_scale == pytest.approx(last.logit_scale, abs=1e-6)
    assert tuned.info.logit_bias == pytest.approx(last.logit_bias, abs=1e-6)
    assert tuned.info.logit_scale != pytest.approx(base.info.logit_scale, abs=1e-3)
    # the inference code path (the encoder's own tokenizer padding and image processor) sees what training learnt:
    # the captions find their own pictures among all 40, which the random model cannot do
    names = sorted(planted.captions)
    images = [Image.open(planted.folder / n).convert("RGB") for n in names]
    captions = [planted.captions[n] for n in names]

    def recall(encoder: Any) -> float:
        sims = encoder.encode_texts(captions) @ encoder.encode_images(images).T
        return float((sims.argmax(axis=1) == np.arange(len(names))).mean())

    tuned_recall, base_recall = recall(tuned), recall(base)
    assert tuned_recall >= 0.5 and base_recall <= 0.1, (tuned_recall, base_recall)
    # and training's own inputs (pair_dataset, evaluate) give the same figure: one tokenization, one preprocessing
    from img_search.embedding.hf import HFEncoder

    assert isinstance(tuned, HFEncoder)
    pairs = read_pairs(planted.pairs).pairs
    assert [p.image.name for p in pairs] == names
    _, train_path = evaluate(tuned.model, pair_dataset(tuned, pairs), batch_size=40, device="cpu")
    assert train_path.text_to_image == pytest.approx(tuned_recall)


def test_index_and_search_with_the_finetuned_dir(trained: Trained, planted: Planted, tmp_path: Path) -> None:
    """`img-search index FOLDER --model DIR` (its runner) and a search over that index use the fine-tuned weights
    and the fine-tuned calibration. float32 torch on both sides, so the cosines are the encoder's own."""
    from img_search.embedding import load_encoder
    from img_search.pipeline.runner import IndexOptions, index_folders
    from img_search.search.searcher import open_searcher
    from img_search.settings import load_settings

    tuned = load_encoder(str(trained.out), device="cpu")
    names = sorted(planted.captions)
    vectors = tuned.encode_images([Image.open(planted.folder / n).convert("RGB") for n in names])
    # the caption the fine-tuned model separates best from the other pictures
    sims = tuned.encode_texts([planted.captions[n] for n in names]) @ vectors.T
    margins = [sims[i, i] - np.delete(sims[i], i).max() for i in range(len(names))]
    best = int(np.argmax(margins))
    assert margins[best] > 0
    query = planted.captions[names[best]]

    index_dir = tmp_path / "idx"
    summary = index_folders([str(planted.folder)], index_dir, IndexOptions(model=str(trained.out), workers=0),
                            encoder_factory=lambda: load_encoder(str(trained.out), device="cpu"))
    assert summary.embedded == 40 and summary.model == str(trained.out)
    searcher = open_searcher(load_settings(index_dir, model=str(trained.out)), encoder=tuned)
    try:
        hits = searcher.search_text(query, limit=40)
    finally:
        searcher.close()
    # by cosine, not by list position: a hybrid search may also fuse in the text index (colour names)
    assert len(hits) == 40 and all(hit.cosine is not None for hit in hits)
    assert os.path.basename(max(hits, key=lambda hit: hit.cosine or -2.0).path) == names[best]
    expected = {names[i]: float(sims[best, i]) for i in range(len(names))}
    t, b = trained.report.epochs[-1].logit_scale, trained.report.epochs[-1].logit_bias
    for hit in hits:
        assert hit.cosine is not None and hit.probability is not None
        assert hit.cosine == pytest.approx(expected[os.path.basename(hit.path)], abs=1e-4)
        assert hit.probability == pytest.approx(1 / (1 + math.exp(-(math.exp(t) * hit.cosine + b))), abs=1e-5)


# -- refusals ------------------------------------------------------------------------------------------------------
def test_refusals_before_any_training(planted: Planted, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    opts = FinetuneOptions(model=str(tiny_models["siglip"]), **OPTIONS)  # type: ignore[arg-type]
    with pytest.raises(ConflictError, match="not empty"):
        finetune(planted.pairs, busy, opts)
    assert (busy / "keep.txt").read_text() == "mine"
    with pytest.raises(ConflictError, match="is the checkpoint being fine-tuned"):
        finetune(planted.pairs, tiny_models["siglip"], opts, overwrite=True)
    clip = FinetuneOptions(model=str(tiny_models["clip"]), **OPTIONS)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="clip checkpoint"):
        finetune(planted.pairs, tmp_path / "clip-out", clip)
    assert not (tmp_path / "clip-out").exists()
    for bad in (dict(batch_size=1), dict(num_epochs=0), dict(lr=0.0), dict(lr=float("nan")), dict(val_fraction=1.0),
                dict(weight_decay=-1.0), dict(workers=-1)):
        with pytest.raises(InvalidInputError):
            FinetuneOptions(**bad)  # type: ignore[arg-type]


def test_siglip2_trains_and_saves(planted: Planted, tiny_models: dict[str, Path], tmp_path: Path,
                                  one_thread: None) -> None:
    from img_search.embedding import load_encoder

    out = tmp_path / "siglip2"
    report = finetune(planted.pairs, out, FinetuneOptions(model=str(tiny_models["siglip2"]), num_epochs=3,
                                                          batch_size=10, lr=1e-3, val_fraction=0.25, device="cpu"))
    assert report.family == "siglip2" and report.epochs[-1].train_loss < report.epochs[0].train_loss
    tuned = load_encoder(str(out), device="cpu")
    assert tuned.info.family == "siglip2"
    assert tuned.info.logit_bias == pytest.approx(report.epochs[-1].logit_bias, abs=1e-6)


# -- the script --------------------------------------------------------------------------------------------------
def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("finetune_siglip_script", REPO / "scripts" / "finetune_siglip.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_prints_recall_and_losses(planted: Planted, tiny_siglip: Path, tmp_path: Path, one_thread: None,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script()
    out = tmp_path / "out"
    argv = ["--train_data", str(planted.pairs), "--num_epochs", "2", "--batch_size", "10", "--lr", "1e-3",
            "--model", str(tiny_siglip), "--output-dir", str(out), "--val-fraction", "0.25", "--device", "cpu", "-q"]
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    assert "pairs: 30 to train on, 10 held out, 5 lines skipped" in printed
    assert "before: held-out loss" in printed and "recall@1 text->image" in printed
    assert "epoch 1/2: train loss" in printed and "epoch 2/2: train loss" in printed
    assert "after: held-out loss" in printed and f"--model {out}" in printed
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    # a second run into the same folder refuses (exit 1) unless --overwrite; bad input is exit 2
    assert script.main(argv) == 1
    assert "not empty" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert script.main(["--train_data", str(empty), "--model", str(tiny_siglip), "--output-dir",
                        str(tmp_path / "o2"), "-q"]) == 2
    assert "is empty" in capsys.readouterr().err
    assert script.main(["--train_data", str(tmp_path / "none.jsonl"), "--model", str(tiny_siglip),
                        "--output-dir", str(tmp_path / "o3"), "-q"]) == 1
