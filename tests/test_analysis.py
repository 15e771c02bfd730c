"""avgnbook.analysis on hand-made predictions: sweeps, rankings, tables, roles of classes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from avgnbook.analysis import binarization_sweep, class_presence_table, mean_std_table, presence_summary, ranking_table, selection_gap
from avgn.config import EvalConfig
from avgn.evaluate import SetName, SetPredictions, score_set, threshold_for_beta


def _pred(kind: str = "shared", n: int = 4, seed: int = 0) -> SetPredictions:
    """``n`` one-source samples on 16x16: a square mask; a noisy map peaking on it."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, 16, 16, dtype=torch.bool)
    masks[:, 0, 4:10, 5:11] = True
    maps = masks.float() + 0.8 * torch.rand(n, 1, 16, 16, generator=g)
    classes = torch.zeros(n, 1, dtype=torch.long)
    labels = torch.zeros(n, 3)
    labels[:, 0] = 1
    return SetPredictions(SetName.parse("test/solo/scene"), kind, maps, masks, classes, labels, [f"s{i}" for i in range(n)])


def test_sweep_at_the_protocol_rule_equals_the_evaluation():
    p = _pred()
    sweep = binarization_sweep({"test/solo/scene": p}, [("top_fraction", 0.5), ("fixed", 0.7)])
    ref, _ = score_set(p, "oracle", EvalConfig())
    got = sweep[(sweep["label"] == "top_fraction 0.5")].set_index("metric")["score"]
    for m in ("ap", "iou@0.5", "auc"):
        assert got[m] == pytest.approx(ref[m], abs=1e-12)
    # AP does not depend on the rule; the thresholded metrics may
    ap = sweep[sweep["metric"] == "ap"]["score"]
    assert ap.max() - ap.min() < 1e-12
    assert set(sweep["label"]) == {"top_fraction 0.5", "fixed 0.7"}


def test_ranking_table_is_exact():
    sweep = pd.DataFrame(
        {
            "set": "s", "metric": "m",
            "method": ["A", "B", "C"] * 2,
            "label": ["r1"] * 3 + ["r2"] * 3,
            "score": [0.9, 0.5, 0.7, 0.2, 0.6, 0.6],
        }
    )
    r = ranking_table(sweep, "m", "s")
    assert list(r.columns) == ["r1", "r2"]
    assert r.loc["A"].tolist() == [1, 3] and r.loc["B"].tolist() == [3, 1] and r.loc["C"].tolist() == [2, 1]  # ties share the best rank
    with pytest.raises(ValueError, match="no 'x' scores"):
        ranking_table(sweep, "x", "s")


def test_mean_std_table_cells():
    res = pd.DataFrame(
        {
            "variant": ["A", "A", "B"], "mode": "oracle", "set": "t", "metric": "ap", "value": [0.5, 0.7, 0.25],
        }
    )
    t = mean_std_table(res, "t", ["ap"], order=["B", "A"])
    assert t.loc[("A", "oracle"), "ap"] == f"60.0 ± {100 * np.std([0.5, 0.7], ddof=1):.1f}"
    assert t.loc[("B", "oracle"), "ap"] == "25.0"  # one seed: no std
    assert list(t.index.get_level_values(0)) == ["B", "A"]
    with pytest.raises(ValueError, match="no"):
        mean_std_table(res, "other", ["ap"])


