"""avgnbook.findings: the chapters' findings files and the learning targets, on hand-made tables."""

from __future__ import annotations

import pandas as pd
import pytest

from avgnbook.findings import (LEARNING_TARGETS, findings_markdown, learning_targets, read_findings, targets_sentence,
                               write_findings)


def _rows(variant, seed, set_name, mode, metric, value):
    return {"variant": variant, "seed": seed, "set": set_name, "mode": mode, "metric": metric, "value": value}


def test_findings_are_written_read_back_and_collected_in_chapter_order(tmp_path):
    write_findings("03", ["AVGN beats EZ-VSL.", "The object prior is strong."], tmp_path, runs=["b", "a", "b"], revision="abc1234")
    write_findings("02", ["AVGN learns."], tmp_path, runs=[], revision="abc1234")
    df = read_findings(tmp_path)
    assert list(df["chapter"]) == ["02", "03", "03"] and list(df["item"]) == [1, 1, 2]
    assert df.loc[1, "runs"] == "a b" and df.loc[0, "runs"] == ""
    md = findings_markdown(df, chapters=["02", "03", "04"], titles={"03": "Main results"}, revision="abc1234")
    assert "**Chapter 3 — Main results**\n- AVGN beats EZ-VSL.\n- The object prior is strong." in md
    assert "**Chapter 4**: not executed on this run store yet" in md
    assert "executed on revision" not in md
    assert "*(executed on revision abc1234, not def5678)*" in findings_markdown(df, revision="def5678")
    with pytest.raises(ValueError, match="non-empty sentences"):
        write_findings("05", ["ok", " "], tmp_path)
    with pytest.raises(ValueError, match="two digits"):
        write_findings("5", ["ok"], tmp_path)


def test_learning_targets_by_hand():
    rows = [_rows("object prior", -1, "s", "oracle", "cap", 0.20)]
    # seed 0: F1 0.90, oracle 0.40, predicted 0.37 (gap 3 points, +20 over the prior): every target met
    # seed 1: F1 0.80 (missed), oracle 0.34 (+14: missed), predicted 0.27 (gap 7: missed)
    for seed, f1, o, p in ((0, 0.90, 0.40, 0.37), (1, 0.80, 0.34, 0.27)):
        rows += [_rows("AVGN", seed, "s", "predicted", "presence_f1", f1), _rows("AVGN", seed, "s", "oracle", "cap", o),
                 _rows("AVGN", seed, "s", "predicted", "cap", p)]
    t = learning_targets(pd.DataFrame(rows), sets=["s"])
    assert len(t) == 3 * 2 and set(t["target"]) == {x.name for x in LEARNING_TARGETS}
    got = {(r.target, r.seed): (round(r.value, 6), r.met) for r in t.itertuples()}
    assert got[("presence F1 >= 0.85", 0)] == (0.9, True) and got[("presence F1 >= 0.85", 1)] == (0.8, False)
    assert got[("predicted-to-oracle CAP gap <= 5 points", 0)] == (0.03, True)
    assert got[("predicted-to-oracle CAP gap <= 5 points", 1)] == (0.07, False)
    assert got[("oracle CAP >= object prior + 15 points", 0)] == (0.2, True)
    assert got[("oracle CAP >= object prior + 15 points", 1)] == (0.14, False)
    s = targets_sentence(t)
    assert s.startswith("AVGN on 2 seeds: misses presence F1 >= 0.85 on s (0.900/0.800, seeds 0/1)")
    assert "oracle CAP >= object prior + 15 points on s (20.0/14.0 points, seeds 0/1)" in s
    only0 = targets_sentence(t[t["seed"] == 0])
    assert only0.startswith("AVGN on 1 seed: meets presence F1 >= 0.85 on s (0.900") and "misses" not in only0
    with pytest.raises(ValueError, match="expected the one reference row"):
        learning_targets(pd.DataFrame(rows[1:]), sets=["s"])


def test_versus_phrases_a_comparison():
    from avgnbook.findings import versus

    c = {"b": "EZ-VSL", "diff": 0.031, "margin_sd": 4.24, "verdict": "above"}
    assert versus(c) == "above EZ-VSL (+3.1 points, 4.2 sd)"
    assert versus({**c, "diff": -0.01, "margin_sd": -0.5, "verdict": "within noise"}) == "within noise of EZ-VSL (-1.0 points, 0.5 sd)"
    assert versus({**c, "margin_sd": float("nan"), "verdict": "within noise"}) == "within noise of EZ-VSL (+3.1 points)"
    assert versus({**c, "margin_sd": float("inf")}) == "above EZ-VSL (+3.1 points, every seed alike)"


def test_claims_table_by_hand(tmp_path):
    from avgnbook.findings import claim_row, claims_table, read_claims, write_claims

    def c(verdict, diff, sd, seeds=3, set_name="test/duet/scene"):
        return {"a": "AVGN", "b": "EZ-VSL", "set": set_name, "metric": "cap", "mean_a": 0.4, "mean_b": 0.4 - diff, "diff": diff, "sd": sd,
                "margin_sd": diff / sd, "seeds": seeds, "verdict": verdict}

    write_claims("03", [claim_row("AVGN", "beats EZ-VSL", c("above", 0.05, 0.01), "oracle"),
                        claim_row("AVGN", "beats EZ-VSL", c("above", 0.03, 0.01, set_name="test/solo/scene"), "oracle"),
                        claim_row("AVGN", "beats MaL", c("above", 0.05, 0.01)),
                        claim_row("AVGN", "beats MaL", c("within noise", 0.01, 0.02, seeds=2))], tmp_path, revision="abc")
    write_claims("09", [claim_row("T-VSL", "beats AVGN", c("below", -0.04, 0.01))], tmp_path, revision="abc")
    df = read_claims(tmp_path)
    assert list(df["chapter"].unique()) == ["03", "09"] and df.loc[0, "cell"] == "test/duet/scene cap (oracle)"
    t = claims_table(df).set_index("claim")
    assert t.loc["beats EZ-VSL", "verdict"] == "reproduces" and t.loc["beats EZ-VSL", "seeds"] == 3
    assert t.loc["beats EZ-VSL", "difference ± sd (points), per cell"] == "test/duet/scene cap (oracle): +5.0 ± 1.0; test/solo/scene cap (oracle): +3.0 ± 1.0"
    assert t.loc["beats MaL", "verdict"] == "partly (1 above, 1 within noise)" and t.loc["beats MaL", "seeds"] == 2
    assert t.loc["beats AVGN", "verdict"] == "does not reproduce (the opposite, beyond noise)" and t.loc["beats AVGN", "chapter"] == 9
    assert claims_table(read_claims(tmp_path / "none")).empty
    from avgnbook.findings import mixed_verdict

    assert (mixed_verdict(0, 2, 1), mixed_verdict(2, 0, 1)) == ("does not reproduce where beyond noise (2 within noise, 1 below)",
                                                                 "mixed (2 above, 1 below)")
    two = claims_table(pd.DataFrame([claim_row("AVGN", "depth 3 best", {**c("above", 0.02, 0.005), "b": b}) for b in ("depth 1", "depth 6")])
                       .assign(chapter="04"))
    assert two.loc[0, "difference ± sd (points), per cell"] == "test/duet/scene cap vs depth 1: +2.0 ± 0.5; test/duet/scene cap vs depth 6: +2.0 ± 0.5"
