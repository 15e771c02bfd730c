"""PyTorch datasets over a built benchmark (:func:`avgn.data.build.build_dataset`).

Every dataset returns a dict (a *sample*); :func:`collate_scenes` batches them:

==============  =========================  ======================================================
key             shape / type               meaning
==============  =========================  ======================================================
``image``       float32 ``[3, H, W]``      RGB in ``[0, 1]`` (``W = 448`` for ``concat``, else 224);
                                           no normalisation (models normalise their own input)
``audio``       float32 ``[T]``            the mixture waveform (16 kHz, 3 s: ``T = 48000``)
``spec``        float32 ``[1, F, T']``     log-magnitude spectrogram of ``audio``
                                           (:class:`SpecConfig`; default ``[1, 401, 121]``)
``labels``      float32 ``[C]``            multi-hot over the build's classes (``C = 23``)
``classes``     int64 ``[S_max]``          class index of each source, padded with ``-1``
``n_sources``   int64 ``[]``               number of sounding sources
``masks``       bool ``[S_max, H, W]``     visible mask of each source, padded with all-False
``boxes``       float32 ``[S_max, 4]``     normalised ``[x1, y1, x2, y2]`` per source, padded ``-1``
``gains_db``    float32 ``[S_max]``        gain of each source in the mixture, padded 0
``sources``     float32 ``[S_max, T]``     (only with ``return_sources=True``) each source as it
                                           sits in the mixture (gain and peak protection applied)
``meta``        dict                       ``scene_id``, ``split``, ``task``, ``layout``,
                                           ``class_names``, ``scene_ids`` (the scenes used)
==============  =========================  ======================================================

* :class:`SceneDataset` -- the fixed scenes of a split (evaluation): the stored mixture for val /
  test scenes; a training scene is mixed from its clips with its stored gains.
* :class:`OnTheFlyMixtureDataset` -- training: every item draws a fresh mixture. ``concat``: a solo
  scene plus a partner solo scene of a *different* class (drawn in O(1) from per-class index
  pools), side by side; ``scene``: a pre-built duet scene. Gains (uniform in the build's
  ``gain_db_range``), background noise and, with ``resample_audio``, the clip of each source
  (another clip of the same class from the split's part of the pools) are redrawn for every item
  from ``(seed, epoch, index)``, so the data are reproducible and independent of the number of
  loader workers.

A file that is missing, corrupt or unreadable raises :class:`DataFileError` naming it. There is no
fallback to another sample (the public AVGN loader swaps in a random sample inside a bare
``try/except``, which hides broken data and biases evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from avgn.data.audio import SpecConfig, log_spectrogram  # the audio front end (importable from here too)

#: Number of sources -> task name.
TASK_NAMES = {1: "solo", 2: "duet", 3: "trio", 4: "quartet"}

__all__ = [
    "SpecConfig",
    "DataFileError",
    "log_spectrogram",
    "read_image",
    "read_mask",
    "read_clip",
    "SceneDataset",
    "OnTheFlyMixtureDataset",
    "MixtureRecipe",
    "collate_scenes",
]


@dataclass(frozen=True)
class MixtureRecipe:
    """Every random draw of one training mixture (:meth:`OnTheFlyMixtureDataset.recipe`).

    The single source of truth for *what* an item is: :meth:`OnTheFlyMixtureDataset.__getitem__`
    renders it with frames and masks, :class:`avgn.data.batching.MixtureBatcher` renders a batch of
    them at once (audio mixed and transformed in one pass, cached features instead of frames), so the
    two can never draw different mixtures.

    Attributes:
        table: ``solo`` (rows of the split's solo scenes, side by side when several) or ``duets``
            (one row of the pre-built duet scenes).
        rows: row indices into that table, in frame order (left to right).
        class_ids / clip_paths / scene_ids: per source, in frame order.
        gains_db: ``[S]`` float64 gains of the sources.
        snr_db: mixture-to-noise ratio, or None (no noise).
        white: ``[T]`` float64 standard-normal draw shaped into the pink noise (None without noise,
            or when the recipe was drawn for a noise bank).
        layout: ``scene`` or ``concat``.
        noise_ref: ``(k, shift)`` when drawn for a noise bank (:meth:`OnTheFlyMixtureDataset.recipe`
            with ``noise_bank=K``): the noise is the bank's pink clip ``k`` circularly shifted by
            ``shift`` samples (:class:`avgn.data.batching.NoiseBank`); None otherwise.
    """

    table: str
    rows: tuple[int, ...]
    class_ids: tuple[int, ...]
    clip_paths: tuple[str, ...]
    scene_ids: tuple[str, ...]
    gains_db: np.ndarray
    snr_db: float | None
    white: np.ndarray | None
    layout: str
    noise_ref: tuple[int, int] | None = None

    @property
    def n_sources(self) -> int:
        return len(self.class_ids)


class DataFileError(RuntimeError):
    """A data file is missing, corrupt or unreadable. ``path`` names it."""

    def __init__(self, path: str | Path, what: str, cause: BaseException | str):
        self.path = str(path)
        super().__init__(
            f"cannot read {what} {self.path}: {cause}. The benchmark files are damaged or incomplete; "
            f"rebuild them (delete the build folder and run `avgn data build` again)."
        )

    def __reduce__(self):  # picklable across DataLoader workers
        return (_rebuild_error, (self.args[0], self.path))


def _rebuild_error(msg: str, path: str) -> "DataFileError":
    e = DataFileError.__new__(DataFileError)
    RuntimeError.__init__(e, msg)
    e.path = path
    return e


def read_image(path: str | Path) -> Tensor:
    """An RGB image file as float32 ``[3, H, W]`` in ``[0, 1]``; :class:`DataFileError` if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise DataFileError(path, "image", exc) from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header (no pixel decoding); :class:`DataFileError` if
    unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as exc:
        raise DataFileError(path, "image", exc) from exc
    return h, w


def read_mask(path: str | Path, size: tuple[int, int] | None = None) -> Tensor:
    """A mask PNG as bool ``[H, W]`` (nonzero = object); :class:`DataFileError` if unreadable or,
    given ``size`` ``(H, W)`` (its frame's), of another size."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L")) > 0
    except Exception as exc:
        raise DataFileError(path, "mask", exc) from exc
    if size is not None and tuple(arr.shape) != tuple(size):
        raise DataFileError(path, "mask", f"it is {arr.shape[0]}x{arr.shape[1]} pixels, its frame {size[0]}x{size[1]}")
    return torch.from_numpy(arr.copy())


def read_clip(path: str | Path, sample_rate: int, n_samples: int | None = None) -> np.ndarray:
    """A mono clip (float32 ``[T]``); :class:`DataFileError` if missing, corrupt or of the wrong length."""
    import soundfile as sf

    from avgn.data.audio import read_audio

    try:
        rate = sf.info(str(path)).samplerate
        x = read_audio(path, sample_rate)
    except Exception as exc:
        raise DataFileError(path, "audio", exc) from exc
    if rate != sample_rate:  # the build writes every clip at its rate: another rate means another file
        raise DataFileError(path, "audio", f"its sample rate is {rate} Hz, the build's {sample_rate} Hz")
    if n_samples is not None and x.shape[0] != n_samples:
        raise DataFileError(path, "audio", f"{x.shape[0]} samples, expected {n_samples}")
    return x


def _pad_sources(n: int, s_max: int) -> None:
    if n > s_max:
        raise ValueError(f"a sample has {n} sources but max_sources={s_max}")


class _BuildData:
    """Shared state: the manifest, class vocabulary, clip table and build config of a build."""

    def __init__(self, root: str | Path):
        from avgn.data.manifest import load_build_info, load_clip_table, load_manifest

        self.root = Path(root)
        if self.root.name == "manifest.parquet":
            self.root = self.root.parent
        self.df = load_manifest(self.root)
        self.info = load_build_info(self.root)
        self.class_names: tuple[str, ...] = tuple(self.info["classes"])
        cfg = self.info["config"]
        self.sample_rate = int(cfg["sample_rate"])
        self.n_samples = int(round(cfg["clip_seconds"] * cfg["sample_rate"]))
        self.cfg = cfg
        self._clips = None
        self._load_clip_table = lambda: load_clip_table(self.root)

    @property
    def clips(self):
        if self._clips is None:
            self._clips = self._load_clip_table()
        return self._clips

    def path(self, rel: str) -> Path:
        return self.root / rel


def _sample(
    image: Tensor | tuple[int, int],
    audio: np.ndarray,
    class_ids: Sequence[int],
    masks: Sequence[Tensor],
    boxes: Sequence[Sequence[float]],
    gains: Sequence[float],
    n_classes: int,
    s_max: int,
    spec_cfg: SpecConfig,
    meta: dict[str, Any],
    sources: np.ndarray | None = None,
) -> dict[str, Any]:
    S = len(class_ids)
    _pad_sources(S, s_max)
    H, W = image.shape[-2:] if isinstance(image, Tensor) else image  # an image, or only its size (no "image" key)
    labels = torch.zeros(n_classes, dtype=torch.float32)
    labels[list(class_ids)] = 1.0
    cls = torch.full((s_max,), -1, dtype=torch.int64)
    cls[:S] = torch.as_tensor(list(class_ids), dtype=torch.int64)
    m = torch.zeros((s_max, H, W), dtype=torch.bool)
    for k, mk in enumerate(masks):
        m[k] = mk
    b = torch.full((s_max, 4), -1.0, dtype=torch.float32)
    if S:
        b[:S] = torch.as_tensor(np.asarray(boxes, dtype=np.float32))
    g = torch.zeros(s_max, dtype=torch.float32)
    g[:S] = torch.as_tensor(np.asarray(gains, dtype=np.float32))
    wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    out = {
        **({"image": image} if isinstance(image, Tensor) else {}),
        "audio": wav,
        "spec": log_spectrogram(wav, spec_cfg).unsqueeze(0),
        "labels": labels,
        "classes": cls,
        "n_sources": torch.tensor(S, dtype=torch.int64),
        "masks": m,
        "boxes": b,
        "gains_db": g,
        "meta": meta,
    }
    if sources is not None:
        src = torch.zeros((s_max, wav.shape[0]), dtype=torch.float32)
        src[:S] = torch.from_numpy(np.asarray(sources, dtype=np.float32))
        out["sources"] = src
    return out


class SceneDataset(Dataset):
    """The fixed scenes of one split (evaluation and inspection).

    Args:
        root: build folder (or its ``manifest.parquet``).
        split: ``train``, ``val``, ``test``, ``test_style``, ``test_audio``, ``test_zeroshot`` or
            ``test_real``.
        tasks: keep only these tasks (``solo``, ``duet``, ``trio``, ``quartet``); default all.
        layouts: keep only these layouts (``scene``, ``concat``); default all.
        spec: spectrogram settings.
        max_sources: ``S_max``, the padded source dimension.
        return_sources: also return each source's waveform as mixed (``sources``).
        image_transform: applied to the ``[3, H, W]`` image tensor (e.g. normalisation; geometric
            transforms would break the masks).

    Batches of one split may mix image widths (``concat`` scenes are 448 wide): filter by
    ``layouts`` to get stackable batches.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        tasks: Sequence[str] | None = None,
        layouts: Sequence[str] | None = None,
        spec: SpecConfig = SpecConfig(),
        max_sources: int = 4,
        return_sources: bool = False,
        image_transform: Callable[[Tensor], Tensor] | None = None,
    ):
        self.data = _BuildData(root)
        df = self.data.df
        keep = df["split"] == split
        if tasks is not None:
            keep &= df["task"].isin(list(tasks))
        if layouts is not None:
            keep &= df["layout"].isin(list(layouts))
        self.rows = df[keep].reset_index(drop=True)
        if len(self.rows) == 0:
            have = sorted(set(zip(df["split"], df["task"], df["layout"])))
            raise ValueError(f"no scenes for split={split!r}, tasks={tasks}, layouts={layouts}; the build has {have}")
        self.split = split
        self.spec = spec
        self.max_sources = max_sources
        self.return_sources = return_sources
        self.image_transform = image_transform
        self.class_names = self.data.class_names

    def __len__(self) -> int:
        return len(self.rows)

    def _audio(self, r) -> tuple[np.ndarray, np.ndarray | None]:
        from avgn.data.audio import mix
        from avgn.data.audio import pink_noise

        d = self.data
        need_components = self.return_sources or r.mixture_path is None
        if not need_components:
            return read_clip(d.path(r.mixture_path), d.sample_rate, d.n_samples), None
        clips = np.stack([read_clip(d.path(p), d.sample_rate, d.n_samples) for p in r.clip_paths])
        noise = None
        snr = None if (r.snr_db is None or np.isnan(r.snr_db)) else float(r.snr_db)
        if snr is not None:
            noise = pink_noise(d.n_samples, np.random.default_rng([int(r.seed), 2]))
        y, comps, _ = mix(clips, np.asarray(r.gains_db), noise=noise, snr_db=snr, return_components=True)
        if r.mixture_path is not None:  # the stored (16-bit) mixture is the reference audio
            y = read_clip(d.path(r.mixture_path), d.sample_rate, d.n_samples)
        return y, comps

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        r = self.rows.iloc[i]
        d = self.data
        image = read_image(d.path(r.image_path))
        hw = tuple(image.shape[-2:])
        if self.image_transform is not None:
            image = self.image_transform(image)
        masks = [read_mask(d.path(p), hw) for p in r.mask_paths]
        audio, comps = self._audio(r)
        meta = {
            "scene_id": r.scene_id,
            "split": r.split,
            "task": r.task,
            "layout": r.layout,
            "class_names": list(r.classes),
            "scene_ids": [r.scene_id],
        }
        return _sample(
            image, audio, list(r.class_ids), masks, r.boxes, r.gains_db, len(self.class_names),
            self.max_sources, self.spec, meta, comps if self.return_sources else None,
        )


