"""A small client of a running img-search service, for the CLI's ``--server URL`` / ``IMG_SEARCH_SERVER``.

Every search function returns the hits as the CLI's ``--json`` prints them (``search.collection.Hit.to_dict()``:
``path``, ``cosine``, ``probability``, ``image_id``, ``width``, ``height``), so a command prints the same with or
without a server. Errors come back as the library's typed errors (the service's ``error`` kind -> ``NotFoundError``,
``InvalidInputError``, ``ConflictError``, ``UnavailableError``), so the CLI's exit codes stay the same; no server
at the URL is an ``UnavailableError``. An upload over the server's ``service.max_upload_bytes`` is an
``InvalidInputError`` naming that limit (read from ``GET /api/v1/health``), however the server's 413 reached the
client: as an answer, or as a connection broken while the body was still being sent.

``index_dir`` / ``model``: what the command asks for. When given, ``check_server`` first compares them with what
the server serves (``GET /api/v1/health``) and refuses a mismatch with a ``ConflictError`` naming both. Standard
library only (``urllib``): the client adds no dependency and no import time to the CLI.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from img_search.errors import (
    ConflictError,
    ImgSearchError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)
from img_search.search.collection import DEFAULT_LIMIT, Hit
from img_search.service.schemas import MAX_LIMIT

if TYPE_CHECKING:
    from img_search.data.images import LargeFile

DEFAULT_TIMEOUT_S = 60.0  # a first text query on a cold CPU model can take seconds; searches take milliseconds


class _NoAnswer(UnavailableError):
    """No HTTP answer: nothing listens at the URL, or the connection broke (refused, reset, broken pipe, timeout)."""


class _TooLarge(InvalidInputError):
    """The server's 413: the request body is over its route's limit."""


_ERRORS: dict[str, type[ImgSearchError]] = {
    "invalid_input": InvalidInputError, "too_large": _TooLarge, "bad_request": InvalidInputError,
    "not_found": NotFoundError, "conflict": ConflictError, "unavailable": UnavailableError,
}


def _url(base: str, path: str, query: dict[str, Any] | None = None) -> str:
    url = base.rstrip("/") + path
    params = {k: v for k, v in (query or {}).items() if v is not None}
    return url + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")


def _call(base: str, method: str, path: str, *, query: dict[str, Any] | None = None,
          body: bytes | Iterable[bytes] | None = None, content_type: str | None = None,
          timeout: float = DEFAULT_TIMEOUT_S, content_length: int | None = None) -> Any:
    """One API call; ``body`` as bytes, or as chunks whose total is ``content_length`` (sent as they come)."""
    request = urllib.request.Request(_url(base, path, query), data=body, method=method)
    request.add_header("Accept", "application/json")
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    if content_length is not None:
        request.add_header("Content-Length", str(content_length))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise _translate(base, exc) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _NoAnswer(f"no img-search service answers at {base} ({reason}); start one with "
                               "`img-search serve`, or search without --server / IMG_SEARCH_SERVER") from None


def _translate(base: str, exc: urllib.error.HTTPError) -> ImgSearchError:
    try:
        payload = json.loads(exc.read())
        kind, message = str(payload["error"]), str(payload["message"])
    except (ValueError, KeyError, TypeError):
        kind, message = "", f"HTTP {exc.code} {exc.reason}"
    error = _TooLarge if exc.code == 413 else _ERRORS.get(kind, UnavailableError if exc.code >= 500 else ImgSearchError)
    return error(f"{message} (server {base})")


def health(url: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """The server's ``GET /api/v1/health`` answer."""
    answer: dict[str, Any] = _call(url, "GET", "/api/v1/health", timeout=timeout)
    return answer


