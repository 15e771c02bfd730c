"""From heatmaps to shape-aware masks (GSAVL, chapter 8): point prompts from a map
(:mod:`avgn.segment.prompts`), promptable segmenters — GrabCut as the offline substitute for Segment
Anything, and Segment Anything loaded from a user's checkpoint (:mod:`avgn.segment.segmenters`) —
and a small promptable decoder trained on the benchmark's object masks (:mod:`avgn.segment.decoder`).
The chapter's study (maps of the trained runs and the priors through samplers and segmenters, scored
with the AVSBench metrics) is :mod:`avgnbook.shape_masks`, a layer above.

OpenCV and ``segment-anything`` are the optional ``segment`` extra (``pip install -e ".[segment]"``);
they are imported only when a segmenter is built.
"""

from avgn.segment.prompts import GSAVL_ALPHA, SAMPLERS, PromptConfig, fuse_maps, is_flat, sample_points

__all__ = ["GSAVL_ALPHA", "SAMPLERS", "PromptConfig", "fuse_maps", "is_flat", "sample_points"]
