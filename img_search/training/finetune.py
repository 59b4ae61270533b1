"""Fine-tune a SigLIP / SigLIP 2 checkpoint on image-caption pairs with SigLIP's pairwise sigmoid loss.

The loss (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", eq. 1): for a batch of ``n`` pairs with
L2-normalised image vectors ``x_i`` and text vectors ``y_j``, the logit of pair ``(i, j)`` is
``z_ij = exp(t') * <x_i, y_j> + b`` with the model's learned ``logit_scale`` ``t'`` and ``logit_bias`` ``b``; the
label is ``+1`` on the diagonal (the matching pairs) and ``-1`` elsewhere, and

    loss = -(1 / n) * sum_i sum_j log sigmoid(label_ij * z_ij)

Every pair is an independent binary classification, so ``t'`` and ``b`` are trained with the towers; they are the
values ``search`` turns into a probability (``sigmoid(exp(t') * cos + b)``), so a fine-tune re-calibrates the
scores for the user's pictures too.

The inputs go through the same code as ``index`` and ``search``: the checkpoint is loaded by
``embedding.hf.load_hf_encoder``, captions are tokenized by ``HFEncoder.tokenize`` (SigLIP's ``max_length`` padding
without an attention mask, SigLIP 2's lowercasing) and images are decoded by ``data.images.load_image`` (EXIF
orientation, alpha, pixel limit) and prepared by the checkpoint's own image processor
(``HFEncoder.image_preprocessor``). The trained model and its processor are written with ``save_pretrained``, so
``img-search index FOLDER --model DIR`` loads them like any checkpoint.

Input: JSON Lines, one ``{"image": PATH, "caption": TEXT}`` object a line; relative paths resolve against the
JSONL file's folder. Bad lines and images that cannot be read are reported with their line numbers (logged as
warnings and kept in ``PairSet.problems``) and skipped; blank lines are ignored.

The same code runs on CPU and GPU (``FinetuneOptions.device``); training is float32 (AdamW, gradient clipping).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from img_search.data.images import check_pixel_limit, load_image
from img_search.embedding.base import collate_pixels
from img_search.errors import ConflictError, ImageDecodeError, InvalidInputError, NotFoundError
from img_search.settings import DEFAULT_MODEL
from img_search.wording import count

if TYPE_CHECKING:
    import torch

    from img_search.embedding.hf import HFEncoder, HFImagePreprocessor

logger = logging.getLogger(__name__)

# families whose checkpoints carry a learned logit bias and were trained with the sigmoid loss (embedding.hf.FAMILIES)
SIGMOID_FAMILIES = ("siglip", "siglip2")
# how many pair problems are logged one by one before the rest are only counted (all are kept in PairSet.problems)
MAX_LOGGED_PROBLEMS = 50
REPORT_FILENAME = "finetune.json"


class TrainingDataError(InvalidInputError):
    """The pairs file is empty, not JSON Lines of ``{"image", "caption"}`` objects, or has too few usable pairs."""


# -- the pairs file ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One usable image-caption pair: ``line`` is its 1-based line number in the JSONL file."""

    line: int
    image: Path
    caption: str


