"""The book's run plan: every run chapters 00-09 read, by key, with the evaluations they read
(registered with the run store as the plan ``book``: the entry point ``avgn.plans`` in
``pyproject.toml``; ``avgn runs status`` reads it)."""

from __future__ import annotations

from typing import Any, Callable

from avgn.experiment import REFERENCES
from avgn.store.plan import Evaluation, PlannedRun, Study
from avgn.runs import Variant
from avgnbook.variants import (
    ASSIGNMENT_VARIANTS,
    BASELINE_DESIGN_VARIANTS,
    DEPTH_VARIANTS,
    DSOL_PUBLIC_STAGE1_VARIANT,
    DSOL_OVERCLUSTER_VARIANTS,
    DSOL_PUBLIC_VARIANT,
    DSOL_STAGE1_VARIANT,
    DSOL_VARIANT,
    LOSS_VARIANTS,
    MAIN_VARIANTS,
    NEGATIVES_VARIANT,
    PAPER_DESIGN_VARIANT,
    SHORT_VARIANT,
    TVSL_AUDIO_MAPS_VARIANT,
    TVSL_BARE_VARIANT,
    TVSL_DESIGN_SWEEP,
    TVSL_LEARNED_PRESENCE_VARIANT,
    TVSL_VARIANT,
    TVSL_HELDOUT_CANDIDATES,
    TVSL_PAPER_VARIANT,
    WIDTH_VARIANTS,
)

__all__ = ["book_plan", "SHIFT_SPLITS", "COMPOSED_SETS", "NEGATIVE_SETS", "ZEROSHOT_SPLIT", "FIXED_RULE_EVAL"]

#: Chapter 5: the domain-shift test splits.
SHIFT_SPLITS: tuple[str, ...] = ("test_style", "test_audio", "test_real")
#: Chapters 5 and 7: 3 and 4 sources side by side, composed from test scenes.
COMPOSED_SETS: tuple[str, ...] = ("test/trio/concat", "test/quartet/concat")
#: Chapter 5 (issue 30): the test solo and duet frames with negative audio (silence, the build's
#: noise, an off-screen clip), scored next to their own audio (:mod:`avgn.evaluate`, its negative-audio section). Planned for the
#: runs whose weights the store keeps (the references and the main comparison), so ``avgn runs
#: train`` re-scores them from the stored weights without retraining.
NEGATIVE_SETS: tuple[str, ...] = tuple(f"test/{t}/{c}" for t in ("solo", "duet") for c in ("silence", "noise", "offscreen"))
#: Chapter 9: the held-out (zero-shot) classes' test split.
ZEROSHOT_SPLIT = "test_zeroshot"
#: Chapter 3: the test duets' cIoU under an area-independent binarisation (min-max normalised map >=
#: 0.5) instead of the protocol's median rule; planned for the runs whose weights the store keeps.
FIXED_RULE_EVAL = Evaluation("test_fixed", "test", ("test/duet/concat", "test/duet/scene"),
                             (("binarize_rule", "fixed"), ("binarize_value", 0.5)))




def _evals(*tags: str, composed: bool = False, negative: bool = False) -> tuple[Evaluation, ...]:
    out = [Evaluation(t, t) for t in tags]
    if composed:
        out.append(Evaluation("composed", "test", COMPOSED_SETS))
    if negative:
        out.append(Evaluation("negative", "test", NEGATIVE_SETS))
    return tuple(out)


