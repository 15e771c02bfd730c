"""What the embedded benchmark is made of: hand-picked sounds and pictures per class, and their loaders.

Every asset below was looked at (pictures rendered and inspected; recordings decoded and measured)
before being listed; nothing is globbed. Assets are read from where their packages install them
(see :mod:`avgn.data.assets`), never copied into the repository.

Audio
-----
* ``kind="soundfont"`` (``real=False``): random melodies played by a General MIDI soundfont
  (FluidR3, TimGM6mb, MuseScore General Lite) through :mod:`tinysoundfont` (an in-process synthesiser);
  one source per (instrument, soundfont), the key names the font file and the GM programs.
* ``kind="recording"`` (``real=True``): real recordings from GCompris (``.rcc`` entries) and Tux Paint
  stamps (OGG files). A key may list several files (``|``-separated): a clip is then built from
  random picks among them (e.g. the four real xylophone notes of GCompris's *melody* activity).

Pictures (:class:`VisualAsset`)
-------------------------------
``style`` is ``"photo"`` (real photographs cut out with an alpha mask: Tux Paint stamps),
``"drawing"`` (GCompris, OpenClipart and Tux Paint vector/raster drawings), ``"emoji"`` (Noto Color
Emoji, Fluent Emoji, OpenMoji, Twemoji) or ``"icon"`` (single-colour Game-icons silhouettes; the only
second style for clarinet, tuba and xylophone, which have no emoji and no photo in any reachable package).

Key formats (stable across machines: relative to the source's root, see :func:`asset_path`):

========================  ==============================================================
source                    key
========================  ==============================================================
gcompris                  ``<file>.rcc!<entry>[|<entry>...]``
tuxpaint, openclipart     path relative to the stamps / svg folder
fluidr3/timgm6mb/musescore ``<font file relative to /usr/share/sounds>#programs=<p>[,<p>...]``
noto, twemoji             hex code points joined by ``-`` (e.g. ``1f415``)
fluent, openmoji,         Iconify icon name (e.g. ``violin``)
game-icons
========================  ==============================================================
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from avgn.data import assets as A
from avgn.data.classes import CLASS_NAMES, CLASSES, class_info

__all__ = [
    "AudioSource",
    "VisualAsset",
    "audio_sources",
    "visual_assets",
    "asset_path",
    "check_assets",
    "coverage_table",
    "load_sprite",
    "backgrounds",
    "load_background",
    "render_clips",
    "AUDIO_NOTES",
    "SOUNDFONT_NAMES",
    "STYLES",
]

STYLES = ("photo", "drawing", "emoji", "icon")
SOUNDFONT_NAMES = ("fluidr3", "timgm6mb", "musescore")


@dataclass(frozen=True)
class AudioSource:
    """One way of producing sound for a class (a soundfont preset or a set of real recordings)."""

    cls: str
    kind: str  # "soundfont" | "recording"
    source: str  # "fluidr3" | "timgm6mb" | "musescore" | "gcompris" | "tuxpaint"
    key: str
    real: bool

    @property
    def id(self) -> str:
        """A short unique id, ``"<cls>/<source>/<key>"``."""
        return f"{self.cls}/{self.source}/{self.key}"


@dataclass(frozen=True)
class VisualAsset:
    """One picture of a class."""

    cls: str
    style: str  # "photo" | "drawing" | "emoji" | "icon"
    source: str  # "tuxpaint" | "gcompris" | "openclipart" | "noto" | "fluent" | "openmoji" | "twemoji" | "game-icons"
    key: str

    @property
    def id(self) -> str:
        return f"{self.cls}/{self.style}/{self.source}/{self.key}"


# --------------------------------------------------------------------------------------------------
# curated tables
# --------------------------------------------------------------------------------------------------
_GI = "gcompris/src/activities/"
_INS = f"instruments.rcc!{_GI}instruments/resource/"
_FARM = f"explore_farm_animals.rcc!{_GI}explore_farm_animals/resource/animals/"
_MEM = f"memory-sound.rcc!{_GI}memory-sound/resource/"
_LANG = f"lang.rcc!{_GI}lang/resource/words_sample/"
_MEMO = f"memory.rcc!{_GI}memory/resource/"
_MUS = "recreation/music/"

#: real recordings per class: (source, key). Multi-file keys are '|'-joined entries of one rcc.
_RECORDINGS: dict[str, list[tuple[str, str]]] = {
    "accordion": [("gcompris", _INS + "accordion.ogg")],
    "acoustic_guitar": [
        ("gcompris", _INS + "guitar.ogg"),
        (
            "gcompris",
            _MEM + "guitar_son1.ogg|" + "|".join(f"{_GI}memory-sound/resource/guitar_son{i}.ogg" for i in (2, 3, 4)),
        ),
    ],
    "cello": [("gcompris", _INS + "cello.ogg"), ("tuxpaint", "hobbies/music/string/cello.ogg")],
    "clarinet": [("gcompris", _INS + "clarinet.ogg")],
    "flute": [("gcompris", _INS + "flute_traversiere.ogg")],
    "saxophone": [("gcompris", _INS + "saxophone.ogg")],
    "trumpet": [("gcompris", _INS + "trumpet.ogg")],
    "tuba": [("gcompris", _INS + "tuba.ogg")],
    "violin": [("gcompris", _INS + "violin.ogg"), ("tuxpaint", "hobbies/music/string/violin.ogg")],
    "xylophone": [
        (
            "gcompris",
            f"melody.rcc!{_GI}melody/resource/xylofon_son1.wav|"
            + "|".join(f"{_GI}melody/resource/xylofon_son{i}.wav" for i in (2, 3, 4)),
        )
    ],
    "dog": [
        ("gcompris", _FARM + "dog.ogg"),
        ("gcompris", _MEM + "LRBark_1_LA_cut.ogg"),
        ("gcompris", _MEM + "LRBark_3_LA_cut.ogg"),
        ("tuxpaint", "animals/mammals/dogs/dog.ogg"),
    ],
    "cat": [("gcompris", _FARM + "cat.ogg"), ("tuxpaint", "seasonal/halloween/blackcat.ogg")],
    "cow": [
        ("gcompris", _FARM + "cow.ogg"),
        ("tuxpaint", "animals/mammals/bovines/cow.ogg"),
        ("tuxpaint", "animals/mammals/bovines/cow_white.ogg"),
    ],
    "horse": [("gcompris", _FARM + "horse.ogg"), ("tuxpaint", "animals/mammals/equines/horse.ogg")],
    "pig": [
        ("gcompris", _FARM + "pig.ogg"),
        ("tuxpaint", "animals/mammals/pig.ogg"),
        ("tuxpaint", "animals/mammals/pig_golden.ogg|animals/mammals/pig_golden2.ogg"),
    ],
    "sheep": [
        ("gcompris", _FARM + "sheep.ogg"),
        ("tuxpaint", "animals/mammals/bovines/sheep.ogg"),
        ("tuxpaint", "animals/mammals/bovines/sheep_lamb.ogg"),
        ("tuxpaint", "animals/mammals/bovines/ram.ogg"),
    ],
    "chicken": [
        ("gcompris", _FARM + "chickens.ogg"),
        ("tuxpaint", "animals/birds/rooster.ogg"),
        ("tuxpaint", "animals/birds/hen.ogg"),
    ],
    "duck": [
        ("gcompris", _FARM + "duck.ogg"),
        ("tuxpaint", "animals/birds/duck.ogg"),
        ("tuxpaint", "animals/birds/drake.ogg"),
    ],
    "owl": [("gcompris", _FARM + "owl.ogg"), ("tuxpaint", "animals/birds/owl.ogg")],
    "frog": [("tuxpaint", "animals/amphibians/frog.ogg"), ("gcompris", _MEM + "LRFrogsInPondDuringStormLACut.ogg")],
    "lion": [("tuxpaint", "animals/mammals/cats/lion.ogg")],
    "elephant": [("tuxpaint", "animals/mammals/elephant.ogg")],
    "bee": [("tuxpaint", "animals/insects/bee.ogg")],
}

#: caveats shown in the coverage table, by recording key
AUDIO_NOTES: dict[str, str] = {
    _MEM + "LRFrogsInPondDuringStormLACut.ogg": "frogs in a pond during a storm: rain in the background",
    f"{_MEM}guitar_son1.ogg": "four short single guitar notes (about 1 s each)",
    f"melody.rcc!{_GI}melody/resource/xylofon_son1.wav": "four single xylophone notes (0.4-0.5 s each)",
    "seasonal/halloween/blackcat.ogg": "Tux Paint's 'black cat' stamp sound",
}
_E = "emoji"

#: pictures per class: (style, source, key)
_VISUALS: dict[str, list[tuple[str, str, str]]] = {
    "accordion": [
        ("drawing", "gcompris", _INS + "accordion.svg"),
        (_E, "noto", "1fa97"),
        (_E, "fluent", "accordion"),
        (_E, "openmoji", "accordion"),
        (_E, "twemoji", "1fa97"),
        ("icon", "game-icons", "accordion"),
    ],
    "acoustic_guitar": [  # the guitar emoji is an electric guitar in every set: left out
        ("photo", "tuxpaint", "hobbies/music/string/guitar_classical.png"),
        ("drawing", "gcompris", _INS + "guitar.svg"),
        ("drawing", "openclipart", _MUS + "guitar_ganson.svg"),
        ("drawing", "openclipart", _MUS + "guitar_jarno_vasamaa1.svg"),
        ("drawing", "openclipart", _MUS + "guitar_profile_philippe__01.svg"),
        ("icon", "game-icons", "guitar"),
    ],
    "cello": [
        ("photo", "tuxpaint", "hobbies/music/string/cello.png"),
        ("drawing", "gcompris", _INS + "cello.svg"),
        ("drawing", "openclipart", _MUS + "cello_ganson.svg"),
    ],
    "clarinet": [
        ("drawing", "gcompris", _INS + "clarinet.svg"),
        ("icon", "game-icons", "clarinet"),
    ],
    "flute": [  # Fluent/OpenMoji/Game-icons "flute" are end-blown recorders: left out
        ("drawing", "gcompris", _INS + "flute_traversiere.svg"),
        ("drawing", "openclipart", _MUS + "flute_ganson.svg"),
        (_E, "noto", "1fa88"),
        (_E, "twemoji", "1fa88"),
    ],
    "saxophone": [
        ("drawing", "gcompris", _INS + "saxophone.svg"),
        (_E, "noto", "1f3b7"),
        (_E, "fluent", "saxophone"),
        (_E, "openmoji", "saxophone"),
        (_E, "twemoji", "1f3b7"),
        ("icon", "game-icons", "saxophone"),
    ],
    "trumpet": [
        ("photo", "tuxpaint", "hobbies/music/brass/trumpet.png"),
        ("drawing", "gcompris", _INS + "trumpet.svg"),
        ("drawing", "openclipart", _MUS + "trumpet_b_flat_colour_ganso.svg"),
        ("drawing", "openclipart", _MUS + "trumpet_b_flat__ganson.svg"),
        (_E, "noto", "1f3ba"),
        (_E, "fluent", "trumpet"),
        (_E, "openmoji", "trumpet"),
        (_E, "twemoji", "1f3ba"),
        ("icon", "game-icons", "trumpet"),
    ],
    "tuba": [
        ("drawing", "gcompris", _INS + "tuba.svg"),
        ("icon", "game-icons", "tuba"),
    ],
    "violin": [
        ("photo", "tuxpaint", "hobbies/music/string/violin.png"),
        ("drawing", "tuxpaint", "hobbies/music/string/violin2.svg"),
        ("drawing", "gcompris", _INS + "violin.svg"),
        ("drawing", "openclipart", _MUS + "violin_colour_ganson.svg"),
        ("drawing", "openclipart", _MUS + "violin_ganson.svg"),
        (_E, "noto", "1f3bb"),
        (_E, "fluent", "violin"),
        (_E, "openmoji", "violin"),
        (_E, "twemoji", "1f3bb"),
        ("icon", "game-icons", "violin"),
    ],
    "xylophone": [  # GCompris's xylofon.svg is only the empty frame: left out
        ("drawing", "openclipart", _MUS + "xylophone_ganson.svg"),
        ("icon", "game-icons", "xylophone"),
    ],
    "dog": [
        ("photo", "tuxpaint", "animals/mammals/dogs/dog.png"),
        ("drawing", "gcompris", _FARM + "dog.svg"),
        ("drawing", "gcompris", _LANG + "dog.webp"),
        ("drawing", "openclipart", "animals/mammals/dogs/beagle_copper_ganson.svg"),
        (_E, "noto", "1f415"),
        (_E, "fluent", "dog"),
        (_E, "openmoji", "dog"),
        (_E, "twemoji", "1f415"),
        ("icon", "game-icons", "sitting-dog"),
    ],
    "cat": [  # no cut-out cat photo in any package (GCompris's cat photos are full-frame)
        ("drawing", "gcompris", _FARM + "cat.svg"),
        ("drawing", "gcompris", _LANG + "cat.webp"),
        ("drawing", "gcompris", _MEMO + "01_cat.svg"),
        ("drawing", "tuxpaint", "animals/mammals/cats/kitten.svg"),
        ("drawing", "openclipart", "animals/mammals/housecats/gatto_cat_architetto_fra_01.svg"),
        ("drawing", "openclipart", "animals/mammals/housecats/kitten_gerald_g._01.svg"),
        (_E, "noto", "1f408"),
        (_E, "fluent", "cat"),
        (_E, "openmoji", "cat"),
        (_E, "twemoji", "1f408"),
        ("icon", "game-icons", "cat"),
    ],
    "cow": [
        ("photo", "tuxpaint", "animals/mammals/bovines/cow.png"),
        ("photo", "tuxpaint", "animals/mammals/bovines/cow_white.png"),
        ("drawing", "gcompris", _FARM + "cow.svg"),
        ("drawing", "gcompris", _LANG + "cow.webp"),
        ("drawing", "gcompris", _MEMO + "06_cow.svg"),
        ("drawing", "openclipart", "animals/mammals/vacca_pezzata_rossa_val_01.svg"),
        (_E, "noto", "1f404"),
        (_E, "fluent", "cow"),
        (_E, "openmoji", "cow"),
        (_E, "twemoji", "1f404"),
        ("icon", "game-icons", "cow"),
    ],
    "horse": [
        ("photo", "tuxpaint", "animals/mammals/equines/horse.png"),
        ("drawing", "gcompris", _FARM + "horse.svg"),
        ("drawing", "gcompris", _LANG + "horse.webp"),
        ("drawing", "openclipart", "animals/mammals/horses/cavallo_architetto_franc_01.svg"),
        (_E, "noto", "1f40e"),
        (_E, "fluent", "horse"),
        (_E, "openmoji", "horse"),
        (_E, "twemoji", "1f40e"),
    ],
    "pig": [
        ("photo", "tuxpaint", "animals/mammals/pig.png"),
        ("photo", "tuxpaint", "animals/mammals/pig_golden.png"),
        ("drawing", "gcompris", _FARM + "pig.svg"),
        ("drawing", "gcompris", _LANG + "pig.webp"),
        ("drawing", "gcompris", _MEMO + "02_pig.svg"),
        ("drawing", "openclipart", "animals/mammals/pig_marcelo_caiafa1.svg"),
        (_E, "noto", "1f416"),
        (_E, "fluent", "pig"),
        (_E, "openmoji", "pig"),
        (_E, "twemoji", "1f416"),
        ("icon", "game-icons", "pig"),
    ],
    "sheep": [
        ("photo", "tuxpaint", "animals/mammals/bovines/sheep.png"),
        ("photo", "tuxpaint", "animals/mammals/bovines/sheep_lamb.png"),
        ("photo", "tuxpaint", "animals/mammals/bovines/ram.png"),
        ("drawing", "gcompris", _FARM + "sheep.svg"),
        ("drawing", "gcompris", _LANG + "sheep.webp"),
        ("drawing", "gcompris", _MEMO + "07_sheep.svg"),
        ("drawing", "openclipart", "animals/mammals/sheep-md-v0.1.svg"),
        (_E, "noto", "1f411"),
        (_E, "fluent", "ewe"),
        (_E, "openmoji", "ewe"),
        (_E, "twemoji", "1f411"),
        ("icon", "game-icons", "sheep"),
    ],
    "chicken": [
        ("photo", "tuxpaint", "animals/birds/rooster.png"),
        ("photo", "tuxpaint", "animals/birds/hen.png"),
        ("photo", "tuxpaint", "animals/birds/chicken_profile.png"),
        ("drawing", "gcompris", _FARM + "chicken.svg"),
        ("drawing", "gcompris", _LANG + "chicken.webp"),
        ("drawing", "gcompris", _MEMO + "10_chicken.svg"),
        ("drawing", "openclipart", "animals/birds/rooster_01.svg"),
        ("drawing", "openclipart", "animals/birds/hen_01.svg"),
        (_E, "noto", "1f413"),
        (_E, "noto", "1f414"),
        (_E, "fluent", "rooster"),
        (_E, "fluent", "chicken"),
        (_E, "openmoji", "rooster"),
        (_E, "openmoji", "chicken"),
        (_E, "twemoji", "1f413"),
        (_E, "twemoji", "1f414"),
        ("icon", "game-icons", "rooster"),
        ("icon", "game-icons", "chicken"),
    ],
    "duck": [
        ("photo", "tuxpaint", "animals/birds/duck.png"),
        ("photo", "tuxpaint", "animals/birds/drake.png"),
        ("drawing", "gcompris", _FARM + "duck.svg"),
        ("drawing", "gcompris", _LANG + "duck.webp"),
        (_E, "noto", "1f986"),
        (_E, "fluent", "duck"),
        (_E, "openmoji", "duck"),
        (_E, "twemoji", "1f986"),
        ("icon", "game-icons", "duck"),
    ],
    "owl": [
        ("photo", "tuxpaint", "animals/birds/owl.png"),
        ("drawing", "gcompris", _FARM + "owl.svg"),
        ("drawing", "gcompris", _LANG + "owl.webp"),
        (_E, "noto", "1f989"),
        (_E, "fluent", "owl"),
        (_E, "openmoji", "owl"),
        (_E, "twemoji", "1f989"),
        ("icon", "game-icons", "owl"),
        ("icon", "game-icons", "barn-owl"),
    ],
    "frog": [
        ("photo", "tuxpaint", "animals/amphibians/frog.png"),
        ("photo", "tuxpaint", "animals/amphibians/frog-1.png"),
        ("drawing", "gcompris", _LANG + "frog.webp"),
        ("drawing", "gcompris", _MEMO + "21_frog.svg"),
        (_E, "noto", "1f438"),
        (_E, "fluent", "frog"),
        (_E, "openmoji", "frog"),
        (_E, "twemoji", "1f438"),
        ("icon", "game-icons", "frog"),
    ],
    "lion": [
        ("photo", "tuxpaint", "animals/mammals/cats/lion.png"),
        ("photo", "tuxpaint", "animals/mammals/cats/lion-2.png"),
        ("drawing", "gcompris", _MEMO + "17_lion.svg"),
        ("drawing", "openclipart", "animals/mammals/big_cats/leone_01_architetto_fran_01.svg"),
        (_E, "noto", "1f981"),
        (_E, "fluent", "lion"),
        (_E, "openmoji", "lion"),
        (_E, "twemoji", "1f981"),
        ("icon", "game-icons", "lion"),
    ],
    "elephant": [
        ("photo", "tuxpaint", "animals/mammals/elephant.png"),
        ("drawing", "gcompris", _MEMO + "16_elephant.svg"),
        ("drawing", "openclipart", "animals/mammals/elefante01_architetto_fr_01.svg"),
        (_E, "noto", "1f418"),
        (_E, "fluent", "elephant"),
        (_E, "openmoji", "elephant"),
        (_E, "twemoji", "1f418"),
        ("icon", "game-icons", "elephant"),
    ],
    "bee": [  # no bee photo (Tux Paint's bee stamp is line art)
        ("drawing", "tuxpaint", "animals/insects/bee.svg"),
        ("drawing", "gcompris", _LANG + "bee.webp"),
        ("drawing", "openclipart", "animals/bugs/bee.svg"),
        (_E, "noto", "1f41d"),
        (_E, "fluent", "honeybee"),
        (_E, "openmoji", "honeybee"),
        (_E, "twemoji", "1f41d"),
        ("icon", "game-icons", "bee"),
    ],
}

_STYLE_ORDER = {s: i for i, s in enumerate(STYLES)}


def _select(classes: Iterable[str] | None) -> list[str]:
    if classes is None:
        return list(CLASS_NAMES)
    if isinstance(classes, str):
        classes = [classes]
    names = list(classes)
    for n in names:
        class_info(n)  # validates
    return [n for n in CLASS_NAMES if n in set(names)]


def audio_sources(classes: Iterable[str] | None = None) -> list[AudioSource]:
    """All audio sources of the given classes (default: all), in class order then soundfonts then recordings."""
    out: list[AudioSource] = []
    for name in _select(classes):
        info = class_info(name)
        if info.gm_programs:
            progs = ",".join(str(p) for p in info.gm_programs)
            for font in SOUNDFONT_NAMES:
                out.append(AudioSource(name, "soundfont", font, f"{A.SOUNDFONTS[font]}#programs={progs}", False))
        for source, key in _RECORDINGS.get(name, []):
            out.append(AudioSource(name, "recording", source, key, True))
    return out


def visual_assets(classes: Iterable[str] | None = None) -> list[VisualAsset]:
    """All pictures of the given classes (default: all), in class order then style order (photo, drawing,
    emoji, icon) then the curated order."""
    out: list[VisualAsset] = []
    for name in _select(classes):
        items = sorted(enumerate(_VISUALS.get(name, [])), key=lambda t: (_STYLE_ORDER[t[1][0]], t[0]))
        out.extend(VisualAsset(name, style, source, key) for _, (style, source, key) in items)
    return out


# --------------------------------------------------------------------------------------------------
# locating files
# --------------------------------------------------------------------------------------------------
def _split_rcc(key: str) -> tuple[str, list[str]]:
    rcc, _, entries = key.partition("!")
    return rcc, entries.split("|")


def asset_path(item: AudioSource | VisualAsset) -> Path:
    """The file on disk behind an asset (the ``.rcc`` for GCompris, the font for Noto, the icon set's
    ``icons.json`` for Iconify sets, the soundfont for soundfont sources)."""
    src, key = item.source, item.key
    root = A.source_root(src)
    if src == "gcompris":
        return root / _split_rcc(key)[0]
    if src in ("tuxpaint", "openclipart"):
        return root / key.split("|")[0]
    if src in SOUNDFONT_NAMES:
        return root / key.split("#")[0]
    if src == "noto":
        return root
    if src == "twemoji":
        return root / f"{key}.svg"
    if src in ("fluent", "openmoji", "game-icons"):
        return root / "icons.json"
    raise KeyError(f"unknown asset source {src!r}")


def _require(item: AudioSource | VisualAsset) -> Path:
    return A.require_source(item.source, asset_path(item))


def check_assets(items: Iterable[AudioSource | VisualAsset] | None = None) -> list[str]:
    """Problems with the catalogue's assets (missing files, rcc entries or icons); empty when all is there."""
    from avgn.data.rcc import cached_rcc
    from avgn.data.sprites import _iconify_set

    if items is None:
        items = [*audio_sources(), *visual_assets()]
    problems = []
    for it in items:
        p = asset_path(it)
        if not p.is_file():
            problems.append(f"{it.id}: missing {p} ({A.PROVIDERS[it.source].install})")
            continue
        if it.source == "gcompris":
            files = cached_rcc(str(p))
            problems += [f"{it.id}: no entry {e} in {p}" for e in _split_rcc(it.key)[1] if e not in files]
        elif it.source == "tuxpaint" and "|" in it.key:
            problems += [f"{it.id}: missing {A.TUXPAINT_STAMPS / k}" for k in it.key.split("|") if not (A.TUXPAINT_STAMPS / k).is_file()]
        elif it.source in ("fluent", "openmoji", "game-icons"):
            d = _iconify_set(str(p))
            if it.key not in d["icons"] and it.key not in d.get("aliases", {}):
                problems.append(f"{it.id}: no icon {it.key!r} in {p}")
    return problems


