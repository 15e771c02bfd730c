"""Models: AVGN and its baselines (EZ-VSL, Mix-and-Localize) plus non-learned priors.

- :mod:`avgn.models.config`    ``EncoderConfig``, ``AVGNConfig``, ``EZVSLConfig``, ``MALConfig``
- :mod:`avgn.models.encoders`  visual (ResNet-18 / EfficientNet-Lite0) and audio (ResNet-18) encoders
- :mod:`avgn.models.grouping`  class-token transformer and grouping block (softmax / hard / gumbel)
- :mod:`avgn.models.avgn`      ``AVGN``, ``select_sources``
- :mod:`avgn.models.ezvsl`     ``EZVSL`` (+ object-prior "OGL" fusion)
- :mod:`avgn.models.mal`       ``MixAndLocalize`` (K fixed audio slots, cycle random walk)
- :mod:`avgn.models.tvsl`      ``TVSL`` (text-anchored class-aware features, T-VSL)
- :mod:`avgn.models.priors`    ``centre_prior``, ``object_prior``, ``fuse_with_prior``

The losses live in :mod:`avgn.losses`; the methods that build these models by name, in
:mod:`avgn.methods` (``create_model``).
"""

from __future__ import annotations

from avgn.models.avgn import AVGN, select_sources
from avgn.models.config import AVGNConfig, EncoderConfig, EZVSLConfig, MALConfig, TVSLConfig
from avgn.models.encoders import AudioEncoder, VisualEncoder
from avgn.models.ezvsl import EZVSL
from avgn.models.grouping import GroupingBlock, TokenTransformer
from avgn.models.mal import MixAndLocalize
from avgn.models.tvsl import TVSL
from avgn.models.priors import centre_prior, fuse_with_prior, object_prior

__all__ = [
    "AVGN",
    "AVGNConfig",
    "AudioEncoder",
    "EZVSL",
    "EZVSLConfig",
    "EncoderConfig",
    "GroupingBlock",
    "MALConfig",
    "MixAndLocalize",
    "TVSL",
    "TVSLConfig",
    "TokenTransformer",
    "VisualEncoder",
    "centre_prior",
    "fuse_with_prior",
    "object_prior",
    "select_sources",
]
