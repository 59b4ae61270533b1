"""Request and response schemas of the HTTP API, as families (``SearchRequest`` / ``SearchHit`` /
``SearchResponse``, ``ImageInfo``, ``HealthResponse``, ``RolloutRequest`` / ``RolloutResponse``, ``ErrorResponse``).

Bounds here are the API's documented contract (docs/SERVICE.md): ``limit`` 1..``MAX_LIMIT``, queries up to
``MAX_QUERY_CHARS`` characters, ids up to ``MAX_KEY_CHARS``. Every request model forbids unknown fields, so a
misspelt field is a 422, not a silently ignored option, and validates strictly: ``"limit": "10"`` or
``"force": 1`` are refused rather than guessed at (a JSON integer is accepted where a number is expected).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

from img_search.search.collection import DEFAULT_LIMIT, Hit

MAX_LIMIT = 1000  # hits per request: ample for a page of results, and bounds the work one request can ask for
MAX_QUERY_CHARS = 1000  # SigLIP reads 64 tokens; a longer text is refused rather than silently cut this far off
MAX_KEY_CHARS = 256  # user ids, session keys, collection and model names
MAX_IMAGE_ID = 2**63 - 1  # SQLite's INTEGER PRIMARY KEY range
MAX_JSON_BODY_BYTES = 64 * 1024  # a search request is a few hundred bytes
UPLOAD_PATH = "/api/v1/search/image"  # the one route whose body may be larger (service.max_upload_bytes)
# a character Python's str.strip() keeps, written so JSON Schema (ECMA) and pydantic (Rust regex) read it alike
NOT_BLANK = r"[^\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"



def _integral(value: Any) -> Any:
    # JSON Schema counts 5.0 as an integer; so does the API (strict mode still refuses "5" and 5.5)
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]
# constraints before the validator, so that they reach the JSON schema as minimum / maximum
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description=f"How many hits to return (1-{MAX_LIMIT}).",),
                  BeforeValidator(_integral)]
Threshold = Annotated[
    float | None,
    Field(ge=0, le=1, allow_inf_nan=False,
          description="Drop hits below this calibrated probability (SigLIP text queries) or below this cosine (CLIP; "
                      "image queries): 0 to 1."),
]
ModelName = Annotated[
    str | None,
    Field(min_length=1, max_length=MAX_KEY_CHARS,
          description="A collection name (image_assets, image_assets_siglip, model-N) or a model's Hub id / path. "
                      "Omitted: the rollout decides."),
]


def _user_id_type(value: Any) -> Any:
    # one message for a value of the wrong JSON type (the union's two members each gave theirs, named by pydantic's
    # internal tags: "body.user_id.constrained-str: ...; body.user_id.function-before[_integral(), int]: ...")
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"a user id is a string or a whole number, got {json.dumps(value)[:40]}")


UserId = Annotated[
    Annotated[StrictStr, Field(min_length=1, max_length=MAX_KEY_CHARS)] | JsonInt | None,
    Field(description="Sticky rollout bucket: a hash of this id (23 and \"23\" are one user)."),
    BeforeValidator(_user_id_type),
]
SessionKey = Annotated[
    str | None,
    Field(min_length=1, max_length=MAX_KEY_CHARS,
          description="For anonymous callers: a sticky bucket per session. Without user_id or session_key the "
                      "bucket is random per request."),
]


ShortText = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS)]
# the shapes the library accepts (search.filters); values inside a shape can still be refused (a 13th month, a
# latitude of 95, --before not after --after): those are 422s with the reason
DATE_PATTERN = r"^\s*\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*$"
NEAR_PATTERN = r"^\s*[-+]?\d+(\.\d+)?\s*,\s*[-+]?\d+(\.\d+)?\s*,\s*\d+(\.\d+)?\s*([kK][mM]|[mM]|[mM][iI])\s*$"
SIZE_PATTERN = r"^\s*\d+\s*([xX×]\s*\d+)?\s*$"
DateText = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS, pattern=DATE_PATTERN)]


class SearchFilters(BaseModel):
    """Filters applied inside the search (``search.filters``): every one given must hold; within a list, any value."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"after": "2023-05-01", "before": "2023-09-01", "near": "48.85,2.35,10km",
                      "cameras": ["Pixel 7"]}],
    })

    after: DateText | None = Field(None, description="Taken on or after this local date (YYYY-MM-DD[THH:MM]).")
    before: DateText | None = Field(None, description="Taken before this local date.")
    near: Annotated[str, Field(max_length=MAX_KEY_CHARS, pattern=NEAR_PATTERN)] | None = Field(
        None, description="LAT,LON,RADIUS: decimal degrees and km / m / mi.")
    cameras: list[ShortText] = Field(default_factory=list, max_length=32,
                                     description="Camera make/model contains any of these (case-insensitive).")
    folders: list[ShortText] = Field(default_factory=list, max_length=32,
                                     description="Absolute folder paths on the server: images below any of them.")
    tags: list[ShortText] = Field(default_factory=list, max_length=32, description="Carries any of these tags.")
    has_text: bool | None = Field(None, description="With (true) or without (false) text read from the image.")
    min_size: Annotated[str, Field(max_length=MAX_KEY_CHARS, pattern=SIZE_PATTERN)] | None = Field(
        None, description="WIDTHxHEIGHT or N pixels at least.")

    def to_filter(self) -> Any:
        """The library's ``SearchFilter`` (``InvalidInputError`` -> 422 on a bad value)."""
        from img_search.search.filters import build_filter

        return build_filter(after=self.after, before=self.before, near=self.near, cameras=self.cameras,
                            folders=self.folders, tags=self.tags, has_text=self.has_text, min_size=self.min_size)