class OnTheFlyMixtureDataset(Dataset):
    """Training mixtures drawn afresh for every item (see the module docstring).

    Args:
        root: build folder.
        split: the split whose scenes and clip-pool part are used (``train``; ``val`` for checks).
        layout: ``concat`` (``n_sources`` solo scenes of different classes side by side,
            224 x 224·n) or ``scene`` (a pre-built duet scene, 224 x 224, with new gains and clips).
        n_sources: 1 (the solo scenes alone, ``concat`` ignored), 2 (mixtures), or 3 / 4 (``concat``
            only: the composed trio / quartet test sets of chapter 5; the draw for 2 is unchanged).
        seed: base seed; item ``i`` of epoch ``e`` draws from ``default_rng([seed, e, i])``.
        resample_audio: draw each source's clip from its class's clip pool (else the scene's clip).
        gain_db_range, noise_prob, noise_snr_db: default to the build's settings.
        length: items per epoch (default: one per anchor scene).
        spec, max_sources, return_sources, image_transform: as in :class:`SceneDataset`.
        images: decode the frames into ``image``; ``False`` reads only their sizes (for the masks) and
            the samples have no ``image`` (for cached visual features, :class:`avgn.features.CachedFeatureDataset`).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        layout: str = "concat",
        n_sources: int = 2,
        seed: int = 0,
        resample_audio: bool = True,
        gain_db_range: tuple[float, float] | None = None,
        noise_prob: float | None = None,
        noise_snr_db: tuple[float, float] | None = None,
        length: int | None = None,
        spec: SpecConfig = SpecConfig(),
        max_sources: int = 4,
        return_sources: bool = False,
        image_transform: Callable[[Tensor], Tensor] | None = None,
        images: bool = True,
    ):
        if layout not in ("concat", "scene"):
            raise ValueError(f"layout must be 'concat' or 'scene', got {layout!r}")
        if n_sources not in (1, 2, 3, 4):
            raise ValueError(f"n_sources must be 1, 2, 3 or 4, got {n_sources}")
        if n_sources > 2 and layout != "concat":
            raise ValueError(f"{n_sources} sources need layout 'concat' (pre-built scenes hold duets), got {layout!r}")
        self.data = d = _BuildData(root)
        df = d.df
        self.split, self.layout, self.n_sources = split, layout, n_sources
        self.seed, self.epoch = int(seed), 0
        self.resample_audio = resample_audio
        cfg = d.cfg
        self.gain_db_range = tuple(gain_db_range if gain_db_range is not None else cfg["gain_db_range"])
        self.noise_prob = float(noise_prob if noise_prob is not None else cfg["noise_prob"])
        self.noise_snr_db = tuple(noise_snr_db if noise_snr_db is not None else cfg["noise_snr_db"])
        self.spec, self.max_sources = spec, max_sources
        self.return_sources, self.image_transform = return_sources, image_transform
        self.images = bool(images)
        if image_transform is not None and not self.images:
            raise ValueError("image_transform needs images=True")
        self.class_names = d.class_names

        in_split = df["split"] == split
        self.solo = df[in_split & (df["task"] == "solo")].reset_index(drop=True)
        self.duets = df[in_split & (df["task"] == "duet") & (df["layout"] == "scene")].reset_index(drop=True)
        # per-class index pools: class id -> solo row indices (O(1) partner draws)
        solo_cls = np.array([v[0] for v in self.solo["class_ids"]], dtype=np.int64)
        self.pool_classes = np.unique(solo_cls)
        self.pools = {int(c): np.flatnonzero(solo_cls == c) for c in self.pool_classes}
        self._solo_cls = solo_cls
        # plain per-row lists: recipe() runs once per training item, pandas row access would dominate
        self._solo_name = [v[0] for v in self.solo["classes"]]
        self._solo_clip = [v[0] for v in self.solo["clip_paths"]]
        self._solo_scene = list(self.solo["scene_id"])
        self._duet_cls = [tuple(int(c) for c in v) for v in self.duets["class_ids"]]
        self._duet_names = [tuple(v) for v in self.duets["classes"]]
        self._duet_clips = [tuple(v) for v in self.duets["clip_paths"]]
        self._duet_scene = list(self.duets["scene_id"])
        if n_sources >= 2 and layout == "concat" and len(self.pool_classes) < n_sources:
            raise ValueError(f"split {split!r} has solo scenes of {len(self.pool_classes)} class(es); need >= {n_sources}")
        if n_sources == 2 and layout == "scene" and len(self.duets) == 0:
            raise ValueError(f"split {split!r} has no pre-built duet scenes")
        if n_sources == 1 or layout == "concat":
            self.anchors = len(self.solo)
        else:
            self.anchors = len(self.duets)
        if self.anchors == 0:
            raise ValueError(f"split {split!r} has no {'solo' if layout == 'concat' else 'duet'} scenes")
        self.length = int(length) if length is not None else self.anchors
        # clip pools of the split, per class (for resample_audio)
        part = split if split in ("train", "val") else "test"
        clips = d.clips
        clips = clips[clips["part"] == part]
        self.clip_pools = {
            c: np.asarray(sorted(g["path"].tolist())) for c, g in clips.groupby("class", sort=True)
        }

    def set_epoch(self, epoch: int) -> None:
        """Draw other mixtures in another epoch (call before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def partner_class(self, rng: np.random.Generator, cls: int) -> int:
        """A class different from ``cls`` among the split's solo classes, uniformly, in O(1)."""
        pos = int(np.searchsorted(self.pool_classes, cls))
        j = int(rng.integers(len(self.pool_classes) - 1))
        if j >= pos:
            j += 1
        return int(self.pool_classes[j])

    def _clip_path(self, rng: np.random.Generator, class_name: str, own: str) -> str:
        if self.resample_audio:
            pool = self.clip_pools.get(class_name)
            if pool is not None and len(pool):
                return str(pool[int(rng.integers(len(pool)))])
        return own

    def recipe(self, i: int, noise_bank: int | None = None) -> MixtureRecipe:
        """All random draws of item ``i`` of the current epoch, from ``default_rng([seed, epoch, i])``.

        Draw order (part of the data's definition, do not reorder): partner scene(s) and frame
        order, one clip per source, the gains, whether there is noise, its SNR and its white draw.
        With ``noise_bank=K`` the last draw is instead a clip of a bank of ``K`` pink noises and a
        circular shift (``noise_ref``; every earlier draw is the same): the training batches' fast
        path, which skips a 48,000-sample normal draw and a pink-noise FFT per item.
        """
        if not 0 <= i < len(self):
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        if self.n_sources == 1 or self.layout == "concat":
            a = int(i % self.anchors)
            rows = [a]
            if self.n_sources == 2:
                pool = self.pools[self.partner_class(rng, int(self._solo_cls[a]))]
                rows.append(int(pool[int(rng.integers(len(pool)))]))
                if rng.random() < 0.5:
                    rows.reverse()
            elif self.n_sources > 2:  # distinct partner classes, then a random frame order
                others = self.pool_classes[self.pool_classes != int(self._solo_cls[a])]
                for pc in rng.choice(others, size=self.n_sources - 1, replace=False):
                    pool = self.pools[int(pc)]
                    rows.append(int(pool[int(rng.integers(len(pool)))]))
                rows = [rows[j] for j in rng.permutation(len(rows))]
            class_ids = tuple(int(self._solo_cls[r]) for r in rows)
            paths = tuple(self._clip_path(rng, self._solo_name[r], self._solo_clip[r]) for r in rows)
            scene_ids = tuple(self._solo_scene[r] for r in rows)
            table, layout = "solo", "concat" if len(rows) >= 2 else "scene"
        else:
            r = int(i % self.anchors)
            rows = [r]
            class_ids = self._duet_cls[r]
            paths = tuple(self._clip_path(rng, name, own) for name, own in zip(self._duet_names[r], self._duet_clips[r]))
            scene_ids = (self._duet_scene[r],)
            table, layout = "duets", "scene"
        n = len(class_ids)
        gains = rng.uniform(*self.gain_db_range, size=n) if n > 1 else np.zeros(1)
        snr, white, ref = None, None, None
        if rng.random() < self.noise_prob:
            snr = float(rng.uniform(*self.noise_snr_db))
            if noise_bank:
                ref = (int(rng.integers(noise_bank)), int(rng.integers(self.data.n_samples)))
            else:
                white = rng.standard_normal(self.data.n_samples)
        return MixtureRecipe(table, tuple(rows), tuple(class_ids), paths, scene_ids, gains, snr, white, layout, ref)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from avgn.data.audio import mix
        from avgn.data.audio import pink_from_white

        rc = self.recipe(i)
        d = self.data
        if rc.table == "solo":
            rows = [self.solo.iloc[r] for r in rc.rows]
            if self.images:
                frames = [read_image(d.path(r.image_path)) for r in rows]
                sizes = [tuple(f.shape[-2:]) for f in frames]
            else:
                sizes = [image_size(d.path(r.image_path)) for r in rows]
            H, W = sizes[0][0], sum(w for _, w in sizes)
            image: Tensor | tuple[int, int] = torch.cat(frames, dim=-1) if self.images else (H, W)
            masks, boxes = [], []
            for k, r in enumerate(rows):
                m = torch.zeros((H, W), dtype=torch.bool)
                w = sizes[k][1]
                m[:, k * w : (k + 1) * w] = read_mask(d.path(r.mask_paths[0]), sizes[k])
                masks.append(m)
                x1, y1, x2, y2 = r.boxes[0]
                boxes.append([(x1 * w + k * w) / W, y1, (x2 * w + k * w) / W, y2])
        else:
            r = self.duets.iloc[rc.rows[0]]
            image = read_image(d.path(r.image_path)) if self.images else image_size(d.path(r.image_path))
            hw = tuple(image.shape[-2:]) if isinstance(image, Tensor) else image
            masks = [read_mask(d.path(p), hw) for p in r.mask_paths]
            boxes = list(r.boxes)
        if self.image_transform is not None:
            image = self.image_transform(image)
        waves = np.stack([read_clip(d.path(p), d.sample_rate, d.n_samples) for p in rc.clip_paths])
        noise = None if rc.white is None else pink_from_white(rc.white)
        y, comps, _ = mix(waves, rc.gains_db, noise=noise, snr_db=rc.snr_db, return_components=True)
        meta = {
            "scene_id": "+".join(rc.scene_ids),
            "split": self.split,
            "task": TASK_NAMES[rc.n_sources],
            "layout": rc.layout,
            "class_names": [self.class_names[c] for c in rc.class_ids],
            "scene_ids": list(rc.scene_ids),
            "clip_paths": list(rc.clip_paths),
            "snr_db": rc.snr_db,
        }
        return _sample(
            image, y, list(rc.class_ids), masks, boxes, rc.gains_db, len(self.class_names), self.max_sources,
            self.spec, meta, comps if self.return_sources else None,
        )


def collate_scenes(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch (``meta`` becomes a list of dicts).

    All samples must share the image size and ``S_max``: a ``concat`` (224 x 448) and a ``scene``
    (224 x 224) sample cannot share a batch.
    """
    if not batch:
        raise ValueError("empty batch")
    shapes = {tuple(b["image"].shape) for b in batch}
    if len(shapes) > 1:
        raise ValueError(
            f"samples of different image sizes {sorted(shapes)} in one batch: keep 'concat' and 'scene' "
            f"layouts in separate datasets / loaders"
        )
    smax = {b["classes"].shape[0] for b in batch}
    if len(smax) > 1:
        raise ValueError(f"samples padded to different max_sources {sorted(smax)}")
    out: dict[str, Any] = {}
    for k in batch[0]:
        if k == "meta":
            out[k] = [b["meta"] for b in batch]
        else:
            out[k] = torch.stack([b[k] for b in batch])
    return out