def check_server(url: str, *, index_dir: str | os.PathLike[str] | None = None, model: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """The server's health, after checking it serves ``index_dir`` (same real path) and ``model`` (a collection
    name, or a model's Hub id / local path) when they are given. Raises ``ConflictError`` naming both sides."""
    from img_search.embedding.hf import canonical_model_id

    status = health(url, timeout=timeout)
    if index_dir is not None:
        served = str(status.get("index_dir"))
        if os.path.realpath(os.fspath(index_dir)) != os.path.realpath(served):
            raise ConflictError(f"the server at {url} serves the index directory {served}, not {index_dir}; drop "
                                "--server (or IMG_SEARCH_SERVER) or --index-dir")
    if model is not None:
        wanted = {model, canonical_model_id(model)}
        names = {c["name"] for c in status.get("collections", [])} | set(status.get("models", []))
        if not wanted & names:
            raise ConflictError(f"the server at {url} does not serve model {model!r} (it serves: "
                                f"{', '.join(sorted(names)) or 'nothing'}); drop --server or --model")
    return status


def _model_param(model: str | None) -> str | None:
    if model is None:
        return None
    from img_search.embedding.hf import canonical_model_id

    return canonical_model_id(model)  # a relative path means the caller's directory, not the server's


def to_hits(rows: list[dict[str, Any]]) -> list[Hit]:
    """The ``Hit`` objects of rows returned by the search functions (what the CLI's human-readable output prints)."""
    return [Hit(r["path"], r["cosine"], r["probability"], r["image_id"], r["width"], r["height"],
                score=r.get("score"), text_score=r.get("text_score"), matched=r.get("matched", "embedding"),
                date=r.get("date"), date_source=r.get("date_source")) for r in rows]


def _hits(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [Hit(h["path"], h["cosine"], h["probability"], h["id"], h["width"], h["height"], score=h.get("score"),
                text_score=h.get("text_score"), matched=h.get("matched", "embedding"), date=h.get("date"),
                date_source=h.get("date_source")).to_dict()
            for h in payload["hits"]]


def _option_fields(options: Any) -> dict[str, Any]:
    """The request fields of a ``search.searcher.SearchOptions`` (only those that differ from the defaults)."""
    if options is None:
        return {}
    from img_search.search.searcher import SearchOptions

    default = SearchOptions()
    fields = {k: getattr(options, k) for k in ("sort", "hybrid", "weight", "expand", "expand_merge", "temperature")
              if getattr(options, k) != getattr(default, k)}
    if options.filter:
        fields["filters"] = options.filter.to_request()
    return fields


def _image_params(options: Any) -> dict[str, Any]:
    """Query parameters of an image query's filters and sort (lists repeat the parameter)."""
    fields = _option_fields(options)
    params: dict[str, Any] = {k: v for k, v in fields.pop("filters", {}).items()}
    for plural, singular in (("cameras", "camera"), ("folders", "folder"), ("tags", "tag")):
        if plural in params:
            params[singular] = params.pop(plural)
    if "has_text" in params:
        params["has_text"] = "true" if params["has_text"] else "false"
    if "sort" in fields:
        params["sort"] = fields["sort"]
    return params


def default_session_key() -> str:
    """The rollout key the client sends when given no ``user_id`` / ``session_key``: one per user and machine
    (``"cli-"`` + 16 hex digits of BLAKE2b of ``user@host``; the server sees neither name), so a partial SigLIP
    rollout answers every ``--server`` search of one user from one collection. Without a key the server draws a
    random bucket per request, and the same command could be answered by CLIP, then by SigLIP."""
    try:
        who = getpass.getuser()
    except (OSError, KeyError):  # no login name (a container's uid without a passwd entry)
        who = str(os.getuid()) if hasattr(os, "getuid") else ""
    key = f"{who}@{socket.gethostname()}".encode("utf-8", "surrogateescape")
    return "cli-" + hashlib.blake2b(key, digest_size=8).hexdigest()


def search_text(url: str, query: str, *, limit: int = DEFAULT_LIMIT, threshold: float | None = None,
                model: str | None = None, index_dir: str | os.PathLike[str] | None = None,
                user_id: str | int | None = None, session_key: str | None = None,
                timeout: float = DEFAULT_TIMEOUT_S, options: Any = None) -> list[dict[str, Any]]:
    """``img-search search`` through the server: the hits of ``POST /api/v1/search`` as ``Hit.to_dict()``s.
    ``options``: a ``search.searcher.SearchOptions`` (filters, sort, hybrid, expansion, temperature). Without
    ``user_id`` and ``session_key`` the rollout key is ``default_session_key()``."""
    if index_dir is not None or model is not None:
        check_server(url, index_dir=index_dir, model=model, timeout=timeout)
    body = {"query": query, "limit": limit, "threshold": threshold, "model": _model_param(model),
            "user_id": user_id, "session_key": session_key if session_key is not None or user_id is not None
            else default_session_key(), **_option_fields(options)}
    payload = _call(url, "POST", "/api/v1/search", body=json.dumps({k: v for k, v in body.items() if v is not None}
                                                                    ).encode(), content_type="application/json",
                    timeout=timeout)
    return _hits(payload)


def search_image(url: str, path: str | os.PathLike[str], *, limit: int = DEFAULT_LIMIT,
                 threshold: float | None = None, model: str | None = None,
                 index_dir: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 options: Any = None) -> list[dict[str, Any]]:
    """``img-search similar IMAGE`` through the server: uploads the file (``POST /api/v1/search/image``) and, as the
    CLI does, leaves the file itself out of the hits (found by its path, as the catalog names it).

    A file whose upload (file plus multipart framing) is over the server's ``service.max_upload_bytes`` raises
    ``InvalidInputError`` naming the limit: before sending when the server's health was read anyway (``index_dir``
    or ``model`` given), else once the server refused it. The server answers 413 and closes as soon as it has the
    headers, so a client still sending the body may see only a broken pipe or a reset connection: after such a
    failure the limit is read from ``GET /api/v1/health``, and the error is the connection's (``UnavailableError``)
    only when the upload was within it or the server does not answer."""
    from img_search.data.images import check_query_file, read_file
    from img_search.data.paths import canonical_folder

    status = None
    if index_dir is not None or model is not None:
        status = check_server(url, index_dir=index_dir, model=model, timeout=timeout)
    # as a local `similar` reads it: a regular file only, refused after its header when it is not an image
    abspath = check_query_file(os.fspath(path))
    data = read_file(abspath)
    folder, name = os.path.split(abspath)
    own = {abspath, os.path.join(canonical_folder(folder), name)}
    boundary = uuid.uuid4().hex
    body, length = _upload_body(data, boundary)
    # one more than asked, for the file itself (the API's ceiling of MAX_LIMIT applies through a server)
    query = {"limit": min(limit + 1, MAX_LIMIT), "threshold": threshold, "model": _model_param(model),
             "session_key": default_session_key(), **_image_params(options)}
    if status is not None:
        _check_upload_size(url, abspath, length, status.get("max_upload_bytes"))
    try:
        payload = _call(url, "POST", "/api/v1/search/image", query=query, body=body,
                        content_type=f"multipart/form-data; boundary={boundary}", timeout=timeout,
                        content_length=length)
    except (_TooLarge, _NoAnswer):
        _check_upload_size(url, abspath, length, _upload_limit(url, timeout))
        raise
    return [h for h in _hits(payload) if h["path"] not in own][:limit]


def _upload_limit(url: str, timeout: float) -> int | None:
    """The server's ``service.max_upload_bytes`` from its health, or None when it does not answer or say."""
    try:
        limit = health(url, timeout=timeout).get("max_upload_bytes")
    except ImgSearchError:
        return None
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def _check_upload_size(url: str, path: str, length: int, limit: Any) -> None:
    """Raise ``InvalidInputError`` naming the server's upload limit when ``length`` bytes are over it."""
    if isinstance(limit, int) and not isinstance(limit, bool) and length > limit:
        raise InvalidInputError(
            f"{path} is too large for the server at {url}: its upload is {length:,} bytes (the file and its "
            f"multipart framing), over the server's upload limit of {limit:,} bytes (service.max_upload_bytes); "
            "search without --server, or raise that limit where the server runs"
        ) from None


def _upload_body(data: bytes | LargeFile, boundary: str) -> tuple[bytes | Iterator[bytes], int]:
    """The multipart body of an image upload and its length in bytes: one bytes object for a file ``read_file`` read
    whole, else chunks of ``HASH_CHUNK_BYTES`` read from the file as they are sent (a large file is never held in
    memory; ImageDecodeError when it changed since ``read_file`` looked at it)."""
    from img_search.data.images import HASH_CHUNK_BYTES

    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    if isinstance(data, bytes):
        return head + data + tail, len(head) + len(data) + len(tail)
    large = data

    def chunks() -> Iterator[bytes]:
        yield head
        with large.open() as fh:
            while chunk := fh.read(HASH_CHUNK_BYTES):
                yield chunk
            large.check_unchanged(fh)
        yield tail

    return chunks(), len(head) + large.size + len(tail)


def similar_to_id(url: str, image_id: int, *, limit: int = DEFAULT_LIMIT, threshold: float | None = None,
                  model: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    """``GET /api/v1/images/{image_id}/similar``: images similar to a catalog image, by its stored vector (rollout
    key: ``default_session_key()``)."""
    query = {"limit": limit, "threshold": threshold, "model": _model_param(model), "session_key": default_session_key()}
    return _hits(_call(url, "GET", f"/api/v1/images/{int(image_id)}/similar", query=query, timeout=timeout))