@dataclass(frozen=True)
class PairProblem:
    """A line of the pairs file that was skipped, and why (``line`` is 1-based)."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class PairSet:
    """The usable pairs of ``source`` in file order, and the lines skipped."""

    source: Path
    pairs: tuple[Pair, ...]
    problems: tuple[PairProblem, ...]
    lines: int


def _parse_line(text: str, number: int, base: Path) -> Pair | PairProblem:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return PairProblem(number, f"not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(obj, dict):
        return PairProblem(number, f"expected a JSON object with \"image\" and \"caption\", got {type(obj).__name__}")
    missing = [key for key in ("image", "caption") if key not in obj]
    if missing:
        return PairProblem(number, f"missing {' and '.join(repr(k) for k in missing)}")
    image, caption = obj["image"], obj["caption"]
    if not isinstance(image, str) or not image.strip():
        return PairProblem(number, "\"image\" must be a non-empty string (a path)")
    if not isinstance(caption, str) or not caption.strip():
        return PairProblem(number, "\"caption\" must be a non-empty string")
    path = Path(os.path.expanduser(image))
    return Pair(number, path if path.is_absolute() else base / path, caption.strip())


def read_pairs(path: str | os.PathLike[str], *, check_images: bool = True,
               max_image_pixels: int | None = None) -> PairSet:
    """Read a JSON Lines pairs file; with ``check_images`` (default) every image is also decoded once, so that a
    missing or unreadable one is reported here, with its line, rather than in the middle of training.

    Raises ``NotFoundError`` when the file does not exist, ``TrainingDataError`` (an ``InvalidInputError``) when it
    is not a readable UTF-8 text file, is empty, or holds no usable pair.
    """
    source = Path(os.path.expanduser(os.fspath(path)))
    if not source.exists():
        raise NotFoundError(f"pairs file {os.fspath(path)!r} does not exist")
    if not source.is_file():
        raise TrainingDataError(f"{os.fspath(path)!r} is not a file; expected JSON Lines of image-caption pairs")
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TrainingDataError(f"{source} is not UTF-8 text (byte {exc.start}); expected JSON Lines") from None
    except OSError as exc:
        raise TrainingDataError(f"cannot read {source}: {exc.strerror or exc}") from None
    base = source.resolve().parent
    limit = check_pixel_limit(max_image_pixels)
    pairs: list[Pair] = []
    problems: list[PairProblem] = []
    lines = text.splitlines()
    if sum(1 for line in lines if line.strip()) > 1:
        try:  # a pretty-printed JSON document (an array of pairs, say) is not JSON Lines: one clear error
            document = json.loads(text)
        except json.JSONDecodeError:
            pass
        else:
            kind = {"dict": "object", "list": "array"}.get(type(document).__name__, "value")
            raise TrainingDataError(f"{source} is one JSON {kind} over several lines, not JSON "
                                    "Lines; write one {\"image\": PATH, \"caption\": TEXT} object a line")
    t0 = time.monotonic()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed = _parse_line(line, number, base)
        if isinstance(parsed, Pair) and check_images:
            try:
                load_image(str(parsed.image), max_image_pixels=limit)
            except ImageDecodeError as exc:
                parsed = PairProblem(number, f"image {str(parsed.image)!r}: {exc}")
            except FileNotFoundError:  # pragma: no cover - read_file turns OSError into ImageDecodeError
                parsed = PairProblem(number, f"image {str(parsed.image)!r} does not exist")
        if isinstance(parsed, PairProblem):
            problems.append(parsed)
            if len(problems) <= MAX_LOGGED_PROBLEMS:
                logger.warning("%s: skipped %s", source.name, parsed)
        else:
            pairs.append(parsed)
        if check_images and number % 1000 == 0:
            logger.info("checked %d/%d lines of %s (%.0f lines/s)", number, len(lines), source.name,
                        number / max(time.monotonic() - t0, 1e-9))
    if len(problems) > MAX_LOGGED_PROBLEMS:
        logger.warning("%s: %d more lines skipped (%d in all)", source.name, len(problems) - MAX_LOGGED_PROBLEMS,
                       len(problems))
    if not pairs:
        what = "is empty" if not any(line.strip() for line in lines) else "has no usable pair"
        first = f" (first problem: {problems[0]})" if problems else ""
        raise TrainingDataError(
            f"{source} {what}{first}; expected JSON Lines, one {{\"image\": PATH, \"caption\": TEXT}} object a line"
        )
    logger.info("%s: %d usable pairs, %d lines skipped", source.name, len(pairs), len(problems))
    return PairSet(source=source, pairs=tuple(pairs), problems=tuple(problems), lines=len(lines))


def split_pairs(pairs: Sequence[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """``(train, held_out)``: a seeded shuffle (``random.Random(seed)``) puts ``round(len * val_fraction)`` pairs
    (at least 1 when ``val_fraction > 0``) in the held-out split; both keep file order. The same file, fraction and
    seed always give the same split. Raises ``TrainingDataError`` when fewer than 2 pairs are left to train on."""
    check_fraction(val_fraction)
    n = len(pairs)
    k = 0 if val_fraction == 0 else max(1, round(n * val_fraction))
    if n - k < 2:
        raise TrainingDataError(
            f"{count(n, 'usable pair')} leave{'s' if n == 1 else ''} {n - k} to train on after holding out {k} "
            f"(--val-fraction {val_fraction}); "
            "the sigmoid loss needs at least 2 pairs a batch"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    if 0 < k < 2:
        logger.warning("only %d held-out pair: its recall@1 is trivially 1; use more pairs or a larger --val-fraction",
                       k)
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


# -- options and results ----------------------------------------------------------------------------------------
def check_fraction(value: float) -> float:
    """``value`` if it is a number in [0, 1), else ``InvalidInputError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise InvalidInputError(f"the held-out fraction must be a number in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class FinetuneOptions:
    """What one fine-tune does; validated on construction (``InvalidInputError`` names the bad value).

    ``lr``: AdamW's learning rate (default 1e-5, the usual order for fine-tuning a pre-trained SigLIP; a
    random-weight test model needs ~1e-3). ``weight_decay``: AdamW's decoupled weight decay on matrices (torch's
    default 0.01); biases, norms, ``logit_scale`` and ``logit_bias`` get none. ``max_grad_norm``: global gradient
    norm clip (None: off). ``batch_size``: pairs a step (>= 2; the sigmoid loss sees ``batch_size**2`` pairs); when
    the training split holds more pairs than that, the last incomplete batch of each epoch is dropped (the split is
    reshuffled every epoch, so a different remainder is left out each time). ``val_fraction``: held-out share in
    [0, 1). ``workers``: image decoding processes (0: in this process). ``device``: auto | cpu | cuda[:N] | mps.
    ``log_every``: steps between progress log lines.
    """

    model: str = DEFAULT_MODEL
    num_epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    log_every: int = 10
    max_image_pixels: int | None = None

    def __post_init__(self) -> None:
        for name, value, low in (("num_epochs", self.num_epochs, 1), ("batch_size", self.batch_size, 2),
                                 ("workers", self.workers, 0), ("log_every", self.log_every, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(f"{name} must be a whole number >= {low}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidInputError(f"seed must be a whole number, got {self.seed!r}")
        for name, number in (("lr", self.lr), ("max_grad_norm", self.max_grad_norm)):
            if name == "max_grad_norm" and number is None:
                continue
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                    or number <= 0:
                raise InvalidInputError(f"{name} must be a positive number, got {number!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not math.isfinite(wd) or wd < 0:
            raise InvalidInputError(f"weight_decay must be a number >= 0, got {wd!r}")
        check_fraction(self.val_fraction)
        check_pixel_limit(self.max_image_pixels)


@dataclass(frozen=True)
class Recall:
    """Recall@1 over ``n`` held-out pairs, both directions: the share of captions whose own image ranks first among
    the held-out images (text -> image), and of images whose own caption ranks first (image -> text). Ties go to the
    earlier pair (``argmax``)."""

    text_to_image: float
    image_to_text: float
    n: int


@dataclass(frozen=True)
class EpochResult:
    """One epoch: ``train_loss`` is the mean sigmoid loss of its steps (each step's loss is already per pair, see
    ``sigmoid_loss``); ``held_out_loss`` / ``held_out_recall`` are measured after the epoch (None without a held-out
    split); ``logit_scale`` is ``t'`` (the temperature is ``exp(t')``)."""

    epoch: int
    steps: int
    train_loss: float
    held_out_loss: float | None
    held_out_recall: Recall | None
    logit_scale: float
    logit_bias: float
    seconds: float


@dataclass
class FinetuneReport:
    """What a fine-tune did (also written as ``finetune.json`` beside the checkpoint)."""

    model: str
    family: str
    output_dir: str
    device: str
    source: str
    n_train: int
    n_held_out: int
    problems: list[str]
    options: dict[str, Any]
    before_loss: float | None = None
    before: Recall | None = None
    logit_scale_before: float = 0.0
    logit_bias_before: float = 0.0
    epochs: list[EpochResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def after(self) -> Recall | None:
        """Held-out recall@1 of the saved model (after the last epoch)."""
        return self.epochs[-1].held_out_recall if self.epochs else self.before

    @property
    def after_loss(self) -> float | None:
        """Held-out loss of the saved model."""
        return self.epochs[-1].held_out_loss if self.epochs else self.before_loss

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["after"] = asdict(self.after) if self.after else None
        out["after_loss"] = self.after_loss
        return out


# -- the loss and the model's towers ----------------------------------------------------------------------------
def sigmoid_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss of one batch (Zhai et al. 2023, eq. 1 / Algorithm 1).

    ``image_embeds``, ``text_embeds``: float ``(n, dim)`` with row ``i`` of each a matching pair (normalised here);
    ``logit_scale`` ``t'`` and ``logit_bias`` ``b``: scalars (any shape with one element). Returns the scalar
    ``-(1/n) * sum_ij log sigmoid(label_ij * (exp(t') * cos_ij + b))`` with ``label = +1`` on the diagonal and
    ``-1`` elsewhere; the same reduction as ``transformers``' ``SiglipModel(return_loss=True)``.
    """
    import torch
    import torch.nn.functional as F

    if image_embeds.shape != text_embeds.shape or image_embeds.ndim != 2:
        raise InvalidInputError(f"expected two (n, dim) batches of one shape, got {tuple(image_embeds.shape)} and "
                                f"{tuple(text_embeds.shape)}")
    img = F.normalize(image_embeds, dim=-1)
    txt = F.normalize(text_embeds, dim=-1)
    logits = img @ txt.T * logit_scale.reshape(()).exp() + logit_bias.reshape(())
    n = logits.shape[0]
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / n


def _pooled(out: Any) -> torch.Tensor:
    # transformers 5 returns a model output from get_*_features; 4.x returned the tensor (as runtime.py reads it)
    return out.pooler_output if hasattr(out, "pooler_output") else out


def _to_device(arrays: dict[str, np.ndarray], device: str) -> dict[str, torch.Tensor]:
    import torch

    return {key: torch.from_numpy(np.ascontiguousarray(value)).to(device) for key, value in arrays.items()}


class PairDataset:
    """A map-style dataset of ``(pixel inputs, token inputs)`` numpy dicts; images are decoded lazily (picklable,
    so DataLoader worker processes can decode). Captions are tokenized once, up front, by the encoder's
    ``tokenize`` (the inference-time policy)."""

    def __init__(self, pairs: Sequence[Pair], tokens: dict[str, np.ndarray], preprocess: HFImagePreprocessor,
                 max_image_pixels: int | None) -> None:
        self.paths = [str(p.image) for p in pairs]
        self.lines = [p.line for p in pairs]
        self.tokens = tokens
        self.preprocess = preprocess
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        try:
            image = load_image(self.paths[index], max_image_pixels=self.max_image_pixels)
        except ImageDecodeError as exc:  # it decoded when the file was checked: it changed since
            raise ImageDecodeError(f"line {self.lines[index]}: image {self.paths[index]!r} can no longer be read "
                                   f"({exc})") from exc
        return self.preprocess(image), {key: value[index] for key, value in self.tokens.items()}


def collate(items: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Stack dataset items into one batch of pixel inputs and one of token inputs (numpy; picklable)."""
    pixels = collate_pixels([pix for pix, _ in items])
    tokens = {key: np.stack([tok[key] for _, tok in items]) for key in items[0][1]} if items else {}
    return pixels, tokens


def pair_dataset(encoder: HFEncoder, pairs: Sequence[Pair], max_image_pixels: int | None = None) -> PairDataset:
    """The training inputs of ``pairs`` exactly as ``encoder`` prepares them for inference: its ``tokenize`` (the
    family's padding / lowercasing) and its image processor."""
    tokens = encoder.tokenize([p.caption for p in pairs])
    return PairDataset(pairs, tokens, encoder.image_preprocessor(), max_image_pixels)


def _embed_batch(model: Any, pixels: dict[str, np.ndarray], tokens: dict[str, np.ndarray], device: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    image = _pooled(model.get_image_features(**_to_device(pixels, device)))
    text = _pooled(model.get_text_features(**_to_device(tokens, device)))
    return image, text


def evaluate(model: Any, dataset: PairDataset, *, batch_size: int, device: str) -> tuple[float, Recall]:
    """Held-out sigmoid loss (mean over chunks of ``batch_size`` in file order, as in training) and recall@1 over
    the whole ``dataset`` (every caption against every image of it). The model is left in eval mode."""
    import torch

    model.eval()
    images: list[torch.Tensor] = []
    texts: list[torch.Tensor] = []
    losses: list[float] = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            pixels, tokens = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            image, text = _embed_batch(model, pixels, tokens, device)
            losses.append(float(sigmoid_loss(image, text, model.logit_scale, model.logit_bias)))
            images.append(torch.nn.functional.normalize(image.float(), dim=-1).cpu())
            texts.append(torch.nn.functional.normalize(text.float(), dim=-1).cpu())
    img = torch.cat(images)
    txt = torch.cat(texts)
    sims = txt @ img.T  # (captions, images)
    target = torch.arange(len(dataset))
    t2i = int((sims.argmax(dim=1) == target).sum()) / len(dataset)
    i2t = int((sims.argmax(dim=0) == target).sum()) / len(dataset)
    return float(np.mean(losses)), Recall(text_to_image=t2i, image_to_text=i2t, n=len(dataset))


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[Any] = []
    no_decay: list[Any] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # matrices decay; biases, norm weights, logit_scale and logit_bias do not
        (decay if param.ndim >= 2 and "logit" not in name else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# -- the output directory ---------------------------------------------------------------------------------------
def check_output_dir(output_dir: Path, model: str, *, overwrite: bool) -> Path:
    """The absolute output directory, checked before any training: it must not be the source checkpoint, and an
    existing non-empty directory is replaced only with ``overwrite``. Raises ``ConflictError``."""
    out = Path(os.path.expanduser(os.fspath(output_dir))).resolve()
    source = Path(os.path.expanduser(model))
    if source.is_dir() and source.resolve() == out:
        raise ConflictError(f"the output directory {out} is the checkpoint being fine-tuned; choose another one")
    if out.exists() and not out.is_dir():
        raise ConflictError(f"the output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConflictError(f"the output directory {out} is not empty; choose another one or pass overwrite "
                            "(--overwrite) to replace it")
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished checkpoint from ``tmp`` to ``out`` (replacing what is there); an interrupted run leaves
    ``out`` as it was."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# -- the run ----------------------------------------------------------------------------------------------------
def finetune(
    train_data: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    options: FinetuneOptions | None = None,
    *,
    overwrite: bool = False,
    on_baseline: Callable[[FinetuneReport], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> FinetuneReport:
    """Fine-tune ``options.model`` on the pairs in ``train_data`` and save it (model + processor, with
    ``save_pretrained``) to ``output_dir``, with ``finetune.json`` (the report) beside it.

    Order: check the output directory, read and check the pairs (``read_pairs``), split them (``split_pairs``), load
    the checkpoint on ``options.device``, measure held-out loss and recall@1 (``on_baseline`` is called with the
    report so far), train ``num_epochs`` epochs of AdamW steps on ``sigmoid_loss`` (``on_epoch`` after each, with the
    held-out figures), then write the checkpoint to a temporary folder beside ``output_dir`` and move it in place.
    Seeds: ``options.seed`` seeds the split, torch (init of nothing, dropout where a config has it) and the
    per-epoch shuffle.

    Raises ``NotFoundError`` (no pairs file), ``TrainingDataError`` / ``InvalidInputError`` (bad file, options,
    or a checkpoint that is not SigLIP / SigLIP 2), ``ConflictError`` (output directory), ``ModelNotFoundError``,
    ``DeviceUnavailableError``.
    """
    import torch

    from img_search.embedding.hf import load_hf_encoder

    opts = options or FinetuneOptions()
    out = check_output_dir(Path(output_dir), opts.model, overwrite=overwrite)
    t0 = time.monotonic()
    limit = check_pixel_limit(opts.max_image_pixels)
    pair_set = read_pairs(train_data, max_image_pixels=limit)
    train, held_out = split_pairs(pair_set.pairs, opts.val_fraction, opts.seed)

    torch.manual_seed(opts.seed)
    encoder = load_hf_encoder(opts.model, device=opts.device, runtime="torch")
    family = encoder.info.family
    if family not in SIGMOID_FAMILIES:
        raise InvalidInputError(f"{encoder.info.model_id} is a {family} checkpoint; fine-tuning uses SigLIP's sigmoid "
                                f"loss and its learned bias, so it takes {' or '.join(SIGMOID_FAMILIES)} checkpoints")
    model = encoder.model
    device = encoder.device
    model.requires_grad_(True)
    report = FinetuneReport(
        model=encoder.info.model_id, family=family, output_dir=str(out), device=device, source=str(pair_set.source),
        n_train=len(train), n_held_out=len(held_out), problems=[str(p) for p in pair_set.problems],
        options=asdict(opts), logit_scale_before=float(model.logit_scale.detach().reshape(-1)[0]),
        logit_bias_before=float(model.logit_bias.detach().reshape(-1)[0]),
    )
    train_set = pair_dataset(encoder, train, limit)
    held_set = pair_dataset(encoder, held_out, limit) if held_out else None
    logger.info("fine-tuning %s (%s) on %s: %s, %d held out, batch %d, lr %g, %s",
                report.model, family, device, count(len(train), "training pair"), len(held_out), opts.batch_size,
                opts.lr, count(opts.num_epochs, "epoch"))
    if held_set is not None:
        report.before_loss, report.before = evaluate(model, held_set, batch_size=opts.batch_size, device=device)
        logger.info("before: held-out loss %.4f, recall@1 text->image %.3f, image->text %.3f (n=%d)",
                    report.before_loss, report.before.text_to_image, report.before.image_to_text, report.before.n)
    if on_baseline is not None:
        on_baseline(report)

    generator = torch.Generator()
    generator.manual_seed(opts.seed)
    loader: Any = torch.utils.data.DataLoader(
        train_set,  # type: ignore[arg-type]  # a map-style dataset by protocol
        batch_size=min(opts.batch_size, len(train_set)), shuffle=True, generator=generator,
        drop_last=len(train_set) > opts.batch_size, num_workers=opts.workers, collate_fn=collate,
        persistent_workers=False,
    )
    optimizer = torch.optim.AdamW(_param_groups(model, opts.weight_decay), lr=opts.lr)
    steps_per_epoch = len(loader)
    for epoch in range(1, opts.num_epochs + 1):
        e0 = time.monotonic()
        model.train()
        losses: list[float] = []
        seen = 0
        for step, (pixels, tokens) in enumerate(loader, start=1):
            image, text = _embed_batch(model, pixels, tokens, device)
            loss = sigmoid_loss(image, text, model.logit_scale, model.logit_bias)
            if not torch.isfinite(loss):
                raise InvalidInputError(f"the loss became {float(loss)} at epoch {epoch} step {step}; lower --lr "
                                        f"(now {opts.lr:g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
            seen += len(image)
            if step % opts.log_every == 0 or step == steps_per_epoch:
                logger.info("epoch %d/%d step %d/%d: loss %.4f (mean %.4f), %.1f pairs/s", epoch, opts.num_epochs,
                            step, steps_per_epoch, losses[-1], float(np.mean(losses)),
                            seen / max(time.monotonic() - e0, 1e-9))
        held_loss: float | None = None
        held_recall: Recall | None = None
        if held_set is not None:
            held_loss, held_recall = evaluate(model, held_set, batch_size=opts.batch_size, device=device)
        result = EpochResult(
            epoch=epoch, steps=len(losses), train_loss=float(np.mean(losses)), held_out_loss=held_loss,
            held_out_recall=held_recall, logit_scale=float(model.logit_scale.detach().reshape(-1)[0]),
            logit_bias=float(model.logit_bias.detach().reshape(-1)[0]), seconds=time.monotonic() - e0,
        )
        report.epochs.append(result)
        logger.info("epoch %d/%d done in %.1f s: train loss %.4f%s", epoch, opts.num_epochs, result.seconds,
                    result.train_loss,
                    "" if held_recall is None else
                    f", held-out loss {held_loss:.4f}, recall@1 text->image {held_recall.text_to_image:.3f}, "
                    f"image->text {held_recall.image_to_text:.3f}")
        if on_epoch is not None:
            on_epoch(result)

    model.eval()
    report.seconds = time.monotonic() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        encoder.processor.save_pretrained(tmp)
        (tmp / REPORT_FILENAME).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved the fine-tuned checkpoint to %s (use it with --model %s)", out, out)
    return report
