"""Audio helpers of the embedded benchmark: loudness, mixing, robust reading and atomic writing.

Conventions: mono float32 waveforms in ``[-1, 1]`` (full scale = 1.0, so 0 dBFS is an RMS of 1.0).

**Loudness rule** (:func:`loudness_normalise`): every clip is scaled so that its RMS is
``target_dbfs`` (default -20 dBFS, i.e. RMS 0.1); if that gain would push the absolute peak above
``peak`` (default 0.99, about -0.09 dBFS) the gain is lowered so that the peak is exactly ``peak``
(the clip then ends up quieter than the target; it is never clipped). Near-silent clips
(RMS below 1e-6, -120 dBFS) are returned unchanged.

**Pink noise** (:func:`pink_from_white`): a standard-normal draw whose spectrum is divided by
``sqrt(f)`` (DC removed), scaled to unit RMS and rounded to float32 -- one algorithm for the build's
NumPy mixtures and the training batches' torch tensors.

**Mixing rule** (:func:`mix`): ``y = sum_i 10**(gains_db[i]/20) * sources[i]``; optional noise is
scaled so that ``10*log10(P(y)/P(noise)) = snr_db`` and added; finally, if ``max|y| > peak``, the whole
mixture (and every returned component) is multiplied by ``peak / max|y|`` so nothing clips and the
relative levels are kept.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from avgn.io import atomic_path

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "PEAK",
    "db_to_gain",
    "rms_dbfs",
    "loudness_normalise",
    "mix",
    "pink_noise",
    "pink_from_white",
    "resample",
    "read_audio",
    "decode_audio",
    "write_audio",
    "SpecConfig",
    "log_spectrogram",
]

PEAK = 0.99
_SILENT_RMS = 1e-6


def db_to_gain(db: float | np.ndarray) -> float | np.ndarray:
    """Amplitude factor of a level change in dB."""
    return 10.0 ** (np.asarray(db, dtype=np.float64) / 20.0)


def rms_dbfs(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """RMS level in dBFS along ``axis`` (``-inf`` for all-zero input)."""
    x = np.asarray(x, dtype=np.float64)
    rms = np.sqrt(np.mean(x * x, axis=axis))
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(rms)


def loudness_normalise(x: np.ndarray, target_dbfs: float = -20.0, peak: float = PEAK) -> np.ndarray:
    """Scale each clip (last axis) to an RMS of ``target_dbfs`` with peak protection (see module doc).

    Works on ``[T]`` or ``[..., T]``; returns float32 of the same shape.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError("loudness_normalise needs at least one axis (time)")
    x64 = x.astype(np.float64)
    rms = np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True))
    pk = np.max(np.abs(x64), axis=-1, keepdims=True)
    target = 10.0 ** (target_dbfs / 20.0)
    silent = rms < _SILENT_RMS
    gain = np.where(silent, 1.0, target / np.maximum(rms, _SILENT_RMS))
    gain = np.where(~silent & (pk * gain > peak), peak / np.maximum(pk, 1e-12), gain)
    return (x64 * gain).astype(np.float32)


def mix(
    sources: np.ndarray,
    gains_db: np.ndarray,
    noise: np.ndarray | None = None,
    snr_db: float | None = None,
    *,
    peak: float = PEAK,
    return_components: bool = False,
):
    """Mix ``[S, T]`` sources with per-source gains (dB) and optional noise at ``snr_db`` (see module doc).

    Returns the ``[T]`` float32 mixture; with ``return_components=True`` returns
    ``(mixture, scaled_sources [S, T], scaled_noise [T] or None)``, whose sum is the mixture exactly
    (up to float rounding) -- the per-source targets for separation-style supervision.
    ``noise`` given without ``snr_db`` is added as is.
    """
    src = np.asarray(sources, dtype=np.float64)
    if src.ndim != 2:
        raise ValueError(f"sources must be [S, T], got shape {src.shape}")
    g = np.asarray(gains_db, dtype=np.float64).reshape(-1)
    if g.shape[0] != src.shape[0]:
        raise ValueError(f"{src.shape[0]} sources but {g.shape[0]} gains")
    scaled = src * db_to_gain(g)[:, None]
    y = scaled.sum(axis=0)
    nz = None
    if noise is not None:
        nz = np.asarray(noise, dtype=np.float64).reshape(-1)
        if nz.shape[0] != y.shape[0]:
            raise ValueError(f"noise has {nz.shape[0]} samples, sources {y.shape[0]}")
        if snr_db is not None:
            p_sig = float(np.mean(y * y))
            p_noise = float(np.mean(nz * nz))
            if p_noise > 0 and p_sig > 0:
                nz = nz * np.sqrt(p_sig / (p_noise * 10.0 ** (snr_db / 10.0)))
        y = y + nz
    pk = float(np.max(np.abs(y))) if y.size else 0.0
    if pk > peak:
        k = peak / pk
        y, scaled = y * k, scaled * k
        nz = None if nz is None else nz * k
    if return_components:
        return (
            y.astype(np.float32),
            scaled.astype(np.float32),
            None if nz is None else nz.astype(np.float32),
        )
    return y.astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of 1/f (pink) noise with unit RMS, float32 (``rng.standard_normal(n)`` shaped)."""
    return pink_from_white(rng.standard_normal(n))


def pink_from_white(white):
    """Shape standard-normal draws ``[..., T]`` into 1/f noise with unit RMS per row, rounded to float32.

    ``white`` is a float64 NumPy array or torch tensor; the result is ``[..., T]`` float32 of the same
    kind (a tensor stays on its device). An all-zero row is returned as zeros.
    """
    if isinstance(white, np.ndarray):
        xp, device = np, {}
    else:
        import torch as xp

        device = {"device": white.device}
    n = white.shape[-1]
    spec = xp.fft.rfft(white)
    f = xp.arange(spec.shape[-1], dtype=xp.float64, **device)
    f[0] = 1.0
    spec = spec / xp.sqrt(f)
    spec[..., 0] = 0.0
    y = xp.fft.irfft(spec, n=n)
    rms = xp.sqrt(xp.mean(y * y, axis=-1, keepdims=True))
    rms = xp.where(rms > 0, rms, 1.0)
    y = y / rms
    return y.astype(np.float32) if xp is np else y.float()


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Polyphase resampling along the last axis (:func:`scipy.signal.resample_poly`, Kaiser window)."""
    if int(orig_sr) == int(new_sr):
        return np.asarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(int(orig_sr), int(new_sr))
    return resample_poly(np.asarray(x, dtype=np.float64), int(new_sr) // g, int(orig_sr) // g, axis=-1).astype(
        np.float32
    )


