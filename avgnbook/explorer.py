"""Interactive explorer of localization maps (the book's chapter 06).

Pick a test scene and a method, listen to the mixture and to each source, choose which map is
overlaid on the frame (for AVGN any of the ``C`` class maps, including classes that are silent in
the scene; for EZ-VSL its one shared map; for Mix-and-Localize any slot), move the binarisation
threshold and see the binarised mask and its cIoU against the ground-truth mask of the source that
map scores.

* :func:`explorer_items` runs trained models on chosen scenes of an evaluation set
  (:class:`ExplorerItem`: frame, masks, audio, every raw map upsampled to the frame).
* :class:`Explorer` is the ipywidgets front end; :meth:`Explorer.render_still` draws its current
  state as a matplotlib :class:`~matplotlib.figure.Figure` for the static book.
* :func:`score_map` is the pure maths behind it: binarisation and cIoU from :mod:`avgn.metrics`,
  so the number shown is the one the evaluation protocol (:func:`avgn.metrics.evaluate_single_source`
  / :func:`avgn.metrics.evaluate_multi_source`) gives for that map and mask.

The threshold slider
--------------------
The slider is a *threshold* for both rules, so raising it never grows the mask:

* ``fixed``: pixels whose min-max normalised value is ``>= threshold`` are kept
  (:func:`avgn.metrics.binarize` with ``value = threshold``);
* ``top_fraction``: pixels strictly above the ``threshold``-quantile of the map are kept, i.e. the top
  ``1 - threshold`` fraction (:func:`avgn.metrics.binarize` with ``value = 1 - threshold``); the
  evaluation's median rule (``value = 0.5``) is threshold 0.5.

:func:`binarize_value` converts a slider threshold into the ``value`` of :mod:`avgn.metrics`.

Which source a map scores (the evaluation's ``oracle`` selection, :func:`avgn.evaluate.scoring._source_maps`):
AVGN's class map scores the source of that class (a class that is not sounding in the scene scores
nothing: matched source ``None``, cIoU NaN); EZ-VSL's shared map scores every source (the ``source``
drop-down picks the one compared); a Mix-and-Localize slot scores the source that the Hungarian
matching of slots to sources by AP assigns to it (an unmatched slot scores nothing).
"""

from __future__ import annotations

import base64
import io
import math
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

import avgn.viz  # noqa: F401  (selects the non-interactive Agg backend before pyplot is used)
from avgn import metrics
from avgn.data.audio import log_spectrogram
from avgn.data.datasets import SceneDataset
from avgn.env import resolve_device
from avgn.evaluate import SetName, SetPredictions, list_sets
from avgn.evaluate.scoring import _hungarian_match
from avgn.features import FeatureStore, collate_samples
from avgn.methods import MethodPredictor, get_method
from avgn.runs import load_trained_model
from avgn.segment.prompts import PromptConfig, sample_points

__all__ = [
    "RULES",
    "ExplorerItem",
    "explorer_items",
    "binarize_value",
    "score_map",
    "wav_bytes",
    "Explorer",
]

#: The binarisation rules the explorer offers (those of :func:`avgn.metrics.binarize` that work on
#: signed maps such as cosine similarities).
RULES: tuple[str, ...] = ("top_fraction", "fixed")


