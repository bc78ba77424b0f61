"""Text sources a corpus is built from.

A source hands out raw `Document`s per language; cleaning, language-ID filtering and balancing
happen later (`workbench.data.cleaning`, `workbench.data.build`). Kinds:

- `fortunes`:            Debian fortune files (`%`-separated entries), one document per entry;
- `installation_guide`:  the Debian installation guide (HTML), one document per paragraph;
- `local`:               local text files or folders, one document per paragraph or per file,
                         with a given language or one detected per document;
- `hf`:                  a Hugging Face dataset (`datasets.load_dataset`; network unless cached).

Recipes name sources as dicts, `{"kind": "fortunes", "language": "de"}`; `make_source` turns such
a dict into a source object, `parse_source_spec` turns a command-line `KIND:ARG` into such a dict.
A source that is not installed or holds no text raises a WorkbenchError that says how to fix it.
"""

from __future__ import annotations

import gzip
import inspect
import itertools
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from workbench.data.debian import (
    DEBIAN_FORTUNES,
    LEGACY_ENCODINGS,
    install_hint,
    installation_guide_package,
    installation_guide_root,
)
from workbench.data.guide_html import HtmlParagraph, html_paragraphs
from workbench.data.language_id import LanguageDetector
from workbench.data.textio import DEFAULT_ENCODINGS, read_text, split_fortunes, split_paragraphs
from workbench.errors import InvalidInputError, NotFoundError, WorkbenchError


@dataclass(frozen=True)
class Document:
    """One raw document: its text, language label, source label and where it came from."""

    text: str
    language: str
    source: str
    origin: str


class Source(ABC):
    """A text source. `label` names it in the corpus (`source` column and manifest counts)."""

    label: str

    @abstractmethod
    def check(self) -> None:
        """Raise a WorkbenchError naming the fix if the source cannot be read."""

    @abstractmethod
    def languages(self) -> list[str]:
        """Languages this source provides documents in."""

    @abstractmethod
    def documents(self, language: str) -> list[Document]:
        """Raw documents in `language` (empty if the source has none in it), in a fixed order."""


# -- Debian fortunes ----------------------------------------------------------------------------
class FortuneSource(Source):
    """Fortune cookie files: entries separated by lines that hold only `%`.

    `path` is a fortune file or a folder whose regular files are read (not its subfolders, not
    symlinks, not the `.dat` index files, not a `.u8` file whose plain twin exists). For a
    language in `DEBIAN_FORTUNES` the Debian package's path is the default and a missing path
    gives an `apt-get install` hint.
    """

    def __init__(
        self,
        language: str,
        path: str | os.PathLike | None = None,
        package: str | None = None,
        exclude: Sequence[str] | None = None,
        encodings: Sequence[str] | None = None,
    ):
        known = DEBIAN_FORTUNES.get(language)
        if path is None and known is None:
            raise InvalidInputError(
                f"no Debian fortune package is known for language {language!r} (known: "
                f"{', '.join(sorted(DEBIAN_FORTUNES))}); give the fortune folder as `path`"
            )
        self.language = language
        self.path = Path(path) if path is not None else known.path
        self.package = package or (known.package if known else None)
        self.exclude = set(exclude if exclude is not None else (known.exclude if known else ()))
        self.encodings = tuple(encodings or LEGACY_ENCODINGS.get(language, DEFAULT_ENCODINGS))
        self.label = self.package or f"fortunes:{self.path}"

    def check(self) -> None:
        _require_path(self.path, self.package, "fortune path")
        if not self.files():
            raise InvalidInputError(
                f"{self.path} holds no fortune files"
                + (f"; reinstall with `apt-get install --reinstall {self.package}`"
                   if self.package else "")
            )

    def files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        out = []
        for file in sorted(self.path.iterdir()):
            if file.is_symlink() or not file.is_file() or file.name in self.exclude:
                continue
            if file.suffix == ".dat":
                continue
            if file.name.endswith(".u8") and file.with_name(file.name[:-3]).exists():
                continue
            out.append(file)
        return out

    def languages(self) -> list[str]:
        return [self.language]

    def documents(self, language: str) -> list[Document]:
        if language != self.language:
            return []
        self.check()
        docs = []
        for file in self.files():
            for i, entry in enumerate(split_fortunes(read_text(file, self.encodings))):
                docs.append(Document(entry, language, self.label, f"{file}#{i}"))
        return docs


