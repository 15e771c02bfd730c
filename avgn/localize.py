"""Localize the sounding sources of your own frame and recording, or video, with a trained run (``avgn localize``).

:func:`localize` reads one image (PNG / JPEG / anything Pillow reads) and one recording (WAV / FLAC /
OGG / anything libsndfile reads), turns them into the run's inputs — the frame resized to the
model's square input (bilinear, antialiased), the audio down-mixed to mono, resampled to the run's
rate and cut to its window (from ``offset`` seconds) — and writes, per selected source:

* ``<name>_overlay.png``: the map (min-max normalised, upsampled to the image) over the frame;
* ``<name>_mask.png``: the map binarised under the protocol's rule (:func:`avgn.metrics.binarize`);

and ``localize.json``: the run, the inputs, the selected classes, every class's presence probability
(class-aware methods), each map's peak (value and pixel of the original image), and the command.

Video input (``video=``, ``--video``; needs the ``ffmpeg`` and ``ffprobe`` executables, Debian
package ``ffmpeg``, called through :mod:`subprocess`): :func:`read_video` takes the first frame at
or after ``time`` seconds (default: the middle of the video, or of its audio track where that is
shorter, from ffprobe's durations) and the audio window of the run's length centred on ``time``,
shifted inside the decoded audio track when it would run past either end. ffmpeg writes the frame
as PNG and the first audio stream as mono WAV at the run's sample rate to a temporary folder;
:func:`read_frame` and :func:`read_recording` then read them, so every check of an image and a
recording applies. ``localize.json`` records the video, the time stamp, the window and the exact
ffprobe / ffmpeg commands (``"video"``).

Which maps: a class-aware method (AVGN) with ``classes="auto"`` uses its own selection (exactly the
classes whose audio presence probability reaches the run's validation-chosen threshold, as in the
evaluation's ``predicted`` mode); when none does, nothing is drawn and ``localize.json`` says so
(``"sources": []``, ``"message": "no sounding source in view"``, :data:`NO_SOURCE_MESSAGE`). A list of
class names restricts the output to those classes. A class-agnostic method gives its one shared
map, or its slot maps.

Bad input is refused with one line naming the file and the fix (:class:`LocalizeInputError`):
unreadable or truncated image / audio, more than two audio channels, NaN or infinite audio samples,
silent audio, a clip shorter
than the window, an unfinished run folder, a class the run does not know; for a video also a
missing ffmpeg, a file ffmpeg cannot read, a video without an audio or a video stream, a time
stamp outside the video (or past the end of its audio track), and ``--video`` given with
``--image`` / ``--audio`` (or ``--offset``)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from avgn import metrics
from avgn.config import get_profile
from avgn.data.audio import resample
from avgn.data.audio import log_spectrogram
from avgn.env import resolve_device
from avgn.features import prepare_frames
from avgn.io import atomic_write_bytes, atomic_write_text
from avgn.methods import MethodPredictor, get_method
from avgn.models.selection import select_sources
from avgn.runs import load_trained_model

__all__ = ["NO_SOURCE_MESSAGE", "LocalizeInputError", "read_frame", "read_recording", "probe_video", "read_video", "window_start", "localize"]

#: RMS (full scale 1.0) under which a recording counts as silent.
SILENCE_RMS = 1e-4

#: What ``localize.json`` (``"message"``) and ``avgn localize`` say when the method's own selection
#: (``--classes auto``) selects no class.
NO_SOURCE_MESSAGE = "no sounding source in view"


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


def read_frame(path: str | Path, *, what: str | None = None) -> Tensor:
    """An image file as float32 RGB ``[3, H, W]`` in ``[0, 1]`` (fully decoded: a truncated file fails here).
    ``what`` names the file in the messages (default ``"the image PATH"``)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    what = what or f"the image {path}"
    if not path.is_file():
        raise LocalizeInputError(f"no image file {path}: give the path of a PNG or JPEG frame")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise LocalizeInputError(f"cannot read {what} ({exc}): it is not an image or it is truncated; "
                                 "re-export the frame as PNG or JPEG") from exc
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise LocalizeInputError(f"{what} is {arr.shape[1]}x{arr.shape[0]} pixels: give a frame of at least 8x8")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def read_recording(path: str | Path, sample_rate: int, seconds: float, offset: float = 0.0, *,
                   what: str | None = None, window_flag: str = "--offset") -> Recording:
    """The model's audio window from a recording: mono (mean of 1 or 2 channels), resampled to
    ``sample_rate``, ``seconds`` long from ``offset`` seconds. Refuses what it cannot use; ``what``
    names the file in the messages (default ``"the audio PATH"``), ``window_flag`` the option that
    moves the window."""
    import soundfile as sf

    path = Path(path)
    what = what or f"the audio {path}"
    if not path.is_file():
        raise LocalizeInputError(f"no audio file {path}: give the path of a WAV, FLAC or OGG recording")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile errors come as several types
        raise LocalizeInputError(f"cannot decode {what} ({exc}): it is not an audio file libsndfile reads, or it is "
                                 "truncated; convert it to WAV or FLAC (e.g. `ffmpeg -i IN -ac 1 OUT.wav`)") from exc
    if data.shape[0] == 0:
        raise LocalizeInputError(f"{what} holds no samples: give a recording of at least {seconds:g} s")
    channels = data.shape[1]
    if channels > 2:
        raise LocalizeInputError(f"{what} has {channels} channels: give a mono or stereo recording "
                                 "(e.g. `ffmpeg -i IN -ac 1 OUT.wav`)")
    bad = ~np.isfinite(data).all(axis=1)
    if bad.any():
        raise LocalizeInputError(f"{what} holds {int(bad.sum())} NaN or infinite sample(s) (the first at {int(np.argmax(bad)) / sr:.2f} s): "
                                 "repair the recording, or export it again from its source with finite samples")
    need = offset + seconds
    have = data.shape[0] / sr
    if have + 1e-9 < need:
        fix = f"give a longer recording or an earlier {window_flag}" if offset > 0 else "give a longer recording"
        raise LocalizeInputError(f"{what} lasts {have:.2f} s, shorter than the model's window of {seconds:g} s "
                                 f"from {offset:g} s: {fix}")
    x = data.mean(axis=1)
    start = int(round(offset * sr))
    x = x[start : start + int(round(seconds * sr))]
    if sr != sample_rate:
        x = resample(x, sr, sample_rate)
    n = int(round(seconds * sample_rate))
    x = np.ascontiguousarray(np.pad(x, (0, max(0, n - len(x))))[:n], dtype=np.float32)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise LocalizeInputError(f"{what} is silent from {offset:g} s to {need:g} s (RMS {rms:.1e}): "
                                 f"give a window in which something sounds ({window_flag})")
    return Recording(x, sample_rate, int(sr), channels, float(offset))


