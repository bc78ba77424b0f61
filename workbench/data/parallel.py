"""A parallel evaluation set from the translations of the Debian installation guide.

Every translation of the guide is generated from the same DocBook source, so a page usually has
the same `<p>` elements in the same order in every language. Paragraph i of a page is aligned
across the languages whose copy of that page has exactly as many paragraphs as the reference
language's (pages where a translation added or lost a paragraph are left out for that language).
An aligned paragraph is kept for a language only if it is prose (not mostly code), passes the
corpus filters, is identified as that language (untranslated English leftovers are not), and its
length is within `max_length_ratio` of the reference paragraph's.

The result is stored as `parallel.parquet` (group_id, language, text, source): rows with the same
group_id say the same thing. Used for steering evaluation (translation prompts, BLEU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from workbench.data.cleaning import CleaningConfig, normalize_text, passes_filters, seeded_rank
from workbench.data.guide_html import HtmlParagraph
from workbench.data.language_id import LanguageDetector
from workbench.data.sources import InstallationGuideSource
from workbench.errors import InvalidInputError

PARALLEL_COLUMNS = ("group_id", "language", "text", "source")


@dataclass
class ParallelConfig:
    """Which translations to align and how many paragraph groups to keep.

    languages: translations to align (the reference included). reference: the language every
    group must have. max_groups: keep at most this many groups (most complete first, ties in a
    seeded random order); None keeps all. min_languages: a group needs at least this many
    languages. hold_out: keep the chosen paragraphs out of the monolingual corpus (so evaluation
    references are unseen in training). guide_root / arch: where the guide is (default: the
    installed `installation-guide-<arch>`).
    """

    languages: list[str] = field(
        default_factory=lambda: ["en", "de", "es", "fr", "it", "nl", "pt", "ro"]
    )
    reference: str = "en"
    max_groups: int | None = 200
    min_languages: int = 3
    max_length_ratio: float = 2.5
    max_code_fraction: float = 0.3
    hold_out: bool = True
    guide_root: str | None = None
    arch: str | None = None

    def __post_init__(self) -> None:
        if self.reference not in self.languages:
            raise InvalidInputError(
                f"the parallel reference language {self.reference!r} must be among its "
                f"languages {self.languages}"
            )
        if self.min_languages < 2:
            raise InvalidInputError("a parallel group needs min_languages >= 2")


@dataclass
class ParallelSet:
    """The aligned rows, the held-out paragraph ids (`page#index`) and per-language counts."""

    frame: pd.DataFrame
    held_out: set[str]
    stats: dict


def align_pages(
    pages: Mapping[str, Mapping[str, Sequence[HtmlParagraph]]], reference: str
) -> dict[str, dict[str, HtmlParagraph]]:
    """Group id (`page#index`) -> {language: paragraph} for pages whose paragraph counts agree
    with the reference language's. `pages` maps language -> page name -> paragraphs."""
    groups: dict[str, dict[str, HtmlParagraph]] = {}
    for page, ref_paragraphs in pages[reference].items():
        agreeing = [
            lang for lang, lang_pages in pages.items()
            if len(lang_pages.get(page, ())) == len(ref_paragraphs)
        ]
        for i in range(len(ref_paragraphs)):
            groups[f"{page}#{i}"] = {lang: pages[lang][page][i] for lang in agreeing}
    return groups


def filter_group(
    group: Mapping[str, HtmlParagraph],
    reference: str,
    config: ParallelConfig,
    cleaning: CleaningConfig,
    detector: LanguageDetector,
) -> dict[str, str]:
    """The usable normalized texts of one aligned group ({} if the reference is unusable)."""

    def usable(lang: str, paragraph: HtmlParagraph) -> str | None:
        if not paragraph.is_prose(config.max_code_fraction):
            return None
        text = normalize_text(paragraph.text)
        if not passes_filters(text, cleaning) or detector.detect(text)[0] != lang:
            return None
        return text

    ref_text = usable(reference, group[reference]) if reference in group else None
    if ref_text is None:
        return {}
    out = {reference: ref_text}
    for lang, paragraph in group.items():
        if lang == reference:
            continue
        text = usable(lang, paragraph)
        if text is None or text == ref_text:
            continue
        ratio = len(text) / len(ref_text)
        if 1 / config.max_length_ratio <= ratio <= config.max_length_ratio:
            out[lang] = text
    return out


def build_parallel_set(
    config: ParallelConfig,
    cleaning: CleaningConfig,
    seed: int = 0,
    detect_among: Sequence[str] | None = None,
) -> ParallelSet:
    """Align, filter and select paragraph groups of the installation guide (see module doc)."""
    guide = InstallationGuideSource(config.languages, root=config.guide_root, arch=config.arch)
    guide.check()
    missing = [lang for lang in config.languages if lang not in guide.installed_languages()]
    if missing:
        raise InvalidInputError(
            f"the installation guide in {guide.root} has no {missing} translation(s) for the "
            f"parallel set; available: {', '.join(guide.installed_languages())}"
        )
    detector = LanguageDetector(sorted(set(config.languages) | set(detect_among or ())))
    pages = {lang: guide.pages(lang) for lang in config.languages}
    candidates = []
    for group_id, group in align_pages(pages, config.reference).items():
        texts = filter_group(group, config.reference, config, cleaning, detector)
        if len(texts) >= config.min_languages:
            candidates.append((group_id, texts))
    candidates.sort(key=lambda item: (-len(item[1]), seeded_rank(item[0], seed)))
    chosen = candidates if config.max_groups is None else candidates[: config.max_groups]
    chosen.sort(key=lambda item: _page_order(item[0]))
    order = {lang: i for i, lang in enumerate(config.languages)}
    rows = [
        {"group_id": group_id, "language": lang, "text": text, "source": guide.label}
        for group_id, texts in chosen
        for lang, text in sorted(texts.items(), key=lambda kv: order[kv[0]])
    ]
    frame = pd.DataFrame(rows, columns=list(PARALLEL_COLUMNS))
    stats = {
        "groups": len(chosen),
        "candidate_groups": len(candidates),
        "rows_per_language": {
            lang: int((frame.language == lang).sum()) for lang in config.languages
        },
        "held_out": bool(config.hold_out),
    }
    held_out = {group_id for group_id, _ in chosen} if config.hold_out else set()
    return ParallelSet(frame, held_out, stats)


def _page_order(group_id: str) -> tuple[str, int]:
    page, _, index = group_id.rpartition("#")
    return page, int(index)
