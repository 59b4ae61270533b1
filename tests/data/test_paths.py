"""canonical_folder: one name per folder through symlinks and bind mounts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import bind_mount

from img_search.data.paths import Mount, canonical_folder, parse_mountinfo, translate_bind_mount


def test_symlinks_to_and_into_a_folder(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "2020").mkdir(parents=True)
    os.symlink(photos, tmp_path / "link")
    os.symlink(photos / "2020", tmp_path / "link2020")
    assert canonical_folder(str(tmp_path / "link")) == str(photos)
    assert canonical_folder(str(tmp_path / "link2020")) == str(photos / "2020")
    assert canonical_folder(str(tmp_path / "link" / "2020" / "..")) == str(photos)
    assert canonical_folder(str(photos) + "/") == str(photos)


def test_parse_mountinfo_unescapes_and_skips_garbage() -> None:
    text = (
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n"
        "42 27 254:0 /data/my\\040photos /mnt/with\\040space rw - ext4 /dev/vda rw\n"
        "43 27 0:50 /@home /home rw shared:5 - btrfs /dev/sdb rw,subvol=/@home\n"
        "not a mountinfo line\n"
    )
    m = parse_mountinfo(text)
    assert [(x.device, x.root, x.mount_point, x.fs_type) for x in m] == [
        ("254:0", "/", "/", "ext4"), ("254:0", "/data/my photos", "/mnt/with space", "ext4"),
        ("0:50", "/@home", "/home", "btrfs")]
    assert [x.is_primary for x in m] == [True, False, True]  # a btrfs subvolume mounted as itself is not a bind


def _m(order: int, device: str, root: str, point: str, fs: str = "ext4", opts: str = "rw") -> Mount:
    return Mount(order, device, root, point, fs, frozenset(opts.split(",")))


def test_translate_bind_mount_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mapping rules on synthetic tables (the directories themselves are checked by _same_dir)."""
    import img_search.data.paths as paths

    monkeypatch.setattr(paths, "_same_dir", lambda a, b: True)
    table = [
        _m(0, "8:1", "/", "/"),
        _m(1, "8:2", "/", "/data"),
        _m(2, "8:2", "/photos", "/mnt/bind"),             # bind of /data/photos
        _m(3, "8:2", "/", "/mnt/again"),                   # bind of the file system's root (root "/" as well)
        _m(4, "0:40", "/@home", "/home", "btrfs", "rw,subvol=/@home"),
        _m(5, "0:40", "/", "/mnt/pool", "btrfs", "rw,subvol=/"),
        _m(6, "0:40", "/@home/me/pics", "/srv/pics", "btrfs", "rw,subvol=/@home"),
        _m(7, "9:9", "/exported", "/mnt/lonely"),          # a bind whose file system is not mounted here
    ]
    assert translate_bind_mount("/mnt/bind", table) == "/data/photos"
    assert translate_bind_mount("/mnt/bind/2020/x", table) == "/data/photos/2020/x"
    assert translate_bind_mount("/mnt/again/photos", table) == "/data/photos"
    assert translate_bind_mount("/data/photos", table) == "/data/photos"
    assert translate_bind_mount("/srv/pics/a", table) == "/home/me/pics/a"  # the subvolume, not the top level
    assert translate_bind_mount("/home/me", table) == "/home/me"
    assert translate_bind_mount("/mnt/lonely/a", table) == "/mnt/lonely/a"
    assert translate_bind_mount("/usr/share", table) == "/usr/share"
    shadowed = [*table, _m(8, "8:3", "/", "/data/photos")]  # something else mounted over the target
    assert translate_bind_mount("/mnt/bind", shadowed) == "/mnt/again/photos"  # the next visible name
    assert translate_bind_mount("/mnt/bind", [m for m in shadowed if m.order != 3]) == "/mnt/bind"


def test_bind_mounts_to_and_into_a_folder(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "2020").mkdir(parents=True)
    (photos / "2020" / "a.jpg").write_bytes(b"x")
    with bind_mount(photos, tmp_path / "mnt" / "to"), bind_mount(photos / "2020", tmp_path / "mnt" / "into"):
        assert (tmp_path / "mnt" / "into" / "a.jpg").exists()
        assert canonical_folder(str(tmp_path / "mnt" / "to")) == str(photos)
        assert canonical_folder(str(tmp_path / "mnt" / "to" / "2020")) == str(photos / "2020")
        assert canonical_folder(str(tmp_path / "mnt" / "into")) == str(photos / "2020")
        os.symlink(tmp_path / "mnt" / "into", tmp_path / "link")  # a symlink to a bind mount
        assert canonical_folder(str(tmp_path / "link")) == str(photos / "2020")
        assert canonical_folder(str(photos)) == str(photos)
