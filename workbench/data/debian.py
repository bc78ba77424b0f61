"""Where Debian's text packages put their files, and the install hint for a missing one.

Fortune files live in /usr/share/games/fortunes: the English ones (packages `fortunes`,
`fortunes-min`) directly in that folder, the other languages in one subfolder each; `fortunes-br`
installs a single file `brasil` next to the English ones. The installation guide installs one
HTML folder per language under /usr/share/doc/installation-guide-<arch>/.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

FORTUNES_ROOT = Path("/usr/share/games/fortunes")
DOC_ROOT = Path("/usr/share/doc")
_MACHINE_TO_DEBIAN_ARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
    "i386": "i386", "i686": "i386", "armv7l": "armhf", "ppc64le": "ppc64el",
    "s390x": "s390x", "riscv64": "riscv64", "mips64": "mips64el",
}


@dataclass(frozen=True)
class FortunePackage:
    """A Debian fortune package: where its files are and which entries to leave out.

    `path` is a folder (its regular files are read, subfolders are not: they hold other
    languages or the offensive `off/` collections) or a single fortune file.
    """

    package: str
    path: Path
    exclude: tuple[str, ...] = field(default=())


DEBIAN_FORTUNES: dict[str, FortunePackage] = {
    # `brasil` (fortunes-br) sits among the English files; the top-level Italian names are
    # symlinks into it/ and are skipped as symlinks.
    "en": FortunePackage("fortunes", FORTUNES_ROOT, exclude=("brasil",)),
    "de": FortunePackage("fortunes-de", FORTUNES_ROOT / "de"),
    "es": FortunePackage("fortunes-es", FORTUNES_ROOT / "es"),
    "it": FortunePackage("fortunes-it", FORTUNES_ROOT / "it"),
    "pl": FortunePackage("fortunes-pl", FORTUNES_ROOT / "pl"),
    "ru": FortunePackage("fortunes-ru", FORTUNES_ROOT / "ru"),
    # klasik-sk holds Slovak quotations (fortunes-cs is "Czech and Slovak")
    "cs": FortunePackage("fortunes-cs", FORTUNES_ROOT / "cs", exclude=("klasik-sk",)),
    "pt": FortunePackage("fortunes-br", FORTUNES_ROOT / "brasil"),
}

# legacy encodings tried after UTF-8, per language (the last one accepts any bytes)
LEGACY_ENCODINGS: dict[str, tuple[str, ...]] = {
    "ru": ("utf-8", "koi8-r"),
    "cs": ("utf-8", "cp1250", "iso-8859-2"),
    "pl": ("utf-8", "cp1250", "iso-8859-2"),
}


@lru_cache(maxsize=1)
def debian_architecture() -> str:
    """`dpkg --print-architecture`, or the machine type mapped to Debian's name without dpkg."""
    if shutil.which("dpkg"):
        try:
            out = subprocess.run(
                ["dpkg", "--print-architecture"], capture_output=True, text=True, timeout=10,
                check=False,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    machine = platform.machine().lower()
    return _MACHINE_TO_DEBIAN_ARCH.get(machine, machine)


def installation_guide_package(arch: str | None = None) -> str:
    return f"installation-guide-{arch or debian_architecture()}"


def installation_guide_root(arch: str | None = None) -> Path:
    return DOC_ROOT / installation_guide_package(arch)


def install_hint(package: str) -> str:
    return f"{package} is not installed: run `apt-get install {package}`"
