"""Localize the sounding sources of your own frame and recording with a trained run (``avgn localize``).

:func:`localize` reads one image (PNG / JPEG / anything Pillow reads) and one recording (WAV / FLAC /
OGG / anything libsndfile reads), turns them into the run's inputs — the frame resized to the
model's square input (bilinear, antialiased), the audio down-mixed to mono, resampled to the run's
rate and cut to its window (from ``offset`` seconds) — and writes, per selected source:

* ``<name>_overlay.png``: the map (min-max normalised, upsampled to the image) over the frame;
* ``<name>_mask.png``: the map binarised under the protocol's rule (:func:`avgn.metrics.binarize`);

and ``localize.json``: the run, the inputs, the selected classes, every class's presence probability
(class-aware methods), each map's peak (value and pixel of the original image), and the command.

Which maps: a class-aware method (AVGN) with ``classes="auto"`` uses its own selection (the classes
whose audio presence probability reaches the run's validation-chosen threshold, at least the most
probable one); a list of class names restricts the output to those classes. A class-agnostic
method gives its one shared map, or its slot maps.

Bad input is refused with one line naming the file and the fix (:class:`LocalizeInputError`):
unreadable or truncated image / audio, more than two audio channels, silent audio, a clip shorter
than the window, an unfinished run folder, a class the run does not know.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from avgn import metrics
from avgn.config import get_profile
from avgn.data.audio import resample
from avgn.data.datasets import log_spectrogram
from avgn.env import resolve_device
from avgn.features import prepare_frames
from avgn.io import atomic_write_bytes, atomic_write_text
from avgn.methods import MethodPredictor, get_method
from avgn.models.avgn import select_sources
from avgn.runs import load_trained_model

__all__ = ["LocalizeInputError", "read_frame", "read_recording", "localize"]

#: RMS (full scale 1.0) under which a recording counts as silent.
SILENCE_RMS = 1e-4


class LocalizeInputError(ValueError):
    """A file or argument :func:`localize` cannot use; the message names it and the fix."""


@dataclass(frozen=True)
class Recording:
    """The audio window fed to the model: ``wave`` ``[T]`` mono at ``sample_rate``."""

    wave: np.ndarray
    sample_rate: int
    source_rate: int
    channels: int
    offset_s: float


def read_frame(path: str | Path) -> Tensor:
    """An image file as float32 RGB ``[3, H, W]`` in ``[0, 1]`` (fully decoded: a truncated file fails here)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise LocalizeInputError(f"no image file {path}: give the path of a PNG or JPEG frame")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise LocalizeInputError(f"cannot read the image {path} ({exc}): it is not an image or it is truncated; "
                                 "re-export the frame as PNG or JPEG") from exc
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise LocalizeInputError(f"the image {path} is {arr.shape[1]}x{arr.shape[0]} pixels: give a frame of at least 8x8")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def read_recording(path: str | Path, sample_rate: int, seconds: float, offset: float = 0.0) -> Recording:
    """The model's audio window from a recording: mono (mean of 1 or 2 channels), resampled to
    ``sample_rate``, ``seconds`` long from ``offset`` seconds. Refuses what it cannot use."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise LocalizeInputError(f"no audio file {path}: give the path of a WAV, FLAC or OGG recording")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile errors come as several types
        raise LocalizeInputError(f"cannot decode the audio {path} ({exc}): it is not an audio file libsndfile reads, or it is "
                                 "truncated; convert it to WAV or FLAC (e.g. `ffmpeg -i IN -ac 1 OUT.wav`)") from exc
    if data.shape[0] == 0:
        raise LocalizeInputError(f"the audio {path} holds no samples: give a recording of at least {seconds:g} s")
    channels = data.shape[1]
    if channels > 2:
        raise LocalizeInputError(f"the audio {path} has {channels} channels: give a mono or stereo recording "
                                 "(e.g. `ffmpeg -i IN -ac 1 OUT.wav`)")
    need = offset + seconds
    have = data.shape[0] / sr
    if have + 1e-9 < need:
        raise LocalizeInputError(f"the audio {path} lasts {have:.2f} s, shorter than the model's window of {seconds:g} s "
                                 f"from {offset:g} s: give a longer recording or an earlier --offset")
    x = data.mean(axis=1)
    start = int(round(offset * sr))
    x = x[start : start + int(round(seconds * sr))]
    if sr != sample_rate:
        x = resample(x, sr, sample_rate)
    n = int(round(seconds * sample_rate))
    x = np.ascontiguousarray(np.pad(x, (0, max(0, n - len(x))))[:n], dtype=np.float32)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise LocalizeInputError(f"the audio {path} is silent from {offset:g} s to {need:g} s (RMS {rms:.1e}): "
                                 "give a window in which something sounds (--offset)")
    return Recording(x, sample_rate, int(sr), channels, float(offset))


def _visual_input(exp: Any, frame: Tensor, device: torch.device) -> dict[str, Tensor]:
    """The frame as the model reads it: cached-feature models get the frozen backbone's features of
    the frame resized to the cache's size (as :func:`avgn.features.compute_features` computes them),
    the others the frame resized to the input size."""
    size = exp.inputs.features.image_size if exp.inputs.cached_features else get_profile(exp.profile).data.image_size
    img = prepare_frames(frame, "scene", size)[0][None]
    if not exp.inputs.cached_features:
        return {"image": img}
    from avgn.models.encoders import VisualEncoder

    enc = VisualEncoder(exp.inputs.features.encoder_config()).to(device).eval()
    with torch.inference_mode():
        feats = enc.backbone_features(img.to(device)).float().cpu()
    return {"visual_feats": feats.to(torch.float16).float()}  # the cache stores float16


def _png(path: Path, rgb: np.ndarray) -> Path:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _overlay(frame: Tensor, heat: Tensor, alpha: float = 0.5) -> np.ndarray:
    """``frame`` ``[3, H, W]`` in [0, 1] blended with the colour-mapped ``heat`` ``[H, W]`` in [0, 1]."""
    from matplotlib import colormaps

    from avgn.viz import MAP_CMAP

    rgb = colormaps[MAP_CMAP](heat.numpy())[..., :3]
    out = (1 - alpha) * frame.permute(1, 2, 0).numpy() + alpha * rgb
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def localize(
    run_dir: str | Path,
    image: str | Path,
    audio: str | Path,
    *,
    classes: str | Sequence[str] = "auto",
    out_dir: str | Path | None = None,
    offset: float = 0.0,
    device: str = "auto",
    command: str | None = None,
) -> dict[str, Any]:
    """Localize the sources of ``audio`` in ``image`` with the finished run in ``run_dir`` and write
    the overlays, masks and ``localize.json`` into ``out_dir`` (default ``<run_dir>/localize/<image
    stem>``). Returns the JSON's content. See the module docstring."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise LocalizeInputError(f"{run_dir} is not a run folder (no config.json): train one with `avgn train` and give its folder")
    if not (run_dir / "run.json").is_file():
        raise LocalizeInputError(f"the run {run_dir} is not finished (no run.json): finish it with `avgn train ... --out {run_dir} --resume`")
    model, exp, info = load_trained_model(run_dir, device=device)
    method = get_method(exp.method)
    names = list(info["config"].get("class_names", []))
    dev = resolve_device(device)
    frame = read_frame(image)
    spec = exp.inputs.spec
    rec = read_recording(audio, spec.sample_rate, spec.seconds, offset)

    wanted: list[str] | None = None
    if isinstance(classes, str) and classes != "auto":
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if not isinstance(classes, str):
        if method.kind != "class_aware":
            raise LocalizeInputError(f"the {method.label} run {run_dir} has no per-class maps: use --classes auto")
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise LocalizeInputError(f"the run {run_dir} does not know the class(es) {', '.join(unknown)}; it knows: {', '.join(names)}")
        wanted = list(classes)

    batch = {"spec": log_spectrogram(torch.from_numpy(rec.wave), spec)[None, None], **_visual_input(exp, frame, dev)}
    pred = MethodPredictor(method, model, dev, bf16=exp.train.bf16, channels_last=exp.train.channels_last)(batch)
    maps = pred["maps"][0]  # [K, h, w]
    probs = pred.get("audio_probs")
    threshold = float(info.get("presence_threshold", 0.5))
    if method.kind == "class_aware":
        if wanted is None:
            _, sel, mask = select_sources(pred["maps"], "predicted", audio_probs=probs, threshold=threshold)
            idx = [int(c) for c, m in zip(sel[0], mask[0]) if m]
        else:
            idx = [names.index(c) for c in wanted]
        labels = [names[i] for i in idx]
    elif method.kind == "shared":
        idx, labels = [0], ["sound"]
    else:
        idx = list(range(maps.shape[0]))
        labels = [f"slot{k + 1}" for k in idx]

    out = Path(out_dir) if out_dir is not None else run_dir / "localize" / _safe(Path(image).stem)
    out.mkdir(parents=True, exist_ok=True)
    h, w = frame.shape[-2:]
    up = metrics.upsample_maps(maps[idx].float(), (h, w))  # [S, H, W]
    norm = metrics.minmax_normalise(up)
    binary = metrics.binarize(up, exp.eval.binarize_rule, exp.eval.binarize_value)
    sources = []
    for k, (i, label) in enumerate(zip(idx, labels)):
        flat = int(up[k].argmax())
        stem = _safe(label)
        _png(out / f"{stem}_overlay.png", _overlay(frame, norm[k]))
        _png(out / f"{stem}_mask.png", (binary[k].numpy().astype(np.uint8) * 255))
        entry = {"name": label, "map_index": int(i), "peak_value": float(up[k].max()), "peak_xy": [flat % w, flat // w],
                 "mask_fraction": float(binary[k].float().mean()), "overlay": f"{stem}_overlay.png", "mask": f"{stem}_mask.png"}
        if probs is not None:
            entry["presence"] = float(probs[0, i])
        sources.append(entry)
    result = {
        "run_dir": str(run_dir), "method": exp.method, "checkpoint_epoch": info["checkpoint_epoch"],
        "image": str(image), "image_size": [w, h], "audio": str(audio), "audio_channels": rec.channels,
        "audio_sample_rate": rec.source_rate, "resampled_to": rec.sample_rate, "window_s": [rec.offset_s, rec.offset_s + spec.seconds],
        "selection": "auto" if wanted is None else "given", "presence_threshold": threshold if method.kind == "class_aware" else None,
        "binarize": {"rule": exp.eval.binarize_rule, "value": exp.eval.binarize_value},
        "sources": sources,
        "presence": {c: float(probs[0, j]) for j, c in enumerate(names)} if probs is not None else None,
        "command": command or " ".join(shlex.quote(x) for x in ["avgn", "localize", str(run_dir), "--image", str(image), "--audio", str(audio),
                                                               "--classes", "auto" if wanted is None else ",".join(wanted), "--out", str(out)]),
        "out_dir": str(out),
    }
    atomic_write_text(out / "localize.json", json.dumps(result, indent=2))
    return result