def test_class_presence_roles(tmp_path, monkeypatch):
    """Sounding / distractor / absent from the manifest; selection = presence >= 0.5 or the top class."""
    import avgnbook.analysis as man  # the name the analysis module reads

    manifest = pd.DataFrame({"scene_id": ["a", "b"], "classes": [["cat"], ["dog", "cat"]], "distractor_classes": [["dog"], ["cow"]]})
    monkeypatch.setattr(man, "load_manifest", lambda root, split=None: manifest.copy())
    names = ["cat", "dog", "cow", "owl"]
    maps = torch.zeros(2, 4, 2, 2)
    maps[0, 0, 0, 0], maps[1, 2, 1, 1] = 0.9, 0.4
    probs = torch.tensor([[0.2, 0.6, 0.1, 0.1], [0.7, 0.3, 0.2, 0.9]])
    p = SetPredictions(SetName.parse("test/duet/scene"), "class_aware", maps, torch.zeros(2, 2, 2, 2, dtype=torch.bool),
                       torch.tensor([[0, -1], [1, 0]]), torch.zeros(2, 4), ["a", "b"], audio_probs=probs)
    t = class_presence_table(p, tmp_path, names).set_index(["scene_id", "class"])
    assert t.loc[("a", "cat"), "role"] == "sounding" and t.loc[("a", "dog"), "role"] == "distractor" and t.loc[("a", "owl"), "role"] == "absent"
    assert t.loc[("b", "cow"), "role"] == "distractor" and t.loc[("b", "dog"), "role"] == "sounding"
    # scene a: dog (0.6) is selected, cat (0.2) is not; scene b: cat (0.7) and owl (0.9)
    assert t.loc[("a", "dog"), "selected"] and not t.loc[("a", "cat"), "selected"]
    assert t.loc[("b", "owl"), "selected"] and t.loc[("b", "cat"), "selected"] and not t.loc[("b", "dog"), "selected"]
    assert t.loc[("a", "cat"), "map_peak"] == pytest.approx(0.9) and t.loc[("b", "cow"), "map_peak"] == pytest.approx(0.4)
    s = presence_summary(class_presence_table(p, tmp_path, names)).set_index(["set", "n_sources", "role"])
    assert s.loc[("test/duet/scene", 1, "distractor"), "share_selected"] == 1.0
    assert s.loc[("test/duet/scene", 2, "absent"), "share_selected"] == 1.0  # owl
    assert math.isclose(s.loc[("test/duet/scene", 2, "sounding"), "share_selected"], 0.5)
    with pytest.raises(ValueError, match="class-aware"):
        class_presence_table(_pred(), tmp_path, names)


def test_embedding_dependence_separates_constant_from_input_driven_embeddings():
    from avgn.methods.avgn import embedding_dependence

    rng = np.random.default_rng(0)
    n, c, d = 40, 3, 8
    sounding = np.zeros((n, c), dtype=bool)
    sounding[np.arange(n), np.arange(n) % c] = True
    token = rng.normal(size=(c, d))
    const = np.broadcast_to(token, (n, c, d)).copy()  # the same vector whatever the input
    t = embedding_dependence(const, sounding, ["a", "b", "c"])
    assert np.allclose(t["cos_sounding_vs_silent"], 1.0) and np.allclose(t["within_class_cos"], 1.0)
    driven = const.copy()
    driven[sounding] = -token[np.arange(n) % c]  # the embedding flips when its class sounds
    t2 = embedding_dependence(driven, sounding, ["a", "b", "c"])
    assert (t2["cos_sounding_vs_silent"] < -0.99).all() and list(t2["scenes_sounding"]) == [14, 13, 13]


def test_embedding_dependence_by_role_tells_hearing_from_seeing():
    """Hand-made embeddings: one that follows whether its class sounds (audio-like) and one that
    follows whether its class is in the frame (visual-like), against two orthogonal vectors, so
    every cosine is 1 or 0; a role that never occurs gives NaN; mismatched shapes are refused."""
    from avgn.methods.avgn import ABSENT, SOUNDING, VISIBLE_SILENT, embedding_dependence_by_role

    a, b = np.eye(4)[0], np.eye(4)[1]
    roles = np.array([[SOUNDING, ABSENT], [VISIBLE_SILENT, SOUNDING], [ABSENT, ABSENT], [SOUNDING, ABSENT]])
    hearing = np.where((roles == SOUNDING)[..., None], a, b)
    seeing = np.where((roles != ABSENT)[..., None], a, b)
    h = embedding_dependence_by_role(hearing, roles, ["x", "y"]).set_index("class")
    v = embedding_dependence_by_role(seeing, roles, ["x", "y"]).set_index("class")
    assert list(h["scenes_sounding"]) == [2, 1] and list(h["scenes_visible_silent"]) == [1, 0] and list(h["scenes_absent"]) == [1, 3]
    assert h.loc["x", "cos_sounding_vs_visible_silent"] == pytest.approx(0.0) and h.loc["x", "cos_visible_silent_vs_absent"] == pytest.approx(1.0)
    assert v.loc["x", "cos_sounding_vs_visible_silent"] == pytest.approx(1.0) and v.loc["x", "cos_visible_silent_vs_absent"] == pytest.approx(0.0)
    assert h.loc["x", "cos_sounding_vs_absent"] == pytest.approx(0.0) and v.loc["x", "cos_sounding_vs_absent"] == pytest.approx(0.0)
    assert math.isnan(h.loc["y", "cos_sounding_vs_visible_silent"]) and h.loc["y", "cos_sounding_vs_absent"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="do not match"):
        embedding_dependence_by_role(hearing, roles[:3], ["x", "y"])


