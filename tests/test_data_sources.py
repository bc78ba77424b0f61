"""Corpus sources: fortune files, installation-guide HTML, local text, errors for missing ones."""

from __future__ import annotations

import pytest

from workbench.data.cleaning import CleaningConfig
from workbench.data.guide_html import html_paragraphs, prose_paragraphs
from workbench.data.language_id import LanguageDetector
from workbench.data.parallel import ParallelConfig, align_pages, filter_group
from workbench.data.sources import (
    FortuneSource,
    HFDatasetSource,
    InstallationGuideSource,
    LocalTextSource,
    make_source,
    parse_source_spec,
)
from workbench.data.textio import decode_bytes, split_fortunes
from workbench.errors import InvalidInputError, NotFoundError, WorkbenchError


def test_split_fortunes_separators():
    text = "%\nFirst entry\nsecond line\n%\r\n\nSecond entry\n%  \n% not a separator\n%\n"
    assert split_fortunes(text) == [
        "First entry\nsecond line",
        "Second entry",
        "% not a separator",
    ]


def test_fortune_source_reads_only_fortune_files(tmp_path):
    folder = tmp_path / "fortunes"
    (folder / "off").mkdir(parents=True)
    (folder / "quotes").write_text("Alpha quote.\n%\nBeta quote.\n")
    (folder / "quotes.dat").write_bytes(b"\x00\x00\x00\x02binary index")
    (folder / "quotes.u8").write_text("Duplicate via u8 twin.\n")
    (folder / "only.u8").write_text("Gamma quote.\n")
    (folder / "latin").write_bytes("Déjà vu, naïve café.\n%\n".encode("latin-1"))
    (folder / "skipme").write_text("Excluded quote.\n")
    (folder / "off" / "rude").write_text("Offensive quote.\n")
    (folder / "link").symlink_to(folder / "quotes")
    source = FortuneSource("en", path=folder, exclude=["skipme"])
    source.check()
    texts = sorted(d.text for d in source.documents("en"))
    assert texts == ["Alpha quote.", "Beta quote.", "Déjà vu, naïve café.", "Gamma quote."]
    assert source.documents("de") == []


def test_legacy_encodings_decode():
    assert decode_bytes("Привет мир".encode("koi8-r"), ("utf-8", "koi8-r")) == "Привет мир"
    assert decode_bytes("Zażółć gęślą".encode("iso-8859-2"), ("utf-8", "iso-8859-2")) == "Zażółć gęślą"


def test_missing_fortune_package_names_the_package(tmp_path):
    source = FortuneSource("de", path=tmp_path / "not-installed")
    assert source.package == "fortunes-de"
    with pytest.raises(NotFoundError, match=r"fortunes-de is not installed: run `apt-get install fortunes-de`"):
        source.documents("de")


def test_missing_installation_guide_names_the_package(tmp_path, monkeypatch):
    from workbench.data import sources

    monkeypatch.setattr(sources, "installation_guide_root", lambda arch=None: tmp_path / "nope")
    guide = InstallationGuideSource(["fr"], arch="amd64")
    with pytest.raises(NotFoundError, match=r"apt-get install installation-guide-amd64"):
        guide.check()


GUIDE_PAGE = """<html><head><title>Skip this title</title></head><body>
<div class="navheader"><p>Navigation text</p></div>
<p>Run the <code class="command">fdisk</code> program to partition the &amp; disk &lt;now&gt;.</p>
<div class="informalexample"><pre class="screen">
# apt-get install something
</pre></div>
<p>

</p>
<p>See <code>/etc/fstab</code> <code>/etc/mtab</code> <code>/proc/mounts</code> now.</p>
<table><tr><td><p>Cell text</p></td></tr></table>
<p>Text with a<br>line break and <span class="quote">“quoted”</span> words.</p>
<div class="navfooter"><p>Footer</p></div>
</body></html>"""


def test_html_markup_and_code_blocks_are_stripped():
    paragraphs = html_paragraphs(GUIDE_PAGE)
    texts = [p.text for p in paragraphs]
    assert texts == [
        "Run the fdisk program to partition the & disk <now>.",
        "",
        "See /etc/fstab /etc/mtab /proc/mounts now.",
        "Text with a line break and “quoted” words.",
    ]
    assert paragraphs[2].code_fraction > 0.5  # mostly inline code
    assert prose_paragraphs(GUIDE_PAGE) == [texts[0], texts[3]]