# --------------------------------------------------------------------------------------------------
def book_plan(profile: str = "cpu") -> dict[str, PlannedRun]:
    """Every run chapters 00-09 read under ``profile``, by key, in training priority order (the
    main comparison first, then what each later chapter adds)."""
    from avgn.config import get_profile

    seeds = tuple(get_profile(profile).seeds)
    main_evals = _evals("test", *SHIFT_SPLITS, ZEROSHOT_SPLIT, composed=True, negative=True)
    runs: list[PlannedRun] = []

    def add(variants: tuple[Variant, ...], evals: tuple[Evaluation, ...], chapters: tuple[str, ...], seed_list=seeds,
            weights: str = "all", rescored: tuple[Evaluation, ...] = ()) -> None:
        """``weights``: which seeds' weights the store keeps — ``all``, ``first`` (the seed a chapter
        loads the model of) or ``none`` (read by their evaluations only: the store stays <= 250 MB);
        ``rescored``: evaluations only the runs with weights get (a new one re-scores them, never retrains)."""
        for s in seed_list:
            for v in variants:
                keep = weights == "all" or (weights == "first" and s == seed_list[0])
                runs.append(PlannedRun(v, int(s), profile, evals + (rescored if keep else ()), chapters, keep_weights=keep))

    def add_study(name: str, train: Callable[..., None], chapter: str, sources: tuple[tuple[Any, ...], ...], every_seed: bool) -> None:
        """A chapter's analysis of stored runs, computed once as a study of the store: ``sources`` are
        ``(run-key prefix, ...)``; it needs their first seed's runs, or with ``every_seed`` every seed's."""
        needs = tuple(f"{src[0]}/seed{s}" for src in sources for s in (seeds if every_seed else seeds[:1]))
        runs.append(PlannedRun(None, seeds[0], profile, (), (chapter,), study=Study(name, 1, train, (("sources", sources),), needs=needs)))

    # priority: what the book's next changes cannot make stale first (the references, the class-agnostic
    # baselines), then AVGN, its variants, and DSOL / T-VSL (being fixed) last
    for name in REFERENCES:
        runs.append(PlannedRun(None, -1, profile, main_evals + (FIXED_RULE_EVAL,), ("03", "04", "05", "07", "08", "09"), reference=name))
    baselines = tuple(v for v in MAIN_VARIANTS if v.method != "avgn")
    add(baselines, main_evals, ("03", "04", "05", "06", "07", "08", "09"), rescored=(FIXED_RULE_EVAL,))
    add(BASELINE_DESIGN_VARIANTS, _evals("test"), ("03",), weights="first")
    # chapter 3's "do the baselines learn?" diagnostics of every stored baseline run (once, here)
    from avgn.methods import get_method
    from avgnbook.diagnostics import baseline_study

    designs = [v for v in MAIN_VARIANTS if get_method(v.method).kind != "class_aware" and not v.eval_overrides] + list(BASELINE_DESIGN_VARIANTS)
    add_study("baseline-reports", baseline_study, "03", tuple((v.name or v.method, v.label, v.method) for v in designs), every_seed=True)
    # AVGN for every seed; its public-code-target reading (chapter 3's design comparison) and the
    # negative-audio training (chapter 5) keep their first seed's weights, the others their evaluations
    avgn_main = tuple(v for v in MAIN_VARIANTS if v.method == "avgn")
    add(avgn_main[:1], main_evals, ("02", "03", "04", "05", "06", "07", "08", "09"), rescored=(FIXED_RULE_EVAL,))
    add(avgn_main[1:], main_evals, ("03", "04", "05", "06"), weights="first", rescored=(FIXED_RULE_EVAL,))  # chapters 2, 7-9 read AVGN alone
    add((NEGATIVES_VARIANT,), _evals("test", negative=True), ("05",), weights="first")
    add((SHORT_VARIANT,), _evals("test"), ("02", "04"), weights="first")
    add((PAPER_DESIGN_VARIANT,), _evals("test"), ("02",), weights="first")
    add(WIDTH_VARIANTS, _evals("test"), ("02", "04"), weights="first")
    # chapter 2's presence-threshold rules: three stored AVGN runs' test duets under three F-beta thresholds (once, here),
    # and the book's AVGN, every seed, on the validation and test duets under four (the rule chosen on validation)
    from avgnbook.analysis import presence_rule_choice_study, presence_rule_study

    add_study("presence-rule-choice", presence_rule_choice_study, "02", ((avgn_main[0].name or avgn_main[0].method, avgn_main[0].label),),
              every_seed=True)

    add_study("presence-rules", presence_rule_study, "02", tuple((v.name or v.method, v.label) for v in (avgn_main[0], SHORT_VARIANT, WIDTH_VARIANTS[0])),
              every_seed=False)
    from avgnbook.diagnostics import presence_cnn_study  # chapter 2's plain-CNN presence reference (a study, not a method)

    factor = {"smoke": 1}.get(profile, 4)
    runs.append(PlannedRun(None, seeds[0], profile, (), ("02",), study=Study("presence-cnn", 1, presence_cnn_study, (("factor", factor),))))
    add(DEPTH_VARIANTS + ASSIGNMENT_VARIANTS + LOSS_VARIANTS, _evals("test"), ("04",), weights="none")
    # chapter 4's binarisation rules: every main method's first-seed predictions re-scored seven ways (once, here)
    from avgnbook.analysis import binarization_study

    add_study("binarization-study", binarization_study, "04", tuple((v.name or v.method, v.label, v.eval_overrides) for v in MAIN_VARIANTS),
              every_seed=False)
    from avgnbook.shape_masks import decoder_study  # chapter 8's promptable decoder (a study, not a method)

    runs.append(PlannedRun(None, seeds[0], profile, (), ("08",), study=Study("point-decoder", 1, decoder_study)))
    # chapter 8's grid of masks (GrabCut is slow): the stored AVGN and EZ-VSL runs of every seed and the decoder
    from avgnbook.shape_masks import mask_grid_study

    mask_sources = tuple((v.name or v.method, v.label) for v in MAIN_VARIANTS if v.label in ("AVGN", "EZ-VSL"))
    mask_needs = tuple(f"{k}/seed{s}" for k, _ in mask_sources for s in seeds) + (f"point-decoder/seed{seeds[0]}",)
    runs.append(PlannedRun(None, seeds[0], profile, (), ("08",), study=Study(
        "mask-study", 1, mask_grid_study, (("sources", mask_sources), ("decoder", mask_needs[-1])), needs=mask_needs)))
    add((DSOL_STAGE1_VARIANT,), _evals("test"), ("07",))
    add((DSOL_VARIANT,), _evals("test", composed=True, negative=True), ("05", "07"))
    # chapter 7's silent visible objects: DSOL's and AVGN's maps of every stored seed on the test scenes (once, here)
    from avgnbook.analysis import silent_object_study

    add_study("silent-objects", silent_object_study, "07", tuple((v.name or v.method, v.label, v.method) for v in (DSOL_VARIANT, avgn_main[0])),
              every_seed=True)
    # T-VSL's weights (read with the audio feature: the paper's maps) before the book's read of them
    # (anchor maps); both also on validation, where the read was chosen
    add((TVSL_AUDIO_MAPS_VARIANT,), _evals("val", "test", ZEROSHOT_SPLIT), ("09",))
    add((TVSL_VARIANT,), _evals("val", "test", ZEROSHOT_SPLIT, negative=True), ("05", "09"))
    add((TVSL_HELDOUT_CANDIDATES,), _evals(ZEROSHOT_SPLIT), ("09",))
    add((TVSL_LEARNED_PRESENCE_VARIANT,), _evals("test", ZEROSHOT_SPLIT), ("09",), weights="first")
    add((TVSL_BARE_VARIANT,), _evals("test", ZEROSHOT_SPLIT), ("09",), weights="none")
    # the designs of the public code (DSOL) and of the paper (T-VSL's four losses): chapter 7's and 9's
    # diagnosis reads the first seed's weights (stage 1: its maps and clusters)
    add((DSOL_PUBLIC_STAGE1_VARIANT,), _evals("test"), ("07",), weights="first")
    add((DSOL_PUBLIC_VARIANT,), _evals("test"), ("07",), weights="none")
    # chapter 7's search for a DSOL that selects its sources (one seed, both stages; the first stage's weights for the second);
    # not on the smoke build: its 72 distinct training objects cannot make 74 clusters
    if profile != "smoke":
        add(DSOL_OVERCLUSTER_VARIANTS, _evals("test"), ("07",), seed_list=seeds[:1])
    add((TVSL_PAPER_VARIANT,), _evals("test", ZEROSHOT_SPLIT), ("09",), weights="first")
    add(TVSL_DESIGN_SWEEP, _evals("test", ZEROSHOT_SPLIT), ("09",), seed_list=seeds[:1])
    plan: dict[str, PlannedRun] = {}
    for r in runs:
        if r.key in plan:
            raise ValueError(f"the plan declares {r.key!r} twice")
        plan[r.key] = r
    for r in plan.values():  # every run it depends on is declared
        for dep in r.dependencies:
            if dep not in plan:
                raise ValueError(f"{r.key!r} needs {dep!r}, which the plan does not declare")
    return plan
