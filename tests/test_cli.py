"""The command line end to end, as a user runs it: in subprocesses, and in this process (``helpers.run_main``) where
a test must patch a constant (the progress interval) or count what was written."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
from helpers import make_jpeg, run_main

cli = functools.partial(helpers.cli, check=True)


@pytest.fixture()
def indexed(photo_dir: Path, tmp_path: Path, tiny_siglip: Path) -> dict[str, str]:
    raw = os.fsencode(str(photo_dir)) + b"/odd-\xff.jpg"  # a non-UTF-8 file name
    make_jpeg(Path(os.fsdecode(raw)), seed=77)
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    env = {"IMG_SEARCH_INDEX_DIR": str(tmp_path / "idx"), "IMG_SEARCH_MODEL": str(tiny_siglip)}
    proc = cli("index", str(photo_dir), "--json", env=env)
    summary = json.loads(proc.stdout)  # stdout is only JSON
    assert summary["embedded"] == 13 and [os.path.basename(f["path"]) for f in summary["failed"]] == ["broken.jpg"]
    return env


def test_search_json_and_human(indexed: dict[str, str], photo_dir: Path) -> None:
    proc = cli("search", "a dog on the beach", "--json", "--limit", "5", env=indexed)
    hits = json.loads(proc.stdout)
    assert len(hits) == 5
    assert all(set(h) >= {"path", "cosine", "probability"} for h in hits)
    assert all(os.path.isabs(h["path"]) and 0.0 <= h["probability"] <= 1.0 for h in hits)
    cosines = [h["cosine"] for h in hits]
    assert cosines == sorted(cosines, reverse=True)
    human = cli("search", "a dog on the beach", "-n", "3", env=indexed)
    assert "probability" in human.stdout and str(photo_dir) in human.stdout


def test_search_uses_catalog_model_by_default(indexed: dict[str, str]) -> None:
    env = {"IMG_SEARCH_INDEX_DIR": indexed["IMG_SEARCH_INDEX_DIR"]}
    proc = cli("search", "red car", "--json", env={**env, "IMG_SEARCH_MODEL": ""})
    assert len(json.loads(proc.stdout)) == 10


def test_threshold_on_probability(indexed: dict[str, str]) -> None:
    hits = json.loads(cli("search", "a cat", "--json", "--limit", "13", env=indexed).stdout)
    cut = sorted(h["probability"] for h in hits)[6]
    kept = json.loads(cli("search", "a cat", "--json", "--limit", "13", "--threshold", str(cut), env=indexed).stdout)
    assert kept and all(h["probability"] >= cut for h in kept) and len(kept) < len(hits)


def test_similar_excludes_itself_and_has_no_probability(indexed: dict[str, str], photo_dir: Path) -> None:
    query = photo_dir / "a" / "img01.jpg"
    hits = json.loads(cli("similar", str(query), "--json", "-n", "4", env=indexed).stdout)
    assert len(hits) == 4 and str(query) not in [h["path"] for h in hits]
    assert all(h["probability"] is None for h in hits)
    outside = photo_dir.parent / "outside.jpg"
    make_jpeg(outside, seed=500)
    assert len(json.loads(cli("similar", str(outside), "--json", "-n", "2", env=indexed).stdout)) == 2


def test_non_utf8_path_in_json(indexed: dict[str, str]) -> None:
    hits = json.loads(cli("search", "x", "--json", "--limit", "13", env=indexed).stdout)
    odd = [h["path"] for h in hits if "odd-" in h["path"]]
    assert odd and odd[0].endswith("odd-\udcff.jpg")
    assert os.path.exists(os.fsencode(odd[0]))


def test_info(indexed: dict[str, str], tiny_siglip: Path) -> None:
    data = json.loads(cli("info", "--json", env=indexed).stdout)
    assert data["images"] == {"ok": 13, "error": 1}
    assert data["models"][0]["name"] == str(tiny_siglip) and data["models"][0]["images"] == 13
    assert data["failures"][0]["path"].endswith("broken.jpg") and data["size_on_disk_bytes"] > 0
    human = cli("info", env=indexed).stdout
    assert "broken.jpg" in human and "13 ok" in human
    assert data["models"][0]["recompute"] is None and "recompute" not in human


def test_info_shows_an_unfinished_recompute(indexed: dict[str, str], tiny_siglip: Path, photo_dir: Path) -> None:
    """An interrupted `index --recompute` (its bookkeeping as the run leaves it: files under a/ re-embedded, the rest
    not): `info` says its decode mode, start, files done / total and the command that finishes it."""
    from img_search.catalog import Catalog
    from img_search.catalog.lock import IndexLock
    from img_search.info import catalog_info

    idx = indexed["IMG_SEARCH_INDEX_DIR"]
    with Catalog.in_dir(Path(idx)) as cat:
        model = cat.get_model(str(tiny_siglip))
        assert model is not None
        assert cat.start_recompute(model.id, [str(photo_dir)], decode="full").files == 14  # broken.jpg included
        cat.finish_recompute(model.id, [str(photo_dir / "a")])  # the 6 under a/ done
    rc = json.loads(cli("info", "--json", env=indexed).stdout)["models"][0]["recompute"]
    command = f"img-search index {photo_dir} --model {tiny_siglip} --index-dir {idx}"
    assert rc["started"] and rc.pop("started")[:4].isdigit()
    assert rc == {"decode": "full", "files": 14, "done": 6, "left": 8, "folders": [{"path": str(photo_dir), "left": 8}],
                  "command": command, "running": False}
    human = cli("info", env=indexed).stdout
    assert "  unfinished --recompute (decoding as full, started " in human
    assert f"6 of 14 files re-embedded, 8 left; `{command}` finishes it" in human
    with IndexLock(Path(idx)):  # an `index` holding the writer lock may be the run doing it: no command then
        assert catalog_info(Path(idx))["models"][0]["recompute"]["running"] is True
    proc = cli(*command.split()[1:], "--json", env=indexed)  # the command it names finishes it
    assert json.loads(proc.stdout)["embedded"] == 7  # the 8 left but broken.jpg, which failed before
    assert json.loads(cli("info", "--json", env=indexed).stdout)["models"][0]["recompute"] is None


def test_errors_are_clear(tmp_path: Path, tiny_siglip: Path) -> None:
    env = {"IMG_SEARCH_INDEX_DIR": str(tmp_path / "none")}
    proc = cli("search", "anything", env=env, check=False)
    assert proc.returncode == 1 and "run `img-search index FOLDER` first" in proc.stderr and proc.stdout == ""
    proc = cli("index", str(tmp_path / "missing"), "--model", str(tiny_siglip), env=env, check=False)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    proc = cli("index", str(tmp_path), "--model", str(tmp_path / "no-model"), env=env, check=False)
    assert proc.returncode == 1 and "error:" in proc.stderr
    proc = cli("search", "--limit", "0", "x", env=env, check=False)
    assert proc.returncode == 2


def test_offline_model_error(tmp_path: Path) -> None:
    make_jpeg(tmp_path / "p" / "a.jpg")
    proc = cli("index", str(tmp_path / "p"), "--index-dir", str(tmp_path / "idx"), check=False,
               env={"IMG_SEARCH_MODEL": ""})
    assert proc.returncode == 1
    assert "google/siglip-base-patch16-224" in proc.stderr and "--model DIR" in proc.stderr


def test_backend_override_and_saved_index(indexed: dict[str, str]) -> None:
    exact = json.loads(cli("search", "a boat", "--json", "--backend", "exact", env=indexed).stdout)
    ann = json.loads(cli("search", "a boat", "--json", "--backend", "hnswlib", env=indexed).stdout)
    assert [h["path"] for h in ann] == [h["path"] for h in exact]  # 13 vectors: HNSW is exact here
    info = json.loads(cli("info", "--json", env=indexed).stdout)
    assert info["models"][0]["search_index"]["backend"] == "exact"
    assert info["models"][0]["search_index"]["vectors"] == 13
    bad = cli("search", "a boat", "--backend", "annoy", env=indexed, check=False)
    assert bad.returncode == 2 and "valid:" in bad.stderr  # a bad option value is a usage error


def test_clip_end_to_end_has_cosine_thresholds(photo_dir: Path, tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    env = {"IMG_SEARCH_INDEX_DIR": str(tmp_path / "clip-idx"), "IMG_SEARCH_MODEL": str(tiny_models["clip"])}
    assert json.loads(cli("index", str(photo_dir), "--json", env=env).stdout)["embedded"] == 12
    # the embedding alone: with hybrid search a hit that matched the text index (a colour keyword, "red") is kept
    # whatever its cosine (docs/SEARCH.md), and which photos read as red depends on the generated pictures
    hits = json.loads(cli("search", "a red car", "--json", "-n", "12", "--hybrid", "off", env=env).stdout)
    assert len(hits) == 12 and all(h["probability"] is None for h in hits)
    cut = sorted(h["cosine"] for h in hits)[6]
    kept = json.loads(cli("search", "a red car", "--json", "-n", "12", "--hybrid", "off", "--threshold", str(cut),
                          env=env).stdout)
    assert kept and all(h["cosine"] >= cut for h in kept) and len(kept) < 12


def test_read_only_index_dir(indexed: dict[str, str], read_only_mount, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The case `readonly_index_dir.sh`: a catalog on read-only media answers info, search and similar as it is;
    `index` refuses in one line."""
    ro = read_only_mount(Path(indexed["IMG_SEARCH_INDEX_DIR"]))
    env = {**indexed, "IMG_SEARCH_INDEX_DIR": str(ro)}
    data = json.loads(cli("info", "--json", env=env).stdout)
    assert data["images"] == {"ok": 13, "error": 1} and data["read_only"] is True
    assert len(json.loads(cli("search", "a dog", "--json", env=env).stdout)) == 10
    assert len(json.loads(cli("similar", str(photo_dir / "a" / "img01.jpg"), "--json", "-n", "3", env=env).stdout)) == 3
    proc = cli("index", str(photo_dir), env=env, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "writable --index-dir" in proc.stderr


def _peak_rss_kib(*args: str, env: dict[str, str]) -> tuple[int, int]:
    """(number of hits, peak RSS in KiB) of one `img-search search ... --json` process."""
    code = ("import json, resource, sys\nfrom img_search.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **env))
    return len(json.loads(proc.stdout)), int(proc.stderr.strip().splitlines()[-1])


def test_huge_limit_returns_what_exists_at_the_same_cost(indexed: dict[str, str]) -> None:
    n_small, rss_small = _peak_rss_kib("search", "a dog", "--json", "--limit", "10", env=indexed)
    n_huge, rss_huge = _peak_rss_kib("search", "a dog", "--json", "--limit", "2147483647", env=indexed)
    assert (n_small, n_huge) == (10, 13)
    assert rss_huge <= 1.1 * rss_small


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_search_and_similar_through_a_running_server(indexed: dict[str, str], photo_dir: Path,
                                                     tmp_path: Path) -> None:
    import time
    import urllib.request

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "img_search", "serve", "--host", "127.0.0.1", "--port", str(port)],
                              env=dict(os.environ, **indexed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/api/v1/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)
        local = json.loads(cli("search", "a red car", "--json", "-n", "5", env=indexed).stdout)
        remote = json.loads(cli("search", "a red car", "--json", "-n", "5", env={**indexed,
                                                                                 "IMG_SEARCH_SERVER": url}).stdout)
        assert [h["path"] for h in remote] == [h["path"] for h in local]
        every = json.loads(cli("search", "x", "--json", "-n", "13", "--server", url, env=indexed).stdout)
        odd = [h["path"] for h in every if "odd-" in h["path"]]  # a name that is not UTF-8, through HTTP
        assert len(every) == 13 and odd and os.path.exists(os.fsencode(odd[0]))
        query = str(photo_dir / "a" / "img01.jpg")
        near = json.loads(cli("similar", query, "--json", "-n", "3", "--server", url, env=indexed).stdout)
        assert len(near) == 3 and query not in [h["path"] for h in near]
        other = cli("search", "x", "--server", url, "--index-dir", str(tmp_path / "elsewhere"), env=indexed,
                    check=False)
        assert other.returncode == 1 and other.stderr.count("\n") == 1 and "elsewhere" in other.stderr
        both = cli("search", "x", "--server", url, "--backend", "exact", env=indexed, check=False)
        assert both.returncode == 2 and "--backend" in both.stderr
    finally:
        server.terminate()
        server.wait(30)
    down = cli("search", "x", "--server", url, env=indexed, check=False)
    assert down.returncode == 1 and "no img-search service answers" in down.stderr


def test_precision_is_recorded_and_a_search_loads_no_torch(photo_dir: Path, tmp_path: Path, tiny_siglip: Path) -> None:
    """`index` with the default precision (auto) records how each vector was computed and the parity checks; a
    later `search` answers through the light text path (ONNX Runtime + tokenizers), never importing torch."""
    env = {"IMG_SEARCH_INDEX_DIR": str(tmp_path / "idx"), "IMG_SEARCH_MODEL": str(tiny_siglip)}
    summary = json.loads(cli("index", str(photo_dir), "--json", env=env).stdout)
    assert summary["embedded"] == 12 and summary["precision"]
    model = json.loads(cli("info", "--json", env=env).stdout)["models"][0]
    assert sum(c["images"] for c in model["precisions"]) == 12
    towers = {c["tower"] for c in model["parity_checks"] if c["passed"]}
    assert towers == {"image", "text"}
    code = ("import json, sys\nfrom img_search.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code, "search", "a red car", "--json", "-n", "3"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, **env))
    assert len(json.loads(proc.stdout)) == 3 and proc.stderr.strip().splitlines()[-1] == "False", proc.stderr
    fp32 = json.loads(cli("search", "a red car", "--json", "-n", "3", "--precision", "fp32", env=env).stdout)
    assert len(fp32) == 3  # an explicit precision for the query is served too
    bad = cli("index", str(photo_dir), "--precision", "int4", env=env, check=False)
    assert bad.returncode == 2 and "unknown precision 'int4'" in bad.stderr


# -- progress when stderr is not a terminal -----------------------------------------------------------------------
PROGRESS_LINE = r"(?m)^{what}: \d+/{total} images \(\d+%\), [0-9.]+ images/s, ETA \S+$"


def test_line_progress_prints_done_total_rate_and_eta_at_its_interval() -> None:
    import io

    from img_search.console import LineProgress

    clock = iter([0.0, 4.0, 10.0, 25.0, 26.0, 30.0])  # a fake clock: the lines depend on it, not on this machine
    out = io.StringIO()
    progress = LineProgress(every=10, stream=lambda: out, clock=lambda: next(clock))
    progress.start(400, "embedding")
    for _ in range(4):
        progress.advance(50)
    progress.stop()
    assert out.getvalue().splitlines() == [
        "embedding: 100/400 images (25%), 10.0 images/s, ETA 30s",  # at 10 s
        "embedding: 150/400 images (38%), 6.0 images/s, ETA 42s",  # at 25 s
        "embedding: 200/400 images in 30s",  # stop: the last state of a phase that printed
    ]
    out.truncate(0)
    out.seek(0)
    clock = iter([0.0, 1.0, 2.0])
    progress.start(10, "metadata")  # shorter than the interval: silent
    progress.advance(10)
    progress.stop()
    assert out.getvalue() == ""


@pytest.mark.parametrize("quiet", [False, True])
def test_index_and_duplicates_show_progress_lines_when_stderr_is_not_a_terminal(
        quiet: bool, photo_dir: Path, tmp_path: Path, tiny_siglip: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What a log file or a pipe gets (capsys is not a TTY): a plain line per interval (0 here, so every batch),
    nothing with -q."""
    import re

    import img_search.console

    monkeypatch.setattr(img_search.console, "PROGRESS_EVERY_SECONDS", 0.0)
    common = ["--index-dir", str(tmp_path / "idx"), *(["-q"] if quiet else [])]
    code, out, err = run_main(capsys, "index", str(photo_dir), "--model", str(tiny_siglip), "--workers", "0",
                              "--batch-size", "4", "--json", *common)
    assert code == 0 and json.loads(out)["embedded"] == 12
    lines = re.findall(PROGRESS_LINE.format(what="embedding", total=12), err)
    assert (lines == []) if quiet else (len(lines) >= 2 and lines[-1].startswith("embedding: 12/12 ")), err
    code, out, err = run_main(capsys, "duplicates", *common)
    assert code == 0
    lines = re.findall(PROGRESS_LINE.format(what="near-duplicates", total=12), err)
    assert (err == "") if quiet else bool(lines), err


# -- tag and import-metadata: what changed, as stored -------------------------------------------------------------
@pytest.fixture()
def catalogued(tmp_path: Path) -> tuple[Path, str]:
    """Three photos catalogued directly (no model needed): (their folder, the index directory)."""
    from img_search.catalog import Catalog, ImageRecord

    photos = (tmp_path / "photos").resolve()
    names = ["a.jpg", "b.jpg", "c.jpg"]
    for i, name in enumerate(names):
        make_jpeg(photos / name, seed=i)
    with Catalog.in_dir(tmp_path / "idx") as cat:
        cat.record([ImageRecord(str(photos / n), 1, 1, bytes([i + 1]) * 16, 96, 64) for i, n in enumerate(names)])
    return photos, str(tmp_path / "idx")


def _tags_of(idx: str, path: Path) -> list[str]:
    from img_search.catalog import Catalog

    with Catalog.in_dir(Path(idx), readonly=True) as cat:
        row = cat.image(str(path))
        assert row is not None
        return cat.tags_of(row.id)


def test_import_metadata_counts_what_changed(catalogued: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    photos, idx = catalogued
    meta = photos / "meta.csv"
    meta.write_text("path,tags,description\na.jpg,dog;beach,at the sea\nb.jpg,cat,\nmissing.jpg,x,\n")
    code, out, err = run_main(capsys, "import-metadata", str(meta), "--index-dir", idx)
    assert code == 1 and "1 path not in the catalog" in err  # missing.jpg
    assert out.strip() == (f"{meta}: 3 entries, 2 images updated (3 tags added, 1 description set), 0 unchanged "
                           "(already as the file says), 1 not in the catalog")
    code, out, _ = run_main(capsys, "import-metadata", str(meta), "--index-dir", idx)  # again: nothing changes
    assert code == 1 and out.strip() == (f"{meta}: 3 entries, 0 images updated (0 tags added, 0 descriptions set), "
                                         "2 unchanged (already as the file says), 1 not in the catalog")
    code, out, _ = run_main(capsys, "import-metadata", str(meta), "--index-dir", idx, "--json")
    result = json.loads(out)
    assert (result["updated"], result["tags_added"], result["descriptions_set"]) == ([], 0, 0)
    assert result["unchanged"] == [str(photos / "a.jpg"), str(photos / "b.jpg")] and len(result["unknown"]) == 1
    # a tag the image has in another case is not added again; a new description replaces the old one
    again = photos / "again.json"
    again.write_text(json.dumps({"a.jpg": {"tags": ["DOG", "new"], "description": "at the sea"},
                                 "b.jpg": {"description": "a cat"}, "c.jpg": {"tags": ["Cat"]}}))
    code, out, err = run_main(capsys, "import-metadata", str(again), "--index-dir", idx, "--json")
    result = json.loads(out)
    assert code == 0, err
    assert result["updated"] == [str(photos / n) for n in ("a.jpg", "b.jpg", "c.jpg")] and result["unchanged"] == []
    assert (result["tags_added"], result["descriptions_set"]) == (2, 1)  # new on a, Cat on c; b's description
    assert _tags_of(idx, photos / "a.jpg") == ["beach", "dog", "new"]


def test_tag_echoes_the_tags_as_stored(catalogued: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    photos, idx = catalogued
    a, b = str(photos / "a.jpg"), str(photos / "b.jpg")
    code, out, err = run_main(capsys, "tag", a, "--add", "  Summer   Trip ", "--add", "summer trip", "--add", "x",
                              "--index-dir", idx)
    assert code == 0, err
    assert out.strip() == "1 image updated: +Summer Trip, +x"  # cleaned, one spelling per tag
    assert _tags_of(idx, photos / "a.jpg") == ["Summer Trip", "x"]
    code, out, _ = run_main(capsys, "tag", a, b, "--add", "SUMMER trip", "--description", " by the lake ",
                            "--index-dir", idx)
    assert out.strip() == "2 images updated: +SUMMER trip, description set"  # a had the tag, not the description
    code, out, _ = run_main(capsys, "tag", a, "--add", "summer TRIP", "--index-dir", idx)
    assert out.strip() == "0 images updated; 1 unchanged (already as asked)"
    code, out, _ = run_main(capsys, "tag", a, b, "--remove", "summer trip", "--remove", "nope", "--index-dir", idx,
                            "--json")
    result = json.loads(out)
    assert result["removed_tags"] == ["Summer Trip", "SUMMER trip"] and result["tags_removed"] == 2
    assert result["added_tags"] == [] and result["updated"] == [a, b]
    code, out, _ = run_main(capsys, "tag", b, "--add", "x", "--remove", "nope", "--index-dir", idx)
    assert out.strip() == "1 image updated: +x"  # nothing to remove: not echoed


def test_index_summary_counts_every_file_found_and_why_some_were_skipped(
        photo_dir: Path, tmp_path: Path, tiny_siglip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The files of unsupported formats are among the image files found and among the skipped ones, so the counts
    add up: found = embedded + reused + unchanged + skipped."""
    import re

    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (photo_dir / "raw.cr2").write_bytes(b"II*\x00 not decoded")
    (photo_dir / "layers.xcf").write_bytes(b"gimp xcf v011")
    args = ["index", str(photo_dir), "--index-dir", str(tmp_path / "idx"), "--model", str(tiny_siglip), "--workers",
            "0", "-q"]
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    first = out.splitlines()[0]
    assert re.fullmatch(r"15 image files under 1 folder: 12 embedded, 0 reused \(moved/copied\), 0 unchanged, "
                        r"3 skipped \(2 unsupported format, 1 unreadable\); 0 marked deleted \(no longer found\); "
                        r"in [0-9.]+s", first), first
    assert "raw.cr2: camera RAW (.cr2) is not supported" in out
    code, out, _ = run_main(capsys, *args, "--json")
    summary = json.loads(out)
    assert summary["scanned"] == 13 and summary["failed_before"] == 3  # the keys of before, unchanged
    assert {k: summary[k] for k in ("image_files", "skipped", "skipped_unsupported_format", "skipped_unreadable")} \
        == {"image_files": 15, "skipped": 3, "skipped_unsupported_format": 0, "skipped_unreadable": 0}
    code, out, _ = run_main(capsys, *args)
    assert out.startswith("15 image files under 1 folder: 0 embedded, 0 reused (moved/copied), 12 unchanged, "
                          "3 skipped (3 failed before, not retried); 0 marked deleted"), out


def test_library_notes_only_with_verbose_and_nothing_but_errors_with_quiet(photo_dir: Path, tmp_path: Path,
                                                                           tiny_siglip: Path) -> None:
    """The tiny checkpoint's text config has special token ids outside its vocabulary, which transformers notes on
    its own handler ("[transformers] Model config: bos_token_id must be `None` ..."): shown with -v only; -q leaves
    stderr empty. Fresh interpreters, as transformers reads its level once, when first imported."""
    env = {"IMG_SEARCH_INDEX_DIR": str(tmp_path / "idx"), "IMG_SEARCH_MODEL": str(tiny_siglip),
           "TRANSFORMERS_VERBOSITY": "info"}  # what a user's shell may have set: -q and the default still win
    quiet = cli("index", str(photo_dir), "-q", env=env)
    assert quiet.stderr == ""
    default = cli("index", str(photo_dir), "--recompute", env=env)
    assert "[transformers]" not in default.stderr and "Traceback" not in default.stderr, default.stderr
    verbose = cli("index", str(photo_dir), "--recompute", "-v", env=env)
    assert "[transformers] Model config:" in verbose.stderr, verbose.stderr
    uuids = tmp_path / "uuids"  # crossfilter, with its own options and logging set-up
    for i in range(3):
        make_jpeg(uuids / f"00000000-0000-4000-8000-{i:012d}.jpg", seed=i)
    crossfilter = cli("crossfilter", "--input_dir", str(uuids), "--output_embeddings_db", str(tmp_path / "cf.db"),
                      "--model", str(tiny_siglip), "--quiet", env=env)
    assert crossfilter.returncode == 0 and crossfilter.stderr == "", crossfilter.stderr


def test_counts_agree_with_their_nouns(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """'1 group of near-duplicates (2 images)', not '1 groups'; the identical copy reuses its original's vector."""
    import shutil

    from img_search.wording import count as _count

    assert (_count(1, "group"), _count(2, "group"), _count(0, "entry", "entries")) == ("1 group", "2 groups",
                                                                                      "0 entries")
    shutil.copy(photo_dir / "b" / "img00.jpg", photo_dir / "copy.jpg")
    common = ["--index-dir", str(tmp_path / "idx"), "--model", str(tiny_siglip)]
    code, out, err = run_main(capsys, "index", str(photo_dir), *common, "--workers", "0", "-q")
    assert code == 0 and out.startswith("13 image files under 1 folder: 12 embedded, 1 reused (moved/copied), "), out
    code, out, err = run_main(capsys, "duplicates", *common)
    assert code == 0 and out.startswith("1 group of near-duplicates (2 images) at cosine >= "), (out, err)


def test_index_rate_says_what_it_covers(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The embedding loop's rate is labelled as such, with the whole run's beside it; --json adds, renames nothing."""
    common = [str(photo_dir), "--index-dir", str(tmp_path / "idx"), "--model", str(tiny_siglip), "--workers", "0"]
    code, out, _ = run_main(capsys, "index", *common, "-q")
    line = out.splitlines()[1]
    assert code == 0 and line.startswith("embedding: ") and " images/s over " in line, out
    assert "s once the model was loaded (whole run: " in line and "throughput" not in out, out
    make_jpeg(photo_dir / "new.jpg", seed=100)
    code, out, _ = run_main(capsys, "index", *common, "-q", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["embedded"] == 1 and {"images_per_second", "run_images_per_second"} <= set(summary)
    assert summary["run_images_per_second"] > 0 and summary["seconds"] >= summary["embed_seconds"]