def test_embedding_roles_of_a_trained_run_follow_the_manifest(fake_build, tmp_path):
    """``embedding_roles`` on a tiny trained AVGN run: every class of every scene, sounding where the
    scene's labels say, visible-but-silent exactly for the manifest's distractors, absent otherwise;
    the embeddings are the ones ``class_embeddings(all_classes=True)`` returns."""
    from helpers import tiny_experiment

    from avgnbook.analysis import class_embeddings, embedding_roles
    from avgn.data.manifest import load_manifest
    from avgn.methods.avgn import ABSENT, SOUNDING, VISIBLE_SILENT
    from avgn.train import train

    run = tmp_path / "avgn"
    exp = tiny_experiment("avgn", **{"train.epochs": 1})
    train(exp, fake_build, run, seed=0, device="cpu", progress=False)
    sets = ["test/duet/scene", "test/duet/concat"]
    ga, gv, roles, names = embedding_roles(run, sets, device="cpu")
    ca, cv, sounding, names2 = class_embeddings(run, sets, device="cpu", all_classes=True)
    assert names == names2 and np.array_equal(ga, ca) and np.array_equal(gv, cv) and np.array_equal(roles == SOUNDING, sounding)
    manifest = load_manifest(fake_build)
    duets = manifest[(manifest["split"] == "test") & (manifest["task"] == "duet")]
    assert roles.shape == (len(duets), len(names)) and set(np.unique(roles)) <= {ABSENT, VISIBLE_SILENT, SOUNDING}
    assert ((roles == SOUNDING).sum(1) == 2).all()
    expected = sum(len((set(r["distractor_classes"]) - set(r["classes"])) & set(names)) for _, r in duets.iterrows())
    assert int((roles == VISIBLE_SILENT).sum()) == expected and expected > 0


def _long(values: dict[tuple[str, int], float], set_name: str = "test/duet/scene", metric: str = "cap") -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "seed": s, "set": set_name, "mode": "oracle", "metric": metric, "value": x}
                         for (v, s), x in values.items()])


def test_verdicts_order_means_and_judge_against_seed_noise():
    from avgnbook.analysis import beyond_noise, cell_mean, seed_sd, verdict_beats, verdict_best, verdict_margin, verdict_summary

    df = _long({("A", 0): 0.50, ("A", 1): 0.54, ("B", 0): 0.40, ("B", 1): 0.42, ("C", 0): 0.52, ("C", 1): 0.50})
    assert cell_mean(df, "A", "test/duet/scene", "cap") == pytest.approx(0.52)
    sd = seed_sd(df, "A", "test/duet/scene", "cap")
    assert sd == pytest.approx(0.02 * 2**0.5)  # sample sd of (0.50, 0.54)
    assert beyond_noise(0.1, sd) == "yes" and beyond_noise(0.05, sd) == "no" and beyond_noise(0.1, float("nan")) == "n/a (one seed)"
    cells, noise = [("test/duet/scene", "cap")], {("test/duet/scene", "cap"): sd}
    best = verdict_best(df, "A is best", "A", ["A", "B", "C"], cells, noise)[0]
    assert best["holds"] and best["beyond seed noise (> 2 sd)"] == "no"  # A 0.52 vs C 0.51: within noise
    assert "best is A (52.0); A: 52.0" in best["evidence"]
    m = verdict_margin(df, "A beats B by 5 points", "A", "B", 0.05, cells, noise)[0]
    assert m["holds"] and "margin +11.0" in m["evidence"] and m["beyond seed noise (> 2 sd)"] == "yes"
    assert not verdict_margin(df, "A beats C by 5 points", "A", "C", 0.05, cells, noise)[0]["holds"]
    b = verdict_beats(df, "B beats the others", "B", ["A", "C"], cells, noise)[0]
    assert not b["holds"] and "vs A 52.0" in b["evidence"]
    s = verdict_summary([best, m, b, {**best, "claim": "mixed", "holds": True}, {**best, "claim": "mixed", "holds": False},
                         {**m, "claim": "partly"}, {**best, "claim": "partly"}, {**b, "claim": "fails"}, {**best, "claim": "fails", "holds": False},
                         {**m, "claim": "both"}, {**b, "claim": "both"}])
    # A best but within noise; A beats B beyond noise; B loses beyond noise; no cell beyond noise; one of two beyond
    # (holding); one of two beyond (failing); one holds and one fails, both beyond noise
    assert list(s["verdict"]) == ["within noise", "reproduces", "does not reproduce", "within noise", "partly (1 above, 1 within noise)",
                                  "does not reproduce where beyond noise (1 within noise, 1 below)", "mixed (1 above, 1 below)"]


