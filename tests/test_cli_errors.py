"""Every command with each bad option value: one line on stderr, no traceback, the documented exit code.

Exit codes (errors.py): 2 for a usage error (an option click cannot parse or an ``InvalidInputError``), 1 for any
other library error (not found, conflict, unavailable). Runs the CLI in-process through ``cli.main`` for speed;
``tests/test_cli.py`` runs it in subprocesses as users do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import make_jpeg
from helpers import run_main as run

from img_search.cli import display_path, main


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_siglip: Path) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli-errors")
    photos = root / "photos"
    for i in range(6):
        make_jpeg(photos / f"p{i}.jpg", seed=i)
    (root / "notes.txt").write_text("not an image")
    (root / "fake.jpg").write_text("not an image either")
    # what a new-user trial gave `similar`: a named pipe (hung), a broken symlink (exit 2), 3 GB of zeros (read whole)
    os.mkfifo(root / "fifo.jpg")
    (root / "broken.jpg").symlink_to(root / "gone.jpg")
    with open(root / "huge.jpg", "wb") as fh:
        fh.truncate(3 * 2**30)  # sparse: no disk
    idx = root / "idx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMG_SEARCH_MODEL", str(tiny_siglip))
        try:
            main(["index", str(photos), "--index-dir", str(idx), "--json", "-q", "--workers", "0"])
        except SystemExit as exc:
            assert not exc.code
    return {"root": str(root), "photos": str(photos), "idx": str(idx), "model": str(tiny_siglip)}


def _cases(d: dict[str, str]) -> list[tuple[list[str], int, str]]:
    photos, idx, model, root = d["photos"], d["idx"], d["model"], d["root"]
    img = os.path.join(photos, "p0.jpg")
    empty = os.path.join(root, "no-index-here")
    common = ["--index-dir", idx]
    return [
        # index
        (["index"], 2, "Missing argument"),
        (["index", photos, *common, "--batch-size", "0"], 2, "--batch-size"),
        (["index", photos, *common, "--batch-size", "abc"], 2, "--batch-size"),
        (["index", photos, *common, "--workers", "-1"], 2, "--workers"),
        (["index", photos, *common, "--max-image-pixels", "0"], 2, "--max-image-pixels"),
        (["index", photos, *common, "--device", "foo"], 2, "unknown device 'foo'"),
        (["index", photos, *common, "--dtype", "foo"], 2, "unknown dtype 'foo'"),
        (["index", photos, *common, "--no-such-option"], 2, "No such option"),
        (["index", os.path.join(root, "missing"), *common, "--model", model], 1, "does not exist"),
        (["index", img, *common, "--model", model], 2, "is not a folder"),
        (["index", photos, *common, "--model", os.path.join(root, "no-model")], 1, "does not exist"),
        (["index", photos, "--index-dir", "/proc/img-search-idx", "--model", model], 1, "index directory"),
        (["index", photos, "--index-dir", img, "--model", model], 2, "p0.jpg is a file, not a directory"),
        (["search", "x", "--index-dir", img], 2, "p0.jpg is a file, not a directory"),
        (["info", "--index-dir", os.path.join(img, "idx")], 2, "p0.jpg is a file, not a directory"),
        (["tag", img, "--add", "x", "--index-dir", img], 2, "p0.jpg is a file, not a directory"),
        # search
        (["search", "", *common], 2, "query text is empty"),
        (["search", "x", *common, "--limit", "0"], 2, "--limit"),
        (["search", "x", *common, "--limit", "many"], 2, "--limit"),
        (["search", "x", *common, "--threshold", "nan"], 2, "threshold must be a finite number"),
        (["search", "x", *common, "--threshold", "abc"], 2, "--threshold"),
        (["search", "x", *common, "--threshold", "2"], 2, "threshold must be within [0, 1]"),
        (["search", "x", *common, "--threshold", "-1"], 2, "threshold must be within [0, 1]"),
        (["similar", os.path.join(photos, "p0.jpg"), *common, "--threshold", "1.5"], 2, "within [0, 1]"),
        (["search", "x", *common, "--backend", "annoy"], 2, "unknown index backend 'annoy'"),
        (["search", "x", *common, "--server", "notaurl"], 2, "server: the server URL needs http:// or https://"),
        (["similar", os.path.join(photos, "p0.jpg"), *common, "--server", "http://"], 2, "server: the server URL"),
        (["search", "x", *common, "--ann-threshold", "-1"], 2, "--ann-threshold"),
        (["search", "x", *common, "--device", "gpu"], 2, "unknown device 'gpu'"),
        (["search", "x", *common, "--model", "other/model"], 1, "nothing is indexed with model"),
        (["search", "x", "--index-dir", empty], 1, "run `img-search index FOLDER` first"),
        (["search", f"dog +{root}/notes.txt", *common], 2, f"query image {root}/notes.txt: not an image"),
        (["search", f"dog -{root}/fake.jpg", *common], 2, f"query image {root}/fake.jpg: not an image"),
        (["search", f"dog +{root}/missing.jpg", *common], 1, "missing.jpg: no such image file"),
        # similar
        (["similar", os.path.join(root, "missing.jpg"), *common], 1, "missing.jpg"),
        (["similar", os.path.join(root, "notes.txt"), *common], 2, "notes.txt"),
        (["similar", os.path.join(root, "fake.jpg"), *common], 2, "fake.jpg"),
        (["similar", img, *common, "--max-image-pixels", "0"], 2, "--max-image-pixels"),
        (["similar", img, *common, "--limit", "-3"], 2, "--limit"),
        (["similar", img, "--index-dir", empty], 1, "run `img-search index FOLDER` first"),
        # not a regular file: refused at once, before a byte is read (a pipe blocks, /dev/zero never ends)
        (["similar", os.path.join(root, "fifo.jpg"), *common], 2, "fifo.jpg: not a regular file (device, socket or"),
        (["similar", "/dev/zero", *common], 2, "/dev/zero: not a regular file (device, socket or pipe)"),
        (["similar", photos, *common], 2, f"{photos}: is a directory"),
        # through a server the file is read to be uploaded: refused the same way (port 9: nothing is sent)
        (["similar", os.path.join(root, "fifo.jpg"), "--server", "http://127.0.0.1:9"], 2, "fifo.jpg: not a regular"),
        (["similar", os.path.join(root, "huge.jpg"), "--server", "http://127.0.0.1:9"], 2, "huge.jpg: not an image"),
        (["search", f"dog +{root}/fifo.jpg", *common], 2, f"query image {root}/fifo.jpg: not a regular file"),
        # a missing file is "not found" (exit 1) whether or not a symlink names it
        (["similar", os.path.join(root, "broken.jpg"), *common], 1, "broken.jpg: broken symlink"),
        (["search", f"dog +{root}/broken.jpg", *common], 1, "broken.jpg: broken symlink"),
        # 3 GB of zeros: refused from its header (tests/data/test_images.py measures the memory)
        (["similar", os.path.join(root, "huge.jpg"), *common], 2, "huge.jpg: not an image Pillow can read"),
        # info
        (["info", *common, "--failures", "-1"], 2, "--failures"),
        (["info", "--index-dir", empty], 1, "run `img-search index FOLDER` first"),
        # export
        (["export", *common], 2, "--output"),
        (["export", *common, "-o", os.path.join(root, "x.csv"), "--format", "csv"], 2, "unknown"),
        (["export", *common, "-o", os.path.join(root, "x.parquet"), "--model", "other/model"], 1, "nothing is indexed"),
        # the root
        (["frobnicate"], 2, "No such command"),
    ]


def test_every_bad_option_value_gives_one_line(indexed: dict[str, str], capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMG_SEARCH_MODEL", raising=False)
    monkeypatch.delenv("IMG_SEARCH_INDEX_DIR", raising=False)
    wrong = []
    for args, want_code, fragment in _cases(indexed):
        code, out, err = run(capsys, *args)
        lines = [line for line in err.splitlines() if line.strip()]
        ok = (code == want_code and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
              and "Traceback" not in err and out == "")
        if not ok:
            wrong.append(f"{args[:1]} {args[-2:]}: exit {code} (want {want_code}), stderr {err!r}, stdout {out[:80]!r}")
    assert not wrong, "\n".join(wrong)


def test_cuda_on_a_machine_without_it(indexed: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    new = Path(indexed["root"]) / "more"
    make_jpeg(new / "n.jpg", seed=99)
    code, _out, err = run(capsys, "index", str(new), "--index-dir", indexed["idx"], "--model", indexed["model"],
                         "--device", "cuda", "-q")
    assert code == 1 and err.count("\n") == 1 and "CUDA is not available" in err and "Traceback" not in err


def test_mps_on_a_machine_without_it(indexed: dict[str, str], capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--device mps where Metal is not available: one line, exit 1, before the model loads (index and search printed
    torch's 'RuntimeError: PyTorch is not linked with support for mps devices' traceback)."""
    import torch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    new = Path(indexed["root"]) / "more"
    make_jpeg(new / "n.jpg", seed=99)
    for args in (["index", str(new)], ["search", "a dog"]):
        code, out, err = run(capsys, *args, "--index-dir", indexed["idx"], "--model", indexed["model"],
                             "--device", "mps", "-q")
        assert code == 1 and out == "" and err.count("\n") == 1, (args, err)
        assert err.startswith("error: --device mps asked for, but Apple's Metal (MPS) is not available here"), err


