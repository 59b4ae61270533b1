"""`img-search search` / `similar` with filters, sort, hybrid and query terms, through the command line (subprocess,
tiny SigLIP) and through a server (`--server`)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import helpers
import pytest

from img_search.catalog import Catalog

cli = functools.partial(helpers.cli, check=True)


@pytest.fixture()
def indexed(photo_dir: Path, tmp_path: Path, tiny_siglip: Path) -> dict[str, str]:
    env = {"IMG_SEARCH_INDEX_DIR": str(tmp_path / "idx"), "IMG_SEARCH_MODEL": str(tiny_siglip)}
    cli("index", str(photo_dir), "--json", env=env)
    return env


def test_folder_filter_returns_limit_hits_inside_the_folder(indexed: dict[str, str], photo_dir: Path) -> None:
    hits = json.loads(cli("search", "a dog", "--json", "--limit", "4", "--folder", str(photo_dir / "a"),
                          env=indexed).stdout)
    assert len(hits) == 4 and all(h["path"].startswith(str(photo_dir / "a") + os.sep) for h in hits)
    every = json.loads(cli("search", "a dog", "--json", "--limit", "100", "--folder", str(photo_dir / "a"),
                           env=indexed).stdout)
    assert len(every) == 6  # the folder holds 6 of the 12


def test_tag_filter_sort_by_date_and_human_output(indexed: dict[str, str], photo_dir: Path) -> None:
    tagged = [str(photo_dir / "a" / "img01.jpg"), str(photo_dir / "b" / "img02.jpg")]
    os.utime(tagged[0], (1_600_000_000, 1_600_000_000))
    with Catalog.in_dir(Path(indexed["IMG_SEARCH_INDEX_DIR"])) as cat:
        assert len(cat.add_tags(tagged, ["birthday"])) == 2
    hits = json.loads(cli("search", "cake", "--json", "--tag", "birthday", "--sort", "date", env=indexed).stdout)
    assert {h["path"] for h in hits} == set(tagged)
    assert [h["date_source"] for h in hits] == ["modified", "modified"]  # no EXIF: the files' mtimes
    assert hits[-1]["path"] == tagged[0]  # the older file last (newest first)
    human = cli("search", "cake", "--tag", "birthday", "--sort", "date", env=indexed).stdout
    assert "modified" in human and "date" in human.splitlines()[0]
    # the text index knows the tag: in hybrid mode the tagged images match "birthday" by text
    fused = json.loads(cli("search", "birthday", "--json", "--hybrid", "rrf", "-n", "2", env=indexed).stdout)
    assert {h["path"] for h in fused} == set(tagged) and all(h["matched"] != "embedding" for h in fused)


@pytest.mark.parametrize("args", [
    ["--after", "yesterday"], ["--near", "48.85,2.35"], ["--hybrid", "maybe"], ["--weight", "2"],
    ["--sort", "name"], ["--temperature", "-1"], ["--min-size", "huge"], ["--expand-merge", "avg"],
])
def test_bad_option_values_exit_2_with_one_line(indexed: dict[str, str], args: list[str]) -> None:
    proc = cli("search", "a dog", *args, env=indexed, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr


def test_only_not_terms_is_refused_and_missing_example_image_is_not_found(indexed: dict[str, str]) -> None:
    proc = cli("search", "--", "-people", env=indexed, check=False)
    assert proc.returncode == 2 and "NOT-terms" in proc.stderr
    proc = cli("search", "beach +/nowhere/x.jpg", env=indexed, check=False)
    assert proc.returncode == 1 and "no such image file" in proc.stderr


def test_similar_with_filter(indexed: dict[str, str], photo_dir: Path) -> None:
    query = photo_dir / "a" / "img01.jpg"
    hits = json.loads(cli("similar", str(query), "--json", "--folder", str(photo_dir / "b"), "-n", "3",
                          env=indexed).stdout)
    assert len(hits) == 3 and all(h["path"].startswith(str(photo_dir / "b")) for h in hits)
