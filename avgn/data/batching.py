"""Training batches rendered at once: clips in memory, mixed and transformed for the whole batch.

The per-item path (:class:`avgn.data.datasets.OnTheFlyMixtureDataset` in a DataLoader) mixes, adds
noise and computes the spectrogram one item at a time in NumPy, and on two cores it fights the model
for the CPU. Here a batch of :class:`~avgn.data.datasets.MixtureRecipe` (the same draws, so the same
mixtures) is rendered in one pass:

* :class:`ClipBank` decodes every clip a training split can draw **once** into one float32 tensor
  ``[N, T]``;
* :func:`mix_batch` gathers ``[B, S, T]``, applies the gains, shapes the noise of the items that have
  some (one batched FFT, :func:`avgn.data.audio.pink_from_white`), scales it to its SNR, protects
  the peak —
  the rules of :func:`avgn.data.audio.mix`, vectorised (float64: the NumPy path bit for bit). The
  training default (``InputConfig.train_render='fast'``) mixes in float32 (:func:`mix_batch_fast`)
  and takes the noise from a :class:`NoiseBank` of pink noises (a clip and a circular shift per noisy
  item instead of a fresh normal draw and its FFT): the same scenes, clips, gains and SNRs, another
  realisation of the noise, about 4x cheaper (``tests/test_train.py`` checks both paths);
* one batched STFT (:func:`avgn.data.datasets.log_spectrogram`) gives ``spec`` ``[B, 1, F, T']``;
* cached backbone features (:class:`avgn.features.FeatureStore`) replace the frames; without them
  a :class:`FrameBank` decodes every training frame once (uint8) at the first batch that needs
  frames, instead of decoding each frame again at every draw;
* with ``device`` (e.g. ``cuda``) the clips, the noise bank and the frames are held on that device
  and the batch is mixed and transformed there: on a GPU machine the CPU then only draws the
  recipes (the ``gpu`` profile's training was input-bound: ``benchmarks/README.md``).

:class:`MixtureBatcher` turns index batches of a :class:`torch.utils.data.ConcatDataset` of
``OnTheFlyMixtureDataset`` into model batches (keys ``spec``, ``labels``, ``classes``,
``n_sources``, ``visual_feats`` or ``image``, ``scene_ids``). ``tests/test_batching.py`` checks it
against the per-item path, item by item.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from avgn.data.audio import PEAK, pink_from_white

__all__ = ["ClipBank", "FrameBank", "NoiseBank", "mix_batch", "mix_batch_fast", "MixtureBatcher"]


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


class FrameBank:
    """Every frame some datasets' tables can draw, decoded once: ``bank.take(paths) -> [n, 3, H, W]``
    float32 in ``[0, 1]``, equal to :func:`avgn.data.datasets.read_image` of each path.

    Frames are stored as uint8 (a quarter of float32: 150 KB per 224 x 224 frame). All frames must
    have one size (the benchmark's do); ``ValueError`` names the first that does not.

    Args:
        datasets: :class:`~avgn.data.datasets.OnTheFlyMixtureDataset` instances of one build.
        device: where the frames are held (and ``take`` returns them).
    """

    def __init__(self, datasets: Sequence[Any], device: str | torch.device = "cpu"):
        from avgn.data.datasets import read_image

        paths: set[str] = set()
        for ds in datasets:
            for table in (ds.solo, ds.duets):
                if table is not None and len(table):
                    paths.update(str(x) for x in table["image_path"])
        if not paths:
            raise ValueError("FrameBank: the datasets have no frames")
        d = datasets[0].data
        self.paths = sorted(paths)
        self.index = {q: k for k, q in enumerate(self.paths)}
        frames: Tensor | None = None
        # PNG decoding releases the GIL: a few threads; map() returns the frames in the order of the paths
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            for k, x in enumerate(pool.map(lambda q: read_image(d.path(q)), self.paths)):
                if frames is None:
                    frames = torch.empty((len(self.paths), *x.shape), dtype=torch.uint8)
                elif x.shape != frames.shape[1:]:
                    raise ValueError(f"FrameBank: {d.path(self.paths[k])} is {tuple(x.shape[1:])}, the bank's frames "
                                     f"{tuple(frames.shape[2:])}: frames of several sizes are read per batch (MixtureBatcher(frame_bank=False))")
                frames[k] = x.mul(255.0).round_().to(torch.uint8)  # read_image divided the decoded uint8 by 255: exact
        assert frames is not None
        self.frames = frames.to(device)

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, paths: Sequence[str]) -> Tensor:
        """``[len(paths), 3, H, W]`` float32 in ``[0, 1]`` on the bank's device."""
        try:
            rows = [self.index[str(q)] for q in paths]
        except KeyError as exc:
            raise KeyError(f"frame {exc.args[0]} is not in the bank (built from other datasets?)") from None
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.frames.device)
        return self.frames.index_select(0, idx).float().div_(255.0)