# -- Debian installation guide ------------------------------------------------------------------
@lru_cache(maxsize=32)
def _guide_pages(folder: str, mtime_ns: int) -> dict[str, tuple[HtmlParagraph, ...]]:
    """Paragraphs of every HTML page in one language folder of the guide (parsed once per
    folder version: `mtime_ns` is part of the cache key)."""
    pages = {}
    for file in sorted(Path(folder).iterdir()):
        if file.name.endswith(".html"):
            html = read_text(file)
        elif file.name.endswith(".html.gz"):
            with gzip.open(file, "rb") as fh:
                html = fh.read().decode("utf-8", errors="replace")
        else:
            continue
        pages[file.name.removesuffix(".gz")] = tuple(html_paragraphs(html))
    return pages


class InstallationGuideSource(Source):
    """The Debian installation guide: one document per prose paragraph of each HTML page.

    `languages` restricts which translations are offered (default: all installed ones). Markup,
    code blocks and mostly-code paragraphs are removed (see `workbench.data.guide_html`).
    `held_out` holds paragraph ids (`page#index`) kept out of the corpus, for example those of
    the parallel evaluation set.
    """

    def __init__(
        self,
        languages: Sequence[str] | None = None,
        root: str | os.PathLike | None = None,
        arch: str | None = None,
        max_code_fraction: float = 0.3,
        held_out: Iterable[str] = (),
    ):
        self.root = Path(root) if root is not None else installation_guide_root(arch)
        self.package = installation_guide_package(arch) if root is None else None
        self.wanted = list(languages) if languages else None
        self.max_code_fraction = max_code_fraction
        self.held_out = set(held_out)
        self.label = self.package or f"installation-guide:{self.root}"

    def check(self) -> None:
        _require_path(self.root, self.package, "installation guide folder")
        if not self.installed_languages():
            raise InvalidInputError(f"{self.root} holds no translations of the guide")

    def installed_languages(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            d.name for d in self.root.iterdir()
            if d.is_dir() and any(d.glob("*.html*"))
        )

    def languages(self) -> list[str]:
        installed = self.installed_languages()
        return [lang for lang in (self.wanted or installed) if lang in installed]

    def pages(self, language: str) -> dict[str, tuple[HtmlParagraph, ...]]:
        """Page file name -> all its `<p>` paragraphs (indices line up across translations)."""
        self.check()
        folder = self.root / language
        if not folder.is_dir():
            raise NotFoundError(
                f"the installation guide has no {language!r} translation in {self.root}; "
                f"available: {', '.join(self.installed_languages())}"
            )
        return _guide_pages(str(folder), folder.stat().st_mtime_ns)

    def documents(self, language: str) -> list[Document]:
        if language not in self.languages():
            return []
        docs = []
        for page, paragraphs in self.pages(language).items():
            for i, paragraph in enumerate(paragraphs):
                pid = f"{page}#{i}"
                if pid not in self.held_out and paragraph.is_prose(self.max_code_fraction):
                    docs.append(Document(paragraph.text, language, self.label, f"{language}/{pid}"))
        return docs


