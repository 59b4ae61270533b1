"""A compact int8 copy of a generation's vectors, for the first pass of an exact filtered search.

Exactly scoring a filter's allowed rows from a generation's float32 ``vectors.npy`` (``store.VectorLookup.top_k``)
is memory bound: 3 KB per 768-d row scattered through a 300 MB file, ~0.5 us a row (5,072 rows: ~3 ms, against ~1 ms
for an unfiltered HNSW query; docs/PERFORMANCE.md "Filtered search"). The int8 copy is 4x smaller: each row is
scaled to unit length, then symmetrically quantised with its own scale (``code = rint(u / s)``, ``s = max|u| / 127``),
so ``code . q8 * s`` ranks rows by cosine up to the rounding error. A single-threaded SIMD int8 kernel (numkong's
``cdist(metric="dot")``, its kernel chosen at run time for the CPU) scores the allowed rows, gathered
``_GATHER_BLOCK`` at a time; the best ``candidate_count(k)`` are then scored again exactly from ``vectors.npy`` by the
float32 path, so the hits and their cosines are exactly what float32 gives whenever the true top k is among the
candidates (measured by ``bench/filtered_search.py --recall``: never missed with 42 candidates for k 10 in 9,000
queries; the worst int8 rank of a true top-10 row was 15, docs/PERFORMANCE.md "Filtered search").

Files, written into the generation's directory with the others (so they appear atomically with it, store.py):

    vectors.i8.npy          int8 (n, dim), rows aligned with ids.npy          76.8 MB at 100,000 x 768
    vectors.i8.scales.npy   float32 (n,): cosine ~ scale * (code . q)         0.4 MB

Both are optional: a generation without them (saved before they were kept), or a process without numkong (in the
``ann`` extra, and a dependency of usearch; not in the default install), scores the float32 rows as before.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

CODES_FILE = "vectors.i8.npy"
SCALES_FILE = "vectors.i8.scales.npy"
# int8 levels each side of zero (symmetric quantisation: -127..127, -128 unused)
LEVELS = 127
# rows gathered and scored at a time for one query (1,024 x 768 int8 = 768 KB: stays in a 2 MB L2 cache; 256 to 4,096
# measured within 5 % of each other at 5 % and 20 % of 100,000 rows)
_GATHER_BLOCK = 1024
# rows quantised at a time when a generation is saved (8,192 x 768 float32 = 24 MB of temporaries at most)
_QUANT_BLOCK = 8192
# candidates re-scored in float32: max(CANDIDATE_FACTOR * k, k + CANDIDATE_PAD). The worst int8 rank of a true top-10
# row over 1,000 queries each at 1 %, 5 % and 20 % of 100,000 768-d rows (bench/filtered_search.py --recall) was 15
# (random vectors), 13 (200 clusters) and 14 (anisotropic, 500 clusters, text-like queries offset from the images):
# 42 candidates for k 10 leave a margin of 2.8x
CANDIDATE_FACTOR = 4
CANDIDATE_PAD = 32
# below this many rows the float32 pass alone is as fast (the int8 pass's fixed cost: quantising the query, numkong's
# call, the partition): measured on 100,000 x 768 (VectorLookup.top_k, p50 int8 / float32): 100 rows 0.060 / 0.046 ms,
# 400 rows 0.091 / 0.103 ms, 800 rows 0.134 / 0.186 ms, 5,000 rows 0.85 / 1.84 ms
MIN_ROWS = 512


def worth_it(n_rows: int, k: int) -> bool:
    """Whether the int8 pass pays off for a top-``k`` search over ``n_rows`` saved rows."""
    return n_rows >= MIN_ROWS and n_rows > candidate_count(k)


def candidate_count(k: int) -> int:
    """How many of the int8 pass's best rows are re-scored in float32 for a top-``k`` search."""
    return max(CANDIDATE_FACTOR * k, k + CANDIDATE_PAD)