class NoiseBank:
    """``size`` pink noises ``[size, T]`` (float32, RMS 1: :func:`avgn.data.audio.pink_from_white`
    of seeded normal draws), each stored twice end to end so that a circular shift is a slice.

    The fast training path draws ``(k, shift)`` per noisy item
    (:meth:`~avgn.data.datasets.OnTheFlyMixtureDataset.recipe` with ``noise_bank=size``) instead of
    a fresh 48,000-sample normal draw and its FFT: 256 clips x 48,000 shifts of pink noise.
    """

    def __init__(self, size: int, n_samples: int, seed: int):
        if size < 1:
            raise ValueError(f"a noise bank needs at least one clip, got size={size}")
        rng = np.random.default_rng([int(seed), 0x6E6F697365])
        pink = pink_from_white(torch.from_numpy(rng.standard_normal((size, n_samples))))
        self.size, self.n_samples = size, n_samples
        self.doubled = torch.cat([pink, pink], dim=1)

    def clip(self, k: int) -> Tensor:
        """Clip ``k`` unshifted ``[T]``."""
        return self.doubled[k, : self.n_samples]

    def take(self, refs: Sequence[tuple[int, int]]) -> Tensor:
        """``[len(refs), T]``: clip ``k`` circularly shifted left by ``shift`` samples, per ``(k, shift)``."""
        t = self.n_samples
        return torch.stack([self.doubled[k, s : s + t] for k, s in refs]) if refs else self.doubled.new_empty((0, t))


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
            nz = pink_from_white(white[has].double()).double()
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


def mix_batch_fast(waves: Tensor, gains_db: Tensor, noise: Tensor | None = None, snr_db: Tensor | None = None,
                   peak: float = PEAK, noise_only: Tensor | None = None) -> Tensor:
    """:func:`mix_batch`'s rules in float32 on noise that is already shaped (a :class:`NoiseBank`'s):
    few passes over ``[B, T]``, in place where possible. Equal to :func:`avgn.data.audio.mix` of the
    same sources, gains and noise up to float32 rounding (``tests/test_train.py``).

    Args:
        waves: ``[B, S, T]`` sources (padding sources are zero).
        gains_db: ``[B, S]``.
        noise: ``[N, T]`` the noise of the items with some, in batch order (N = their number).
        snr_db: ``[B]`` with NaN where an item has no noise.
        noise_only: ``[B]`` bool: items that keep their noise (scaled to the SNR it has against their
            sources) and lose their sources — the noise of a scene with nothing sounding (negative
            training items, :class:`MixtureBatcher`'s ``negative_items``). Each needs an SNR.
    """
    g = torch.pow(10.0, gains_db.double() / 20.0).float()
    waves = waves.float()
    y = waves[:, 0] * g[:, 0, None]
    for s in range(1, waves.shape[1]):  # one fused multiply-add per source (an einsum is 4x slower on a CPU core)
        y.addcmul_(waves[:, s], g[:, s, None])
    if noise is not None and snr_db is not None and noise.shape[0]:
        rows = (~torch.isnan(snr_db)).nonzero().squeeze(1)
        if rows.numel() != noise.shape[0]:
            raise ValueError(f"{rows.numel()} items have an SNR but {noise.shape[0]} noise rows were given")
        nz = noise.float()
        ys = y.index_select(0, rows)
        p_sig = ys.square().mean(dim=-1, keepdim=True)
        p_noise = nz.square().mean(dim=-1, keepdim=True)
        ok = (p_sig > 0) & (p_noise > 0)
        snr = torch.pow(10.0, snr_db.index_select(0, rows).double() / 10.0).float()[:, None]
        k = torch.where(ok, torch.sqrt(p_sig / (p_noise.clamp_min(1e-30) * snr)), torch.ones_like(p_sig))
        mixed = ys.addcmul_(nz, k)
        if noise_only is not None:
            mixed = torch.where(noise_only.to(mixed.device).index_select(0, rows)[:, None], nz * k, mixed)
        y.index_copy_(0, rows, mixed)
    if noise_only is not None and bool(noise_only.any()):
        if snr_db is None or bool(torch.isnan(snr_db[noise_only.to(snr_db.device)]).any()):
            raise ValueError("every noise_only item needs an SNR (its noise level is set against its sources)")
    pk = y.abs().amax(dim=-1, keepdim=True)
    return y.mul_(torch.where(pk > peak, peak / pk.clamp_min(1e-30), torch.ones_like(pk)))


