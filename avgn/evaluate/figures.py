"""Figure data: example maps of a trained model on a few items of an evaluation set."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from avgn import metrics
from avgn.env import resolve_device
from avgn.evaluate.scoring import SetPredictions, _source_maps, score_set
from avgn.evaluate.sets import SetName, _set_dataset
from avgn.features import (
    FeatureStore,
    collate_samples,
)
from avgn.methods import MethodPredictor, get_method


def example_maps(
    model: torch.nn.Module,
    exp: Any,
    data_dir: str | Path,
    set_name: str,
    indices: Sequence[int],
    *,
    store: Any = None,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Maps of chosen scenes for figures: the frame, the source masks and, per sounding source, the
    method's map for it (oracle selection; Mix-and-Localize: the matched slot), upsampled to the frame.

    Returns one dict per scene: ``image [3, H, W]``, ``masks [S, H, W]``, ``class_names``,
    ``maps [S, H, W]`` (min-max normalised per map), ``ap [S]``, ``scene_id`` and, for AVGN,
    ``audio_probs [C]`` and ``predicted`` (the predicted classes' names).
    """
    sn = SetName.parse(set_name)
    ds: Any = _set_dataset(data_dir, sn, exp.inputs.spec)
    samples = [ds[i] for i in indices]
    batch = collate_samples([{k: v for k, v in s.items() if k != "audio"} for s in samples])
    if exp.inputs.cached_features:
        if store is None:  # the features of these scenes' frames only
            store = FeatureStore(data_dir, exp.inputs.features, preload=False, compute_missing=True, device=device)
        batch["visual_feats"] = torch.stack([store.for_meta(m).float() for m in batch["meta"]])
        images = batch.pop("image")
    else:
        images = batch["image"]
    batch["scene_ids"] = [m["scene_id"] for m in batch["meta"]]
    method = get_method(exp.method)
    pred = MethodPredictor(method, model, resolve_device(device), bf16=exp.train.bf16)(batch)
    p = SetPredictions(
        name=sn, kind=method.kind, maps=pred["maps"], masks=batch["masks"].bool(), classes=batch["classes"].long(),
        labels=batch["labels"], scene_ids=batch["scene_ids"], audio_probs=pred.get("audio_probs"), token_pred=pred.get("token_pred"),
    )
    sm = _source_maps(p, "oracle", 0.5)
    size = tuple(batch["masks"].shape[-2:])
    up = metrics.upsample_maps(sm["maps"].float(), size)
    up = metrics.minmax_normalise(up.reshape(-1, *size)).reshape(up.shape)  # per map
    _, rows = score_set(p, "oracle", exp.eval)
    out = []
    for i, s in enumerate(samples):
        n = int(s["n_sources"])
        item = {
            "scene_id": s["meta"]["scene_id"],
            "image": images[i],
            "masks": s["masks"][:n],
            "class_names": list(s["meta"]["class_names"]),
            "maps": up[i, :n],
            "ap": [r["ap"] for r in rows if r["scene_id"] == s["meta"]["scene_id"]][:n],
        }
        if p.audio_probs is not None:
            probs = p.audio_probs[i]
            item["audio_probs"] = probs
            chosen = (probs >= 0.5).nonzero().flatten().tolist() or [int(probs.argmax())]
            item["predicted"] = [ds.class_names[c] for c in sorted(chosen, key=lambda c: -float(probs[c]))]
        out.append(item)
    return out