def test_installation_guide_source_and_alignment(tmp_path):
    for lang, body in {
        "en": ["The installer copies the files to the disk.", "Restart the computer afterwards."],
        "de": ["Der Installer kopiert die Dateien auf die Festplatte.",
               "Starten Sie danach den Computer neu."],
        "fr": ["L'installateur copie les fichiers sur le disque."],  # one paragraph lost
    }.items():
        (tmp_path / lang).mkdir()
        html = "".join(f"<p>{p}</p>" for p in body)
        (tmp_path / lang / "ch01.html").write_text(f"<html><body>{html}</body></html>")
    guide = InstallationGuideSource(root=tmp_path, held_out={"ch01.html#1"})
    assert guide.languages() == ["de", "en", "fr"]
    assert [d.text for d in guide.documents("de")] == [
        "Der Installer kopiert die Dateien auf die Festplatte."
    ]
    pages = {lang: guide.pages(lang) for lang in ("en", "de", "fr")}
    groups = align_pages(pages, "en")
    assert set(groups) == {"ch01.html#0", "ch01.html#1"}
    assert set(groups["ch01.html#1"]) == {"en", "de"}  # fr's page has another paragraph count
    kept = filter_group(groups["ch01.html#1"], "en", ParallelConfig(["en", "de", "fr"]),
                        CleaningConfig(), LanguageDetector(["en", "de", "fr"]))
    assert kept == {"en": "Restart the computer afterwards.",
                    "de": "Starten Sie danach den Computer neu."}


def test_parallel_group_drops_untranslated_paragraph():
    from workbench.data.guide_html import HtmlParagraph

    english = "Choose the keyboard layout that matches your keyboard."
    group = {"en": HtmlParagraph(english, 0.0), "de": HtmlParagraph(english, 0.0),
             "fr": HtmlParagraph("Choisissez la disposition qui correspond à votre clavier.", 0.0)}
    kept = filter_group(group, "en", ParallelConfig(["en", "de", "fr"]), CleaningConfig(),
                        LanguageDetector(["en", "de", "fr"]))
    assert set(kept) == {"en", "fr"}


def test_local_source_units_and_detection(tmp_path):
    (tmp_path / "a.txt").write_text(
        "The quick brown fox jumps over the lazy dog again.\n\n"
        "Der schnelle braune Fuchs springt über den faulen Hund.\n"
    )
    (tmp_path / ".hidden.txt").write_text("Hidden text that must not be read.")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    by_paragraph = LocalTextSource(tmp_path, detect_among=["en", "de"])
    assert by_paragraph.languages() == ["de", "en"]
    assert [d.text for d in by_paragraph.documents("de")] == [
        "Der schnelle braune Fuchs springt über den faulen Hund."
    ]
    by_file = LocalTextSource(tmp_path, language="en", unit="file")
    assert len(by_file.documents("en")) == 1


def test_empty_local_source_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match="holds no text files"):
        LocalTextSource(tmp_path, language="en").check()
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(InvalidInputError, match="only empty files"):
        LocalTextSource(tmp_path, language="en").documents("en")
    with pytest.raises(NotFoundError, match="does not exist"):
        LocalTextSource(tmp_path / "missing", language="en").check()


def test_hf_source_offline_error_is_clear(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WorkbenchError, match=r"cannot load Hugging Face dataset hf:some/dataset.*offline"):
        HFDatasetSource("some/dataset", language="en").documents("en")


def test_source_specs_and_recipe_entries(tmp_path):
    assert parse_source_spec("local:/x/y", "fr") == {"kind": "local", "path": "/x/y", "language": "fr"}
    assert parse_source_spec("hf:org/set:cfg")["config"] == "cfg"
    assert parse_source_spec("guide:fr,de") == {"kind": "installation_guide", "languages": ["fr", "de"]}
    with pytest.raises(InvalidInputError, match="bad source"):
        parse_source_spec("nothing")
    with pytest.raises(InvalidInputError, match="unknown source kind"):
        make_source({"kind": "ftp"})
    with pytest.raises(InvalidInputError, match="no option"):
        make_source({"kind": "fortunes", "language": "de", "colour": "red"})
    source = make_source({"kind": "local", "path": str(tmp_path)}, ["en", "de"])
    assert source.detect_among == ["en", "de"]


def test_hf_source_reads_rows_with_language_column(monkeypatch):
    import datasets

    rows = {"content": ["Good morning, how are you today?", "Guten Morgen, wie geht es dir?", ""],
            "lang": ["en", "de", "en"]}
    calls = []

    def fake_load(name, config=None, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    source = HFDatasetSource("org/set", split="test", text_column="content",
                             language_column="lang", max_documents=2)
    assert source.languages() == ["de", "en"]
    assert [d.text for d in source.documents("de")] == ["Guten Morgen, wie geht es dir?"]
    assert calls == [("org/set", None, "test", True)]
    with pytest.raises(InvalidInputError, match="no column 'text'"):
        HFDatasetSource("org/set", language="en").documents("en")
