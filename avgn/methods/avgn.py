"""AVGN (Mo & Tian, CVPR 2023) as a method: class-aware maps and its own source selection.

One forward pass gives the maps of all ``C`` classes (:meth:`avgn.models.AVGN.localize`) and the
audio presence probabilities; ``predicted`` selection keeps the classes whose probability reaches
the run's validation-chosen threshold (:func:`avgn.models.select_sources`). The map is the
similarity the model was trained on (:func:`map_target`). Per epoch the trainer also logs the raw
token accuracy and the embedding-dependence control (:func:`embedding_dependence_summary`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from avgn.losses import avgn_total_loss
from avgn.methods.base import Method, model_inputs
from avgn.methods.registry import register_method
from avgn.models.avgn import AVGN
from avgn.models.config import AVGNConfig

if TYPE_CHECKING:  # pragma: no cover
    from avgn.config import Profile

__all__ = ["AVGNMethod", "map_target", "embedding_dependence", "embedding_dependence_summary"]


def map_target(cfg: Any) -> str:
    """The AVGN map that matches its training loss: ``gated`` (``cos(g^a_c, f_p * g^v_c)``, the
    paper's Eq. 10) when trained with ``loc_target='paper'``, ``features`` (``cos(g^a_c, f_p)``) when
    trained with the released code's ``loc_target='public'``. Scoring a ``paper``-trained model with
    the ungated map evaluates a similarity it was never trained on (on the smoke run: val AP 0.23
    ungated vs 0.43 gated)."""
    return "gated" if getattr(cfg, "loc_target", "public") == "paper" else "features"


def embedding_dependence(emb: np.ndarray, sounding: np.ndarray, names: Sequence[str]):
    """How much class-aware embeddings ``emb [N, C, D]`` depend on the input: per class, the cosine
    similarity between its mean embedding over scenes where it sounds and over scenes where it does
    not (``cos_sounding_vs_silent``: 1 = the embedding ignores whether the class sounds), and the
    mean cosine similarity of single embeddings to their class mean (``within_class_cos``: 1 = the
    same vector for every input). Returns a :class:`pandas.DataFrame`, one row per class that both
    sounds and is silent somewhere."""
    import pandas as pd

    x = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    rows = []
    for c, name in enumerate(names):
        on, off = sounding[:, c], ~sounding[:, c]
        if not on.any() or not off.any():
            continue
        mu_on, mu_off = x[on, c].mean(0), x[off, c].mean(0)
        mu_all = x[:, c].mean(0)
        cos = float(mu_on @ mu_off / (np.linalg.norm(mu_on) * np.linalg.norm(mu_off)))
        within = float((x[:, c] @ (mu_all / np.linalg.norm(mu_all))).mean())
        rows.append({"class": name, "scenes_sounding": int(on.sum()), "cos_sounding_vs_silent": cos, "within_class_cos": within})
    return pd.DataFrame(rows)


#: Roles of a class in a scene (:func:`embedding_dependence_by_role`, :func:`avgnbook.analysis.embedding_roles`).
ABSENT, VISIBLE_SILENT, SOUNDING = 0, 1, 2


def embedding_dependence_by_role(emb: np.ndarray, roles: np.ndarray, names: Sequence[str]):
    """:func:`embedding_dependence` with silence split in two: per class, the cosine similarity
    between its mean embeddings over the scenes where it sounds, where it is pasted in the frame but
    silent (a distractor) and where it is absent. ``emb [N, C, D]``, ``roles [N, C]`` with
    :data:`SOUNDING` / :data:`VISIBLE_SILENT` / :data:`ABSENT`.

    An embedding that follows what its modality can perceive has, for the audio branch,
    ``cos_sounding_vs_visible_silent`` low and ``cos_visible_silent_vs_absent`` near 1 (a silent
    object is not heard), and for the visual branch ``cos_sounding_vs_visible_silent`` near 1 (a
    frame does not show which object sounds) and ``cos_visible_silent_vs_absent`` low. Returns a
    :class:`pandas.DataFrame`, one row per class, NaN where a role never occurs."""
    import pandas as pd

    roles = np.asarray(roles)
    if roles.shape != emb.shape[:2]:
        raise ValueError(f"roles {roles.shape} do not match the embeddings' [N, C] {emb.shape[:2]}")
    x = emb / np.linalg.norm(emb, axis=-1, keepdims=True)

    def cos(u: np.ndarray | None, v: np.ndarray | None) -> float:
        if u is None or v is None:
            return math.nan
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    rows = []
    for c, name in enumerate(names):
        mu = {r: (x[roles[:, c] == r, c].mean(0) if (roles[:, c] == r).any() else None) for r in (SOUNDING, VISIBLE_SILENT, ABSENT)}
        rows.append({"class": name, "scenes_sounding": int((roles[:, c] == SOUNDING).sum()),
                     "scenes_visible_silent": int((roles[:, c] == VISIBLE_SILENT).sum()), "scenes_absent": int((roles[:, c] == ABSENT).sum()),
                     "cos_sounding_vs_visible_silent": cos(mu[SOUNDING], mu[VISIBLE_SILENT]),
                     "cos_sounding_vs_absent": cos(mu[SOUNDING], mu[ABSENT]),
                     "cos_visible_silent_vs_absent": cos(mu[VISIBLE_SILENT], mu[ABSENT])})
    return pd.DataFrame(rows)


@torch.no_grad()
def embedding_dependence_summary(model: nn.Module, batches: Sequence[Mapping[str, Any]], device: str | torch.device = "cpu") -> dict[str, float]:
    """Mean over classes of :func:`embedding_dependence`'s ``cos_sounding_vs_silent`` for AVGN's
    audio and visual class-aware embeddings on ``batches`` (e.g. the materialised validation duets):
    1 = the embedding of a class is the same whether the class sounds or not."""
    was = model.training
    model.eval()
    auds, viss, labs = [], [], []
    try:
        for b in batches:
            out = model(**model_inputs(dict(b), torch.device(device)))
            auds.append(out["audio_emb"].float().cpu())
            viss.append(out["visual_emb"].float().cpu())
            labs.append(b["labels"].bool())
    finally:
        model.train(was)
    sounding = torch.cat(labs).numpy()
    names = [str(c) for c in range(sounding.shape[1])]
    res = {}
    for key, embs in (("audio", auds), ("visual", viss)):
        df = embedding_dependence(torch.cat(embs).numpy(), sounding, names)
        res[key] = float(df["cos_sounding_vs_silent"].mean()) if len(df) else math.nan
    return res


@register_method
class AVGNMethod(Method):
    """AVGN: class tokens, grouping, class-aware embeddings (:class:`avgn.models.AVGN`)."""

    name = "avgn"
    label = "AVGN"
    kind = "class_aware"
    modes = ("oracle", "predicted")
    config_cls = AVGNConfig

    def default_config(self, profile: "Profile") -> AVGNConfig:
        s = profile.sizes
        return AVGNConfig(dim=s.dim, depth=s.depth, heads=s.heads, mlp_ratio=s.mlp_ratio, encoder=profile.encoder)

    def build(self, cfg: AVGNConfig) -> AVGN:
        return AVGN(cfg)

    def loss(self, model: nn.Module, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 10 + token CE + audio / visual presence BCE (:func:`avgn.losses.avgn_total_loss`)."""
        dev = outputs["audio_logits"].device
        classes = batch["classes"].to(dev)
        b = {"labels": batch["labels"].to(dev), "source_classes": classes, "source_mask": classes >= 0}
        return avgn_total_loss(outputs, b, model.cfg)

    def predict(self, model: nn.Module, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {
            "maps": model.localize(outputs, target=map_target(model.cfg)),  # [B, C, h, w]
            "audio_probs": torch.sigmoid(outputs["audio_logits"]),  # [B, C]
            "token_pred": model.token_classifier(outputs["audio_emb"]).argmax(-1),  # [B, C]
        }

    def epoch_diagnostics(self, model: nn.Module, val_sets: Sequence[Any], device: torch.device) -> dict[str, Any]:
        """``token_raw_accuracy`` (is token ``c`` classified as ``c``?) and ``embedding_dependence``
        (does a class's embedding change when the class sounds? 1 = no; on the multi-source
        validation sets)."""
        with torch.no_grad():
            tok = model.token_classifier(model.class_tokens).argmax(-1).cpu()
        multi = [es for es in val_sets if es.name.n_sources > 1] or list(val_sets)
        return {
            "token_raw_accuracy": float((tok == torch.arange(len(tok))).float().mean()),
            "embedding_dependence": embedding_dependence_summary(model, [b for es in multi for b in es.batches()], device),
        }

    def value_label(self, model: nn.Module | None) -> str:
        if model is not None and map_target(model.cfg) == "gated":
            return "cos(g$^a_c$, f$_p$ ⊙ g$^v_c$): class-c audio token vs. gated pixel feature"
        return "cos(g$^a_c$, f$_p$): class-c audio token vs. pixel feature"
