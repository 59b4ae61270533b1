"""Fine-tune a SigLIP / SigLIP 2 checkpoint on your own image-caption pairs (SigLIP's sigmoid loss).

    python scripts/finetune_siglip.py --train_data pairs.jsonl --num_epochs 3 --batch_size 64 \\
        --output-dir ~/models/siglip-mine [--model google/siglip-base-patch16-224] [--lr 1e-5] \\
        [--val-fraction 0.1] [--seed 0] [--device auto|cpu|cuda]
    img-search index ~/Pictures --model ~/models/siglip-mine

pairs.jsonl holds one {"image": PATH, "caption": TEXT} object a line; relative paths resolve against the file's
folder. Bad lines and unreadable images are reported with their line numbers and skipped. The held-out split
(--val-fraction, chosen by --seed) gives recall@1 before and after training; each epoch's train loss is printed.
Results go to stdout, progress to stderr; the checkpoint is written with save_pretrained (model + processor, and
finetune.json, the report). Exit status: 0 done, 2 bad input (pairs file, options), 1 other errors, 130
interrupted (nothing is written). See docs/FINETUNING.md; the logic is img_search.training.finetune.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from img_search.data.images import configure_pixel_limit
from img_search.errors import EXIT_INTERRUPTED, ImgSearchError, exit_code
from img_search.settings import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MODEL
from img_search.training.finetune import EpochResult, FinetuneOptions, FinetuneReport, Recall, finetune
from img_search.wording import count

DEFAULTS = FinetuneOptions()
DEFAULT_OUTPUT_DIR = "siglip-finetuned"


def _recall(recall: Recall | None) -> str:
    if recall is None:
        return "no held-out split (--val-fraction 0)"
    return (f"recall@1 text->image {recall.text_to_image:.3f}, image->text {recall.image_to_text:.3f} "
            f"({recall.n} held-out pairs)")


def _loss(loss: float | None) -> str:
    return "" if loss is None else f"held-out loss {loss:.4f}, "


def _print_baseline(report: FinetuneReport) -> None:
    skipped = f", {count(len(report.problems), 'line')} skipped (see the warnings above)" if report.problems else ""
    print(f"pairs: {report.n_train} to train on, {report.n_held_out} held out{skipped}")
    print(f"model: {report.model} ({report.family}) on {report.device}")
    print(f"before: {_loss(report.before_loss)}{_recall(report.before)}", flush=True)


def _print_epoch(result: EpochResult, total: int) -> None:
    held = "" if result.held_out_recall is None else (
        f", {_loss(result.held_out_loss)}recall@1 text->image {result.held_out_recall.text_to_image:.3f}, "
        f"image->text {result.held_out_recall.image_to_text:.3f}")
    print(f"epoch {result.epoch}/{total}: train loss {result.train_loss:.4f} ({result.steps} steps){held} "
          f"[{result.seconds:.1f} s]", flush=True)


def _print_result(report: FinetuneReport) -> None:
    print(f"after: {_loss(report.after_loss)}{_recall(report.after)}")
    last = report.epochs[-1]
    print(f"logit_scale t' {report.logit_scale_before:.4f} -> {last.logit_scale:.4f}, "
          f"logit_bias {report.logit_bias_before:.4f} -> {last.logit_bias:.4f}")
    print(f"saved to {report.output_dir} in {report.seconds:.1f} s; use it with: "
          f"img-search index FOLDER --model {report.output_dir}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # the seed's spellings (--train_data, --num_epochs, --batch_size) and the dashed ones both work
    p.add_argument("--train_data", "--train-data", dest="train_data", required=True, metavar="PAIRS.jsonl",
                   help="JSON Lines of {\"image\": PATH, \"caption\": TEXT}")
    p.add_argument("--num_epochs", "--num-epochs", dest="num_epochs", type=int, default=DEFAULTS.num_epochs)
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=DEFAULTS.batch_size,
                   help="pairs a step (>= 2) [default: %(default)s]")
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", default=DEFAULT_OUTPUT_DIR,
                   help="where the checkpoint is saved [default: ./%(default)s]")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    p.add_argument("--model", default=DEFAULT_MODEL, help="SigLIP / SigLIP 2 Hub id or local checkpoint directory "
                                                          "[default: %(default)s]")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="AdamW learning rate [default: %(default)g]")
    p.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float,
                   default=DEFAULTS.weight_decay, help="AdamW weight decay on matrices [default: %(default)g]")
    p.add_argument("--val-fraction", "--val_fraction", dest="val_fraction", type=float,
                   default=DEFAULTS.val_fraction, help="held-out share in [0, 1) [default: %(default)s]")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="split, shuffle and torch seed "
                                                                   "[default: %(default)s]")
    p.add_argument("--device", default=DEFAULTS.device, help="auto | cpu | cuda | cuda:N | mps [default: auto]")
    p.add_argument("--workers", type=int, default=DEFAULTS.workers,
                   help="image decoding processes (0: in the training process) [default: %(default)s]")
    p.add_argument("--max-image-pixels", dest="max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   help="refuse images with more pixels than this [default: %(default)s]")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only on stderr (no progress)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        configure_pixel_limit(args.max_image_pixels)
        options = FinetuneOptions(
            model=args.model, num_epochs=args.num_epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, val_fraction=args.val_fraction, seed=args.seed, device=args.device,
            workers=args.workers,
        )
        report = finetune(args.train_data, args.output_dir, options, overwrite=args.overwrite,
                          on_baseline=_print_baseline, on_epoch=lambda r: _print_epoch(r, options.num_epochs))
    except KeyboardInterrupt:
        print("error: interrupted; nothing was saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImgSearchError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {first}", file=sys.stderr)
        return exit_code(exc)
    _print_result(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
