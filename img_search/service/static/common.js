/* img-search web UI, shared helpers: the API calls, error display, result cards. Plain ES2020, no dependencies. */
"use strict";

const ImgSearch = (() => {
  const API = "/api/v1";

  /** An API error: `kind` is the ErrorResponse's `error` ("invalid_input", "not_found", ...). */
  class ApiError extends Error {
    constructor(status, kind, message) {
      super(message);
      this.status = status;
      this.kind = kind;
    }
  }

  async function request(path, options = {}) {
    let response;
    try {
      response = await fetch(API + path, options);
    } catch (err) {
      throw new ApiError(0, "unavailable", `the server does not answer (${err.message})`);
    }
    const type = response.headers.get("content-type") || "";
    const body = type.includes("json") ? await response.json() : null;
    if (!response.ok) {
      const message = body && body.message ? body.message : `HTTP ${response.status}`;
      throw new ApiError(response.status, body && body.error ? body.error : "error", message);
    }
    return body;
  }

  const getJSON = (path) => request(path);
  const postJSON = (path, payload) => request(path, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(payload),
  });
  const post = (path) => request(path, {method: "POST"});
  const postFile = (path, file) => {
    const form = new FormData();
    form.append("file", file, file.name || "upload");
    return request(path, {method: "POST", body: form});
  };

  /** URL query string from a flat object; arrays repeat the key, empty values are left out. */
  function query(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value === undefined || value === null || value === "") continue;
      if (Array.isArray(value)) value.forEach((v) => search.append(key, v));
      else search.append(key, String(value));
    }
    const text = search.toString();
    return text ? "?" + text : "";
  }

  const thumbnailUrl = (id) => `${API}/images/${encodeURIComponent(id)}/thumbnail`;
  const baseName = (path) => path.split("/").filter(Boolean).pop() || path;
  const folderName = (path) => path.slice(0, Math.max(0, path.lastIndexOf("/"))) || "/";

  /** Element helper: el("p", {class: "x", text: "..."}, child, ...). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function showError(box, err) {
    if (!box) return;
    if (!err) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    box.hidden = false;
    box.textContent = err instanceof ApiError ? err.message : String(err.message || err);
  }

  /** What a page thresholds and shows for hits, as the library's `threshold` does: the calibrated probability
   *  where the model has one (SigLIP text queries), else the cosine. Matches found by the text index ("text",
   *  "both") are kept whatever it is. */
  function scoreKind(hits) {
    return hits.some((h) => h.probability !== null && h.probability !== undefined) ? "probability" : "cosine";
  }

  /** The calibrated value of a hit (probability, else cosine), or null for a match by text alone. */
  const calibrated = (hit) => hit.probability ?? hit.cosine ?? null;
  const thresholded = (hit) => (hit.matched || "embedding") === "embedding";

  function formatValue(value, kind) {
    if (value === null || value === undefined) return "–";
    if (kind === "probability") {
      const pct = value * 100;
      return `${pct >= 10 ? pct.toFixed(1) : pct.toPrecision(2)} %`;
    }
    return value.toFixed(3);
  }

  function formatScore(hit, kind) {
    const value = calibrated(hit);
    if (value === null) return "text match";
    return kind === "probability" && hit.probability !== null ? formatValue(hit.probability, kind)
      : `cosine ${formatValue(hit.cosine, "cosine")}`;
  }

  /** The collections a page may pick from (health), as [{name, model, points}]. */
  async function collections() {
    const health = await getJSON("/health");
    return health.collections.filter((c) => !c.problem || c.points > 0);
  }

  return {ApiError, getJSON, post, postJSON, postFile, query, thumbnailUrl, baseName, folderName, el, showError,
          scoreKind, calibrated, thresholded, formatValue, formatScore, collections};
})();