def _read_bytes(source: str, key: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file behind a GCompris / Tux Paint / OpenClipart key."""
    from avgn.data.rcc import cached_rcc

    root = A.source_root(source)
    if source == "gcompris":
        rcc, entries = _split_rcc(key)
        path = A.require_source(source, root / rcc)
        files = cached_rcc(str(path))
        out = []
        for e in entries:
            if e not in files:
                raise A.AssetMissingError(f"{path}!{e}", A.PROVIDERS[source].package, A.PROVIDERS[source].install,
                                          "entry not in the resource file: version mismatch?")
            out.append((f"{path}!{e}", files[e]))
        return out
    return [(str(p), A.require_source(source, p).read_bytes()) for p in (root / k for k in key.split("|"))]


# --------------------------------------------------------------------------------------------------
# coverage
# --------------------------------------------------------------------------------------------------
def _n_files(src: AudioSource) -> int:
    return len(src.key.split("!")[-1].split("|")) if src.kind == "recording" else 0


def coverage_table():
    """One row per class: audio sources per source (synthetic vs real), number of real recording files,
    pictures per style and per source, and notes on thin coverage. Returns a :class:`pandas.DataFrame`
    indexed by class name (in label order)."""
    import pandas as pd

    rows = []
    for info in CLASSES:
        auds = audio_sources([info.name])
        vis = visual_assets([info.name])
        row: dict[str, object] = {"group": info.group}
        for s in SOUNDFONT_NAMES:
            row[f"sf_{s}"] = sum(a.source == s for a in auds)
        for s in ("gcompris", "tuxpaint"):
            row[f"rec_{s}"] = sum(a.source == s and a.kind == "recording" for a in auds)
        row["audio_synthetic"] = sum(not a.real for a in auds)
        row["audio_real"] = sum(a.real for a in auds)
        row["real_files"] = sum(_n_files(a) for a in auds)
        for st in STYLES:
            row[f"vis_{st}"] = sum(v.style == st for v in vis)
        for s in ("tuxpaint", "gcompris", "openclipart", "noto", "fluent", "openmoji", "twemoji", "game-icons"):
            row[f"src_{s}"] = sum(v.source == s for v in vis)
        row["n_styles"] = len({v.style for v in vis})
        notes = []
        n_real = row["real_files"]
        if n_real <= 2:
            notes.append(f"only {n_real} real recording{'s' if n_real != 1 else ''}")
        for a in auds:
            first = a.key.split("|")[0]
            if first in AUDIO_NOTES:
                notes.append(AUDIO_NOTES[first])
        if row["vis_photo"] == 0:
            notes.append("no photo")
        row["notes"] = "; ".join(notes)
        rows.append((info.name, row))
    df = pd.DataFrame([r for _, r in rows], index=pd.Index([n for n, _ in rows], name="class"))
    return df


# --------------------------------------------------------------------------------------------------
# sprites
# --------------------------------------------------------------------------------------------------
def load_sprite(asset: VisualAsset, max_size: int = 256) -> np.ndarray:
    """RGBA uint8 ``H x W x 4`` sprite, cropped to its alpha bounding box, longer side <= ``max_size``.

    Cached in memory per (asset, max_size); the returned array is read-only (copy it to modify).
    """
    return _load_sprite(asset, int(max_size))


@functools.lru_cache(maxsize=1024)
def _load_sprite(asset: VisualAsset, max_size: int) -> np.ndarray:
    from avgn.data import sprites as S

    src, key = asset.source, asset.key
    render = 2 * max_size
    if src == "noto":
        font = A.require_source(src, A.NOTO_EMOJI_FONT)
        rgba = S.render_noto_emoji("".join(chr(int(c, 16)) for c in key.split("-")), font)
    elif src in ("fluent", "openmoji", "game-icons"):
        path = _require(asset)
        rgba = S.render_svg(S.iconify_svg(path, key), render, f"{path}#{key}")
    elif src == "twemoji":
        path = _require(asset)
        rgba = S.render_svg(path.read_bytes(), render, str(path))
    else:
        (name, data), = _read_bytes(src, key)
        if name.endswith((".svg", ".svgz")):
            if name.endswith(".svgz"):
                import gzip

                data = gzip.decompress(data)
            rgba = S.render_svg(data, render, name)
        else:
            rgba = S.decode_raster(data, name)
    rgba = S.fit_max_size(S.crop_to_alpha(rgba, name=asset.id), max_size)
    rgba.setflags(write=False)
    return rgba


# --------------------------------------------------------------------------------------------------
# backgrounds
# --------------------------------------------------------------------------------------------------
_CLICK = f"clickgame.rcc!{_GI}clickgame/resource/"
_BG_PHOTOS: dict[str, tuple[str, str]] = {
    # skimage.data photos without a main object (textures, a lunar surface, deep sky)
    "skimage:brick": ("skimage", "brick.png"),
    "skimage:grass": ("skimage", "grass.png"),
    "skimage:gravel": ("skimage", "gravel.png"),
    "skimage:moon": ("skimage", "moon.png"),
    "skimage:hubble_deep_field": ("skimage", "hubble_deep_field.jpg"),
    # GCompris underwater photos (click-on-the-fish game backgrounds) and cardboard textures
    "gcompris:sea1": ("gcompris", _CLICK + "sea1.webp"),
    "gcompris:sea2": ("gcompris", _CLICK + "sea2.webp"),
    "gcompris:sea3": ("gcompris", _CLICK + "sea3.webp"),
    "gcompris:sea4": ("gcompris", _CLICK + "sea4.webp"),
    "gcompris:sea5": ("gcompris", _CLICK + "sea5.webp"),
    "gcompris:texture01": ("gcompris", f"digital_electricity.rcc!{_GI}digital_electricity/resource/texture01.webp"),
    "gcompris:texture02": ("gcompris", f"digital_electricity.rcc!{_GI}digital_electricity/resource/texture02.webp"),
}
_BG_PROCEDURAL = ("proc:gradient", "proc:noise", "proc:stripes", "proc:blobs")


def backgrounds() -> list[str]:
    """Background ids: real photos (``skimage:*``, ``gcompris:*``) then procedural textures (``proc:*``)."""
    return [*_BG_PHOTOS, *_BG_PROCEDURAL]


@functools.lru_cache(maxsize=32)
def _bg_photo(key: str) -> np.ndarray:
    from avgn.data import sprites as S

    source, ref = _BG_PHOTOS[key]
    if source == "skimage":
        import skimage

        path = A.require_source("skimage", Path(skimage.__file__).parent / "data" / ref)
        rgba = S.decode_raster(path.read_bytes(), str(path))
    else:
        (name, data), = _read_bytes(source, ref)
        rgba = S.decode_raster(data, name)
    rgb = np.ascontiguousarray(rgba[..., :3])
    rgb.setflags(write=False)
    return rgb


def _resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img, "RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random ``cells x cells`` grid upsampled bicubically."""
    from PIL import Image

    g = rng.random((cells + 1, cells + 1)).astype(np.float32)
    im = Image.fromarray(g, "F").resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(im), 0, 1)