def test_sources_curves_put_one_source_on_the_mixture_scale():
    from avgnbook.analysis import sources_curves

    res = pd.concat([
        _long({("AVGN", 0): 0.6, ("EZ", 0): 0.4}, "test/duet/scene", "cap"),
        _long({("AVGN", 0): 0.5, ("EZ", 0): 0.4}, "test/duet/scene", "cap").assign(mode="predicted"),
        _long({("AVGN", 0): 0.9, ("EZ", 0): 0.9}, "test/solo/scene", "ap"),  # not a mixture metric: ignored
    ], ignore_index=True)
    rows = pd.DataFrame({"variant": ["AVGN", "AVGN", "EZ", "EZ"], "seed": 0, "set": "test/solo/scene", "mode": "oracle",
                         "ap": [0.2, 0.4, 0.5, 0.7], "ciou": [0.1, 0.5, 0.3, 0.2]})
    c = sources_curves(res, rows, selecting={"AVGN"})
    one = c[(c["n_sources"] == 1)].set_index(["method", "metric"])["value"]
    assert one[("AVGN · oracle", "cap")] == pytest.approx(0.3) and one[("AVGN · oracle", "piap")] == pytest.approx(0.3)
    assert one[("AVGN · oracle", "ciou@0.3")] == pytest.approx(0.5) and one[("EZ", "ciou@0.3")] == pytest.approx(0.5)
    two = c[c["n_sources"] == 2].set_index("method")["value"]
    assert two["AVGN · oracle"] == pytest.approx(0.6) and two["AVGN · predicted"] == pytest.approx(0.5) and two["EZ"] == pytest.approx(0.4)
    assert set(c["layout"]) == {"scene"} and "EZ · predicted" not in set(c["method"])


def test_silent_object_metrics_on_hand_made_maps(tmp_path, monkeypatch):
    import avgnbook.analysis as an

    manifest = pd.DataFrame({"scene_id": ["a"], "classes": [["cat"]], "distractor_classes": [["dog"]]})
    monkeypatch.setattr(an, "load_manifest", lambda root, split=None: manifest.copy())
    maps = torch.zeros(1, 3, 2, 2)
    maps[0, 0] = torch.tensor([[1.0, 0.9], [0.0, 0.0]])  # cat (sounding)
    maps[0, 1] = torch.tensor([[0.5, 0.1], [0.0, 0.0]])  # dog (distractor): 3 of 4 pixels <= 0.2, peak 0.5 < cat's 1.0
    maps[0, 2] = torch.tensor([[0.3, 0.3], [0.3, 0.0]])  # cow (absent): 1 of 4 <= 0.2
    p = SetPredictions(SetName.parse("test/duet/scene"), "class_aware", maps, torch.zeros(1, 1, 2, 2, dtype=torch.bool),
                       torch.tensor([[0]]), torch.tensor([[1.0, 0, 0]]), ["a"], audio_probs=torch.tensor([[0.9, 0.6, 0.1]]))
    m = an.silent_object_metrics(p, tmp_path, ["cat", "dog", "cow"])
    assert m["nsa_distractors"] == pytest.approx(0.75) and m["nsa_all"] == pytest.approx((0.75 + 0.25) / 2)
    assert m["false_alarm"] == 0.0 and m["distractor_pairs"] == 1 and m["silent_pairs"] == 2
    # predicted selection at 0.5 keeps cat and dog; at 0.7 only cat: the dog map disappears (NSA 1)
    assert an.silent_object_metrics(p, tmp_path, ["cat", "dog", "cow"], "predicted", 0.5)["nsa_distractors"] == pytest.approx(0.75)
    pr = an.silent_object_metrics(p, tmp_path, ["cat", "dog", "cow"], "predicted", 0.7)
    assert pr["nsa_distractors"] == pytest.approx(1.0) and pr["nsa_all"] == pytest.approx(1.0)


