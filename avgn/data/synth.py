"""Soundfont melodies: a random melody per clip (:func:`_compose`), played by a General MIDI soundfont
through :mod:`tinysoundfont` with vibrato and expression (:func:`render_melody`)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from avgn.data import assets as A

__all__ = ["render_melody"]

_SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "pentatonic": (0, 2, 4, 7, 9),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
}
#: playing style per instrument: (family, vibrato depth in cents (max), polyphonic)
_STYLE = {
    "violin": ("bowed", 30.0, False),
    "cello": ("bowed", 30.0, False),
    "flute": ("wind", 18.0, False),
    "clarinet": ("wind", 4.0, False),
    "saxophone": ("wind", 20.0, False),
    "trumpet": ("wind", 12.0, False),
    "tuba": ("wind", 6.0, False),
    "accordion": ("reed", 0.0, False),
    "acoustic_guitar": ("plucked", 0.0, True),
    "xylophone": ("struck", 0.0, True),
}
_BLOCK = 256  # control-rate block (samples at the internal rate): 8 ms at 32 kHz


@functools.lru_cache(maxsize=8)
def _synth(font: str, rate: int):
    """A persistent :class:`tinysoundfont.Synth` with ``font`` loaded (one per font and rate, per process)."""
    try:
        import tinysoundfont
    except ImportError as exc:  # pragma: no cover - exercised only without the package
        prov = A.PROVIDERS["tinysoundfont"]
        raise ImportError(f"soundfont rendering needs {prov.package}: `{prov.install}`") from exc
    synth = tinysoundfont.Synth(gain=0.0, samplerate=rate)
    sfid = synth.sfload(font)
    return synth, sfid


def _compose(name: str, lo: int, hi: int, rng: np.random.Generator, seconds: float):
    """A random melody: list of ``(onset_s, duration_s, pitch, velocity, expression_shape)``.

    Tempo 60-150 bpm; a random scale and tonic; a random sub-range of 7-15 semitones inside the
    instrument's range; a random walk on the scale (mostly steps, some leaps); note lengths, rests,
    articulation (legato / detached) and velocity (phrase level + per-note jitter + accents) drawn per clip.
    """
    family = _STYLE[name][0]
    bpm = rng.uniform(60, 150)
    beat = 60.0 / bpm
    scale = list(_SCALES.values())[int(rng.integers(len(_SCALES)))]
    span = int(min(hi - lo, rng.integers(7, 16)))
    sub_lo = int(rng.integers(lo, hi - span + 1))
    tonic = int(rng.integers(12))
    pitches = [p for p in range(sub_lo, sub_lo + span + 1) if (p - tonic) % 12 in scale]
    if len(pitches) < 3:
        pitches = list(range(sub_lo, sub_lo + span + 1))
    if family == "struck":  # percussive: dense, short values (a long value would leave silence)
        lens, lp = (0.25, 0.5, 1.0), (0.3, 0.45, 0.25)
    elif family == "plucked":
        lens, lp = (0.25, 0.5, 1.0, 2.0), (0.25, 0.4, 0.25, 0.1)
    else:
        lens, lp = (0.5, 1.0, 1.5, 2.0, 3.0), (0.25, 0.35, 0.1, 0.2, 0.1)
    gate = rng.uniform(0.55, 0.75) if rng.random() < 0.2 else rng.uniform(0.88, 1.0)  # detached or legato
    if family == "plucked":
        gate = rng.uniform(1.0, 2.0)  # let the strings ring
    base_vel = rng.uniform(55, 110)
    steps, sp = (-3, -2, -1, 0, 1, 2, 3), (0.05, 0.15, 0.27, 0.06, 0.27, 0.15, 0.05)
    i = int(rng.integers(len(pitches)))
    t = rng.uniform(0.0, 0.3)
    beat_pos = 0.0
    notes = []
    while t < seconds:
        d_beats = float(rng.choice(lens, p=lp))
        if family in ("wind", "reed", "bowed") and notes and rng.random() < 0.1:  # breath / bow change
            rest = float(rng.choice((0.5, 1.0))) * beat
            t += rest
            beat_pos += rest / beat
            continue
        step = int(rng.choice(steps, p=sp))
        i = i + step
        if i < 0 or i >= len(pitches):
            i = i - 2 * step
            i = min(max(i, 0), len(pitches) - 1)
        accent = 10.0 if abs(beat_pos - round(beat_pos)) < 1e-6 and round(beat_pos) % 4 == 0 else 0.0
        vel = int(np.clip(base_vel + accent + rng.normal(0, 8), 25, 127))
        dur = d_beats * beat
        shape = int(rng.integers(4))  # 0 flat, 1 crescendo, 2 diminuendo, 3 swell
        if family == "struck" and rng.random() < 0.15 and dur >= 0.5 * beat:  # tremolo / roll on one bar
            k = max(2, int(dur / (beat / 4)))
            for j in range(k):
                notes.append((t + j * dur / k, dur / k, pitches[i], int(np.clip(vel - 15 + rng.normal(0, 6), 20, 127)), 0))
        else:
            notes.append((t, dur * gate, pitches[i], vel, shape))
            if family == "plucked" and rng.random() < 0.2:  # a dyad: a third/fourth below
                j = max(0, i - int(rng.integers(2, 4)))
                if j != i:
                    notes.append((t + rng.uniform(0.0, 0.02), dur * gate, pitches[j], max(20, vel - 12), shape))
        t += dur
        beat_pos += d_beats
    return notes


def render_melody(font: Path, programs: tuple[int, ...], info, rng: np.random.Generator, T: int, sr: int) -> np.ndarray:
    """Render one random melody (:func:`_compose`) with a soundfont: mono float32, ``T`` samples at ``sr``.

    tinysoundfont renders at twice ``sr`` (for ``sr`` <= 24 kHz, to limit aliasing of its linear
    interpolation), driven at an 8 ms control rate: note on/off events, vibrato as a pitch-bend LFO
    (bowed and wind instruments: 4.8-6.5 Hz, depth up to the instrument's maximum in cents, fading in
    0.1-0.3 s after each onset) and a per-note expression (CC 11) envelope for sustained instruments;
    then decimated to ``sr``. The synthesiser is reset (all sounds off, controllers reset) and flushed
    before each clip, so a clip does not depend on what was rendered before it.
    """
    from scipy.signal import resample_poly

    rate = 2 * sr if sr <= 24000 else sr
    synth, sfid = _synth(str(font), rate)
    family, vib_max, poly = _STYLE[info.name]
    lo, hi = info.pitch_range
    program = int(programs[int(rng.integers(len(programs)))])
    seconds = T / sr
    notes = _compose(info.name, lo, hi, rng, seconds)

    # reset and flush the persistent synthesiser
    synth.sounds_off()
    synth.generate_simple(rate // 10)
    synth.program_select(0, sfid, 0, program)
    synth.control_change(0, 121, 0)
    for cc, v in ((7, 100), (10, 64), (11, 127), (1, 0), (64, 0)):
        synth.control_change(0, cc, v)
    synth.pitchbend_range(0, 2.0)
    synth.pitchbend(0, 8192)

    n_blocks = int(np.ceil(T * rate / sr / _BLOCK))
    # events per block: (block, order, kind, note_index)
    events: dict[int, list[tuple[int, str, int]]] = {}
    for k, (on, dur, pitch, vel, shape) in enumerate(notes):
        b_on = int(on * rate / _BLOCK)
        b_off = max(b_on + 1, int((on + dur) * rate / _BLOCK))
        events.setdefault(b_off, []).append((0, "off", k))
        events.setdefault(b_on, []).append((1, "on", k))
    vib_rate = rng.uniform(4.8, 6.5)
    vib_depth = rng.uniform(0.4, 1.0) * vib_max
    vib_delay = rng.uniform(0.1, 0.3)
    sustained = family in ("bowed", "wind", "reed")
    buf = np.empty(n_blocks * _BLOCK * 2, dtype=np.float32)
    mv = memoryview(buf).cast("B")
    sounding: dict[int, int] = {}  # pitch -> note index (monophonic instruments keep at most one)
    current = -1
    bytes_per_block = _BLOCK * 2 * 4
    for b in range(n_blocks):
        for _, kind, k in sorted(events.get(b, ())):
            pitch = notes[k][2]
            if kind == "off":
                if sounding.get(pitch) == k:
                    synth.noteoff(0, pitch)
                    del sounding[pitch]
            else:
                if not poly:
                    for p in list(sounding):
                        synth.noteoff(0, p)
                        del sounding[p]
                elif pitch in sounding:
                    synth.noteoff(0, pitch)
                synth.noteon(0, pitch, notes[k][3])
                sounding[pitch] = k
                current = k
        tsec = b * _BLOCK / rate
        if current >= 0 and (vib_depth > 0 or sustained):
            on, dur, _, _, shape = notes[current]
            age = tsec - on
            if vib_depth > 0:
                ramp = np.clip((age - vib_delay) / 0.3, 0.0, 1.0)
                cents = vib_depth * ramp * np.sin(2 * np.pi * vib_rate * age)
                synth.pitchbend(0, int(np.clip(8192 + 8192 * cents / 200.0, 0, 16383)))
            if sustained:
                u = np.clip(age / max(dur, 1e-3), 0.0, 1.0)
                level = (1.0, 0.7 + 0.3 * u, 1.0 - 0.3 * u, 0.75 + 0.25 * np.sin(np.pi * u))[shape]
                synth.control_change(0, 11, int(127 * level))
        synth.generate_simple(_BLOCK, buffer=mv[b * bytes_per_block : (b + 1) * bytes_per_block])
    synth.sounds_off()
    mono = buf.reshape(-1, 2).mean(axis=1)
    if rate != sr:
        mono = resample_poly(mono.astype(np.float64), sr, rate).astype(np.float32)
    out = np.zeros(T, dtype=np.float32)
    out[: min(T, len(mono))] = mono[:T]
    return out
