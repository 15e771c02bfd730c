"""Negative audio: a split's built scene frames with their audio replaced by something that no
visible object makes (issue 30, item 3).

Every item of :class:`NegativeAudioDataset` is a built ``scene`` item of the split (its frame, the
visible sounding objects' masks, classes and labels, unchanged) with new audio, by ``condition``:

* ``silence`` -- digital silence: every sample is exactly 0 (not a low noise floor), so the
  spectrogram is ``log(eps)`` everywhere.
* ``noise`` -- the build's background noise alone: pink noise (:func:`avgn.data.audio.pink_from_white`)
  at the level the build gives it in a mixture, relative to *this frame's own audio*: its RMS is
  ``rms(own audio) / 10**(snr/20)`` with ``snr`` uniform in the build's ``noise_snr_db`` (10-30 dB),
  peak-protected like :func:`avgn.data.audio.mix`.
* ``offscreen`` -- the recorded clip of a class that is *not in the frame* (neither a sounding nor a
  distractor object), drawn uniformly among the classes of the split's solo scenes (the split's
  vocabulary) and then uniformly among that class's clips in the split's part of the clip pools,
  mixed like the build mixes a single source: gain 0 dB, and with probability ``noise_prob`` the
  build's pink noise at an SNR uniform in ``noise_snr_db``.

Item ``i`` draws from ``numpy.random.default_rng([seed, i])`` only (:meth:`NegativeAudioDataset.recipe`),
so a set is identical on every call and independent of loader workers; the evaluation seeds it
with the crc32 of the set's name (:func:`avgn.evaluate.negative_set`).

Samples have the keys of :class:`avgn.data.datasets.SceneDataset` (``labels``, ``classes`` and
``masks`` are the frame's visible sounding objects, none of which now sounds), plus ``offscreen``
(int64 ``[]``: the off-screen class, -1 for silence and noise), and ``meta`` gains ``condition``,
``offscreen_class`` (name or None), ``clip_path`` and ``snr_db`` (of the new audio).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from avgn.data.audio import SpecConfig, log_spectrogram
from avgn.data.datasets import SceneDataset, read_clip

__all__ = ["CONDITIONS", "NegativeRecipe", "NegativeAudioDataset"]

#: The negative-audio conditions (the ``layout`` field of a negative set's name, ``test/solo/noise``).
CONDITIONS: tuple[str, ...] = ("silence", "noise", "offscreen")


@dataclass(frozen=True)
class NegativeRecipe:
    """Every random draw of one negative item (:meth:`NegativeAudioDataset.recipe`).

    Attributes:
        condition: one of :data:`CONDITIONS`.
        row: the scene's row in the dataset (the frame).
        offscreen_class: the off-screen clip's class id (-1 for silence and noise).
        clip_path: the off-screen clip (relative to the build), else None.
        snr_db: ``noise``: the noise's level below the frame's own audio (dB); ``offscreen``: the SNR
            of the clip's background noise, None without noise; ``silence``: None.
        white: ``[T]`` float64 standard-normal draw shaped into the pink noise (None without noise).
    """

    condition: str
    row: int
    offscreen_class: int
    clip_path: str | None
    snr_db: float | None
    white: np.ndarray | None


class NegativeAudioDataset(Dataset):
    """The built ``scene`` items of ``split``/``task`` with negative audio (see the module docstring).

    Args:
        root: build folder.
        split, task: the frames (``task`` ``solo`` or ``duet``: the built ``scene`` layout).
        condition: ``silence``, ``noise`` or ``offscreen``.
        seed: item ``i`` draws from ``default_rng([seed, i])``.
        spec, max_sources: as in :class:`avgn.data.datasets.SceneDataset` (``max_sources`` defaults
            to the task's number of sources).
    """

    def __init__(self, root: str | Path, split: str, task: str, condition: str, seed: int, spec: SpecConfig = SpecConfig(),
                 max_sources: int | None = None):
        from avgn.data.config import TASK_SOURCES

        if condition not in CONDITIONS:
            raise ValueError(f"negative-audio condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")
        if task not in TASK_SOURCES:
            raise ValueError(f"unknown task {task!r} (tasks: {', '.join(TASK_SOURCES)})")
        self.frames = SceneDataset(root, split=split, tasks=[task], layouts=["scene"], spec=spec,
                                   max_sources=max_sources or TASK_SOURCES[task])
        self.split, self.task, self.condition, self.seed, self.spec = split, task, condition, int(seed), spec
        self.class_names = self.frames.class_names
        d = self.frames.data
        self.noise_prob = float(d.cfg["noise_prob"])
        self.noise_snr_db = tuple(float(x) for x in d.cfg["noise_snr_db"])
        rows = self.frames.rows
        self._in_frame = [frozenset(list(r.classes) + list(r.distractor_classes if r.distractor_classes is not None else []))
                          for r in rows.itertuples()]
        self._pools: dict[int, np.ndarray] = {}
        if condition == "offscreen":
            self._pools = self._clip_pools(d, split)

    def _clip_pools(self, d: Any, split: str) -> dict[int, np.ndarray]:
        """Class id -> sorted clip paths of the split's part of the pools, for the split's vocabulary."""
        df = d.df
        solo = df[(df["split"] == split) & (df["task"] == "solo")]
        vocab = sorted({int(c) for v in (solo if len(solo) else df[df["split"] == split])["class_ids"] for c in v})
        part = split if split in ("train", "val") else "test"
        clips = d.clips[d.clips["part"] == part]
        by_name = {name: np.asarray(sorted(g["path"].tolist())) for name, g in clips.groupby("class", sort=True)}
        pools = {c: by_name[self.class_names[c]] for c in vocab if len(by_name.get(self.class_names[c], ()))}
        if len(pools) < 2:
            raise ValueError(f"split {split!r} has clips of {len(pools)} class(es) of its vocabulary: an off-screen sound needs a class "
                             f"that is not in the frame; rebuild the data with more classes")
        return pools

    def __len__(self) -> int:
        return len(self.frames)

    def recipe(self, i: int) -> NegativeRecipe:
        """All random draws of item ``i``, from ``default_rng([seed, i])``. Draw order (part of the
        set's definition): ``noise``: the SNR, the white draw; ``offscreen``: the class, the clip,
        whether there is noise, its SNR and its white draw."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, int(i)])
        n = self.frames.data.n_samples
        if self.condition == "silence":
            return NegativeRecipe("silence", int(i), -1, None, None, None)
        if self.condition == "noise":
            snr = float(rng.uniform(*self.noise_snr_db))
            return NegativeRecipe("noise", int(i), -1, None, snr, rng.standard_normal(n))
        visible = self._in_frame[i]
        candidates = [c for c in self._pools if self.class_names[c] not in visible]
        if not candidates:
            raise ValueError(f"scene {self.frames.rows.iloc[i].scene_id} shows every class with clips in split {self.split!r}: "
                             f"no off-screen class to draw")
        c = int(candidates[int(rng.integers(len(candidates)))])
        pool = self._pools[c]
        path = str(pool[int(rng.integers(len(pool)))])
        snr, white = None, None
        if rng.random() < self.noise_prob:
            snr = float(rng.uniform(*self.noise_snr_db))
            white = rng.standard_normal(n)
        return NegativeRecipe("offscreen", int(i), c, path, snr, white)

    def audio(self, rc: NegativeRecipe, own: np.ndarray) -> np.ndarray:
        """The ``[T]`` float32 waveform of recipe ``rc`` (``own``: the frame's own audio, which sets the
        noise's level)."""
        from avgn.data.audio import PEAK, mix, pink_from_white

        d = self.frames.data
        if rc.condition == "silence":
            return np.zeros(d.n_samples, dtype=np.float32)
        if rc.condition == "noise":
            level = float(np.sqrt(np.mean(np.asarray(own, dtype=np.float64) ** 2))) / 10.0 ** (float(rc.snr_db) / 20.0)
            y = pink_from_white(rc.white).astype(np.float64) * level
            pk = float(np.max(np.abs(y)))
            return (y * (PEAK / pk) if pk > PEAK else y).astype(np.float32)
        clip = read_clip(d.path(rc.clip_path), d.sample_rate, d.n_samples)
        noise = None if rc.white is None else pink_from_white(rc.white)
        return mix(clip[None], np.zeros(1), noise=noise, snr_db=rc.snr_db)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.frames[i]
        rc = self.recipe(i)
        wav = torch.from_numpy(self.audio(rc, s["audio"].numpy()))
        s["audio"] = wav
        s["spec"] = log_spectrogram(wav, self.spec).unsqueeze(0)
        s["offscreen"] = torch.tensor(rc.offscreen_class, dtype=torch.int64)
        s["meta"] = dict(s["meta"], condition=rc.condition, clip_path=rc.clip_path, snr_db=rc.snr_db,
                         offscreen_class=self.class_names[rc.offscreen_class] if rc.offscreen_class >= 0 else None)
        return s
