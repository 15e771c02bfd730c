"""The configurations the book compares, as typed :class:`avgn.runs.Variant` s, by chapter, and
their groups (:data:`VARIANT_GROUPS`). The run plan (:mod:`avgnbook.plan`) declares which of them the
book reads, for which seeds."""

from __future__ import annotations

from typing import Any

from avgn.data.config import DataConfig
from avgn.methods.avgn import PAPER_DESIGN
from avgn.methods.dsol import PUBLIC_DESIGN as PUBLIC_DSOL_DESIGN
from avgn.methods.dsol import DSOLConfig
from avgn.runs import Variant

__all__ = ["MAIN_VARIANTS", "BASELINE_DESIGN_VARIANTS", "PAPER_DESIGN_VARIANT", "ABLATION_SCHEDULE", "SHORT_VARIANT", "DEPTH_VARIANTS", "ASSIGNMENT_VARIANTS", "LOSS_VARIANTS", "WIDTH_VARIANTS", "NEGATIVES_VARIANT", "DSOL_STAGE1_VARIANT", "DSOL_VARIANT", "DSOL_PUBLIC_STAGE1_VARIANT", "DSOL_PUBLIC_VARIANT", "DSOL_OVERCLUSTER_VARIANTS", "TVSL_VARIANT", "TVSL_AUDIO_MAPS_VARIANT", "TVSL_VARIANTS", "TVSL_LEARNED_PRESENCE_VARIANT", "TVSL_BARE_VARIANT", "TVSL_PAPER_VARIANT", "TVSL_DESIGN_SWEEP", "TVSL_HELDOUT_CANDIDATES", "VARIANT_GROUPS"]


#: Chapter 4's ablations and chapter 2's paper design train on the 6-epoch schedule with early stopping (:data:`SHORT_VARIANT`, their
#: reference row), not the profile's 16 epochs: 27 ablation runs (9 variants x 3 seeds) at 16 epochs
#: would cost ~19 h of 2-core time, at 6 epochs about 40 % of it.
ABLATION_SCHEDULE: tuple[tuple[str, Any], ...] = (("train.epochs", 6), ("train.early_stopping_patience", 3))
#: Chapter 3: every method, and the two readings of AVGN's and EZ-VSL's public code.
MAIN_VARIANTS: tuple[Variant, ...] = (
    Variant("AVGN", "avgn"),
    Variant("AVGN (public-code target)", "avgn", overrides=(("model.loc_target", "public"),), name="avgn-public"),
    Variant("EZ-VSL", "ezvsl"),
    Variant("EZ-VSL + object prior", "ezvsl", eval_overrides=(("object_prior_alpha", 0.4),), name="ezvsl-ogl"),
    Variant("Mix-and-Localize", "mal"),
)
#: Chapter 3, "Do the baselines learn?": the baselines as their public code builds them (EZ-VSL at the
#: public contrastive temperature 0.03) or as this book's earlier defaults did (EZ-VSL with a batch norm
#: on the audio embedding; Mix-and-Localize walking over every frame of the batch), against which the
#: defaults' departures are measured.
BASELINE_DESIGN_VARIANTS: tuple[Variant, ...] = (
    Variant("EZ-VSL (public code: temperature 0.03)", "ezvsl", overrides=(("model.tau", 0.03),), name="ezvsl-tau003"),
    Variant("EZ-VSL (audio batch norm)", "ezvsl", overrides=(("model.audio_norm", "batchnorm"),), name="ezvsl-batchnorm"),
    Variant("Mix-and-Localize (batch frame graph)", "mal", overrides=(("model.graph", "frames"),), name="mal-frames"),
)
#: Chapter 2: AVGN exactly as the paper and its released code design it (shared presence head, every
#: loss weight 1), against which chapter 2 diagnoses why it does not learn from the audio.
PAPER_DESIGN_VARIANT = Variant(
    "AVGN (paper design)", "avgn", overrides=ABLATION_SCHEDULE + tuple((f"model.{k}", v) for k, v in PAPER_DESIGN.items()), name="avgn-paper-design",
)
#: Chapter 2: what training buys: AVGN on the profile's earlier schedule, 6 epochs with early stopping
#: after 3 epochs without a better validation score (the profile trains 16 epochs, every one).
SHORT_VARIANT = Variant("AVGN, 6 epochs (early stopping)", "avgn", overrides=(("train.epochs", 6), ("train.early_stopping_patience", 3)),
                        name="avgn-6ep", factor="training epochs", level=6)