class SearchRequest(BaseModel):
    """A text query."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"query": "sunset over mountains", "limit": 5},
                     {"query": "a dog on the beach", "limit": 10, "threshold": 0.01, "user_id": 23}],
    })

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=NOT_BLANK,
                       description="What to look for, in words (not only white space).")
    limit: Limit = DEFAULT_LIMIT
    threshold: Threshold = None
    model: ModelName = None
    user_id: UserId = None
    session_key: SessionKey = None
    filters: SearchFilters | None = None
    sort: Literal["score", "date"] = Field("score", description="score: best first; date: newest first.")
    hybrid: Literal["auto", "off", "rrf", "weighted"] = Field(
        "auto", description="Blend in the text index: rrf (reciprocal rank fusion), weighted, off; auto: rrf when "
                            "the collection holds text of its own.")
    weight: float = Field(0.6, ge=0.0, le=1.0, allow_inf_nan=False,
                          description="hybrid=weighted: the embedding's share W of W * embedding + (1 - W) * text.")
    expand: bool = Field(False, description="Also search related terms (query expansion).")
    expand_merge: Literal["max", "ensemble"] = "max"
    temperature: float | None = Field(None, gt=0.0, le=1000.0, allow_inf_nan=False,
                                      description="sigmoid(T * cos) instead of the model's learned calibration.")

    def options(self) -> Any:
        """The library's ``SearchOptions`` of this request."""
        from img_search.search.searcher import SearchOptions

        flt = self.filters.to_filter() if self.filters is not None else None
        return SearchOptions(filter=flt or None, hybrid=self.hybrid, weight=self.weight, expand=self.expand,
                             expand_merge=self.expand_merge, temperature=self.temperature, sort=self.sort)


class SearchHit(BaseModel):
    """One result: the catalog image, its cosine to the query, the calibrated probability where the model has one
    (SigLIP text queries; null for CLIP and image queries), and the model and collection that answered."""

    id: int = Field(description="Catalog image id (GET /api/v1/images/{id}).")
    path: str = Field(description="Absolute path of the file (non-UTF-8 bytes as surrogate escapes, \\udcXX).")
    cosine: float | None = Field(description="Cosine to the query (null for a match found by text alone).")
    probability: float | None
    width: int | None
    height: int | None
    model: str
    collection: str
    score: float | None = Field(None, description="What the hits are ordered by: the fused score in hybrid "
                                                  "search, else the probability, else the cosine.")
    text_score: float | None = Field(None, description="BM25 of the text-index match, when there is one.")
    matched: Literal["embedding", "text", "both"] = "embedding"
    date: str | None = Field(None, description="sort=date: local date-time of the photo (ISO 8601).")
    date_source: Literal["taken", "modified"] | None = Field(
        None, description="taken: EXIF capture time; modified: the file's mtime (no capture date).")

    @classmethod
    def of(cls, hit: Hit, model: str, collection: str) -> SearchHit:
        d = hit.to_dict()
        return cls(id=hit.image_id, path=hit.path, cosine=hit.cosine, probability=hit.probability, width=hit.width,
                   height=hit.height, model=model, collection=collection, score=d["score"],
                   text_score=hit.text_score, matched=hit.matched, date=hit.date,  # type: ignore[arg-type]
                   date_source=hit.date_source)  # type: ignore[arg-type]


