"""The chapter-06 explorer: the maths (score_map), the items built from trained runs, and the
widget callbacks driven headlessly."""

from __future__ import annotations

import io
import math
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from avgn import metrics
from avgnbook.explorer import Explorer, ExplorerItem, binarize_value, explorer_items, score_map, wav_bytes

SET = "test/duet/scene"
LABELS = {"AVGN": "avgn", "EZ-VSL": "ezvsl", "MaL": "mal"}


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------
# score_map: the maths
# --------------------------------------------------------------------------------------------------
def _hand_case():
    """Map values 0..15 row by row; ground truth: the 2x2 bottom-right block (10, 11, 14, 15) and the
    top-left pixel (0): |G| = 5."""
    m = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    gt = torch.zeros(4, 4, dtype=torch.bool)
    gt[2:, 2:] = True
    gt[0, 0] = True
    return m, gt


def test_score_map_by_hand():
    m, gt = _hand_case()
    # median rule: keep pixels strictly above the element at ascending index int(16 * 0.5) = 8 ->
    # values 9..15 (7 px); P & G = {10, 11, 14, 15} = 4, P \ G = {9, 12, 13} = 3 -> 4 / (5 + 3)
    binary, c = score_map(m, gt, "top_fraction", 0.5)
    assert binary.dtype == torch.bool and binary.shape == (4, 4)
    assert torch.equal(binary, m >= 9)
    assert c == pytest.approx(0.5, abs=1e-12)
    # fixed 0.5: (v / 15) >= 0.5 -> v >= 8 (8 px); P & G = 4, P \ G = {8, 9, 12, 13} = 4 -> 4 / 9
    binary, c = score_map(m, gt, "fixed", 0.5)
    assert int(binary.sum()) == 8 and c == pytest.approx(4 / 9, abs=1e-12)
    # slider threshold 0.75 under top_fraction = value 0.25: above index 12 -> {13, 14, 15};
    # P & G = {14, 15}, P \ G = {13} -> 2 / (5 + 1)
    binary, c = score_map(m, gt, "top_fraction", binarize_value("top_fraction", 0.75))
    assert int(binary.sum()) == 3 and c == pytest.approx(1 / 3, abs=1e-12)
    # no ground truth (a silent class) -> NaN, the mask is still computed
    binary, c = score_map(m, None, "top_fraction", 0.5)
    assert math.isnan(c) and int(binary.sum()) == 7
    # an empty ground-truth mask is undefined as in the evaluation
    assert math.isnan(score_map(m, torch.zeros(4, 4, dtype=torch.bool))[1])
    # shifting / scaling the map changes nothing (min-max normalised rules)
    assert score_map(3 * m - 7, gt, "fixed", 0.5)[1] == pytest.approx(4 / 9, abs=1e-12)


def test_binarize_value_is_a_threshold_for_both_rules():
    assert binarize_value("top_fraction", 0.5) == 0.5 and binarize_value("fixed", 0.5) == 0.5
    assert binarize_value("top_fraction", 0.7) == pytest.approx(0.3) and binarize_value("fixed", 0.7) == 0.7
    with pytest.raises(ValueError, match="rule"):
        binarize_value("relative_max", 0.5)
    g = torch.Generator().manual_seed(0)
    m = torch.randn(20, 20, generator=g)
    for rule in ("top_fraction", "fixed"):
        counts = [int(score_map(m, None, rule, binarize_value(rule, t))[0].sum()) for t in np.arange(0.05, 0.96, 0.05)]
        assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


@pytest.mark.parametrize("rule,value", [("top_fraction", 0.5), ("top_fraction", 0.2), ("top_fraction", 0.85), ("fixed", 0.3), ("fixed", 0.5)])
def test_score_map_agrees_with_the_evaluation_protocol(rule, value):
    """Per map, score_map gives the cIoU of avgn.metrics.evaluate_single_source (maps at feature
    resolution, upsampled to the masks) and of binarize + ciou."""
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(12, 7, 7, generator=g)
    masks = torch.rand(12, 28, 28, generator=g) > 0.6
    masks[3] = False  # empty: NaN in both
    masks[4] = True
    ref = metrics.evaluate_single_source(maps, masks, rule=rule, value=value, allow_empty=True).ciou
    up = metrics.upsample_maps(maps, (28, 28))
    ref2 = metrics.ciou(metrics.binarize(up, rule, value), masks)
    for i in range(12):
        binary, c = score_map(maps[i], masks[i], rule, value)
        assert binary.shape == (28, 28)
        assert torch.equal(binary, metrics.binarize(up[i : i + 1], rule, value)[0])
        if i == 3:
            assert math.isnan(c) and math.isnan(float(ref[i]))
        else:
            assert c == pytest.approx(float(ref[i]), abs=1e-12) and c == pytest.approx(float(ref2[i]), abs=1e-12)


