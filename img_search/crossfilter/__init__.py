"""Crossfilter-compatible embedding database (seed 004): ``<uuid>.jpg`` images -> a SQLite file crossfilter reads.

``python -m img_search.crossfilter.compute_embeddings_cli`` (also ``img-search crossfilter``) embeds the images
through the one pipeline loop (``pipeline.loop.run_loop``) into ``{EMBEDDING_TYPE}_EMBEDDINGS`` and projects them onto
a sphere with UMAP (``{EMBEDDING_TYPE}_UMAP_MODEL``, ``{EMBEDDING_TYPE}_UMAP_PROJECTIONS``). Schema and
serialisation: ``db``; the run: ``compute``; names -> checkpoints: ``types``. docs/EXPLORE.md.
"""
