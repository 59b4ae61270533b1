/* The duplicates page: groups of near-identical images (GET /api/v1/duplicates?threshold=), largest first. */
"use strict";

(() => {
  const {el, query, getJSON, showError, thumbnailUrl, baseName, folderName} = ImgSearch;
  const $ = (id) => document.getElementById(id);
  const form = $("dup-form"), input = $("threshold"), list = $("groups"), status = $("status");
  const params = new URLSearchParams(location.search);
  const model = params.get("model") || null;
  let seq = 0;

  function group(g, n) {
    const [lo, hi] = [g.min_cosine.toFixed(3), g.max_cosine.toFixed(3)];
    const range = lo === hi ? lo : `${lo}–${hi}`;
    return el("li", {class: "group", dataset: {size: g.image_ids.length}},
      el("h3", {text: `Group ${n}: ${g.image_ids.length} images · cosine ${range}`}),
      el("ul", {class: "members"}, ...g.image_ids.map((id, k) => el("li", {},
        el("figure", {dataset: {id}},
          el("img", {src: thumbnailUrl(id), alt: baseName(g.paths[k]), loading: "lazy", width: 256, height: 192}),
          el("figcaption", {},
            el("strong", {text: baseName(g.paths[k])}), el("br"), folderName(g.paths[k]), el("br"),
            el("a", {href: "/" + query({like: id}), text: "More like this"})))))));
  }

  async function find({push = true} = {}) {
    const threshold = Number.parseFloat(input.value);
    const mine = ++seq;
    showError($("error"), null);
    status.textContent = "Looking for duplicates…";
    list.setAttribute("aria-busy", "true");
    if (push) history.replaceState(null, "", "/duplicates" + query({threshold: input.value, model}));
    try {
      const answer = await getJSON("/duplicates" + query({threshold: Number.isFinite(threshold) ? threshold : null,
                                                          model}));
      if (mine !== seq) return;
      const images = answer.groups.reduce((sum, g) => sum + g.image_ids.length, 0);
      list.replaceChildren(...answer.groups.map((g, k) => group(g, k + 1)));
      status.textContent = answer.groups.length
        ? `${answer.groups.length} groups, ${images} images (cosine ≥ ${answer.threshold}) · ${answer.collection}`
        : `No near-duplicates at cosine ≥ ${answer.threshold} · ${answer.collection}`;
    } catch (err) {
      if (mine !== seq) return;
      list.replaceChildren();
      status.textContent = "No groups.";
      showError($("error"), err);
    } finally {
      if (mine === seq) list.removeAttribute("aria-busy");
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    find();
  });
  if (params.get("threshold")) input.value = params.get("threshold");
  find({push: false});
})();
