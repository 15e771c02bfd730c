"""Chapter 8's study (GSAVL): heatmaps -> point prompts -> a promptable segmenter -> masks, scored
with AVSBench's mIoU and F-score (:func:`avgn.metrics.evaluate_avs`).

The scored unit is one **(scene, sounding source)** pair of an evaluation set (:class:`PairSet`):
its frame, its ground-truth mask and its class. A :class:`MapSource` gives one map per pair at mask
resolution, min-max normalised:

* a trained run's map for the source (:func:`run_map_sources`): AVGN's map of the source's class
  (``oracle``) or, in the ``predicted`` mode, the same map only if AVGN hears that class (otherwise
  the pair gets no map and an empty mask, as in the book's protocol); EZ-VSL's one map per frame;
* the object prior of the frame (:func:`prior_map_source`, the profile's frozen backbone);
* their fusion ``minmax(0.4 av + 0.6 prior)`` (:func:`fused`, GSAVL's alpha).

:func:`segment_source` turns a source's maps into masks with a sampler (:mod:`avgn.segment.prompts`)
and a segmenter (:mod:`avgn.segment.segmenters`), or with no segmenter at all: the ``blob``, the
map binarised by the book's protocol rule (its IoU is the protocol's cIoU of the same map).
:func:`score_masks` gives the long rows; :func:`mask_study` runs the whole grid.
"""

from __future__ import annotations

import json

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from avgn import metrics
from avgn.data.datasets import SceneDataset
from avgn.env import resolve_device
from avgn.evaluate import SetName, eval_feature_store, load_eval_set, predict_set, reference_predictor
from avgn.evaluate.scoring import _source_maps
from avgn.methods import MethodPredictor, get_method
from avgn.runs import load_trained_model
from avgn.segment.prompts import GSAVL_ALPHA, PromptConfig, fuse_maps, sample_points
from avgnbook.results import write_study_table

__all__ = ["BLOB", "PairSet", "MapSource", "load_pairs", "run_map_sources", "prior_map_source", "fused",
           "segment_source", "score_masks", "mask_study", "mask_grid_study", "read_mask_study", "MASK_SETS", "MASK_ITEMS", "split_variant", "SEP", "prior_ablation", "qualitative", "plot_masks"]

#: The "segmenter" that is no segmenter: the map binarised by the protocol's rule.
BLOB = "blob"
#: Separator of the parts of a result's variant label: ``map source · sampler · segmenter``.
SEP = " · "


@dataclass
class PairSet:
    """The (scene, source) pairs of one set: ``images [P, 3, H, W]`` uint8, ``masks [P, H, W]``
    bool, ``classes [P]`` long, ``item [P]`` (scene index) and ``scene_ids``; ``n_items`` scenes."""

    set_name: str
    images: Tensor
    masks: Tensor
    classes: Tensor
    item: Tensor
    scene_ids: list[str]
    class_names: tuple[str, ...]
    n_items: int

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def image(self, p: int) -> Tensor:
        """Pair ``p``'s frame as float ``[3, H, W]`` in ``[0, 1]``."""
        return self.images[p].float() / 255.0


@dataclass
class MapSource:
    """One map per pair (``maps [P, H, W]`` in ``[0, 1]``; ``hit [P]``: False = no map, empty mask);
    ``run``: the id of the stored run the maps come from ("" for a non-learned source)."""

    label: str
    method: str
    seed: int
    mode: str
    maps: Tensor
    hit: Tensor
    run: str = ""


def _flatten_valid(x: Tensor, classes: Tensor) -> Tensor:
    return x[classes >= 0]


def load_pairs(data_dir: str | Path, set_name: str, max_items: int | None = None) -> PairSet:
    """The frames, masks and classes of ``set_name``'s first ``max_items`` scenes, one entry per
    sounding source (``scene`` layouts: one frame per scene)."""
    sn = SetName.parse(set_name)
    if sn.layout == "concat":
        raise ValueError(f"{set_name}: use a 'scene' layout set (one 224 x 224 frame per scene)")
    ds = SceneDataset(data_dir, split=sn.split, tasks=[sn.task], layouts=[sn.layout], max_sources=sn.n_sources)
    n = len(ds) if max_items is None else min(len(ds), int(max_items))
    imgs, masks, classes, item, ids = [], [], [], [], []
    for i in range(n):
        s = ds[i]
        for k in range(int(s["n_sources"])):
            imgs.append((s["image"] * 255).round().to(torch.uint8))
            masks.append(s["masks"][k].bool())
            classes.append(int(s["classes"][k]))
            item.append(i)
            ids.append(s["meta"]["scene_id"])
    return PairSet(str(sn), torch.stack(imgs), torch.stack(masks), torch.tensor(classes), torch.tensor(item), ids, tuple(ds.class_names), n)


