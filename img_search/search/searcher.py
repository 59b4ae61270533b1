"""Text -> image and image -> image queries over a collection; the one entry point the CLI and the service share.

``open_searcher(settings, model)`` opens the collection read-only and returns a ``Searcher`` whose encoder is loaded
on the first query that needs it (an image already in the catalog is searched by its stored vector, no model).
The searcher owns calibration: the model's learned ``sigmoid(exp(t') * cos + b)`` (``search.calibration``), taken
from the loaded encoder (the truth) or, before it is loaded, from the values the catalog recorded.
A ``Searcher`` is safe to share between threads: the model is loaded once and runs one forward pass at a time.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.embedding.base import Encoder, LockedEncoder
from img_search.errors import DimensionMismatchError, ImageDecodeError, InvalidInputError, NotFoundError
from img_search.search import hybrid as fusion
from img_search.search.calibration import Calibration, check_temperature
from img_search.search.collection import DEFAULT_LIMIT, Collection, Hit, check_limit, check_threshold
from img_search.search.filters import SearchFilter
from img_search.search.query import ParsedQuery, combine, parse_query
from img_search.settings import Settings

SORTS = ("score", "date")
EXPAND_MERGES = ("max", "ensemble")
HYBRID_CANDIDATES = 100  # each ranking contributes at least this many candidates to fusion


@dataclass(frozen=True)
class SearchOptions:
    """How a search ranks and narrows its results, beyond the query itself (one object for the CLI and the service).

    ``filter``: ``search.filters.SearchFilter`` applied inside the search. ``hybrid``: ``search.hybrid`` mode
    (auto | off | rrf | weighted) and ``weight`` (weighted mode's embedding share, 0..1, seed 003's 0.6).
    ``expand``: also search the query's related terms (``search.expansion``), at most ``expand_limit`` of them, merged
    by ``expand_merge``: "max" of the calibrated scores per image (default) or "ensemble" (one query vector, the mean
    of the text embeddings). ``temperature``: the seed's ``sigmoid(T * cos)`` instead of the model's learned
    calibration, for this search only. ``sort``: "score" (best first) or "date" (newest first; the capture date, else
    the file's modification time, marked). Raises ``InvalidInputError`` on a bad value.
    """

    filter: SearchFilter | None = None
    hybrid: str = "auto"
    weight: float = fusion.DEFAULT_WEIGHT
    expand: bool = False
    expand_limit: int = 5
    expand_merge: str = "max"
    temperature: float | None = None
    sort: str = "score"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        fusion.check_mode(self.hybrid)
        object.__setattr__(self, "weight", fusion.check_weight(self.weight))
        if self.temperature is not None:
            object.__setattr__(self, "temperature", check_temperature(self.temperature))
        if self.sort not in SORTS:
            raise InvalidInputError(f"sort must be one of {', '.join(SORTS)}; got {self.sort!r}")
        if self.expand_merge not in EXPAND_MERGES:
            raise InvalidInputError(f"expansion merge must be one of {', '.join(EXPAND_MERGES)}; got "
                                    f"{self.expand_merge!r}")
        if isinstance(self.expand_limit, bool) or not isinstance(self.expand_limit, int) or self.expand_limit < 0:
            raise InvalidInputError(f"the expansion limit must be a whole number >= 0, got {self.expand_limit!r}")


@dataclass
class _Candidate:
    image_id: int
    cosine: float | None = None  # to the combined query vector (what the embedding side ranks by)
    probability: float | None = None
    embedding_score: float | None = None  # probability, else cosine: the embedding side's ranking key
    text_score: float | None = None

logger = logging.getLogger(__name__)


def encoder_factory(model: str, settings: Settings) -> Callable[[], Encoder]:
    """A zero-argument loader of ``model``'s full encoder (both towers) at the settings' device and precision, as
    `index` uses it (torch is imported when called)."""

    def factory() -> Encoder:
        from img_search.embedding import load_encoder

        return load_encoder(model, device=settings.device, precision=settings.precision)

    return factory


def query_encoder_factory(model: str, settings: Settings) -> Callable[[], Encoder]:
    """A zero-argument loader of ``model`` for queries: the fast text path (ONNX Runtime + tokenizers, no torch)
    that `index` prepared in the runtime cache, else the torch encoder (``embedding.load_text_encoder``). Image
    queries work through either."""

    def factory() -> Encoder:
        from img_search.embedding import load_text_encoder

        return load_text_encoder(model, precision=settings.precision, device=settings.device)

    return factory


def open_searcher(settings: Settings, model: str | None = None, *,
                  encoder: Encoder | Callable[[], Encoder] | None = None) -> Searcher:
    """A ``Searcher`` over the collection of ``model`` (default: ``settings.model``, else the catalog's main model)
    in ``settings.index_dir``, with the settings' search backend. Raises ``CatalogNotFoundError`` and the errors of
    ``Collection.open``."""
    collection = Collection.open(settings.index_dir, model or settings.model, settings.search)
    return Searcher(collection, encoder or query_encoder_factory(collection.model.name, settings))


class Searcher:
    """Text and image queries against a ``Collection``; the encoder is loaded only when a query needs it."""

    def __init__(self, collection: Collection, encoder: Encoder | Callable[[], Encoder]) -> None:
        self.collection = collection
        self._encoder: Encoder | None = None
        self._factory: Callable[[], Encoder] | None = None
        self._load_lock = threading.Lock()
        self._decode_mode: tuple[str | None, str | None] | None = None  # (generation, majority decode mode)
        model = collection.model
        self.calibration: Calibration | None = Calibration.maybe(model.logit_scale, model.logit_bias)
        if isinstance(encoder, Encoder):
            self._set_encoder(encoder)
        else:
            self._factory = encoder

    def _set_encoder(self, encoder: Encoder) -> None:
        model = self.collection.model
        if encoder.info.dim != model.dim:
            raise DimensionMismatchError(
                f"encoder {encoder.info.model_id!r} gives {encoder.info.dim}-dim vectors but the collection was "
                f"indexed with {model.name!r} ({model.dim} dims)"
            )
        # the live model's learned values are the truth (the catalog's copy may predate a fine-tune)
        self.calibration = Calibration.maybe(encoder.info.logit_scale, encoder.info.logit_bias)
        # one forward pass at a time (LockedEncoder): the searcher is shared by threads
        self._encoder = LockedEncoder.wrap(encoder)

    @property
    def encoder(self) -> Encoder:
        """The encoder, loaded on first use (once, even when several threads ask at the same time)."""
        if self._encoder is None:
            with self._load_lock:
                if self._encoder is None:
                    assert self._factory is not None
                    self._set_encoder(self._factory())
        assert self._encoder is not None
        return self._encoder

    @property
    def encoder_loaded(self) -> bool:
        """Whether the model is loaded (a query that needs it has run, or it was given)."""
        return self._encoder is not None

    def close(self) -> None:
        """Release the collection's files and connections (the encoder is left to the garbage collector)."""
        self.collection.close()

    def refresh(self) -> bool:
        """Pick up what `index` committed since the collection was opened (the model stays loaded)."""
        return self.collection.refresh()

    # ------------------------------------------------------------------ queries
    def _calibration_for(self, options: SearchOptions) -> Calibration | None:
        if options.temperature is not None:
            return Calibration.from_temperature(options.temperature)
        return self.calibration

    def search_text(self, query: str, *, limit: int = DEFAULT_LIMIT, threshold: float | None = None,
                    options: SearchOptions | None = None) -> list[Hit]:
        """The images that best match ``query`` (plain words, NOT-terms and +/- example images: ``search.query``),
        ranked by the embedding and, in hybrid mode, the text index (``search.hybrid``), within ``options.filter``.

        ``threshold`` applies to the calibrated probability where there is one (SigLIP, SigLIP 2, or any model with
        ``options.temperature``), else to the cosine (CLIP); a hit that matched the text index is kept whatever its
        probability (a text-only match has none). Raises ``InvalidInputError`` for an empty query, a query of only
        NOT-terms or a bad limit/threshold/option, ``NotFoundError`` for a missing +/- image.
        """
        options = options or SearchOptions()
        threshold = check_threshold(threshold)
        limit = check_limit(limit)
        parsed = parse_query(query)
        calibration = self._calibration_for(options)
        texts = [parsed.text] if parsed.text else []
        if options.expand and parsed.text:
            from img_search.search.expansion import expand_query

            texts = expand_query(parsed.text, options.expand_limit)
        encoded = self._encode_texts([*texts, *parsed.negative_texts])
        text_vecs, negative = encoded[: len(texts)], encoded[len(texts):]
        positive, own_ids = self._term_images(parsed.positive_images)
        negative_images, neg_ids = self._term_images(parsed.negative_images)
        negative = np.concatenate([negative, negative_images]) if len(negative_images) else negative
        if options.expand and options.expand_merge == "ensemble" and len(text_vecs) > 1:
            from img_search.search.expansion import prompt_ensemble

            text_vecs = prompt_ensemble(text_vecs)[None, :]
        exclude = frozenset(own_ids + neg_ids)
        allowed = self.collection.allowed_ids(options.filter)
        mode = self._mode(options.hybrid, parsed)
        pool = limit if mode == "off" else max(limit, HYBRID_CANDIDATES * (1 if limit < HYBRID_CANDIDATES else 2))

        candidates: dict[int, _Candidate] = {}
        queries = [combine(t, positive, negative) for t in text_vecs] or [combine(None, positive, negative)]
        found = self.collection.search(np.stack(queries), limit=pool, exclude_ids=exclude, allowed=allowed)
        plain = not parsed.has_terms
        for qi, pairs in enumerate(found):
            if not pairs:
                continue
            cosines = np.fromiter((c for _, c in pairs), np.float64, len(pairs))
            # ranked by the (calibrated) cosine to the combined query; the probability shown is the model's for
            # the words alone, whatever NOT-terms or example images re-ordered the results
            keys = calibration.probability(cosines) if calibration is not None else cosines
            probs: NDArray[np.float64] | None = None
            if calibration is not None and len(texts):
                probs = keys if plain else calibration.probability(
                    self._cosines_to(text_vecs[min(qi, len(text_vecs) - 1)], [r.id for r, _ in pairs]))
            for j, (row, cos) in enumerate(pairs):
                prob = float(probs[j]) if probs is not None else None
                key = float(keys[j])
                cand = candidates.get(row.id)
                if cand is None or (cand.embedding_score is not None and key > cand.embedding_score):
                    candidates[row.id] = _Candidate(row.id, cos, prob, key)
        text_ranked: list[tuple[int, float]] = []
        if mode != "off":
            text_ranked = self._text_matches(texts, parsed, pool, allowed, exclude)
            for image_id, bm25 in text_ranked:
                candidates.setdefault(image_id, _Candidate(image_id)).text_score = bm25
        ordered = self._fuse(candidates, text_ranked, mode, options.weight, calibrated=calibration is not None)
        hits = self._to_hits(ordered, candidates, threshold, limit)
        return self._sorted(hits, options.sort)

    def _mode(self, requested: str, parsed: ParsedQuery) -> str:
        if not parsed.text:
            return "off"  # nothing to match against the text index
        if requested != "auto":
            return requested
        return "rrf" if self.collection.has_own_text() else "off"

    def _text_matches(self, texts: Sequence[str], parsed: ParsedQuery, pool: int, allowed: NDArray[np.int64] | None,
                      exclude: frozenset[int]) -> list[tuple[int, float]]:
        """The text index's ranking for the query's words (and its expansions): (image id, BM25), best first, within
        the filter, without images that match a NOT-term."""
        from img_search.catalog.text_index import query_terms

        catalog = self.collection.catalog()
        terms = list(dict.fromkeys(t for text in texts for t in query_terms(text)))
        # a filter can leave few of the text matches: ask the index for all of them then
        ranked = catalog.text_search(terms, pool if allowed is None else len(self.collection) + 1)
        banned = set(exclude)
        for negative in parsed.negative_texts:
            banned.update(i for i, _ in catalog.text_search(query_terms(negative), len(self.collection) + 1))
        allowed_set = None if allowed is None else set(allowed.tolist())
        return [(i, s) for i, s in ranked if i not in banned and (allowed_set is None or i in allowed_set)][:pool]

    def _fuse(self, candidates: dict[int, _Candidate], text_ranked: list[tuple[int, float]], mode: str,
              weight: float, *, calibrated: bool) -> list[tuple[int, float]]:
        """(image id, score) best first: the embedding ranking, or its fusion with the text ranking."""
        embedded = sorted((c for c in candidates.values() if c.embedding_score is not None),
                          key=lambda c: -float(c.embedding_score or 0.0))
        if mode == "off" or not text_ranked:
            return [(c.image_id, float(c.embedding_score or 0.0)) for c in embedded]
        if mode == "rrf":
            fused = fusion.rrf([[c.image_id for c in embedded], [i for i, _ in text_ranked]])
        else:
            if calibrated:
                emb = {c.image_id: float(c.embedding_score or 0.0) for c in embedded}
            else:  # no calibration (CLIP): cosines min-max scaled over the candidates
                emb = fusion.min_max({c.image_id: float(c.cosine or 0.0) for c in embedded})
            fused = fusion.weighted(emb, fusion.scale_text_scores(dict(text_ranked)), weight)
        return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))

    def _to_hits(self, ordered: list[tuple[int, float]], candidates: dict[int, _Candidate], threshold: float | None,
                 limit: int) -> list[Hit]:
        rows = self.collection.catalog().images_by_id([i for i, _ in ordered[: limit * 2 + 64]], live_only=True)
        hits: list[Hit] = []
        for image_id, score in ordered:
            cand = candidates[image_id]
            matched = ("both" if cand.text_score is not None else "embedding") if cand.cosine is not None else "text"
            if threshold is not None and matched == "embedding":
                value = cand.probability if cand.probability is not None else cand.cosine
                if value is None or value < threshold:
                    continue
            row = rows.get(image_id)
            if row is None:
                row = self.collection.catalog().images_by_id([image_id], live_only=True).get(image_id)
                if row is None:
                    continue
            hits.append(Hit(row.path, cand.cosine, cand.probability, row.id, row.width, row.height, score=score,
                            text_score=cand.text_score, matched=matched))
            if len(hits) == limit:
                break
        return hits

    def _sorted(self, hits: list[Hit], sort: str) -> list[Hit]:
        """``hits`` as ranked, or newest first (``sort="date"``; undated last), each with its date and source."""
        if sort != "date" or not hits:
            return hits
        dates = self.collection.filter_index().date_of([h.image_id for h in hits])
        # ordered by the full date (file mtimes carry microseconds), shown to the second for both sources
        full = [d.isoformat() if d is not None else None for d, _ in dates]
        order = sorted(range(len(hits)), key=lambda i: (full[i] is None, _neg_iso(full[i])))
        return [replace(hits[i], date=d.isoformat(timespec="seconds") if d else None, date_source=src)
                for i in order for d, src in [dates[i]]]

    def _cosines_to(self, vector: NDArray[np.float32], image_ids: list[int]) -> NDArray[np.float64]:
        """Cosines of the stored vectors of ``image_ids`` to ``vector`` (float64, same order; NaN when gone)."""
        ids, vectors = self.collection.catalog().live_vectors(self.collection.model.id, self.collection.model.dim or 0,
                                                              image_ids)
        by_id = dict(zip(ids.tolist(), (vectors @ np.asarray(vector, np.float32)).tolist(), strict=True))
        return np.array([by_id.get(i, math.nan) for i in image_ids], np.float64)

    def _term_images(self, paths: Sequence[str]) -> tuple[NDArray[np.float32], list[int]]:
        """Vectors ((n, dim) float32) of +/- example images and the catalog ids of those that are indexed.

        Raises ``ImageDecodeError`` naming the file when one cannot be read as an image, ``NotFoundError`` when one
        does not exist."""
        vectors, ids = [], []
        for path in paths:
            try:
                vector, own_id = self._image_vector(path, None)
            except ImageDecodeError as exc:  # the decoder's message says why, not which of the query's images
                raise ImageDecodeError(f"query image {path}: {exc}") from None
            vectors.append(vector)
            if own_id is not None:
                ids.append(own_id)
        dim = self.collection.model.dim or 0
        return (np.stack(vectors).astype(np.float32) if vectors else np.empty((0, dim), np.float32)), ids

    def search_image(self, path: str, *, limit: int = DEFAULT_LIMIT, threshold: float | None = None,
                     max_image_pixels: int | None = None, options: SearchOptions | None = None) -> list[Hit]:
        """Images similar to the one at ``path`` (excluding that file itself); cosine only, no probability.
        ``options``: its filter and sort apply (the rest is for text queries).

        Raises ``ImageDecodeError`` (an ``InvalidInputError``) when the file cannot be read as an image.
        """
        threshold = check_threshold(threshold)
        vec, own_id = self._image_vector(path, max_image_pixels)
        exclude = frozenset({own_id}) if own_id is not None else frozenset()
        return self._image_hits(vec, limit, threshold, options, exclude)

    def search_bytes(self, data: bytes, *, limit: int = DEFAULT_LIMIT, threshold: float | None = None,
                     options: SearchOptions | None = None) -> list[Hit]:
        """Images similar to the image file content ``data`` (an upload); cosine only, no probability.

        Content that is indexed is searched by its stored vector (no model run) and finds its own catalog copies
        too; other content is decoded (``ImageDecodeError`` when it is not an image) and embedded.
        """
        from img_search.data.images import content_hash, decode_image

        threshold = check_threshold(threshold)
        collection = self.collection
        vector = collection.catalog().vector_for(collection.model.id, content_hash(data))
        if vector is None:
            vector = self._encode_images([decode_image(data, min_side=self._query_decode_side())])[0]
        return self._image_hits(np.asarray(vector, np.float32), limit, threshold, options, frozenset())

    def search_id(self, image_id: int, *, limit: int = DEFAULT_LIMIT, threshold: float | None = None,
                  options: SearchOptions | None = None) -> list[Hit]:
        """Images similar to the catalog image ``image_id``, by its stored vector (no model run), itself left out.

        Raises ``NotFoundError`` when no live image has that id or the collection holds no vector for it.
        """
        threshold = check_threshold(threshold)
        catalog = self.collection.catalog()
        row = catalog.images_by_id([image_id], live_only=True).get(image_id)
        if row is None or row.content_hash is None:
            raise NotFoundError(f"no indexed image has id {image_id}")
        vector = catalog.vector_for(self.collection.model.id, row.content_hash)
        if vector is None:
            raise NotFoundError(f"image {image_id} has no vector for model {self.collection.model.name!r} (not "
                                "embedded with it yet)")
        return self._image_hits(vector, limit, threshold, options, frozenset({image_id}))

    def _image_hits(self, vector: NDArray[np.float32], limit: int, threshold: float | None,
                    options: SearchOptions | None, exclude: frozenset[int]) -> list[Hit]:
        options = options or SearchOptions()
        allowed = self.collection.allowed_ids(options.filter)
        hits = self._hits(vector[None, :], limit, threshold, calibrated=False, exclude_ids=exclude,
                          allowed=allowed)[0]
        return self._sorted(hits, options.sort)

    def search_vectors(self, queries: NDArray[np.float32], *, limit: int = DEFAULT_LIMIT,
                       threshold: float | None = None, calibrated: bool = True) -> list[list[Hit]]:
        """Hits for each row of ``queries`` (float32, (n, dim)) of the collection's embedding space."""
        return self._hits(queries, limit, check_threshold(threshold), calibrated=calibrated)

    def _hits(self, queries: NDArray[np.float32], limit: int, threshold: float | None, *, calibrated: bool,
              exclude_ids: frozenset[int] = frozenset(), allowed: NDArray[np.int64] | None = None
              ) -> list[list[Hit]]:
        calibration = self.calibration if calibrated else None
        results = []
        for pairs in self.collection.search(queries, limit=limit, exclude_ids=exclude_ids, allowed=allowed):
            cosines = np.fromiter((c for _, c in pairs), dtype=np.float64, count=len(pairs))
            probs = calibration.probability(cosines) if calibration is not None else None
            hits = []
            for j, (row, cos) in enumerate(pairs):
                prob = float(probs[j]) if probs is not None else None
                score = prob if prob is not None else cos
                if threshold is not None and score < threshold:
                    continue
                hits.append(Hit(row.path, cos, prob, row.id, row.width, row.height, score=score))
            results.append(hits)
        return results

    def _image_vector(self, path: str, max_image_pixels: int | None) -> tuple[NDArray[np.float32], int | None]:
        """The query image's vector: the stored one when its bytes are indexed, else embedded now."""
        from img_search.data.images import check_query_file, content_hash, decode_image, read_file
        from img_search.data.paths import canonical_folder

        abspath = check_query_file(path)
        data = read_file(abspath, max_image_pixels=max_image_pixels)
        catalog = self.collection.catalog()
        # the catalog names files under their folder's canonical path (symlinks and bind mounts resolved)
        folder, name = os.path.split(abspath)
        row = catalog.image(os.path.join(canonical_folder(folder), name)) or catalog.image(abspath)
        own_id = row.id if row is not None else None
        stored = catalog.vector_for(self.collection.model.id, content_hash(data))
        if stored is not None:
            return stored, own_id
        kwargs = {} if max_image_pixels is None else {"max_image_pixels": max_image_pixels}
        image = decode_image(data, min_side=self._query_decode_side(), **kwargs)
        return self._encode_images([image])[0], own_id

    def _query_decode_side(self) -> int | None:
        """``decode_image``'s ``min_side`` for an image query embedded now: decoded as most of the collection's
        vectors were (``Catalog.decode_counts``: full, or JPEGs at a reduced scale for this model's input side).
        The mode is counted once per saved generation of the collection (a GROUP BY over its vectors)."""
        from img_search.data.images import reduced_decode_side

        generation = self.collection.generation
        cached = self._decode_mode
        if cached is None or cached[0] != generation:
            counts = self.collection.catalog().decode_counts(self.collection.model.id)
            cached = self._decode_mode = (generation, next(iter(counts), None))
        mode = cached[1]
        if mode is None:
            return None
        return reduced_decode_side(getattr(self.encoder.image_preprocessor(), "input_side", None), mode)

    def _encode_images(self, images: list[Any]) -> NDArray[np.float32]:
        return self.encoder.encode_images(images)

    def _encode_texts(self, texts: list[str]) -> NDArray[np.float32]:
        dim = self.collection.model.dim or 0
        if not texts:
            return np.empty((0, dim), np.float32)
        # one text per forward pass: a dynamically quantised (int8) text tower scales its activations per batch, so a
        # query encoded beside its expansions or NOT-terms would score slightly differently from the same query alone
        return np.concatenate([np.asarray(self.encoder.encode_texts([t]), np.float32) for t in texts])


def _neg_iso(date: str | None) -> str:
    """A sort key that orders ISO dates newest first (character-wise complement)."""
    return "".join(chr(0x10FFFF - ord(c)) for c in date) if date else ""
