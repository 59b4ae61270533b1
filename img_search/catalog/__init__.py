"""The embedded catalog: SQLite in WAL mode in the index directory."""

from img_search.catalog.catalog import CATALOG_FILENAME, Catalog, ImageRecord, ImageRow, ModelRow

__all__ = ["CATALOG_FILENAME", "Catalog", "ImageRecord", "ImageRow", "ModelRow"]
