"""What the embedded benchmark is made of: hand-picked sounds and pictures per class, and their files.

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

The loaders live with their job: :mod:`avgn.data.pictures` (sprites and backgrounds) and
:func:`avgn.data.clips.render_clips` (audio clips; soundfont melodies in :mod:`avgn.data.synth`).

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

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from avgn.data import assets as A
from avgn.data.classes import CLASS_NAMES, CLASSES, class_info

__all__ = [
    "AudioSource",
    "VisualAsset",
    "audio_sources",
    "visual_assets",
    "asset_path",
    "check_assets",
    "require_asset",
    "read_asset_bytes",
    "coverage_table",
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


def require_asset(item: AudioSource | VisualAsset) -> Path:
    """:func:`asset_path` of ``item``, or :class:`avgn.data.assets.AssetMissingError` naming its package."""
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


def read_asset_bytes(source: str, key: str) -> list[tuple[str, bytes]]:
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
