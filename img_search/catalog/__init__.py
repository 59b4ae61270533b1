"""The embedded catalog: SQLite in WAL mode in the index directory."""

from img_search.catalog.catalog import CATALOG_FILENAME, Catalog, ImageRecord, ImageRow, ModelRow
from img_search.catalog.metadata import FilterRow, OcrText, PhotoMetadata

__all__ = ["CATALOG_FILENAME", "Catalog", "FilterRow", "ImageRecord", "ImageRow", "ModelRow", "OcrText",
           "PhotoMetadata"]
