"""Evaluation sets: their names (``split/task/layout``), the sets a build has, and loading one
(built, composed ``concat`` trios / quartets, or negative-audio) as batches of a method's inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from avgn.data.config import TASK_SOURCES
from avgn.data.datasets import OnTheFlyMixtureDataset, SceneDataset
from avgn.data.manifest import load_manifest
from avgn.features import (
    CachedFeatureDataset,
    collate_samples,
)


# --------------------------------------------------------------------------------------------------
# evaluation sets
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SetName:
    """``split/task/layout``, e.g. ``test/duet/concat``."""

    split: str
    task: str
    layout: str

    @classmethod
    def parse(cls, name: str) -> "SetName":
        parts = name.split("/")
        if len(parts) != 3:
            raise ValueError(f"evaluation set names are 'split/task/layout' (e.g. 'test/duet/concat'), got {name!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.split}/{self.task}/{self.layout}"

    @property
    def n_sources(self) -> int:
        return TASK_SOURCES[self.task]


_TASK_ORDER = {"solo": 0, "duet": 1, "trio": 2, "quartet": 3}


def list_sets(data_dir: str | Path, split: str | Sequence[str] = "test") -> list[str]:
    """The ``split/task/layout`` groups the manifest holds for ``split`` (one name or several)."""
    splits = [split] if isinstance(split, str) else list(split)
    df = load_manifest(data_dir)
    out = []
    for sp in splits:
        g = df[df["split"] == sp][["task", "layout"]].drop_duplicates()
        keys = sorted(zip(g["task"], g["layout"]), key=lambda tl: (_TASK_ORDER.get(tl[0], 9), tl[1] != "concat", tl[1]))
        out += [f"{sp}/{t}/{l}" for t, l in keys]
    return out


@dataclass
class EvalSet:
    """A loaded evaluation set. ``batches`` is a list (materialised) or a callable yielding batches."""

    name: SetName
    n_items: int
    _batches: list[dict[str, Any]] | Callable[[], Iterable[dict[str, Any]]]
    class_names: tuple[str, ...] = ()

    def batches(self) -> Iterator[dict[str, Any]]:
        src = self._batches
        yield from (src() if callable(src) else src)


_EVAL_KEYS = ("spec", "visual_feats", "image", "labels", "classes", "n_sources", "masks", "offscreen")


def _slim(batch: dict[str, Any]) -> dict[str, Any]:
    out = {k: batch[k] for k in _EVAL_KEYS if k in batch}
    if "visual_feats" in out:
        out["visual_feats"] = out["visual_feats"].to(torch.float16)  # as cached; halves memory
    out["scene_ids"] = [m["scene_id"] for m in batch["meta"]]
    return out


#: Items of a composed ``concat`` set (three or four frames side by side, chapter 5); ``None``: as
#: many as the split's built set of as many sources (:func:`composed_items`).
COMPOSED_ITEMS: int | None = None


def is_composed(name: SetName | str) -> bool:
    """Whether ``name`` is a composed ``concat`` set: ``<split>/trio/concat`` or
    ``<split>/quartet/concat``. The build holds ``concat`` duets only; trios and quartets of frames
    are composed from the split's solo scenes by :func:`composed_concat_set`."""
    sn = SetName.parse(name) if isinstance(name, str) else name
    return sn.layout == "concat" and sn.n_sources > 2


def composed_items(data_dir: str | Path, name: SetName | str) -> int:
    """Default size of composed set ``name``: the number of built ``<split>/<task>/scene`` items
    (200 trios and 200 quartets in the ``cpu`` test split, 4 in ``smoke``'s), else of the split's
    built ``duet/concat`` set, so a composed set is as large as the built sets it is compared with.

    Raises:
        ValueError: the split has neither (name the set and how to give ``n_items``).
    """
    from avgn.data.manifest import load_manifest

    sn = SetName.parse(name) if isinstance(name, str) else name
    m = load_manifest(data_dir, sn.split)
    for task, layout in ((sn.task, "scene"), ("duet", "concat")):
        n = int(((m["task"] == task) & (m["layout"] == layout)).sum())
        if n:
            return n
    raise ValueError(f"{sn}: split {sn.split!r} of {data_dir} has no built {sn.task}/scene or duet/concat set to take the "
                     f"size from; pass n_items (or set avgn.evaluate.sets.COMPOSED_ITEMS)")