class Routing(BaseModel):
    """Why this collection answered."""

    collection: str
    rule: Literal["requested", "rollout", "incomplete", "forced", "fallback", "only_collection", "main_model"] = Field(
        description="requested: named in the request; rollout: the SigLIP rollout; incomplete: the rollout chose "
                    "SigLIP but its collection is incomplete, so CLIP answered; forced: SigLIP although incomplete "
                    "(admin force); fallback: the CLIP collection is empty; only_collection: one of the two is "
                    "indexed; main_model: neither is, the model with most images answered.")
    reason: str
    bucket: float | None = Field(None, description="The request's rollout bucket in [0, 100), when consulted.")
    sticky_by: Literal["user_id", "session_key", "random"] | None = None
    percentage: float | None = Field(None, description="The SigLIP rollout percentage applied.")
    forced: bool = False


class SearchResponse(BaseModel):
    """Hits, best first, and which collection answered."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "google/siglip-base-patch16-224", "collection": "image_assets_siglip",
        "hits": [{"id": 17, "path": "/photos/alps/IMG_0412.jpg", "cosine": 0.1432, "probability": 0.8123,
                  "width": 4032, "height": 3024, "model": "google/siglip-base-patch16-224",
                  "collection": "image_assets_siglip"}],
        "routing": {"collection": "image_assets_siglip", "rule": "rollout",
                    "reason": "bucket 3.17 < SigLIP rollout 10%", "bucket": 3.17, "sticky_by": "user_id",
                    "percentage": 10.0, "forced": False},
        "took_ms": 12.5,
    }]})

    model: str
    collection: str
    hits: list[SearchHit]
    routing: Routing
    took_ms: float = Field(description="Time spent in the search, milliseconds.")


class ImageInfo(BaseModel):
    """A catalog image's metadata."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 17, "path": "/photos/alps/IMG_0412.jpg", "status": "ok", "error": None, "size_bytes": 2481152,
        "modified": "2024-07-01T18:22:05+00:00", "width": 4032, "height": 3024,
        "content_hash": "9f2c4e1a0b7d3c5e8f1a2b3c4d5e6f70", "collections": ["image_assets", "image_assets_siglip"],
        "thumbnail_url": "/api/v1/images/17/thumbnail", "similar_url": "/api/v1/images/17/similar",
    }]})

    id: int
    path: str
    status: str = Field(description="ok (searchable), error (could not be indexed) or deleted (gone from its folder).")
    error: str | None = Field(description="Why the file could not be indexed (status error).")
    size_bytes: int | None
    modified: str | None = Field(description="File modification time, ISO 8601 UTC.")
    width: int | None
    height: int | None
    content_hash: str | None = Field(description="BLAKE2b-128 of the file's bytes, hex.")
    collections: list[str] = Field(description="Collections holding a vector of this image.")
    thumbnail_url: str | None
    similar_url: str | None


class CollectionStatus(BaseModel):
    name: str
    model: str
    family: str | None
    role: Literal["clip", "siglip"] | None = Field(description="Its part in the SigLIP rollout, if any.")
    dim: int | None
    points: int = Field(description="Live vectors (searchable images).")
    backend: str | None = Field(description="Search backend: exact, or the ANN backend above the threshold.")
    generation: str | None = Field(description="Saved index generation read (null: built in memory).")
    model_loaded: bool
    problem: str | None = Field(description="Why it is not served or its model is not loaded.")


class RolloutStatus(BaseModel):
    """The SigLIP rollout as it applies to the next request."""

    percentage: float = Field(ge=0, le=100)
    force: bool
    source: Literal["settings", "admin"]
    changed_at: float = Field(description="Unix time of the last change.")
    active: bool = Field(description="Whether both collections are served, so the rollout decides.")
    clip_collection: str
    siglip_collection: str
    clip_points: int | None
    siglip_points: int | None
    siglip_routable: bool = Field(description="Whether SigLIP may take traffic (complete, or forced).")
    reason: str = Field(description="What the next anonymous request would meet.")


class HealthResponse(BaseModel):
    """Service status: ``ok`` (something searchable), ``empty`` (nothing indexed yet) or ``degraded`` (a collection
    cannot be served)."""

    status: Literal["ok", "empty", "degraded"]
    version: str
    index_dir: str
    read_only: bool
    images: dict[str, int] = Field(description="Catalog images by status (ok, error, deleted).")
    models: list[str]
    collections: list[CollectionStatus]
    rollout: RolloutStatus
    max_upload_bytes: int = Field(description="Largest body of POST /api/v1/search/image, bytes (the file and its "
                                              "multipart framing; service.max_upload_bytes): a larger one is a 413.")