def _to_pairs(maps: Tensor, pairs: PairSet) -> Tensor:
    """``[P, h, w]`` maps -> ``[P, H, W]`` at mask resolution, min-max normalised per map."""
    up = metrics.upsample_maps(maps.float(), tuple(pairs.masks.shape[-2:]))
    return metrics.minmax_normalise(up)


def run_map_sources(run_dir: str | Path, pairs: PairSet, data_dir: str | Path, label: str, *, modes: Sequence[str] | None = None,
                    device: str = "auto", run: str = "") -> list[MapSource]:
    """A trained run's maps for every pair, one :class:`MapSource` per selection mode it supports
    (``modes``: a subset; the ``predicted`` mode uses the run's own presence threshold); ``run``: its
    id in the run store, carried into the results (fusions with the prior keep it)."""
    model, exp, info = load_trained_model(run_dir, device=device)
    method = get_method(exp.method)
    store = eval_feature_store(exp, Path(data_dir), [pairs.set_name], device=device)
    es = load_eval_set(data_dir, pairs.set_name, exp.inputs, store, max_items=pairs.n_items)
    p = predict_set(MethodPredictor(method, model, resolve_device(device), bf16=exp.train.bf16), es)
    if list(dict.fromkeys(p.scene_ids)) != list(dict.fromkeys(pairs.scene_ids)):
        raise RuntimeError(f"{run_dir}: the evaluation set's scenes are not the pairs' scenes (different builds?)")
    out = []
    for mode in [m for m in method.modes if modes is None or m in modes]:
        sm = _source_maps(p, mode, float(info.get("presence_threshold", 0.5)))
        maps = _flatten_valid(sm["maps"], p.classes)
        hit = _flatten_valid(sm["hit"], p.classes)
        out.append(MapSource(label, exp.method, int(info["seed"]), mode, _to_pairs(maps, pairs), hit, run))
    return out


def prior_map_source(profile: str, pairs: PairSet, data_dir: str | Path, *, device: str = "auto", label: str = "object prior") -> MapSource:
    """The object prior of every pair's frame (the profile's frozen backbone; ``seed = -1``)."""
    pred, exp, store = reference_predictor("object", profile, data_dir, [pairs.set_name], device=device)
    es = load_eval_set(data_dir, pairs.set_name, exp.inputs, store, max_items=pairs.n_items)
    p = predict_set(pred, es)
    maps = p.maps[:, :1].expand(-1, p.classes.shape[1], -1, -1)
    return MapSource(label, "object", -1, "oracle", _to_pairs(_flatten_valid(maps, p.classes), pairs), torch.ones(len(pairs), dtype=torch.bool))


def fused(av: MapSource, prior: MapSource, alpha: float = GSAVL_ALPHA, label: str | None = None) -> MapSource:
    """GSAVL's fusion of ``av``'s maps with ``prior``'s (:func:`avgn.segment.prompts.fuse_maps`)."""
    return replace(av, label=label or f"{av.label} + prior", maps=fuse_maps(av.maps, prior.maps, alpha))