def test_selection_gap_by_hand():
    rows = [dict(set="s", mode="oracle", scene_id=f"x{i}", source=0, ap=ap, has_map=True) for i, ap in enumerate((0.8, 0.4, 0.6, 0.2))]
    rows += [dict(set="s", mode="predicted", scene_id=f"x{i}", source=0, ap=ap, has_map=ap > 0) for i, ap in enumerate((0.8, 0.0, 0.6, 0.0))]
    g = selection_gap(pd.DataFrame(rows)).iloc[0]
    assert g["sources"] == 4 and g["missed"] == 0.5
    assert g["oracle_cap"] == pytest.approx(0.5) and g["predicted_cap"] == pytest.approx(0.35)
    assert g["gap"] == pytest.approx(0.15) and g["gap_from_missed"] == pytest.approx(0.15)
    assert g["ap_missed"] == pytest.approx(0.3) and g["ap_selected"] == pytest.approx(0.7)
    assert g["max_missed"] == pytest.approx(0.05 / 0.3)
    with pytest.raises(ValueError, match="both an oracle and a predicted row"):
        selection_gap(pd.DataFrame(rows[:4]))


def test_selection_gap_is_exactly_the_missed_sources_oracle_ap():
    """On scored duets (random maps, random presence): predicted CAP = oracle CAP - the oracle AP of
    the sources the predicted selection misses / sources."""
    g = torch.Generator().manual_seed(3)
    n, c = 12, 4
    masks = torch.rand(n, 2, 16, 16, generator=g) > 0.7
    classes = torch.stack([torch.randperm(c, generator=g)[:2] for _ in range(n)])
    labels = torch.zeros(n, c).scatter_(1, classes, 1.0)
    p = SetPredictions(SetName.parse("test/duet/scene"), "class_aware", torch.rand(n, c, 16, 16, generator=g), masks, classes, labels,
                       [f"s{i}" for i in range(n)], audio_probs=torch.rand(n, c, generator=g))
    summaries, rows = {}, []
    for mode in ("oracle", "predicted"):
        summaries[mode], r = score_set(p, mode, EvalConfig(), presence_threshold=0.5)
        rows += r
    gap = selection_gap(pd.DataFrame(rows)).iloc[0]
    assert 0 < gap["missed"] < 1
    assert gap["gap"] == pytest.approx(summaries["oracle"]["cap"] - summaries["predicted"]["cap"], abs=1e-9)
    assert gap["gap_from_missed"] == pytest.approx(gap["gap"], abs=1e-9)


_CURVE = [
    {"threshold": 0.3, "presence_precision": 0.8, "presence_recall": 0.9, "presence_f1": 0.847},
    {"threshold": 0.5, "presence_precision": 0.9, "presence_recall": 0.8, "presence_f1": 0.847},
    {"threshold": 0.7, "presence_precision": 0.95, "presence_recall": 0.6, "presence_f1": 0.735},
]


def test_threshold_for_beta_by_hand():
    assert threshold_for_beta(_CURVE, 1.0) == 0.5  # F1 tie between 0.3 and 0.5: the one closest to 0.5
    assert threshold_for_beta(_CURVE, 2.0) == 0.3  # F2: 3.6 / 4.1 = 0.878 against 3.6 / 4.4 = 0.818
    assert threshold_for_beta(_CURVE, 0.5) == 0.5  # F0.5: 0.9 / 1.025 = 0.878 against 0.851 (0.7), 0.818 (0.3)
    with pytest.raises(ValueError, match="beta must be positive"):
        threshold_for_beta(_CURVE, 0.0)
    with pytest.raises(ValueError, match="empty threshold curve"):
        threshold_for_beta([], 1.0)


def test_presence_rule_table_scores_each_rule_on_the_same_predictions(tmp_path, monkeypatch):
    import json

    import avgnbook.analysis as analysis

    g = torch.Generator().manual_seed(5)
    n, c = 16, 4
    classes = torch.stack([torch.randperm(c, generator=g)[:2] for _ in range(n)])
    labels = torch.zeros(n, c).scatter_(1, classes, 1.0)
    p = SetPredictions(SetName.parse("test/duet/scene"), "class_aware", torch.rand(n, c, 16, 16, generator=g),
                       torch.rand(n, 2, 16, 16, generator=g) > 0.7, classes, labels, [f"s{i}" for i in range(n)],
                       audio_probs=(0.6 * labels + 0.5 * torch.rand(n, c, generator=g)).clamp(0, 1))
    calls = []
    monkeypatch.setattr(analysis, "predict_run", lambda run_dir, sets, device="auto", data_dir=None: calls.append(sets) or {s: p for s in sets})
    (tmp_path / "run.json").write_text(json.dumps({"threshold_curve": _CURVE}))
    table = analysis.presence_rule_table(tmp_path, ["test/duet/scene"], betas=(1.0, 2.0))
    assert len(calls) == 1  # one forward pass, re-scored per rule
    assert list(table["threshold"]) == [0.5, 0.3]
    for row in table.itertuples():
        oracle, _ = score_set(p, "oracle", EvalConfig(), row.threshold)
        pred, _ = score_set(p, "predicted", EvalConfig(), row.threshold)
        assert row.gap == pytest.approx(oracle["cap"] - pred["cap"]) and row.presence_f1 == pytest.approx(pred["presence_f1"])
    assert table["presence_recall"].iloc[1] >= table["presence_recall"].iloc[0]  # the lower threshold keeps more sources
    (tmp_path / "run.json").write_text(json.dumps({}))
    with pytest.raises(ValueError, match="no validation threshold curve"):
        analysis.presence_rule_table(tmp_path, ["test/duet/scene"])