def composed_concat_set(data_dir: str | Path, name: SetName | str, spec: Any, n_items: int | None = None, images: bool = True):
    """A deterministic evaluation set of ``n`` solo frames of ``n`` different classes side by side
    (224 x 224·n), their recorded clips mixed with the build's gains and noise settings: item ``i``
    is always the same (seed fixed by the set name), so every method sees the same mixtures. The
    sources keep the scenes' own clips (no resampling), as in the built test sets. ``n_items``
    defaults to :data:`COMPOSED_ITEMS`, or if that is ``None`` to :func:`composed_items` (the size of
    the split's built sets of as many sources); ``images=False``
    leaves the frames undecoded (samples without ``image``, for cached visual features)."""
    import zlib

    sn = SetName.parse(name) if isinstance(name, str) else name
    if not is_composed(sn):
        raise ValueError(f"{sn} is not a composed concat set (use layout 'concat' with task 'trio' or 'quartet')")
    seed = zlib.crc32(str(sn).encode()) % 2**31
    if n_items is None:
        n_items = COMPOSED_ITEMS if COMPOSED_ITEMS is not None else composed_items(data_dir, sn)
    return OnTheFlyMixtureDataset(data_dir, split=sn.split, layout="concat", n_sources=sn.n_sources, seed=seed,
                                  resample_audio=False, length=n_items, spec=spec, max_sources=sn.n_sources, images=images)


#: The built ``scene`` sets whose frames get negative audio (:func:`negative_set`).
NEGATIVE_TASKS: tuple[str, ...] = ("solo", "duet")


def is_negative(name: SetName | str) -> bool:
    """Whether ``name`` is a negative-audio set ``<split>/<task>/<condition>`` (condition ``silence``,
    ``noise`` or ``offscreen``: :mod:`avgn.data.negatives`)."""
    from avgn.data.negatives import CONDITIONS

    sn = SetName.parse(name) if isinstance(name, str) else name
    return sn.layout in CONDITIONS


def negative_set_names(split: str = "test", tasks: Sequence[str] = NEGATIVE_TASKS) -> tuple[str, ...]:
    """The negative-audio sets of ``split``: ``<split>/<task>/<condition>`` for every task of ``tasks``
    and every condition (``test/solo/silence``, ``test/solo/noise``, ``test/solo/offscreen``, ...)."""
    from avgn.data.negatives import CONDITIONS

    return tuple(f"{split}/{t}/{c}" for t in tasks for c in CONDITIONS)


def negative_set(data_dir: str | Path, name: SetName | str, spec: Any):
    """The deterministic negative-audio set ``name`` (``<split>/<task>/<condition>``): the split's built
    ``<task>/scene`` frames with silence, the build's noise alone, or an off-screen class's clip
    (:class:`avgn.data.negatives.NegativeAudioDataset`), seeded by the crc32 of the name, so every
    method hears the same audio."""
    import zlib

    from avgn.data.negatives import NegativeAudioDataset

    sn = SetName.parse(name) if isinstance(name, str) else name
    if not is_negative(sn):
        raise ValueError(f"{sn} is not a negative-audio set (its layout must be silence, noise or offscreen)")
    seed = zlib.crc32(str(sn).encode()) % 2**31
    return NegativeAudioDataset(data_dir, sn.split, sn.task, sn.layout, seed, spec=spec, max_sources=sn.n_sources)


def _set_dataset(data_dir: str | Path, sn: SetName, spec: Any, images: bool = True) -> Any:
    """The dataset of set ``sn``: composed, negative-audio or built."""
    if is_composed(sn):
        return composed_concat_set(data_dir, sn, spec, images=images)
    if is_negative(sn):
        return negative_set(data_dir, sn, spec)
    return SceneDataset(data_dir, split=sn.split, tasks=[sn.task], layouts=[sn.layout], spec=spec, max_sources=sn.n_sources)


def load_eval_set(
    data_dir: str | Path,
    name: str | SetName,
    inputs: Any,
    store: Any = None,
    *,
    max_items: int | None = None,
    materialize: bool = True,
    workers: int | None = None,
) -> EvalSet:
    """Load evaluation set ``name`` with the spectrogram / feature settings of ``inputs``
    (:class:`avgn.experiment.InputConfig`). Composed ``concat`` trios / quartets
    (:func:`is_composed`) and negative-audio sets (:func:`is_negative`) are built on the fly,
    deterministically.

    Args:
        store: a :class:`avgn.features.FeatureStore` if ``inputs.cached_features`` (images are then
            not kept).
        max_items: keep the first ``max_items`` scenes.
        materialize: keep all batches in memory (validation, reused every epoch); otherwise stream
            them from a DataLoader on every pass.
    """
    from torch.utils.data import DataLoader, Subset

    sn = SetName.parse(name) if isinstance(name, str) else name
    ds: Any = _set_dataset(data_dir, sn, inputs.spec, images=not inputs.cached_features)
    class_names = ds.class_names
    if inputs.cached_features:
        if store is None:
            raise ValueError("inputs.cached_features is set: pass the FeatureStore")
        ds = CachedFeatureDataset(ds, store, drop=("image", "audio", "boxes", "gains_db"))
    if max_items is not None and max_items < len(ds):
        ds = Subset(ds, range(max_items))
    workers = inputs.eval_workers if workers is None else workers

    def loader() -> Iterable[dict[str, Any]]:
        dl = DataLoader(ds, batch_size=inputs.eval_batch_size, shuffle=False, num_workers=workers, collate_fn=collate_samples)
        return (_slim(b) for b in dl)

    if materialize:
        return EvalSet(sn, len(ds), list(loader()), class_names)
    return EvalSet(sn, len(ds), loader, class_names)