#: Chapter 4: depth of the per-modality transformers (the profile's own depth is :data:`SHORT_VARIANT`).
DEPTH_VARIANTS: tuple[Variant, ...] = tuple(
    Variant(f"depth {d}", "avgn", overrides=ABLATION_SCHEDULE + (("model.depth", d),), name=f"avgn-depth{d}", factor="depth", level=d) for d in (1, 3, 6, 12)
)
#: Chapter 4: how features are assigned to class tokens (Softmax is the plain AVGN run).
ASSIGNMENT_VARIANTS: tuple[Variant, ...] = (
    Variant("Hard-Softmax", "avgn", overrides=ABLATION_SCHEDULE + (("model.assignment", "hard"),), name="avgn-hard", factor="assignment", level="hard"),
    Variant("Gumbel-Softmax", "avgn", overrides=ABLATION_SCHEDULE + (("model.assignment", "gumbel"),), name="avgn-gumbel", factor="assignment", level="gumbel"),
)
#: Chapter 4: losses removed (Eq. 10 against the public-code target is in :data:`MAIN_VARIANTS`).
LOSS_VARIANTS: tuple[Variant, ...] = (
    Variant("without token loss", "avgn", overrides=ABLATION_SCHEDULE + (("model.w_token", 0.0),), name="avgn-no-token", factor="loss", level="no token"),
    Variant("without presence losses", "avgn", overrides=ABLATION_SCHEDULE + (("model.w_audio_cls", 0.0), ("model.w_visual_cls", 0.0)), name="avgn-no-presence",
            factor="loss", level="no presence"),
)
#: Chapter 4: the width of the audio ResNet-18 (the ``cpu`` profile's is 0.5, the paper's 1.0; the
#: profile's own width is the plain AVGN run). Not a claim of the paper: how much the audio side's
#: capacity limits presence prediction and label-free selection at this budget.
WIDTH_VARIANTS: tuple[Variant, ...] = (
    Variant("audio width 0.25", "avgn", overrides=ABLATION_SCHEDULE + (("model.encoder.audio_width", 0.25),), name="avgn-audio-width0.25", factor="audio width",
            level=0.25),
)
#: Chapter 5 (issue 30): AVGN trained with a fifth of its items on negative audio (silence, or the
#: scene's noise alone, with no sounding label: ``train.negative_items``), so that its presence heads
#: can say that nothing sounds; compared with AVGN on the negative-audio sets and on the test split.
NEGATIVES_VARIANT = Variant("AVGN trained on negative audio", "avgn", overrides=(("train.negative_items", 0.2),), name="avgn-negatives",
                            factor="negative items", level=0.2)
#: Chapter 7: DSOL's two stages — stage 1 on single-source scenes only, stage 2 on mixtures only,
#: initialised from stage 1's run of the same seed.
DSOL_STAGE1_VARIANT = Variant("DSOL stage 1", "dsol", overrides=(("model.stage", 1), ("train.concat_items", 0), ("train.scene_items", 0)),
                              name="dsol-stage1")
#: Stage 2 trains on the shared 6-epoch schedule with early stopping (the public code: 5 epochs), stage 1
#: on the profile's DSOL budget (``cpu``: 16 epochs, as AVGN).
DSOL_VARIANT = Variant("DSOL", "dsol", overrides=(("model.stage", 2), ("train.solo_items", 0)) + ABLATION_SCHEDULE, name="dsol",
                       init_from=DSOL_STAGE1_VARIANT)
