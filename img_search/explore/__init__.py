"""Exploring a collection: the UMAP map (``umap_map``), near-duplicates (``duplicates``), and the shared sphere
layout (``sphere``). Import-light: umap (numba) and matplotlib load only when a map is fitted or drawn.

Library API (the web UI calls these from its HTTP routes):

* ``umap_map.load_map(index_dir, model_row) -> MapLayout | None`` and
  ``umap_map.update_map(index_dir, collection, *, refit=False, growth_factor=2.0) -> MapLayout``;
* ``duplicates.find_duplicates(collection, threshold=0.95, k=10) -> list[DuplicateGroup]``;
* ``export.export_png`` / ``export.export_html`` (the map as a picture / a self-contained HTML page).
"""
