"""Label-free (semantic) metrics (avgn.metrics.evaluate_semantic / semantic_ap / semantic_miou /
semantic_f): hand-computed cases, a brute-force reference (scikit-learn on the class x pixel volume;
loops over samples and classes), the properties the protocol needs, and the empty cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from avgn import metrics as M

pytestmark = pytest.mark.usefixtures("one_thread")

BACKENDS = ("numpy", "torch")
B2 = M.AVS_BETA2


# ---------------------------------------------------------------- brute-force references
def _class_volume(masks: torch.Tensor, classes: torch.Tensor, c: int) -> np.ndarray:
    """``[N, C, H, W]`` bool: the union of each class's source masks (loops)."""
    n = masks.shape[0]
    out = np.zeros((n, c, *masks.shape[-2:]), dtype=bool)
    for i in range(n):
        for s in range(masks.shape[1]):
            if classes[i, s] >= 0:
                out[i, classes[i, s]] |= masks[i, s].numpy()
    return out


def _reference_ap(pred_maps, pred_classes, masks, classes, c: int) -> list[float]:
    """scikit-learn's AP on the concatenated class x pixel volume of each sample, unselected classes
    scored 1 below the lowest selected score, minus the floor threshold's share n_missed / (C * H * W).
    NaN where nothing sounds."""
    up = M.upsample_maps(pred_maps, tuple(masks.shape[-2:])).double().numpy()
    truth = _class_volume(masks, classes, c)
    out = []
    for i in range(masks.shape[0]):
        chosen = [int(x) for x in pred_classes[i] if x >= 0]
        floor = min((up[i, k].min() for k in range(up.shape[1]) if pred_classes[i, k] >= 0), default=0.0) - 1.0
        score = np.full(truth.shape[1:], floor)
        for k in range(up.shape[1]):
            if pred_classes[i, k] >= 0:
                score[pred_classes[i, k]] = up[i, k]
        label = truth[i]
        if not label.any():
            out.append(math.nan)
            continue
        missed = sum(int(label[j].sum()) for j in range(c) if j not in chosen)
        out.append(average_precision_score(label.ravel(), score.ravel()) - missed / label.size)
    return out


def _reference_counts(pred_maps, pred_classes, masks, classes, c: int, rule: str, value: float) -> tuple[float, float]:
    """mIoU and F by loops: per class, TP / FP / FN summed over the samples; precision and recall
    from their definitions (0 when undefined), F-beta from them; means over the classes that occur."""
    up = M.upsample_maps(pred_maps, tuple(masks.shape[-2:]))
    truth = _class_volume(masks, classes, c)
    tp, fp, fn = np.zeros(c), np.zeros(c), np.zeros(c)
    for i in range(masks.shape[0]):
        for j in range(c):
            pred = np.zeros(truth.shape[2:], dtype=bool)
            for k in range(up.shape[1]):
                if pred_classes[i, k] == j:
                    pred = M.binarize(up[i, k][None], rule, value)[0].numpy()
            g = truth[i, j]
            tp[j] += (pred & g).sum()
            fp[j] += (pred & ~g).sum()
            fn[j] += (~pred & g).sum()
    ious, fs = [], []
    for j in range(c):
        if tp[j] + fp[j] + fn[j] == 0:
            continue
        ious.append(tp[j] / (tp[j] + fp[j] + fn[j]))
        p = tp[j] / (tp[j] + fp[j]) if tp[j] + fp[j] else 0.0
        r = tp[j] / (tp[j] + fn[j]) if tp[j] + fn[j] else 0.0
        fs.append((1 + B2) * p * r / (B2 * p + r) if p + r else 0.0)
    return float(np.mean(ious)), float(np.mean(fs))


def _random_case(seed: int, dtype: torch.dtype = torch.float32):
    """12 samples, 5 classes, up to 3 sources (padding, and two sources of one class in sample 1),
    up to 3 selected classes (none in samples 0 and 5; misses and false selections in most samples),
    low-resolution maps with ties, 12x12 masks."""
    gen = torch.Generator().manual_seed(seed)
    n, c, s, k = 12, 5, 3, 3
    masks = torch.zeros(n, s, 12, 12, dtype=torch.bool)
    classes = torch.full((n, s), -1, dtype=torch.long)
    for i in range(n):
        n_src = 1 + i % s
        cls = torch.randperm(c, generator=gen)[:n_src]
        classes[i, :n_src] = cls
        for j in range(n_src):
            y, x = torch.randint(0, 8, (2,), generator=gen).tolist()
            h, w = torch.randint(2, 5, (2,), generator=gen).tolist()
            masks[i, j, y : y + h, x : x + w] = True
    classes[1, 1] = classes[1, 0]  # two sources of one class: one class mask, their union
    pred_classes = torch.full((n, k), -1, dtype=torch.long)
    for i in range(n):
        m = 0 if i in (0, 5) else int(torch.randint(1, k + 1, (1,), generator=gen))
        pred_classes[i, :m] = torch.randperm(c, generator=gen)[:m]
    pred_maps = (torch.randn(n, k, 4, 4, generator=gen) * 2).round().to(dtype)  # ties, also after upsampling
    return pred_maps, pred_classes, masks, classes, c


