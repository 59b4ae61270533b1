/* The map page: the collection's UMAP layout (GET /api/v1/map) on a canvas, drawn as longitude / latitude (an
 * equirectangular view of the globe the layout lives on). Zoom (wheel, pinch, + / -), pan (drag, arrow keys), click
 * a point (or Enter: the point nearest the centre) to open its image and neighbours; search results highlighted. */
"use strict";

(() => {
  const {el, query, getJSON, post, postJSON, showError, thumbnailUrl, baseName, folderName} = ImgSearch;
  const $ = (id) => document.getElementById(id);
  const canvas = $("map"), ctx = canvas.getContext("2d"), status = $("status"), errorBox = $("error");
  const params = new URLSearchParams(location.search);
  let model = params.get("model") || null;  // the map's collection once loaded: neighbours come from it too
  const POINT_R = 2.5, HIT_R = 5, NEAR_R = 4.5, SELECTED_R = 9;
  const PICK_PX = 14;  // a click selects the nearest point within this many CSS pixels
  const DRAG_PX = 5;  // a press that moved less than this is a click, not a drag
  const HIGHLIGHT_LIMIT = 200;  // hits asked for when highlighting a search
  const NEIGHBOURS = 12;
  const PIXEL_POINTS = 5000;  // above this many points, drawn through a pixel buffer (drawPixels)

  const data = {ids: [], x: new Float64Array(0), y: new Float64Array(0), index: new Map(), collection: ""};
  const view = {cx: 0, cy: 0, scale: 1, w: 0, h: 0, fitScale: 1};
  const marks = {hits: new Set(), near: new Set(), selected: null, selectedName: "", label: ""};
  let frame = 0;
  let ready = false;

  function colours() {
    const css = getComputedStyle(document.documentElement);
    const v = (name) => css.getPropertyValue(name).trim();
    return {point: v("--muted"), hit: v("--hit"), near: v("--accent"), line: v("--line"), card: v("--card"),
            focus: v("--focus"), fg: v("--fg")};
  }

  const screenX = (i) => (data.x[i] - view.cx) * view.scale + view.w / 2;
  const screenY = (i) => (data.y[i] - view.cy) * view.scale + view.h / 2;
  const worldX = (sx) => (sx - view.w / 2) / view.scale + view.cx;
  const worldY = (sy) => (sy - view.h / 2) / view.scale + view.cy;

  function resize() {
    const box = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const first = view.w === 0;
    view.w = box.width;
    view.h = box.height;
    canvas.width = Math.max(1, Math.round(box.width * dpr));
    canvas.height = Math.max(1, Math.round(box.height * dpr));
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (first && ready) fit();
    redraw();
  }

  /** Fit every point in view (x: longitude, y: minus latitude, in degrees). */
  function fit() {
    if (!data.ids.length) {
      view.cx = 0;
      view.cy = 0;
      view.scale = Math.min(view.w / 360, view.h / 180);
    } else {
      let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
      for (let i = 0; i < data.ids.length; i++) {
        minX = Math.min(minX, data.x[i]); maxX = Math.max(maxX, data.x[i]);
        minY = Math.min(minY, data.y[i]); maxY = Math.max(maxY, data.y[i]);
      }
      const dx = Math.max(maxX - minX, 1e-3), dy = Math.max(maxY - minY, 1e-3);
      view.cx = (minX + maxX) / 2;
      view.cy = (minY + maxY) / 2;
      view.scale = Math.min(view.w / (dx * 1.15), view.h / (dy * 1.15));
    }
    view.fitScale = view.scale;
    redraw();
  }

  function zoomAt(factor, sx, sy) {
    const scale = Math.min(Math.max(view.scale * factor, view.fitScale / 8), view.fitScale * 2000);
    const wx = worldX(sx), wy = worldY(sy);
    view.scale = scale;
    view.cx = wx - (sx - view.w / 2) / scale;
    view.cy = wy - (sy - view.h / 2) / scale;
    redraw();
  }

  function panBy(dx, dy) {
    view.cx -= dx / view.scale;
    view.cy -= dy / view.scale;
    redraw();
  }

  const redraw = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  function circle(i, r) {
    const sx = screenX(i), sy = screenY(i);
    if (sx < -r || sy < -r || sx > view.w + r || sy > view.h + r) return;
    ctx.moveTo(sx + r, sy);
    ctx.arc(sx, sy, r, 0, 2 * Math.PI);
  }

  function draw() {
    frame = 0;
    const c = colours();
    ctx.clearRect(0, 0, view.w, view.h);
    // graticule: every 30 degrees (every 10 when zoomed in), so the globe the layout lives on shows
    const step = view.scale > 8 ? 10 : 30;
    ctx.strokeStyle = c.line;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let lon = -180; lon <= 180; lon += step) {
      const sx = (lon - view.cx) * view.scale + view.w / 2;
      if (sx >= 0 && sx <= view.w) { ctx.moveTo(sx, 0); ctx.lineTo(sx, view.h); }
    }
    for (let lat = -90; lat <= 90; lat += step) {
      const sy = (-lat - view.cy) * view.scale + view.h / 2;
      if (sy >= 0 && sy <= view.h) { ctx.moveTo(0, sy); ctx.lineTo(view.w, sy); }
    }
    ctx.stroke();
    const n = data.ids.length;
    if (n > PIXEL_POINTS) {
      drawPixels(c.point, marks.hits.size ? 0.35 : 0.75);
    } else {
      ctx.globalAlpha = marks.hits.size ? 0.35 : 0.75;
      ctx.fillStyle = c.point;
      ctx.beginPath();
      for (let i = 0; i < n; i++) circle(i, POINT_R);
      ctx.fill();
    }
    ctx.globalAlpha = 1;
    const layer = (ids, r, fill) => {
      ctx.beginPath();
      for (const id of ids) {
        const i = data.index.get(id);
        if (i !== undefined) circle(i, r);
      }
      ctx.fillStyle = fill;
      ctx.fill();
      ctx.strokeStyle = c.card;
      ctx.lineWidth = 1.5;
      ctx.stroke();
    };
    layer(marks.near, NEAR_R, c.near);
    layer(marks.hits, HIT_R, c.hit);
    const sel = marks.selected === null ? undefined : data.index.get(marks.selected);
    if (sel !== undefined) {
      ctx.beginPath();
      circle(sel, SELECTED_R);
      ctx.lineWidth = 3;
      ctx.strokeStyle = c.fg;
      ctx.stroke();
    }
    if (canvas.matches(":focus-visible")) {  // keyboard focus: a cross at the centre, the point Enter would open
      ctx.strokeStyle = c.focus;
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.moveTo(view.w / 2 - 8, view.h / 2); ctx.lineTo(view.w / 2 + 8, view.h / 2);
      ctx.moveTo(view.w / 2, view.h / 2 - 8); ctx.lineTo(view.w / 2, view.h / 2 + 8);
      ctx.stroke();
    }
  }

  /** Every point as a small square written straight into a pixel buffer, then composited in one call: a path of
   *  100,000 arcs (or as many fillRect calls) takes a few hundred ms a frame in software rendering. */
  const pixels = {layer: null, image: null, words: null};
  const rgbOf = new Map();
  function rgb(colour) {
    if (!rgbOf.has(colour)) {
      const probe = document.createElement("canvas").getContext("2d", {willReadFrequently: true});
      probe.fillStyle = colour;
      probe.fillRect(0, 0, 1, 1);
      rgbOf.set(colour, probe.getImageData(0, 0, 1, 1).data);
    }
    return rgbOf.get(colour);
  }
  function drawPixels(colour, alpha) {
    const w = canvas.width, h = canvas.height, dpr = w / Math.max(view.w, 1);
    if (!pixels.layer || pixels.layer.width !== w || pixels.layer.height !== h) {
      pixels.layer = document.createElement("canvas");
      pixels.layer.width = w;
      pixels.layer.height = h;
      pixels.image = pixels.layer.getContext("2d").createImageData(w, h);
      pixels.words = new Uint32Array(pixels.image.data.buffer);
    }
    const words = pixels.words;
    words.fill(0);
    const [r, g, b] = rgb(colour);
    const value = ((Math.round(alpha * 255) << 24) | (b << 16) | (g << 8) | r) >>> 0;  // RGBA bytes, little-endian
    const size = Math.max(2, Math.round(2 * dpr));
    for (let i = 0; i < data.ids.length; i++) {
      const x = Math.round(screenX(i) * dpr), y = Math.round(screenY(i) * dpr);
      if (x < 0 || y < 0 || x + size > w || y + size > h) continue;
      for (let dy = 0; dy < size; dy++) words.fill(value, (y + dy) * w + x, (y + dy) * w + x + size);
    }
    pixels.layer.getContext("2d").putImageData(pixels.image, 0, 0);
    ctx.save();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.drawImage(pixels.layer, 0, 0);
    ctx.restore();
  }

  /** The point nearest (sx, sy) within `radius` CSS pixels (Infinity: any), or undefined. */
  function pick(sx, sy, radius = PICK_PX) {
    let best, bestD = radius * radius;
    for (let i = 0; i < data.ids.length; i++) {
      const dx = screenX(i) - sx, dy = screenY(i) - sy, d = dx * dx + dy * dy;
      if (d <= bestD) { best = i; bestD = d; }
    }
    return best;
  }

  function centreOn(id) {
    const i = data.index.get(id);
    if (i === undefined) return;
    view.cx = data.x[i];
    view.cy = data.y[i];
    redraw();
  }

  function setStatus() {
    const base = ready ? `${data.ids.length} images · ${data.collection}` : "";
    let hits = "";
    if (marks.hits.size || marks.label) {
      const shown = [...marks.hits].filter((id) => data.index.has(id)).length;
      hits = ` · ${marks.hits.size} results highlighted${marks.label ? ` (${marks.label})` : ""}` +
             (shown < marks.hits.size ? ` (${shown} on the map)` : "");
    }
    const selected = marks.selectedName ? ` · selected ${marks.selectedName}, ${marks.near.size} neighbours` : "";
    status.textContent = base + hits + selected;
  }

  let selectSeq = 0;
  async function select(id, {centre = false} = {}) {
    const seq = ++selectSeq;
    marks.selected = id;
    marks.selectedName = "";
    marks.near = new Set();
    if (centre) centreOn(id);
    redraw();
    $("panel-hint").hidden = true;
    const box = $("selected");
    box.hidden = false;
    box.replaceChildren(el("p", {class: "status", text: "Loading…"}));
    $("neighbours").replaceChildren();
    try {
      const [info, similar] = await Promise.all([
        getJSON(`/images/${encodeURIComponent(id)}`),
        getJSON(`/images/${encodeURIComponent(id)}/similar` + query({limit: NEIGHBOURS, model})),
      ]);
      if (seq !== selectSeq) return;
      showError(errorBox, null);
      const name = baseName(info.path);
      box.replaceChildren(
        el("img", {src: thumbnailUrl(id), alt: name, width: 256, height: 192}),
        el("p", {class: "name", text: name}),
        el("p", {class: "path", text: folderName(info.path)}),
        el("p", {class: "status", text: [info.width && `${info.width} × ${info.height} px`,
                                         info.modified && info.modified.slice(0, 10)].filter(Boolean).join(" · ")}),
        el("div", {class: "links"},
          el("a", {class: "button", href: "/" + query({like: id}), text: "More like this"})));
      marks.near = new Set(similar.hits.map((h) => h.id));
      $("neighbours-title").hidden = similar.hits.length === 0;
      $("neighbours").replaceChildren(...similar.hits.map((hit) => el("li", {},
        el("button", {type: "button", class: "neighbour", dataset: {id: hit.id},
                      "aria-label": `Open neighbour ${baseName(hit.path)} (cosine ${hit.cosine.toFixed(3)})`,
                      onclick: () => select(hit.id, {centre: true})},
          el("img", {src: thumbnailUrl(hit.id), alt: "", width: 96, height: 96, loading: "lazy"}),
          el("span", {text: `${baseName(hit.path)} · ${hit.cosine.toFixed(2)}`})))));
      marks.selectedName = name;
      setStatus();
      redraw();
    } catch (err) {
      if (seq === selectSeq) {
        box.replaceChildren();
        showError(errorBox, err);
      }
    }
  }

  function clearSelection() {
    marks.selected = null;
    marks.selectedName = "";
    setStatus();
    marks.near = new Set();
    $("selected").hidden = true;
    $("neighbours").replaceChildren();
    $("neighbours-title").hidden = true;
    $("panel-hint").hidden = false;
    redraw();
  }

  async function highlightSearch(text, {push = true} = {}) {
    text = text.trim();
    if (!text) return;
    if (push) history.replaceState(null, "", "/map" + query({q: text, model}));
    try {
      const body = {query: text, limit: HIGHLIGHT_LIMIT};
      if (model) body.model = model;
      const response = await postJSON("/search", body);
      showError(errorBox, null);
      marks.hits = new Set(response.hits.map((h) => h.id));
      marks.label = `“${text}”`;
    } catch (err) {
      showError(errorBox, err);
    }
    setStatus();
    redraw();
  }

  // ------------------------------------------------------------------ input: pointer, wheel, keyboard
  const pointers = new Map();
  let press = null;  // {x, y, moved} of the current single-pointer press
  let pinch = null;  // {d, x, y} of the current two-pointer gesture

  const local = (e) => {
    const box = canvas.getBoundingClientRect();
    return [e.clientX - box.left, e.clientY - box.top];
  };

  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    const [x, y] = local(e);
    pointers.set(e.pointerId, {x, y});
    if (pointers.size === 1) press = {x, y, moved: 0};
    else press = null;
    pinch = null;
  });
  canvas.addEventListener("pointermove", (e) => {
    const last = pointers.get(e.pointerId);
    if (!last) return;
    const [x, y] = local(e);
    if (pointers.size === 1) {
      panBy(x - last.x, y - last.y);
      if (press) press.moved = Math.max(press.moved, Math.hypot(x - press.x, y - press.y));
      if (press && press.moved > DRAG_PX) canvas.classList.add("dragging");
    }
    pointers.set(e.pointerId, {x, y});
    if (pointers.size === 2) {
      const [a, b] = [...pointers.values()];
      const d = Math.hypot(a.x - b.x, a.y - b.y), mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
      if (pinch && pinch.d > 0) {
        panBy(mx - pinch.x, my - pinch.y);
        zoomAt(d / pinch.d, mx, my);
      }
      pinch = {d, x: mx, y: my};
    }
  });
  const release = (e) => {
    if (!pointers.has(e.pointerId)) return;
    pointers.delete(e.pointerId);
    canvas.classList.remove("dragging");
    if (e.type === "pointerup" && press && press.moved <= DRAG_PX && pointers.size === 0) {
      const [x, y] = local(e);
      const i = pick(x, y);
      if (i !== undefined) select(data.ids[i]);
    }
    press = null;
    if (pointers.size < 2) pinch = null;
  };
  canvas.addEventListener("pointerup", release);
  canvas.addEventListener("pointercancel", release);
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [x, y] = local(e);
    zoomAt(Math.exp(-e.deltaY * (e.deltaMode === 1 ? 0.05 : 0.0015)), x, y);
  }, {passive: false});
  canvas.addEventListener("keydown", (e) => {
    const step = 0.1;
    const keys = {
      ArrowLeft: () => panBy(view.w * step, 0), ArrowRight: () => panBy(-view.w * step, 0),
      ArrowUp: () => panBy(0, view.h * step), ArrowDown: () => panBy(0, -view.h * step),
      "+": () => zoomAt(1.5, view.w / 2, view.h / 2), "=": () => zoomAt(1.5, view.w / 2, view.h / 2),
      "-": () => zoomAt(1 / 1.5, view.w / 2, view.h / 2), "_": () => zoomAt(1 / 1.5, view.w / 2, view.h / 2),
      "0": fit, Escape: clearSelection,
      Enter: () => {
        const i = pick(view.w / 2, view.h / 2, Infinity);
        if (i !== undefined) select(data.ids[i]);
      },
    };
    keys[" "] = keys.Enter;
    const action = keys[e.key];
    if (action && !e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      action();
    }
  });
  canvas.addEventListener("focus", redraw);
  canvas.addEventListener("blur", redraw);
  $("zoom-in").addEventListener("click", () => zoomAt(1.5, view.w / 2, view.h / 2));
  $("zoom-out").addEventListener("click", () => zoomAt(1 / 1.5, view.w / 2, view.h / 2));
  $("zoom-reset").addEventListener("click", fit);
  $("map-search").addEventListener("submit", (e) => {
    e.preventDefault();
    highlightSearch($("q").value);
  });
  $("clear").addEventListener("click", () => {
    marks.hits = new Set();
    marks.label = "";
    $("q").value = "";
    history.replaceState(null, "", "/map" + query({model}));
    setStatus();
    redraw();
  });
  new ResizeObserver(resize).observe(canvas);

  /** For tests and scripts: where a point is drawn, in client (viewport) pixels, and what is marked. */
  window.imgSearchMap = {
    get ready() { return ready; },
    project(id) {
      const i = data.index.get(Number(id));
      if (i === undefined) return null;
      const box = canvas.getBoundingClientRect(), sx = screenX(i), sy = screenY(i);
      return {x: box.left + sx, y: box.top + sy, visible: sx >= 0 && sy >= 0 && sx <= view.w && sy <= view.h};
    },
    ids: () => data.ids.slice(),
    highlighted: () => [...marks.hits],
    neighbours: () => [...marks.near],
    selected: () => marks.selected,
    scale: () => view.scale,
  };

  function offerUpdate(text) {
    $("update-box").hidden = !text;
    $("update-text").textContent = text || "";
  }

  async function load({update = false} = {}) {
    try {
      if (update) {
        status.textContent = "Updating the map (a first fit can take minutes on a large collection)…";
        $("update").disabled = true;
      }
      const layout = await (update ? post : getJSON)("/map" + query({model}));
      showError(errorBox, null);
      model = layout.collection;
      data.ids = layout.image_ids;
      data.x = Float64Array.from(layout.longitude);
      data.y = Float64Array.from(layout.latitude, (lat) => -lat);
      data.index = new Map(data.ids.map((id, i) => [id, i]));
      data.collection = layout.collection;
      ready = true;
      resize();
      fit();
      setStatus();
      offerUpdate(layout.missing ? `${layout.missing} images indexed since the map was made are not on it yet.`
                                 : "");
    } catch (err) {
      status.textContent = "No map.";
      showError(errorBox, err);
      if (err.kind === "not_found" && /no map/.test(err.message)) offerUpdate("This collection has no map yet.");
      return;
    } finally {
      $("update").disabled = false;
    }
    if (update) return;
    const ids = (params.get("ids") || "").split(",").filter((s) => /^\d+$/.test(s)).map(Number);
    if (ids.length) {
      marks.hits = new Set(ids);
      marks.label = params.get("label") || "";
      setStatus();
      redraw();
    }
    if (params.get("q")) {
      $("q").value = params.get("q");
      await highlightSearch(params.get("q"), {push: false});
    }
    const sel = params.get("select");
    if (sel && /^\d+$/.test(sel)) select(Number(sel), {centre: true});
  }

  $("update").addEventListener("click", () => load({update: true}));
  load();
})();