#: Seconds of audio decoded past the window's end: the window is then placed inside what the
#: decoder gives, which can be a little longer or shorter than the duration ffprobe reports.
AUDIO_MARGIN_S = 0.5

_FFMPEG_FIX = "install it (`apt-get install ffmpeg`, or conda-forge `ffmpeg`) or pass --image FRAME --audio CLIP instead"
_REENCODE_FIX = "re-encode it (e.g. `ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4`) or pass --image FRAME --audio CLIP instead"


@dataclass(frozen=True)
class VideoProbe:
    """What ffprobe tells of a video file: the stream indices of its first video stream (cover art
    excluded) and first audio stream, the video's duration (that stream's, else the file's), the
    audio stream's duration (None where the container does not say), rate and channels;
    ``command`` is the ffprobe command."""

    path: Path
    video_stream: int
    audio_stream: int
    duration: float
    audio_duration: float | None
    audio_rate: int
    audio_channels: int
    command: list[str]


def _tool(name: str, video: Path) -> str:
    """The path of the ``ffmpeg`` / ``ffprobe`` executable, or the refusal saying how to get it."""
    exe = shutil.which(name)
    if exe is None:
        raise LocalizeInputError(f"reading the video {video} needs ffmpeg, which is not installed (no `{name}` on PATH): {_FFMPEG_FIX}")
    return exe


def _run_tool(cmd: list[str], video: Path) -> str:
    """Run an ffmpeg / ffprobe command and return its stdout; a failure is refused naming the video
    and ffmpeg's last error line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise LocalizeInputError(f"ffmpeg cannot read the video {video} ({reason}): it is not a video file or it is "
                                 f"truncated; {_REENCODE_FIX}")
    return proc.stdout


def _seconds(value: Any) -> float | None:
    """A duration ffprobe reports (a string, ``"N/A"`` or absent) as positive seconds, or None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) and x > 0 else None


