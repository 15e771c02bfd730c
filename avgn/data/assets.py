"""Where the benchmark's real assets live, and a clear error when one is missing.

Nothing here is copied into the repository: every asset is read from where its package installs it.

=====================  ==========================================  ==============================================
root                   default                                     provided by (install command)
=====================  ==========================================  ==============================================
``GCOMPRIS_RCC``       ``/usr/share/gcompris-qt/rcc``              ``apt-get install -y gcompris-qt-data``
``TUXPAINT_STAMPS``    ``/usr/share/tuxpaint/stamps``              ``apt-get install -y tuxpaint-stamps-default``
``OPENCLIPART_SVG``    ``/usr/share/openclipart/svg``              ``apt-get install -y openclipart-svg``
``NOTO_EMOJI_FONT``    ``/usr/share/fonts/truetype/noto/``         ``apt-get install -y fonts-noto-color-emoji``
                       ``NotoColorEmoji.ttf``
``SOUNDFONTS``         ``/usr/share/sounds/sf2/FluidR3_GM.sf2``,   ``apt-get install -y fluid-soundfont-gm``,
                       ``.../sf2/TimGM6mb.sf2``,                   ``timgm6mb-soundfont``,
                       ``.../sf3/MuseScore_General_Lite.sf3``      ``musescore-general-soundfont-small``
``NPM_ASSETS``         ``<repo>/assets/node_modules``              ``npm ci --prefix assets``
=====================  ==========================================  ==============================================

Each root can be moved with an environment variable (``AVGN_GCOMPRIS_RCC``, ``AVGN_TUXPAINT_STAMPS``,
``AVGN_OPENCLIPART_SVG``, ``AVGN_NOTO_EMOJI_FONT``, ``AVGN_SOUNDFONT_DIR`` (the folder holding ``sf2/``
and ``sf3/``), ``AVGN_NPM_ASSETS``); the variables are read when this module is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AssetMissingError",
    "Provider",
    "PROVIDERS",
    "REPO_ROOT",
    "GCOMPRIS_RCC",
    "TUXPAINT_STAMPS",
    "OPENCLIPART_SVG",
    "NOTO_EMOJI_FONT",
    "SOUNDFONT_DIR",
    "SOUNDFONTS",
    "NPM_ASSETS",
    "require_file",
    "require_source",
    "source_root",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env_path(var: str, default: str | Path) -> Path:
    return Path(os.environ.get(var) or default)


GCOMPRIS_RCC = _env_path("AVGN_GCOMPRIS_RCC", "/usr/share/gcompris-qt/rcc")
TUXPAINT_STAMPS = _env_path("AVGN_TUXPAINT_STAMPS", "/usr/share/tuxpaint/stamps")
OPENCLIPART_SVG = _env_path("AVGN_OPENCLIPART_SVG", "/usr/share/openclipart/svg")
NOTO_EMOJI_FONT = _env_path("AVGN_NOTO_EMOJI_FONT", "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
SOUNDFONT_DIR = _env_path("AVGN_SOUNDFONT_DIR", "/usr/share/sounds")
NPM_ASSETS = _env_path("AVGN_NPM_ASSETS", REPO_ROOT / "assets" / "node_modules")

#: soundfont source name -> file (relative to :data:`SOUNDFONT_DIR`)
SOUNDFONTS: dict[str, str] = {
    "fluidr3": "sf2/FluidR3_GM.sf2",
    "timgm6mb": "sf2/TimGM6mb.sf2",
    "musescore": "sf3/MuseScore_General_Lite.sf3",
}


class AssetMissingError(FileNotFoundError):
    """An asset file is not installed. The message names the file, its package and the install command."""

    def __init__(self, path: str | Path, package: str, install: str, detail: str = ""):
        self.path = str(path)
        self.package = package
        self.install = install
        self.detail = detail
        msg = (
            f"missing asset {self.path}: it is provided by the package {package!r}; "
            f"install it with `{install}`"
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)

    def __reduce__(self):  # keep pickling (multiprocessing workers) working with the custom __init__
        return (type(self), (self.path, self.package, self.install, self.detail))


@dataclass(frozen=True)
class Provider:
    """The package behind an asset source, and how to install it."""

    package: str
    install: str
    license: str


PROVIDERS: dict[str, Provider] = {
    "gcompris": Provider("gcompris-qt-data (Debian)", "apt-get install -y gcompris-qt-data", "GPL-3.0 / CC-BY-SA"),
    "tuxpaint": Provider(
        "tuxpaint-stamps-default (Debian)", "apt-get install -y tuxpaint-stamps-default", "GPL-2.0 / CC / PD"
    ),
    "openclipart": Provider("openclipart-svg (Debian)", "apt-get install -y openclipart-svg", "public domain"),
    "noto": Provider("fonts-noto-color-emoji (Debian)", "apt-get install -y fonts-noto-color-emoji", "OFL-1.1"),
    "fluidr3": Provider("fluid-soundfont-gm (Debian)", "apt-get install -y fluid-soundfont-gm", "MIT"),
    "timgm6mb": Provider("timgm6mb-soundfont (Debian)", "apt-get install -y timgm6mb-soundfont", "GPL-2.0"),
    "musescore": Provider(
        "musescore-general-soundfont-small (Debian)",
        "apt-get install -y musescore-general-soundfont-small",
        "MIT",
    ),
    "fluent": Provider("@iconify-json/fluent-emoji (npm)", "npm ci --prefix assets", "MIT"),
    "openmoji": Provider("@iconify-json/openmoji (npm)", "npm ci --prefix assets", "CC-BY-SA-4.0"),
    "twemoji": Provider("@twemoji/svg (npm)", "npm ci --prefix assets", "CC-BY-4.0 (graphics) / MIT (code)"),
    "game-icons": Provider("@iconify-json/game-icons (npm)", "npm ci --prefix assets", "CC-BY-3.0"),
    "skimage": Provider("scikit-image (PyPI)", "pip install 'scikit-image>=0.22'", "BSD-3-Clause / CC0 photos"),
    "tinysoundfont": Provider("tinysoundfont (PyPI)", "pip install --no-deps tinysoundfont==0.3.7", "MIT"),
}


def source_root(source: str) -> Path:
    """The folder (or file, for ``noto``) that a source's asset keys are relative to."""
    roots = {
        "gcompris": GCOMPRIS_RCC,
        "tuxpaint": TUXPAINT_STAMPS,
        "openclipart": OPENCLIPART_SVG,
        "noto": NOTO_EMOJI_FONT,
        "fluidr3": SOUNDFONT_DIR,
        "timgm6mb": SOUNDFONT_DIR,
        "musescore": SOUNDFONT_DIR,
        "fluent": NPM_ASSETS / "@iconify-json" / "fluent-emoji",
        "openmoji": NPM_ASSETS / "@iconify-json" / "openmoji",
        "twemoji": NPM_ASSETS / "@twemoji" / "svg",
        "game-icons": NPM_ASSETS / "@iconify-json" / "game-icons",
    }
    try:
        return roots[source]
    except KeyError:
        raise KeyError(f"unknown asset source {source!r}; known: {', '.join(sorted(roots))}") from None


def require_file(path: str | Path, package: str, install: str) -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is an existing file, else :class:`AssetMissingError`."""
    p = Path(path)
    if not p.is_file():
        raise AssetMissingError(p, package, install)
    return p


def require_source(source: str, path: str | Path) -> Path:
    """:func:`require_file` with the package and install command of a known source (see :data:`PROVIDERS`)."""
    prov = PROVIDERS[source]
    return require_file(path, prov.package, prov.install)