# ---------------------------------------------------------------- hand-computed
def _hand_case():
    """Two samples of 2x2 pixels (flat indices 0..3), classes 0..2.

    Sample 0: class 0 sounds at pixels {0, 1}, class 1 at {2}; the method selects class 0 (map
    0.9, 0.5, 0.7, 0.1) and class 2, which is silent (map 0.8, 0.2, 0.2, 0.2), and misses class 1.
    Sample 1: class 0 sounds at {3}; the method selects class 0 (map 0.1, 0.2, 0.3, 0.9)."""
    masks = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    masks[0, 0].view(-1)[[0, 1]] = True
    masks[0, 1].view(-1)[2] = True
    masks[1, 0].view(-1)[3] = True
    classes = torch.tensor([[0, 1], [0, -1]])
    maps = torch.tensor([[[0.9, 0.5, 0.7, 0.1], [0.8, 0.2, 0.2, 0.2]], [[0.1, 0.2, 0.3, 0.9], [0.0, 0.0, 0.0, 0.0]]]).view(2, 2, 2, 2)
    return maps, torch.tensor([[0, 2], [0, -1]]), masks, classes


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_ap_miou_and_f(backend):
    maps, pred_classes, masks, classes = _hand_case()
    r = M.evaluate_semantic(maps, pred_classes, masks, classes, backend=backend)
    # sample 0: positive 0.9 -> 1/1; positive 0.5 -> cells >= 0.5 are 0.9, 0.8, 0.7, 0.5: 2/4; the
    # missed class-1 pixel -> 0; AP = (1 + 1/2 + 0) / 3. Sample 1: its one positive is on top.
    assert r.ap.tolist() == pytest.approx([0.5, 1.0], abs=1e-15)
    # scikit-learn on the 3-class volume counts the floor threshold: the miss at precision 3/12
    sk = average_precision_score(np.array([1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]),
                                 np.array([0.9, 0.5, 0.7, 0.1, -1, -1, -1, -1, 0.8, 0.2, 0.2, 0.2]))
    assert sk == pytest.approx(0.5 + 1 / 12, abs=1e-15)
    # top_fraction 0.5 keeps pixel 0 of both maps of sample 0 and pixel 3 of sample 1's map:
    # class 0: TP 2 (pixels 0 and 3), FP 0, FN 1 (pixel 1) -> IoU 2/3 (not the mean 3/4 of 1/2 and 1);
    # class 1: FN 1 -> 0; class 2: FP 1 -> 0
    assert r.tp.tolist() == [2, 0, 0] and r.pred.tolist() == [2, 0, 1] and r.gt.tolist() == [3, 1, 0]
    assert r.miou == pytest.approx(2 / 9, abs=1e-15)
    assert r.fscore == pytest.approx((1.3 * 2 / (1.3 * 2 + 0.3 * 1)) / 3, abs=1e-15)
    assert r.summary() == pytest.approx({"semantic_ap": 0.75, "semantic_miou": 2 / 9, "semantic_f": 2.6 / 2.9 / 3}, abs=1e-15)
    assert M.semantic_ap(maps, pred_classes, masks, classes, backend=backend).tolist() == pytest.approx([0.5, 1.0], abs=1e-15)
    assert M.semantic_miou(maps, pred_classes, masks, classes) == r.miou and M.semantic_f(maps, pred_classes, masks, classes) == r.fscore


# ---------------------------------------------------------------- brute force
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_semantic_ap_equals_sklearn_on_the_volume_minus_the_floor_threshold(backend, dtype):
    pred_maps, pred_classes, masks, classes, c = _random_case(0, dtype)
    ap = M.semantic_ap(pred_maps, pred_classes, masks, classes, backend=backend)
    ref = _reference_ap(pred_maps, pred_classes, masks, classes, c)
    np.testing.assert_allclose(ap.numpy(), ref, rtol=0, atol=1e-12)
    assert ap[0].item() == 0.0 and ap[5].item() == 0.0  # empty selections while something sounds


