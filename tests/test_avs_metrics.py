"""AVSBench mIoU and F-score (avgn.metrics.avs_*): hand-computed values, empty ground truth, and
independence from the batch size (the public code's batched average is not)."""

from __future__ import annotations

import math

import pytest
import torch

from avgn.metrics import AvsResult, avs_fscore_curves, avs_iou, avs_thresholds, evaluate_avs

pytestmark = pytest.mark.usefixtures("one_thread")


def _masks() -> tuple[torch.Tensor, torch.Tensor]:
    pred = torch.zeros(1, 4, 4, dtype=torch.bool)
    pred[0, :2, :2] = True  # 4 pixels
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, 0, :] = True  # 4 pixels, 2 shared with pred
    return pred, gt


def test_iou_by_hand():
    pred, gt = _masks()
    assert avs_iou(pred, gt).tolist() == pytest.approx([2 / 6])
    assert avs_iou(gt, gt).tolist() == [1.0]
    assert avs_iou(~gt, gt).tolist() == [0.0]


def test_empty_ground_truth_policies():
    pred, _ = _masks()
    empty_gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    preds = torch.stack([pred[0], torch.zeros(4, 4, dtype=torch.bool)])
    assert avs_iou(preds, empty_gt, empty="match").tolist() == [0.0, 1.0]
    assert all(math.isnan(v) for v in avs_iou(preds, empty_gt, empty="exclude").tolist())
    with pytest.raises(ValueError, match="empty ground-truth"):
        avs_iou(preds, empty_gt, empty="error")
    with pytest.raises(ValueError, match="bool"):
        avs_iou(preds.float(), empty_gt)


def test_fscore_of_a_binary_mask_by_hand():
    pred, gt = _masks()
    curve = avs_fscore_curves(pred.double(), gt)[0]
    assert curve.shape == (255,)
    # t = 0 keeps every pixel: P = 4/16, R = 1 -> 1.3 * 0.25 / (0.3 * 0.25 + 1)
    assert float(curve[0]) == pytest.approx(1.3 * 0.25 / 1.075)
    # t > 0 keeps the mask: P = R = 0.5 -> F = 0.5
    assert torch.allclose(curve[1:], torch.full((254,), 0.5, dtype=torch.float64))
    res = evaluate_avs(pred, gt)
    assert res.summary() == {"miou": pytest.approx(1 / 3), "fscore": pytest.approx(0.5), "n": 1, "n_empty": 0}


def test_fscore_curves_equal_a_direct_loop():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 9, 7, generator=g).double()
    scores[0, :3] = 0.5  # ties
    masks = torch.rand(3, 9, 7, generator=g) > 0.6
    thr = avs_thresholds()
    ref = torch.zeros(3, 255, dtype=torch.float64)
    for i in range(3):
        for j, t in enumerate(thr.tolist()):
            p = scores[i] >= t
            tp = float((p & masks[i]).sum())
            prec = tp / float(p.sum()) if p.any() else 0.0
            rec = tp / float(masks[i].sum())
            ref[i, j] = 0.0 if prec + rec == 0 else 1.3 * prec * rec / (0.3 * prec + rec)
    assert torch.allclose(avs_fscore_curves(scores, masks), ref, atol=1e-12)


def test_fscore_rejects_scores_outside_unit_interval():
    pred, gt = _masks()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        avs_fscore_curves(pred.double() * 2, gt)


def _public_style_batched_f(scores: torch.Tensor, masks: torch.Tensor, batch_size: int) -> float:
    """AVSBench's test loop as the anchors describe it: per batch, the curve averaged over the
    batch's non-empty images, its maximum, then the mean of those maxima over batches."""
    per_batch = []
    for lo in range(0, scores.shape[0], batch_size):
        c = avs_fscore_curves(scores[lo:lo + batch_size], masks[lo:lo + batch_size])
        c = c[~torch.isnan(c).all(1)]
        if len(c):
            per_batch.append(float(c.mean(0).max()))
    return sum(per_batch) / len(per_batch)


def test_fscore_does_not_depend_on_the_batch_size():
    # image A is best segmented at a low threshold, image B at a high one
    masks = torch.zeros(4, 1, 4, dtype=torch.bool)
    masks[:, 0, :2] = True
    scores = torch.tensor([[[0.3, 0.3, 0.0, 0.0]], [[0.9, 0.9, 0.6, 0.6]]] * 2, dtype=torch.float64)
    whole = evaluate_avs(scores >= 0.5, masks, scores)
    chunks = AvsResult.concat([evaluate_avs(scores[i:i + 1] >= 0.5, masks[i:i + 1], scores[i:i + 1]) for i in range(4)])
    assert chunks.fscore == whole.fscore and chunks.miou == whole.miou
    # the public batching gives different numbers for batch sizes 1 and 2 (4 in AVSBench's test.sh) ...
    b1, b2, b4 = (_public_style_batched_f(scores, masks, b) for b in (1, 2, 4))
    assert b1 == pytest.approx(1.0) and b1 > b2 + 0.1
    # ... ours is its value with the whole set as one batch, and the per-image oracle is b1
    assert whole.fscore == pytest.approx(b4) and whole.fscore == pytest.approx(b2)
    assert whole.fscore_adaptive == pytest.approx(b1)
    # thresholds in (0.3, 0.6]: A predicts nothing (F = 0), B predicts its mask (F = 1) -> 0.5;
    # the best single threshold for both is <= 0.3: A perfect, B all four pixels (P = 0.5, R = 1)
    fb = 1.3 * 0.5 / (0.3 * 0.5 + 1)
    assert whole.fscore == pytest.approx((1 + fb) / 2)


def test_empty_ground_truth_is_counted_not_scored_in_the_fscore():
    pred, gt = _masks()
    preds = torch.cat([pred, pred])
    gts = torch.cat([gt, torch.zeros_like(gt)])
    res = evaluate_avs(preds, gts)
    assert res.n_empty == 1
    assert res.fscore == pytest.approx(0.5)  # the empty image is excluded
    assert res.miou == pytest.approx((1 / 3 + 0.0) / 2)  # 'match': a false alarm on it scores 0
    res_ex = evaluate_avs(preds, gts, empty="exclude")
    assert res_ex.miou == pytest.approx(1 / 3)