# -- local files and Hugging Face datasets ------------------------------------------------------
class _LabelledTexts(Source):
    """Shared logic of sources whose texts have a given language or one detected per text."""

    def __init__(self, language: str | None, detect_among: Sequence[str] | None):
        self.language = language
        self.detect_among = list(detect_among) if detect_among else None
        self._by_language: dict[str, list[Document]] | None = None

    @abstractmethod
    def _texts(self) -> list[tuple[str, str, str | None]]:
        """(text, origin, language or None) triples, in a fixed order."""

    def _grouped(self) -> dict[str, list[Document]]:
        if self._by_language is None:
            texts = self._texts()
            if not texts:
                raise InvalidInputError(f"source {self.label} holds no text; point it at text")
            detector = None
            grouped: dict[str, list[Document]] = {}
            for text, origin, own_language in texts:
                language = own_language or self.language
                if language is None:
                    detector = detector or LanguageDetector(self.detect_among)
                    language = detector.detect(text)[0]
                grouped.setdefault(language, []).append(
                    Document(text, language, self.label, origin)
                )
            self._by_language = grouped
        return self._by_language

    def languages(self) -> list[str]:
        return sorted(self._grouped())

    def documents(self, language: str) -> list[Document]:
        return list(self._grouped().get(language, []))


class LocalTextSource(_LabelledTexts):
    """Text files (a file, or every non-hidden text file under a folder).

    `unit="paragraph"` makes one document per blank-line separated paragraph, `unit="file"` one
    per file. `language` labels every document; without it each is detected among
    `detect_among` (default: every language py3langid knows).
    """

    UNITS = ("paragraph", "file")

    def __init__(
        self,
        path: str | os.PathLike,
        language: str | None = None,
        unit: str = "paragraph",
        detect_among: Sequence[str] | None = None,
        encodings: Sequence[str] | None = None,
    ):
        super().__init__(language, detect_among)
        if unit not in self.UNITS:
            raise InvalidInputError(f"unknown unit {unit!r} for a local source; use {self.UNITS}")
        self.path = Path(path).expanduser()
        self.unit = unit
        self.encodings = tuple(encodings or DEFAULT_ENCODINGS)
        self.label = f"local:{self.path.name or self.path}"

    def check(self) -> None:
        if not self.path.exists():
            raise NotFoundError(f"local source {self.path} does not exist")
        if not self.files():
            raise InvalidInputError(
                f"local source {self.path} holds no text files; add .txt files or point "
                "--source local:PATH at a file or folder with text"
            )

    def files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            return []
        return [
            f for f in sorted(self.path.rglob("*"))
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(self.path).parts)
            and _looks_like_text(f)
        ]

    def _texts(self) -> list[tuple[str, str, str | None]]:
        self.check()
        out = []
        for file in self.files():
            text = read_text(file, self.encodings)
            units = split_paragraphs(text) if self.unit == "paragraph" else [text.strip()]
            out.extend((u, f"{file}#{i}", None) for i, u in enumerate(units) if u)
        if not out:
            raise InvalidInputError(
                f"local source {self.path} holds only empty files; add text to it"
            )
        return out


class HFDatasetSource(_LabelledTexts):
    """A Hugging Face dataset by name (downloads unless cached; only when the user asks).

    Reads `split`, takes texts from `text_column` (at most `max_documents`), the language from
    `language`, from `language_column`, or detected per text.
    """

    def __init__(
        self,
        name: str,
        config: str | None = None,
        split: str = "train",
        text_column: str = "text",
        language: str | None = None,
        language_column: str | None = None,
        max_documents: int | None = 20000,
        detect_among: Sequence[str] | None = None,
    ):
        super().__init__(language, detect_among)
        self.name, self.config, self.split = name, config, split
        self.text_column, self.language_column = text_column, language_column
        self.max_documents = max_documents
        self.label = f"hf:{name}" + (f":{config}" if config else "")

    def check(self) -> None:
        try:
            import datasets  # noqa: F401
        except ImportError as exc:
            raise WorkbenchError("the `datasets` package is missing: pip install datasets") from exc

    def _load(self):
        """The dataset split, streamed when `max_documents` is set (no full download)."""
        import datasets

        try:
            return datasets.load_dataset(
                self.name, self.config, split=self.split, streaming=self.max_documents is not None
            )
        except Exception as exc:  # datasets raises many types (connection, missing config, ...)
            offline = any(
                os.environ.get(v, "").lower() in ("1", "true", "yes")
                for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
            )
            hint = (
                "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and the dataset is "
                "not in the local cache; unset it on a machine with network, or use "
                "--source local:PATH"
                if offline else
                "check the name, config and split, and the network connection (or use "
                "--source local:PATH)"
            )
            raise WorkbenchError(
                f"cannot load Hugging Face dataset {self.label} split {self.split!r}: "
                f"{type(exc).__name__}: {str(exc)[:300]}; {hint}"
            ) from exc

    def _texts(self) -> list[tuple[str, str, str | None]]:
        self.check()
        rows = itertools.islice(iter(self._load()), self.max_documents)
        out = []
        for i, row in enumerate(rows):
            for column in (self.text_column, self.language_column):
                if column and column not in row:
                    raise InvalidInputError(
                        f"dataset {self.label} has no column {column!r}; columns: {sorted(row)}"
                    )
            text = row[self.text_column]
            label = row[self.language_column] if self.language_column else None
            if isinstance(text, str) and text.strip():
                origin = f"{self.label}/{self.split}#{i}"
                out.append((text, origin, str(label) if label is not None else None))
        return out