class MixtureBatcher:
    """Model batches from index batches of a ``ConcatDataset`` of ``OnTheFlyMixtureDataset``.

    Args:
        dataset: the training ``ConcatDataset`` (its parts are ``OnTheFlyMixtureDataset``).
        store: a :class:`avgn.features.FeatureStore` (cached features) or None (frames are read).
        bank: a :class:`ClipBank` of those datasets (built if None).
        audio_only: render ``spec`` and the labels only (no frames, no features).
        render: ``exact`` renders the per-item dataset's spectrograms bit for bit (float64,
            :func:`mix_batch`, a fresh white draw shaped into pink noise per noisy item); ``fast``
            (training) mixes in float32 (:func:`mix_batch_fast`) with the noise drawn from a
            :class:`NoiseBank` of ``noise_bank`` clips seeded by the first part's seed: the same
            scenes, clips, gains and SNRs, another realisation of the same pink noise, several
            times cheaper on a CPU core.
        device: where the batch is mixed and transformed (``spec`` and ``image`` are returned
            there; the labels stay on the CPU); the clips, the noise bank and the frame bank are
            moved there once. ``None``: the CPU.
        frame_bank: decode the frames once into a :class:`FrameBank` (at the first batch that needs
            frames) instead of reading each frame at every draw; the batches are the same.
        negative_items: the share of items whose audio is replaced by *negative audio* — half of them
            digital silence, half the item's pink noise alone (at the level it has in the mix; an
            item drawn without noise gets a noise draw and an SNR from the dataset's range) — with
            their sounding labels emptied (``labels`` zero, ``classes`` -1). Which items, and which
            kind, is drawn per item and epoch from the first part's seed, so a resumed run repeats
            it. With ``negative_items > 0`` the batch also carries ``visual_labels`` (what is visible
            and would sound: the item's own labels) and ``negative`` ``[B]`` (bool). ``fast`` render
            only.
    """

    def __init__(self, dataset: Any, store: Any = None, bank: ClipBank | None = None, audio_only: bool = False,
                 render: str = "exact", noise_bank: int = 256, device: str | torch.device | None = None,
                 frame_bank: bool = True, negative_items: float = 0.0):
        from avgn.data.datasets import OnTheFlyMixtureDataset

        parts = list(getattr(dataset, "datasets", [dataset]))
        for p in parts:
            if not isinstance(p, OnTheFlyMixtureDataset):
                raise TypeError(f"MixtureBatcher renders OnTheFlyMixtureDataset parts, got {type(p).__name__}")
            if p.return_sources or p.image_transform is not None:
                raise ValueError("MixtureBatcher does not support return_sources or image_transform")
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        if render not in ("exact", "fast"):
            raise ValueError(f"render must be 'exact' or 'fast', got {render!r}")
        self.store, self.audio_only = store, audio_only
        self.bank = bank or ClipBank(parts)
        first = parts[0]
        self.noise = NoiseBank(noise_bank, self.bank.n_samples, first.seed) if render == "fast" else None
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type != "cpu":
            self.bank.waves = self.bank.waves.to(self.device)
            if self.noise is not None:
                self.noise.doubled = self.noise.doubled.to(self.device)
        self.frame_bank = frame_bank
        self._frames: FrameBank | None = None
        self.spec_cfg, self.n_classes, self.max_sources = first.spec, len(first.class_names), first.max_sources
        if not 0.0 <= negative_items < 1.0:
            raise ValueError(f"negative_items is a share of the items in [0, 1), got {negative_items}")
        if negative_items > 0 and render != "fast":
            raise ValueError("negative_items needs render='fast' (the noise of a noise-only item comes from the noise bank)")
        self.negative_items = float(negative_items)
        self.seed, self.epoch = int(first.seed), 0

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for p in self.parts:
            p.set_epoch(epoch)

    def negative_kind(self, i: int) -> str | None:
        """``None`` (the item's own audio), ``'silence'`` or ``'noise'`` for global item ``i`` this epoch."""
        if self.negative_items <= 0:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, int(i), 0x6E6567])
        if rng.random() >= self.negative_items:
            return None
        return "silence" if rng.random() < 0.5 else "noise"

    def _locate(self, i: int) -> tuple[Any, int]:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        if not 0 <= k < len(self.parts):
            raise IndexError(i)
        return self.parts[k], int(i - self.offsets[k])

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Render the items ``indices`` (global indices of the ConcatDataset) as one batch."""
        from avgn.data.audio import log_spectrogram
        from avgn.data.datasets import read_image

        recipes = []
        k_noise = self.noise.size if self.noise is not None else None
        for i in indices:
            part, j = self._locate(int(i))
            recipes.append((part, part.recipe(j, noise_bank=k_noise)))
        b, s_max, t = len(recipes), self.max_sources, self.bank.n_samples
        idx = torch.full((b, s_max), len(self.bank), dtype=torch.long)  # padding clip
        gains = torch.zeros((b, s_max), dtype=torch.float64)
        classes = torch.full((b, s_max), -1, dtype=torch.long)
        labels = torch.zeros((b, self.n_classes), dtype=torch.float32)
        snr = torch.full((b,), float("nan"), dtype=torch.float64)
        white = torch.zeros((b, t), dtype=torch.float64) if self.noise is None else None
        refs: list[tuple[int, int]] = []
        kinds = [self.negative_kind(int(i)) for i in indices]
        negative = torch.tensor([k is not None for k in kinds])
        for r, (part, rc) in enumerate(recipes):
            if kinds[r] == "noise" and rc.snr_db is None:  # a noise-only item needs noise: draw it like the recipe would
                rng = np.random.default_rng([self.seed, self.epoch, int(indices[r]), 0x6E6F69])
                rc = replace(rc, snr_db=float(rng.uniform(*part.noise_snr_db)),
                             noise_ref=(int(rng.integers(self.noise.size)), int(rng.integers(self.bank.n_samples))))
                recipes[r] = (part, rc)
        for r, (_, rc) in enumerate(recipes):
            n = rc.n_sources
            if n > s_max:
                raise ValueError(f"an item has {n} sources but max_sources={s_max}")
            idx[r, :n] = torch.as_tensor(self.bank.indices(rc.clip_paths))
            gains[r, :n] = torch.from_numpy(np.asarray(rc.gains_db, dtype=np.float64))
            classes[r, :n] = torch.as_tensor(rc.class_ids)
            labels[r, list(rc.class_ids)] = 1.0
            if rc.snr_db is not None:
                snr[r] = rc.snr_db
                if white is not None:
                    white[r] = torch.from_numpy(rc.white)
                else:
                    refs.append(rc.noise_ref)
        if self.noise is not None:  # only as many source slots as the batch's largest mixture (padding clips are zeros)
            s_used = max(rc.n_sources for _, rc in recipes)
            idx, gains = idx[:, :s_used].contiguous(), gains[:, :s_used]
        dev = self.device
        waves = self.bank.waves.index_select(0, idx.flatten().to(dev)).view(b, idx.shape[1], t)
        gains, snr = gains.to(dev), snr.to(dev)
        if self.noise is None:
            y = mix_batch(waves, gains, None if white is None else white.to(dev), snr)
        else:
            y = mix_batch_fast(waves, gains, self.noise.take(refs), snr,
                               noise_only=torch.tensor([k == "noise" for k in kinds]) if any(kinds) else None)
            y[torch.tensor([k == "silence" for k in kinds], device=y.device)] = 0.0
        visual_labels = labels.clone()  # what the frame shows, before the negative items lose their labels
        labels[negative] = 0.0
        classes[negative] = -1
        out: dict[str, Any] = {
            "spec": log_spectrogram(y, self.spec_cfg).unsqueeze(1),
            "labels": labels,
            "classes": classes,
            "n_sources": (classes >= 0).sum(dim=1),
            "scene_ids": ["+".join(rc.scene_ids) for _, rc in recipes],
        }
        if self.negative_items > 0:
            out["visual_labels"] = visual_labels
            out["negative"] = negative
        if self.audio_only:
            return out
        if self.store is not None:
            out["visual_feats"] = torch.stack([self.store.for_scenes(rc.scene_ids) for _, rc in recipes]).float()
        else:
            if self.frame_bank and self._frames is None:
                self._frames = FrameBank(self.parts, self.device)
            frames = []
            for part, rc in recipes:
                table = part.solo if rc.table == "solo" else part.duets
                paths = [table.iloc[r].image_path for r in rc.rows]
                if self._frames is not None:  # one gather, frames side by side along the width
                    frames.append(torch.cat(list(self._frames.take(paths)), dim=-1))
                else:
                    frames.append(torch.cat([read_image(part.data.path(q)) for q in paths], dim=-1).to(self.device))
            out["image"] = torch.stack(frames)
        return out

    def iterate(self, batch_sampler: Iterable[Sequence[int]]) -> Iterator[dict[str, Any]]:
        """Batches in the order of ``batch_sampler``."""
        for indices in batch_sampler:
            yield self.batch(indices)
