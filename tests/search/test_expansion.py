"""Query expansion: the shipped synonym file, the user's file (extend, replace, errors with file and line),
multi-word expansion with a cap, and the merge functions (max of calibrated scores, prompt ensembling)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from img_search.errors import InvalidInputError
from img_search.search.expansion import (
    DEFAULT_EXPANSIONS,
    Synonyms,
    expand_query,
    get_query_context,
    load_synonyms,
    merge_max,
    merge_max_topk,
    prompt_ensemble,
    user_synonyms_path,
)

SHIPPED = Path(__file__).parents[2] / "img_search" / "search" / "synonyms.toml"


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own, empty config home: the user's real ~/.config never leaks in."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def _user_file(config_home: Path, text: str) -> Path:
    path = config_home / "img-search" / "synonyms.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------- shipped file
def test_the_seeds_example() -> None:
    assert get_query_context("dog") == ["puppy", "canine", "pet", "animal", "pup"]
    assert get_query_context("  DOG ") == ["puppy", "canine", "pet", "animal", "pup"]  # any case, stripped
    assert DEFAULT_EXPANSIONS == 5


def test_shipped_file_covers_common_photo_concepts() -> None:
    doc = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    keys = [key for table in doc.values() for key in table]
    assert len(keys) == len(set(keys)) >= 36, "several dozen entries, no key twice"
    for section in ("pets", "people", "places", "events", "food", "weather", "seasons", "colours", "vehicles"):
        assert section in doc and len(doc[section]) >= 3, section
    shipped = load_synonyms(include_user=False)
    assert len(shipped) == len(keys)
    for key in keys:
        assert shipped.related(key), key
        assert key.casefold() not in [t.casefold() for t in shipped.related(key)]  # never the key itself


def test_shipped_file_is_package_data() -> None:
    pyproject = tomllib.loads((SHIPPED.parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    assert "search/synonyms.toml" in pyproject["tool"]["setuptools"]["package-data"]["img_search"]
    assert load_synonyms(include_user=False).sources[0].name == "synonyms.toml"


# ------------------------------------------------------------------------------------------------------ multi-word
def test_multi_word_queries_expand_each_matched_word_in_turn() -> None:
    assert get_query_context("dog on beach") == [
        "puppy on beach", "dog on seashore", "canine on beach", "dog on coast", "pet on beach"]
    assert expand_query("dog on beach", 2) == ["dog on beach", "puppy on beach", "dog on seashore"]


def test_phrases_match_longest_first_and_keep_the_rest_as_written() -> None:
    syn = Synonyms({"birthday party": ("celebration",), "birthday": ("cake",), "party": ("fiesta",)})
    assert syn.variants("Our Birthday  Party!") == ["Our celebration!"]
    assert syn.variants("a birthday without a party") == ["a cake without a party", "a birthday without a fiesta"]


def test_cap_and_limits() -> None:
    syn = Synonyms({"a": tuple(f"t{i}" for i in range(20))})
    assert len(syn.variants("a", 3)) == 3 and len(syn.variants("a", 50)) == 20
    assert get_query_context("dog", limit=0) == [] and expand_query("dog", 0) == ["dog"]
    for bad in (-1, 1.5, "5", True):
        with pytest.raises(InvalidInputError, match="limit"):
            get_query_context("dog", limit=bad)  # type: ignore[arg-type]
    for empty in ("", "   "):
        with pytest.raises(InvalidInputError, match="empty"):
            get_query_context(empty)


def test_unknown_words_and_query_terms_are_not_expanded() -> None:
    assert get_query_context("xyzzy plugh") == []
    assert expand_query("xyzzy") == ["xyzzy"]
    # NOT-terms and image terms stay as they are; the positive words still expand
    variants = get_query_context("beach -dog +cat.jpg", limit=10)
    assert variants and all(v.endswith(" -dog +cat.jpg") for v in variants)
    assert get_query_context("-dog") == []


def test_no_duplicate_variants() -> None:
    syn = Synonyms({"grey": ("gray", "Gray", "silver"), "gray": ("grey",)})
    assert syn.variants("grey cat") == ["gray cat", "silver cat"]


# ------------------------------------------------------------------------------------------------------- user file
def test_user_file_location_follows_xdg(config_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert user_synonyms_path() == config_home / "img-search" / "synonyms.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_synonyms_path() == tmp_path / "home" / ".config" / "img-search" / "synonyms.toml"


def test_user_entries_extend_and_replace(config_home: Path) -> None:
    _user_file(config_home, '# mine\ndog = ["doggo", "puppy"]\nflamingo = ["pink bird"]\n'
                            '[replace]\ncat = ["moggy"]\nbeach = []\n')
    # user terms first, then the shipped ones, without duplicates
    assert get_query_context("dog", limit=3) == ["doggo", "puppy", "canine"]
    assert get_query_context("flamingo") == ["pink bird"]
    assert get_query_context("cat", limit=10) == ["moggy"]
    assert get_query_context("beach") == []  # an empty [replace] entry removes the shipped one
    assert load_synonyms().sources[-1] == config_home / "img-search" / "synonyms.toml"
    assert get_query_context("dog", limit=3, synonyms=load_synonyms(include_user=False))[0] == "puppy"


def test_user_file_changes_are_picked_up(config_home: Path) -> None:
    path = _user_file(config_home, 'dog = ["doggo"]\n')
    assert get_query_context("dog", limit=1) == ["doggo"]
    path.write_text('dog = ["hound dog"]\n', encoding="utf-8")
    assert get_query_context("dog", limit=1) == ["hound dog"]
    path.unlink()
    assert get_query_context("dog", limit=1) == ["puppy"]


def test_malformed_user_file_names_file_and_line(config_home: Path) -> None:
    path = _user_file(config_home, 'dog = ["doggo"]\ncat = ["kitty"\n')
    with pytest.raises(InvalidInputError) as exc:
        get_query_context("dog")
    assert str(path) in str(exc.value) and "line 2" in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("text", "line"), [
    ('dog = ["doggo"]\n\ncat = "kitty"\n', 3),
    ('[pets]\ndog = ["ok"]\ncat = [1, 2]\n', 3),
    ('dog = ["doggo", " "]\n', 1),
])
def test_wrong_value_types_name_file_line_and_key(config_home: Path, text: str, line: int) -> None:
    path = _user_file(config_home, text)
    with pytest.raises(InvalidInputError) as exc:
        load_synonyms()
    message = str(exc.value)
    assert message.startswith(f"{path}, line {line}:") and ("'cat'" in message or "'dog'" in message)


def test_explicit_user_file(tmp_path: Path) -> None:
    other = tmp_path / "team-synonyms.toml"
    other.write_text('"red car" = ["crimson automobile"]\n', encoding="utf-8")
    syn = load_synonyms(other)
    assert get_query_context("a red car parked", synonyms=syn)[0] == "a crimson automobile parked"
    assert load_synonyms(tmp_path / "missing.toml").entries == load_synonyms(include_user=False).entries


# --------------------------------------------------------------------------------------------------------- merging
def test_merge_max() -> None:
    probs = np.array([[0.1, 0.9, 0.2], [0.5, 0.3, 0.1]], dtype=np.float32)
    out = merge_max(probs)
    assert out.dtype == np.float64 and out.tolist() == pytest.approx([0.5, 0.9, 0.2])
    assert merge_max(np.zeros((2, 0))).shape == (0,)
    for bad in (np.zeros(3), np.zeros((0, 3)), np.zeros((1, 2, 3))):
        with pytest.raises(InvalidInputError, match="n_queries"):
            merge_max(bad)


def test_merge_max_topk_equals_merge_max_of_everything() -> None:
    rng = np.random.default_rng(3)
    scores = rng.uniform(size=(4, 200))
    limit = 10
    per_query = [[(int(i), float(s[i])) for i in np.argsort(-s)[:limit]] for s in scores]
    merged = merge_max_topk(per_query, limit)
    full = merge_max(scores)
    expected = np.argsort(-full)[:limit]
    assert [k for k, _, _ in merged] == expected.tolist()
    assert [s for _, s, _ in merged] == pytest.approx(full[expected].tolist())
    assert all(scores[q, k] == s for k, s, q in merged)  # the query index says which variant won
    with pytest.raises(InvalidInputError):
        merge_max_topk(per_query, 0)


def test_prompt_ensemble_is_the_normalised_mean_of_normalised_rows() -> None:
    vecs = np.array([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=np.float32)
    out = prompt_ensemble(vecs)
    assert out.dtype == np.float32 and out.shape == (3,)
    np.testing.assert_allclose(out, [2 ** -0.5, 2 ** -0.5, 0.0], rtol=1e-6)  # not pulled to the longer row
    one = np.array([[0.6, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(prompt_ensemble(one), one[0], rtol=1e-6)
    with pytest.raises(InvalidInputError, match="cancel"):
        prompt_ensemble(np.array([[1.0, 0.0], [-1.0, 0.0]]))
    with pytest.raises(InvalidInputError, match="zeros"):
        prompt_ensemble(np.array([[1.0, 0.0], [0.0, 0.0]]))
    for bad in (np.zeros((0, 3)), np.ones(3), np.array([[np.nan, 1.0]])):
        with pytest.raises(InvalidInputError):
            prompt_ensemble(bad)


def test_syntax_error_position(config_home: Path) -> None:
    path = _user_file(config_home, 'dog = ["doggo"]\ncat = kitty\n')
    with pytest.raises(InvalidInputError) as exc:
        load_synonyms()
    assert str(exc.value).startswith(f"{path}, line 2, column ")
