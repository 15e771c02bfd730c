"""Training batches rendered at once: clips in memory, mixed and transformed for the whole batch.

The per-item path (:class:`avgn.data.datasets.OnTheFlyMixtureDataset` in a DataLoader) mixes, adds
noise and computes the spectrogram one item at a time in NumPy, and on two cores it fights the model
for the CPU. Here a batch of :class:`~avgn.data.datasets.MixtureRecipe` (the same draws, so the same
mixtures) is rendered in one pass:

* :class:`ClipBank` decodes every clip a training split can draw **once** into one float32 tensor
  ``[N, T]``;
* :func:`mix_batch` gathers ``[B, S, T]``, applies the gains, shapes the noise of the items that have
  some (one batched FFT, :func:`pink_from_white_batch`), scales it to its SNR, protects the peak —
  the rules of :func:`avgn.data.audio.mix`, vectorised (float64, like the NumPy path);
* one batched STFT (:func:`avgn.data.datasets.log_spectrogram`) gives ``spec`` ``[B, 1, F, T']``;
* cached backbone features (:class:`avgn.features.FeatureStore`) replace the frames.

:class:`MixtureBatcher` turns index batches of a :class:`torch.utils.data.ConcatDataset` of
``OnTheFlyMixtureDataset`` into model batches (keys ``spec``, ``labels``, ``classes``,
``n_sources``, ``visual_feats`` or ``image``, ``scene_ids``). ``tests/test_batching.py`` checks it
against the per-item path, item by item.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from avgn.data.audio import PEAK

__all__ = ["ClipBank", "pink_from_white_batch", "mix_batch", "MixtureBatcher"]


class ClipBank:
    """Every clip of some datasets' pools, decoded once: ``bank[paths] -> [len(paths), T]``.

    Args:
        datasets: :class:`~avgn.data.datasets.OnTheFlyMixtureDataset` instances of one build.
    """

    def __init__(self, datasets: Sequence[Any]):
        from avgn.data.datasets import read_clip

        if not datasets:
            raise ValueError("ClipBank needs at least one dataset")
        d = datasets[0].data
        paths: set[str] = set()
        for ds in datasets:
            if ds.data.root != d.root:
                raise ValueError(f"datasets of different builds: {ds.data.root} and {d.root}")
            if ds.resample_audio:
                paths.update(str(p) for pool in ds.clip_pools.values() for p in pool)
            paths.update(ds._solo_clip)
            paths.update(p for ps in ds._duet_clips for p in ps)
        self.paths = sorted(paths)
        self.index = {p: k for k, p in enumerate(self.paths)}
        self.n_samples = d.n_samples
        self.waves = torch.empty((len(self.paths) + 1, d.n_samples), dtype=torch.float32)
        for k, p in enumerate(self.paths):
            self.waves[k] = torch.from_numpy(read_clip(d.path(p), d.sample_rate, d.n_samples))
        self.waves[-1] = 0.0  # the padding clip (index -1)

    def __len__(self) -> int:
        return len(self.paths)

    def indices(self, paths: Iterable[str]) -> list[int]:
        try:
            return [self.index[p] for p in paths]
        except KeyError as exc:
            raise KeyError(f"clip {exc.args[0]} is not in the bank (built from other datasets?)") from None


def pink_from_white_batch(white: Tensor) -> Tensor:
    """:func:`avgn.data.build.pink_from_white` on ``[B, T]`` (float64 in, float64 out)."""
    n = white.shape[-1]
    spec = torch.fft.rfft(white, dim=-1)
    f = torch.arange(spec.shape[-1], dtype=torch.float64)
    f[0] = 1.0
    spec = spec / f.sqrt()
    spec[..., 0] = 0.0
    y = torch.fft.irfft(spec, n=n, dim=-1)
    rms = y.pow(2).mean(dim=-1, keepdim=True).sqrt()
    rms = torch.where(rms > 0, rms, torch.ones_like(rms))
    return (y / rms).float().double()  # float32 rounding, as the NumPy path returns float32


def mix_batch(
    waves: Tensor,
    gains_db: Tensor,
    white: Tensor | None = None,
    snr_db: Tensor | None = None,
    peak: float = PEAK,
) -> Tensor:
    """Mixtures ``[B, T]`` (float32) by the rules of :func:`avgn.data.audio.mix`.

    Args:
        waves: ``[B, S, T]`` sources (padding sources are zero).
        gains_db: ``[B, S]`` (padding gains are ignored: their sources are zero).
        white: ``[B, T]`` standard-normal draws of the noise (rows without noise are ignored).
        snr_db: ``[B]`` with NaN where an item has no noise.
    """
    y = (waves.double() * torch.pow(10.0, gains_db.double() / 20.0)[:, :, None]).sum(dim=1)
    if white is not None and snr_db is not None:
        has = ~torch.isnan(snr_db)
        if bool(has.any()):
            nz = pink_from_white_batch(white[has].double())
            ys = y[has]
            p_sig = ys.pow(2).mean(dim=-1, keepdim=True)
            p_noise = nz.pow(2).mean(dim=-1, keepdim=True)
            ok = (p_sig > 0) & (p_noise > 0)
            k = torch.sqrt(p_sig / (p_noise.clamp_min(1e-300) * torch.pow(10.0, snr_db[has].double() / 10.0)[:, None]))
            nz = torch.where(ok, nz * k, nz)
            y[has] = ys + nz
    pk = y.abs().amax(dim=-1, keepdim=True)
    y = torch.where(pk > peak, y * (peak / pk.clamp_min(1e-300)), y)
    return y.float()


class MixtureBatcher:
    """Model batches from index batches of a ``ConcatDataset`` of ``OnTheFlyMixtureDataset``.

    Args:
        dataset: the training ``ConcatDataset`` (its parts are ``OnTheFlyMixtureDataset``).
        store: a :class:`avgn.features.FeatureStore` (cached features) or None (frames are read).
        bank: a :class:`ClipBank` of those datasets (built if None).
        audio_only: render ``spec`` and the labels only (no frames, no features).
    """

    def __init__(self, dataset: Any, store: Any = None, bank: ClipBank | None = None, audio_only: bool = False):
        from avgn.data.datasets import OnTheFlyMixtureDataset

        parts = list(getattr(dataset, "datasets", [dataset]))
        for p in parts:
            if not isinstance(p, OnTheFlyMixtureDataset):
                raise TypeError(f"MixtureBatcher renders OnTheFlyMixtureDataset parts, got {type(p).__name__}")
            if p.return_sources or p.image_transform is not None:
                raise ValueError("MixtureBatcher does not support return_sources or image_transform")
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.store, self.audio_only = store, audio_only
        self.bank = bank or ClipBank(parts)
        first = parts[0]
        self.spec_cfg, self.n_classes, self.max_sources = first.spec, len(first.class_names), first.max_sources

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    def _locate(self, i: int) -> tuple[Any, int]:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        if not 0 <= k < len(self.parts):
            raise IndexError(i)
        return self.parts[k], int(i - self.offsets[k])

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Render the items ``indices`` (global indices of the ConcatDataset) as one batch."""
        from avgn.data.datasets import log_spectrogram, read_image

        recipes = []
        for i in indices:
            part, j = self._locate(int(i))
            recipes.append((part, part.recipe(j)))
        b, s_max, t = len(recipes), self.max_sources, self.bank.n_samples
        idx = torch.full((b, s_max), len(self.bank), dtype=torch.long)  # padding clip
        gains = torch.zeros((b, s_max), dtype=torch.float64)
        classes = torch.full((b, s_max), -1, dtype=torch.long)
        labels = torch.zeros((b, self.n_classes), dtype=torch.float32)
        snr = torch.full((b,), float("nan"), dtype=torch.float64)
        white = torch.zeros((b, t), dtype=torch.float64)
        for r, (_, rc) in enumerate(recipes):
            n = rc.n_sources
            if n > s_max:
                raise ValueError(f"an item has {n} sources but max_sources={s_max}")
            idx[r, :n] = torch.as_tensor(self.bank.indices(rc.clip_paths))
            gains[r, :n] = torch.from_numpy(np.asarray(rc.gains_db, dtype=np.float64))
            classes[r, :n] = torch.as_tensor(rc.class_ids)
            labels[r, list(rc.class_ids)] = 1.0
            if rc.white is not None:
                snr[r] = rc.snr_db
                white[r] = torch.from_numpy(rc.white)
        y = mix_batch(self.bank.waves[idx], gains, white, snr)
        out: dict[str, Any] = {
            "spec": log_spectrogram(y, self.spec_cfg).unsqueeze(1),
            "labels": labels,
            "classes": classes,
            "n_sources": (classes >= 0).sum(dim=1),
            "scene_ids": ["+".join(rc.scene_ids) for _, rc in recipes],
        }
        if self.audio_only:
            return out
        if self.store is not None:
            out["visual_feats"] = torch.stack([self.store.for_scenes(rc.scene_ids) for _, rc in recipes]).float()
        else:
            frames = []
            for part, rc in recipes:
                table = part.solo if rc.table == "solo" else part.duets
                frames.append(torch.cat([read_image(part.data.path(table.iloc[r].image_path)) for r in rc.rows], dim=-1))
            out["image"] = torch.stack(frames)
        return out

    def iterate(self, batch_sampler: Iterable[Sequence[int]]) -> Iterator[dict[str, Any]]:
        """Batches in the order of ``batch_sampler``."""
        for indices in batch_sampler:
            yield self.batch(indices)
