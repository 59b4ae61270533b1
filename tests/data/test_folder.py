"""Folder scanning: symlinks, loops, hidden files, non-regular files and non-UTF-8 names."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import make_jpeg

from img_search.data.folder import scan_folder


def test_scan_rules(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_jpeg(root / "a.jpg")
    make_jpeg(root / "sub" / "b.JPEG")
    (root / "notes.txt").write_text("not an image, not an image extension")
    make_jpeg(root / ".hidden" / "c.jpg")
    make_jpeg(root / ".d.jpg")
    outside = tmp_path / "outside"
    make_jpeg(outside / "o.jpg")
    os.symlink(outside, root / "linked_dir")  # symlinked folders are not followed
    os.symlink(outside / "o.jpg", root / "linked_file.jpg")  # symlinked files are
    os.symlink(root / "loop.jpg", root / "loop.jpg")
    os.symlink(tmp_path / "gone.jpg", root / "broken.jpg")
    os.mkfifo(root / "pipe.png")
    (root / "dir.jpg").mkdir()

    result = scan_folder(str(root))
    names = sorted(os.path.relpath(f.path, root) for f in result.files)
    assert names == ["a.jpg", "linked_file.jpg", "sub/b.JPEG"]
    problems = {os.path.basename(p.path): p.reason for p in result.problems}
    assert problems == {
        "loop.jpg": "symlink loop",
        "broken.jpg": "broken symlink (target does not exist)",
        "pipe.png": "not a regular file (device, socket or pipe)",
    }
    hidden = scan_folder(str(root), include_hidden=True)
    assert {os.path.basename(f.path) for f in hidden.files} >= {"c.jpg", ".d.jpg"}


def test_non_utf8_names_round_trip(tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.jpg"
    make_jpeg(Path(os.fsdecode(raw)))
    [entry] = scan_folder(str(tmp_path)).files
    assert os.fsencode(entry.path) == raw
    assert "\udce9" in entry.path
