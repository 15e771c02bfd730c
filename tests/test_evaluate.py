"""Evaluation engine: source selection per method kind on hand-made maps, references, run files."""

from __future__ import annotations

import json

import pytest
import torch

from avgn.config import EvalConfig
from avgn.evaluate import (
    EvalSet,
    SetName,
    evaluate_reference,
    evaluate_sets,
    list_sets,
    predict_set,
    presence_metrics,
    score_set,
    selection_score,
    token_confusion,
)
from avgn.methods import Method, MethodPredictor, get_method

H = W = 32
C = 4


def _masks(n_sources: int, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples, ``n_sources`` disjoint vertical bands each; classes rotate through ``C``."""
    masks = torch.zeros(n, n_sources, H, W, dtype=torch.bool)
    classes = torch.zeros(n, n_sources, dtype=torch.long)
    band = W // (n_sources + 1)
    for i in range(n):
        for s in range(n_sources):
            masks[i, s, 4:28, s * band + 2 : (s + 1) * band] = True
            classes[i, s] = (i + s) % C
    return masks, classes


def _set(name: str, masks: torch.Tensor, classes: torch.Tensor) -> EvalSet:
    n = masks.shape[0]
    labels = torch.zeros(n, C)
    labels.scatter_(1, classes.clamp_min(0), 1.0)
    batch = {
        "spec": torch.zeros(n, 1, 8, 8),
        "masks": masks,
        "classes": classes,
        "labels": labels,
        "n_sources": (classes >= 0).sum(1),
        "scene_ids": [f"s{i}" for i in range(n)],
    }
    return EvalSet(SetName.parse(name), n, [batch])


def ReferencePredictor(name: str) -> MethodPredictor:
    """The predictor of a registered reference (no model)."""
    return MethodPredictor(get_method(name))


class _Stub(Method):
    """A method for the tests, not registered: its maps come from the batch (no model)."""

    label = "stub"

    def predict_batch(self, model, batch, device, bf16=False, channels_last=False):
        return self.maps(batch)


class _GroundTruthClassAware(_Stub):
    """A stub AVGN: the map of class c is the mask of the source of class c (zero otherwise)."""

    name, kind, modes = "stub-class-aware", "class_aware", ("oracle", "predicted")

    def __init__(self, probs: torch.Tensor | None = None):
        self.probs = probs

    def maps(self, batch):
        masks, classes = batch["masks"], batch["classes"]
        n = masks.shape[0]
        maps = torch.zeros(n, C, H, W)
        for i in range(n):
            for s in range(classes.shape[1]):
                if classes[i, s] >= 0:
                    maps[i, classes[i, s]] = masks[i, s].float()
        probs = batch["labels"] if self.probs is None else self.probs
        token_pred = torch.arange(C).expand(n, C).clone()  # a perfect token classifier
        return {"maps": maps, "audio_probs": probs, "token_pred": token_pred}


class _SwappedSlots(_Stub):
    """A stub Mix-and-Localize with K=2 slots: the first two sources' masks in reversed order."""

    name, kind = "stub-slots", "slots"

    def maps(self, batch):
        m = batch["masks"].float()
        slots = torch.stack([m[:, min(1, m.shape[1] - 1)], m[:, 0]], dim=1)
        return {"maps": slots}


class _UnionMap(_Stub):
    name, kind = "stub-shared", "shared"

    def maps(self, batch):
        return {"maps": batch["masks"].any(1, keepdim=True).float()}


def GroundTruthClassAware(probs: torch.Tensor | None = None) -> MethodPredictor:
    return MethodPredictor(_GroundTruthClassAware(probs))


def SwappedSlots() -> MethodPredictor:
    return MethodPredictor(_SwappedSlots())


def UnionMap() -> MethodPredictor:
    return MethodPredictor(_UnionMap())


@pytest.mark.parametrize("n_sources", [1, 2, 3])
def test_ground_truth_maps_score_one(n_sources):
    masks, classes = _masks(n_sources)
    name = f"test/{ {1: 'solo', 2: 'duet', 3: 'trio'}[n_sources] }/scene".replace(" ", "")
    res = evaluate_sets(GroundTruthClassAware(), [_set(name, masks, classes)], EvalConfig(), ("oracle", "predicted"))
    for mode in ("oracle", "predicted"):
        s = res["results"][name][mode]
        if n_sources == 1:
            assert s["ap"] == pytest.approx(1.0) and s["n"] == 3
        else:
            assert s["cap"] == pytest.approx(1.0) and s["piap"] == pytest.approx(1.0)
            assert s["n_pairs"] == 3 * n_sources
        assert s["token_accuracy"] == 1.0 and s["token_f1"] == 1.0
    assert res["results"][name]["predicted"]["presence_f1"] == 1.0
    assert selection_score(res["results"]) == pytest.approx(1.0)
    assert len([r for r in res["rows"] if r["mode"] == "oracle"]) == 3 * n_sources


def test_predicted_mode_scores_missed_classes_zero():
    masks, classes = _masks(2)
    probs = torch.zeros(3, C)
    for i in range(3):
        probs[i, classes[i, 0]] = 0.9  # only the first source of each mixture is detected
        probs[i, (classes[i, 1] + 1) % C] = 0.8  # plus one spurious class
    es = _set("test/duet/scene", masks, classes)
    res = evaluate_sets(GroundTruthClassAware(probs), [es], EvalConfig(), ("oracle", "predicted"))
    oracle, pred = res["results"]["test/duet/scene"]["oracle"], res["results"]["test/duet/scene"]["predicted"]
    assert oracle["cap"] == pytest.approx(1.0)
    assert pred["cap"] == pytest.approx(0.5)  # the missed sources score AP 0
    assert pred["presence_recall"] == pytest.approx(0.5) and pred["presence_precision"] == pytest.approx(0.5)
    rows = [r for r in res["rows"] if r["mode"] == "predicted"]
    assert [r["has_map"] for r in rows] == [True, False] * 3
    # PIAP may give the spurious class's (constant, empty-class) map to the missed source: a
    # constant map's AP is the mask's area fraction
    area = masks[:, 1].float().mean().item()
    assert pred["piap"] == pytest.approx((1.0 + area) / 2)


def test_slots_are_hungarian_matched_and_extra_sources_score_zero():
    masks, classes = _masks(2)
    res = evaluate_sets(SwappedSlots(), [_set("test/duet/scene", masks, classes)], EvalConfig(), ("oracle", "predicted"))
    s = res["results"]["test/duet/scene"]["oracle"]
    assert s["cap"] == pytest.approx(1.0) and s["piap"] == pytest.approx(1.0)
    assert res["results"]["test/duet/scene"]["predicted"] == s  # modes coincide for a class-agnostic method
    masks3, classes3 = _masks(3)
    s3 = evaluate_sets(SwappedSlots(), [_set("test/trio/scene", masks3, classes3)], EvalConfig(), ("oracle",))
    s3 = s3["results"]["test/trio/scene"]["oracle"]
    assert s3["cap"] == pytest.approx(2 / 3) and s3["piap"] == pytest.approx(2 / 3)  # K=2 slots, 3 sources


def test_shared_map_is_used_for_every_source():
    masks, classes = _masks(2)
    s = evaluate_sets(UnionMap(), [_set("test/duet/concat", masks, classes)], EvalConfig(), ("oracle",))
    s = s["results"]["test/duet/concat"]["oracle"]
    assert s["piap"] == pytest.approx(s["cap"])
    assert 0.4 < s["cap"] < 0.6  # the union map ranks both sources' pixels equally: AP = 1/2


def test_centre_reference_has_one_bump_per_frame():
    ref = ReferencePredictor("centre")
    single = ref({"spec": torch.zeros(2, 1, 4, 4), "visual_feats": torch.zeros(2, 8, 7, 7)})["maps"]
    concat = ref({"spec": torch.zeros(2, 1, 4, 4), "visual_feats": torch.zeros(2, 8, 7, 14)})["maps"]
    assert single.shape == (2, 1, 7, 7) and concat.shape == (2, 1, 7, 14)
    assert torch.equal(concat[..., :7], single) and torch.equal(concat[..., 7:], single)
    assert single[0, 0, 3, 3] == single.max()
    obj = ReferencePredictor("object")({"spec": torch.zeros(1, 1, 4, 4), "visual_feats": torch.rand(1, 8, 7, 7)})["maps"]
    assert obj.shape == (1, 1, 7, 7) and obj.min() == 0 and obj.max() == 1


def test_presence_metrics_and_token_confusion():
    probs = torch.tensor([[0.9, 0.1, 0.6, 0.0], [0.2, 0.3, 0.1, 0.0]])
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    m = presence_metrics(probs, labels)
    # sample 0 predicts {0, 2} (1 right, 1 wrong); sample 1 predicts its top class {1} (wrong)
    assert m["presence_precision"] == pytest.approx(1 / 3) and m["presence_recall"] == pytest.approx(1 / 2)
    assert m["count_acc"] == pytest.approx(0.5)
    masks, classes = _masks(2)
    es = _set("test/duet/scene", masks, classes)
    from avgn.evaluate import predict_set

    p = predict_set(GroundTruthClassAware(), es)
    conf = token_confusion(p)
    assert conf.shape == (C, C) and conf.trace() == conf.sum() == 6


def test_set_names():
    sn = SetName.parse("test_zeroshot/duet/concat")
    assert (sn.split, sn.task, sn.layout, sn.n_sources) == ("test_zeroshot", "duet", "concat", 2)
    with pytest.raises(ValueError, match="split/task/layout"):
        SetName.parse("test-duet")


# --------------------------------------------------------------------------------------------------
# on a (fake-asset) build: references end to end, files
# --------------------------------------------------------------------------------------------------


def test_reference_evaluation_writes_results(fake_build, tmp_path):
    assert list_sets(fake_build, "test") == [
        "test/solo/scene", "test/duet/concat", "test/duet/scene", "test/trio/scene", "test/quartet/scene",
    ]
    out = tmp_path / "centre"
    small = {"inputs.features.image_size": 96}  # 3x3 feature maps: cheap to cache
    payload = evaluate_reference("centre", fake_build, out, profile="smoke", split="test", device="cpu", progress=False, overrides=small)
    assert set(payload["results"]) == set(list_sets(fake_build, "test"))
    saved = json.loads((out / "eval_test.json").read_text())
    assert saved["results"] == json.loads(json.dumps(payload["results"]))
    import pandas as pd

    df = pd.read_csv(out / "eval_test.csv")
    assert {"method", "set", "mode", "metric", "value"} <= set(df.columns)
    assert set(df["mode"]) == {"oracle", "predicted"}
    samples = pd.read_csv(out / "eval_test_samples.csv")
    from avgn.data.manifest import load_manifest

    assert len(samples[samples["mode"] == "oracle"]) == int(load_manifest(fake_build, "test")["n_sources"].sum())
    sub = evaluate_reference("object", fake_build, tmp_path / "object", profile="smoke", sets=["test_style/duet/concat"], device="cpu", progress=False, write=False, overrides=small)
    assert list(sub["results"]) == ["test_style/duet/concat"]


def test_presence_threshold_is_chosen_by_f1_on_the_given_sets():
    """Probabilities 0.9 for the sounding classes, 0.7 for one silent class, 0.2 elsewhere: F1 is
    1 for any threshold in (0.7, 0.9] and lower below; CAP alone would favour selecting everything."""
    from avgn.evaluate import choose_presence_threshold

    masks, classes = _masks(2)
    probs = torch.full((3, C), 0.2)
    for i in range(3):
        probs[i, classes[i]] = 0.9
        probs[i, (classes[i, 1] + 1) % C] = 0.7
    es = _set("val/duet/scene", masks, classes)
    th, curve = choose_presence_threshold(GroundTruthClassAware(probs), [es], grid=(0.1, 0.5, 0.75, 0.85))
    assert th == 0.75  # F1 = 1 at 0.75 and 0.85; the tie goes to the value closest to 0.5
    by = {r["threshold"]: r for r in curve}
    assert by[0.75]["presence_f1"] == pytest.approx(1.0) and by[0.5]["presence_f1"] == pytest.approx(0.8)
    assert by[0.1]["presence_precision"] == pytest.approx(0.5) and by[0.1]["presence_recall"] == pytest.approx(1.0)
    # ... while CAP is blind to false positives: selecting every class (0.1) scores as well as the best F1
    p = predict_set(GroundTruthClassAware(probs), es)
    assert score_set(p, "predicted", EvalConfig(), 0.1)[0]["cap"] == pytest.approx(1.0)
    assert score_set(p, "predicted", EvalConfig(), 0.75)[0]["cap"] == pytest.approx(1.0)


def test_perfect_reference_scores_one_and_selection_score_modes():
    from avgn.evaluate import selection_score

    masks, classes = _masks(2)
    res = evaluate_sets(ReferencePredictor("perfect"), [_set("test/duet/scene", masks, classes)], EvalConfig(), ("oracle",))
    s = res["results"]["test/duet/scene"]["oracle"]
    assert s["cap"] == pytest.approx(1.0) and s["piap"] == pytest.approx(1.0) and s["ciou@0.3"] == pytest.approx(1.0)
    results = {"val/solo/scene": {"oracle": {"ap": 0.6}, "predicted": {"ap": 0.2}}, "val/duet/scene": {"oracle": {"cap": 0.4}, "predicted": {"cap": 0.2}}}
    assert selection_score(results, "oracle") == pytest.approx(0.5)
    assert selection_score(results, ("oracle", "predicted")) == pytest.approx(0.35)


# --------------------------------------------------------------------------------------------------
# label-free metrics (semantic AP / mIoU / F) and empty selections
# --------------------------------------------------------------------------------------------------
class _LoudSilentClasses(_GroundTruthClassAware):
    """A stub AVGN whose silent classes' maps light rows 28-31 (128 px, where nothing sounds) at the
    sounding maps' peak value."""

    name = "stub-loud-silent"

    def maps(self, batch):
        out = super().maps(batch)
        silent = out["maps"].flatten(2).amax(2) == 0  # [N, C]
        out["maps"][:, :, 28:, :] += silent[:, :, None, None].float()
        return out


def test_semantic_metrics_charge_false_selections_that_cap_ignores():
    masks, classes = _masks(2)  # two 192-px bands per frame; sample i sounds classes i and i + 1
    es = _set("test/duet/scene", masks, classes)
    p = predict_set(MethodPredictor(_LoudSilentClasses(torch.full((3, C), 0.9))), es)
    oracle, _ = score_set(p, "oracle", EvalConfig(), 0.5)
    every, rows = score_set(p, "predicted", EvalConfig(), 0.5)  # every class selected
    assert oracle["semantic_ap"] == oracle["semantic_miou"] == oracle["semantic_f"] == 1.0
    assert every["cap"] == 1.0 and every["piap"] == 1.0  # CAP / PIAP: selecting everything is the oracle
    # 384 positives tied at the top with 2 x 128 false pixels
    assert every["semantic_ap"] == pytest.approx(384 / 640, abs=1e-15)
    # class c sounds in a of the 3 samples (a = 1, 2, 2, 1) and is a false selection in the others
    a = torch.tensor([1.0, 2.0, 2.0, 1.0], dtype=torch.float64)
    tp, fp = 192 * a, 128 * (3 - a)
    assert every["semantic_miou"] == pytest.approx(float((tp / (tp + fp)).mean()), abs=1e-15)
    assert every["semantic_f"] == pytest.approx(float((1.3 * tp / (1.3 * tp + fp)).mean()), abs=1e-15)
    assert [r["semantic_ap"] for r in rows] == pytest.approx([0.6] * 6, abs=1e-15)


def test_predicted_selection_may_be_empty():
    masks, classes = _masks(2)
    probs = torch.full((3, C), 0.1)
    probs[0, classes[0, 0]] = 0.9  # only sample 0 selects a class (its first source's)
    p = predict_set(GroundTruthClassAware(probs), _set("test/duet/scene", masks, classes))
    s, rows = score_set(p, "predicted", EvalConfig(), 0.5)
    assert [r["has_map"] for r in rows] == [True, False] + [False, False] * 2
    assert s["cap"] == pytest.approx(1 / 6) and s["piap"] == pytest.approx(1 / 6)  # one source of six found
    assert [r["semantic_ap"] for r in rows[::2]] == [0.5, 0.0, 0.0]  # "nothing sounds" is wrong here: 0
    assert s["presence_precision"] == 1.0 and s["presence_recall"] == pytest.approx(1 / 6) and s["count_acc"] == 0.0
    # class 0 found in sample 0 (TP 192), every other sounding source missed
    # (class 1: 2 x 192 FN, class 2: 2 x 192 FN, class 3: 192 FN, class 0: none missed)
    assert s["semantic_miou"] == pytest.approx(1 / 4) and s["semantic_f"] == pytest.approx(1 / 4)
    solo_masks, solo_classes = _masks(1)
    solo = predict_set(GroundTruthClassAware(torch.full((3, C), 0.1)), _set("test/solo/scene", solo_masks, solo_classes))
    s1, _ = score_set(solo, "predicted", EvalConfig(), 0.5)
    assert s1["ap"] == 0.0 and s1["semantic_ap"] == 0.0 and s1["semantic_miou"] == 0.0 and s1["presence_f1"] == 0.0


def test_presence_metrics_with_an_empty_selection_allowed():
    probs = torch.tensor([[0.9, 0.1, 0.6, 0.0], [0.2, 0.3, 0.1, 0.0]])
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    m = presence_metrics(probs, labels, min_sources=0)
    # sample 0 predicts {0, 2} (1 right, 1 wrong); sample 1 predicts nothing (its source missed)
    assert m["presence_precision"] == pytest.approx(1 / 2) and m["presence_recall"] == pytest.approx(1 / 2)
    assert m["count_acc"] == 0.0
    nothing = presence_metrics(torch.zeros(2, C), labels, min_sources=0)
    assert nothing == {"presence_precision": 0.0, "presence_recall": 0.0, "presence_f1": 0.0, "count_acc": 0.0}


def test_class_agnostic_methods_get_the_favourable_semantic_reading():
    masks, classes = _masks(2)
    es = _set("test/duet/concat", masks, classes)
    res = evaluate_sets(UnionMap(), [es], EvalConfig(), ("oracle", "predicted"))["results"]["test/duet/concat"]
    # the union map stands for both sources: each class's copy ranks the other source's 192 px as
    # high as its own; binarised, it is the union (TP 192, FP 192 per class and sample)
    s = res["oracle"]
    assert s["semantic_ap"] == pytest.approx(0.5, abs=1e-15) and s["semantic_miou"] == pytest.approx(0.5, abs=1e-15)
    assert s["semantic_f"] == pytest.approx(1.3 / 2.3, abs=1e-15) and res["predicted"] == s
    masks3, classes3 = _masks(3)
    slots = evaluate_sets(SwappedSlots(), [_set("test/trio/scene", masks3, classes3)], EvalConfig(), ("oracle",))
    t = slots["results"]["test/trio/scene"]["oracle"]
    # K = 2 slots: the third source (144 px) of every trio is a miss; summed per class:
    # IoU 1/2 (class 0), 1 (class 1), 2/3 (class 2), 1/2 (class 3)
    assert t["semantic_ap"] == pytest.approx(2 / 3, abs=1e-15) and t["semantic_miou"] == pytest.approx(2 / 3, abs=1e-15)
