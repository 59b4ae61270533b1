"""The one settings object: precedence flag > IMG_SEARCH_* > config.toml > default, validation, serialisation."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from img_search.errors import ConfigError, InvalidInputError
from img_search.settings import DEFAULTS, Settings, default_index_dir, load_settings, resolve_index_dir


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("IMG_SEARCH_"):
            monkeypatch.delenv(name)


def test_defaults_without_file_or_environment(tmp_path: Path) -> None:
    s = load_settings(tmp_path)
    assert s.index_dir == tmp_path and s.model is None and s.batch_size == DEFAULTS.batch_size == 32
    assert s.search.ann_backend is None and s.search.ann_threshold == 20_000 and s.exclude == ()


def test_precedence_flag_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.toml").write_text(
        'batch_size = 8\nworkers = 3\nexclude = ["raw/**"]\n'
        '[search]\nann_backend = "usearch"\nann_threshold = 500\n[search.params.usearch]\nM = 32\n')
    s = load_settings(tmp_path)
    assert (s.batch_size, s.workers, s.exclude) == (8, 3, ("raw/**",))
    assert (s.search.ann_backend, s.search.ann_threshold, s.search.params) == ("usearch", 500, {"usearch": {"M": 32}})
    monkeypatch.setenv("IMG_SEARCH_BATCH_SIZE", "4")
    monkeypatch.setenv("IMG_SEARCH_SEARCH__ANN_THRESHOLD", "7")
    s = load_settings(tmp_path)
    assert s.batch_size == 4 and s.workers == 3
    assert (s.search.ann_backend, s.search.ann_threshold) == ("usearch", 7)  # nested tables merge across sources
    s = load_settings(tmp_path, batch_size=2, workers=None, search={"ann_backend": "exact"})
    assert (s.batch_size, s.workers) == (2, 3)  # None means "flag not given"
    assert (s.search.ann_backend, s.search.ann_threshold) == ("exact", 7)


def test_index_dir_comes_from_flag_env_or_default_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_index_dir(None) == default_index_dir()
    monkeypatch.setenv("IMG_SEARCH_INDEX_DIR", str(tmp_path / "env"))
    assert resolve_index_dir(None) == tmp_path / "env"
    assert resolve_index_dir(tmp_path / "flag") == tmp_path / "flag"
    (tmp_path / "flag").mkdir()
    (tmp_path / "flag" / "config.toml").write_text('index_dir = "/elsewhere"\n')
    assert load_settings(tmp_path / "flag").index_dir == tmp_path / "flag"  # the flag wins over the file


def test_empty_environment_values_mean_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG_SEARCH_MODEL", "")
    monkeypatch.setenv("IMG_SEARCH_INDEX_DIR", "")
    assert load_settings(tmp_path).model is None
    assert resolve_index_dir(None) == default_index_dir()


@pytest.mark.parametrize(("given", "message"), [
    ({"batch_size": 0}, "batch_size"),
    ({"workers": -1}, "workers"),
    ({"max_image_pixels": 0}, "max_image_pixels"),
    ({"device": "cuda:x"}, "unknown device 'cuda:x'"),
    ({"dtype": "foo"}, "unknown dtype 'foo'"),
    ({"model": "  "}, "model name is empty"),
    ({"search": {"ann_backend": "annoy"}}, "unknown index backend 'annoy'"),
    ({"search": {"ann_threshold": -1}}, "ann_threshold"),
    ({"search": {"params": {"annoy": {}}}}, "unknown index backend 'annoy'"),
    ({"search": {"params": {"exact": {"ef": 64}}}}, r"exact\.ef: not a parameter of the exact index"),
    ({"search": {"params": {"hnswlib": {"dim": 3}}}}, r"hnswlib\.dim: set by the collection"),
    ({"bogus": 1}, "bogus: unknown setting"),
])
def test_invalid_values_name_the_setting(tmp_path: Path, given: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_settings(tmp_path, **given)
    assert isinstance(err.value, InvalidInputError)


@pytest.mark.parametrize("given", [{"service": {"redis_url": "notaurl"}}, {"service": {"queue_name": "a b"}},
                                   {"service": {"allowed_roots": ["rel/dir"]}}, {"batch_size": 0}])
def test_the_refused_value_is_shown_once(tmp_path: Path, given: dict) -> None:
    """A validator that names the value itself is not followed by a second '(got ...)' (REDIS_URL=notaurl said
    "(got 'notaurl') (got 'notaurl')")."""
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path, **given)
    assert str(err.value).count("(got ") == 1, str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ("[search\n", "not valid TOML"),
    ('[search]\nthreshold = 5\n', r"search\.threshold: unknown setting"),
    ('batch_size = "many"\n', "batch_size"),
    ('[search]\nann_backend = "annoy"\n', "unknown index backend 'annoy'"),
    # a typo in a backend's table fails when the settings load, naming the valid parameters
    ('[search.params.hnswlib]\nef_search = 64\n', r"hnswlib\.ef_search: not a parameter of the hnswlib index; "
                                                   r"valid: M, capacity, ef, ef_construction, num_threads, seed"),
])
def test_bad_config_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path)


def test_settings_are_frozen_and_picklable(tmp_path: Path) -> None:
    s = load_settings(tmp_path, batch_size=3)
    assert type(s) is Settings and pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(Exception, match="frozen"):
        s.batch_size = 4  # type: ignore[misc]


@pytest.mark.parametrize(("name", "value", "field"), [
    ("IMG_SEARCH_EXCLUDE", "raw/**", "exclude"),
    ("IMG_SEARCH_SEARCH", '{"x":1', "search"),
    ("IMG_SEARCH_SEARCH__PARAMS", "bad", "search"),
    ("IMG_SEARCH_SERVICE__ALLOWED_ROOTS", "/srv/photos", "service"),
])
def test_list_or_table_variable_that_is_not_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                 value: str, field: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    message = str(info.value)
    assert f"{field}: {name} is not valid JSON" in message and "\n" not in message


def test_list_variable_not_json_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import run_main

    monkeypatch.setenv("IMG_SEARCH_EXCLUDE", "raw/**")
    code, out, err = run_main(capsys, "info", "--index-dir", str(tmp_path))
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1
    assert "IMG_SEARCH_EXCLUDE is not valid JSON" in err and "Traceback" not in err


@pytest.mark.parametrize(("url", "message"), [
    ("notaurl", "needs http:// or https:// and a host"),
    ("ftp://host", "needs http:// or https:// and a host"),
    ("http://", "needs http:// or https:// and a host"),
    ("http://host:99999", "not a valid server URL"),
])
def test_server_must_be_an_http_url(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path, server=url)


def test_server_accepts_http_urls_and_blank_is_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(tmp_path, server=" https://h.example:8443/ ").server == "https://h.example:8443/"
    assert load_settings(tmp_path, server="").server is None
    monkeypatch.setenv("IMG_SEARCH_SERVER", "localhost:8000")
    with pytest.raises(ConfigError, match="server: the server URL needs"):
        load_settings(tmp_path)


def test_index_dir_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = tmp_path / "some.jpg"
    photo.write_bytes(b"\xff\xd8")
    with pytest.raises(ConfigError, match=r"some\.jpg is a file, not a directory"):
        load_settings(photo)
    with pytest.raises(ConfigError, match=r"its parent .*some\.jpg is a file, not a directory"):
        resolve_index_dir(photo / "idx")
    monkeypatch.setenv("IMG_SEARCH_INDEX_DIR", str(photo))
    with pytest.raises(ConfigError, match=r"is a file, not a directory.*IMG_SEARCH_INDEX_DIR"):
        resolve_index_dir()
    assert resolve_index_dir(tmp_path / "new" / "idx") == tmp_path / "new" / "idx"  # not there yet: index makes it