#: Chapter 7's diagnosis: DSOL as the public code designs it (:data:`avgn.methods.dsol.PUBLIC_DESIGN`:
#: the BCE correspondence, the absolute region threshold, K-means on the backbone features, fresh
#: clusters every epoch), both stages, on the same data, seeds and budget as this book's DSOL.
_DSOL_PUBLIC = tuple((f"model.{k}", v) for k, v in PUBLIC_DSOL_DESIGN.items())
DSOL_PUBLIC_STAGE1_VARIANT = Variant("DSOL stage 1 (public design)", "dsol", overrides=DSOL_STAGE1_VARIANT.overrides + _DSOL_PUBLIC,
                                     name="dsol-public-stage1", factor="design", level="public code")
DSOL_PUBLIC_VARIANT = Variant("DSOL (public design)", "dsol", overrides=DSOL_VARIANT.overrides + _DSOL_PUBLIC, name="dsol-public",
                              init_from=DSOL_PUBLIC_STAGE1_VARIANT, factor="design", level="public code")
#: Chapter 7's search for a DSOL that selects its sources: twice as many clusters as classes, each
#: named with its majority class (``cluster_mapping='majority'``: a class split over clusters keeps
#: them all; its presence is their summed probability), and the same with stage 1's mixture term at
#: weight 3 (its audio classifier puts both classes of a duet in its top two on a seventh of the duets
#: at weight 1). One seed each, both stages.
_OVERCLUSTER = (("model.num_clusters", 2 * DSOLConfig().num_classes), ("model.cluster_mapping", "majority"))
DSOL_OVERCLUSTER_VARIANTS: tuple[Variant, ...] = ()
for _name, _label, _extra in (("dsol-overcluster", "2K clusters, majority naming", ()),
                              ("dsol-overcluster-mix3", "2K clusters, majority naming, mixture weight 3", (("model.mix_weight", 3.0),))):
    _s1 = Variant(f"DSOL stage 1 ({_label})", "dsol", overrides=DSOL_STAGE1_VARIANT.overrides + _OVERCLUSTER + _extra, name=f"{_name}-stage1",
                  factor="clusters", level=_label)
    DSOL_OVERCLUSTER_VARIANTS += (_s1, Variant(f"DSOL ({_label})", "dsol", overrides=DSOL_VARIANT.overrides + _OVERCLUSTER + _extra, name=_name,
                                                init_from=_s1, factor="clusters", level=_label))
#: Chapter 9: T-VSL as this book trains it (``TVSLConfig``'s defaults: MiniLM anchors of two prompt
#: templates averaged, the class-feature presence term with a fixed boundary at ``cos = 0.5`` and
#: weight 5, so that a silent class's feature must move below the boundary), its maps read two ways
#: from the same weights: with each class's text anchor as the query (``map_query='anchor'``: the
#: book's T-VSL, the read that validates best) and with the class-aware audio feature (the paper's read).
TVSL_VARIANT = Variant("T-VSL (MiniLM anchors)", "tvsl", eval_overrides=(("map_query", "anchor"),), name="tvsl-anchor-maps",
                       factor="map query", level="anchor")
TVSL_AUDIO_MAPS_VARIANT = Variant("T-VSL (audio-query maps)", "tvsl", factor="map query", level="audio")
TVSL_VARIANTS: tuple[Variant, ...] = (TVSL_VARIANT, TVSL_AUDIO_MAPS_VARIANT)
#: Chapter 9's diagnosis: the class-feature presence term with a *learned* boundary (scale and bias
#: trained, from ``10 cos - 2``) at weight 1 — the book's T-VSL before chapter 9 found the boundary
#: moving to where the features of sounding and silent classes already fall.
_LEARNED_PRESENCE = (("model.feat_affine", "learned"), ("model.w_feat", 1.0))
TVSL_LEARNED_PRESENCE_VARIANT = Variant("T-VSL (learned presence boundary)", "tvsl", overrides=_LEARNED_PRESENCE, name="tvsl-learned-presence",
                                        factor="presence boundary", level="learned")
#: Chapter 9's prompt template: the bare class name as the only prompt (what the public code feeds its
#: text tower), against the two templates averaged, both on the learned presence boundary.
TVSL_BARE_VARIANT = Variant("T-VSL (bare name, learned presence boundary)", "tvsl", overrides=(("model.templates", ("{}",)),) + _LEARNED_PRESENCE,
                            name="tvsl-bare", factor="templates", level="bare name")