def test_compare_seeds_pairs_by_seed_and_calls_a_difference_only_beyond_two_sd():
    import math

    import pandas as pd

    from avgnbook.analysis import compare_seeds, say

    def rows(variant, values, seeds=(0, 1, 2)):
        return [{"variant": variant, "seed": s, "set": "t/s/s", "metric": "ap", "mode": "oracle", "value": v} for s, v in zip(seeds, values)]

    df = pd.DataFrame(rows("A", [0.50, 0.52, 0.54]) + rows("B", [0.40, 0.43, 0.43]) + rows("C", [0.49, 0.53, 0.52])
                      + rows("prior", [0.45], seeds=(-1,)))
    c = compare_seeds(df, "A", "B", "t/s/s", "ap")  # paired differences 0.10, 0.09, 0.11: mean 0.10, sd 0.01
    assert c["diff"] == pytest.approx(0.10) and c["sd"] == pytest.approx(0.01) and c["margin_sd"] == pytest.approx(10.0)
    assert c["verdict"] == "above" and c["seeds"] == 3
    n = compare_seeds(df, "A", "C", "t/s/s", "ap")  # differences 0.01, -0.01, 0.02: mean 0.00667, sd 0.01528
    assert n["verdict"] == "within noise" and n["sd"] == pytest.approx(math.sqrt(((1 - 2 / 3) ** 2 + (-1 - 2 / 3) ** 2 + (2 - 2 / 3) ** 2) / 2) / 100)
    r = compare_seeds(df, "B", "prior", "t/s/s", "ap")  # a reference is a constant: differences -0.05, -0.02, -0.02
    assert r["diff"] == pytest.approx(-0.03) and r["sd"] == pytest.approx(math.sqrt(3) / 100)
    assert r["verdict"] == "within noise"  # 0.03 < 2 x 0.0173
    far = compare_seeds(df, "A", "prior", "t/s/s", "ap")  # 0.05, 0.07, 0.09: mean 0.07, sd 0.02
    assert far["verdict"] == "above" and far["margin_sd"] == pytest.approx(3.5)
    two = compare_seeds(df[df["seed"] != 2], "A", "B", "t/s/s", "ap")
    assert two["verdict"] == "within noise" and two["seeds"] == 2  # fewer than 3 seeds never decide
    assert say(c) == "52.0 against 42.0 (+10.0 points, 10.0 sd: above, beyond 2 sd)"


# --------------------------------------------------------------------------------------------------
# the run store's studies of chapters 2 and 4: what the chapter would compute from the stored runs
# --------------------------------------------------------------------------------------------------
def _run_study(study, tiny_store, tmp_path, keys, sources):
    """``(checkouts of keys, the study's folder)`` after running ``study`` on them as the queue would."""
    from avgn.store.queue import checkout

    runs = {k: checkout(k, "smoke", tmp_path / "runs", tiny_store["data"], tiny_store["store"], tiny_store["plan"]) for k in keys}
    out = tmp_path / "study"
    out.mkdir()
    study(tiny_store["data"], out, "smoke", 0, sources=sources, runs=runs, device="cpu")
    return runs, out