def test_cuda_index_beyond_the_gpus_present(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from img_search.embedding.device import resolve_device
    from img_search.errors import DeviceUnavailableError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(DeviceUnavailableError, match=r"--device cuda:3 asked for, but this machine has 1 CUDA device "
                                                     r"\(cuda:0\)"):
        resolve_device("cuda:3")


def test_huge_limit_returns_what_exists(indexed: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "search", "x", "--index-dir", indexed["idx"], "--limit", "2147483647", "--json")
    assert code == 0 and len(json.loads(out)) == 6


@pytest.mark.parametrize(("name", "shown"), [
    ("plain name.jpg", "plain name.jpg"),
    ("café.jpg", "café.jpg"),
    ("two\nlines.jpg", "$'two\\nlines.jpg'"),
    ("esc\x1b[31mred.jpg", "$'esc\\E[31mred.jpg'"),
    ("tab\there's.jpg", "$'tab\\there\\'s.jpg'"),
    ("back\\slash\r.jpg", "$'back\\\\slash\\r.jpg'"),
    ("rtl\u202egpj.exe", "$'rtl\\u202egpj.exe'"),
    (os.fsdecode(b"bytes-\xff\xfe.jpg"), "$'bytes-\\xff\\xfe.jpg'"),
])
def test_display_path_is_one_safe_line(name: str, shown: str) -> None:
    assert display_path(name) == shown
    assert "\n" not in display_path(name) and "\x1b" not in display_path(name)


def test_human_output_prints_hostile_names_one_per_line(tmp_path: Path, tiny_siglip: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    names = [b"new\nline.jpg", b"esc\x1b[2Jape.jpg", b"cr\rret.jpg", b"not-utf8-\xff.jpg", b"ok.jpg"]
    for i, raw in enumerate(names):
        make_jpeg(Path(os.fsdecode(os.fsencode(str(photos)) + b"/" + raw)), seed=i)
    idx = str(tmp_path / "idx")
    code, _, err = run(capsys, "index", str(photos), "--index-dir", idx, "--model", str(tiny_siglip), "-q")
    assert code == 0, err
    code, out, err = run(capsys, "search", "x", "--index-dir", idx, "-n", "10")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 1 + len(names) and "\x1b" not in out and "\r" not in out
    code, out, _ = run(capsys, "search", "x", "--index-dir", idx, "-n", "10", "--json")
    on_disk = {os.fsencode(str(photos)) + b"/" + raw for raw in names}
    hits = json.loads(out)
    assert {os.fsencode(h["path"]) for h in hits} == on_disk and all("image_id" in h for h in hits)


@pytest.mark.parametrize("args", [[], ["collection"]])
def test_a_command_group_alone_prints_its_help_once(args: list[str]) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "img_search", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).count("Usage:") == 1


@pytest.mark.parametrize(("command", "notes"), [
    ("index", ["[env IMG_SEARCH_INDEX_DIR", "img-search[ocr]", "[env IMG_SEARCH_MODEL]", "[default: 32]"]),
    ("search", ["[env IMG_SEARCH_INDEX_DIR", "[env IMG_SEARCH_SERVER]", "Filters", "Ranking"]),
    ("serve", ["[env IMG_SEARCH_INDEX_DIR", "[default: 8000]"]),
])
def test_help_keeps_square_brackets(command: str, notes: list[str], capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: the notes are not wrapped apart
    code, out, err = run(capsys, command, "--help")
    assert code == 0, err
    missing = [n for n in notes if n not in out]
    assert not missing, out


# -- serve: the address is checked before anything is loaded ------------------------------------------------------
@pytest.fixture()
def no_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` must refuse before the service (and with it the catalog and the models) is started."""
    import img_search.service

    def must_not_start(*args: object, **kwargs: object) -> None:
        raise AssertionError("the service was started: the address must be checked before anything loads")

    monkeypatch.setattr(img_search.service, "run", must_not_start)


def test_serve_on_a_port_in_use_fails_in_one_line_before_loading(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_service: None) -> None:
    import socket

    with socket.socket() as taken:  # another program listening on a loopback port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run(capsys, "serve", "--host", "127.0.0.1", "--port", str(port), "--index-dir",
                             str(tmp_path / "idx"))
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot listen on 127.0.0.1:{port}: the port is already "
                                                   "in use"), err


@pytest.mark.parametrize(("host", "fragment"), [
    ("bad..host", "host 'bad..host' does not resolve"),  # refused by the IDNA codec: no name lookup is sent
    ("no-such-host.invalid", "host 'no-such-host.invalid' does not resolve (Name or service not known)"),
])
def test_serve_on_a_host_that_does_not_resolve_fails_in_one_line(
        host: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_service: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    real = socket.getaddrinfo

    def loopback_only(name: object, *args: object, **kwargs: object) -> object:
        if name == "no-such-host.invalid":  # what the resolver answers, without asking one
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    code, out, err = run(capsys, "serve", "--host", host, "--port", "8765", "--index-dir", str(tmp_path / "idx"))
    assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err


def test_map_of_too_few_images_is_refused_and_writes_nothing(indexed: dict[str, str],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from img_search.explore.sphere import MIN_FIT_POINTS
    from img_search.explore.umap_map import MAPS_DIR

    code, out, err = run(capsys, "map", "--index-dir", indexed["idx"], "--json")
    assert code == 2 and out == "" and err.count("\n") == 1, err  # 2: like any other invalid input
    assert err.startswith(f"error: the map needs at least {MIN_FIT_POINTS} images; the collection of ") and \
        err.rstrip().endswith("holds 6: index more images first"), err
    assert not (Path(indexed["idx"]) / MAPS_DIR).exists()


@pytest.mark.parametrize(("args", "message"), [
    (["index", "--recomput", "DIR"], "No such option: --recomput; did you mean --recompute?"),
    (["search", "--limt", "3", "q"], "No such option: --limt; did you mean --limit?"),
    (["search", "--th", "0.3", "q"], "No such option: --th; did you mean --threshold?"),  # click: --help, --sort, --tag
    (["index", "--no-default-exclude", "DIR"],  # the closest first (click sorts them alphabetically)
     "No such option: --no-default-exclude; did you mean --no-default-excludes or --default-excludes?"),
    (["index", "--json-out", "DIR"], "No such option: --json-out; did you mean --json?"),
    (["search", "--dtyp", "fp32", "q"], "No such option: --dtyp"),  # --dtype is hidden (deprecated): not offered
    (["search", "--recompute", "q"], "No such option: --recompute; it is an option of `img-search index`"),
    (["collection", "create", "--jsn"], "No such option: --jsn; did you mean --json?"),
])
def test_a_mistyped_option_gets_a_sensible_suggestion(args: list[str], message: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *args)
    where = " ".join(a for a in args[:2] if not a.startswith("-") and a not in ("DIR", "q"))
    assert code == 2 and out == "" and err == f"error: {message} (see `img-search {where} --help`)\n", err
    assert "Possible options" not in err


@pytest.mark.parametrize("name", ["map.txt", "map.pdf"])
def test_map_png_of_another_format_is_refused_before_any_work(indexed: dict[str, str], tmp_path: Path, name: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from img_search.explore.umap_map import MAPS_DIR

    code, out, err = run(capsys, "map", "--index-dir", indexed["idx"], "--png", str(tmp_path / name))
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: --png "), err
    assert "writes PNG only" in err and "Traceback" not in err, err
    assert not (Path(indexed["idx"]) / MAPS_DIR).exists() and not (tmp_path / name).exists()


def test_export_png_writes_the_path_it_is_given(tmp_path: Path) -> None:
    """A name without a suffix is written as given (matplotlib appended '.png' while the CLI printed the name)."""
    import numpy as np

    from img_search.explore.export import export_png
    from img_search.explore.umap_map import MapLayout

    pytest.importorskip("matplotlib")
    n = 8
    layout = MapLayout(model_id=1, image_ids=np.arange(n, dtype=np.int64), latitude=np.linspace(-60, 60, n),
                       longitude=np.linspace(-170, 170, n), fitted_at=0.0, n_fitted=n, updated_at=0.0)
    for name in ("noext", "upper.PNG"):
        written = export_png(layout, tmp_path / name)
        assert written == tmp_path / name and written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noext", "upper.PNG"]


@pytest.mark.parametrize("command", [["index"], ["search"], ["similar"], ["info"], ["serve"], ["worker"], ["tag"],
                                     ["import-metadata"], ["collection", "create"], ["collection", "check"],
                                     ["export"], ["map"], ["duplicates"]])
def test_every_command_takes_quiet_and_verbose(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """-q / -v alike on every command (debug-scores' -q is its --query; crossfilter has seed 004's options)."""
    code, out, err = run(capsys, *command, "--help")
    assert code == 0 and "--quiet" in out and "-q" in out and "--verbose" in out and "-v" in out, (out, err)


def test_quiet_info_prints_only_its_output(indexed: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "info", "-q", "--index-dir", indexed["idx"])
    assert code == 0 and out.startswith("index directory: ") and err == "", err
