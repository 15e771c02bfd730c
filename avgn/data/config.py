"""Dataset-size profiles for the embedded benchmark (owned by :mod:`avgn.data.build`).

A :class:`DataConfig` fixes everything that changes the *content* of a build: how many scenes of
each kind, how big the audio pools are, which classes / styles / audio sources are held out, and
the ranges every random draw comes from. Two builds with the same config and seed are
byte-identical (see :func:`avgn.data.build.build_dataset`). Settings that change only *how* a build
runs (number of worker processes, progress bars) are arguments of ``build_dataset`` instead.

Counts are per split; every ``*_per_class`` count is multiplied by the number of classes eligible
for that split, so even the ``smoke`` profile shows every class.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from avgn.io import config_from_dict, config_to_dict

#: Task name -> number of sounding sources.
TASK_SOURCES: dict[str, int] = {"solo": 1, "duet": 2, "trio": 3, "quartet": 4}


@dataclass(frozen=True)
class DataConfig:
    """How the embedded benchmark is built. One instance per profile in :data:`DATA_PROFILES`.

    Attributes:
        image_size: side of a single frame in pixels (``scene`` frames are square; a ``concat``
            frame is two of them side by side, ``image_size`` x ``2 * image_size``).
        sample_rate: audio sample rate (Hz) of every stored clip and mixture.
        clip_seconds: length of every clip and mixture (s).
        clips_per_source: size of the clip pool rendered for every (class, audio source) pair.
        clip_split: fractions of every pool given to train / val / test (pool entries are disjoint
            across splits; a pool of a held-out class or the held-out audio source goes to test).
        train_solo_per_class: single-source training scenes per class.
        train_duets: pre-built two-source ``scene``-layout training scenes (training ``concat``
            duets are composed on the fly from the solo scenes by
            :class:`avgn.data.datasets.OnTheFlyMixtureDataset`).
        val_solo_per_class / val_duets: validation scenes (``val_duets`` per layout).
        test_solo_per_class / test_multi: main test scenes; ``test_multi`` scenes per
            (number of sources, layout): duets in both layouts, trios and quartets as ``scene``.
        shift_solo_per_class / shift_duets: scenes in each shifted test split (held-out style,
            held-out audio source, zero-shot classes, real recordings only); ``shift_duets`` per
            layout.
        sprites_per_class: use at most this many pictures per class (0: all), picked round-robin over
            the visual sources so that styles stay mixed; the held-out style's pictures are kept
            (a small profile then decodes fewer sprites).
        heldout_classes: classes never seen in train / val (zero-shot split ``test_zeroshot``).
        heldout_visual_source: visual source (e.g. one emoji set) used only in ``test_style``.
        heldout_audio_source: audio source (e.g. one soundfont) used only in ``test_audio``.
        real_audio_in_train: whether recorded (non-synthesised) clips also feed train / val. The
            ``test_real`` split always uses only the test part of the recorded pools. (The animals
            have recordings only, so they need it. A recorded pool's clips are different crops --
            with speed and gain changes -- of the same one to four recordings, so its train and
            test parts are disjoint clips but not independent recordings.)
        distractors: inclusive range of silent distractor objects (other classes) per frame.
        scale_solo / scale_multi: range of an object's longer side as a fraction of the frame
            side, for frames with one object / several objects.
        rotation_deg: objects are rotated by a uniform angle in ``[-rotation_deg, rotation_deg]``.
        color_jitter: brightness / contrast / saturation factors are drawn in ``1 +- color_jitter``.
        visibility_floor: a layout is redrawn when a sounding object keeps less than this fraction
            of its pixels visible after occlusion by objects pasted later.
        max_layout_tries: layout redraws before a distractor is dropped.
        gain_db_range: per-source gain (dB) relative to the loudness-normalised clip, uniform.
        noise_prob: probability that a mixture gets background noise.
        noise_snr_db: range of the mixture-to-noise ratio (dB), uniform.
        image_format: ``png`` (lossless, default) or ``jpg``.
        chunk_size: scenes per work unit (the unit of resuming and of parallel rendering).
    """

    image_size: int = 224
    sample_rate: int = 16000
    clip_seconds: float = 3.0

    clips_per_source: int = 10
    clip_split: tuple[float, float, float] = (0.6, 0.2, 0.2)

    train_solo_per_class: int = 100
    train_duets: int = 1000
    val_solo_per_class: int = 8
    val_duets: int = 150
    test_solo_per_class: int = 15
    test_multi: int = 200
    shift_solo_per_class: int = 6
    shift_duets: int = 80

    sprites_per_class: int = 0

    heldout_classes: tuple[str, ...] = ("owl", "frog", "elephant")
    heldout_visual_source: str = "twemoji"
    heldout_audio_source: str = "musescore"
    real_audio_in_train: bool = True

    distractors: tuple[int, int] = (0, 2)
    scale_solo: tuple[float, float] = (0.45, 0.8)
    scale_multi: tuple[float, float] = (0.32, 0.55)
    rotation_deg: float = 15.0
    color_jitter: float = 0.2
    visibility_floor: float = 0.3
    max_layout_tries: int = 40

    gain_db_range: tuple[float, float] = (-6.0, 6.0)
    noise_prob: float = 0.5
    noise_snr_db: tuple[float, float] = (10.0, 30.0)

    image_format: str = "png"
    chunk_size: int = 64

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists) — what ``build_config.json`` stores."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        """Inverse of :meth:`to_dict` (keys that are not fields are ignored)."""
        return config_from_dict(cls, d, ignore_unknown=True)

    def with_overrides(self, **overrides: Any) -> "DataConfig":
        """Return a copy with fields replaced (e.g. a smaller test build)."""
        return replace(self, **overrides)


DATA_PROFILES: dict[str, DataConfig] = {
    # CI: a few scenes per class and per task, tiny pools. Builds in well under 30 s.
    "smoke": DataConfig(
        clips_per_source=3,
        sprites_per_class=3,
        train_solo_per_class=2,
        train_duets=8,
        val_solo_per_class=1,
        val_duets=4,
        test_solo_per_class=1,
        test_multi=4,
        shift_solo_per_class=1,
        shift_duets=3,
        chunk_size=32,
    ),
    # The book's default: a few thousand training scenes; 24 recordings per audio source (the gpu
    # profile's pools): with 10, AVGN's presence prediction stops at duet F1 ~0.8 however long it
    # trains (chapter 2, "Does more training help?").
    "cpu": DataConfig(clips_per_source=24),
    # The paper-sized run on a GPU machine (>= 20k training scenes).
    "gpu": DataConfig(
        clips_per_source=24,
        train_solo_per_class=700,
        train_duets=8000,
        val_solo_per_class=20,
        val_duets=500,
        test_solo_per_class=40,
        test_multi=600,
        shift_solo_per_class=15,
        shift_duets=250,
        chunk_size=128,
    ),
}