def test_binarization_study_writes_the_sweep_of_each_stored_run_and_prior(tiny_store, tiny_ids, tmp_path):
    from avgnbook.analysis import (BINARIZATION_SETS, DEFAULT_RULES, binarization_study, predict_reference, predict_run,
                                   read_binarization_study)

    sources = (("avgn", "AVGN", ()), ("ezvsl-ogl", "EZ-VSL + object prior", (("object_prior_alpha", 0.4),)))
    runs, out = _run_study(binarization_study, tiny_store, tmp_path, ["avgn/seed0", "ezvsl/seed0", "ezvsl-ogl/seed0"], sources)
    got = read_binarization_study(out)
    assert list(dict.fromkeys(got["method"])) == ["AVGN", "EZ-VSL + object prior", "centre prior", "object prior"]
    assert dict(zip(got["method"], got["run"])) == {"AVGN": runs["avgn/seed0"]["id"], "EZ-VSL + object prior": runs["ezvsl-ogl/seed0"]["id"],
                                                    "centre prior": "", "object prior": ""}
    ogl = predict_run(runs["ezvsl-ogl/seed0"]["run_dir"], BINARIZATION_SETS, device="cpu", data_dir=tiny_store["data"],
                      model_overrides={"object_prior_alpha": 0.4})
    obj = predict_reference("object", tiny_store["data"], BINARIZATION_SETS, profile="smoke", device="cpu")
    for label, preds in (("EZ-VSL + object prior", ogl), ("object prior", obj)):
        want = binarization_sweep(preds, DEFAULT_RULES)
        mine = got[got["method"] == label].reset_index(drop=True)
        assert len(mine) == len(want) > 0
        np.testing.assert_allclose(mine["score"], want["score"], atol=1e-9)
        assert list(mine["label"]) == list(want["label"]) and list(mine["set"]) == list(want["set"])
    both = got[got["method"] == "AVGN"].merge(got[got["method"] == "EZ-VSL + object prior"], on=["set", "label", "metric"])
    assert len(both) > 0 and not np.allclose(both["score_x"], both["score_y"])  # each source its own maps


def test_presence_rule_study_writes_each_runs_rule_table(tiny_store, tiny_ids, tmp_path):
    from avgnbook.analysis import PRESENCE_RULE_BETAS, PRESENCE_RULE_SETS, presence_rule_study, presence_rule_table, read_presence_rule_study

    runs, out = _run_study(presence_rule_study, tiny_store, tmp_path, ["avgn/seed0"], (("avgn", "AVGN"),))
    got = read_presence_rule_study(out)
    want = presence_rule_table(runs["avgn/seed0"]["run_dir"], PRESENCE_RULE_SETS, PRESENCE_RULE_BETAS, device="cpu", data_dir=tiny_store["data"])
    assert set(got["variant"]) == {"AVGN"} and set(got["run"]) == {runs["avgn/seed0"]["id"]}
    assert len(got) == len(want) == len(PRESENCE_RULE_SETS) * len(PRESENCE_RULE_BETAS)
    for col in ("threshold", "presence_f1", "oracle_cap", "predicted_cap", "gap"):
        np.testing.assert_allclose(got[col], want[col], atol=1e-9)


def test_silent_object_study_writes_every_seeds_metrics_in_both_modes(tiny_store, tiny_ids, tmp_path):
    from avgnbook.analysis import SILENT_METRICS, SILENT_SETS, predict_run, read_silent_study, silent_object_metrics, silent_object_study
    from avgn.runs import load_run, run_presence_threshold

    runs, out = _run_study(silent_object_study, tiny_store, tmp_path, ["avgn/seed0"], (("avgn", "AVGN", "avgn"),))
    got = read_silent_study(out)
    assert len(got) == len(SILENT_SETS) * 2 * len(SILENT_METRICS) and set(got["run"]) == {runs["avgn/seed0"]["id"]}
    run_dir = runs["avgn/seed0"]["run_dir"]
    p = predict_run(run_dir, SILENT_SETS[:1], device="cpu", data_dir=tiny_store["data"])[SILENT_SETS[0]]
    want = silent_object_metrics(p, tiny_store["data"], load_run(run_dir)["config"]["class_names"], "predicted",
                                 run_presence_threshold(run_dir) or 0.5)
    row = got[(got["set"] == SILENT_SETS[0]) & (got["mode"] == "predicted")].set_index("metric")["value"]
    for k in SILENT_METRICS:
        assert row[k] == pytest.approx(want[k], abs=1e-9, nan_ok=True)


