"""`workbench data ...`: build corpora from recipes or sources, list recipes, show a corpus."""

from __future__ import annotations

import textwrap

import typer

from app.cli.common import echo_json, echo_table, get_lab

data_app = typer.Typer(help="Corpora: build them from recipes or sources and inspect them.",
                       no_args_is_help=True)


@data_app.command("build")
def build(
    recipe: str = typer.Option(
        None, "--recipe", help="Recipe name in data/recipes/ or a .json path (default: default)."
    ),
    source: list[str] = typer.Option(  # noqa: B008 (typer's declaration style)
        None, "--source",
        help="Build from sources instead of a recipe (repeatable): local:PATH, hf:NAME[:CONFIG], "
             "fortunes:LANG, guide:LANG.",
    ),
    language: str = typer.Option(
        None, "--language", help="Language of local:/hf: sources (ISO 639-1; default: detect)."
    ),
    languages: str = typer.Option(
        None, "--languages", help="Comma-separated languages to keep (default: all found)."
    ),
    langid_among: str = typer.Option(
        "en,de,es,fr,it,nl,pl,pt,ru,cs", "--langid-among",
        help="--source builds: languages the language ID chooses among (detection and filter), "
             "besides the corpus languages.",
    ),
    unit: str = typer.Option("paragraph", help="local: one document per 'paragraph' or 'file'."),
    hf_split: str = typer.Option("train", "--hf-split", help="hf: dataset split to read."),
    text_column: str = typer.Option("text", help="hf: column holding the text."),
    name: str = typer.Option(None, "--name", help="Corpus artifact name."),
    chars_per_language: int = typer.Option(
        None, "--chars-per-language", help="Character budget per language (overrides the recipe)."
    ),
    seed: int = typer.Option(None, "--seed", help="Seed for balancing and the split."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing corpus."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest counts as JSON."),
) -> None:
    """Build a corpus: `--recipe default` (the default lab corpus) or `--source ...`."""
    from workbench.data.build import build_corpus
    from workbench.data.cleaning import CleaningConfig
    from workbench.data.recipe import CorpusRecipe, load_recipe
    from workbench.data.sources import parse_source_spec
    from workbench.errors import InvalidInputError

    if source and recipe:
        raise InvalidInputError("give either --recipe or --source, not both")
    keep = [lang.strip() for lang in languages.split(",") if lang.strip()] if languages else []
    if source:
        specs = []
        for text in source:
            spec = parse_source_spec(text, language)
            if spec["kind"] == "local":
                spec["unit"] = unit
            if spec["kind"] == "hf":
                spec.update(split=hf_split, text_column=text_column)
            specs.append(spec)
        among = [lang.strip() for lang in langid_among.split(",") if lang.strip()]
        chosen = CorpusRecipe(name="custom", sources=specs, languages=keep,
                              chars_per_language=chars_per_language,
                              cleaning=CleaningConfig(language_id_among=among or None))
    else:
        chosen = load_recipe(recipe or "default")
        if keep:
            chosen.languages = keep
        if chars_per_language is not None:
            chosen.chars_per_language = chars_per_language
    if seed is not None:
        chosen.seed = seed

    def progress(stage: str, done: int, total: int) -> None:
        typer.echo(f"[{done}/{total}] {stage}", err=True)

    corpus = build_corpus(get_lab(), chosen, name=name, overwrite=overwrite, progress=progress)
    manifest = corpus.artifact.manifest
    if as_json:
        echo_json({k: manifest.get(k) for k in ("languages", "counts", "shortfall_chars",
                                                 "parallel", "build_seconds")})
        return
    typer.echo(f"built corpus {corpus.name} in {manifest['build_seconds']} s: {corpus.path}")
    _echo_language_table(manifest)
    for lang, missing in (manifest.get("shortfall_chars") or {}).items():
        typer.echo(f"note: {lang} is {missing} characters short of its budget (sources ran out)")


@data_app.command("show")
def show(
    name: str,
    samples: int = typer.Option(2, help="Sample documents per language."),
    width: int = typer.Option(160, help="Characters shown per sample."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Per-language counts, sources, the parallel set and a few sample documents."""
    from workbench.data.store import load_corpus

    corpus = load_corpus(get_lab(), name)
    manifest = corpus.artifact.manifest
    if as_json:
        echo_json(manifest)
        return
    typer.echo(f"{corpus.name}  (recipe {manifest.get('recipe', '?')})  {corpus.path}")
    _echo_language_table(manifest)
    per_source = (manifest.get("counts") or {}).get("per_source", {})
    if per_source:
        typer.echo("sources:")
        echo_table([{"source": s, **c} for s, c in per_source.items()], ["source", "docs", "chars"])
    parallel = corpus.parallel()
    if parallel is not None:
        per_lang = parallel.language.value_counts()
        typer.echo(
            f"parallel set: {parallel.group_id.nunique()} groups; rows per language: "
            + ", ".join(f"{lang} {int(n)}" for lang, n in per_lang.items())
        )
    if samples > 0:
        frame = corpus.frame("train")
        for lang in corpus.languages:
            rows = frame[frame.language == lang]
            for text in rows.sample(min(samples, len(rows)), random_state=0).text:
                typer.echo(f"  [{lang}] " + textwrap.shorten(text, width=width, placeholder=" ..."))


@data_app.command("recipes")
def recipes() -> None:
    """List the corpus recipes in data/recipes/."""
    from workbench.data.recipe import available_recipes, load_recipe

    rows = []
    for recipe_name in available_recipes():
        recipe = load_recipe(recipe_name)
        rows.append({
            "recipe": recipe_name,
            "corpus": recipe.artifact_name,
            "languages": ",".join(recipe.languages) or "(from sources)",
            "chars/lang": recipe.chars_per_language or "all",
        })
    echo_table(rows, ["recipe", "corpus", "languages", "chars/lang"])


def _echo_language_table(manifest: dict) -> None:
    counts = manifest.get("counts") or {}
    per_lang = counts.get("per_language", {})
    per_lang_split = counts.get("per_language_split", {})
    per_lang_source = counts.get("per_language_source", {})
    rows = []
    for lang in manifest.get("languages", per_lang):
        total = per_lang.get(lang, {})
        splits = per_lang_split.get(lang, {})
        rows.append({
            "language": lang,
            "docs": total.get("docs", 0),
            "chars": total.get("chars", 0),
            "train docs": splits.get("train", {}).get("docs", 0),
            "validation docs": splits.get("validation", {}).get("docs", 0),
            "sources": ", ".join(
                f"{s} {c['chars']}" for s, c in per_lang_source.get(lang, {}).items()
            ),
        })
    echo_table(rows, ["language", "docs", "chars", "train docs", "validation docs", "sources"])


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
