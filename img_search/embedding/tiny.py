"""Build tiny random-weight SigLIP / SigLIP 2 / CLIP checkpoints offline.

Used by the tests (parity, calibration, pipeline) and by the demo's offline fallback. The
checkpoint is written with ``save_pretrained`` and must be loaded back through the same
``from_pretrained(local_dir)`` path users take, so nothing here is special-cased downstream.
The tokenizer is trained here, offline: a SentencePiece unigram model for SigLIP (as Google's
checkpoints use) and a byte-level BPE for CLIP, both on a small generated English corpus.
Random weights mean the rankings are meaningless; the shapes, code paths and maths are real.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

Family = Literal["siglip", "siglip2", "clip"]

_SUBJECTS = ["dog", "cat", "horse", "bird", "car", "boat", "tree", "flower", "house", "mountain", "person", "child",
             "bicycle", "train", "bridge", "city", "beach", "forest", "river", "sunset", "cake", "pizza", "guitar"]
_ADJECTIVES = ["red", "blue", "green", "yellow", "black", "white", "small", "large", "old", "young", "bright", "dark",
               "happy", "quiet", "busy", "snowy", "sunny", "striped", "wooden", "shiny"]
_PLACES = ["on the beach", "in the park", "at night", "in the snow", "under a tree", "near the river", "in a city",
           "on a table", "in the kitchen", "on a mountain", "by the sea", "in a field", "at sunset", "in the rain"]
_TEMPLATES = ["a photo of a {a} {s} {p}", "a {a} {s} {p}", "two {s}s {p}", "a close-up of a {s}",
              "an image of a {a} {s}", "the {s} is {a}", "a painting of a {s} {p}"]


def caption_corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """A deterministic corpus of simple image captions to train the tiny tokenizers on."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        tpl = rng.choice(_TEMPLATES)
        lines.append(tpl.format(a=rng.choice(_ADJECTIVES), s=rng.choice(_SUBJECTS), p=rng.choice(_PLACES)))
    # every word on its own too, so each gets a piece
    lines.extend(itertools.chain(_SUBJECTS, _ADJECTIVES))
    return lines


@dataclass(frozen=True)
class TinySpec:
    family: Family = "siglip"
    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 32
    intermediate_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    projection_dim: int = 32  # CLIP only; SigLIP's embedding size is its hidden size
    vocab_size: int = 256
    max_text_length: int = 16
    model_vocab_size: int | None = None  # text embedding rows; default: the tokenizer's size
    seed: int = 0


# Random-weight stand-ins with a published checkpoint's exact architecture (same FLOPs), for benchmarks.
ARCHITECTURES: dict[str, TinySpec] = {
    "google/siglip-base-patch16-224": TinySpec(
        family="siglip", image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_layers=12,
        num_heads=12, vocab_size=1000, max_text_length=64, model_vocab_size=32000,
    ),
}


def _train_sentencepiece(work: Path, vocab_size: int) -> Path:
    import sentencepiece as spm

    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(caption_corpus()) + "\n", encoding="utf-8")
    prefix = work / "spiece"
    # T5-style ids as in SigLIP's spiece.model: <pad>=0, </s>=1 (also SigLIP's pad), <unk>=2
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def _siglip_tokenizer(work: Path, spec: TinySpec):  # type: ignore[no-untyped-def]
    from transformers import SiglipTokenizer

    vocab_file = _train_sentencepiece(work, spec.vocab_size)
    return SiglipTokenizer(vocab_file=str(vocab_file), model_max_length=spec.max_text_length)


def _clip_tokenizer(spec: TinySpec):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size * 2,
        special_tokens=specials,
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(caption_corpus(), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    return CLIPTokenizer(vocab=state["vocab"], merges=merges, model_max_length=spec.max_text_length)  # type: ignore[arg-type]


def _gemma_like_tokenizer(spec: TinySpec):  # type: ignore[no-untyped-def]
    """SigLIP 2 checkpoints use Gemma's byte-fallback BPE ("▁" for spaces); train a small one."""
    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import Siglip2Tokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size * 2,
        special_tokens=specials + [f"<0x{b:02X}>" for b in range(256)],
        show_progress=False,
    )
    bpe.train_from_iterator(caption_corpus(), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    # the BPE model takes (a, b) pairs
    return Siglip2Tokenizer(vocab=state["vocab"], merges=merges, model_max_length=spec.max_text_length)  # type: ignore[arg-type]


def build_tiny_model(out_dir: Path, spec: TinySpec | None = None) -> Path:
    """Write a random-weight checkpoint (model + processor) to ``out_dir`` and return it."""
    import torch

    spec = spec or TinySpec()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    with tempfile.TemporaryDirectory() as tmp:
        if spec.family == "clip":
            model, processor = _build_clip(spec)
        else:
            model, processor = _build_siglip(Path(tmp), spec)
        model.eval()
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
    logger.info("wrote tiny random %s checkpoint to %s", spec.family, out_dir)
    return out_dir


def _vision_text_kwargs(spec: TinySpec) -> tuple[dict[str, int], dict[str, int]]:
    common = dict(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
    )
    vision = dict(common, image_size=spec.image_size, patch_size=spec.patch_size, num_channels=3)
    text = dict(common, vocab_size=spec.model_vocab_size or spec.vocab_size + 8,
                max_position_embeddings=spec.max_text_length)
    return vision, text


def _build_siglip(work: Path, spec: TinySpec):  # type: ignore[no-untyped-def]
    import torch

    model: Any
    processor: Any
    config: Any
    image_processor: Any

    vision, text = _vision_text_kwargs(spec)
    tokenizer = _gemma_like_tokenizer(spec) if spec.family == "siglip2" else _siglip_tokenizer(work, spec)
    text.update(
        vocab_size=max(len(tokenizer), text["vocab_size"]),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if spec.family == "siglip2":
        from transformers import Siglip2Config, Siglip2ImageProcessorPil, Siglip2Model, Siglip2Processor

        vision.pop("image_size")
        num_patches = (spec.image_size // spec.patch_size) ** 2
        config = Siglip2Config(text_config=text, vision_config=dict(vision, num_patches=num_patches))
        model = Siglip2Model(config)
        image_processor = Siglip2ImageProcessorPil(patch_size=spec.patch_size, max_num_patches=num_patches)
        processor = Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer)
    else:
        from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

        config = SiglipConfig(text_config=text, vision_config=vision)
        model = SiglipModel(config)
        image_processor = SiglipImageProcessorPil(size={"height": spec.image_size, "width": spec.image_size})
        processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    with torch.no_grad():  # SigLIP's published init: t' = log(10), b = -10
        model.logit_scale.fill_(2.302585)
        model.logit_bias.fill_(-10.0)
    return model, processor


def _build_clip(spec: TinySpec):  # type: ignore[no-untyped-def]
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    vision, text = _vision_text_kwargs(spec)
    tokenizer = _clip_tokenizer(spec)
    text.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=spec.projection_dim)
    model = CLIPModel(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size}, crop_size={"height": spec.image_size, "width": spec.image_size}
    )
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