def test_baseline_study_reports_every_stored_seed(tiny_store, tiny_ids, tmp_path):
    from avgnbook.diagnostics import baseline_report, baseline_study, read_baseline_study

    runs, out = _run_study(baseline_study, tiny_store, tmp_path, ["ezvsl/seed0"], (("ezvsl", "EZ-VSL", "ezvsl"),))
    got = read_baseline_study(out)
    want = baseline_report(runs["ezvsl/seed0"]["run_dir"], tiny_store["data"], device="cpu")
    assert set(got["variant"]) == {"EZ-VSL"} and set(got["seed"]) == {0} and set(got["run"]) == {runs["ezvsl/seed0"]["id"]}
    assert dict(zip(got["metric"], got["value"])) == pytest.approx(want, abs=1e-9)
    assert {"weights", "audio_collapse", "map", "negated", "constant", "loss_over_chance"} <= set(got["metric"])


def test_study_tables_round_trip_and_stored_seeds_come_in_seed_order(tmp_path):
    from avgnbook.results import read_study_table, stored_seeds, write_study_table

    df = pd.DataFrame({"method": ["AVGN", "centre prior"], "run": ["0123abcd", ""], "value": [0.5, 0.25]})
    path = write_study_table(df, tmp_path, "t.csv")
    assert path == tmp_path / "t.csv" and not list(tmp_path.glob(".*"))  # no temporary file left
    back = read_study_table(tmp_path, "t.csv")
    assert list(back["run"]) == ["0123abcd", ""] and list(back["value"]) == [0.5, 0.25]
    runs = {"avgn/seed2": "c", "ezvsl/seed0": "x", "avgn/seed0": "a", "avgn/seed10": "d", "avgn-6ep/seed1": "y"}
    assert stored_seeds(runs, "avgn") == [(0, "a"), (2, "c"), (10, "d")]


def test_the_threshold_rule_is_chosen_by_its_worst_margin_on_validation():
    """Per rule: the mean over seeds per set, the margin min(F1 - 0.85, 0.05 - gap) over the sets; the
    largest margin wins (ties: the smaller beta); test rows never enter the choice; the chosen rule's
    test rows become long results for the learning targets."""
    import pandas as pd

    from avgnbook.analysis import choose_presence_rule, rule_results

    spec = [(1.0, "val/duet/scene", 0, 0.90, 0.06), (1.0, "val/duet/scene", 1, 0.90, 0.08), (1.0, "val/duet/concat", 0, 0.86, 0.07),
            (1.0, "val/duet/concat", 1, 0.86, 0.07), (1.5, "val/duet/scene", 0, 0.89, 0.04), (1.5, "val/duet/scene", 1, 0.87, 0.04),
            (1.5, "val/duet/concat", 0, 0.86, 0.06), (1.5, "val/duet/concat", 1, 0.86, 0.04), (2.0, "val/duet/scene", 0, 0.85, 0.03),
            (2.0, "val/duet/scene", 1, 0.85, 0.03), (2.0, "val/duet/concat", 0, 0.80, 0.03), (2.0, "val/duet/concat", 1, 0.82, 0.03),
            (2.0, "test/duet/scene", 0, 0.99, 0.0), (1.5, "test/duet/scene", 0, 0.70, 0.10), (1.5, "test/duet/scene", 1, 0.72, 0.12)]
    rows = pd.DataFrame([dict(beta=b, set=s, seed=sd, threshold=0.3, presence_f1=f, gap=g, oracle_cap=0.4, predicted_cap=0.4 - g, run=f"r{sd}")
                         for b, s, sd, f, g in spec])
    beta, table = choose_presence_rule(rows)
    margins = table.groupby("beta")["margin"].first()
    # beta 1: min(0.05 - 0.07, 0.05 - 0.07) = -0.02; beta 1.5: concat gap 0.05 -> 0.0, scene F1 0.88 -> 0.03: 0.0; beta 2: F1 0.81 -> -0.04
    assert margins.to_dict() == pytest.approx({1.0: -0.02, 1.5: 0.0, 2.0: -0.04}, abs=1e-9) and beta == 1.5
    assert set(table["set"]) == {"val/duet/scene", "val/duet/concat"}
    res = rule_results(rows, beta, "AVGN (F1.5)")
    assert len(res) == 6 and set(res["mode"]) == {"oracle", "predicted"}
    f1 = res[res["metric"] == "presence_f1"].set_index("seed")["value"]
    assert f1.to_dict() == {0: 0.70, 1: 0.72}
    gap = res[(res["mode"] == "oracle")].set_index("seed")["value"] - res[(res["mode"] == "predicted") & (res["metric"] == "cap")].set_index("seed")["value"]
    assert gap.to_dict() == pytest.approx({0: 0.10, 1: 0.12})
    with pytest.raises(ValueError, match="no rows"):
        choose_presence_rule(rows[rows["set"].str.startswith("test/")])