def segment_source(src: MapSource, pairs: PairSet, segmenter: Any | None, prompt: PromptConfig = PromptConfig(),
                   rule: str = "top_fraction", value: float = 0.5, seed: int = 0,
                   indices: Sequence[int] | None = None) -> tuple[Tensor, list[Tensor | None]]:
    """Masks ``[P, H, W]`` bool of ``src``'s maps and the prompts used (``None`` for the blob and
    for pairs without a map). ``segmenter=None``: the blob (``metrics.binarize(map, rule, value)``).
    ``seed`` seeds the probabilistic sampler (one generator for the whole set, in pair order)."""
    idx = list(range(len(pairs))) if indices is None else list(indices)
    out = torch.zeros(len(idx), *pairs.masks.shape[-2:], dtype=torch.bool)
    prompts: list[Tensor | None] = [None] * len(idx)
    if segmenter is None:
        blob = metrics.binarize(src.maps[idx], rule, value)
        return blob & src.hit[idx, None, None], prompts
    g = torch.Generator().manual_seed(seed)
    for j, p in enumerate(idx):
        if not bool(src.hit[p]):
            continue
        pts = sample_points(src.maps[p], prompt, g)
        out[j] = segmenter(pairs.image(p), pts, torch.ones(len(pts), dtype=torch.long), src.maps[p])
        prompts[j] = pts
    return out, prompts


def score_masks(pred: Tensor, src: MapSource, pairs: PairSet, scores: Tensor | None = None) -> metrics.AvsResult:
    """AVSBench scores of masks ``[P, H, W]`` (``scores``: a soft map for the F-score; default the
    masks themselves)."""
    return metrics.evaluate_avs(pred, pairs.masks, scores, empty="match")


def mask_study(pairs: PairSet, sources: Sequence[MapSource], segmenters: Mapping[str, Any], samplers: Sequence[str],
               prompt: PromptConfig = PromptConfig(), rule: str = "top_fraction", value: float = 0.5, seed: int = 0):
    """Every source through the blob and through every (sampler, segmenter): ``(long, per_pair)``.

    ``long``: columns ``variant`` (``source · sampler · segmenter``), ``method``, ``seed``, ``set``,
    ``mode``, ``metric`` (``miou``, ``fscore``), ``value``, plus ``source``, ``sampler``,
    ``segmenter`` and ``run`` (the source's run id). ``per_pair``: the same labels with ``class`` and per-pair ``iou``."""
    import pandas as pd

    rows, per_pair = [], []
    names = [pairs.class_names[c] for c in pairs.classes.tolist()]
    for src in sources:
        combos: list[tuple[str, str, Any]] = [("-", BLOB, None)] + [(s, n, seg) for s in samplers for n, seg in segmenters.items()]
        for sampler, seg_name, seg in combos:
            masks, _ = segment_source(src, pairs, seg, replace(prompt, sampler=sampler) if seg is not None else prompt, rule, value, seed)
            soft = (src.maps * src.hit[:, None, None]) if seg is None else None
            res = score_masks(masks, src, pairs, soft)
            lab = {"variant": SEP.join((src.label, sampler, seg_name)), "method": src.method, "seed": src.seed, "set": pairs.set_name,
                   "mode": src.mode, "source": src.label, "sampler": sampler, "segmenter": seg_name, "run": src.run}
            rows += [{**lab, "metric": m, "value": v} for m, v in (("miou", res.miou), ("fscore", res.fscore))]
            per_pair += [{**lab, "class": c, "scene_id": sid, "iou": float(i)} for c, sid, i in zip(names, pairs.scene_ids, res.iou.tolist())]
    return pd.DataFrame(rows), pd.DataFrame(per_pair)


def split_variant(df: Any):
    """``df`` with ``source``, ``sampler`` and ``segmenter`` columns from its ``variant`` labels."""
    parts = df["variant"].str.split(SEP, expand=True, regex=False)
    return df.assign(source=parts[0], sampler=parts[1], segmenter=parts[2])


def prior_ablation(results: Any, av_label: str, segmenter: str, sampler: str, mode: str = "oracle", set_name: str | None = None):
    """GSAVL's ablation from results rows: the AV map alone, the object prior alone and their
    fusion, each through (``sampler``, ``segmenter``) (``segmenter=BLOB``: the blob), mean and sd
    over seeds of ``miou`` and ``fscore`` per set. Rows ``AV only``, ``prior only``, ``fused``."""
    df = split_variant(results)
    df = df[(df["segmenter"] == segmenter) & (df["sampler"] == ("-" if segmenter == BLOB else sampler))]
    if set_name is not None:
        df = df[df["set"] == set_name]
    parts = {"AV only": df[(df["source"] == av_label) & (df["mode"] == mode)],
             "prior only": df[df["source"] == "object prior"],
             "fused": df[(df["source"] == f"{av_label} + prior") & (df["mode"] == mode)]}
    frames = [p.assign(map=k) for k, p in parts.items() if len(p)]
    if not frames:
        raise ValueError(f"no rows for {av_label!r} with {sampler} / {segmenter}")
    import pandas as pd

    agg = pd.concat(frames).groupby(["set", "map", "metric"], sort=False)["value"].agg(["mean", "std"]).reset_index()
    return agg.pivot_table(index=["set", "map"], columns="metric", values=["mean", "std"], sort=False)


