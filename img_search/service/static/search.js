/* The search page: text, image (choose, drop or paste) and "more like this" searches, filters, threshold slider. */
"use strict";

(() => {
  const {el, query, postJSON, postFile, getJSON, showError, scoreKind, calibrated, thresholded, formatValue,
         formatScore, thumbnailUrl, baseName, folderName} = ImgSearch;
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), input = $("q"), fileInput = $("file"), grid = $("grid"), status = $("status");
  const slider = $("threshold"), sliderValue = $("threshold-value"), sliderKind = $("threshold-kind");
  const title = $("results-title"), errorBox = $("error"), results = $("results"), onMap = $("on-map");

  const state = {hits: [], kind: "score", lo: 0, hi: 0, took: 0, collection: "", label: "", seq: 0, blobUrl: null};
  const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

  /** This browser's rollout key, sent as `session_key` with every search (docs/SERVICE.md, "Collections and the
   *  rollout"): one visitor stays with one collection across searches, "more like this" and reloads. Without it
   *  each request drew a random bucket, so during a partial SigLIP rollout the model changed between searches.
   *  Kept in localStorage; where storage is refused (private mode, policy), one key for the page's life. */
  const sessionKey = (() => {
    const name = "img-search-session";
    const fresh = () => Array.from(crypto.getRandomValues(new Uint8Array(16)),
                                   (b) => b.toString(16).padStart(2, "0")).join("");
    try {
      let key = localStorage.getItem(name);
      if (!key || !/^[0-9a-f]{32}$/.test(key)) {
        key = fresh();
        localStorage.setItem(name, key);
      }
      return key;
    } catch (err) {
      return fresh();
    }
  })();

  function readOptions() {
    const hasText = $("f-has-text").value;
    const limit = Number.parseInt($("f-limit").value, 10);
    return {
      after: $("f-after").value || null, before: $("f-before").value || null, near: $("f-near").value.trim() || null,
      cameras: list($("f-camera").value), folders: list($("f-folder").value), tags: list($("f-tag").value),
      has_text: hasText === "" ? null : hasText === "true",
      sort: $("f-sort").value, hybrid: $("f-hybrid").value, weight: Number.parseFloat($("f-weight").value),
      limit: Number.isFinite(limit) ? limit : 40, model: $("f-model").value || null,
    };
  }

  /** The JSON body of POST /search. */
  function textBody(text, o) {
    const body = {query: text, limit: o.limit, sort: o.sort, hybrid: o.hybrid, session_key: sessionKey};
    if (o.hybrid === "weighted" && Number.isFinite(o.weight)) body.weight = o.weight;
    if (o.model) body.model = o.model;
    const filters = {};
    for (const key of ["after", "before", "near", "has_text"]) if (o[key] !== null) filters[key] = o[key];
    for (const key of ["cameras", "folders", "tags"]) if (o[key].length) filters[key] = o[key];
    if (Object.keys(filters).length) body.filters = filters;
    return body;
  }

  /** The query parameters of the image routes (upload, similar): the same filters, names singular. */
  function imageParams(o) {
    return query({limit: o.limit, sort: o.sort, model: o.model, after: o.after, before: o.before, near: o.near,
                  camera: o.cameras, folder: o.folders, tag: o.tags,
                  has_text: o.has_text === null ? null : String(o.has_text), session_key: sessionKey});
  }

  function setTitle(text, imageSrc) {
    title.replaceChildren();
    if (imageSrc) title.append(el("img", {src: imageSrc, alt: ""}));
    title.append(el("span", {text}));
  }

  async function run(label, imageSrc, call, {focus = false} = {}) {
    const seq = ++state.seq;
    showError(errorBox, null);
    status.textContent = "Searching…";
    grid.setAttribute("aria-busy", "true");
    setTitle(label, imageSrc);
    try {
      const response = await call();
      if (seq !== state.seq) return;  // a later search replaced this one
      render(response, label);
    } catch (err) {
      if (seq !== state.seq) return;
      state.hits = [];
      grid.replaceChildren();
      status.textContent = "No results.";
      slider.disabled = true;
      onMap.hidden = true;
      showError(errorBox, err);
    } finally {
      if (seq === state.seq) grid.removeAttribute("aria-busy");
    }
    if (focus) results.focus();
  }

  function searchText(text, {push = true} = {}) {
    text = text.trim();
    if (!text) {
      showError(errorBox, new Error("Type what to look for (or choose an image)."));
      input.focus();
      return;
    }
    if (push) history.pushState({q: text}, "", "/" + query({q: text}));
    const o = readOptions();
    run(`Results for “${text}”`, null, () => postJSON("/search", textBody(text, o)));
  }

  function searchFile(file) {
    if (!file) return;
    if (state.blobUrl) URL.revokeObjectURL(state.blobUrl);
    state.blobUrl = file.type.startsWith("image/") ? URL.createObjectURL(file) : null;
    history.pushState({upload: true}, "", "/");
    const o = readOptions();
    run(`Similar to ${file.name || "the image"}`, state.blobUrl, () => postFile("/search/image" + imageParams(o), file),
        {focus: true});
  }

  function searchSimilar(id, name, {push = true, focus = true} = {}) {
    if (push) history.pushState({like: id}, "", "/" + query({like: id}));
    const o = readOptions();
    run(`More like ${name || "image " + id}`, thumbnailUrl(id),
        () => getJSON(`/images/${encodeURIComponent(id)}/similar` + imageParams(o)), {focus});
  }

  function card(hit) {
    const name = baseName(hit.path);
    const badges = [];
    if (hit.matched && hit.matched !== "embedding") {
      badges.push(el("span", {class: "badge", title: "found by the text index (hybrid ranking)",
                              text: hit.matched === "both" ? "words + picture" : "words"}));
    }
    if (hit.date) {
      badges.push(el("span", {class: "badge", text: `${hit.date.slice(0, 16).replace("T", " ")}` +
                                                    (hit.date_source === "modified" ? " (file date)" : "")}));
    }
    const value = calibrated(hit);
    const parts = [];
    if (hit.probability !== null) parts.push("calibrated probability that the picture matches");
    if (hit.cosine !== null) parts.push(`cosine ${hit.cosine.toFixed(4)}`);
    if (hit.score !== null && hit.score !== value) parts.push(`rank score ${hit.score.toFixed(4)}`);
    const data = {id: hit.id, score: value === null ? "" : value, keep: thresholded(hit) ? null : "1"};
    if (data.keep === null) delete data.keep;
    return el("li", {class: "card", dataset: data},
      el("img", {src: thumbnailUrl(hit.id), alt: name, loading: "lazy", width: 256, height: 192}),
      el("div", {class: "meta"},
        el("span", {class: "name", text: name}),
        el("span", {class: "folder", text: folderName(hit.path)}),
        el("span", {class: "score", title: parts.join("; "), text: formatScore(hit, state.kind)}),
        ...badges),
      el("div", {class: "actions"},
        el("button", {type: "button", class: "more", "aria-label": `More like this: ${name}`, text: "More like this",
                      onclick: () => searchSimilar(hit.id, name)})));
  }

  function render(response, label) {
    state.hits = response.hits;
    state.kind = scoreKind(response.hits);
    state.took = response.took_ms;
    state.collection = response.collection;
    state.label = label;
    const values = response.hits.filter(thresholded).map(calibrated).filter((v) => v !== null);
    state.lo = values.length ? Math.min(...values) : 0;
    state.hi = values.length ? Math.max(...values) : 0;
    grid.replaceChildren(...response.hits.map(card));
    sliderKind.textContent = state.kind;
    slider.value = "0";
    slider.disabled = !(state.hi > state.lo);
    applyThreshold();
  }

  const thresholdValue = () => state.lo + (state.hi - state.lo) * Number(slider.value) / 100;

  const formatThreshold = (value) => formatValue(value, state.kind);

  function applyThreshold() {
    const min = thresholdValue();
    let shown = 0;
    const ids = [];
    for (const node of grid.children) {
      // as the API's threshold: matches by words are kept, the others need the calibrated value
      const visible = node.dataset.keep === "1" || Number(node.dataset.score) >= min - 1e-12;
      node.hidden = !visible;
      if (visible) {
        shown += 1;
        ids.push(node.dataset.id);
      }
    }
    const total = state.hits.length;
    sliderValue.textContent = total ? formatThreshold(min) : "–";
    slider.setAttribute("aria-valuetext", total ? `${state.kind} at least ${formatThreshold(min)}` : "no results");
    status.textContent = total === 0 ? "No results."
      : `Showing ${shown} of ${total} (${state.kind} ≥ ${formatThreshold(min)}) · ${state.collection} · ` +
        `${Math.round(state.took)} ms`;
    onMap.hidden = shown === 0;
    onMap.href = "/map" + query({ids: ids.join(","), label: state.label, model: $("f-model").value || null});
  }

  function fromUrl() {
    const params = new URLSearchParams(location.search);
    const like = params.get("like"), text = params.get("q");
    if (like !== null && /^\d+$/.test(like)) {
      searchSimilar(like, null, {push: false, focus: false});
    } else if (text) {
      input.value = text;
      searchText(text, {push: false});
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    searchText(input.value);
  });
  slider.addEventListener("input", applyThreshold);
  fileInput.addEventListener("change", () => {
    searchFile(fileInput.files[0]);
    fileInput.value = "";
  });
  // drop an image anywhere on the page; paste one (Ctrl+V) too
  let dragDepth = 0;
  document.addEventListener("dragenter", (event) => {
    if (![...event.dataTransfer.types].includes("Files")) return;
    dragDepth += 1;
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) document.body.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    document.body.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) searchFile(file);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) {
      event.preventDefault();
      searchFile(file);
    }
  });
  window.addEventListener("popstate", fromUrl);

  ImgSearch.collections().then((cols) => {
    const select = $("f-model");
    for (const c of cols) {
      select.append(el("option", {value: c.name, text: `${c.name} (${c.points} images)`}));
    }
  }).catch(() => {});
  fromUrl();
  if (!location.search) input.focus();
})();
