"""The light text-query path: an exported text tower plus a tokenizer, without importing torch or transformers.

``img-search search`` spends ~9 s importing torch/transformers and building the model before it encodes one query
(issue 8). Here a query needs only ``onnxruntime`` (or ``openvino``), numpy and the tokenizer library the checkpoint
uses, all loaded from the runtime cache that ``prepare_runtime`` fills during ``index``:

* ``tokenizers`` checkpoints (SigLIP 2's Gemma tokenizer, CLIP): the ``tokenizer.json`` of transformers' own fast
  tokenizer, with the padding / truncation transformers applies for ``padding="max_length", truncation=True``;
* SigLIP's SentencePiece tokenizer (Google's checkpoints ship no ``tokenizer.json``, and transformers' SigLIP
  tokenizer is a slow Python one): the same ``spiece.model`` through ``sentencepiece`` with SigLIP's text
  canonicalisation (lower case, punctuation removed, whitespace collapsed), re-done here step by step.

Every light tokenizer is checked token for token against transformers on ``TOKENIZER_PROBES`` when it is exported;
one that differs is not written, and the search falls back to the torch encoder (``load_text_encoder``).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import string
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from img_search.embedding.base import Encoder, FeatureVector, ModelInfo, PixelBatch, l2_normalize
from img_search.embedding.precision import TowerChoice, is_accelerator, precision_candidates
from img_search.errors import UnavailableError
from img_search.registry import Registry

logger = logging.getLogger(__name__)

TEXT_BATCH_SIZE = 256
SPIECE_UNDERLINE = "▁"

# Strings the light tokenizers must tokenize exactly as transformers does: cases, punctuation, whitespace runs,
# non-ASCII, the sentencepiece space marker, special tokens typed by the user, and texts longer than 64 tokens.
TOKENIZER_PROBES: tuple[str, ...] = (
    "a dog on the beach", "A Red Car", "two cats in the snow at night near the river", "x", "", " ",
    "Hello, World! (It's) 3.5 o'clock -- e.g. #tag @user", "   leading and   inner   spaces  ", "tab\tand\nnewline",
    "Café naïve ÉCOLE straße Ελληνικά 東京 🐶🏖️", "▁underline▁marks ▁", "a </s> inside", "<unk> and <pad>",
    "ends with </s>", "the quick brown fox jumps over the lazy dog " * 12, "supercalifragilisticexpialidocious",
    "UPPER lower MiXeD", "numbers 1234567890 and 3.14159", "quotes “curly” ‘single’ «guillemets»",
)


class LightTokenizer(Protocol):
    def __call__(self, texts: Sequence[str]) -> dict[str, NDArray[np.int64]]:
        """Texts -> ``input_ids`` (and ``attention_mask`` where the family takes one), ``(n, max_length)`` int64."""
        ...


@dataclass(frozen=True)
class LightTokenizerKind:
    """How one kind of tokenizer is written into the cache (needs the transformers tokenizer object, never imports
    transformers) and read back without it."""

    applies: Callable[[Any], bool]  # does this kind handle this transformers tokenizer?
    export: Callable[[Any, Path], dict[str, Any]]  # (transformers tokenizer, folder) -> spec (JSON-able)
    load: Callable[[Path, dict[str, Any]], LightTokenizer]


# -- tokenizers (Rust) ----------------------------------------------------------------------------------------------
class RustTokenizer:
    """A ``tokenizers.Tokenizer`` set up as transformers calls it: truncation to ``max_length`` (special tokens
    included), padding to exactly ``max_length`` on the tokenizer's padding side."""

    def __init__(self, folder: Path, spec: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.max_length = int(spec["max_length"])
        self.lowercase = bool(spec["lowercase"])
        self.attention_mask = bool(spec["attention_mask"])
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(length=self.max_length, pad_id=int(spec["pad_id"]), pad_token=spec["pad_token"],
                                      direction=spec["padding_side"])

    def __call__(self, texts: Sequence[str]) -> dict[str, NDArray[np.int64]]:
        texts = [t.lower() for t in texts] if self.lowercase else list(texts)
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        out = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), self.max_length)}
        if self.attention_mask:
            out["attention_mask"] = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(
                len(texts), self.max_length)
        return out


