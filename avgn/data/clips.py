"""Audio clips of a catalogue source: soundfont melodies (:mod:`avgn.data.synth`) or clips cut from
real recordings, loudness-normalised; deterministic in ``(source, seed, clip index)``."""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from avgn.data.catalog import AudioSource, read_asset_bytes, require_asset
from avgn.data.classes import class_info
from avgn.data.synth import render_melody

__all__ = ["render_clips", "REC_SPEED_RANGE", "REC_ENERGY_FLOOR_DB", "REC_EVENT_GAP_S", "REC_EVENT_GAIN_DB"]

def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _clip_rngs(source: AudioSource, n: int, seed: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _stable_hash(source.id) & 0xFFFFFFFF])
    return [np.random.default_rng(s) for s in ss.spawn(n)]


def render_clips(
    source: AudioSource, n: int, seed: int, seconds: float = 3.0, sample_rate: int = 16000
) -> np.ndarray:
    """``[n, T]`` float32 clips of ``source`` (``T = round(seconds * sample_rate)``), each loudness-normalised
    (RMS -20 dBFS with peak protection at 0.99, see :func:`avgn.data.audio.loudness_normalise`).

    Deterministic in ``(source, seed)``: clip ``i`` depends only on ``(source, seed, i)``, so
    ``render_clips(s, 5, k)[:3] == render_clips(s, 3, k)``. How soundfont melodies and recording clips
    are made: :func:`avgn.data.synth.render_melody` and :func:`_clip_from_recordings`. Soundfont
    synthesisers are kept per process (first use of a font loads it: 0.1-2.5 s); not thread-safe --
    use processes, not threads.
    """
    from avgn.data.audio import loudness_normalise

    T = int(round(seconds * sample_rate))
    rngs = _clip_rngs(source, int(n), seed)
    if source.kind == "soundfont":
        font = require_asset(source)
        progs = tuple(int(p) for p in source.key.split("programs=")[1].split(","))
        info = class_info(source.cls)
        clips = [render_melody(font, progs, info, rng, T, sample_rate) for rng in rngs]
    elif source.kind == "recording":
        waves = _recording_waves(source.source, source.key, int(sample_rate))
        clips = [_clip_from_recordings(waves, rng, T, sample_rate) for rng in rngs]
    else:
        raise ValueError(f"unknown audio source kind {source.kind!r}")
    out = np.zeros((len(clips), T), dtype=np.float32) if not clips else np.stack(clips).astype(np.float32)
    return loudness_normalise(out)



def _trim_silence(x: np.ndarray, sr: int, floor_db: float = 40.0) -> np.ndarray:
    """Drop leading/trailing 10 ms frames more than ``floor_db`` below the loudest frame (keep 20 ms pads)."""
    hop = max(1, sr // 100)
    n = len(x) // hop
    if n < 3:
        return x
    e = np.sqrt(np.mean(x[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1)) + 1e-12
    on = np.flatnonzero(20 * np.log10(e / e.max()) > -floor_db)
    a = max(0, (on[0] - 2) * hop)
    b = min(len(x), (on[-1] + 3) * hop)
    return x[a:b]


@functools.lru_cache(maxsize=128)
def _recording_waves(source: str, key: str, sample_rate: int) -> tuple[np.ndarray, ...]:
    """Decoded (mono, ``sample_rate``), silence-trimmed waveforms of every file of a recording key."""
    from avgn.data.audio import decode_audio

    waves = []
    for name, data in read_asset_bytes(source, key):
        x = _trim_silence(decode_audio(data, sample_rate, name), sample_rate)
        x.setflags(write=False)
        waves.append(x)
    return tuple(waves)


def _speed(x: np.ndarray, factor_pct: int) -> np.ndarray:
    """Play ``x`` at ``factor_pct`` % speed (tape-style: pitch moves with it), by polyphase resampling."""
    if factor_pct == 100:
        return np.asarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    return resample_poly(np.asarray(x, dtype=np.float64), 100, factor_pct).astype(np.float32)


def _fade(x: np.ndarray, n: int) -> np.ndarray:
    n = min(n, len(x) // 2)
    if n > 0:
        r = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= r
        x[-n:] *= r[::-1]
    return x


#: recording-clip rules (see :func:`_clip_from_recordings`)
REC_SPEED_RANGE = (95, 105)  # percent; tape-style speed change (+-5 %)
REC_ENERGY_FLOOR_DB = 12.0  # a crop's RMS must be within this many dB of the loudest crop
REC_EVENT_GAP_S = (0.05, 0.6)
REC_EVENT_GAIN_DB = 3.0


def _clip_from_recordings(waves: tuple[np.ndarray, ...], rng: np.random.Generator, T: int, sr: int) -> np.ndarray:
    """One ``T``-sample clip made of real recordings.

    * One recording at least as long as the clip (after the speed change): a random crop, chosen
      uniformly among the crops whose RMS is within :data:`REC_ENERGY_FLOOR_DB` dB of the loudest crop
      (so near-silent stretches are never picked), played at a random speed in :data:`REC_SPEED_RANGE`
      percent, with 10 ms fades.
    * Otherwise (short recordings such as one bark, or a set of single notes): *events* -- the clip is
      filled from a random start (0-0.4 s) with recordings picked at random, each at its own random speed
      and a gain of +-:data:`REC_EVENT_GAIN_DB` dB, separated by random silences of
      :data:`REC_EVENT_GAP_S` seconds; the last event is cut (with a fade) at the clip's end. A single
      short recording is thus repeated (a dog barking several times), never stretched.
    """
    out = np.zeros(T, dtype=np.float32)
    f = int(rng.integers(REC_SPEED_RANGE[0], REC_SPEED_RANGE[1] + 1))
    fade = max(1, sr // 100)
    if len(waves) == 1 and len(waves[0]) >= int(np.ceil(T * f / 100)) + 2:
        x = waves[0]
        need = int(np.ceil(T * f / 100)) + 2
        hop = max(1, sr // 100)
        c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
        starts = np.arange(0, len(x) - need + 1, hop)
        rms = np.sqrt((c[starts + need] - c[starts]) / need)
        ok = starts[rms >= rms.max() * 10 ** (-REC_ENERGY_FLOOR_DB / 20)]
        s = int(ok[rng.integers(len(ok))])
        seg = _speed(x[s : s + need], f)[:T]
        out[: len(seg)] = seg
        return _fade(out, fade)
    t = int(rng.uniform(0.0, 0.4) * sr)
    while t < T:
        w = waves[int(rng.integers(len(waves)))]
        e = _speed(w, int(rng.integers(REC_SPEED_RANGE[0], REC_SPEED_RANGE[1] + 1)))
        e = e * np.float32(10 ** (rng.uniform(-REC_EVENT_GAIN_DB, REC_EVENT_GAIN_DB) / 20))
        e = _fade(e[: T - t].copy(), fade)
        out[t : t + len(e)] += e
        t += len(e) + int(rng.uniform(*REC_EVENT_GAP_S) * sr)
    return out
