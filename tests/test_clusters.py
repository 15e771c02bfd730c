"""DSOL's clustering step, the Hungarian mapping on hand-made cases, NSA on hand-computed maps, and
the clear errors of degenerate inputs."""

from __future__ import annotations

import math

import pytest
import torch

from avgn.clusters import false_alarm_rate, hungarian_mapping, kmeans_dictionary, majority_mapping, masked_object_features, nsa


def test_object_features_are_region_means_with_dilation_and_a_peak_fallback():
    backbone = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)  # frame 0: 0..8, frame 1: 9..17
    maps = torch.zeros(2, 3, 3)
    maps[0, 1, 1] = 0.9  # one cell above 0.05; dilated once: the centre and its 4 neighbours (1, 3, 4, 5, 7)
    maps[1, 0, 2] = 0.04  # nothing above the threshold: the peak cell (value 11)
    obj = masked_object_features(backbone, maps, threshold=0.05, dilate=1)
    assert obj.feats[0, 0] == pytest.approx((1 + 3 + 4 + 5 + 7) / 5)
    assert obj.feats[1, 0] == pytest.approx(11.0) and obj.empty.tolist() == [False, True]
    assert masked_object_features(backbone, maps, dilate=0).feats[0, 0] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="same N, h, w"):
        masked_object_features(backbone, maps[:, :2])


def test_kmeans_finds_separated_groups_and_refuses_degenerate_k():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 8) * 5
    feats = torch.cat([c + 0.05 * torch.randn(10, 8, generator=g) for c in centres])
    dic, labels = kmeans_dictionary(feats, 3, seed=0)
    assert dic.shape == (3, 8) and labels.shape == (30,)
    assert all(len(set(labels[i * 10 : (i + 1) * 10].tolist())) == 1 for i in range(3))  # each group one cluster
    assert len(set(labels.tolist())) == 3
    again, labels2 = kmeans_dictionary(feats, 3, seed=0)
    assert torch.equal(labels, labels2) and torch.allclose(dic, again)
    with pytest.raises(ValueError, match="K = 5 clusters but only 4 objects"):
        kmeans_dictionary(feats[:4], 5)
    with pytest.raises(ValueError, match=r"only 6 objects \(2 distinct\)"):
        kmeans_dictionary(torch.cat([centres[:2]] * 3), 3)
    with pytest.raises(ValueError, match="at least 2 clusters"):
        kmeans_dictionary(feats, 1)


def test_warm_kmeans_keeps_each_cluster_id():
    """Started from the previous centres, cluster j stays the group it was: here the groups in the
    reverse order of a fresh run's ids, whatever the seed."""
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 8) * 5
    feats = torch.cat([c + 0.05 * torch.randn(10, 8, generator=g) for c in centres])
    order = torch.tensor([2, 0, 1])
    for seed in (0, 7):
        dic, labels = kmeans_dictionary(feats, 3, seed=seed, init=centres[order])
        assert labels.tolist() == [int((order == i).nonzero()) for i in range(3) for _ in range(10)]
        assert torch.allclose(torch.nn.functional.normalize(dic, dim=1), torch.nn.functional.normalize(centres[order], dim=1), atol=0.05)
    with pytest.raises(ValueError, match=r"init must be \[3, 8\]"):
        kmeans_dictionary(feats, 3, init=centres[:2])


def test_hungarian_mapping_on_a_hand_made_case():
    # clusters 0, 1, 2 hold classes: 0 -> {2, 2, 2, 0}, 1 -> {0, 0, 1}, 2 -> {1, 1, 0}
    clusters = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    classes = torch.tensor([2, 2, 2, 0, 0, 0, 1, 1, 1, 0])
    m = hungarian_mapping(clusters, classes, k=3, num_classes=3)
    assert m.cluster_to_class.tolist() == [2, 0, 1]
    assert m.accuracy == pytest.approx(7 / 10) and m.purity == pytest.approx(7 / 10)
    # two clusters prefer class 0: one-to-one forces the second to its next best class
    m2 = hungarian_mapping(torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 0, 0, 2]), k=2, num_classes=3)
    assert sorted(m2.cluster_to_class.tolist()) in ([0, 1], [0, 2])
    assert m2.accuracy == pytest.approx(3 / 6) and m2.purity == pytest.approx(4 / 6)  # purity counts majorities, not the mapping
    # more clusters than classes: the extra cluster stays unmatched (-1)
    m3 = hungarian_mapping(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]), k=3, num_classes=2)
    assert sorted(m3.cluster_to_class.tolist()) == [-1, 0, 1]
    with pytest.raises(ValueError, match="cluster ids must lie in"):
        hungarian_mapping(torch.tensor([3]), torch.tensor([0]), k=3, num_classes=2)


def test_majority_mapping_names_every_cluster_by_its_majority():
    clusters = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    classes = torch.tensor([2, 2, 2, 0, 0, 0, 1, 1, 1, 0])
    m = majority_mapping(clusters, classes, k=4, num_classes=3)
    assert m.cluster_to_class.tolist() == [2, 0, 1, -1]  # cluster 3 holds no object
    assert m.accuracy == m.purity == pytest.approx(7 / 10)
    # two clusters of class 0 both keep it (one-to-one would give the second another class)
    m2 = majority_mapping(torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 0, 0, 2]), k=2, num_classes=3)
    assert m2.cluster_to_class.tolist() == [0, 0] and m2.accuracy == pytest.approx(4 / 6)
    assert majority_mapping(torch.tensor([0, 0]), torch.tensor([1, 0]), k=1, num_classes=2).cluster_to_class.tolist() == [0]  # tie: lowest id
    with pytest.raises(ValueError, match="cluster ids must lie in"):
        majority_mapping(torch.tensor([3]), torch.tensor([0]), k=3, num_classes=2)


def test_nsa_and_false_alarms_on_hand_computed_maps():
    maps = torch.zeros(1, 3, 2, 2)
    maps[0, 0] = torch.tensor([[0.9, 0.8], [0.1, 0.0]])  # sounding
    maps[0, 1] = torch.tensor([[0.3, 0.1], [0.1, 0.2]])  # silent distractor: 3 of 4 pixels <= 0.2
    maps[0, 2] = torch.tensor([[0.0, 0.0], [0.0, 0.5]])  # absent: 3 of 4 <= 0.2
    silent = torch.tensor([[False, True, False]])
    assert nsa(maps, silent) == pytest.approx(0.75)
    assert nsa(maps, torch.tensor([[False, True, True]])) == pytest.approx(0.75)
    assert math.isnan(nsa(maps, torch.zeros(1, 3, dtype=torch.bool)))
    peaks = torch.tensor([[0.9, 0.3, 0.5], [0.4, 0.6, 0.1]])
    sounding = torch.tensor([[True, False, False], [True, False, False]])
    distractor = torch.tensor([[False, True, False], [False, True, True]])
    assert false_alarm_rate(peaks, sounding, distractor) == pytest.approx(1 / 3)  # only 0.6 > 0.4