def _export_rust(tokenizer: Any, folder: Path) -> dict[str, Any]:
    backend = tokenizer.backend_tokenizer
    state = json.loads(backend.to_str())
    state["truncation"], state["padding"] = None, None  # set per call, as transformers does
    (folder / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
    return {"pad_id": int(tokenizer.pad_token_id), "pad_token": str(tokenizer.pad_token),
            "padding_side": str(tokenizer.padding_side)}


# -- SigLIP sentencepiece -------------------------------------------------------------------------------------------
class SiglipSentencePieceTokenizer:
    """transformers' ``SiglipTokenizer`` re-done on ``sentencepiece`` alone: special tokens split out first (with
    their lstrip/rstrip), each remaining piece canonicalised (``do_lower_case``, ``string.punctuation`` removed,
    whitespace collapsed and stripped) and encoded behind the unknown token, which is then cut off (transformers'
    trick to keep the leading "▁"), ids truncated to ``max_length - 1``, ``</s>`` appended unless already last,
    padded with the pad id on the right."""

    def __init__(self, folder: Path, spec: dict[str, Any]) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        self.sp.Load(str(folder / "spiece.model"))
        self.max_length = int(spec["max_length"])
        self.lowercase = bool(spec["lowercase"])
        self.do_lower_case = bool(spec["do_lower_case"])
        self.unk = str(spec["unk_token"])
        self.eos_id = int(spec["eos_id"])
        self.pad_id = int(spec["pad_id"])
        self.added: dict[str, dict[str, Any]] = spec["added_tokens"]  # content -> {id, lstrip, rstrip}
        self.unk_len = len(self.sp.encode(self.unk, out_type=str))
        names = sorted(self.added, key=len, reverse=True)  # longest first, like transformers' trie
        self.split_re = re.compile("(" + "|".join(re.escape(n) for n in names) + ")") if names else None
        self.punct = str.maketrans("", "", string.punctuation)

    def _canonical(self, text: str) -> str:
        if self.do_lower_case:
            text = text.lower()
        return re.sub(r"\s+", " ", text.translate(self.punct)).strip()

    def _ids(self, text: str) -> list[int]:
        text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        parts = [p for p in self.split_re.split(text)] if self.split_re else [text]
        for i, part in enumerate(parts):  # special tokens' lstrip / rstrip eat the neighbouring whitespace
            tok = self.added.get(part)
            if tok is None:
                continue
            if tok["rstrip"] and i + 1 < len(parts) and parts[i + 1] not in self.added:
                parts[i + 1] = parts[i + 1].lstrip()
            if tok["lstrip"] and i > 0 and parts[i - 1] not in self.added:
                parts[i - 1] = parts[i - 1].rstrip()
        ids: list[int] = []
        for part in parts:
            if not part:
                continue
            if part in self.added:
                ids.append(int(self.added[part]["id"]))
                continue
            pieces = self.sp.encode(self.unk + self._canonical(part), out_type=str)
            pieces = pieces[self.unk_len:] if len(pieces) >= self.unk_len else pieces
            ids.extend(int(self.added[p]["id"]) if p in self.added else self.sp.piece_to_id(p) for p in pieces)
        ids = ids[: self.max_length - 1]
        if not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        return ids + [self.pad_id] * (self.max_length - len(ids))

    def __call__(self, texts: Sequence[str]) -> dict[str, NDArray[np.int64]]:
        texts = [t.lower() for t in texts] if self.lowercase else list(texts)
        return {"input_ids": np.array([self._ids(t) for t in texts], dtype=np.int64).reshape(len(texts),
                                                                                           self.max_length)}


def _export_siglip_spm(tokenizer: Any, folder: Path) -> dict[str, Any]:
    shutil.copyfile(tokenizer.vocab_file, folder / "spiece.model")
    added = {str(tok.content): {"id": int(idx), "lstrip": bool(tok.lstrip), "rstrip": bool(tok.rstrip)}
             for idx, tok in tokenizer.added_tokens_decoder.items()}
    for content in tokenizer.all_special_tokens:  # special tokens split even when they are base-vocabulary pieces
        added.setdefault(str(content), {"id": int(tokenizer.convert_tokens_to_ids(content)), "lstrip": False,
                                        "rstrip": False})
    return {"do_lower_case": bool(getattr(tokenizer, "do_lower_case", False)), "unk_token": str(tokenizer.unk_token),
            "eos_id": int(tokenizer.eos_token_id), "pad_id": int(tokenizer.pad_token_id), "added_tokens": added}


LIGHT_TOKENIZERS: Registry[LightTokenizerKind] = Registry("light tokenizer")
LIGHT_TOKENIZERS.add("tokenizers", LightTokenizerKind(
    applies=lambda tok: getattr(tok, "backend_tokenizer", None) is not None, export=_export_rust, load=RustTokenizer))
LIGHT_TOKENIZERS.add("siglip_sentencepiece", LightTokenizerKind(
    applies=lambda tok: type(tok).__name__ == "SiglipTokenizer" and hasattr(tok, "sp_model"),
    export=_export_siglip_spm, load=SiglipSentencePieceTokenizer))


def export_light_tokenizer(tokenizer: Any, folder: Path, *, max_length: int, lowercase: bool,
                           attention_mask: bool) -> dict[str, Any]:
    """Write what ``load_light_tokenizer`` needs for ``tokenizer`` (a transformers tokenizer) into ``folder`` and
    return its spec. Raises ``UnavailableError`` when no light kind handles this tokenizer class."""
    for name in LIGHT_TOKENIZERS:
        kind = LIGHT_TOKENIZERS.get(name)
        if kind.applies(tokenizer):
            spec = kind.export(tokenizer, folder)
            spec.update(kind=name, max_length=int(max_length), lowercase=bool(lowercase),
                        attention_mask=bool(attention_mask))
            return spec
    raise UnavailableError(f"no light tokenizer for {type(tokenizer).__name__}; text queries will load transformers")


def load_light_tokenizer(folder: Path, spec: dict[str, Any]) -> LightTokenizer:
    """The light tokenizer written by ``export_light_tokenizer`` (kind named in ``spec``)."""
    return LIGHT_TOKENIZERS.get(spec["kind"]).load(folder, spec)


# -- the light text encoder -----------------------------------------------------------------------------------------
class LightTextEncoder:
    """``encode_texts`` through an exported text tower and a light tokenizer; image methods load the full encoder
    (torch) on first use, so a search process that only answers text queries never imports torch.

    Satisfies the ``Encoder`` protocol: ``info``, ``device`` ("cpu"), ``encode_texts`` ((n, dim) float32, unit rows),
    and the image methods through ``full_encoder()``.
    """

    def __init__(self, info: ModelInfo, tokenizer: LightTokenizer, session: Any, choice: TowerChoice,
                 full_loader: Callable[[], Encoder]) -> None:
        self.info = info
        self.device = "cpu"
        self.tokenizer = tokenizer
        self.session = session
        self.text_choice = choice
        self._full_loader = full_loader
        self._full: Encoder | None = None
        self._lock = threading.Lock()

    def full_encoder(self) -> Encoder:
        """The torch encoder for image queries (loaded once, on first use)."""
        with self._lock:
            if self._full is None:
                self._full = self._full_loader()
        return self._full

    def encode_texts(self, texts: list[str]) -> FeatureVector:
        if not texts:
            return np.empty((0, self.info.dim), dtype=np.float32)
        chunks = [l2_normalize(self.session.run(self.tokenizer(texts[i: i + TEXT_BATCH_SIZE])))
                  for i in range(0, len(texts), TEXT_BATCH_SIZE)]
        return np.concatenate(chunks)

    def image_preprocessor(self) -> Any:
        return self.full_encoder().image_preprocessor()

    def encode_batch(self, batch: PixelBatch) -> FeatureVector:
        return self.full_encoder().encode_batch(batch)

    def encode_images(self, images: list[Any]) -> FeatureVector:
        return self.full_encoder().encode_images(images)


def load_text_encoder(model: str, precision: str = "auto", *, cache_dir: Path | str | None = None,
                      device: str = "cpu", runtime: str = "auto", image_precision: str = "auto") -> Encoder:
    """An encoder for text queries of ``model`` that starts fast.

    When ``prepare_runtime`` (run by ``index``) left an exported text tower for ``precision`` in the runtime cache
    (``cache_dir``, default ``$XDG_CACHE_HOME/img-search``) and, for ``auto``, its parity check passed, this returns
    a ``LightTextEncoder`` (no torch, no transformers). Otherwise -- nothing cached yet, a GPU device, no ONNX Runtime
    installed -- it returns the torch encoder (``load_encoder``) with the text tower at ``precision`` on torch (``auto``
    there means fp32: a search must not pay for an export or a quantization). ``image_precision`` is what image
    queries use. Raises ``InvalidInputError`` for an unknown precision/runtime and ``ModelNotFoundError`` as
    ``load_encoder`` does.
    """
    from img_search.embedding.onnx_export import RuntimeCache
    from img_search.embedding.runtime import graph_kind, open_graph_session

    def full(text_precision: str) -> Callable[[], Encoder]:
        def loader() -> Encoder:
            from img_search.embedding import load_encoder

            return load_encoder(model, device=device, text_precision=text_precision, image_precision=image_precision,
                                cache_dir=cache_dir, runtime="auto", allow_export=False)
        return loader

    candidates = precision_candidates(precision, "text", device=device, runtime=runtime)
    if is_accelerator(device):  # the exported graphs run on CPU; a GPU search keeps the torch encoder
        candidates = []
    cache = RuntimeCache.find(model, cache_dir)
    manifest = cache.manifest() if cache is not None else None
    if cache is not None and manifest is not None and manifest.get("tokenizer") is not None:
        for choice in candidates:
            kind = graph_kind(choice) if choice.runtime != "torch" else None
            if kind is None or not cache.has_graph("text", kind):
                continue
            if precision == "auto":
                verdict = cache.read_parity(choice)
                if verdict is None or not verdict.get("passed"):
                    continue
            tokenizer = load_light_tokenizer(cache.tokenizer_dir, manifest["tokenizer"])
            session = open_graph_session(cache.graph_path("text", kind), choice)
            info = ModelInfo(**manifest["info"])
            logger.info("text queries: %s (light path, %s)", choice, cache.dir)
            return LightTextEncoder(info, tokenizer, session, choice, full("fp32" if precision == "auto"
                                                                          else precision))
    fallback = "fp32" if precision == "auto" else precision
    logger.info("no exported text tower cached for %s at %s; loading the torch encoder (text %s)", model, precision,
                fallback)
    return full(fallback)()