def quantize(vectors: NDArray[np.float32]) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """int8 codes ((n, dim)) and scales ((n,) float32) of (n, dim) float32 ``vectors`` of any length: each row is
    divided by its L2 norm, then by ``max|u| / LEVELS`` and rounded (ties to even). A zero row gets codes 0, scale 0."""
    vectors = np.asarray(vectors)
    n = vectors.shape[0]
    codes = np.empty(vectors.shape, np.int8)
    scales = np.zeros(n, np.float32)
    for start in range(0, n, _QUANT_BLOCK):
        block = np.asarray(vectors[start : start + _QUANT_BLOCK], np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        unit = block / np.where(norms > 0, norms, 1.0)[:, None]
        peak = np.abs(unit).max(axis=1) if unit.shape[1] else np.zeros(len(unit), np.float32)
        scale = (peak / LEVELS).astype(np.float32)
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
        codes[start : start + len(block)] = np.clip(np.rint(unit * inv[:, None]), -LEVELS, LEVELS)
        scales[start : start + len(block)] = scale
    return codes, scales


def save(directory: Path, vectors: NDArray[np.float32]) -> None:
    """Write the int8 copy of ``vectors`` ((n, dim) float32, rows aligned with the generation's ids) into
    ``directory`` (the writer's temporary generation directory; store.py renames it into place with the rest)."""
    codes, scales = quantize(vectors)
    np.save(directory / CODES_FILE, codes)
    np.save(directory / SCALES_FILE, scales)


def exists(directory: Path) -> bool:
    return (directory / CODES_FILE).exists() and (directory / SCALES_FILE).exists()


@functools.cache
def kernel() -> Any:
    """numkong (the SIMD kernels usearch depends on; ``ann`` extra) when it imports and scores int8 rows, else None
    (then exact filtered searches read the float32 rows only)."""
    try:
        import numkong
    except ImportError:
        return None
    try:  # an old or broken build without the int8 dot kernel is not used
        probe = np.zeros((1, 1), np.float32)
        numkong.cdist(np.ones((1, 4), np.int8), np.full((1, 4), 3, np.int8), metric="dot", out=probe)
    except Exception as exc:  # any failure of the optional kernel means: not used
        logger.info("numkong cannot score int8 rows (%s): exact filtered searches read float32 rows", exc)
        return None
    if probe[0, 0] != 12.0:
        logger.info("numkong's int8 dot product gave %s for 12: not used", probe[0, 0])
        return None
    return numkong


class CompactVectors:
    """A generation's int8 copy: ``codes`` int8 (n, dim) (memory-mapped) and ``scales`` float32 (n,)."""

    def __init__(self, codes: NDArray[np.int8], scales: NDArray[np.float32]) -> None:
        self.codes, self.scales = codes, np.ascontiguousarray(scales, np.float32)
        self._local = threading.local()  # per-thread gather buffer

    @classmethod
    def load(cls, directory: Path, n: int, dim: int) -> CompactVectors | None:
        """The copy in ``directory``, memory-mapped read-only; None when it has none, cannot be read or does not
        match ``n`` rows of ``dim`` (logged; the float32 rows are used then)."""
        try:
            codes = np.load(directory / CODES_FILE, mmap_mode="r")
            scales = np.load(directory / SCALES_FILE)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # damaged: the float32 rows still answer, exactly
            logger.warning("cannot read the int8 copy in %s (%s): not used", directory, exc)
            return None
        if codes.shape != (n, dim) or codes.dtype != np.int8 or scales.shape != (n,) or scales.dtype != np.float32:
            logger.warning(
                "%s holds %s %s codes and %s %s scales for %d ids of dim %d: not used",
                directory / CODES_FILE,
                codes.shape,
                codes.dtype,
                scales.shape,
                scales.dtype,
                n,
                dim,
            )
            return None
        return cls(codes, scales)

    def scores(self, q: NDArray[np.float32], rows: NDArray[np.intp]) -> NDArray[np.float32]:
        """Approximate cosines ((rows.size,) float32) of unit (dim,) float32 ``q`` with the saved rows ``rows``
        (ascending positions), on this thread only: the query is quantised like the rows, the rows' codes gathered
        ``_GATHER_BLOCK`` at a time into a per-thread buffer and scored by numkong's int8 dot product (exact in
        int32, returned as float32: at most 127 * 127 * dim, below 2**24 up to dim 1,040). Raises RuntimeError when
        numkong is not available (``kernel()`` is None)."""
        nk = kernel()
        if nk is None:
            raise RuntimeError("numkong is not installed: the int8 pass is not available")
        dim = self.codes.shape[1]
        peak = float(np.abs(q).max()) if q.size else 0.0
        q_scale = peak / LEVELS if peak > 0 else 1.0
        q8 = np.rint(q / q_scale).astype(np.int8)[None, :]
        buf: NDArray[np.int8] | None = getattr(self._local, "buf", None)
        if buf is None or buf.shape[1] != dim:
            buf = self._local.buf = np.empty((_GATHER_BLOCK, dim), np.int8)
        out = np.empty(rows.size, np.float32)
        for start in range(0, rows.size, _GATHER_BLOCK):
            part = rows[start : start + _GATHER_BLOCK]
            block = np.take(self.codes, part, axis=0, out=buf[: part.size], mode="clip")  # "clip": unbuffered
            nk.cdist(q8, block, metric="dot", out=out[None, start : start + part.size])
        out *= self.scales[rows]
        out *= np.float32(q_scale)
        return out
