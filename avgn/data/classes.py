"""The label set of the embedded benchmark: 10 MUSIC instruments + 13 animals, in a fixed order.

The order of :data:`CLASSES` defines the label indices used everywhere (datasets, models, metrics),
so it never changes; new classes may only be appended. A class is included only when the installed
packages give it at least one audio source and at least two visual styles (see
:func:`avgn.data.catalog.coverage_table`).

``gm_programs`` are 0-based General MIDI program numbers (used to render soundfont melodies);
``pitch_range`` is the inclusive MIDI-note range melodies are drawn from (a comfortable playing range
of the real instrument; sounding pitch).
Erhu (a MUSIC class) is left out: it has no General MIDI program, no recording and no picture in the
reachable packages.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClassInfo", "CLASSES", "CLASS_NAMES", "INSTRUMENTS", "ANIMALS", "class_index", "class_info"]


@dataclass(frozen=True)
class ClassInfo:
    """One sounding-object class."""

    name: str
    group: str  # "instrument" | "animal"
    gm_programs: tuple[int, ...] = ()
    pitch_range: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        """Human-readable name (``acoustic_guitar`` -> ``acoustic guitar``)."""
        return self.name.replace("_", " ")


CLASSES: tuple[ClassInfo, ...] = (
    # --- instruments (the ten MUSIC solo/duet classes; erhu left out) ---
    ClassInfo("accordion", "instrument", (21,), (53, 84)),
    ClassInfo("acoustic_guitar", "instrument", (24, 25), (40, 76)),
    ClassInfo("cello", "instrument", (42,), (36, 69)),
    ClassInfo("clarinet", "instrument", (71,), (50, 84)),
    ClassInfo("flute", "instrument", (73,), (60, 93)),
    ClassInfo("saxophone", "instrument", (64, 65, 66), (49, 78)),
    ClassInfo("trumpet", "instrument", (56,), (55, 80)),
    ClassInfo("tuba", "instrument", (58,), (29, 55)),
    ClassInfo("violin", "instrument", (40,), (55, 91)),
    ClassInfo("xylophone", "instrument", (13,), (65, 96)),
    # --- animals (real recordings + real photos / drawings / emoji) ---
    ClassInfo("dog", "animal"),
    ClassInfo("cat", "animal"),
    ClassInfo("cow", "animal"),
    ClassInfo("horse", "animal"),
    ClassInfo("pig", "animal"),
    ClassInfo("sheep", "animal"),
    ClassInfo("chicken", "animal"),
    ClassInfo("duck", "animal"),
    ClassInfo("owl", "animal"),
    ClassInfo("frog", "animal"),
    ClassInfo("lion", "animal"),
    ClassInfo("elephant", "animal"),
    ClassInfo("bee", "animal"),
)

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
INSTRUMENTS: tuple[str, ...] = tuple(c.name for c in CLASSES if c.group == "instrument")
ANIMALS: tuple[str, ...] = tuple(c.name for c in CLASSES if c.group == "animal")
_INDEX = {n: i for i, n in enumerate(CLASS_NAMES)}


def class_index(name: str) -> int:
    """Label index of a class name; :class:`KeyError` listing the valid names otherwise."""
    try:
        return _INDEX[name]
    except KeyError:
        raise KeyError(f"unknown class {name!r}; valid classes: {', '.join(CLASS_NAMES)}") from None


def class_info(name: str) -> ClassInfo:
    """The :class:`ClassInfo` of a class name."""
    return CLASSES[class_index(name)]