def qualitative(pairs: PairSet, src: MapSource, segmenter: Any, prompt: PromptConfig, indices: Sequence[int], seed: int = 0) -> list[dict[str, Any]]:
    """Per chosen pair: ``image [3, H, W]``, ``map [H, W]``, ``points [N, 2]`` (or None), ``mask``,
    ``gt`` and ``iou`` (the same prompts as :func:`segment_source` draws for those pairs alone)."""
    masks, prompts = segment_source(src, pairs, segmenter, prompt, seed=seed, indices=indices)
    out = []
    for j, p in enumerate(indices):
        gt = pairs.masks[p]
        iou = float(metrics.avs_iou(masks[j:j + 1], gt[None])[0])
        out.append({"image": pairs.image(p), "map": src.maps[p], "points": prompts[j], "mask": masks[j], "gt": gt, "iou": iou,
                    "class": pairs.class_names[int(pairs.classes[p])]})
    return out


def plot_masks(panels: Sequence[Mapping[str, Any]], title: str = ""):
    """One row per pair: frame + map and prompts, the mask, the ground truth. Returns the figure."""
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(panels), 3, figsize=(7.5, 2.5 * len(panels)), squeeze=False)
    for row, it in zip(axes, panels):
        img = it["image"].permute(1, 2, 0).numpy()
        row[0].imshow(img)
        row[0].imshow(it["map"].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        if it["points"] is not None:
            row[0].scatter(it["points"][:, 0], it["points"][:, 1], marker="*", s=140, c="white", edgecolors="black")
        row[1].imshow(img)
        row[1].imshow(it["mask"].numpy(), cmap="Greens", alpha=0.55)
        row[2].imshow(img)
        row[2].imshow(it["gt"].numpy(), cmap="Blues", alpha=0.55)
        row[0].set_title(f"{it['class']}: map, prompts", fontsize=9)
        row[1].set_title(f"mask (IoU {it['iou']:.2f})", fontsize=9)
        row[2].set_title("ground truth", fontsize=9)
        for a in row:
            a.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# the promptable decoder as a run of the store (chapter 8 reads it, never trains it)
# --------------------------------------------------------------------------------------------------
#: The sets chapter 8 scores and the scenes it takes from each, per profile (GrabCut takes a few
#: tenths of a second per mask on one core: the grid is a stored study, :func:`mask_grid_study`).
MASK_SETS = {"smoke": ("test/solo/scene",), "cpu": ("test/solo/scene", "test/duet/scene"), "gpu": ("test/solo/scene", "test/duet/scene")}
MASK_ITEMS = {"smoke": 3, "cpu": 20, "gpu": None}
#: The stored study's files: the long results and the per-pair IoUs.
MASK_FILES = ("masks.csv", "per_pair.csv")


def mask_grid_study(data_dir: str | Path, out_dir: str | Path, profile: str, seed: int, *, sources: Sequence[Sequence[str]],
                    decoder: str, runs: Mapping[str, Mapping[str, Any]], device: str = "auto") -> None:
    """The run store's ``mask-study`` (:class:`avgn.store.plan.Study` with ``needs``): every map
    source of every stored training seed through the blob and every (sampler, segmenter) of
    :func:`mask_study` — GrabCut and the ``decoder`` study's promptable decoder — on
    :data:`MASK_SETS`; writes ``masks.csv`` (the long rows) and ``per_pair.csv`` into ``out_dir``.

    ``sources``: ``(run-key prefix, label)`` per audio-visual method (``("ezvsl", "EZ-VSL")``); the
    seeds are those of ``runs``' keys ``<prefix>/seed<N>``. Each AV map also enters fused with the
    object prior; the prior alone enters once (it has no training seed). ``seed`` seeds the
    probabilistic sampler."""
    import pandas as pd

    from avgn.segment import SAMPLERS
    from avgn.segment.decoder import DecoderSegmenter
    from avgn.segment.segmenters import GrabCutSegmenter

    dec_model, dec_cfg, _, _ = read_decoder(runs[decoder]["run_dir"])
    segmenters = {"GrabCut": GrabCutSegmenter(), "decoder": DecoderSegmenter(dec_model, dec_cfg)}
    seeds = sorted({int(k.rsplit("/seed", 1)[1]) for k in runs if k.split("/")[0] in {p for p, _ in sources}})
    pairs = {s: load_pairs(data_dir, s, MASK_ITEMS[profile]) for s in MASK_SETS[profile]}
    longs, per_pair = [], []
    for sd in seeds:
        for p in pairs.values():
            av = [m for prefix, label in sources for m in run_map_sources(runs[f"{prefix}/seed{sd}"]["run_dir"], p, data_dir, label,
                                                                          device=device, run=runs[f"{prefix}/seed{sd}"]["id"])]
            prior = prior_map_source(profile, p, data_dir, device=device)
            for src in av + [fused(m, prior) for m in av] + ([prior] if sd == seeds[0] else []):
                lg, pp = mask_study(p, [src], segmenters, SAMPLERS, PromptConfig(), seed=seed)
                longs.append(lg), per_pair.append(pp)
    for name, frames in zip(MASK_FILES, (longs, per_pair)):
        write_study_table(pd.concat(frames, ignore_index=True), out_dir, name)


def read_mask_study(out_dir: str | Path):
    """``(long results, per-pair IoUs)`` of a :func:`mask_grid_study` kept in ``out_dir``."""
    import pandas as pd

    return tuple(pd.read_csv(Path(out_dir) / name, keep_default_na=False, na_values=[""]) for name in MASK_FILES)


#: Training scenes per training set and the decoder's schedule, per profile.
DECODER_TRAIN_ITEMS = {"smoke": 12, "cpu": 600, "gpu": None}
DECODER_STEPS = {"smoke": (20, 4), "cpu": (600, 16), "gpu": (4000, 32)}  # (steps, batch size)
DECODER_TRAIN_SETS = ("train/solo/scene", "train/duet/scene")


def decoder_config(profile: str):
    """The :class:`avgn.segment.decoder.DecoderConfig` chapter 8 trains under ``profile``."""
    from avgn.segment.decoder import DecoderConfig

    steps, batch = DECODER_STEPS[profile]
    return DecoderConfig(steps=steps, batch_size=batch)


def decoder_study(data_dir: str | Path, out_dir: str | Path, profile: str, seed: int) -> None:
    """The run store's ``point-decoder`` study (:class:`avgn.store.plan.Study`): the promptable
    decoder trained on the train split's object masks, written to ``out_dir`` (``decoder.safetensors``,
    ``decoder.json``: its configuration, the training pairs' count and the loss per step)."""
    import dataclasses

    from avgn.checkpoint import atomic_save_safetensors
    from avgn.io import atomic_write_json
    from avgn.segment.decoder import train_point_decoder

    cfg = decoder_config(profile)
    train = [load_pairs(data_dir, s, DECODER_TRAIN_ITEMS[profile]) for s in DECODER_TRAIN_SETS]
    model, losses = train_point_decoder(torch.cat([t.images for t in train]), torch.cat([t.masks for t in train]), cfg, seed=seed)
    out = Path(out_dir)
    atomic_save_safetensors(out / "decoder.safetensors", model.state_dict())
    atomic_write_json(out / "decoder.json", {"config": dataclasses.asdict(cfg), "pairs": sum(len(t) for t in train), "losses": losses})


def read_decoder(out_dir: str | Path):
    """``(model in eval mode, DecoderConfig, training pairs, losses)`` of a :func:`decoder_study` kept in ``out_dir``."""
    from safetensors.torch import load_file

    from avgn.segment.decoder import DecoderConfig, PointMaskNet

    meta = json.loads((Path(out_dir) / "decoder.json").read_text())
    cfg = DecoderConfig(**meta["config"])
    model = PointMaskNet(cfg.width)
    model.load_state_dict(load_file(str(Path(out_dir) / "decoder.safetensors")))
    return model.eval(), cfg, meta["pairs"], meta["losses"]