# --------------------------------------------------------------------------------------------------
# the data behind the explorer
# --------------------------------------------------------------------------------------------------
@dataclass
class ExplorerItem:
    """One scene with every method's maps, ready for :class:`Explorer`.

    Attributes:
        scene_id: the scene's id in the build.
        set_name: the evaluation set (``split/task/layout``) it comes from.
        image: float ``[3, H, W]`` in ``[0, 1]``, the frame.
        masks: bool ``[S, H, W]``, the visible mask of each of the ``S`` sounding sources.
        source_names: ``S`` names (the sources' class names; made unique with `` (2)``... if a class
            occurs twice).
        mixture: float32 ``[T]``, the mixture waveform.
        sources: float32 ``[S, T]``, each source as it sits in the mixture.
        sample_rate: of ``mixture`` and ``sources`` (Hz).
        maps: method label -> {map name -> raw map float ``[H, W]``}, bilinearly upsampled to the
            frame (``align_corners=False``, as the evaluation does). Map names: AVGN every class
            name (all ``C``), EZ-VSL ``"shared"``, Mix-and-Localize ``"slot 1"``, ``"slot 2"``...
        source_map: method label -> {source name -> the map name that scores it}; a source no map
            scores (Mix-and-Localize with more sources than slots) is absent.
        audio_probs: AVGN only: method label -> {class name -> audio presence probability}.
        kinds: method label -> the method's map kind (``class_aware`` | ``shared`` | ``slots``, :mod:`avgn.methods`).
        value_labels: method label -> what the raw map values are (colour-bar label).
    """

    scene_id: str
    set_name: str
    image: Tensor
    masks: Tensor
    source_names: list[str]
    mixture: np.ndarray
    sources: np.ndarray
    sample_rate: int
    maps: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    source_map: dict[str, dict[str, str]] = field(default_factory=dict)
    audio_probs: dict[str, dict[str, float]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    value_labels: dict[str, str] = field(default_factory=dict)

    def sources_scored_by(self, method: str, map_name: str) -> list[str]:
        """The sources (names, in scene order) that ``map_name`` of ``method`` scores (maybe none)."""
        sm = self.source_map[method]
        return [s for s in self.source_names if sm.get(s) == map_name]

    def default_map(self, method: str) -> str:
        """The map that scores the first source (else the method's first map)."""
        sm = self.source_map[method]
        for s in self.source_names:
            if s in sm:
                return sm[s]
        return next(iter(self.maps[method]))

    def mask_of(self, source: str) -> Tensor:
        """bool ``[H, W]``: the ground-truth mask of source ``source``."""
        return self.masks[self.source_names.index(source)]


def _unique_names(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        k, name = 1, n
        while name in out:
            k += 1
            name = f"{n} ({k})"
        out.append(name)
    return out


def explorer_items(
    runs: dict[str, str | Path],
    set_name: str,
    indices: Sequence[int],
    *,
    data_dir: str | Path | None = None,
    device: str = "auto",
    checkpoint: str = "best",
) -> list[ExplorerItem]:
    """Run trained models on scenes ``indices`` of evaluation set ``set_name`` for :class:`Explorer`.

    Args:
        runs: method label (e.g. ``"AVGN"``) -> run folder (:func:`avgn.train.train`). Each run is
            loaded once (its ``checkpoint``) and predicts all the scenes in one batch.
        set_name: ``split/task/layout`` (e.g. ``test/duet/scene``; :func:`avgn.evaluate.list_sets`).
        indices: positions of the scenes in the set (the order of
            :class:`avgn.data.datasets.SceneDataset`, which is the evaluation order).
        data_dir: the build; default: the first run's ``data_dir``.
        device: where the models run (``auto`` | ``cpu`` | ``cuda``).

    Returns:
        One :class:`ExplorerItem` per index, in the order of ``indices``.

    Raises:
        ValueError: no runs, a malformed or unknown set, an AVGN run with another class vocabulary.
        IndexError: an index outside the set (the message names the set and its size).
        FileNotFoundError: a run folder that does not exist (or holds no run).
    """
    if not runs:
        raise ValueError("explorer_items needs at least one run: {method label: run folder}")
    for label, run in runs.items():
        if not Path(run).is_dir():
            raise FileNotFoundError(f"run folder of {label!r} not found: {run}")
    sn = SetName.parse(set_name)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("explorer_items needs at least one scene index")

    loaded: dict[str, tuple[torch.nn.Module, Any, dict[str, Any]]] = {}
    first = next(iter(runs))
    loaded[first] = load_trained_model(runs[first], checkpoint=checkpoint, device=device)
    data_dir = Path(data_dir) if data_dir is not None else Path(loaded[first][2]["data_dir"])
    known = list_sets(data_dir, sn.split)
    if str(sn) not in known:
        raise ValueError(f"unknown evaluation set {str(sn)!r} in {data_dir}; the build has {known}")
    ds = SceneDataset(data_dir, split=sn.split, tasks=[sn.task], layouts=[sn.layout], max_sources=sn.n_sources, return_sources=True)
    bad = [i for i in indices if not 0 <= i < len(ds)]
    if bad:
        raise IndexError(f"scene index {bad[0]} is out of range for evaluation set {str(sn)!r}, which has {len(ds)} scenes (0..{len(ds) - 1})")
    samples = [ds[i] for i in indices]
    base = collate_samples([{k: v for k, v in s.items() if k not in ("audio", "sources")} for s in samples])
    masks = base["masks"].bool()  # [B, S_max, H, W]
    size = tuple(masks.shape[-2:])
    class_names = list(ds.class_names)

    items = []
    for s in samples:
        n = int(s["n_sources"])
        items.append(
            ExplorerItem(
                scene_id=s["meta"]["scene_id"],
                set_name=str(sn),
                image=s["image"],
                masks=s["masks"][:n].bool(),
                source_names=_unique_names(s["meta"]["class_names"]),
                mixture=s["audio"].numpy().astype(np.float32),
                sources=s["sources"][:n].numpy().astype(np.float32),
                sample_rate=int(ds.data.sample_rate),
            )
        )

    dev = resolve_device(device)
    for label, run in runs.items():
        model, exp, _ = loaded.pop(label, None) or load_trained_model(run, checkpoint=checkpoint, device=device)
        batch: dict[str, Any] = {k: v for k, v in base.items() if k != "spec"}
        batch["spec"] = torch.stack([log_spectrogram(s["audio"], exp.inputs.spec).unsqueeze(0) for s in samples])
        if exp.inputs.cached_features:
            store = FeatureStore(data_dir, exp.inputs.features, preload=False, compute_missing=True, device=device)
            batch["visual_feats"] = torch.stack([store.for_meta(m).float() for m in batch["meta"]])
            batch.pop("image")
        method = get_method(exp.method)
        pred = MethodPredictor(method, model, dev, bf16=exp.train.bf16, channels_last=exp.train.channels_last)(batch)
        raw = pred["maps"].float()  # [B, K, h, w]
        kind = method.kind
        if kind == "class_aware" and raw.shape[1] != len(class_names):
            raise ValueError(f"run {run} ({label}) has {raw.shape[1]} classes but the build {data_dir} has {len(class_names)}: trained on another build?")
        up = metrics.upsample_maps(raw, size)  # [B, K, H, W]
        if kind == "class_aware":
            names = class_names
        elif kind == "shared":
            names = ["shared"]
            up = up[:, :1]
        else:
            names = [f"slot {k + 1}" for k in range(up.shape[1])]
        match = None
        if kind == "slots":  # the evaluation's matching (avgn.evaluate.scoring._source_maps)
            p = SetPredictions(name=sn, kind=kind, maps=raw, masks=masks, classes=base["classes"].long(), labels=base["labels"], scene_ids=[it.scene_id for it in items])
            valid = (p.classes >= 0) & p.masks.flatten(2).any(-1)
            match = _hungarian_match(metrics.pairwise_ap(p.maps, p.masks), valid)  # [B, S_max], -1 unmatched
        vlabel = method.value_label(model)
        for b, it in enumerate(items):
            it.maps[label] = {nm: up[b, k].contiguous() for k, nm in enumerate(names)}
            it.kinds[label] = kind
            it.value_labels[label] = vlabel
            sm: dict[str, str] = {}
            for j, src in enumerate(it.source_names):
                if kind == "class_aware":
                    sm[src] = class_names[int(base["classes"][b, j])]
                elif kind == "shared":
                    sm[src] = "shared"
                elif match is not None and int(match[b, j]) >= 0:
                    sm[src] = names[int(match[b, j])]
            it.source_map[label] = sm
            if "audio_probs" in pred:
                it.audio_probs[label] = {c: float(pred["audio_probs"][b, k]) for k, c in enumerate(class_names)}
        del model
    return items


# --------------------------------------------------------------------------------------------------
# the maths
# --------------------------------------------------------------------------------------------------
def binarize_value(rule: str, threshold: float) -> float:
    """The :func:`avgn.metrics.binarize` ``value`` of slider ``threshold`` (see the module docstring):
    ``1 - threshold`` for ``top_fraction`` (the fraction of pixels kept), ``threshold`` for ``fixed``."""
    if rule == "top_fraction":
        return round(1.0 - float(threshold), 12)
    if rule == "fixed":
        return float(threshold)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def score_map(map_hw: Tensor, gt_mask: Tensor | None, rule: str = "top_fraction", value: float = 0.5) -> tuple[Tensor, float]:
    """Binarise one map and score it against one ground-truth mask, as the evaluation does.

    Args:
        map_hw: float ``[h, w]`` raw map; upsampled bilinearly to the mask's ``[H, W]`` if it differs
            (:func:`avgn.metrics.upsample_maps`).
        gt_mask: bool ``[H, W]`` ground truth, or ``None`` (the map scores no sounding source).
        rule, value: :func:`avgn.metrics.binarize` (``top_fraction`` 0.5 is the median rule).

    Returns:
        ``(binary, ciou)``: bool ``[H, W]`` mask and :func:`avgn.metrics.ciou`
        ``|P & G| / (|G| + |P \\ G|)`` (= ``|P & G| / |P | G|``); NaN when ``gt_mask`` is ``None`` or
        empty.
    """
    if map_hw.dim() != 2:
        raise ValueError(f"map_hw must be [h, w], got {tuple(map_hw.shape)}")
    m = map_hw.float()
    if gt_mask is not None:
        if gt_mask.dim() != 2:
            raise ValueError(f"gt_mask must be [H, W], got {tuple(gt_mask.shape)}")
        m = metrics.upsample_maps(m, tuple(gt_mask.shape))
    binary = metrics.binarize(m[None], rule, value)[0]  # type: ignore[arg-type]
    if gt_mask is None:
        return binary, math.nan
    return binary, float(metrics.ciou(binary[None], gt_mask.bool()[None], empty="nan")[0])


def wav_bytes(x: np.ndarray, sample_rate: int) -> bytes:
    """A mono float waveform ``[T]`` (in ``[-1, 1]``; clipped) as 16-bit PCM WAV bytes.

    No normalisation: the sources keep their level in the mixture."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    pcm = np.round(np.clip(a, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# the widget
# --------------------------------------------------------------------------------------------------
class Explorer:
    """ipywidgets explorer of :class:`ExplorerItem` s.

    Widgets (attributes): ``sample`` (scene ids), ``method`` (method labels), ``map_name`` (the
    method's maps; reset to the map scoring the first source when the scene or method changes),
    ``source`` (the sources the chosen map scores: one for AVGN / Mix-and-Localize, every source for
    EZ-VSL's shared map, none for a silent class or an unmatched slot), ``rule`` and ``threshold``
    (binarisation; see the module docstring), ``segment`` (chapter 8: replace the binarised map by
    the mask of ``segmenter`` prompted from the map with ``prompt``; disabled without a segmenter),
    ``audio`` (the mixture and each source, labelled) and ``output`` (the current figure as a PNG).
    :meth:`widget` assembles them.

    Every widget callback calls :meth:`update`, which recomputes :attr:`state` (``scene_id``,
    ``set_name``, ``method``, ``map_name``, ``source`` (matched source or ``None``),
    ``sources_scored``, ``pixels`` (binary mask pixel count), ``gt_pixels``, ``ciou`` (NaN when the
    map scores no sounding source), ``threshold``, ``rule``, ``value`` (the :mod:`avgn.metrics`
    binarisation value), ``audio_prob`` (AVGN: the class's presence probability), ``segmented``
    and ``points`` (the prompts ``[N, 2]`` when segmented, else ``None``)) and redraws.
    """

    def __init__(self, items: list[ExplorerItem], rule: str = "top_fraction", value: float = 0.5, *, draw: bool = True,
                 segmenter: Any = None, prompt: PromptConfig = PromptConfig("naive")):
        import ipywidgets as w

        if not items:
            raise ValueError("Explorer needs at least one ExplorerItem (explorer_items(...))")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        ids = [it.scene_id for it in items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate scene ids {sorted({i for i in ids if ids.count(i) > 1})}")
        methods = list(items[0].maps)
        for it in items:
            if list(it.maps) != methods:
                raise ValueError(f"scene {it.scene_id} has methods {list(it.maps)}, expected {methods}")
        threshold = binarize_value(rule, value)  # the conversion is its own inverse
        if not 0.05 <= threshold <= 0.95:
            raise ValueError(f"value {value} gives threshold {threshold} outside the slider's 0.05..0.95")
        self.items = list(items)
        self._by_id = {it.scene_id: it for it in self.items}
        self.draw = draw
        self.segmenter, self.prompt = segmenter, prompt
        self._busy = False
        self.state: dict[str, Any] = {}

        it0 = self.items[0]
        m0 = methods[0]
        self.sample = w.Dropdown(options=ids, value=ids[0], description="scene")
        self.method = w.Dropdown(options=methods, value=m0, description="method")
        self.map_name = w.Dropdown(options=list(it0.maps[m0]), value=it0.default_map(m0), description="map")
        self.source = w.Dropdown(options=[], description="vs. source")
        self.rule = w.Dropdown(options=list(RULES), value=rule, description="rule")
        self.threshold = w.FloatSlider(value=threshold, min=0.05, max=0.95, step=0.05, description="threshold", continuous_update=False, readout_format=".2f")
        self.segment = w.ToggleButton(value=False, description="segment", disabled=segmenter is None,
                                      tooltip=f"mask of {getattr(segmenter, 'name', 'no segmenter')} from {prompt.sampler} point prompts")
        self.audio = w.HBox()
        self.output = w.Output()
        self._set_sources()
        self._set_audio()

        self.sample.observe(self._on_sample, names="value")
        self.method.observe(self._on_method, names="value")
        self.map_name.observe(self._on_map, names="value")
        for wd in (self.source, self.rule, self.threshold, self.segment):
            wd.observe(self._on_change, names="value")
        self.update()

    # ---- current selection ------------------------------------------------------------------
    @property
    def item(self) -> ExplorerItem:
        """The selected scene."""
        return self._by_id[self.sample.value]

    # ---- callbacks ------------------------------------------------------------------------------
    def _set_sources(self, reset: bool = False) -> None:
        """Options of ``source``: the sources the chosen map scores; keep the chosen one unless ``reset``."""
        scored = self.item.sources_scored_by(self.method.value, self.map_name.value)
        keep = self.source.value if (self.source.value in scored and not reset) else (scored[0] if scored else None)
        self.source.options = scored
        self.source.value = keep
        self.source.disabled = len(scored) < 2

    def _set_maps(self) -> None:
        it, m = self.item, self.method.value
        self.map_name.options = list(it.maps[m])
        self.map_name.value = it.default_map(m)

    def _set_audio(self) -> None:
        import ipywidgets as w

        it = self.item
        tracks = [("mixture", it.mixture)] + list(zip(it.source_names, it.sources))
        self.audio.children = tuple(
            w.VBox([w.Label(name), w.Audio(value=wav_bytes(x, it.sample_rate), format="wav", autoplay=False, loop=False)])
            for name, x in tracks
        )

    def _guarded(self, fn) -> None:
        self._busy = True
        try:
            fn()
        finally:
            self._busy = False
        self.update()

    def _on_sample(self, change: dict[str, Any]) -> None:
        if not self._busy:
            self._guarded(lambda: (self._set_audio(), self._set_maps(), self._set_sources(reset=True)))

    def _on_method(self, change: dict[str, Any]) -> None:
        if not self._busy:
            self._guarded(lambda: (self._set_maps(), self._set_sources(reset=True)))

    def _on_map(self, change: dict[str, Any]) -> None:
        if not self._busy:
            self._guarded(self._set_sources)

    def _on_change(self, change: dict[str, Any]) -> None:
        if not self._busy:
            self.update()

    # ---- state and drawing ----------------------------------------------------------------------
    def compute_state(self) -> dict[str, Any]:
        """The current state (see the class docstring) and, under ``"binary"``, the bool ``[H, W]`` mask."""
        it, m, name = self.item, self.method.value, self.map_name.value
        rule, thr = self.rule.value, float(self.threshold.value)
        value = binarize_value(rule, thr)
        scored = it.sources_scored_by(m, name)
        src = self.source.value if self.source.value in scored else None
        gt = it.mask_of(src) if src is not None else None
        binary, c = score_map(it.maps[m][name], gt, rule, value)
        points = None
        if self.segment.value and self.segmenter is not None:
            heat = metrics.minmax_normalise(metrics.upsample_maps(it.maps[m][name].float(), tuple(it.image.shape[-2:]))[None])[0]
            points = sample_points(heat, self.prompt, torch.Generator().manual_seed(0))
            binary = self.segmenter(it.image, points, torch.ones(len(points), dtype=torch.long), heat)
            c = math.nan if gt is None or not bool(gt.any()) else float(metrics.ciou(binary[None], gt.bool()[None])[0])
        prob = it.audio_probs.get(m, {}).get(name)
        return {
            "scene_id": it.scene_id, "set_name": it.set_name, "method": m, "map_name": name,
            "source": src, "sources_scored": scored,
            "pixels": int(binary.sum()), "gt_pixels": None if gt is None else int(gt.sum()),
            "ciou": c, "threshold": thr, "rule": rule, "value": value, "audio_prob": prob,
            "segmented": points is not None, "points": points, "binary": binary,
        }

    def update(self) -> dict[str, Any]:
        """Recompute :attr:`state` from the widgets and redraw :attr:`output` (when ``draw``)."""
        full = self.compute_state()
        self._binary = full.pop("binary")
        self.state = full
        if self.draw:
            fig = self.render_still()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
            png = base64.b64encode(buf.getvalue()).decode("ascii")
            text = f"<Figure: {self.state['scene_id']} {self.state['method']} {self.state['map_name']} cIoU={self.state['ciou']:.3f}>"
            self.output.outputs = ({"output_type": "display_data", "data": {"image/png": png, "text/plain": text}, "metadata": {}},)
        return self.state

    def render_still(self):
        """A :class:`matplotlib.figure.Figure` of the current state.

        Panels: the frame with every source's ground-truth contour; the frame with the chosen map
        overlaid (raw values; white contour: binarised mask; dashed green: the matched source's
        ground truth; title: cIoU) and its colour bar (the binarisation cut marked); for AVGN also the
        audio presence probability of every class (the chosen class in orange, sounding classes in
        bold). 3 axes, 4 for AVGN. The figure is not registered with pyplot (nothing to close).
        """
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D

        st, it = self.state, self.item
        m, name = st["method"], st["map_name"]
        img = it.image.permute(1, 2, 0).clamp(0, 1).numpy()
        h, w = img.shape[:2]
        raw = it.maps[m][name].float().numpy()
        binary = self._binary.numpy()
        probs = it.audio_probs.get(m)
        panel_w = 3.4 * w / h
        widths = [panel_w, panel_w, 0.15] + ([2.6] if probs else [])
        fig = Figure(figsize=(sum(widths) + 0.9 * len(widths), 3.9), layout="constrained")
        axes = fig.subplots(1, len(widths), gridspec_kw={"width_ratios": widths})
        ax_img, ax_map, cax = axes[:3]
        colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]

        ax_img.imshow(img)
        for j, src in enumerate(it.source_names):
            mk = it.masks[j].numpy()
            if mk.any() and not mk.all():
                ax_img.contour(mk.astype(float), levels=[0.5], colors=[colours[j % len(colours)]], linewidths=1.5)
            ys, xs = np.nonzero(mk)
            if len(xs):
                ax_img.text(xs.mean(), ys.mean(), src, color="white", fontsize=8, ha="center", va="center",
                            bbox={"facecolor": colours[j % len(colours)], "alpha": 0.7, "pad": 1, "edgecolor": "none"})
        ax_img.set_title(f"{it.scene_id}\n{it.set_name}", fontsize=9)

        ax_map.imshow(img.mean(-1), cmap="gray", vmin=0, vmax=1)
        im = ax_map.imshow(raw, cmap="jet", alpha=0.55, vmin=float(raw.min()), vmax=float(raw.max()))
        handles = []
        if binary.any() and not binary.all():
            ax_map.contour(binary.astype(float), levels=[0.5], colors=["white"], linewidths=1.8)
        what = f"{getattr(self.segmenter, 'name', 'segmenter')} mask" if st["segmented"] else "binarised"
        handles.append(Line2D([], [], color="white", lw=1.8, label=f"{what} ({st['pixels']} px)"))
        if st["segmented"]:
            pts = st["points"].numpy()
            ax_map.scatter(pts[:, 0], pts[:, 1], marker="*", s=120, c="white", edgecolors="black", zorder=3)
        if st["source"] is not None:
            gt = it.mask_of(st["source"]).numpy()
            if gt.any() and not gt.all():
                ax_map.contour(gt.astype(float), levels=[0.5], colors=["lime"], linewidths=1.5, linestyles="--")
            handles.append(Line2D([], [], color="lime", lw=1.5, ls="--", label=f"ground truth: {st['source']}"))
        leg = ax_map.legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.6)
        leg.get_frame().set_facecolor("0.3")
        for t in leg.get_texts():
            t.set_color("white")
        rule_txt = f"top {1 - st['threshold']:.0%} of pixels" if st["rule"] == "top_fraction" else f"normalised value ≥ {st['threshold']:.2f}"
        if st["segmented"]:
            rule_txt = f"{self.prompt.sampler} prompts → {getattr(self.segmenter, 'name', 'segmenter')}"
        if st["source"] is None:
            verdict = "scores no sounding source: cIoU undefined"
        else:
            verdict = f"cIoU = {st['ciou']:.3f}"
        prob_txt = f", p(sounding) = {st['audio_prob']:.2f}" if st["audio_prob"] is not None else ""
        ax_map.set_title(f"{m} · map '{name}'{prob_txt}\n{rule_txt} · {verdict}", fontsize=9)
        for ax in (ax_img, ax_map):
            ax.set_xticks([])
            ax.set_yticks([])

        cb = fig.colorbar(im, cax=cax)
        cb.set_label(f"{it.value_labels.get(m, 'map value')}\n(raw; line: binarisation cut)", fontsize=7)
        cb.ax.tick_params(labelsize=7)
        if binary.any() and not st["segmented"]:
            cb.ax.axhline(float(raw[binary].min()), color="white", lw=2)
            cb.ax.axhline(float(raw[binary].min()), color="black", lw=0.8)

        if probs:
            ax_p = axes[3]
            names = list(probs)
            vals = [probs[c] for c in names]
            sounding = set(it.source_map[m].values())
            cols = ["tab:orange" if c == name else ("tab:blue" if c in sounding else "0.7") for c in names]
            ax_p.barh(range(len(names)), vals, color=cols)
            ax_p.set_yticks(range(len(names)), names, fontsize=7)
            for lab in ax_p.get_yticklabels():
                if lab.get_text() in sounding:
                    lab.set_fontweight("bold")
            ax_p.invert_yaxis()
            ax_p.axvline(0.5, color="k", lw=0.8, ls=":")
            ax_p.set_xlim(0, 1)
            ax_p.set_xlabel("audio presence probability", fontsize=8)
            ax_p.tick_params(axis="x", labelsize=7)
            ax_p.set_title("AVGN: which classes sound?\n(bold/blue: sounding)", fontsize=9)
        return fig

    def widget(self):
        """The assembled :class:`ipywidgets.VBox`: controls, audio players, figure."""
        import ipywidgets as w

        return w.VBox([
            w.HBox([self.sample, self.method]),
            w.HBox([self.map_name, self.source]),
            w.HBox([self.rule, self.threshold, self.segment]),
            self.audio,
            self.output,
        ])