def _timestamp(seconds: float) -> str:
    """``seconds`` as ffmpeg's ``-ss`` / ``-t`` argument (microseconds, no exponent)."""
    return f"{seconds:.6f}".rstrip("0").rstrip(".") or "0"


def _input_arg(video: Path) -> str:
    """``video`` as ffmpeg's input argument: a relative path starts with ``./``, so that a name
    beginning with ``-`` or holding a ``:`` is not read as an option or a protocol."""
    return str(video) if video.is_absolute() else os.path.join(os.curdir, str(video))


def probe_video(video: str | Path) -> VideoProbe:
    """Read a video's streams and duration with ffprobe. Refuses a missing file, a missing ffmpeg,
    a file ffprobe cannot read, and a file without a video or an audio stream."""
    video = Path(video)
    if not video.is_file():
        raise LocalizeInputError(f"no video file {video}: give the path of a video (MP4, MKV, WebM, ...)")
    ffprobe = _tool("ffprobe", video)
    _tool("ffmpeg", video)  # both are needed: refuse before any work
    cmd = [ffprobe, "-v", "error", "-show_entries",
           "format=duration:stream=index,codec_type,duration,sample_rate,channels:stream_disposition=attached_pic",
           "-of", "json", _input_arg(video)]
    try:
        info = json.loads(_run_tool(cmd, video) or "{}")
    except json.JSONDecodeError as exc:
        raise LocalizeInputError(f"ffprobe gave no readable description of the video {video} ({exc}): {_REENCODE_FIX}") from exc
    streams = info.get("streams", [])
    pictures = [s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")]
    sounds = [s for s in streams if s.get("codec_type") == "audio"]
    if not pictures:
        raise LocalizeInputError(f"{video} has no video stream (an audio-only file): give a video with pictures, "
                                 "or pass a frame with --image and this file with --audio")
    if not sounds:
        raise LocalizeInputError(f"the video {video} has no audio stream: give a video with sound, "
                                 "or pass a frame of it with --image and a recording with --audio")
    duration = _seconds(pictures[0].get("duration")) or _seconds(info.get("format", {}).get("duration"))
    if duration is None:
        raise LocalizeInputError(f"ffprobe cannot tell how long the video {video} lasts: {_REENCODE_FIX}")
    return VideoProbe(video, int(pictures[0]["index"]), int(sounds[0]["index"]), duration, _seconds(sounds[0].get("duration")),
                      int(sounds[0].get("sample_rate") or 0), int(sounds[0].get("channels") or 0), cmd)


def window_start(time: float, seconds: float, available: float) -> float:
    """Start of the ``seconds``-long window centred on ``time``, shifted inside ``[0, available]``
    (0 when the clip is shorter than the window: :func:`read_recording` then refuses it)."""
    return max(0.0, min(time - seconds / 2, available - seconds))


def _decoded_seconds(wav: Path) -> float:
    """How long the WAV ffmpeg wrote lasts (0 when it is unreadable: :func:`read_recording` says why)."""
    import soundfile as sf

    try:
        return float(sf.info(str(wav)).duration)
    except Exception:  # libsndfile errors come as several types
        return 0.0


def read_video(video: str | Path, sample_rate: int, seconds: float, workdir: str | Path,
               time: float | None = None) -> tuple[Tensor, Recording, dict[str, Any]]:
    """The frame at ``time`` seconds (default: the middle of the video, or of its audio track where
    that is shorter) and the audio window centred on it, through ffmpeg: the first frame at or after
    ``time`` as ``workdir/frame.png``, the first audio stream from 0 s to past the window as mono
    ``sample_rate`` Hz ``workdir/audio.wav``, then :func:`read_frame` and :func:`read_recording` on
    them (every check of an image / a recording applies). The window is shifted inside the decoded
    track when it would run past either end. Returns the frame, the recording and the record of
    what was done (the file, the time stamp, the window and the exact ffprobe / ffmpeg commands)."""
    probe = probe_video(video)
    video, workdir = probe.path, Path(workdir)
    t = min(probe.duration, probe.audio_duration or probe.duration) / 2 if time is None else float(time)
    if not 0.0 <= t < probe.duration:
        raise LocalizeInputError(f"the time stamp {t:g} s is outside the video {video}, which lasts {probe.duration:.2f} s: "
                                 f"give a --time from 0 to under {probe.duration:.2f}")
    ffmpeg = _tool("ffmpeg", video)
    quiet = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error"]
    frame_png, audio_wav = workdir / "frame.png", workdir / "audio.wav"
    frame_cmd = [*quiet, "-ss", _timestamp(t), "-i", _input_arg(video), "-map", f"0:{probe.video_stream}",
                 "-frames:v", "1", "-update", "1", "-y", str(frame_png)]
    _run_tool(frame_cmd, video)
    if not frame_png.is_file():
        raise LocalizeInputError(f"the video {video} has no frame at or after {t:g} s (its last frame comes earlier): "
                                 "give an earlier --time")
    end = max(t + seconds / 2, seconds) + AUDIO_MARGIN_S
    audio_cmd = [*quiet, "-i", _input_arg(video), "-t", _timestamp(end), "-map", f"0:{probe.audio_stream}", "-vn",
                 "-ac", "1", "-ar", str(sample_rate), "-c:a", "pcm_f32le", "-y", str(audio_wav)]
    _run_tool(audio_cmd, video)
    available = _decoded_seconds(audio_wav)
    if seconds <= available < t:
        raise LocalizeInputError(f"the audio track of {video} ends at {available:.2f} s, before the time stamp {t:g} s: "
                                 f"give a --time under {available:.2f}")
    start = window_start(t, seconds, available)
    frame = read_frame(frame_png, what=f"the frame at {t:g} s of {video}")
    rec = read_recording(audio_wav, sample_rate, seconds, start, what=f"the audio track of {video}", window_flag="--time")
    record = {"file": str(video), "time_s": t, "duration_s": probe.duration, "window_s": [start, start + seconds],
              "audio_stream": {"index": probe.audio_stream, "sample_rate": probe.audio_rate, "channels": probe.audio_channels},
              "video_stream": probe.video_stream, "ffprobe": probe.command, "ffmpeg": {"frame": frame_cmd, "audio": audio_cmd}}
    return frame, rec, record


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


def _check_sources(image: str | Path | None, audio: str | Path | None, video: str | Path | None,
                   time: float | None, offset: float | None) -> None:
    """Refuse a mix of inputs :func:`localize` cannot take: a video or a frame and a recording."""
    if video is not None:
        if image is not None or audio is not None:
            raise LocalizeInputError("--video is exclusive with --image/--audio: give either a video, or a frame and a recording")
        if offset is not None:
            raise LocalizeInputError("--offset places the window of --audio; with --video the window is centred on --time: drop --offset")
    else:
        if image is None or audio is None:
            raise LocalizeInputError("give a frame with --image and a recording with --audio, or a video with --video")
        if time is not None:
            raise LocalizeInputError("--time picks the moment of a --video; with --image/--audio place the window with --offset")


def _read_inputs(image: str | Path | None, audio: str | Path | None, video: str | Path | None, time: float | None,
                 offset: float | None, sample_rate: int, seconds: float) -> tuple[Tensor, Recording, dict[str, Any] | None]:
    """The frame, the audio window and (video input) the record of :func:`read_video`; the files
    ffmpeg extracts live in a temporary folder removed once they are read."""
    if video is None:
        assert image is not None and audio is not None
        return read_frame(image), read_recording(audio, sample_rate, seconds, offset or 0.0), None
    with tempfile.TemporaryDirectory(prefix="avgn-localize-") as tmp:
        return read_video(video, sample_rate, seconds, tmp, time)


def _describe_inputs(image: str | Path | None, audio: str | Path | None, rec: Recording,
                     video_record: dict[str, Any] | None) -> tuple[str, dict[str, Any], list[str]]:
    """The default output folder's name, the JSON's input fields (the user's files, never the
    temporary ones ffmpeg writes) and the command-line flags that name the inputs."""
    if video_record is None:
        inputs = {"image": str(image), "audio": str(audio), "audio_channels": rec.channels, "audio_sample_rate": rec.source_rate}
        flags = ["--image", str(image), "--audio", str(audio)] + (["--offset", _timestamp(rec.offset_s)] if rec.offset_s else [])
        return Path(str(image)).stem, inputs, flags
    video, t = video_record["file"], _timestamp(video_record["time_s"])
    stream = video_record["audio_stream"]
    inputs = {"image": video, "audio": video, "audio_channels": stream["channels"], "audio_sample_rate": stream["sample_rate"]}
    return f"{Path(video).stem}_t{t}", inputs, ["--video", video, "--time", t]


def localize(
    run_dir: str | Path,
    image: str | Path | None = None,
    audio: str | Path | None = None,
    *,
    video: str | Path | None = None,
    time: float | None = None,
    classes: str | Sequence[str] = "auto",
    out_dir: str | Path | None = None,
    offset: float | None = None,
    device: str = "auto",
    command: str | None = None,
) -> dict[str, Any]:
    """Localize the sources of ``audio`` in ``image`` (or of a ``video``'s audio window centred on
    ``time`` seconds in its frame at ``time``) with the finished run in ``run_dir`` and write the
    overlays, masks and ``localize.json`` into ``out_dir`` (default ``<run_dir>/localize/<image
    stem>``, or ``<video stem>_t<time>``). Returns the JSON's content. See the module docstring."""
    _check_sources(image, audio, video, time, offset)
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise LocalizeInputError(f"{run_dir} is not a run folder (no config.json): train one with `avgn train` and give its folder")
    if not (run_dir / "run.json").is_file():
        raise LocalizeInputError(f"the run {run_dir} is not finished (no run.json): finish it with `avgn train ... --out {run_dir} --resume`")
    model, exp, info = load_trained_model(run_dir, device=device)
    method = get_method(exp.method)
    names = list(info["config"].get("class_names", []))
    dev = resolve_device(device)
    spec = exp.inputs.spec
    frame, rec, video_record = _read_inputs(image, audio, video, time, offset, spec.sample_rate, spec.seconds)

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
            _, sel, mask = select_sources(pred["maps"], "predicted", audio_probs=probs, threshold=threshold, min_sources=0)
            idx = [int(c) for c, m in zip(sel[0], mask[0]) if m]
        else:
            idx = [names.index(c) for c in wanted]
        labels = [names[i] for i in idx]
    elif method.kind == "shared":
        idx, labels = [0], ["sound"]
    else:
        idx = list(range(maps.shape[0]))
        labels = [f"slot{k + 1}" for k in idx]

    default_name, inputs, flags = _describe_inputs(image, audio, rec, video_record)
    out = Path(out_dir) if out_dir is not None else run_dir / "localize" / _safe(default_name)
    out.mkdir(parents=True, exist_ok=True)
    h, w = frame.shape[-2:]
    sources = _write_sources(out, frame, maps, idx, labels, probs, exp.eval.binarize_rule, exp.eval.binarize_value)
    result = {
        "run_dir": str(run_dir), "method": exp.method, "checkpoint_epoch": info["checkpoint_epoch"],
        **inputs, "image_size": [w, h], "resampled_to": rec.sample_rate, "window_s": [rec.offset_s, rec.offset_s + spec.seconds],
        "video": video_record,
        "selection": "auto" if wanted is None else "given", "presence_threshold": threshold if method.kind == "class_aware" else None,
        "binarize": {"rule": exp.eval.binarize_rule, "value": exp.eval.binarize_value},
        "sources": sources,
        "message": None if sources else NO_SOURCE_MESSAGE,
        "presence": {c: float(probs[0, j]) for j, c in enumerate(names)} if probs is not None else None,
        "command": command or " ".join(shlex.quote(x) for x in ["avgn", "localize", str(run_dir), *flags,
                                                               "--classes", "auto" if wanted is None else ",".join(wanted), "--out", str(out)]),
        "out_dir": str(out),
    }
    atomic_write_text(out / "localize.json", json.dumps(result, indent=2))
    return result


def _write_sources(out: Path, frame: Tensor, maps: Tensor, idx: list[int], labels: list[str], probs: Tensor | None,
                   rule: str, value: float) -> list[dict[str, Any]]:
    """Write the overlay and mask PNGs of the selected maps ``maps[idx]`` (``maps [K, h, w]``, upsampled
    to the frame ``[3, H, W]``) into ``out`` and return their ``localize.json`` entries (none for an
    empty selection)."""
    if not idx:
        return []
    h, w = frame.shape[-2:]
    up = metrics.upsample_maps(maps[idx].float(), (h, w))  # [S, H, W]
    norm = metrics.minmax_normalise(up)
    binary = metrics.binarize(up, rule, value)
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
    return sources
