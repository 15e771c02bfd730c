"""Cached backbone features of a frozen pretrained visual backbone.

With a frozen backbone (the ``smoke`` and ``cpu`` profiles: ImageNet EfficientNet-Lite0) the
visual trunk is the most expensive part of a forward pass and gives the same output for an image
every time, so its feature map is computed **once per image of the manifest** and stored:

* one file per image, ``<data_dir>/features/<key>/<image_path>.safetensors`` (tensor ``feats``,
  float16, ``[channels, h, w]``), where ``key`` names the backbone, its feature layer and the input
  resolution (:attr:`FeatureSpec.key`, e.g. ``efficientnet_lite0-head-224``); ``info.json`` in the
  same folder records the backbone, where its weights came from and the package versions;
* every write is atomic (temporary file + :func:`os.replace`), an interrupted run resumes where it
  stopped, and the cache is shared by all methods and seeds that use the same backbone.

``concat`` frames (two 224x224 frames side by side) are never run through the backbone as one
448-wide image: the features of the two frames are computed separately and concatenated along the
width (``[C, 7, 14]``). On-the-fly training duets, whose frames are solo scenes, use the solo
scenes' cached features the same way, so training and evaluation composites are encoded alike.

Frames are resized (bilinear, antialiased) to :attr:`FeatureSpec.image_size` first when it differs
from the build's frame size (a reduced-resolution profile).

:class:`FeatureStore` looks the features of a dataset sample up from its ``meta["scene_ids"]``;
:class:`CachedFeatureDataset` wraps any dataset of :mod:`avgn.data.datasets` to add
``visual_feats`` and drop what a model fed with cached features does not read.
Training batches read the store directly (:class:`avgn.data.batching.MixtureBatcher`).
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "FeatureSpec",
    "feature_dir",
    "feature_path",
    "prepare_frames",
    "compute_features",
    "FeatureStore",
    "CachedFeatureDataset",
    "collate_samples",
]

FEATURES_DIRNAME = "features"


@dataclass(frozen=True)
class FeatureSpec:
    """Which backbone features to cache.

    Attributes:
        backbone: ``efficientnet_lite0`` (ImageNet weights from the installed package) or
            ``resnet18`` (weights from ``pretrained_path``; random otherwise — pointless to cache).
        features: ``head`` (1280 channels for EfficientNet-Lite0) or ``blocks`` (320 channels).
        image_size: side of a frame fed to the backbone (224: 7x7 features).
        pretrained_path: a weights file instead of the packaged weights (its name and size enter the key).
    """

    backbone: str = "efficientnet_lite0"
    features: str = "head"
    image_size: int = 224
    pretrained_path: str | None = None

    @property
    def key(self) -> str:
        k = f"{self.backbone}-{self.features}-{self.image_size}"
        if self.pretrained_path:
            p = Path(self.pretrained_path)
            size = p.stat().st_size if p.is_file() else 0
            k += "-" + hashlib.sha1(f"{p.resolve()}:{size}".encode()).hexdigest()[:10]
        return k

    def encoder_config(self):
        """The frozen :class:`~avgn.models.config.EncoderConfig` that produces these features."""
        from avgn.models.config import EncoderConfig

        return EncoderConfig(
            visual_backbone=self.backbone,
            pretrained_path=self.pretrained_path,
            freeze_visual=True,
            efficientnet_features=self.features,
            normalize_input=True,
        )


def feature_dir(data_dir: str | Path, spec: FeatureSpec) -> Path:
    """``<data_dir>/features/<spec.key>``."""
    return Path(data_dir) / FEATURES_DIRNAME / spec.key


def feature_path(data_dir: str | Path, spec: FeatureSpec, image_path: str) -> Path:
    """The cache file of one manifest image (``image_path`` relative to the build folder)."""
    return feature_dir(data_dir, spec) / f"{image_path}.safetensors"


def _manifest_images(data_dir: Path, splits: Iterable[str] | None) -> list[tuple[str, str, int, int]]:
    """Unique ``(image_path, layout, height, width)`` of the manifest (optionally some splits)."""
    from avgn.data.manifest import load_manifest

    df = load_manifest(data_dir)
    if splits is not None:
        df = df[df["split"].isin(list(splits))]
    seen: dict[str, tuple[str, str, int, int]] = {}
    for r in df.itertuples(index=False):
        seen.setdefault(r.image_path, (r.image_path, r.layout, int(r.height), int(r.width)))
    return sorted(seen.values())


def prepare_frames(image: Tensor, layout: str, size: int) -> list[Tensor]:
    """Split a ``concat`` image ``[3, H, 2H]`` into its two frames; resize every frame to ``size`` x
    ``size`` if needed (bilinear, antialiased): what the backbone sees, cached or not."""
    h, w = image.shape[-2:]
    frames = [image[..., : w // 2], image[..., w // 2 :]] if layout == "concat" and w == 2 * h else [image]
    out = []
    for f in frames:
        if f.shape[-2:] != (size, size):
            f = torch.nn.functional.interpolate(f[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        out.append(f)
    return out


class _Encoder:
    """The frozen backbone of ``spec`` on ``device`` (channels-last: about 2x faster for EfficientNet's
    depthwise convolutions on CPU, same fp32 math), which writes ``info.json`` beside the cache."""

    def __init__(self, data_dir: Path, spec: FeatureSpec, device: str) -> None:
        from avgn.checkpoint import atomic_write_json
        from avgn.env import resolve_device
        from avgn.io import config_to_dict
        from avgn.models.encoders import VisualEncoder

        self.data_dir, self.spec, self.dev = data_dir, spec, resolve_device(device)
        self.enc = VisualEncoder(spec.encoder_config()).to(self.dev).eval().to(memory_format=torch.channels_last)
        info = {
            "spec": config_to_dict(spec),
            "key": spec.key,
            "weights_source": self.enc.weights_source,
            "channels": self.enc.backbone_channels,
            "dtype": "float16",
            "torch": torch.__version__,
        }
        atomic_write_json(feature_dir(data_dir, spec) / "info.json", info)

    def frames(self, image_path: str, layout: str) -> list[Tensor]:
        """The frames of one manifest image as the backbone sees them."""
        from avgn.data.datasets import read_image

        return prepare_frames(read_image(self.data_dir / image_path), layout, self.spec.image_size)

    def __call__(self, frames: Sequence[Tensor]) -> Tensor:
        """float32 ``[F, C, h, w]`` features of ``F`` frames ``[3, H, W]`` (one batch)."""
        batch = torch.stack(list(frames)).to(self.dev).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.enc.backbone_features(batch).float().contiguous().cpu()

    def save(self, image_path: str, frame_feats: Sequence[Tensor]) -> Tensor:
        """Write one image's cache file (its frames' features side by side, float16); returns it."""
        from avgn.checkpoint import atomic_save_safetensors

        full = torch.cat(list(frame_feats), dim=-1).to(torch.float16)
        atomic_save_safetensors(feature_path(self.data_dir, self.spec, image_path), {"feats": full})
        return full

    def save_all(self, images: Sequence[tuple[str, str, int, int]], batch_size: int, progress: bool) -> None:
        """Compute and write the cache files of ``images`` (:func:`_manifest_images` rows), frames
        batched across images; an image's file is written once all its frames are computed."""
        from tqdm.auto import tqdm

        queue: list[tuple[int, int, Tensor]] = []  # (image index, frame index, frame)
        pending: dict[int, list[Tensor | None]] = {}

        def flush() -> None:
            if not queue:
                return
            for (i, j, _), ft in zip(queue, self([f for _, _, f in queue])):
                pending[i][j] = ft
            queue.clear()
            for i in [i for i, fs in pending.items() if all(f is not None for f in fs)]:
                self.save(images[i][0], pending.pop(i))  # type: ignore[arg-type]

        for i, (path, layout, _, _) in enumerate(tqdm(images, desc=f"features {self.spec.key}", disable=not progress, leave=False)):
            frames = self.frames(path, layout)
            pending[i] = [None] * len(frames)
            queue.extend((i, j, f) for j, f in enumerate(frames))
            if len(queue) >= batch_size:
                flush()
        flush()


