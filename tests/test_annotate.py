"""`img-search tag` and `img-search import-metadata`: paths named as the catalog names them, unknown paths reported
(exit 1, the known ones updated), malformed files refused with one line naming the line or entry (exit 2), the
writer lock respected. In-process through ``cli.main``; the catalog is written directly (no model needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import make_jpeg
from helpers import run_main as run

from img_search.annotate import read_metadata_file, split_tags
from img_search.catalog import Catalog, ImageRecord
from img_search.catalog.lock import IndexLock
from img_search.errors import InvalidInputError, NotFoundError


@pytest.fixture()
def library(tmp_path: Path) -> dict[str, Path]:
    """Photos on disk, catalogued under their real paths: three live, one marked deleted, one failed; plus a file
    that exists but was never indexed. The folder is reached through a symlink too."""
    photos = (tmp_path / "photos").resolve()
    names = ["beach.jpg", "cake.jpg", "sub/dog.jpg", "gone.jpg", "broken.jpg", "new.jpg"]
    for i, name in enumerate(names):
        make_jpeg(photos / name, seed=i)
    (tmp_path / "link").symlink_to(photos)
    idx = tmp_path / "idx"
    with Catalog.in_dir(idx) as cat:
        cat.record([ImageRecord(str(photos / n), 1, 1, bytes([i]) * 16, 96, 64) for i, n in enumerate(names[:4])])
        cat.record([ImageRecord(str(photos / "broken.jpg"), 1, 1, error="cannot identify image file")])
        cat.mark_deleted([str(photos / "gone.jpg")])
    return {"photos": photos, "idx": idx, "link": tmp_path / "link"}


def _ids(idx: Path, word: str) -> set[str]:
    with Catalog.in_dir(idx, readonly=True) as cat:
        rows = cat.images_by_id(i for i, _ in cat.text_search([word], 50))
        return {os.path.basename(r.path) for r in rows.values()}


def _tags(idx: Path, path: Path) -> list[str]:
    with Catalog.in_dir(idx, readonly=True) as cat:
        row = cat.image(str(path))
        assert row is not None
        return cat.tags_of(row.id)


def test_tag_add_remove_description_through_a_symlink_and_relative_paths(
        library: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    idx, photos = str(library["idx"]), library["photos"]
    code, out, err = run(capsys, "tag", str(library["link"] / "cake.jpg"), str(photos / "beach.jpg"),
                         "--add", "birthday", "--add", " Ana  2024 ", "--description", "Ana's 7th", "--index-dir", idx)
    assert code == 0, err
    assert "2 images updated" in out
    assert _tags(library["idx"], photos / "cake.jpg") == ["Ana 2024", "birthday"]
    assert _ids(library["idx"], "birthday") == {"cake.jpg", "beach.jpg"}
    assert _ids(library["idx"], "ana") == {"cake.jpg", "beach.jpg"}
    monkeypatch.chdir(photos / "sub")  # relative to the working directory, like any command-line path
    code, out, err = run(capsys, "tag", "../beach.jpg", "--remove", "BIRTHDAY", "--clear-description",
                         "--index-dir", idx, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["updated"] == [str(photos / "beach.jpg")] and result["descriptions_cleared"] == 1
    assert _ids(library["idx"], "birthday") == {"cake.jpg"}  # removed in any case
    with Catalog.in_dir(library["idx"], readonly=True) as cat:
        beach = cat.image(str(photos / "beach.jpg"))
        assert beach is not None and cat.description_of(beach.id) is None


def test_tag_reports_unknown_paths_and_still_updates_the_known_ones(
        library: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    photos, idx = library["photos"], str(library["idx"])
    code, out, err = run(capsys, "tag", str(photos / "sub" / "dog.jpg"), str(photos / "new.jpg"),
                         str(photos / "gone.jpg"), str(photos / "broken.jpg"), str(photos / "nope.jpg"),
                         "--add", "pets", "--index-dir", idx, "--json")
    assert code == 1
    result = json.loads(out)
    assert result["updated"] == [str(photos / "sub" / "dog.jpg")]
    reasons = {os.path.basename(u["path"]): u["reason"] for u in result["unknown"]}
    assert set(reasons) == {"new.jpg", "gone.jpg", "broken.jpg", "nope.jpg"}
    assert "not in the catalog" in reasons["new.jpg"] and "deleted" in reasons["gone.jpg"]
    assert "failed to index" in reasons["broken.jpg"] and "no such file" in reasons["nope.jpg"]
    assert all(os.path.basename(p) in err for p in reasons)  # each one named on stderr
    assert _ids(library["idx"], "pets") == {"dog.jpg"}


@pytest.mark.parametrize(("args", "message"), [
    ([], "nothing to do"),
    (["--add", "x", "--remove", "X"], "both added and removed"),
    (["--description", "a", "--clear-description"], "contradict"),
    (["--add", "   "], "empty tag"),
])
def test_tag_usage_errors_exit_2_and_write_nothing(library: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                   args: list[str], message: str) -> None:
    code, _, err = run(capsys, "tag", str(library["photos"] / "cake.jpg"), *args, "--index-dir",
                         str(library["idx"]))
    assert code == 2 and message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert _tags(library["idx"], library["photos"] / "cake.jpg") == []


def test_tag_without_catalog_and_under_a_running_index(library: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tag", str(library["photos"] / "cake.jpg"), "--add", "x", "--index-dir",
                       str(tmp_path / "none"))
    assert code == 1 and "no catalog" in err
    with IndexLock(library["idx"]):  # as `index` holds it
        code, _, err = run(capsys, "tag", str(library["photos"] / "cake.jpg"), "--add", "x", "--index-dir",
                           str(library["idx"]))
        assert code == 1 and "already writing" in err
        code, _, err = run(capsys, "import-metadata", str(_write(tmp_path / "m.csv", "path,tags\ncake.jpg,x\n")),
                           "--index-dir", str(library["idx"]))
        assert code == 1 and "already writing" in err
    assert _tags(library["idx"], library["photos"] / "cake.jpg") == []


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_import_csv_relative_to_the_file_with_both_separators(library: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    photos = library["photos"]
    csv_file = _write(photos / "meta.csv",
                      "\ufeffPath,Tags,Description,Rating\n"  # BOM, header in any case, an extra column
                      'cake.jpg,"birthday;Paris, France",Ana\'s 7th,5\n'
                      "\n"
                      "sub/dog.jpg,\"dog, park\",,\n"
                      f"{library['link']}/beach.jpg,summer,\"two\nlines\",\n"
                      "missing.jpg,x,,\n"
                      "gone.jpg,y,,\n")
    code, out, err = run(capsys, "import-metadata", str(csv_file), "--index-dir", str(library["idx"]))
    assert code == 1  # unknown paths
    assert "5 entries, 3 images updated" in out and "2 paths not in the catalog" in err
    assert "missing.jpg (line 7)" in err and "gone.jpg (line 8)" in err  # after a two-line cell and "rating" in err
    assert _tags(library["idx"], photos / "cake.jpg") == ["Paris, France", "birthday"]
    assert _tags(library["idx"], photos / "sub" / "dog.jpg") == ["dog", "park"]
    assert _ids(library["idx"], "france") == {"cake.jpg"} and _ids(library["idx"], "lines") == {"beach.jpg"}
    with Catalog.in_dir(library["idx"], readonly=True) as cat:
        dog = cat.image(str(photos / "sub" / "dog.jpg"))
        assert dog is not None and cat.description_of(dog.id) is None  # an empty cell changes nothing
    # importing again changes nothing more
    run(capsys, "import-metadata", str(csv_file), "--index-dir", str(library["idx"]))
    assert _tags(library["idx"], photos / "cake.jpg") == ["Paris, France", "birthday"]


def test_import_json_list_and_mapping_and_all_unknown_with_json(library: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    photos = library["photos"]
    listed = _write(tmp_path / "list.json", json.dumps([
        {"path": str(photos / "cake.jpg"), "tags": ["cake", "party"], "description": "chocolate"},
        {"path": str(photos / "beach.jpg"), "tags": "sea;sand"},
    ]))
    code, out, err = run(capsys, "import-metadata", str(listed), "--index-dir", str(library["idx"]), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["entries"] == 2 and result["tags_added"] == 4 and result["descriptions_set"] == 1
    assert _ids(library["idx"], "chocolate") == {"cake.jpg"} and _ids(library["idx"], "sand") == {"beach.jpg"}
    keyed = {f"../photos/unknown{i}.jpg": {"tags": ["u"]} for i in range(15)}
    keyed["../photos/sub/dog.jpg"] = {"description": "a good dog", "camera": "x"}
    mapping = _write(library["photos"].parent / "meta" / "map.json", json.dumps(keyed))
    code, out, err = run(capsys, "import-metadata", str(mapping), "--index-dir", str(library["idx"]))
    assert code == 1 and "15 paths not in the catalog" in err and "... and 5 more (--json lists all)" in err
    assert _ids(library["idx"], "good") == {"dog.jpg"}
    code, out, _ = run(capsys, "import-metadata", str(mapping), "--index-dir", str(library["idx"]), "--json")
    result = json.loads(out)
    assert code == 1 and len(result["unknown"]) == 15 and result["ignored_fields"] == ["camera"]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("bad.csv", "path,tags\na.jpg,x\nb.jpg,y,z\n", "line 3: 3 fields but the header has 2"),
    ("bad.csv", "file,tags\na.jpg,x\n", "line 1: the header has no 'path' column"),
    ("bad.csv", "path,rating\na.jpg,5\n", "needs a 'tags' or a 'description' column"),
    ("bad.csv", "path,tags\na.jpg,x\n ,y\n", "line 3: the path is empty"),
    ("bad.csv", 'path,tags\na.jpg,x\nb.jpg,"unterminated\n', "line 3"),
    ("bad.csv", b"path,tags\na.jpg,x\nb.jpg,caf\xe9\n", "line 3: not UTF-8"),
    ("bad.csv", "", "empty: expected a header row"),
    ("bad.json", '[{"path": "a.jpg"},\n {"path": "b.jpg", }]', "line 2 column"),
    ("bad.json", '[{"path": "a.jpg"}, {"tags": ["x"]}]', "entry 2: 'path' must be a non-empty string"),
    ("bad.json", '[{"path": "a.jpg", "tags": [1, 2]}]', "entry 1: 'tags' must be a list of strings"),
    ("bad.json", '{"a.jpg": ["x"]}', "cake.jpg'): expected an object with 'tags'"),
    ("bad.json", '"a.jpg"', "expected a list of objects"),
    ("bad.txt", "path,tags\n", "import takes .csv or .json"),
])
def test_malformed_files_exit_2_naming_the_line_and_write_nothing(
        library: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
        content: str | bytes, message: str) -> None:
    bad = _write(tmp_path / name, content)
    if not isinstance(content, bytes):  # a first row that is fine must not be applied either
        content = content.replace("a.jpg", str(library["photos"] / "cake.jpg"))
        _write(bad, content)
    code, out, err = run(capsys, "import-metadata", str(bad), "--index-dir", str(library["idx"]))
    assert code == 2, err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and out == ""
    assert _tags(library["idx"], library["photos"] / "cake.jpg") == []


def test_split_tags_and_parse_order(tmp_path: Path) -> None:
    assert split_tags("a; b ,c;;") == ["a", "b ,c"]
    assert split_tags(" a , b ") == ["a", "b"] and split_tags("  ") == []
    entries, ignored = read_metadata_file(_write(tmp_path / "m.csv", "path,tags\nx.jpg,b;a;B\n"))
    assert entries[0].tags == ("b", "a") and entries[0].where == "line 2" and ignored == []


def test_a_missing_metadata_file_is_not_found_exit_1(library: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A file that does not exist is "not found" (exit 1, as a missing folder for `index`), not a usage error."""
    code, out, err = run(capsys, "import-metadata", str(tmp_path / "nonexist.csv"), "--index-dir",
                         str(library["idx"]))
    assert code == 1 and out == "" and err.strip() == f"error: {tmp_path / 'nonexist.csv'}: no such file", err


def test_a_folder_or_missing_file_is_named_before_its_suffix(tmp_path: Path) -> None:
    """`import-metadata ~/Pictures` (a folder) and a missing `tags` (no suffix) say what is wrong, not 'unknown format
    (no suffix)'; a file that exists with another suffix still names the formats."""
    (tmp_path / "photos").mkdir()
    with pytest.raises(InvalidInputError, match=r"photos is a folder; give a \.csv or \.json file"):
        read_metadata_file(tmp_path / "photos")
    with pytest.raises(NotFoundError, match=r"tags: no such file"):
        read_metadata_file(tmp_path / "tags")
    with pytest.raises(InvalidInputError, match=r"unknown format '\.txt'"):
        read_metadata_file(_write(tmp_path / "tags.txt", "path,tags\n"))