@pytest.mark.parametrize("backend", BACKENDS)
def test_semantic_ap_is_the_reached_share_times_the_selected_volumes_ap(backend):
    pred_maps, pred_classes, masks, classes, c = _random_case(1)
    ap = M.semantic_ap(pred_maps, pred_classes, masks, classes, backend=backend)
    up = M.upsample_maps(pred_maps, (12, 12))
    truth = torch.from_numpy(_class_volume(masks, classes, c))
    for i in range(masks.shape[0]):
        sel = [k for k in range(pred_classes.shape[1]) if pred_classes[i, k] >= 0]
        reached = truth[i, pred_classes[i, sel]] if sel else torch.zeros(0, 12, 12, dtype=torch.bool)
        if not reached.any():
            assert ap[i].item() == 0.0
            continue
        inner = M.pixel_average_precision(up[i, sel].reshape(1, -1), reached.reshape(1, -1), backend=backend).item()
        assert ap[i].item() == pytest.approx(inner * int(reached.sum()) / int(truth[i].sum()), abs=1e-12)


@pytest.mark.parametrize("rule,value", [("top_fraction", 0.5), ("fixed", 0.5)])
def test_miou_and_f_equal_loops_over_samples_and_classes(rule, value):
    pred_maps, pred_classes, masks, classes, c = _random_case(2)
    r = M.evaluate_semantic(pred_maps, pred_classes, masks, classes, rule=rule, value=value, chunk_size=4)
    miou, f = _reference_counts(pred_maps, pred_classes, masks, classes, c, rule, value)
    assert r.miou == pytest.approx(miou, abs=1e-12) and r.fscore == pytest.approx(f, abs=1e-12)
    assert 0 < miou < 1 and 0 < f < 1


def test_backends_and_chunking_agree():
    pred_maps, pred_classes, masks, classes, _ = _random_case(3)
    a = M.evaluate_semantic(pred_maps, pred_classes, masks, classes, backend="numpy")
    b = M.evaluate_semantic(pred_maps, pred_classes, masks, classes, backend="torch", chunk_size=1)
    torch.testing.assert_close(a.ap, b.ap, rtol=0, atol=1e-12)
    assert torch.equal(a.tp, b.tp) and torch.equal(a.pred, b.pred) and torch.equal(a.gt, b.gt)
    wide = M.evaluate_semantic(pred_maps, pred_classes, masks, classes, num_classes=9)
    assert wide.tp.shape == (9,) and wide.miou == a.miou and wide.fscore == a.fscore  # absent classes change nothing


# ---------------------------------------------------------------- properties
def _scene():
    """One sample, 16x16, classes 0..3: class 1 sounds in a 6x6 block (36 px), class 3 in a 5x6
    block (30 px). Perfect maps: each sounding class's mask; class 0's map lights a 4x8 block where
    nothing sounds (32 px at the positives' score); class 2's map is noise reaching above them."""
    masks = torch.zeros(1, 2, 16, 16, dtype=torch.bool)
    masks[0, 0, 2:8, 2:8] = True
    masks[0, 1, 9:14, 9:15] = True
    classes = torch.tensor([[1, 3]])
    maps = torch.zeros(1, 4, 16, 16)
    maps[0, 1] = masks[0, 0].float()
    maps[0, 3] = masks[0, 1].float()
    maps[0, 0, 0:4, 8:16] = 1.0
    maps[0, 2] = torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) * 1.2
    return maps, masks, classes


def _score(chosen: list[int]) -> tuple[float, float, float]:
    maps, masks, classes = _scene()
    sel = torch.tensor([chosen], dtype=torch.long) if chosen else torch.full((1, 1), -1, dtype=torch.long)
    pred = maps[:, sel[0].clamp_min(0)]
    r = M.evaluate_semantic(pred, sel, masks, classes)
    return r.ap.item(), r.miou, r.fscore


def test_perfect_maps_with_the_right_selection_score_one():
    assert _score([1, 3]) == (1.0, 1.0, 1.0)
    assert _score([3, 1]) == (1.0, 1.0, 1.0)  # the order of the selection does not matter


def test_a_false_selection_lowers_every_score():
    ap, miou, f = _score([1, 3, 0])
    # 66 positives tied at the top with class 0's 32 false pixels; class 0 occurs with IoU = F = 0
    assert ap == pytest.approx(66 / 98, abs=1e-15) and miou == pytest.approx(2 / 3, abs=1e-15) and f == pytest.approx(2 / 3, abs=1e-15)