@contextmanager
def _cache_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``<cache>/.lock`` (an advisory ``flock``): two processes asked for one cache at once (two
    chapters executed side by side) compute it once — the second waits, then finds it cached."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "a+") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock (atomic writes still keep the cache sound)
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def compute_features(
    data_dir: str | Path,
    spec: FeatureSpec = FeatureSpec(),
    *,
    device: str = "auto",
    batch_size: int = 32,
    splits: Iterable[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Compute (or complete) the feature cache of every image in the manifest (or of ``splits``).

    Images whose cache file exists are skipped, so a rerun is cheap and an interrupted run resumes;
    concurrent callers on one cache take turns (:func:`_cache_lock`), so nothing is computed twice.

    Returns:
        ``{"key", "dir", "n_images", "n_computed", "n_cached", "seconds", "images_per_s"}``.
    """
    from safetensors.torch import save_file  # noqa: F401  (fail early if missing)

    data_dir = Path(data_dir)
    out_dir = feature_dir(data_dir, spec)
    images = _manifest_images(data_dir, splits)
    t0 = time.perf_counter()
    todo = [im for im in images if not feature_path(data_dir, spec, im[0]).is_file()]
    if todo:
        with _cache_lock(out_dir):
            todo = [im for im in todo if not feature_path(data_dir, spec, im[0]).is_file()]  # another process's work
            if todo:
                _Encoder(data_dir, spec, device).save_all(todo, batch_size, progress)
    dt = time.perf_counter() - t0
    result: dict[str, Any] = {"key": spec.key, "dir": str(out_dir), "n_images": len(images), "n_cached": len(images) - len(todo)}
    result.update(n_computed=len(todo), seconds=dt, images_per_s=len(todo) / dt if todo and dt > 0 else float("nan"))
    return result


class FeatureStore:
    """Read access to a feature cache, by image path or by a dataset sample's ``meta``.

    Args:
        data_dir: the build folder.
        spec: which cache.
        preload: read every file into memory now (one float16 tensor per image; a DataLoader's
            forked workers then share the pages). Otherwise files are read on demand.
        splits: with ``preload``, only the images of these splits.
        compute_missing: compute (and cache) an image's features the first time it is asked for
            instead of refusing it — for code that reads a few frames of a split (figures,
            diagnostics on some training batches); whole sets are faster with :func:`compute_features`
            first (batched). Not with ``preload``.
        device: where ``compute_missing`` runs the backbone.
    """

    def __init__(self, data_dir: str | Path, spec: FeatureSpec = FeatureSpec(), preload: bool = True, splits: Iterable[str] | None = None,
                 compute_missing: bool = False, device: str = "auto"):
        from avgn.data.manifest import load_manifest

        if compute_missing and preload:
            raise ValueError("FeatureStore: compute_missing reads on demand; pass preload=False with it")
        self.data_dir = Path(data_dir)
        self.spec = spec
        self.dir = feature_dir(self.data_dir, spec)
        self.compute_missing, self.device = bool(compute_missing), device
        self._encoder: _Encoder | None = None
        if not self.dir.is_dir() and not compute_missing:
            raise FileNotFoundError(
                f"no feature cache {self.dir}: compute it first (avgn.features.compute_features(data_dir, spec))"
            )
        df = load_manifest(self.data_dir)
        self.scene_image: dict[str, str] = dict(zip(df["scene_id"], df["image_path"]))
        self.image_layout: dict[str, str] = dict(zip(df["image_path"], df["layout"]))
        self._mem: dict[str, Tensor] = {}
        if preload:
            keep = df if splits is None else df[df["split"].isin(list(splits))]
            for p in sorted(set(keep["image_path"])):
                self._mem[p] = self._read(p)

    def _compute(self, image_path: str) -> Tensor:
        if self._encoder is None:
            self._encoder = _Encoder(self.data_dir, self.spec, self.device)
        frames = self._encoder.frames(image_path, self.image_layout[image_path])
        return self._encoder.save(image_path, list(self._encoder(frames)))

    def _read(self, image_path: str) -> Tensor:
        from safetensors.torch import load_file

        path = feature_path(self.data_dir, self.spec, image_path)
        if not path.is_file():
            if self.compute_missing and image_path in self.image_layout:
                return self._compute(image_path)
            raise FileNotFoundError(f"no cached features for {image_path} ({path}); rerun compute_features")
        return load_file(str(path))["feats"]

    def get(self, image_path: str) -> Tensor:
        """float16 ``[C, h, w]`` features of one manifest image."""
        t = self._mem.get(image_path)
        return t if t is not None else self._read(image_path)

    def for_scenes(self, scene_ids: Sequence[str]) -> Tensor:
        """Features of the frame made of ``scene_ids`` (two solo scenes side by side: concatenated)."""
        parts = [self.get(self.scene_image[s]) for s in scene_ids]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def for_meta(self, meta: dict[str, Any]) -> Tensor:
        return self.for_scenes(meta.get("scene_ids") or [meta["scene_id"]])

    @property
    def channels(self) -> int:
        if self.compute_missing and not (self.dir / "info.json").is_file() and self._encoder is None:
            self._encoder = _Encoder(self.data_dir, self.spec, self.device)  # writes info.json
        info = json.loads((self.dir / "info.json").read_text())
        return int(info["channels"])


class CachedFeatureDataset(Dataset):
    """Wrap a scene / mixture dataset: add ``visual_feats`` (float32) and drop unused keys.

    Args:
        base: a dataset of :mod:`avgn.data.datasets` (its samples carry ``meta["scene_ids"]``).
        store: the :class:`FeatureStore`.
        drop: sample keys to remove (default: ``image`` and ``audio``; training also drops
            ``masks``, which are large and unused by the losses).
    """

    def __init__(self, base: Dataset, store: FeatureStore, drop: Sequence[str] = ("image", "audio")):
        self.base = base
        self.store = store
        self.drop = tuple(drop)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.base[i]
        s["visual_feats"] = self.store.for_meta(s["meta"]).float()
        for k in self.drop:
            s.pop(k, None)
        return s


def collate_samples(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples with ``image`` and/or cached ``visual_feats`` (``meta`` becomes a list).

    Like :func:`avgn.data.datasets.collate_scenes` (which it calls when samples carry images), but
    also for samples whose image was replaced by cached features.
    """
    if not batch:
        raise ValueError("empty batch")
    if "image" in batch[0]:
        from avgn.data.datasets import collate_scenes

        return collate_scenes(batch)
    shapes = {tuple(b["visual_feats"].shape) for b in batch}
    if len(shapes) > 1:
        raise ValueError(f"samples with different feature shapes {sorted(shapes)} in one batch: keep 'concat' and 'scene' layouts apart")
    out: dict[str, Any] = {}
    for k in batch[0]:
        out[k] = [b[k] for b in batch] if k == "meta" else torch.stack([b[k] for b in batch])
    return out