def _require_path(path: Path, package: str | None, what: str) -> None:
    """NotFoundError if `path` is missing: an `apt-get install` hint when a package provides it."""
    if path.exists():
        return
    if package:
        raise NotFoundError(f"{install_hint(package)} ({path} is missing)")
    raise NotFoundError(f"{what} {path} does not exist")


def _looks_like_text(file: Path) -> bool:
    """True unless the file's first 8 KiB hold a NUL byte (binary)."""
    try:
        with open(file, "rb") as fh:
            return b"\0" not in fh.read(8192)
    except OSError:
        return False


# -- construction from recipes and command-line specs ------------------------------------------
SOURCE_KINDS: dict[str, type[Source]] = {
    "fortunes": FortuneSource,
    "installation_guide": InstallationGuideSource,
    "local": LocalTextSource,
    "hf": HFDatasetSource,
}


def make_source(spec: dict[str, Any], corpus_languages: Sequence[str] | None = None) -> Source:
    """Build a source from a recipe entry such as `{"kind": "fortunes", "language": "de"}`.

    `corpus_languages` restricts language detection for sources without a fixed language.
    """
    if not isinstance(spec, dict) or "kind" not in spec:
        raise InvalidInputError(f"a source needs a 'kind' ({', '.join(SOURCE_KINDS)}); got {spec!r}")
    options = {k: v for k, v in spec.items() if k != "kind"}
    cls = SOURCE_KINDS.get(spec["kind"])
    if cls is None:
        raise InvalidInputError(
            f"unknown source kind {spec['kind']!r}; use one of {', '.join(SOURCE_KINDS)}"
        )
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InvalidInputError(
            f"source kind {spec['kind']!r} has no option(s) {unknown}; options: {sorted(accepted)}"
        )
    if "detect_among" in accepted and not options.get("detect_among") and corpus_languages:
        options["detect_among"] = list(corpus_languages)
    try:
        return cls(**options)
    except TypeError as exc:
        raise InvalidInputError(f"bad options for source {spec!r}: {exc}") from exc


def parse_source_spec(text: str, language: str | None = None) -> dict[str, Any]:
    """A command-line source `KIND:ARG` as a recipe entry.

    `local:PATH`, `hf:NAME` or `hf:NAME:CONFIG`, `fortunes:LANG`, `guide:LANG` (installation
    guide). `language` labels local and hf sources (detected per document when None).
    """
    kind, sep, arg = text.partition(":")
    if not sep or not arg:
        raise InvalidInputError(
            f"bad source {text!r}; use local:PATH, hf:NAME[:CONFIG], fortunes:LANG or guide:LANG"
        )
    if kind == "local":
        return {"kind": "local", "path": arg, "language": language}
    if kind == "hf":
        name, _, config = arg.partition(":")
        return {"kind": "hf", "name": name, "config": config or None, "language": language}
    if kind == "fortunes":
        return {"kind": "fortunes", "language": arg}
    if kind == "guide":
        return {"kind": "installation_guide", "languages": arg.split(",")}
    raise InvalidInputError(
        f"unknown source kind {kind!r} in {text!r}; use local, hf, fortunes or guide"
    )
