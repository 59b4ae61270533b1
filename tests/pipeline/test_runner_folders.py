"""What `index` takes from a folder: formats, excludes, one name per folder, and option values (issue 7)."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import bind_mount, make_jpeg, pattern
from PIL import Image, PngImagePlugin

from img_search.catalog import Catalog
from img_search.errors import InvalidInputError, NotFoundError
from img_search.pipeline.runner import IndexOptions, IndexSummary, index_folders


def _never():  # type: ignore[no-untyped-def]
    raise AssertionError("the model must not be loaded when nothing needs embedding")


def _index(folders: list[Path], idx: Path, model: Path, factory, **kw) -> IndexSummary:  # type: ignore[no-untyped-def]
    opts = IndexOptions(model=str(model), batch_size=kw.pop("batch_size", 4), workers=kw.pop("workers", 0), **kw)
    return index_folders([str(f) for f in folders], idx, opts, encoder_factory=factory)


def _catalog_paths(idx: Path, status: str = "ok") -> list[str]:
    with Catalog.in_dir(idx) as cat:
        return sorted(os.fsdecode(p) for (p,) in cat.db.execute("SELECT path FROM images WHERE status = ?", (status,)))


def test_pngs_with_oversized_metadata_are_embedded(tmp_path: Path, tiny_siglip: Path, siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    """Case png_big_text_chunk: metadata past Pillow's MAX_TEXT_CHUNK must not cost the picture."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    meta = '{"nodes": [' + ",".join(f'{{"id": {i}, "args": [1, 2, 3]}}' for i in range(60000)) + "]}"
    img = Image.new("RGB", (64, 48), (10, 120, 200))
    ztxt, itxt = PngImagePlugin.PngInfo(), PngImagePlugin.PngInfo()
    ztxt.add_text("workflow", meta, zip=True)
    itxt.add_itxt("workflow", meta, zip=True)
    img.save(folder / "ztxt.png", pnginfo=ztxt)
    img.save(folder / "itxt.png", pnginfo=itxt)
    img.save(folder / "icc.png", icc_profile=meta.encode()[:2_000_000])
    img.save(folder / "plain.png")
    s = _index([folder], tmp_path / "idx", tiny_siglip, lambda: siglip_encoder)
    assert (s.embedded, s.failed) == (4, [])


def test_photo_files_are_indexed_or_reported(tmp_path: Path, tiny_siglip: Path, siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    """Case unscanned_photo_extensions: MPO and HEIC are indexed; a damaged HEIC and a RAW are reported."""
    folder = tmp_path / "imgs"
    make_jpeg(folder / "IMG_0001.jpg")
    buf = io.BytesIO()
    pattern(1).save(buf, "MPO", save_all=True, append_images=[pattern(2)])
    (folder / "DSCF0001.MPO").write_bytes(buf.getvalue())
    (folder / "IMG_0002.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(3000))
    heic = Path(__file__).parents[1] / "data" / "fixtures" / "red_blue_64x48.heic"  # a real one (see test_images)
    (folder / "IMG_0004.heic").write_bytes(heic.read_bytes())
    (folder / "DSC_0003.NEF").write_bytes(b"II*\x00" + bytes(3000))
    (folder / "notes.xmp").write_text("<x:xmpmeta/>")  # a sidecar, not a photo: not counted
    idx = tmp_path / "idx"
    s = _index([folder], idx, tiny_siglip, lambda: siglip_encoder)
    assert (s.scanned, s.embedded) == (4, 3)
    assert [os.path.basename(p) for p in _catalog_paths(idx)] == ["DSCF0001.MPO", "IMG_0001.jpg", "IMG_0004.heic"]
    reasons = {os.path.basename(f.path): f.reason for f in s.failed}
    assert sorted(reasons) == ["DSC_0003.NEF", "IMG_0002.HEIC"]
    assert reasons["DSC_0003.NEF"].startswith("camera RAW (.nef) is not supported")
    assert reasons["IMG_0002.HEIC"].startswith("not an image Pillow can read")
    with Catalog.in_dir(idx) as cat:
        assert {os.path.basename(r.path): r.error for r in cat.failures()} == reasons
    s = _index([folder], idx, tiny_siglip, _never)  # a re-run reports nothing new and loads no model
    assert (s.failed, s.failed_before, s.unchanged) == ([], 2, 3)


def _synology_share(share: Path) -> None:
    for i, name in enumerate(("IMG_0001.jpg", "IMG_0002.jpg", "IMG_0003.jpg")):
        make_jpeg(share / name, seed=i, size=(160, 120))
        for tag, w in (("SM", 120), ("S", 60)):
            thumb = share / "@eaDir" / name / f"SYNOPHOTO_THUMB_{tag}.jpg"
            make_jpeg(thumb, seed=i, size=(w, w * 3 // 4))


def test_nas_thumbnails_are_not_indexed(tmp_path: Path, tiny_siglip: Path, siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    """Case synology_eadir_thumbnails."""
    share = tmp_path / "share"
    _synology_share(share)
    idx = tmp_path / "idx"
    s = _index([share], idx, tiny_siglip, lambda: siglip_encoder)
    assert (s.scanned, s.embedded) == (3, 3)
    assert _catalog_paths(idx) == [str(share / f"IMG_000{i}.jpg") for i in (1, 2, 3)]


def test_files_an_exclude_now_covers_are_marked_deleted(tmp_path: Path, tiny_siglip: Path,
                                                         siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    share = tmp_path / "share"
    _synology_share(share)
    make_jpeg(share / "exports" / "web.jpg", seed=9)
    idx = tmp_path / "idx"
    s = _index([share], idx, tiny_siglip, lambda: siglip_encoder, default_excludes=False)
    assert s.embedded == 10  # before the defaults: 3 photos + 6 thumbnails + 1 export
    s = _index([share], idx, tiny_siglip, _never)  # the default list is on again
    assert (s.deleted, s.unchanged) == (6, 4)
    s = _index([share], idx, tiny_siglip, _never, excludes=("/exports",))
    assert (s.deleted, s.unchanged) == (1, 3)
    assert _catalog_paths(idx) == [str(share / f"IMG_000{i}.jpg") for i in (1, 2, 3)]
    assert len(_catalog_paths(idx, "deleted")) == 7
    s = _index([share], idx, tiny_siglip, _never)  # the exclude dropped: the export comes back, no model needed
    assert (s.reused, s.unchanged, s.embedded) == (1, 3, 0)


def test_one_folder_by_several_paths_is_indexed_once(tmp_path: Path, photo_dir: Path, tiny_siglip: Path,
                                                      siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    idx = tmp_path / "idx"
    os.symlink(photo_dir, tmp_path / "link")
    os.symlink(photo_dir / "a", tmp_path / "link_a")
    s = _index([tmp_path / "link"], idx, tiny_siglip, lambda: siglip_encoder)
    assert (s.roots, s.embedded) == ([str(photo_dir)], 12)
    s = _index([photo_dir], idx, tiny_siglip, _never)
    assert (s.embedded, s.unchanged) == (0, 12)
    s = _index([tmp_path / "link_a"], idx, tiny_siglip, _never)
    assert (s.roots, s.unchanged) == ([str(photo_dir / "a")], 6)
    s = _index([photo_dir / "a", tmp_path / "link", photo_dir], idx, tiny_siglip, _never)
    assert (s.roots, s.scanned, s.unchanged) == ([str(photo_dir)], 12, 12)  # walked once, not three times
    assert len(_catalog_paths(idx)) == 12
    with Catalog.in_dir(idx) as cat:
        assert [r for r, _ in cat.roots()] == [str(photo_dir), str(photo_dir / "a")]


def test_a_bind_mount_of_an_indexed_folder_adds_nothing(tmp_path: Path, photo_dir: Path, tiny_siglip: Path,
                                                        siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    idx = tmp_path / "idx"
    s = _index([photo_dir], idx, tiny_siglip, lambda: siglip_encoder)
    assert s.embedded == 12
    with bind_mount(photo_dir, tmp_path / "mnt" / "to"), bind_mount(photo_dir / "b", tmp_path / "mnt" / "into"):
        s = _index([tmp_path / "mnt" / "to"], idx, tiny_siglip, _never)
        assert (s.roots, s.unchanged, s.deleted) == ([str(photo_dir)], 12, 0)
        s = _index([tmp_path / "mnt" / "into"], idx, tiny_siglip, _never)
        assert (s.roots, s.unchanged) == ([str(photo_dir / "b")], 6)
    assert len(_catalog_paths(idx)) == 12 and _catalog_paths(idx, "deleted") == []


def test_not_a_folder_errors_have_a_kind(tmp_path: Path, tiny_siglip: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        _index([tmp_path / "missing"], tmp_path / "idx", tiny_siglip, _never)
    make_jpeg(tmp_path / "one.jpg")
    with pytest.raises(InvalidInputError, match="is not a folder"):
        _index([tmp_path / "one.jpg"], tmp_path / "idx", tiny_siglip, _never)


@pytest.mark.parametrize(("field", "value"), [
    ("batch_size", 0), ("batch_size", -3), ("batch_size", 2.5), ("batch_size", True), ("batch_size", "8"),
    ("workers", -1), ("workers", 1.0), ("max_image_pixels", 0), ("max_image_pixels", -1),
    ("max_image_pixels", 10**12),  # above the process-wide limit: only start-up may raise it
    ("excludes", ("",)), ("excludes", ("a\nb",)),
])
def test_index_options_refuse_bad_values(field: str, value: object) -> None:
    with pytest.raises(InvalidInputError):
        IndexOptions(model="m", **{field: value})  # type: ignore[arg-type]


def test_index_options_accept_and_normalise() -> None:
    opts = IndexOptions(model="m", batch_size=2**31, workers=0, max_image_pixels=1, excludes=["a", "#b"])  # type: ignore[arg-type]
    assert opts.excludes == ("a", "#b")
    assert IndexOptions(model="m", excludes="@tmp").excludes == ("@tmp",)  # type: ignore[arg-type]


def test_cost_follows_the_collection_not_the_option(tmp_path: Path, photo_dir: Path, tiny_siglip: Path,
                                                    siglip_encoder, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    from img_search.pipeline.loop import MAX_WORKERS_PER_CORE, fit_to_work

    assert fit_to_work(100, 2**31, 0) == (100, 0)
    assert fit_to_work(100, 10, 10**6)[1] == min(10, MAX_WORKERS_PER_CORE * (os.cpu_count() or 1))
    assert fit_to_work(7, 4, 1) == (4, 1)
    with caplog.at_level(logging.INFO, logger="img_search.pipeline.loop"):
        s = _index([photo_dir], tmp_path / "idx", tiny_siglip, lambda: siglip_encoder, batch_size=2**31,
                   workers=10_000)
    assert s.embedded == 12
    assert "using 1 decode workers, not 10000" in caplog.text  # one batch of 12: one worker


def test_vectors_match_direct_encoding_with_a_huge_batch(tmp_path: Path, photo_dir: Path, tiny_siglip: Path,
                                                         siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    from img_search.data.images import load_image

    _index([photo_dir], tmp_path / "idx", tiny_siglip, lambda: siglip_encoder, batch_size=2**40)
    with Catalog.in_dir(tmp_path / "idx") as cat:
        model_id = cat.get_model(str(tiny_siglip)).id
        paths = _catalog_paths(tmp_path / "idx")
        stored = np.stack([cat.vector_for(model_id, cat.image(p).content_hash) for p in paths])
    side = siglip_encoder.image_preprocessor().input_side  # JPEGs decoded at a reduced scale (the default)
    np.testing.assert_allclose(stored, siglip_encoder.encode_images([load_image(p, min_side=side) for p in paths]),
                               atol=1e-5)
