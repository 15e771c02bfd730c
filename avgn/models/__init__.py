"""Models: the blocks the methods share, and the non-learned priors. Each method's own model, with
its configuration, loss and registration, lives in its module of :mod:`avgn.methods` (``AVGN`` in
:mod:`avgn.methods.avgn`, ``EZVSL`` in :mod:`avgn.methods.ezvsl`, ``MixAndLocalize`` in
:mod:`avgn.methods.mal`, ``DSOL`` in :mod:`avgn.methods.dsol`, ``TVSL`` in :mod:`avgn.methods.tvsl`).

- :mod:`avgn.models.config`    ``EncoderConfig`` and the option tables the methods' configurations check against
- :mod:`avgn.models.encoders`  visual (ResNet-18 / EfficientNet-Lite0) and audio (ResNet-18) encoders
- :mod:`avgn.models.grouping`  class-token transformer and grouping block (softmax / hard / gumbel)
- :mod:`avgn.models.selection` ``select_sources``: which classes' maps to show (ground truth, or heard)
- :mod:`avgn.models.priors`    ``centre_prior``, ``object_prior``, ``fuse_with_prior``

The shared losses live in :mod:`avgn.losses`.
"""

from __future__ import annotations

from avgn.models.config import EncoderConfig
from avgn.models.encoders import AudioEncoder, VisualEncoder
from avgn.models.grouping import GroupingBlock, TokenTransformer
from avgn.models.priors import centre_prior, fuse_with_prior, object_prior
from avgn.models.selection import select_sources

__all__ = [
    "AudioEncoder",
    "EncoderConfig",
    "GroupingBlock",
    "TokenTransformer",
    "VisualEncoder",
    "centre_prior",
    "fuse_with_prior",
    "object_prior",
    "select_sources",
]