def test_a_missed_source_lowers_every_score():
    ap, miou, f = _score([1])
    # class 3's 30 positives are never retrieved; class 3 occurs with IoU = F = 0
    assert ap == pytest.approx(36 / 66, abs=1e-15) and miou == 0.5 and f == 0.5


def test_selecting_every_class_scores_below_the_right_selection():
    right = _score([1, 3])
    every = _score([0, 1, 2, 3])
    assert all(e < r for e, r in zip(every, right)), (every, right)
    assert every[0] < 66 / 98  # class 2's noise adds negatives above the positives too


def test_a_false_map_below_every_positive_costs_ap_nothing_but_costs_miou_and_f():
    maps, masks, classes = _scene()
    pred = torch.stack([maps[0, 1], maps[0, 3], 0.5 * maps[0, 0]])[None]  # class 0's block at 0.5 < 1
    r = M.evaluate_semantic(pred, torch.tensor([[1, 3, 0]]), masks, classes)
    assert r.ap.item() == 1.0 and r.miou == pytest.approx(2 / 3, abs=1e-15)


# ---------------------------------------------------------------- empty cases and errors
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_selection_and_nothing_sounding(backend):
    maps, masks, classes = _scene()
    none = torch.full((1, 1), -1, dtype=torch.long)
    # something sounds, nothing selected: 0 everywhere (the sounding classes occur with TP = 0)
    r = M.evaluate_semantic(maps[:, :1], none, masks, classes, backend=backend)
    assert r.ap.item() == 0.0 and r.miou == 0.0 and r.fscore == 0.0
    silent = torch.full((1, 2), -1, dtype=torch.long)
    # nothing sounds, nothing selected: right (the AVSBench convention)
    r = M.evaluate_semantic(maps[:, :1], none, masks, silent, backend=backend)
    assert r.ap.item() == 1.0 and r.miou == 1.0 and r.fscore == 1.0
    # nothing sounds, class 0 selected: wrong
    r = M.evaluate_semantic(maps[:, :1], torch.tensor([[0]]), masks, silent, backend=backend)
    assert r.ap.item() == 0.0 and r.miou == 0.0 and r.fscore == 0.0
    assert math.isnan(M.semantic_ap(maps[:, :1], none, masks, silent, empty="exclude", backend=backend).item())
    with pytest.raises(ValueError, match=r"1 sample\(s\) without a sounding source's pixel \(first: \[0\]\)"):
        M.semantic_ap(maps[:, :1], none, masks, silent, empty="error", backend=backend)
    # a set of two samples: the excluded one does not enter the mean
    two = M.evaluate_semantic(maps[:, :1].expand(2, -1, -1, -1), torch.tensor([[-1], [0]]), masks.expand(2, -1, -1, -1),
                              torch.stack([classes[0], silent[0]]), empty="exclude", backend=backend)
    assert two.ap[0].item() == 0.0 and math.isnan(two.ap[1].item()) and two.summary()["semantic_ap"] == 0.0


def test_no_map_column_at_all_is_an_empty_selection():
    maps, masks, classes = _scene()
    r = M.evaluate_semantic(maps[:, :0], torch.zeros(1, 0, dtype=torch.long), masks, classes)
    assert r.ap.item() == 0.0 and r.miou == 0.0


def test_input_errors_are_clear():
    maps, masks, classes = _scene()
    with pytest.raises(ValueError, match=r"selects a class twice in 1 sample\(s\)"):
        M.evaluate_semantic(maps[:, :2], torch.tensor([[1, 1]]), masks, classes)
    with pytest.raises(TypeError, match="pred_classes must be an integer tensor"):
        M.semantic_ap(maps[:, :2], torch.tensor([[1.0, 3.0]]), masks, classes)
    with pytest.raises(ValueError, match=r"classes must have shape \(1, 2\)"):
        M.semantic_ap(maps[:, :2], torch.tensor([[1, 3]]), masks, classes[:, :1])
    with pytest.raises(TypeError, match="must be a bool tensor"):
        M.semantic_ap(maps[:, :2], torch.tensor([[1, 3]]), masks.float(), classes)
    bad = maps[:, :2].clone()
    bad[0, 1, 0, 0] = math.inf
    with pytest.raises(ValueError, match="pred_maps contains NaN or inf"):
        M.semantic_ap(bad, torch.tensor([[1, 3]]), masks, classes)
    with pytest.raises(ValueError, match="num_classes=2 but a class index is 3"):
        M.evaluate_semantic(maps[:, :2], torch.tensor([[1, 3]]), masks, classes, num_classes=2)
