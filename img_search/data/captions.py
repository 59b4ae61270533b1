"""Captions in newline-delimited JSON (Flickr30k-style): one object per line with ``caption`` and ``image`` fields.

``caption`` may be one string or a list of strings (Flickr30k has five per image); each string becomes a
``CaptionRecord``. Ids are stable for a given file: the image id is the ``image`` field as written, and a
caption's id is ``<image id>#<n>`` where n counts that image's captions in file order (Flickr30k's own
``1000092795.jpg#0`` convention). Blank lines are skipped; a malformed line is an error naming its number.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from img_search.data import CaptionRecord, TextDataset
from img_search.errors import DatasetError
from img_search.wording import noun

logger = logging.getLogger(__name__)


class CaptionsJsonlDataset(TextDataset):
    def __init__(self, *, name: str, path: str, caption_field: str = "caption", image_field: str = "image") -> None:
        super().__init__(name=name)
        self.path = Path(path).expanduser()
        self.caption_field = caption_field
        self.image_field = image_field

    def _read(self) -> list[CaptionRecord]:
        if not self.path.is_file():
            raise DatasetError(f"captions file {self.path} does not exist")
        records: list[CaptionRecord] = []
        counts: dict[str, int] = {}
        with self.path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                image_id, captions = self._parse(line, line_no)
                for caption in captions:
                    n = counts.get(image_id, 0)
                    counts[image_id] = n + 1
                    records.append(CaptionRecord(f"{image_id}#{n}", image_id, caption))
        if not records:
            raise DatasetError(f"captions file {self.path} holds no captions")
        return records

    def _parse(self, line: str, line_no: int) -> tuple[str, list[str]]:
        where = f"{self.path} line {line_no}"
        try:
            row: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where} is not valid JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{where} is not a JSON object")
        missing = [f for f in (self.caption_field, self.image_field) if f not in row]
        if missing:
            raise DatasetError(
                f"{where} lacks {noun(len(missing), 'field')} {', '.join(missing)} (it has: {', '.join(row)})"
            )
        image = row[self.image_field]
        if not isinstance(image, str | int) or str(image) == "":
            raise DatasetError(f"{where}: `{self.image_field}` must be a non-empty string")
        value = row[self.caption_field]
        captions = [value] if isinstance(value, str) else value
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise DatasetError(f"{where}: `{self.caption_field}` must be a string or a list of strings")
        return str(image), captions
