"""Adapters for the real benchmarks (for users who have the videos): MUSIC, VGGSound-Instruments, VGG-SS.

They read the public metadata files of the AVGN / EZ-VSL releases and return the same sample
structure as :mod:`avgn.data.datasets` (``image``, ``audio``, ``spec``, ``labels``, ``classes``,
``n_sources``, ``masks``, ``boxes``, ``gains_db``, ``meta``), so every model and metric of the
library runs on them unchanged. Nothing is downloaded; you point the adapters at your own copy.

Folder layout (the one the public loaders expect; names configurable through ``layout=FileLayout(...)``)::

    root/frames/<file>.jpg        one extracted frame per sample
    root/audio/<file>.wav         its audio (MUSIC: one file per *video*, see below)

Metadata formats (``metadata/`` of the AVGN release):

* **MUSIC-Solo** -- ``music_solo.json``: ``[{"file": "<video>_<clip:03d>_<frame:05d>", "class": c,
  "bbox": [x, y, w, h]}, ...]``; lists ``music_solo_train.txt`` / ``music_solo_test.csv``:
  ``file,class`` rows.
* **MUSIC-Duet** -- ``music_duet.json``: ``[{"file", "class_src1", "bbox_src1", "class_src2",
  "bbox_src2"}, ...]``; ``music_duet_train.txt``: ``file,class1,class2``; ``music_duet_test.csv``:
  ``file`` rows. Both sources play in the same frame and the same recording.
* MUSIC boxes are **normalised ``[x, y, w, h]``** (top-left corner, width, height). The public AVGN
  loader rasterises them as corners ``[x1, y1, x2, y2]``: whenever ``w < x`` (or ``h < y``) the
  "box" has ``x2 < x1`` and its mask is empty -- about half of the MUSIC masks. Here they go through
  :func:`avgn.boxes.xywh_to_xyxy` first.
* A MUSIC frame ``<video>_<clip>_<frame>`` takes its audio from ``audio/<video>.wav`` (the public
  loader drops the last 10 characters of the frame name); by default the window is the middle
  ``seconds`` of that file, as in the public loader (``audio_offset`` picks another start).
* **VGGSound-Instruments** -- ``vgginstruments_train.txt`` / ``vgginstruments_test.csv``:
  ``file,class``; ground truth: one pixel mask per test file in an annotation folder
  (``<file>.pkl`` pickled arrays in the release -- read only with ``allow_pickle=True`` --, or
  ``.npy`` / ``.png``), resized with nearest neighbour.
* **Multi-source pairs** (VGGSound-Instruments multi, VGGSound-Duet) -- CSV rows
  ``file,class,partner,partner_class``: the two frames are concatenated side by side (224 x 448)
  and the two recordings summed (the VGGSound-Duet protocol).
* **VGG-SS** -- ``vggss.json``: ``[{"file", "class", "bbox": [[x1, y1, x2, y2], ...]}, ...]`` with
  **normalised corner** boxes (several boxes of one sounding source are united); test lists
  ``file`` or ``file,class`` rows.

A missing or corrupt file raises :class:`avgn.data.datasets.DataFileError` naming it.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from avgn.data.audio import SpecConfig
from avgn.data.datasets import DataFileError, _sample

__all__ = [
    "FileLayout",
    "RealItem",
    "RealDataset",
    "read_list",
    "music_video_id",
    "music_solo",
    "music_duet",
    "vgginstruments",
    "vgginstruments_multi",
    "vggss",
    "vggsound_duet",
]

_MUSIC_FRAME = re.compile(r"^(?P<video>.+)_(?P<clip>\d{3})_(?P<frame>\d{5})$")


def music_video_id(file: str) -> str:
    """The video id of a MUSIC frame name ``<video>_<clip:03d>_<frame:05d>`` (its audio file stem)."""
    m = _MUSIC_FRAME.match(file)
    if not m:
        raise ValueError(f"{file!r} is not a MUSIC frame name <video>_<clip:03d>_<frame:05d>")
    return m.group("video")


def read_list(path: str | Path) -> list[list[str]]:
    """Rows of a metadata list (``.txt`` or ``.csv``, comma-separated, no header); blank lines skipped."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            return [[c.strip() for c in row] for row in csv.reader(fh) if row and any(c.strip() for c in row)]
    except OSError as exc:
        raise DataFileError(path, "metadata list", exc) from exc


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFileError(path, "annotation file", exc) from exc