def test_wav_bytes_round_trip():
    sr = 8000
    x = np.sin(np.linspace(0, 100, 4000)).astype(np.float32) * 0.5
    x[0] = 3.0  # clipped
    with wave.open(io.BytesIO(wav_bytes(x, sr))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (sr, 1, 2, 4000)
        y = np.frombuffer(w.readframes(4000), dtype="<i2") / 32767.0
    assert y[0] == pytest.approx(1.0) and np.abs(y[1:] - x[1:]).max() < 1e-4


# --------------------------------------------------------------------------------------------------
# items from tiny trained runs
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(fake_build, tmp_path_factory) -> dict[str, Path]:
    from helpers import tiny_experiment as _tiny

    from avgn.train import train

    root = tmp_path_factory.mktemp("explorer_runs")
    out = {}
    for label, method in LABELS.items():
        out[label] = root / method
        train(_tiny(method, **{"train.epochs": 1}), fake_build, out[label], seed=0, device="cpu", progress=False)
    return out


@pytest.fixture(scope="module")
def items(runs) -> list[ExplorerItem]:
    return explorer_items(runs, SET, [1, 0], device="cpu")


def test_items_hold_every_map_and_the_evaluation_assignment(items, runs, fake_build):
    from avgn.evaluate import example_maps
    from avgn.runs import load_trained_model

    assert [it.set_name for it in items] == [SET, SET]
    class_names = ("accordion", "cello", "flute", "violin", "dog", "cat", "cow")
    for it in items:
        s, (h, w) = len(it.source_names), it.image.shape[-2:]
        assert s == 2 and it.masks.shape == (2, h, w) and it.masks.dtype == torch.bool
        assert it.image.shape[0] == 3 and 0 <= float(it.image.min()) and float(it.image.max()) <= 1
        assert it.sample_rate == 16000 and it.mixture.shape == (48000,) and it.sources.shape == (2, 48000)
        assert set(it.maps) == set(LABELS) and set(it.kinds.values()) == {"class_aware", "shared", "slots"}
        assert list(it.maps["AVGN"]) == list(class_names)
        assert list(it.maps["EZ-VSL"]) == ["shared"]
        assert list(it.maps["MaL"]) == ["slot 1", "slot 2"]
        for maps in it.maps.values():
            assert all(v.shape == (h, w) and v.dtype == torch.float32 for v in maps.values())
        assert it.source_map["AVGN"] == {src: src for src in it.source_names}  # class name = source name here
        assert it.source_map["EZ-VSL"] == {src: "shared" for src in it.source_names}
        assert sorted(it.source_map["MaL"].values()) == ["slot 1", "slot 2"]  # one-to-one
        assert set(it.audio_probs) == {"AVGN"} and all(0 <= p <= 1 for p in it.audio_probs["AVGN"].values())
        assert set(it.audio_probs["AVGN"]) == set(class_names)
    # the scoring map of each source is the one the evaluation uses (example_maps: oracle, matched slot)
    for label, run in runs.items():
        model, exp, _ = load_trained_model(run, device="cpu")
        ref = example_maps(model, exp, fake_build, SET, [1, 0], device="cpu")
        for it, r in zip(items, ref):
            assert r["scene_id"] == it.scene_id
            for j, src in enumerate(it.source_names):
                mine = metrics.minmax_normalise(it.maps[label][it.source_map[label][src]][None])[0]
                assert torch.allclose(mine, r["maps"][j], atol=1e-5), (label, it.scene_id, src)


def test_explorer_widgets_drive_the_state(items):
    import ipywidgets as w
    from matplotlib.figure import Figure

    ex = Explorer(items)
    it0 = items[0]
    st = ex.state
    # initial state: first scene, first method, the map of the first source, the median rule
    assert (st["scene_id"], st["method"], st["map_name"]) == (it0.scene_id, "AVGN", it0.source_names[0])
    assert st["source"] == it0.source_names[0] and (st["rule"], st["threshold"], st["value"]) == ("top_fraction", 0.5, 0.5)
    ref = score_map(it0.maps["AVGN"][st["map_name"]], it0.masks[0], "top_fraction", 0.5)
    assert st["ciou"] == pytest.approx(ref[1]) and st["pixels"] == int(ref[0].sum())
    assert st["audio_prob"] == pytest.approx(it0.audio_probs["AVGN"][st["map_name"]])
    assert st["gt_pixels"] == int(it0.masks[0].sum())
    png = ex.output.outputs[0]["data"]["image/png"]
    assert isinstance(png, str) and len(png) > 1000

    # raising the threshold under top_fraction never grows the mask
    counts = []
    for t in (0.2, 0.4, 0.6, 0.8, 0.95):
        ex.threshold.value = t
        assert ex.state["threshold"] == t and ex.state["value"] == pytest.approx(1 - t)
        counts.append(ex.state["pixels"])
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    ex.rule.value = "fixed"
    assert ex.state["rule"] == "fixed" and ex.state["value"] == 0.95
    ex.threshold.value = 0.5
    assert ex.state["ciou"] == pytest.approx(score_map(it0.maps["AVGN"][ex.map_name.value], it0.masks[0], "fixed", 0.5)[1])
    ex.rule.value = "top_fraction"

    # a class that is not sounding: no matched source, cIoU NaN
    silent = next(c for c in it0.maps["AVGN"] if c not in it0.source_names)
    ex.map_name.value = silent
    assert ex.state["map_name"] == silent and ex.state["source"] is None and math.isnan(ex.state["ciou"])
    assert ex.state["gt_pixels"] is None and ex.state["pixels"] > 0 and ex.source.options == ()
    # the second source's class: scored against its own mask
    ex.map_name.value = it0.source_names[1]
    assert ex.state["source"] == it0.source_names[1]
    assert ex.state["ciou"] == pytest.approx(score_map(it0.maps["AVGN"][it0.source_names[1]], it0.masks[1], "top_fraction", 0.5)[1])

    # switching method updates the map options and resets to the map of the first source
    ex.method.value = "EZ-VSL"
    assert ex.map_name.options == ("shared",) and ex.state["map_name"] == "shared" and ex.state["audio_prob"] is None
    assert ex.source.options == tuple(it0.source_names) and ex.state["source"] == it0.source_names[0]
    ex.source.value = it0.source_names[1]  # the shared map scores every source
    assert ex.state["source"] == it0.source_names[1]
    assert ex.state["ciou"] == pytest.approx(score_map(it0.maps["EZ-VSL"]["shared"], it0.masks[1], "top_fraction", 0.5)[1])
    ex.method.value = "MaL"
    assert ex.map_name.options == ("slot 1", "slot 2")
    assert ex.state["map_name"] == it0.source_map["MaL"][it0.source_names[0]] and ex.state["source"] == it0.source_names[0]
    other = next(k for k in ("slot 1", "slot 2") if k != ex.state["map_name"])
    ex.map_name.value = other
    assert ex.state["source"] == it0.source_names[1] and not math.isnan(ex.state["ciou"])

    # switching scene: new audio, state follows
    it1 = items[1]
    ex.sample.value = it1.scene_id
    assert ex.state["scene_id"] == it1.scene_id and ex.state["method"] == "MaL"
    assert ex.state["map_name"] == it1.source_map["MaL"][it1.source_names[0]]
    players = [c.children[1] for c in ex.audio.children]
    labels = [c.children[0].value for c in ex.audio.children]
    assert labels == ["mixture"] + it1.source_names
    for p, x in zip(players, [it1.mixture, *it1.sources]):
        assert isinstance(p, w.Audio) and p.format == "wav" and not p.autoplay
        with wave.open(io.BytesIO(p.value)) as wv:
            assert (wv.getframerate(), wv.getnframes(), wv.getnchannels()) == (it1.sample_rate, len(x), 1)
            y = np.frombuffer(wv.readframes(len(x)), dtype="<i2") / 32767.0
        assert np.abs(y - np.clip(x, -1, 1)).max() < 1e-4

    # stills: 3 axes (frame, overlay, colour bar), 4 for AVGN (+ presence probabilities)
    fig = ex.render_still()
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    ex.method.value = "AVGN"
    fig = ex.render_still()
    assert len(fig.axes) == 4 and "cIoU" in fig.axes[1].get_title()
    assert "cos" in fig.axes[2].get_ylabel()
    box = ex.widget()
    assert isinstance(box, w.VBox) and ex.output in box.children and ex.audio in box.children

    with pytest.raises(ValueError, match="rule"):
        Explorer(items, rule="nope")
    with pytest.raises(ValueError, match="at least one"):
        Explorer([])


def test_errors_name_the_set_and_the_run(runs, tmp_path):
    with pytest.raises(IndexError, match=r"5.*test/duet/scene.*2 scenes"):
        explorer_items(runs, SET, [0, 5], device="cpu")
    with pytest.raises(ValueError, match=r"test/sextet/scene"):
        explorer_items(runs, "test/sextet/scene", [0], device="cpu")
    with pytest.raises(ValueError, match="split/task/layout"):
        explorer_items(runs, "test/duet", [0], device="cpu")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        explorer_items({"AVGN": runs["AVGN"], "X": tmp_path / "nowhere"}, SET, [0], device="cpu")
    with pytest.raises(ValueError, match="at least one run"):
        explorer_items({}, SET, [0])