def _procedural(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    if kind == "gradient":
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.cos(ang) * xx + np.sin(ang) * yy)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        t = t + 0.08 * (_smooth_noise(rng, size, 6) - 0.5)
    elif kind == "noise":  # fractal value noise (4 octaves)
        t = sum(_smooth_noise(rng, size, 2 ** (o + 2)) / 2**o for o in range(4)) / 1.875
    elif kind == "stripes":
        ang, freq = rng.uniform(0, np.pi), rng.uniform(3, 12)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(ang) * xx + np.sin(ang) * yy) + rng.uniform(0, 6.3))
        t = 0.7 * t + 0.3 * _smooth_noise(rng, size, 8)
    elif kind == "blobs":
        t = (_smooth_noise(rng, size, 5) > 0.5).astype(np.float32)
        t = 0.75 * t + 0.25 * _smooth_noise(rng, size, 16)
    else:
        raise KeyError(f"unknown procedural background {kind!r}")
    t = np.clip(t, 0, 1)[..., None]
    img = c1 * (1 - t) + c2 * t + rng.normal(0, 4, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def load_background(key: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size x size x 3`` uint8 background: a random square crop (side 40-100 % of the photo's shorter
    side, random position, random horizontal flip) resized to ``size``, or a procedural texture drawn
    with ``rng``. Deterministic given the state of ``rng``."""
    if key.startswith("proc:"):
        return _procedural(key[5:], int(size), rng)
    if key not in _BG_PHOTOS:
        raise KeyError(f"unknown background {key!r}; known: {', '.join(backgrounds())}")
    img = _bg_photo(key)
    h, w = img.shape[:2]
    side = max(8, int(round(min(h, w) * rng.uniform(0.4, 1.0))))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = img[y0 : y0 + side, x0 : x0 + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return _resize_rgb(np.ascontiguousarray(crop), int(size))


# --------------------------------------------------------------------------------------------------
# audio clips
# --------------------------------------------------------------------------------------------------
def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _clip_rngs(source: AudioSource, n: int, seed: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _stable_hash(source.id) & 0xFFFFFFFF])
    return [np.random.default_rng(s) for s in ss.spawn(n)]


def render_clips(
    source: AudioSource, n: int, seed: int, seconds: float = 3.0, sample_rate: int = 16000
) -> np.ndarray:
    """``[n, T]`` float32 clips of ``source`` (``T = round(seconds * sample_rate)``), each loudness-normalised
    (RMS -20 dBFS with peak protection at 0.99, see :func:`avgn.data.audio.loudness_normalise`).

    Deterministic in ``(source, seed)``: clip ``i`` depends only on ``(source, seed, i)``, so
    ``render_clips(s, 5, k)[:3] == render_clips(s, 3, k)``. How soundfont melodies and recording clips are
    made: :func:`_render_melody` and :func:`_clip_from_recordings`. Soundfont synthesisers are kept per
    process (first use of a font loads it: 0.1-2.5 s); not thread-safe -- use processes, not threads.
    """
    from avgn.data.audio import loudness_normalise

    T = int(round(seconds * sample_rate))
    rngs = _clip_rngs(source, int(n), seed)
    if source.kind == "soundfont":
        font = _require(source)
        progs = tuple(int(p) for p in source.key.split("programs=")[1].split(","))
        info = class_info(source.cls)
        clips = [_render_melody(font, progs, info, rng, T, sample_rate) for rng in rngs]
    elif source.kind == "recording":
        waves = _recording_waves(source.source, source.key, int(sample_rate))
        clips = [_clip_from_recordings(waves, rng, T, sample_rate) for rng in rngs]
    else:
        raise ValueError(f"unknown audio source kind {source.kind!r}")
    out = np.zeros((len(clips), T), dtype=np.float32) if not clips else np.stack(clips).astype(np.float32)
    return loudness_normalise(out)



def _trim_silence(x: np.ndarray, sr: int, floor_db: float = 40.0) -> np.ndarray:
    """Drop leading/trailing 10 ms frames more than ``floor_db`` below the loudest frame (keep 20 ms pads)."""
    hop = max(1, sr // 100)
    n = len(x) // hop
    if n < 3:
        return x
    e = np.sqrt(np.mean(x[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1)) + 1e-12
    on = np.flatnonzero(20 * np.log10(e / e.max()) > -floor_db)
    a = max(0, (on[0] - 2) * hop)
    b = min(len(x), (on[-1] + 3) * hop)
    return x[a:b]


@functools.lru_cache(maxsize=128)
def _recording_waves(source: str, key: str, sample_rate: int) -> tuple[np.ndarray, ...]:
    """Decoded (mono, ``sample_rate``), silence-trimmed waveforms of every file of a recording key."""
    from avgn.data.audio import decode_audio

    waves = []
    for name, data in _read_bytes(source, key):
        x = _trim_silence(decode_audio(data, sample_rate, name), sample_rate)
        x.setflags(write=False)
        waves.append(x)
    return tuple(waves)


def _speed(x: np.ndarray, factor_pct: int) -> np.ndarray:
    """Play ``x`` at ``factor_pct`` % speed (tape-style: pitch moves with it), by polyphase resampling."""
    if factor_pct == 100:
        return np.asarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    return resample_poly(np.asarray(x, dtype=np.float64), 100, factor_pct).astype(np.float32)


def _fade(x: np.ndarray, n: int) -> np.ndarray:
    n = min(n, len(x) // 2)
    if n > 0:
        r = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= r
        x[-n:] *= r[::-1]
    return x


#: recording-clip rules (see :func:`_clip_from_recordings`)
REC_SPEED_RANGE = (95, 105)  # percent; tape-style speed change (+-5 %)
REC_ENERGY_FLOOR_DB = 12.0  # a crop's RMS must be within this many dB of the loudest crop
REC_EVENT_GAP_S = (0.05, 0.6)
REC_EVENT_GAIN_DB = 3.0


def _clip_from_recordings(waves: tuple[np.ndarray, ...], rng: np.random.Generator, T: int, sr: int) -> np.ndarray:
    """One ``T``-sample clip made of real recordings.

    * One recording at least as long as the clip (after the speed change): a random crop, chosen
      uniformly among the crops whose RMS is within :data:`REC_ENERGY_FLOOR_DB` dB of the loudest crop
      (so near-silent stretches are never picked), played at a random speed in :data:`REC_SPEED_RANGE`
      percent, with 10 ms fades.
    * Otherwise (short recordings such as one bark, or a set of single notes): *events* -- the clip is
      filled from a random start (0-0.4 s) with recordings picked at random, each at its own random speed
      and a gain of +-:data:`REC_EVENT_GAIN_DB` dB, separated by random silences of
      :data:`REC_EVENT_GAP_S` seconds; the last event is cut (with a fade) at the clip's end. A single
      short recording is thus repeated (a dog barking several times), never stretched.
    """
    out = np.zeros(T, dtype=np.float32)
    f = int(rng.integers(REC_SPEED_RANGE[0], REC_SPEED_RANGE[1] + 1))
    fade = max(1, sr // 100)
    if len(waves) == 1 and len(waves[0]) >= int(np.ceil(T * f / 100)) + 2:
        x = waves[0]
        need = int(np.ceil(T * f / 100)) + 2
        hop = max(1, sr // 100)
        c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
        starts = np.arange(0, len(x) - need + 1, hop)
        rms = np.sqrt((c[starts + need] - c[starts]) / need)
        ok = starts[rms >= rms.max() * 10 ** (-REC_ENERGY_FLOOR_DB / 20)]
        s = int(ok[rng.integers(len(ok))])
        seg = _speed(x[s : s + need], f)[:T]
        out[: len(seg)] = seg
        return _fade(out, fade)
    t = int(rng.uniform(0.0, 0.4) * sr)
    while t < T:
        w = waves[int(rng.integers(len(waves)))]
        e = _speed(w, int(rng.integers(REC_SPEED_RANGE[0], REC_SPEED_RANGE[1] + 1)))
        e = e * np.float32(10 ** (rng.uniform(-REC_EVENT_GAIN_DB, REC_EVENT_GAIN_DB) / 20))
        e = _fade(e[: T - t].copy(), fade)
        out[t : t + len(e)] += e
        t += len(e) + int(rng.uniform(*REC_EVENT_GAP_S) * sr)
    return out


# ---- soundfont melodies -------------------------------------------------------------------------------
_SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "pentatonic": (0, 2, 4, 7, 9),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
}
#: playing style per instrument: (family, vibrato depth in cents (max), polyphonic)
_STYLE = {
    "violin": ("bowed", 30.0, False),
    "cello": ("bowed", 30.0, False),
    "flute": ("wind", 18.0, False),
    "clarinet": ("wind", 4.0, False),
    "saxophone": ("wind", 20.0, False),
    "trumpet": ("wind", 12.0, False),
    "tuba": ("wind", 6.0, False),
    "accordion": ("reed", 0.0, False),
    "acoustic_guitar": ("plucked", 0.0, True),
    "xylophone": ("struck", 0.0, True),
}
_BLOCK = 256  # control-rate block (samples at the internal rate): 8 ms at 32 kHz


@functools.lru_cache(maxsize=8)
def _synth(font: str, rate: int):
    """A persistent :class:`tinysoundfont.Synth` with ``font`` loaded (one per font and rate, per process)."""
    try:
        import tinysoundfont
    except ImportError as exc:  # pragma: no cover - exercised only without the package
        prov = A.PROVIDERS["tinysoundfont"]
        raise ImportError(f"soundfont rendering needs {prov.package}: `{prov.install}`") from exc
    synth = tinysoundfont.Synth(gain=0.0, samplerate=rate)
    sfid = synth.sfload(font)
    return synth, sfid


def _compose(name: str, lo: int, hi: int, rng: np.random.Generator, seconds: float):
    """A random melody: list of ``(onset_s, duration_s, pitch, velocity, expression_shape)``.

    Tempo 60-150 bpm; a random scale and tonic; a random sub-range of 7-15 semitones inside the
    instrument's range; a random walk on the scale (mostly steps, some leaps); note lengths, rests,
    articulation (legato / detached) and velocity (phrase level + per-note jitter + accents) drawn per clip.
    """
    family = _STYLE[name][0]
    bpm = rng.uniform(60, 150)
    beat = 60.0 / bpm
    scale = list(_SCALES.values())[int(rng.integers(len(_SCALES)))]
    span = int(min(hi - lo, rng.integers(7, 16)))
    sub_lo = int(rng.integers(lo, hi - span + 1))
    tonic = int(rng.integers(12))
    pitches = [p for p in range(sub_lo, sub_lo + span + 1) if (p - tonic) % 12 in scale]
    if len(pitches) < 3:
        pitches = list(range(sub_lo, sub_lo + span + 1))
    if family == "struck":  # percussive: dense, short values (a long value would leave silence)
        lens, lp = (0.25, 0.5, 1.0), (0.3, 0.45, 0.25)
    elif family == "plucked":
        lens, lp = (0.25, 0.5, 1.0, 2.0), (0.25, 0.4, 0.25, 0.1)
    else:
        lens, lp = (0.5, 1.0, 1.5, 2.0, 3.0), (0.25, 0.35, 0.1, 0.2, 0.1)
    gate = rng.uniform(0.55, 0.75) if rng.random() < 0.2 else rng.uniform(0.88, 1.0)  # detached or legato
    if family == "plucked":
        gate = rng.uniform(1.0, 2.0)  # let the strings ring
    base_vel = rng.uniform(55, 110)
    steps, sp = (-3, -2, -1, 0, 1, 2, 3), (0.05, 0.15, 0.27, 0.06, 0.27, 0.15, 0.05)
    i = int(rng.integers(len(pitches)))
    t = rng.uniform(0.0, 0.3)
    beat_pos = 0.0
    notes = []
    while t < seconds:
        d_beats = float(rng.choice(lens, p=lp))
        if family in ("wind", "reed", "bowed") and notes and rng.random() < 0.1:  # breath / bow change
            rest = float(rng.choice((0.5, 1.0))) * beat
            t += rest
            beat_pos += rest / beat
            continue
        step = int(rng.choice(steps, p=sp))
        i = i + step
        if i < 0 or i >= len(pitches):
            i = i - 2 * step
            i = min(max(i, 0), len(pitches) - 1)
        accent = 10.0 if abs(beat_pos - round(beat_pos)) < 1e-6 and round(beat_pos) % 4 == 0 else 0.0
        vel = int(np.clip(base_vel + accent + rng.normal(0, 8), 25, 127))
        dur = d_beats * beat
        shape = int(rng.integers(4))  # 0 flat, 1 crescendo, 2 diminuendo, 3 swell
        if family == "struck" and rng.random() < 0.15 and dur >= 0.5 * beat:  # tremolo / roll on one bar
            k = max(2, int(dur / (beat / 4)))
            for j in range(k):
                notes.append((t + j * dur / k, dur / k, pitches[i], int(np.clip(vel - 15 + rng.normal(0, 6), 20, 127)), 0))
        else:
            notes.append((t, dur * gate, pitches[i], vel, shape))
            if family == "plucked" and rng.random() < 0.2:  # a dyad: a third/fourth below
                j = max(0, i - int(rng.integers(2, 4)))
                if j != i:
                    notes.append((t + rng.uniform(0.0, 0.02), dur * gate, pitches[j], max(20, vel - 12), shape))
        t += dur
        beat_pos += d_beats
    return notes


def _render_melody(font: Path, programs: tuple[int, ...], info, rng: np.random.Generator, T: int, sr: int) -> np.ndarray:
    """Render one random melody (:func:`_compose`) with a soundfont: mono float32, ``T`` samples at ``sr``.

    tinysoundfont renders at twice ``sr`` (for ``sr`` <= 24 kHz, to limit aliasing of its linear
    interpolation), driven at an 8 ms control rate: note on/off events, vibrato as a pitch-bend LFO
    (bowed and wind instruments: 4.8-6.5 Hz, depth up to the instrument's maximum in cents, fading in
    0.1-0.3 s after each onset) and a per-note expression (CC 11) envelope for sustained instruments;
    then decimated to ``sr``. The synthesiser is reset (all sounds off, controllers reset) and flushed
    before each clip, so a clip does not depend on what was rendered before it.
    """
    from scipy.signal import resample_poly

    rate = 2 * sr if sr <= 24000 else sr
    synth, sfid = _synth(str(font), rate)
    family, vib_max, poly = _STYLE[info.name]
    lo, hi = info.pitch_range
    program = int(programs[int(rng.integers(len(programs)))])
    seconds = T / sr
    notes = _compose(info.name, lo, hi, rng, seconds)

    # reset and flush the persistent synthesiser
    synth.sounds_off()
    synth.generate_simple(rate // 10)
    synth.program_select(0, sfid, 0, program)
    synth.control_change(0, 121, 0)
    for cc, v in ((7, 100), (10, 64), (11, 127), (1, 0), (64, 0)):
        synth.control_change(0, cc, v)
    synth.pitchbend_range(0, 2.0)
    synth.pitchbend(0, 8192)

    n_blocks = int(np.ceil(T * rate / sr / _BLOCK))
    # events per block: (block, order, kind, note_index)
    events: dict[int, list[tuple[int, str, int]]] = {}
    for k, (on, dur, pitch, vel, shape) in enumerate(notes):
        b_on = int(on * rate / _BLOCK)
        b_off = max(b_on + 1, int((on + dur) * rate / _BLOCK))
        events.setdefault(b_off, []).append((0, "off", k))
        events.setdefault(b_on, []).append((1, "on", k))
    vib_rate = rng.uniform(4.8, 6.5)
    vib_depth = rng.uniform(0.4, 1.0) * vib_max
    vib_delay = rng.uniform(0.1, 0.3)
    sustained = family in ("bowed", "wind", "reed")
    buf = np.empty(n_blocks * _BLOCK * 2, dtype=np.float32)
    mv = memoryview(buf).cast("B")
    sounding: dict[int, int] = {}  # pitch -> note index (monophonic instruments keep at most one)
    current = -1
    bytes_per_block = _BLOCK * 2 * 4
    for b in range(n_blocks):
        for _, kind, k in sorted(events.get(b, ())):
            pitch = notes[k][2]
            if kind == "off":
                if sounding.get(pitch) == k:
                    synth.noteoff(0, pitch)
                    del sounding[pitch]
            else:
                if not poly:
                    for p in list(sounding):
                        synth.noteoff(0, p)
                        del sounding[p]
                elif pitch in sounding:
                    synth.noteoff(0, pitch)
                synth.noteon(0, pitch, notes[k][3])
                sounding[pitch] = k
                current = k
        tsec = b * _BLOCK / rate
        if current >= 0 and (vib_depth > 0 or sustained):
            on, dur, _, _, shape = notes[current]
            age = tsec - on
            if vib_depth > 0:
                ramp = np.clip((age - vib_delay) / 0.3, 0.0, 1.0)
                cents = vib_depth * ramp * np.sin(2 * np.pi * vib_rate * age)
                synth.pitchbend(0, int(np.clip(8192 + 8192 * cents / 200.0, 0, 16383)))
            if sustained:
                u = np.clip(age / max(dur, 1e-3), 0.0, 1.0)
                level = (1.0, 0.7 + 0.3 * u, 1.0 - 0.3 * u, 0.75 + 0.25 * np.sin(np.pi * u))[shape]
                synth.control_change(0, 11, int(127 * level))
        synth.generate_simple(_BLOCK, buffer=mv[b * bytes_per_block : (b + 1) * bytes_per_block])
    synth.sounds_off()
    mono = buf.reshape(-1, 2).mean(axis=1)
    if rate != sr:
        mono = resample_poly(mono.astype(np.float64), sr, rate).astype(np.float32)
    out = np.zeros(T, dtype=np.float32)
    out[: min(T, len(mono))] = mono[:T]
    return out
