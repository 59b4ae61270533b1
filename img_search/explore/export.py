"""The map as files: a PNG scatter (matplotlib) and a self-contained interactive HTML page.

Both draw the sphere in the equirectangular projection (x = longitude, y = latitude, degrees). The HTML page has
everything inline (script, style, data, thumbnails as base64 JPEG ``data:`` URLs): it opens offline, from a file, and
fetches nothing. Points are coloured by their folder (the 10 most common folders get a colour each, the rest grey);
the wheel or +/- zooms, dragging or the arrow keys pan, 0 resets, and hovering a point shows its thumbnail and path.
Thumbnails are embedded for at most ``max_thumbnails`` images (spread evenly over the map's id order), each at most
``thumb_px`` pixels on its longer side: about 2-3 KB each, so the default 2,000 adds ~5 MB; the other points show
their path only.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from img_search.errors import InvalidInputError
from img_search.explore.umap_map import MapLayout
from img_search.files import check_output_file, output_write_error, write_atomic
from img_search.optional import require

logger = logging.getLogger(__name__)

DEFAULT_MAX_THUMBNAILS = 2000
DEFAULT_THUMB_PX = 96
# matplotlib's "tab10" colours (also used by the page), for the 10 most common folders
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
OTHER_COLOUR = "#b0b0b0"


def folder_colours(paths: list[str]) -> tuple[list[int], list[str]]:
    """Per path, an index into the returned legend (folders, most common first; -1: other)."""
    folders = [os.path.dirname(p) for p in paths]
    top = [f for f, _ in Counter(folders).most_common(len(PALETTE))]
    where = {f: i for i, f in enumerate(top)}
    return [where.get(f, -1) for f in folders], top


def check_png_path(path: Path | str, what: str = "--png") -> Path:
    """``path`` as a ``Path`` once it can name the PNG ``export_png`` writes: ``files.check_output_file``'s checks,
    and a suffix that is ``.png`` (any case) or none; ``InvalidInputError`` otherwise (e.g. ``map.txt``, ``map.pdf``:
    matplotlib would refuse the one after the fit and write the other as a PDF)."""
    path = check_output_file(path, what)
    if path.suffix and path.suffix.lower() != ".png":
        raise InvalidInputError(f"{what} {str(path)!r}: writes PNG only; give a name ending in .png "
                                f"(e.g. {str(path.with_suffix('.png'))!r})")
    return path


def export_png(layout: MapLayout, path: Path, *, paths: Mapping[int, str] | None = None, title: str | None = None,
               dpi: int = 150) -> Path:
    """Write the map as a PNG scatter to ``path`` (coloured by folder when ``paths`` maps image ids to paths).

    PNG only, written to ``path`` exactly as given (a name without a suffix gets no ``.png`` added: the path the
    caller prints is the file written). Raises ``UnavailableError`` without matplotlib
    (``pip install 'img-search[explore]'``), ``InvalidInputError`` when ``path`` is a folder, its parent folder does
    not exist (``files.check_output_file``) or its suffix is not ``.png`` (``check_png_path``), all before drawing;
    ``UnavailableError`` (``StorageFullError`` for a full disk) when the file cannot be written, ``path`` then left
    as it was (written under a temporary name and renamed).
    """
    path = check_png_path(path)
    matplotlib = require("matplotlib", extra="explore", needed_for="--png")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(layout)
    fig, ax = plt.subplots(figsize=(12, 6.4))
    size = float(np.clip(4000.0 / max(n, 1), 0.3, 30.0))
    if paths:
        idx, legend = folder_colours([paths.get(int(i), "") for i in layout.image_ids])
        colours = [PALETTE[i] if i >= 0 else OTHER_COLOUR for i in idx]
        for i, folder in enumerate(legend[:6]):
            ax.scatter([], [], c=PALETTE[i], s=20, label=folder or "/")
        if legend:
            ax.legend(loc="lower left", fontsize=7, framealpha=0.8)
    else:
        colours = [PALETTE[0]] * n
    ax.scatter(layout.longitude, layout.latitude, s=size, c=colours, alpha=0.75, linewidths=0)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xlabel("longitude (degrees)")
    ax.set_ylabel("latitude (degrees)")
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.set_title(title or f"{n} images (UMAP on a sphere, fitted on {layout.n_fitted})")
    fig.tight_layout()
    # under a temporary name, then renamed: a full disk or a Ctrl-C leaves no half-written PNG, and an existing map
    # as it was
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")  # format given: no suffix appended, no other format from the suffix
        os.replace(tmp, path)
    except OSError as exc:
        raise output_write_error(path, exc, "--png") from exc
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path


def thumbnail_data_url(path: str, thumb_px: int = DEFAULT_THUMB_PX) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail of the image at ``path`` (None when it cannot be read).

    JPEGs are decoded at a reduced scale (Pillow's ``draft``: DCT scaling, ~10x faster on a 12 MP photo); other
    formats through ``data.images.decode_image``. EXIF orientation is applied either way."""
    from PIL import Image, ImageOps

    from img_search.data.images import decode_image, read_file
    from img_search.errors import ImageDecodeError

    try:
        data = read_file(path)
    except ImageDecodeError as exc:
        logger.debug("no thumbnail for %s: %s", path, exc)
        return None
    image: Image.Image | None = None
    try:  # a large file is read from disk (data.images.LargeFile), as much as the decoder needs
        with io.BytesIO(data) if isinstance(data, bytes) else data.open() as stream:
            if stream.read(2) == b"\xff\xd8":
                stream.seek(0)
                with Image.open(stream) as im:
                    im.draft("RGB", (thumb_px, thumb_px))
                    image = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # ImageDecodeError is a ValueError
        logger.debug("fast JPEG decode of %s failed (%s); decoding in full", path, exc)
    if image is None:
        try:
            image = decode_image(data)
        except ImageDecodeError as exc:
            logger.debug("no thumbnail for %s: %s", path, exc)
            return None
    image.thumbnail((thumb_px, thumb_px), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _spread(n: int, k: int) -> list[int]:
    if k >= n:
        return list(range(n))
    return sorted({round(float(i)) for i in np.linspace(0, n - 1, k)})


def export_html(layout: MapLayout, path: Path, paths: Mapping[int, str], *,
                max_thumbnails: int = DEFAULT_MAX_THUMBNAILS, thumb_px: int = DEFAULT_THUMB_PX,
                title: str | None = None) -> Path:
    """Write the map as one self-contained interactive HTML file (see the module docstring); returns ``path``.

    ``paths``: image id -> file path (the hover label and the thumbnail's source). Raises ``InvalidInputError`` for
    negative ``max_thumbnails``, a ``thumb_px`` outside 16-512, or a ``path`` that is a folder or whose parent
    folder does not exist (``files.check_output_file``), before any thumbnail is made; ``UnavailableError``
    (``StorageFullError`` for a full disk) when the page cannot be written, ``path`` then left as it was."""
    path = check_output_file(path, "--html")
    if max_thumbnails < 0:
        raise InvalidInputError(f"max_thumbnails must be >= 0, got {max_thumbnails}")
    if not 16 <= thumb_px <= 512:
        raise InvalidInputError(f"thumbnail size must be 16-512 pixels, got {thumb_px}")
    ids = [int(i) for i in layout.image_ids]
    labels = [paths.get(i, "") for i in ids]
    colour_idx, legend = folder_colours(labels)
    thumbs: dict[int, str] = {}
    for row in _spread(len(ids), max_thumbnails):
        url = thumbnail_data_url(labels[row], thumb_px) if labels[row] else None
        if url is not None:
            thumbs[row] = url
    data = {
        "title": title or f"{len(ids)} images",
        "lat": [round(float(v), 4) for v in layout.latitude],
        "lon": [round(float(v), 4) for v in layout.longitude],
        "ids": ids, "paths": labels, "colour": colour_idx, "legend": legend,
        "palette": list(PALETTE), "other": OTHER_COLOUR,
        "thumbs": {str(k): v for k, v in thumbs.items()},
        "summary": layout.summary(),
    }
    # ensure_ascii keeps surrogate-escaped (non-UTF-8) names representable; "</" can never close the script element
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("</", "<\\/")
    page = _PAGE.replace("__TITLE__", html.escape(str(data["title"]))).replace("__DATA__", payload)
    try:
        write_atomic(path, page)  # a full disk leaves no truncated page, and an existing one as it was
    except OSError as exc:
        raise output_write_error(path, exc, "--html") from exc
    logger.info("wrote %s: %d points, %d thumbnails, %.1f MB", path, len(ids), len(thumbs),
                path.stat().st_size / 1e6)
    return path


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__ - img-search map</title>
<style>
html,body{margin:0;height:100%;font:14px system-ui,sans-serif;background:#fafafa;color:#222}
header{padding:6px 10px;border-bottom:1px solid #ddd;display:flex;gap:12px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:16px;margin:0}#info{color:#555}
#wrap{position:absolute;top:40px;left:0;right:0;bottom:0}
canvas{width:100%;height:100%;display:block;cursor:crosshair;outline:none}
canvas:focus{box-shadow:inset 0 0 0 2px #1f77b4}
#tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #999;border-radius:4px;padding:4px;
max-width:320px;display:none;box-shadow:0 2px 6px rgba(0,0,0,.2);font-size:12px;word-break:break-all}
#tip img{display:block;max-width:160px;max-height:160px;margin-bottom:3px}
#legend{position:absolute;left:8px;bottom:8px;background:rgba(255,255,255,.85);padding:4px 6px;font-size:11px;
max-width:45%;overflow:hidden}#legend span{display:inline-block;width:9px;height:9px;margin-right:4px}
</style></head><body>
<header><h1>__TITLE__</h1><span id="info"></span>
<span>wheel / + - zoom, drag / arrows pan, 0 reset</span></header>
<div id="wrap"><canvas id="map" tabindex="0" aria-label="map of the collection"></canvas><div id="legend"></div></div>
<div id="tip" role="tooltip"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const N = D.lat.length, cv = document.getElementById("map"), ctx = cv.getContext("2d");
const tip = document.getElementById("tip");
let scale = 1, cx = 0, cy = 0, W = 0, H = 0, dpr = 1, hover = -1;
const s = D.summary;
document.getElementById("info").textContent = N + " images; fitted on " + s.n_fitted + ", " + s.n_transformed +
  " placed since";
const lg = document.getElementById("legend");
D.legend.forEach((f, i) => { const d = document.createElement("div"); const b = document.createElement("span");
  b.style.background = D.palette[i]; d.appendChild(b); d.appendChild(document.createTextNode(f || "/"));
  lg.appendChild(d); });
function resize() { dpr = window.devicePixelRatio || 1; W = cv.clientWidth; H = cv.clientHeight;
  cv.width = W * dpr; cv.height = H * dpr; draw(); }
function base() { return Math.min(W / 360, H / 180); }
function toX(lon) { return W / 2 + (lon - cx) * base() * scale; }
function toY(lat) { return H / 2 - (lat - cy) * base() * scale; }
function draw() {
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0); ctx.clearRect(0, 0, W, H);
  ctx.strokeStyle = "#ccc"; ctx.lineWidth = 1; ctx.strokeRect(toX(-180), toY(90), 360 * base() * scale,
    180 * base() * scale);
  const r = Math.max(1.5, Math.min(6, 2.5 * Math.sqrt(scale) * Math.sqrt(2000 / Math.max(N, 1))));
  for (let i = 0; i < N; i++) { const x = toX(D.lon[i]), y = toY(D.lat[i]);
    if (x < -r || y < -r || x > W + r || y > H + r) continue;
    ctx.fillStyle = D.colour[i] >= 0 ? D.palette[D.colour[i]] : D.other;
    ctx.fillRect(x - r / 2, y - r / 2, r, r); }
  if (hover >= 0) { ctx.strokeStyle = "#000"; ctx.lineWidth = 2; ctx.beginPath();
    ctx.arc(toX(D.lon[hover]), toY(D.lat[hover]), r + 3, 0, 2 * Math.PI); ctx.stroke(); }
}
function nearest(mx, my) { let best = -1, bd = 100;
  for (let i = 0; i < N; i++) { const dx = toX(D.lon[i]) - mx, dy = toY(D.lat[i]) - my, d = dx * dx + dy * dy;
    if (d < bd) { bd = d; best = i; } } return best; }
function show(i, px, py) {
  hover = i; draw(); if (i < 0) { tip.style.display = "none"; return; }
  tip.replaceChildren();
  const t = D.thumbs[String(i)];
  if (t) { const im = document.createElement("img"); im.src = t; im.alt = ""; tip.appendChild(im); }
  const p = document.createElement("div"); p.textContent = D.paths[i] || ("image " + D.ids[i]); tip.appendChild(p);
  const c = document.createElement("div"); c.style.color = "#777";
  c.textContent = "lat " + D.lat[i].toFixed(2) + ", lon " + D.lon[i].toFixed(2); tip.appendChild(c);
  tip.style.display = "block";
  tip.style.left = Math.min(px + 14, window.innerWidth - tip.offsetWidth - 4) + "px";
  tip.style.top = Math.min(py + 14, window.innerHeight - tip.offsetHeight - 4) + "px";
}
function zoom(f, mx, my) { const b = base();
  const lon = cx + (mx - W / 2) / (b * scale), lat = cy - (my - H / 2) / (b * scale);
  scale = Math.min(400, Math.max(0.5, scale * f));
  cx = lon - (mx - W / 2) / (b * scale); cy = lat + (my - H / 2) / (b * scale); draw(); }
let drag = null;
cv.addEventListener("wheel", e => { e.preventDefault(); const r = cv.getBoundingClientRect();
  zoom(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top); }, {passive: false});
cv.addEventListener("mousedown", e => { drag = {x: e.clientX, y: e.clientY, cx: cx, cy: cy}; });
window.addEventListener("mouseup", () => { drag = null; });
cv.addEventListener("mousemove", e => { const r = cv.getBoundingClientRect();
  if (drag) { const b = base() * scale; cx = drag.cx - (e.clientX - drag.x) / b;
    cy = drag.cy + (e.clientY - drag.y) / b; draw(); return; }
  show(nearest(e.clientX - r.left, e.clientY - r.top), e.clientX, e.clientY); });
cv.addEventListener("mouseleave", () => show(-1, 0, 0));
cv.addEventListener("keydown", e => { const step = 40 / (base() * scale);
  const k = {"+": () => zoom(1.25, W / 2, H / 2), "=": () => zoom(1.25, W / 2, H / 2),
    "-": () => zoom(0.8, W / 2, H / 2),
    "ArrowLeft": () => { cx -= step; draw(); }, "ArrowRight": () => { cx += step; draw(); },
    "ArrowUp": () => { cy += step; draw(); }, "ArrowDown": () => { cy -= step; draw(); },
    "0": () => { scale = 1; cx = 0; cy = 0; draw(); }}[e.key];
  if (k) { e.preventDefault(); k(); } });
window.addEventListener("resize", resize);
resize();
</script></body></html>
"""
