"""Folder scanning: symlinks, loops, hidden files, non-regular files and non-UTF-8 names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import make_jpeg, pattern

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


def _rel(root: Path, paths: list[str]) -> list[str]:
    return sorted(os.path.relpath(p, root) for p in paths)


def test_unsupported_photo_formats_are_reported_not_dropped(tmp_path: Path) -> None:
    make_jpeg(tmp_path / "IMG_0001.jpg")
    pattern(1).save(tmp_path / "DSCF0001.MPO", "MPO")
    for name in ("DSC_0002.NEF", "IMG_0003.cr3", "scan.dng", "art.xcf", "pic.jxl", "x.HEIC", "sidecar.xmp"):
        (tmp_path / name).write_bytes(b"\x00" * 64)
    result = scan_folder(str(tmp_path))
    assert _rel(tmp_path, [f.path for f in result.files]) == ["DSCF0001.MPO", "IMG_0001.jpg", "x.HEIC"]
    reasons = {os.path.basename(p.path): p.reason for p in result.problems}
    assert sorted(reasons) == ["DSC_0002.NEF", "IMG_0003.cr3", "art.xcf", "pic.jxl", "scan.dng"]
    assert reasons["DSC_0002.NEF"].startswith("camera RAW (.nef) is not supported: convert it to JPEG or TIFF")
    assert reasons["art.xcf"].startswith("a layered editor file (.xcf) is not supported")
    assert reasons["pic.jxl"].startswith("JPEG XL (.jxl) is not supported")


def test_heif_is_reported_when_its_decoder_is_missing(tmp_path: Path) -> None:
    from img_search.data.formats import PILLOW_EXTENSIONS, unsupported_formats

    (tmp_path / "IMG_0002.HEIC").write_bytes(b"\x00" * 64)
    result = scan_folder(str(tmp_path), extensions=PILLOW_EXTENSIONS, unsupported=unsupported_formats(False))
    assert [(os.path.basename(p.path), p.reason.split(":")[0]) for p in result.problems] == [
        ("IMG_0002.HEIC", "HEIC/HEIF (.heic) is not supported")]


def _nas_share(root: Path) -> None:
    make_jpeg(root / "IMG_0001.jpg")
    make_jpeg(root / "@eaDir" / "IMG_0001.jpg" / "SYNOPHOTO_THUMB_SM.jpg")
    make_jpeg(root / "2020" / "IMG_0002.jpg")
    make_jpeg(root / "2020" / "@eaDir" / "IMG_0002.jpg" / "SYNOPHOTO_THUMB_S.jpg")
    make_jpeg(root / "#recycle" / "old.jpg")
    make_jpeg(root / "#snapshot" / "GMT+00_2024-01-01" / "IMG_0001.jpg")
    make_jpeg(root / "@Recycle" / "x.jpg")
    make_jpeg(root / "@Recently-Snapshot" / "x.jpg")
    make_jpeg(root / "$RECYCLE.BIN" / "S-1-5-21" / "$R1.jpg")
    make_jpeg(root / "System Volume Information" / "x.jpg")
    make_jpeg(root / "Lightroom" / "Catalog Previews.lrdata" / "0" / "A1B2.jpg")
    make_jpeg(root / "Lightroom" / "Catalog Smart Previews.lrdata" / "x.jpg")
    make_jpeg(root / "data" / "appdata_oc1x2y" / "preview" / "1" / "256-256.jpg")
    make_jpeg(root / "Photos Library.photoslibrary" / "resources" / "derivatives" / "0" / "x.jpg")
    make_jpeg(root / "Photos Library.photoslibrary" / "originals" / "0" / "IMG_0003.jpg")
    make_jpeg(root / ".@__thumb" / "default.IMG_0001.jpg")
    make_jpeg(root / ".Trash-1000" / "files" / "x.jpg")
    make_jpeg(root / "._IMG_0001.jpg")  # an AppleDouble resource fork, not a picture


KEPT = ["2020/IMG_0002.jpg", "IMG_0001.jpg", "Photos Library.photoslibrary/originals/0/IMG_0003.jpg"]


def test_default_excludes_prune_nas_thumbnails_trash_and_snapshots(tmp_path: Path) -> None:
    _nas_share(tmp_path)
    result = scan_folder(str(tmp_path), include_hidden=True)  # the hidden ones are excluded by name, too
    assert _rel(tmp_path, [f.path for f in result.files]) == KEPT
    assert result.problems == []
    everything = scan_folder(str(tmp_path), include_hidden=True, default_excludes=False)
    assert len(everything.files) == 18


def test_excluded_folders_are_never_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nas_share(tmp_path)
    listed: list[str] = []
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        listed.append(os.path.relpath(path, tmp_path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan_folder(str(tmp_path), excludes=["2020/"])
    assert sorted(listed) == [".", "Lightroom", "Photos Library.photoslibrary",
                              "Photos Library.photoslibrary/originals", "Photos Library.photoslibrary/originals/0",
                              "Photos Library.photoslibrary/resources", "data", "data/appdata_oc1x2y"]


def test_user_excludes(tmp_path: Path) -> None:
    make_jpeg(tmp_path / "keep.jpg")
    make_jpeg(tmp_path / "a" / "x_thumb.jpg")
    make_jpeg(tmp_path / "a" / "b" / "export" / "y.jpg")
    make_jpeg(tmp_path / "export" / "top.jpg")
    make_jpeg(tmp_path / "#private" / "z.jpg")
    make_jpeg(tmp_path / "scans" / "s.jpg")
    make_jpeg(tmp_path / "a" / "scans" / "t.jpg")
    (tmp_path / "a" / "raw.nef").write_bytes(b"\x00")

    def kept(*patterns: str, **kw: bool) -> list[str]:
        return _rel(tmp_path, [f.path for f in scan_folder(str(tmp_path), excludes=patterns, **kw).files])

    assert kept("*_thumb.jpg") == ["#private/z.jpg", "a/b/export/y.jpg", "a/scans/t.jpg", "export/top.jpg",
                                   "keep.jpg", "scans/s.jpg"]
    assert "a/b/export/y.jpg" not in kept("**/export/**") and "export/top.jpg" not in kept("**/export/**")
    assert set(kept()) - set(kept("/export")) == {"export/top.jpg"}  # anchored: only the top-level one
    assert "#private/z.jpg" not in kept("#private")  # a leading '#' is literal, not a comment
    assert kept("/scans/", "a/") == ["#private/z.jpg", "export/top.jpg", "keep.jpg"]
    assert kept("*.jpg", "!keep.jpg") == ["keep.jpg"]
    raw = scan_folder(str(tmp_path), excludes=["*.nef"])  # the way to silence reports of a format
    assert raw.problems == []


@pytest.mark.parametrize("bad", ["", "   ", "a\nb"])
def test_bad_exclude_patterns_are_refused(tmp_path: Path, bad: str) -> None:
    from img_search.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="exclude pattern"):
        scan_folder(str(tmp_path), excludes=[bad])


def test_default_exclude_list_is_valid_and_documented() -> None:
    from img_search.data.excludes import DEFAULT_EXCLUDES

    docs = (Path(__file__).parents[2] / "docs" / "FORMATS.md").read_text()
    missing = [p for p in DEFAULT_EXCLUDES if f"`{p.removeprefix('**/').lstrip(chr(92)).rstrip('/')}`" not in docs]
    assert missing == []
