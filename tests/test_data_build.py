"""Building corpora: the default recipe, top-ups, manifests, errors and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from workbench.data import assemble_corpus, build_corpus, load_corpus, load_recipe
from workbench.data.debian import DEBIAN_FORTUNES, installation_guide_root
from workbench.errors import InvalidInputError
from workbench.lab import Lab

DEFAULT_LANGUAGES = ["en", "de", "es", "it", "pl", "ru", "cs", "pt", "fr"]
SMALL_BUDGET = 20_000

ENGLISH = [
    "The library opens at nine in the morning and closes late in the evening.",
    "Our neighbours planted tomatoes, beans and sunflowers in their garden this spring.",
    "The train to the coast was delayed because of a storm over the mountains.",
    "She wrote a long letter to her grandmother describing the new apartment.",
    "Children in the village learn to swim in the lake during the summer holidays.",
    "The museum shows paintings from the seventeenth century and modern sculptures.",
]
GERMAN = [
    "Die Bibliothek öffnet um neun Uhr morgens und schließt spät am Abend.",
    "Unsere Nachbarn haben in diesem Frühling Tomaten und Bohnen im Garten gepflanzt.",
    "Der Zug an die Küste hatte wegen eines Sturms über den Bergen Verspätung.",
    "Sie schrieb ihrer Großmutter einen langen Brief über die neue Wohnung.",
]


def _write(folder: Path, paragraphs: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.txt").write_text("\n\n".join(paragraphs))
    return folder


@pytest.fixture(scope="module")
def default_corpus(tmp_path_factory):
    missing = [p.package for p in DEBIAN_FORTUNES.values() if not p.path.exists()]
    if missing or not installation_guide_root().is_dir():
        pytest.skip(f"Debian text packages not installed: {missing or 'installation-guide'}")
    lab = Lab(tmp_path_factory.mktemp("lab"))
    stages = []
    corpus = build_corpus(lab, "default", chars_per_language=SMALL_BUDGET,
                          progress=lambda stage, done, total: stages.append((stage, done, total)))
    return lab, corpus, stages


def test_default_recipe_builds_with_consistent_manifest(default_corpus):
    lab, corpus, stages = default_corpus
    assert corpus.name == "default-corpus"
    assert corpus.languages == DEFAULT_LANGUAGES
    assert stages[-1][1] == stages[-1][2] == len(DEFAULT_LANGUAGES) + 2
    frames = {split: corpus.frame(split) for split in ("train", "validation")}
    both = pd.concat(frames.values())
    counts = corpus.artifact.manifest["counts"]
    for lang in DEFAULT_LANGUAGES:
        rows = both[both.language == lang]
        assert counts["per_language"][lang] == {"docs": len(rows), "chars": int(rows.text.str.len().sum())}
        assert SMALL_BUDGET - 200 <= counts["per_language"][lang]["chars"] <= SMALL_BUDGET
        assert (frames["validation"].language == lang).any()
    for split, frame in frames.items():
        assert counts["per_split"][split]["docs"] == len(frame)
    assert sum(c["chars"] for c in counts["per_source"].values()) == counts["total"]["chars"]
    assert both.doc_id.is_unique and not both.text.duplicated().any()
    assert 0.02 < len(frames["validation"]) / len(both) < 0.08
    # French comes from the installation guide, the others from their fortune packages
    assert set(both[both.language == "fr"].source) == {f"{installation_guide_root().name}"}
    assert set(both[both.language == "de"].source) == {"fortunes-de"}
    assert corpus.artifact.metrics["n_docs"] == len(both)
    assert lab.jobs("default-corpus")[0]["status"] == "done"


def test_default_recipe_parallel_set_is_held_out(default_corpus):
    _, corpus, _ = default_corpus
    parallel = corpus.parallel()
    recipe = load_recipe("default")
    assert list(parallel.columns) == ["group_id", "language", "text", "source"]
    assert parallel.group_id.nunique() == recipe.parallel.max_groups
    assert set(parallel.language) == set(recipe.parallel.languages)
    assert (parallel.groupby("group_id").language.apply(set).map(lambda s: "en" in s)).all()
    corpus_texts = set(pd.concat([corpus.frame("train"), corpus.frame("validation")]).text)
    assert not corpus_texts & set(parallel.text)


def test_later_sources_top_up_a_language_budget(tmp_path):
    first = _write(tmp_path / "first", ENGLISH[:2])
    second = _write(tmp_path / "second", ENGLISH[2:])
    budget = sum(len(t) for t in ENGLISH[:2]) + len(ENGLISH[2]) + 5
    recipe = {
        "name": "topup", "languages": ["en"], "chars_per_language": budget,
        "sources": [{"kind": "local", "path": str(first), "language": "en"},
                    {"kind": "local", "path": str(second), "language": "en"}],
    }
    built = assemble_corpus(load_recipe(recipe))
    per_source = built.report["counts"]["per_language_source"]["en"]
    assert per_source["local:first"]["docs"] == 2  # the first source is used up first
    assert per_source["local:second"]["docs"] == 1  # the second only tops it up
    assert built.report["shortfall_chars"] == {}
    again = assemble_corpus(load_recipe(recipe))
    pd.testing.assert_frame_equal(built.documents, again.documents)
    short = assemble_corpus(load_recipe({**recipe, "chars_per_language": 10_000}))
    assert short.report["shortfall_chars"]["en"] == 10_000 - sum(len(t) for t in ENGLISH)


def test_language_filter_in_a_build_and_empty_language_error(tmp_path):
    en = _write(tmp_path / "en", ENGLISH)
    stray = "This English sentence was saved among the German texts by mistake."
    mixed = _write(tmp_path / "mixed", GERMAN + [stray])
    recipe = {"name": "mixed", "languages": ["en", "de"], "chars_per_language": None,
              "sources": [{"kind": "local", "path": str(mixed), "language": "de"},
                          {"kind": "local", "path": str(en), "language": "en"}]}
    built = assemble_corpus(load_recipe(recipe))
    de = built.documents[built.documents.language == "de"]
    assert sorted(de.text) == sorted(GERMAN)  # the English paragraph labelled de is dropped
    assert built.report["availability"]["de"]["local:mixed"]["dropped_language_id"] == 1
    wrong = {**recipe, "sources": [{"kind": "local", "path": str(en), "language": "de"},
                                   {"kind": "local", "path": str(mixed), "language": "en"}]}
    with pytest.raises(InvalidInputError, match=r"no documents left for language 'de'.*another language"):
        assemble_corpus(load_recipe(wrong))


def test_existing_corpus_needs_overwrite(tmp_path):
    lab = Lab(tmp_path / "lab")
    recipe = {"name": "small", "languages": ["en"], "chars_per_language": None,
              "sources": [{"kind": "local", "path": str(_write(tmp_path / "t", ENGLISH)), "language": "en"}]}
    build_corpus(lab, recipe)
    with pytest.raises(InvalidInputError, match="already exists.*--overwrite"):
        build_corpus(lab, recipe)
    corpus = build_corpus(lab, recipe, overwrite=True)
    assert corpus.name == "small-corpus" and len(corpus.texts("train", "en")) >= 4


def test_cli_build_show_and_missing_package_error(tmp_path, monkeypatch, capsys):
    from app.cli import main

    monkeypatch.setenv("WORKBENCH_LAB", str(tmp_path / "lab"))
    texts = _write(tmp_path / "texts", ENGLISH + GERMAN)

    def run(*args: str) -> int:
        try:
            main(list(args))
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    assert run("data", "build", "--source", f"local:{texts}", "--name", "mine") == 0
    corpus = load_corpus(Lab(tmp_path / "lab"), "mine")
    assert corpus.languages == ["de", "en"]
    capsys.readouterr()
    assert run("data", "show", "mine", "--samples", "1") == 0
    shown = capsys.readouterr().out
    assert "local:texts" in shown and "[de]" in shown and "[en]" in shown

    recipe = tmp_path / "broken.json"
    recipe.write_text(json.dumps({"name": "broken", "sources": [
        {"kind": "fortunes", "language": "de", "path": str(tmp_path / "no-fortunes")}]}))
    assert run("data", "build", "--recipe", str(recipe)) == 2
    assert "fortunes-de is not installed: run `apt-get install fortunes-de`" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run("data", "build", "--source", f"local:{empty}", "--language", "en") == 2
    assert "holds no text files" in capsys.readouterr().err