class RolloutRequest(BaseModel):
    """A new rollout: ``percentage`` of searches to SigLIP (0 rolls back to CLIP); ``force`` routes them to SigLIP
    even while its collection is incomplete."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"percentage": 10}, {"percentage": 0}, {"percentage": 100, "force": True}]})

    percentage: float = Field(ge=0, le=100, allow_inf_nan=False)
    force: bool = False


class ErrorResponse(BaseModel):
    """Every error: ``error`` is a stable kind (invalid_input, not_found, conflict, unavailable, too_large,
    unauthorized, forbidden, method_not_allowed, internal, ...), ``message`` says what to do."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": "invalid_input", "message": "body.limit: Input should be less than or equal to 1000"},
        {"error": "not_found", "message": "no indexed image has id 123456"},
    ]})

    error: str
    message: str
    details: list[dict[str, Any]] | None = Field(None, description="Per-field problems of a rejected request.")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route may answer (all with ``ErrorResponse``)."""
    text = {400: "Malformed request", 401: "API key missing", 403: "API key wrong", 404: "Not found",
            409: "Conflicts with the catalog's state", 413: "Request body too large",
            415: "Unsupported media type", 422: "Invalid request", 503: "Unavailable here"}
    return {s: {"model": ErrorResponse, "description": text.get(s, "Error")} for s in statuses}


# ---------------------------------------------------------------------------------------------------------- jobs
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux
MAX_REEMBED_BATCH = 10_000  # images per job: bounds what one job holds in memory and loses when its worker dies


class ReembedRequest(BaseModel):
    """A full re-embedding of the catalog with ``model`` (a collection name, or the Hub id / path of a configured
    or indexed model; default: the SigLIP collection's), ``batch_size`` images per job (default
    ``service.reembed_batch_size``: 100). ``missing_only`` leaves out images that already have a vector."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{}, {"model": "image_assets_siglip", "batch_size": 100}, {"missing_only": True}]})

    model: ModelName = None
    batch_size: Annotated[int | None, Field(ge=1, le=MAX_REEMBED_BATCH), BeforeValidator(_integral)] = None
    missing_only: bool = False


class IndexRequest(BaseModel):
    """An index job of ``folder`` (absolute; inside ``service.allowed_roots``) with ``model`` (default: every
    model of the catalog)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"folder": "/photos/2024"}, {"folder": "/photos/new", "model": "image_assets_siglip"}]})

    folder: str = Field(min_length=1, max_length=MAX_PATH_CHARS, pattern=r"^/[^\x00]*$",
                        description="Absolute path of the folder (no NUL byte).")
    model: ModelName = None


class JobStatus(BaseModel):
    """A run of jobs: a re-embedding (batches of images) or an index of a folder (one job).

    ``state``: idle (no run yet), queued, running, finished, failed (some batch failed for good). ``total`` jobs
    = ``queued`` + ``running`` + ``done`` + ``failed``; ``retries``: jobs enqueued again after their worker died or
    they failed. ``percent`` of the images (re-embedding) or jobs (index) settled; ``images_per_second`` and
    ``eta_seconds`` from the batches done so far. ``target_points`` / ``source_points``: live images with a vector
    of the run's model and of its source collection (CLIP, else every live image); ``complete`` when equal.
    ``saved_index``: whether the saved search index was synced after the last batch (searches see new vectors
    either way)."""

    run_id: str | None
    kind: Literal["reembed", "index"]
    backend: Literal["rq", "inprocess"]
    state: Literal["idle", "queued", "running", "finished", "failed"]
    model: str | None
    collection: str | None
    folder: str | None
    total: int
    queued: int
    running: int
    done: int
    failed: int
    retries: int
    images_total: int | None
    images_done: int
    images_failed: int
    percent: float
    images_per_second: float | None
    eta_seconds: float | None
    created_at: float | None
    started_at: float | None
    finished_at: float | None
    saved_index: str | None
    target_points: int | None
    source_collection: str | None
    source_points: int | None
    complete: bool | None
    workers: int | None = Field(None, description="RQ workers listening on the queue (1 in process).")
    errors: list[str] = Field(description="The first failures (image or batch, with the reason).")
