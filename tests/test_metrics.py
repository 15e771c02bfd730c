"""The evaluation protocol: hand-computed cases, scikit-learn parity, invariances and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from avgn import metrics as M
from avgn.boxes import boxes_to_masks, mask_to_box, xywh_to_xyxy, xyxy_to_xywh

BACKENDS = ("numpy", "torch")


def _sk_ap(scores: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    return np.array(
        [average_precision_score(m.flatten().numpy(), s.flatten().numpy()) for s, m in zip(scores, masks)]
    )


# ---------------------------------------------------------------- pixel AP
@pytest.mark.parametrize("backend", BACKENDS)
def test_ap_hand_computed_4x4(backend):
    scores = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [15, 13, 10, 4]] = True  # ranks 1, 3, 6, 12 in descending order
    ap = M.pixel_average_precision(scores, mask.reshape(1, 4, 4), backend=backend)
    assert ap.item() == pytest.approx((1 / 1 + 2 / 3 + 3 / 6 + 4 / 12) / 4, abs=1e-15)  # 0.625


@pytest.mark.parametrize("backend", BACKENDS)
def test_ap_hand_computed_ties(backend):
    # thresholds >= 2: P = 1/2, R = 1/2;  >= 1: P = 2/3, R = 1  ->  AP = 0.5*0.5 + 0.5*(2/3)
    scores = torch.tensor([[[2.0, 2.0], [1.0, 0.0]]])
    mask = torch.tensor([[[True, False], [True, False]]])
    assert M.pixel_average_precision(scores, mask, backend=backend).item() == pytest.approx(0.25 + 1 / 3, abs=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ap_perfect_and_constant_maps(backend):
    g = torch.zeros(2, 8, 8, dtype=torch.bool)
    g[0, 2:5, 1:7] = True
    g[1, :, :3] = True
    perfect = g.float() + 0.1 * torch.rand(2, 8, 8) * g  # every positive above every negative
    assert torch.equal(M.pixel_average_precision(perfect, g, backend=backend), torch.ones(2, dtype=torch.float64))
    const = torch.full((2, 8, 8), 0.3)
    ap = M.pixel_average_precision(const, g, backend=backend)
    expected = g.flatten(1).double().mean(1)  # one threshold: precision = mask fraction, recall = 1
    assert torch.allclose(ap, expected, atol=1e-15, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ap_matches_sklearn_with_ties(backend, dtype):
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 7, (40, 9, 11), generator=gen).to(dtype)  # many ties
    masks = torch.rand(40, 9, 11, generator=gen) < torch.rand(40, 1, 1, generator=gen)
    masks[:, 0, 0] = True  # no empty masks
    ap = M.pixel_average_precision(scores, masks, backend=backend)
    np.testing.assert_allclose(ap.numpy(), _sk_ap(scores, masks), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ap_matches_sklearn_on_upsampled_maps(backend):
    gen = torch.Generator().manual_seed(2)
    low = torch.randn(25, 7, 7, generator=gen)
    scores = M.upsample_maps(low, (56, 56))
    boxes = torch.rand(25, 2, generator=gen) * 0.5
    masks = boxes_to_masks(torch.cat([boxes, boxes + 0.3], 1), (56, 56))
    ap = M.pixel_average_precision(scores, masks, backend=backend)
    np.testing.assert_allclose(ap.numpy(), _sk_ap(scores, masks), rtol=0, atol=1e-12)


def test_backends_agree_and_chunking_is_invisible():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(37, 16, 16, generator=gen).round(decimals=1)
    masks = torch.rand(37, 16, 16, generator=gen) < 0.25
    a = M.pixel_average_precision(scores, masks, backend="numpy")
    b = M.pixel_average_precision(scores, masks, backend="torch", chunk_size=5)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_mask_is_nan_or_error_never_a_number(backend):
    scores = torch.rand(3, 4, 4)
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True
    ap = M.pixel_average_precision(scores, masks, backend=backend)
    assert not math.isnan(ap[0].item()) and math.isnan(ap[1].item()) and math.isnan(ap[2].item())
    with pytest.raises(ValueError, match=r"empty mask\(s\) at index \[1, 2\]"):
        M.pixel_average_precision(scores, masks, empty="error", backend=backend)


def test_input_errors_are_clear():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="differ in shape"):
        M.pixel_average_precision(torch.rand(2, 4, 5), torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="must be a bool tensor"):
        M.pixel_average_precision(torch.rand(2, 4, 4), masks.float())
    with pytest.raises(TypeError, match="floating-point"):
        M.pixel_average_precision(torch.ones(2, 4, 4, dtype=torch.long), masks)
    bad = torch.rand(2, 4, 4)
    bad[1, 2, 2] = math.nan
    with pytest.raises(ValueError, match=r"NaN or inf in 1 sample\(s\) \(first indices: \[1\]\)"):
        M.pixel_average_precision(bad, masks)
    with pytest.raises(ValueError, match="NaN or inf"):
        M.evaluate_single_source(bad, masks)
    with pytest.raises(ValueError, match="backend"):
        M.pixel_average_precision(torch.rand(2, 4, 4), masks, backend="cuda")


# ---------------------------------------------------------------- binarisation and cIoU
def test_binarize_rules_hand_computed():
    ramp = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    # top_fraction 0.5: threshold = sorted[int(16 * 0.5)] = 8, strictly above -> 9..15
    assert M.binarize(ramp, "top_fraction", 0.5).flatten().nonzero().flatten().tolist() == list(range(9, 16))
    # relative_max 0.5 on the raw map: > 7.5 -> 8..15
    assert M.binarize(ramp, "relative_max", 0.5).flatten().nonzero().flatten().tolist() == list(range(8, 16))
    # fixed 0.5 after min-max: i / 15 >= 0.5 -> 8..15
    assert M.binarize(ramp, "fixed", 0.5).flatten().nonzero().flatten().tolist() == list(range(8, 16))
    assert not M.binarize(torch.full((1, 4, 4), 2.0), "top_fraction").any()  # constant map: nothing strictly above
    assert not M.binarize(torch.full((1, 4, 4), 2.0), "fixed", 0.5).any()  # constant map normalises to 0
    assert not M.binarize(ramp, "top_fraction", 0.0).any()
    with pytest.raises(ValueError, match="positive maximum"):
        M.binarize(-ramp - 1, "relative_max", 0.5)
    with pytest.raises(ValueError, match="unknown binarisation rule"):
        M.binarize(ramp, "otsu", 0.5)


def test_ciou_hand_computed():
    g = torch.zeros(1, 4, 4, dtype=torch.bool)
    g[0, :2, :] = True  # 8 pixels
    p = torch.zeros(1, 4, 4, dtype=torch.bool)
    p[0, :2, :2] = True  # 4 inside
    assert M.ciou(p, g).item() == 0.5  # 4 / (8 + 0)
    p[0, 3, :] = True  # 4 outside
    assert M.ciou(p, g).item() == 4 / 12
    assert M.ciou(g, g).item() == 1.0
    assert math.isnan(M.ciou(p, torch.zeros_like(g)).item())


def test_success_rate_and_auc_hand_computed():
    assert M.SUCCESS_THRESHOLDS[0] == 0.0 and M.SUCCESS_THRESHOLDS[-1] == 1.0 and len(M.SUCCESS_THRESHOLDS) == 21
    ious = torch.tensor([0.0, 0.5], dtype=torch.float64)
    assert M.success_rate(ious, 0.5) == 0.5
    # rates: 1 at t=0, 0.5 for t in (0, 0.5], 0 above -> 0.0375 + 9 * 0.025 + 0.0125
    assert M.success_auc(ious) == pytest.approx(0.0375 + 0.225 + 0.0125, abs=1e-12)
    assert M.success_auc(torch.ones(3, dtype=torch.float64)) == pytest.approx(1.0)
    assert M.success_rate(torch.tensor([0.3, math.nan], dtype=torch.float64), 0.3) == 1.0  # NaN excluded


@pytest.mark.parametrize("rule,value", [("top_fraction", 0.5), ("top_fraction", 0.3), ("fixed", 0.5), ("relative_max", 0.6)])
def test_fused_cpu_path_equals_generic_path(rule, value):
    gen = torch.Generator().manual_seed(4)
    maps = torch.rand(30, 7, 7, generator=gen).round(decimals=2)  # positive maps with ties
    masks = torch.rand(30, 28, 28, generator=gen) < 0.3
    a = M.evaluate_single_source(maps, masks, rule=rule, value=value, backend="numpy")
    b = M.evaluate_single_source(maps, masks, rule=rule, value=value, backend="torch")
    torch.testing.assert_close(a.ap, b.ap, rtol=0, atol=1e-12)
    assert torch.equal(a.ciou, b.ciou)


def test_evaluate_single_source_summary_and_empty_policy():
    g = torch.zeros(3, 8, 8, dtype=torch.bool)
    g[0, :4] = True
    g[1, :, :4] = True
    maps = g.float()
    with pytest.raises(ValueError, match="1 empty ground-truth mask"):
        M.evaluate_single_source(maps, g)
    res = M.evaluate_single_source(maps, g, rule="fixed", value=0.5, allow_empty=True)
    s = res.summary()
    assert s["ap"] == 1.0 and s["iou@0.5"] == 1.0 and s["auc"] == pytest.approx(1.0) and s["n"] == 2 and s["n_empty"] == 1


def test_upsampling_is_bilinear_align_corners_false():
    low = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    up = M.upsample_maps(low, (4, 4))
    # align_corners=False: the first output pixel centre maps to the input corner and is clamped
    assert up[0, 0, 0].item() == 0.0 and up[0, 0, 1].item() == 0.25 and up[0, 3, 3].item() == 3.0


# ---------------------------------------------------------------- multi source
def _two_source_case():
    g = torch.zeros(2, 2, 8, 8, dtype=torch.bool)
    g[:, 0, :, :4] = True  # source 0 on the left
    g[:, 1, :, 4:] = True  # source 1 on the right
    all_maps = torch.zeros(2, 3, 8, 8)
    all_maps[:, 1, :, :4] = 1.0  # class 1 map lights the left
    all_maps[:, 2, :, 4:] = 1.0  # class 2 map lights the right
    return g, all_maps


def test_class_aware_maps_and_cap():
    g, all_maps = _two_source_case()
    classes = torch.tensor([[1, 2], [2, 1]])  # sample 1 has the classes swapped: its maps are wrong
    maps, valid = M.class_aware_maps(all_maps, classes)
    assert valid.all() and maps.shape == (2, 2, 8, 8)
    res = M.evaluate_multi_source(maps, g, valid, rule="fixed", value=0.5)
    assert res.cap[0].tolist() == [1.0, 1.0]
    assert res.cap[1].tolist() == [0.5, 0.5]  # a map disjoint from the mask: AP = mask fraction... of ties
    assert res.piap.tolist() == [1.0, 1.0]  # the best assignment recovers the swap
    s = res.summary()
    assert s["cap"] == 0.75 and s["piap"] == 1.0 and s["ciou@0.3"] == 0.5 and s["n_pairs"] == 4
    per = res.per_class(classes, ["a", "b", "c"])
    assert per["b"]["n"] == 2 and per["b"]["cap"] == 0.75


def test_piap_is_permutation_invariant_and_handles_padding():
    gen = torch.Generator().manual_seed(5)
    maps = torch.randn(6, 4, 7, 7, generator=gen)
    masks = torch.rand(6, 3, 14, 14, generator=gen) < 0.3
    valid = torch.tensor([[True, True, True]] * 3 + [[True, True, False]] * 3)
    base = M.piap(maps, masks, valid)
    perm = maps[:, torch.tensor([2, 0, 3, 1])]
    torch.testing.assert_close(M.piap(perm, masks, valid), base, rtol=0, atol=1e-12)
    pairs = M.pairwise_ap(maps, masks)
    assert pairs.shape == (6, 4, 3)
    # brute force over all injective maps for the padded samples
    for i in range(3, 6):
        best = max((pairs[i, a, 0] + pairs[i, b, 1]).item() for a in range(4) for b in range(4) if a != b) / 2
        assert base[i].item() == pytest.approx(best, abs=1e-12)


def test_pairwise_ap_cpu_path_is_bit_identical_to_per_pair_ap_and_sklearn():
    """The CPU path sorts each map once for all masks; every pair must equal the per-pair pixel AP
    bit for bit (ties and empty masks included) and scikit-learn to rounding."""
    from sklearn.metrics import average_precision_score

    gen = torch.Generator().manual_seed(9)
    maps = torch.randn(4, 5, 7, 7, generator=gen)
    maps[1] = maps[1].round()  # heavy ties after upsampling too
    masks = torch.rand(4, 3, 28, 28, generator=gen) < torch.rand(4, 3, 1, 1, generator=gen) * 0.4
    masks[2, 1] = False  # an empty mask -> NaN
    pairs = M.pairwise_ap(maps, masks)
    up = M.upsample_maps(maps, (28, 28))
    for k in range(5):
        for s in range(3):
            ref = M.pixel_average_precision(up[:, k], masks[:, s], empty="nan")
            assert torch.equal(torch.nan_to_num(pairs[:, k, s], nan=-1.0), torch.nan_to_num(ref, nan=-1.0))
    assert torch.isnan(pairs[2, :, 1]).all() and not torch.isnan(pairs[2, :, 0]).any()
    sk = average_precision_score(masks[3, 0].flatten().numpy(), up[3, 2].flatten().numpy())
    assert pairs[3, 2, 0].item() == pytest.approx(sk, abs=1e-12)
    torch.testing.assert_close(M.pairwise_ap(maps, masks, backend="torch"), pairs, rtol=0, atol=1e-12, equal_nan=True)


def test_piap_with_fewer_maps_than_sources_scores_missing_sources_zero():
    g, all_maps = _two_source_case()
    one = all_maps[:, 1:2]  # a single predicted map (the left one)
    res = M.piap(one, g)
    assert res.tolist() == [0.5, 0.5]  # left source AP 1, right source gets no map -> 0


def test_hungarian_and_exhaustive_assignment_agree():
    gen = torch.Generator().manual_seed(6)
    scores = torch.rand(20, 9, 4, generator=gen, dtype=torch.float64)  # 9P4 = 3024 -> exhaustive
    exhaustive = M.best_assignment_mean(scores)
    big = torch.cat([scores, torch.zeros(20, 3, 4, dtype=torch.float64)], 1)  # 12P4 = 11880 -> Hungarian
    torch.testing.assert_close(M.best_assignment_mean(big), exhaustive, rtol=0, atol=1e-12)


def test_multi_source_errors():
    g, all_maps = _two_source_case()
    with pytest.raises(ValueError, match="classes contains an index"):
        M.class_aware_maps(all_maps, torch.tensor([[1, 3], [0, 1]]))
    with pytest.raises(ValueError, match="same N, S"):
        M.evaluate_multi_source(all_maps, g)
    g2 = g.clone()
    g2[0, 1] = False
    maps, valid = M.class_aware_maps(all_maps, torch.tensor([[1, 2], [1, 2]]))
    with pytest.raises(ValueError, match="empty ground-truth"):
        M.evaluate_multi_source(maps, g2, valid)
    res = M.evaluate_multi_source(maps, g2, valid, allow_empty=True)
    assert res.summary()["n_empty"] == 1 and res.summary()["n_pairs"] == 3


# ---------------------------------------------------------------- boxes
def test_box_format_round_trips_and_music_boxes_are_not_corners():
    xywh = torch.tensor([[0.5, 0.4, 0.3, 0.2], [0.0, 0.0, 1.0, 1.0]])
    xyxy = xywh_to_xyxy(xywh)
    torch.testing.assert_close(xyxy, torch.tensor([[0.5, 0.4, 0.8, 0.6], [0.0, 0.0, 1.0, 1.0]]))
    torch.testing.assert_close(xyxy_to_xywh(xyxy), xywh)
    # the public loader's bug: reading [x, y, w, h] as corners gives x2 < x1 -> an empty box
    with pytest.raises(ValueError, match="x2 < x1"):
        boxes_to_masks(xywh[:1], (10, 10))
    with pytest.raises(ValueError, match=r"\[4\]|\[\.\.\., 4\]"):
        xywh_to_xyxy(torch.rand(2, 3))


def test_boxes_to_masks_pixel_centres_and_mask_to_box_round_trip():
    m = boxes_to_masks(torch.tensor([[0.25, 0.5, 0.75, 1.0]]), (4, 8))
    expected = torch.zeros(1, 4, 8, dtype=torch.bool)
    expected[0, 2:4, 2:6] = True
    assert torch.equal(m, expected)
    gen = torch.Generator().manual_seed(7)
    masks = torch.zeros(10, 16, 16, dtype=torch.bool)
    for i in range(10):
        y, x = torch.randint(0, 12, (2,), generator=gen).tolist()
        masks[i, y : y + 4, x : x + 3] = True
    boxes = mask_to_box(masks)
    assert torch.equal(boxes_to_masks(boxes, (16, 16)), masks)
    with pytest.raises(ValueError, match="empty mask"):
        mask_to_box(torch.zeros(1, 4, 4, dtype=torch.bool))
