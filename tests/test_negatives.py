"""Negative-audio evaluation (issue 30, item 3): the sets (silence, the build's noise, an off-screen
clip), the false-alarm and map-dependence scores on hand-made predictions, the class-agnostic
detection threshold, and the sets end to end on a (fake-asset) build."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from avgn.config import EvalConfig
from avgn.evaluate import SetName, SetPredictions, is_negative, negative_set, negative_set_names
from avgn.methods import Method, MethodPredictor
from avgn.evaluate import Detection, choose_detection_threshold, evaluate_negative, reported, score_negative
from helpers import tiny_experiment

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = tiny_experiment().inputs.spec


# --------------------------------------------------------------------------------------------------
# the sets
# --------------------------------------------------------------------------------------------------
def test_negative_set_names():
    assert negative_set_names("test") == ("test/solo/silence", "test/solo/noise", "test/solo/offscreen",
                                         "test/duet/silence", "test/duet/noise", "test/duet/offscreen")
    assert is_negative("test/solo/silence") and is_negative("val/duet/offscreen")
    assert not is_negative("test/solo/scene") and not is_negative("test/trio/concat")
    with pytest.raises(ValueError, match="not a negative-audio set"):
        negative_set("unused", "test/solo/scene", SPEC)


@pytest.mark.parametrize("task", ["solo", "duet"])
def test_negative_sets_are_deterministic_and_keep_the_frames(fake_build, task):
    from avgn.data.datasets import SceneDataset

    own = SceneDataset(fake_build, "test", tasks=[task], layouts=["scene"], spec=SPEC, max_sources=SetName("test", task, "scene").n_sources)
    for cond in ("silence", "noise", "offscreen"):
        a, b = negative_set(fake_build, f"test/{task}/{cond}", SPEC), negative_set(fake_build, f"test/{task}/{cond}", SPEC)
        assert len(a) == len(own) > 0
        for i in range(len(a)):
            x, y, o = a[i], b[i], own[i]
            assert torch.equal(x["audio"], y["audio"]) and torch.equal(x["spec"], y["spec"])  # same name: same audio
            assert torch.equal(x["image"], o["image"]) and torch.equal(x["masks"], o["masks"])  # the same frame
            assert torch.equal(x["classes"], o["classes"]) and torch.equal(x["labels"], o["labels"])
            assert x["meta"]["scene_id"] == o["meta"]["scene_id"] and x["meta"]["condition"] == cond
    # another set name, another draw (the seed is the name's crc32)
    n1, n2 = negative_set(fake_build, f"test/{task}/noise", SPEC), negative_set(fake_build, f"val/{task}/noise", SPEC)
    assert n1.seed != n2.seed


def test_silence_is_digital_silence_and_noise_sits_at_the_builds_level(fake_build):
    from avgn.data.datasets import SceneDataset

    cfg = json.loads((fake_build / "build.json").read_text())["config"]
    lo, hi = cfg["noise_snr_db"]
    own = SceneDataset(fake_build, "test", tasks=["duet"], layouts=["scene"], spec=SPEC, max_sources=2)
    silence, noise = negative_set(fake_build, "test/duet/silence", SPEC), negative_set(fake_build, "test/duet/noise", SPEC)
    snrs = []
    for i in range(len(own)):
        s = silence[i]
        assert not s["audio"].any() and s["offscreen"].item() == -1
        assert torch.allclose(s["spec"], torch.full_like(s["spec"], math.log(SPEC.eps)))
        n = noise[i]
        rms_own = float(own[i]["audio"].double().pow(2).mean().sqrt())
        rms_noise = float(n["audio"].double().pow(2).mean().sqrt())
        snr = 20 * math.log10(rms_own / rms_noise)  # measured level below the frame's own audio
        assert snr == pytest.approx(n["meta"]["snr_db"], abs=1e-3)
        assert lo <= snr <= hi and n["offscreen"].item() == -1
        snrs.append(snr)
    assert len(set(np.round(snrs, 3))) == len(snrs)  # drawn per frame


@pytest.mark.parametrize("task", ["solo", "duet"])
def test_offscreen_clip_is_of_a_class_not_in_the_frame(fake_build, task):
    from avgn.data.audio import mix
    from avgn.data.datasets import read_clip

    ds = negative_set(fake_build, f"test/{task}/offscreen", SPEC)
    d = ds.frames.data
    vocab = {int(c) for v in d.df[(d.df["split"] == "test") & (d.df["task"] == "solo")]["class_ids"] for c in v}
    drawn = set()
    for i in range(len(ds)):
        s, r = ds[i], ds.frames.rows.iloc[i]
        c = s["offscreen"].item()
        assert c in vocab and ds.class_names[c] == s["meta"]["offscreen_class"]
        assert ds.class_names[c] not in set(r.classes) | set(r.distractor_classes)  # neither sounding nor a distractor
        assert s["meta"]["clip_path"].startswith(f"audio/clips/{ds.class_names[c]}/")
        clip = read_clip(d.path(s["meta"]["clip_path"]), d.sample_rate, d.n_samples)
        if s["meta"]["snr_db"] is None:  # a single source at 0 dB, as the build mixes a solo
            assert np.allclose(s["audio"].numpy(), mix(clip[None], np.zeros(1)))
        else:
            assert not np.allclose(s["audio"].numpy(), clip)
        drawn.add(c)
    assert len(drawn) > 1


# --------------------------------------------------------------------------------------------------
# scores on hand-made predictions
# --------------------------------------------------------------------------------------------------
H = W = 8
C = 4


def _preds(name: str, kind: str, maps: torch.Tensor, classes: list[int], probs: torch.Tensor | None = None,
           offscreen: list[int] | None = None) -> SetPredictions:
    """One-source frames: source ``i`` of class ``classes[i]`` fills the left half of frame ``i``."""
    n = len(classes)
    masks = torch.zeros(n, 1, H, W, dtype=torch.bool)
    masks[:, 0, :, : W // 2] = True
    cls = torch.tensor(classes)[:, None]
    labels = torch.zeros(n, C).scatter_(1, cls, 1.0)
    return SetPredictions(SetName.parse(name), kind, maps, masks, cls, labels, [f"s{i}" for i in range(n)], audio_probs=probs,
                          offscreen=None if offscreen is None else torch.tensor(offscreen))


def _class_maps(classes: list[int], right: bool) -> torch.Tensor:
    """Class-aware maps: the frame's class lights the left half (the object), or the right half."""
    maps = torch.zeros(len(classes), C, H, W)
    for i, c in enumerate(classes):
        if right:
            maps[i, c, :, W // 2:] = 1.0
        else:
            maps[i, c, :, : W // 2] = 1.0
    return maps


def test_class_aware_false_alarms_hand_computed():
    classes = [0, 1, 2, 3]
    own_probs = torch.full((4, C), 0.1)
    own_probs[torch.arange(4), torch.tensor(classes)] = 0.9  # own audio: every visible class selected
    own = _preds("test/solo/scene", "class_aware", _class_maps(classes, False), classes, own_probs)
    # silence: frames 0 and 2 select a class (any class is a false alarm), frame 1 is just below 0.5
    sil_probs = torch.full((4, C), 0.1)
    sil_probs[0, 3], sil_probs[1, 0], sil_probs[2, 2] = 0.6, 0.49, 0.5
    sil = _preds("test/solo/silence", "class_aware", _class_maps(classes, True), classes, sil_probs)
    s, rows = score_negative(sil, own, "oracle", EvalConfig(), presence_threshold=0.5)
    assert s["false_alarm"] == pytest.approx(0.5) and s["own_detect"] == 1.0
    assert s["own_visible_ap"] == pytest.approx(1.0)
    assert s["visible_ap"] < 0.6 and s["visible_ap_drop"] == pytest.approx(1.0 - s["visible_ap"])  # the map moved off the object
    assert [r["reported"] for r in rows] == [True, False, True, False] and all(r["own_reported"] for r in rows)
    assert "offscreen_selected" not in s and s["detect_threshold"] == 0.5 and s["detection_usable"] == 1.0
    # predicted mode: a visible class's map counts only where the class is selected (frame 2 here)
    sp, _ = score_negative(sil, own, "predicted", EvalConfig(), presence_threshold=0.5)
    assert sp["false_alarm"] == s["false_alarm"] and sp["own_visible_ap"] == pytest.approx(1.0)
    # off-screen sound of classes 1, 2, 3, 0: frame 0 selects its visible class 0 (a false alarm) and the
    # off-screen class 1; frame 1 selects only its off-screen class 2 (right); frames 2, 3 select nothing
    off_probs = torch.full((4, C), 0.1)
    off_probs[0, 0], off_probs[0, 1], off_probs[1, 2] = 0.8, 0.7, 0.9
    off = _preds("test/solo/offscreen", "class_aware", _class_maps(classes, False), classes, off_probs, offscreen=[1, 2, 3, 0])
    s, _ = score_negative(off, own, "oracle", EvalConfig(), presence_threshold=0.5)
    assert s["false_alarm"] == pytest.approx(0.25) and s["offscreen_selected"] == pytest.approx(0.5)
    assert s["visible_ap"] == pytest.approx(1.0) and s["visible_ap_drop"] == pytest.approx(0.0)  # the map ignores the audio
    # a lower presence threshold reports more
    assert score_negative(off, own, "oracle", EvalConfig(), presence_threshold=0.05)[0]["false_alarm"] == 1.0
    with pytest.raises(ValueError, match="same frames"):
        score_negative(off, _preds("test/solo/scene", "class_aware", _class_maps([1, 1, 2, 3], False), [1, 1, 2, 3], own_probs), "oracle")


def test_detection_threshold_is_chosen_by_youden_j():
    own = torch.tensor([0.9, 0.8, 0.7, 0.4])
    neg = torch.tensor([0.1, 0.2, 0.75, 0.3, 0.5, 0.05])
    d = choose_detection_threshold(own, neg)
    # t = 0.7: TPR 3/4, FPR 1/6 -> J = 0.583; t = 0.4: TPR 1, FPR 2/6 -> J = 0.667 (the best); t = 0.8: 0.5
    assert d.usable and d.threshold == pytest.approx(0.4) and d.tpr == 1.0 and d.fpr == pytest.approx(2 / 6)
    assert d.reports(torch.tensor([0.39, 0.4, 1.0])).tolist() == [False, True, True]
    # a score that ignores the audio (same values for own and negative audio) is not usable: every frame reports
    same = choose_detection_threshold(torch.tensor([0.3, 0.6]), torch.tensor([0.6, 0.3, 0.3, 0.6]))
    assert not same.usable and math.isnan(same.threshold) and "false-alarm rate 1" in same.note
    assert same.reports(torch.tensor([-5.0, 0.0])).tolist() == [True, True]
    with pytest.raises(ValueError, match="own-audio and negative"):
        choose_detection_threshold(torch.tensor([]), neg)


def test_class_agnostic_false_alarm_follows_the_detection():
    classes = [0, 1, 2]
    own_maps = torch.zeros(3, 1, H, W)
    own_maps[:, :, :, : W // 2] = 0.9  # own audio: a strong peak on the object
    neg_maps = own_maps * torch.tensor([0.1, 1.0, 0.2])[:, None, None, None]  # noise: frame 1 keeps its peak
    own = _preds("test/solo/scene", "shared", own_maps, classes)
    neg = _preds("test/solo/noise", "shared", neg_maps, classes)
    d = Detection("map peak", 0.5, True, 1.0, 0.0, "")
    s, rows = score_negative(neg, own, "oracle", EvalConfig(), detection=d)
    assert s["false_alarm"] == pytest.approx(1 / 3) and s["own_detect"] == 1.0
    assert s["detect_threshold"] == 0.5 and s["detection_usable"] == 1.0
    assert [r["detect_score"] for r in rows] == pytest.approx([0.09, 0.9, 0.18])
    assert s["visible_ap"] == pytest.approx(1.0) and s["visible_ap_drop"] == pytest.approx(0.0)  # AP is rank-based: scale is not
    # no usable score: a source in every frame
    none = Detection("map peak", math.nan, False, 1.0, 1.0, "no usable score")
    s, _ = score_negative(neg, own, "oracle", EvalConfig(), detection=none)
    assert s["false_alarm"] == 1.0 and s["detection_usable"] == 0.0 and math.isnan(s["detect_threshold"])
    with pytest.raises(ValueError, match="detection"):
        reported(neg)


# --------------------------------------------------------------------------------------------------
# end to end on a build
# --------------------------------------------------------------------------------------------------
class _LoudnessGatedMap(Method):
    """A class-agnostic stub: the union of the visible masks, scaled by 1 where the spectrogram holds
    anything above silence and 0 under digital silence (its peak detects audio, not sources)."""

    name, kind, label, learned = "stub-gated", "shared", "stub", False

    def predict_batch(self, model, batch, device, bf16=False, channels_last=False):
        audible = (batch["spec"].flatten(1).amax(1) > math.log(SPEC.eps) + 1).float()
        return {"maps": batch["masks"].any(1, keepdim=True).float() * audible[:, None, None, None]}


def test_detection_threshold_chosen_on_validation_end_to_end(fake_build):
    from avgn.features import FeatureStore

    inputs = tiny_experiment().inputs
    store = FeatureStore(fake_build, inputs.features, preload=False)
    names = list(negative_set_names("test"))
    ev = evaluate_negative(MethodPredictor(_LoudnessGatedMap()), fake_build, inputs, store, names, EvalConfig())
    # validation: own audio peaks 1 (TPR 1), silence 0, noise and off-screen 1 (FPR 2/3): threshold 1, J = 1/3
    det = ev["detection"]
    assert det["usable"] and det["threshold"] == 1.0 and det["tpr"] == 1.0 and det["fpr"] == pytest.approx(2 / 3)
    res = ev["results"]
    for task in ("solo", "duet"):
        assert res[f"test/{task}/silence"]["oracle"]["false_alarm"] == 0.0
        assert res[f"test/{task}/noise"]["oracle"]["false_alarm"] == 1.0
        assert res[f"test/{task}/offscreen"]["oracle"]["false_alarm"] == 1.0
        assert res[f"test/{task}/silence"]["oracle"]["own_detect"] == 1.0
        assert res[f"test/{task}/silence"]["predicted"] == res[f"test/{task}/silence"]["oracle"]  # one mode: copied
    assert ev["items"] == sum(len(negative_set(fake_build, n, SPEC)) for n in names)
    assert {r["condition"] for r in ev["rows"]} == {"silence", "noise", "offscreen"}


def test_reference_negative_evaluation_writes_results(fake_build, tmp_path):
    """The centre prior through ``evaluate_reference``: no usable detection score (false-alarm rate 1,
    said in the payload) and a map that does not depend on the audio (drop 0); built and negative sets
    in one long table."""
    import pandas as pd

    from avgn.evaluate import evaluate_reference

    small = {"inputs.features.image_size": 96}
    sets = ["test/solo/scene", *negative_set_names("test")]
    out = tmp_path / "centre"
    payload = evaluate_reference("centre", fake_build, out, profile="smoke", sets=sets, device="cpu", progress=False, overrides=small,
                                 tag="negative")
    assert list(payload["results"]) == sets
    assert not payload["detection"]["usable"] and "false-alarm rate 1" in payload["detection"]["note"]
    for n in sets[1:]:
        r = payload["results"][n]["oracle"]
        assert r["false_alarm"] == 1.0 and r["visible_ap_drop"] == 0.0 and r["visible_ap"] == r["own_visible_ap"]
    assert payload["results"]["test/solo/silence"]["oracle"]["visible_ap"] == payload["results"]["test/solo/scene"]["oracle"]["ap"]
    df = pd.read_csv(out / "eval_negative.csv")
    assert {"test/solo/silence", "test/duet/offscreen"} <= set(df["set"])
    assert set(df[df["set"] == "test/solo/noise"]["layout"]) == {"noise"}
    assert {"false_alarm", "visible_ap", "own_visible_ap", "visible_ap_drop", "own_detect"} <= set(df["metric"])
    assert json.loads((out / "eval_negative.json").read_text())["detection"]["usable"] is False


def test_trained_class_aware_model_on_negative_sets(fake_build, tmp_path):
    """A one-epoch AVGN through ``evaluate_run`` with its own presence threshold (both modes)."""
    from avgn.evaluate import evaluate_run
    from avgn.train import train

    run = tmp_path / "avgn"
    train(tiny_experiment("avgn", **{"train.epochs": 1}), fake_build, run, seed=0, device="cpu", progress=False)
    names = list(negative_set_names("test"))
    ev = evaluate_run(run, "test", sets=names, device="cpu", progress=False, tag="negative")
    assert (run / "eval_negative.csv").is_file() and ev["detection"]["score"] == "presence probability"
    for n in names:
        for mode in ("oracle", "predicted"):
            r = ev["results"][n][mode]
            assert 0.0 <= r["false_alarm"] <= 1.0 and 0.0 <= r["own_detect"] <= 1.0
            assert r["detect_threshold"] == ev["presence_threshold"]
            assert ("offscreen_selected" in r) == n.endswith("offscreen")
        assert ev["results"][n]["oracle"]["false_alarm"] == ev["results"][n]["predicted"]["false_alarm"]  # the method's own decision