def _decode(src, name: str, sample_rate: int | None, hint: str) -> np.ndarray:
    import soundfile as sf

    try:
        data, sr = sf.read(src, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise ValueError(f"cannot decode audio {name}: {exc}; {hint}") from exc
    if data.shape[0] == 0:
        raise ValueError(f"cannot decode audio {name}: it holds no samples; {hint}")
    x = data.mean(axis=1)
    if sample_rate is not None and sr != sample_rate:
        x = resample(x, sr, sample_rate)
    return np.ascontiguousarray(x, dtype=np.float32)


def read_audio(path: str | Path, sample_rate: int | None = 16000) -> np.ndarray:
    """Mono float32 waveform of an audio file (any format libsndfile reads: WAV, FLAC, OGG/Vorbis, ...),
    resampled to ``sample_rate`` (``None`` keeps the file's rate).

    Raises :class:`FileNotFoundError` for a missing file and :class:`ValueError` naming the file when it is
    corrupt or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audio file {path}")
    return _decode(
        str(path),
        str(path),
        sample_rate,
        "re-create it (re-run the command that wrote it) or delete it; if it belongs to a package, "
        "re-install that package",
    )


def decode_audio(data: bytes, sample_rate: int | None = 16000, name: str = "<bytes>") -> np.ndarray:
    """Like :func:`read_audio` for an in-memory file (e.g. an entry of a GCompris ``.rcc``)."""
    return _decode(io.BytesIO(data), name, sample_rate, "the container it came from may be damaged: re-install it")


def write_audio(path: str | Path, x: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write a mono (``[T]``) or multichannel (``[T, C]``) clip as FLAC, atomically.

    The samples are clipped to ``[-1, 1]``, written to a temporary file in the target folder and moved into
    place with :func:`os.replace`, so a reader never sees a half-written file.
    """
    import soundfile as sf

    path = Path(path)
    y = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    with atomic_path(path, fsync=False) as tmp:
        sf.write(tmp, y, int(sample_rate), format="FLAC", subtype=subtype)
    return path


# --------------------------------------------------------------------------------------------------
# the spectrogram front end (what every model hears)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpecConfig:
    """The audio front end: log-magnitude STFT of a fixed-length clip.

    Paper defaults: 3 s of audio, a 50 ms Hann window, a 25 ms hop and the log of the magnitude. At
    16 kHz that is a 800-sample window (``n_fft`` = window length unless given), a 400-sample hop,
    ``F = n_fft // 2 + 1 = 401`` frequency bins and, with centred frames, ``T' = 1 + 48000 // 400
    = 121`` frames: a spectrogram of shape ``[1, 401, 121]``.
    """

    sample_rate: int = 16000
    seconds: float = 3.0
    win_ms: float = 50.0
    hop_ms: float = 25.0
    n_fft: int | None = None
    eps: float = 1e-7

    @property
    def n_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @property
    def win_length(self) -> int:
        return int(round(self.win_ms * self.sample_rate / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.hop_ms * self.sample_rate / 1000))

    @property
    def fft_size(self) -> int:
        return int(self.n_fft or self.win_length)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(1, F, T')`` of :func:`log_spectrogram` output for one clip (with channel)."""
        return (1, self.fft_size // 2 + 1, 1 + self.n_samples // self.hop_length)


def log_spectrogram(wave: Tensor | np.ndarray, cfg: SpecConfig = SpecConfig()) -> Tensor:
    """``log(|STFT| + eps)`` of waveforms ``[..., T]`` -> ``[..., F, T']`` (float32).

    The input is cropped or zero-padded to ``cfg.n_samples`` first; frames are centred (reflect
    padding), the window is Hann.
    """
    import torch  # lazily: the data build's workers use this module without torch

    x = torch.as_tensor(wave, dtype=torch.float32)
    n = cfg.n_samples
    if x.shape[-1] > n:
        x = x[..., :n]
    elif x.shape[-1] < n:
        x = torch.nn.functional.pad(x, (0, n - x.shape[-1]))
    lead = x.shape[:-1]
    x2 = x.reshape(-1, n)
    window = torch.hann_window(cfg.win_length, dtype=torch.float32, device=x.device)
    st = torch.stft(
        x2,
        n_fft=cfg.fft_size,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    spec = torch.log(st.abs() + cfg.eps)
    return spec.reshape(*lead, *spec.shape[-2:])