@dataclass
class RealItem:
    """One sample of a real dataset.

    ``frames``: one frame, or two (a concatenated pair); ``audios``: the recordings that are summed;
    per source: ``classes``, ``frame_of_source`` (which frame it is in), ``boxes`` (normalised
    corners ``[x1, y1, x2, y2]`` *within its frame*; several are united) and/or ``mask_files``.
    """

    key: str
    frames: list[Path]
    audios: list[Path]
    classes: list[str]
    frame_of_source: list[int]
    boxes: list[list[list[float]]] = field(default_factory=list)
    mask_files: list[Path | None] = field(default_factory=list)


def _load_mask_file(path: Path, allow_pickle: bool) -> np.ndarray:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in (".pkl", ".pickle"):
            if not allow_pickle:
                raise ValueError(
                    "pickled masks can run code when loaded; pass allow_pickle=True if you trust the file "
                    "(the public VGGSound-Instruments release ships its masks as pickles)"
                )
            import pickle

            with path.open("rb") as fh:
                arr = np.asarray(pickle.load(fh))
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im.convert("L"))
    except Exception as exc:
        raise DataFileError(path, "mask", exc) from exc
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise DataFileError(path, "mask", f"expected a 2-D mask, got shape {arr.shape}")
    return arr > 0


class RealDataset(Dataset):
    """Samples of a real dataset from :class:`RealItem` lists (use the constructors below).

    ``boxes`` holds, per source, the annotated box (the union of its boxes) in whole-image
    normalised corners, or for mask annotations the mask's tight extent; ``masks`` are the boxes
    rasterised at ``image_size`` (pixel centres inside the box, :func:`avgn.boxes.boxes_to_masks`).

    Args:
        items: the samples.
        class_names: label vocabulary (default: sorted classes of ``items``).
        image_size: every frame is resized to ``image_size`` x ``image_size`` (bicubic).
        spec: spectrogram settings (``spec.seconds`` of audio per sample).
        audio_offset: ``"center"`` (middle of the file, the public loaders' choice) or a start
            time in seconds; shorter recordings are tiled.
        max_sources, image_transform: as in :class:`avgn.data.datasets.SceneDataset`.
        allow_pickle: read ``.pkl`` masks (see :func:`vgginstruments`).
    """

    def __init__(
        self,
        items: Sequence[RealItem],
        class_names: Sequence[str] | None = None,
        image_size: int = 224,
        spec: SpecConfig = SpecConfig(),
        audio_offset: str | float = "center",
        max_sources: int = 4,
        image_transform: Callable[[Tensor], Tensor] | None = None,
        allow_pickle: bool = False,
    ):
        self.items = list(items)
        if class_names is None:
            class_names = sorted({c for it in self.items for c in it.classes})
        self.class_names = tuple(class_names)
        self._index = {c: i for i, c in enumerate(self.class_names)}
        unknown = sorted({c for it in self.items for c in it.classes} - set(self._index))
        if unknown:
            raise ValueError(f"classes {unknown} are not in class_names")
        self.image_size = int(image_size)
        self.spec = spec
        self.audio_offset = audio_offset
        self.max_sources = max_sources
        self.image_transform = image_transform
        self.allow_pickle = allow_pickle

    def __len__(self) -> int:
        return len(self.items)

    def _frame(self, path: Path) -> Tensor:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
                arr = np.asarray(im)
        except Exception as exc:
            raise DataFileError(path, "image", exc) from exc
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    def _audio(self, path: Path) -> np.ndarray:
        from avgn.data.audio import read_audio

        try:
            x = read_audio(path, self.spec.sample_rate)
        except Exception as exc:
            raise DataFileError(path, "audio", exc) from exc
        n = self.spec.n_samples
        if x.shape[0] < n:
            x = np.tile(x, int(np.ceil(n / x.shape[0])))
            return x[:n]
        if self.audio_offset == "center":
            start = (x.shape[0] - n) // 2
        else:
            start = min(max(0, int(round(float(self.audio_offset) * self.spec.sample_rate))), x.shape[0] - n)
        return x[start : start + n]

    def _source_mask(self, it: RealItem, k: int) -> Tensor:
        from avgn.boxes import boxes_to_masks

        S = self.image_size
        mf = it.mask_files[k] if k < len(it.mask_files) else None
        if mf is not None:
            from PIL import Image

            m = _load_mask_file(Path(mf), self.allow_pickle)
            m = np.asarray(Image.fromarray(m).resize((S, S), Image.Resampling.NEAREST))
            return torch.from_numpy(m.copy())
        bx = it.boxes[k] if k < len(it.boxes) else []
        if not bx:
            return torch.zeros((S, S), dtype=torch.bool)
        b = torch.as_tensor(np.asarray(bx, dtype=np.float64)).clamp(0.0, 1.0)
        return boxes_to_masks(b, (S, S)).any(dim=0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from avgn.boxes import mask_to_box
        from avgn.data.audio import mix

        if not 0 <= i < len(self):
            raise IndexError(i)
        it = self.items[i]
        frames = [self._frame(Path(p)) for p in it.frames]
        image = torch.cat(frames, dim=-1)
        if self.image_transform is not None:
            image = self.image_transform(image)
        S = self.image_size
        H, W = S, S * len(frames)
        masks, boxes = [], []
        for k in range(len(it.classes)):
            m = torch.zeros((H, W), dtype=torch.bool)
            f = it.frame_of_source[k]
            m[:, f * S : (f + 1) * S] = self._source_mask(it, k)
            masks.append(m)
            bx = it.boxes[k] if k < len(it.boxes) else []
            if bx:  # the annotated box (union of the source's boxes), in whole-image coordinates
                b = np.clip(np.asarray(bx, dtype=np.float64), 0.0, 1.0)
                n = len(frames)
                boxes.append([(b[:, 0].min() + f) / n, b[:, 1].min(), (b[:, 2].max() + f) / n, b[:, 3].max()])
            else:  # a mask annotation: its tight extent
                boxes.append(mask_to_box(m).tolist() if m.any() else [-1.0] * 4)
        waves = np.stack([self._audio(Path(p)) for p in it.audios])
        audio = mix(waves, np.zeros(len(waves)))
        meta = {
            "scene_id": it.key,
            "split": "real",
            "task": {1: "solo", 2: "duet"}.get(len(it.classes), f"{len(it.classes)}-source"),
            "layout": "concat" if len(frames) == 2 else "scene",
            "class_names": list(it.classes),
            "scene_ids": [it.key],
            "has_gt": [bool(m.any()) for m in masks],
        }
        class_ids = [self._index[c] for c in it.classes]
        return _sample(
            image, audio, class_ids, masks, boxes, [0.0] * len(class_ids), len(self.class_names),
            self.max_sources, self.spec, meta,
        )


# --------------------------------------------------------------------------------------------------
# constructors for the public formats
# --------------------------------------------------------------------------------------------------


def _xywh(box: Sequence[float], where: str) -> list[float]:
    from avgn.boxes import xywh_to_xyxy

    b = [float(v) for v in box]
    if len(b) != 4:
        raise ValueError(f"{where}: a box needs 4 numbers, got {box}")
    return xywh_to_xyxy(torch.tensor(b, dtype=torch.float64)).tolist()


def _xyxy(box: Sequence[float], where: str) -> list[float]:
    b = [float(v) for v in box]
    if len(b) != 4 or b[2] < b[0] or b[3] < b[1]:
        raise ValueError(f"{where}: expected corners [x1, y1, x2, y2] with x2 >= x1, y2 >= y1, got {box}")
    return b


@dataclass(frozen=True)
class FileLayout:
    """Where a release keeps its files below its root: ``root/frames_dir/<file><frame_ext>`` and
    ``root/audio_dir/<file><audio_ext>`` (every adapter's ``layout``); :meth:`item` makes the
    :class:`RealItem` of a sample."""

    frames_dir: str = "frames"
    audio_dir: str = "audio"
    frame_ext: str = ".jpg"
    audio_ext: str = ".wav"

    def item(self, root: str | Path, key: str, frames: Sequence[str], audios: Sequence[str], classes: list[str],
             frame_of_source: list[int], **truth: Any) -> RealItem:
        """The sample ``key`` from its frame and audio file stems (``truth``: ``boxes`` or ``mask_files``)."""
        root = Path(root)
        return RealItem(
            key=key,
            frames=[root / self.frames_dir / f"{f}{self.frame_ext}" for f in frames],
            audios=[root / self.audio_dir / f"{a}{self.audio_ext}" for a in audios],
            classes=classes,
            frame_of_source=frame_of_source,
            **truth,
        )


def music_solo(
    root: str | Path,
    annotations: str | Path | None = None,
    split_list: str | Path | None = None,
    layout: FileLayout = FileLayout(),
    **kwargs: Any,
) -> RealDataset:
    """MUSIC-Solo: ``annotations`` (``music_solo.json``, ``[x, y, w, h]`` boxes) and/or a
    ``file,class`` list (``music_solo_train.txt`` / ``music_solo_test.csv``). With both, the list
    selects the samples; training lists have no boxes (empty masks, ``meta["has_gt"]`` False)."""
    ann = {}
    if annotations is not None:
        for a in _read_json(annotations):
            ann[a["file"]] = a
    if split_list is not None:
        rows = [(r[0], r[1] if len(r) > 1 else None) for r in read_list(split_list)]
    else:
        rows = [(f, a["class"]) for f, a in ann.items()]
    items = []
    for f, c in rows:
        a = ann.get(f)
        cls = c or (a["class"] if a else None)
        if cls is None:
            raise ValueError(f"no class for MUSIC-Solo sample {f!r} (give annotations or a file,class list)")
        boxes = [[_xywh(a["bbox"], f"{annotations} [{f}]")]] if a else [[]]
        items.append(layout.item(root, f, [f], [music_video_id(f)], [cls], [0], boxes=boxes))
    return RealDataset(items, **kwargs)


def music_duet(
    root: str | Path,
    annotations: str | Path | None = None,
    split_list: str | Path | None = None,
    layout: FileLayout = FileLayout(),
    **kwargs: Any,
) -> RealDataset:
    """MUSIC-Duet: ``annotations`` (``music_duet.json``: ``class_src1/2``, ``bbox_src1/2`` in
    ``[x, y, w, h]``) and/or a list (``file,class1,class2`` for training, ``file`` for testing).
    Both sources share the frame and the recording (``audio/<video>.wav``)."""
    ann = {a["file"]: a for a in _read_json(annotations)} if annotations is not None else {}
    if split_list is not None:
        rows = read_list(split_list)
    else:
        rows = [[f] for f in ann]
    items = []
    for r in rows:
        f = r[0]
        a = ann.get(f)
        if a is not None:
            classes = [a["class_src1"], a["class_src2"]]
            where = f"{annotations} [{f}]"
            boxes = [[_xywh(a["bbox_src1"], where)], [_xywh(a["bbox_src2"], where)]]
        elif len(r) >= 3:
            classes, boxes = [r[1], r[2]], [[], []]
        else:
            raise ValueError(f"no classes for MUSIC-Duet sample {f!r} (give annotations or file,class1,class2 rows)")
        if classes[0] == classes[1]:  # a duet of one class: a single label, the union of the boxes
            classes, boxes = classes[:1], [boxes[0] + boxes[1]]
        items.append(layout.item(root, f, [f], [music_video_id(f)], classes, [0] * len(classes), boxes=boxes))
    return RealDataset(items, **kwargs)


def _mask_file(mask_dir: Path | None, f: str, exts: Sequence[str]) -> Path | None:
    if mask_dir is None:
        return None
    for e in exts:
        p = mask_dir / f"{f}{e}"
        if p.exists():
            return p
    raise DataFileError(mask_dir / f"{f}{exts[0]}", "mask", f"no mask file {f}{{{','.join(exts)}}} in {mask_dir}")


_MASK_EXTS = (".pkl", ".npy", ".png")


def vgginstruments(
    root: str | Path,
    split_list: str | Path,
    mask_dir: str | Path | None = None,
    layout: FileLayout = FileLayout(),
    **kwargs: Any,
) -> RealDataset:
    """VGGSound-Instruments (single source): a ``file,class`` list and, for testing, a folder of
    per-file masks (``<file>.pkl``/``.npy``/``.png``; pickles need ``allow_pickle=True``)."""
    md = Path(mask_dir) if mask_dir is not None else None
    items = [
        layout.item(root, r[0], [r[0]], [r[0]], [r[1]], [0], mask_files=[_mask_file(md, r[0], _MASK_EXTS)])
        for r in read_list(split_list)
    ]
    return RealDataset(items, **kwargs)


def _pairs(pairs_csv: str | Path) -> list[tuple[str, str, str, str]]:
    """The ``(file, class, partner, partner_class)`` rows of a pair list."""
    out = []
    for r in read_list(pairs_csv):
        if len(r) < 4:
            raise ValueError(f"{pairs_csv}: pair rows are file,class,partner,partner_class; got {r}")
        f, c, g, d = r[:4]
        out.append((f, c, g, d))
    return out


def vgginstruments_multi(
    root: str | Path,
    pairs_csv: str | Path,
    mask_dir: str | Path | None = None,
    layout: FileLayout = FileLayout(),
    **kwargs: Any,
) -> RealDataset:
    """VGGSound-Instruments multi-source test pairs (``file,class,partner,partner_class``): two
    frames side by side, the two recordings summed, each source's mask from ``mask_dir``."""
    md = Path(mask_dir) if mask_dir is not None else None
    items = [
        layout.item(root, f"{f}+{g}", [f, g], [f, g], [c, d], [0, 1],
                    mask_files=[_mask_file(md, f, _MASK_EXTS), _mask_file(md, g, _MASK_EXTS)])
        for f, c, g, d in _pairs(pairs_csv)
    ]
    return RealDataset(items, **kwargs)


#: What the VGG-SS adapters do with a malformed box (non-finite, outside the frame, or x2 < x1 / y2 < y1).
BAD_BOX_POLICIES = ("error", "drop")
#: How far outside ``[0, 1]`` a normalised coordinate may lie (rounding in the public files) before it is malformed.
BOX_TOLERANCE = 0.01


@dataclass(frozen=True)
class BoxReport:
    """What a box policy removed: ``boxes`` as ``(file, box index, box, reason)`` and ``samples``
    left without any box (dropped with them: nothing to score them against)."""

    annotations: str
    boxes: tuple[tuple[str, int, tuple[float, ...], str], ...] = ()
    samples: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.boxes:
            return f"{self.annotations}: no malformed box"
        listed = "; ".join(f"{f} box {i} {list(b)} ({why})" for f, i, b, why in self.boxes)
        lost = f"; {len(self.samples)} sample(s) left without a box dropped: {', '.join(self.samples)}" if self.samples else ""
        return f"{self.annotations}: dropped {len(self.boxes)} malformed box(es): {listed}{lost}"


def _box_problem(b: Sequence[float]) -> str | None:
    """Why a normalised corner box is malformed, or None."""
    if len(b) != 4:
        return f"{len(b)} numbers, not 4"
    if not all(math.isfinite(v) for v in b):
        return "non-finite coordinate"
    if min(b) < -BOX_TOLERANCE or max(b) > 1 + BOX_TOLERANCE:
        return "outside the frame"
    if b[2] < b[0] or b[3] < b[1]:
        return "x2 < x1 or y2 < y1 (corners [x1, y1, x2, y2] expected)"
    return None


def _vggss_boxes(annotations, on_bad_box: str = "drop") -> tuple[dict[str, list[list[float]]], dict[str, str], BoxReport]:
    """Boxes and classes of ``vggss.json``; malformed boxes raise (``on_bad_box="error"``) or are
    dropped and reported (``"drop"``: a warning naming every box, and the :class:`BoxReport`)."""
    if on_bad_box not in BAD_BOX_POLICIES:
        raise ValueError(f"on_bad_box must be one of {BAD_BOX_POLICIES}, got {on_bad_box!r}")
    boxes, classes, bad, empty = {}, {}, [], []
    for a in _read_json(annotations):
        f = a["file"]
        kept = []
        for i, raw in enumerate(a.get("bbox", [])):
            b = [float(v) for v in raw]
            why = _box_problem(b)
            if why is None:
                kept.append(b)
            elif on_bad_box == "error":
                raise ValueError(f"{annotations} [{f}] box {i} {raw} is malformed: {why}; pass on_bad_box='drop' to skip such "
                                 "boxes (they are reported), or fix the file")
            else:
                bad.append((f, i, tuple(b), why))
        if a.get("bbox") and not kept:
            empty.append(f)
            continue
        boxes[f] = kept
        if "class" in a:
            classes[f] = a["class"]
    report = BoxReport(str(annotations), tuple(bad), tuple(empty))
    if bad:
        warnings.warn(str(report), stacklevel=3)
    return boxes, classes, report


def vggss(
    root: str | Path,
    annotations: str | Path,
    split_list: str | Path | None = None,
    layout: FileLayout = FileLayout(),
    on_bad_box: str = "drop",
    **kwargs: Any,
) -> RealDataset:
    """VGG-SS: ``vggss.json`` (normalised corner boxes ``[x1, y1, x2, y2]``, several per sample are
    united into one source mask) and optionally a test list (``file`` or ``file,class`` rows).

    ``on_bad_box``: the official file holds a few corrupt boxes (e.g. ``Db6Hjt0x28k_000056``:
    ``[0.384375, 0.859375, 0.696875, -2.88e16]``); ``"drop"`` (default) skips them with a warning
    naming each one, and skips a listed sample left without any box (it cannot be scored), also
    named; ``"error"`` refuses the file. The dataset's ``box_report`` (:class:`BoxReport`) lists both."""
    boxes, classes, report = _vggss_boxes(annotations, on_bad_box)
    rows = read_list(split_list) if split_list is not None else [[f] for f in boxes]
    items = []
    for r in rows:
        f = r[0]
        if f in report.samples:
            continue
        cls = r[1] if len(r) > 1 else classes.get(f)
        if cls is None:
            raise ValueError(f"no class for VGG-SS sample {f!r}: the annotation has none and the list gives none")
        if f not in boxes:
            raise ValueError(f"VGG-SS sample {f!r} has no annotation in {annotations}")
        items.append(layout.item(root, f, [f], [f], [cls], [0], boxes=[boxes[f]]))
    ds = RealDataset(items, **kwargs)
    ds.box_report = report
    return ds


def vggsound_duet(
    root: str | Path,
    annotations: str | Path,
    pairs_csv: str | Path,
    layout: FileLayout = FileLayout(),
    on_bad_box: str = "drop",
    **kwargs: Any,
) -> RealDataset:
    """VGGSound-Duet test pairs (``file,class,partner,partner_class``) with VGG-SS corner boxes for
    both frames; the frames are concatenated and the recordings summed. ``on_bad_box`` as in
    :func:`vggss` (a pair with a frame left without any box is skipped and reported)."""
    boxes, _, report = _vggss_boxes(annotations, on_bad_box)
    items = []
    for f, c, g, d in _pairs(pairs_csv):
        if f in report.samples or g in report.samples:
            continue
        for x in (f, g):
            if x not in boxes:
                raise ValueError(f"VGGSound-Duet sample {x!r} has no annotation in {annotations}")
        items.append(layout.item(root, f"{f}+{g}", [f, g], [f, g], [c, d], [0, 1], boxes=[boxes[f], boxes[g]]))
    ds = RealDataset(items, **kwargs)
    ds.box_report = report
    return ds