#: Chapter 9's search for the class-feature term that makes T-VSL's features depend on the audio: the
#: fixed boundary moved from ``cos = 0.5`` to ``0.2`` (a silent class's feature must point away from its
#: anchor, not merely below the middle), and the same with the per-source localization term at weight 3
#: (the maps are read from the similarity that term trains). One seed each, against the default's
#: fixed boundary at ``cos = 0.5`` (``10 (cos - 0.5)`` at weight 5), chosen on validation.
_FIXED_LOW = (("model.feat_affine", "fixed"), ("model.w_feat", 5.0), ("model.feat_boundary", 0.2))
TVSL_DESIGN_SWEEP: tuple[Variant, ...] = (
    Variant("T-VSL (fixed boundary 0.2)", "tvsl", overrides=_FIXED_LOW + (("model.w_loc", 1.0),), name="tvsl-boundary0.2", factor="presence boundary",
            level=0.2),
    Variant("T-VSL (fixed boundary 0.2, localization weight 3)", "tvsl", overrides=_FIXED_LOW + (("model.w_loc", 3.0),), name="tvsl-boundary0.2-loc3",
            factor="localization weight", level=3.0),
)
#: Chapter 9's diagnosis: T-VSL as the paper and its code design it: the four losses only, with equal
#: weights (``w_feat = w_loc = 0``: neither the class-feature presence term nor the per-source
#: localization term; ``w_ml = 1``) and the public code's ``l2`` token weighting, on the same data, seeds
#: and budget.
TVSL_PAPER_VARIANT = Variant("T-VSL (paper's design)", "tvsl",
                             overrides=(("model.w_feat", 0.0), ("model.w_loc", 0.0), ("model.w_ml", 1.0), ("model.token_weighting", "l2")),
                             name="tvsl-paper",
                             factor="design", level="paper's")
#: Chapter 9: the book's T-VSL (its weights and anchor maps), ``predicted`` selection choosing among the held-out classes only
#: (the classic zero-shot protocol; the plain run chooses among all classes: generalised zero-shot).
#: Meant for the ``test_zeroshot`` split.
TVSL_HELDOUT_CANDIDATES = Variant(
    "T-VSL (MiniLM anchors), held-out candidates", "tvsl", eval_overrides=(("candidate_classes", DataConfig().heldout_classes),) + TVSL_VARIANT.eval_overrides,
    name="tvsl-heldout-candidates", factor="candidates", level="held-out classes",
)
#: The groups of variants by name (``scripts/run_variants.py --group``, the chapters).
VARIANT_GROUPS: dict[str, tuple[Variant, ...]] = {
    "main": MAIN_VARIANTS,
    "baselines": BASELINE_DESIGN_VARIANTS,
    "paper": (PAPER_DESIGN_VARIANT,),
    "depth": DEPTH_VARIANTS,
    "assignment": ASSIGNMENT_VARIANTS,
    "loss": LOSS_VARIANTS,
    "width": WIDTH_VARIANTS,
    "short": (SHORT_VARIANT,),
    "negatives": (NEGATIVES_VARIANT,),
    "ablations": DEPTH_VARIANTS + ASSIGNMENT_VARIANTS + LOSS_VARIANTS + WIDTH_VARIANTS,
    "dsol": (DSOL_STAGE1_VARIANT, DSOL_VARIANT),
    "dsol-public": (DSOL_PUBLIC_STAGE1_VARIANT, DSOL_PUBLIC_VARIANT),
    "dsol-overcluster": DSOL_OVERCLUSTER_VARIANTS,
    "text": TVSL_VARIANTS + (TVSL_HELDOUT_CANDIDATES,),
    "text-paper": (TVSL_PAPER_VARIANT,),
    "text-templates": (TVSL_BARE_VARIANT,),
    "text-presence": (TVSL_LEARNED_PRESENCE_VARIANT,),
    "text-sweep": TVSL_DESIGN_SWEEP,
}
