"""Exact values of the AVGN / EZ-VSL / Mix-and-Localize losses on tiny hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avgn.methods.avgn import avgn_localization_loss, avgn_pair_scores, avgn_total_loss
from avgn.losses import maxmil_contrastive_loss, maxmil_similarity, presence_bce_loss, sources_from_multihot, token_ce_loss
from avgn.methods.avgn import AVGNConfig
from avgn.methods.mal import frame_nodes, mal_cycle_loss_frames, mal_cycle_loss_images, mal_cycle_loss_mixture, mal_cycle_loss_pairs, mal_cycle_loss_regions

E0 = torch.tensor([1.0, 0.0])
E1 = torch.tensor([0.0, 1.0])


def softplus_neg(x: float) -> float:
    """log(1 + exp(-x))."""
    return math.log1p(math.exp(-x))


# --------------------------------------------------------------------------------------------------
def test_token_ce_exact():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert token_ce_loss(logits).item() == pytest.approx(softplus_neg(2.0), abs=1e-6)
    # the token of class 1 is classified as class 0 -> its CE is log(1 + e^2)
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    expected = (softplus_neg(2.0) + softplus_neg(-2.0)) / 2
    assert token_ce_loss(logits).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError):
        token_ce_loss(torch.zeros(2, 3))


def test_presence_bce_exact():
    assert presence_bce_loss(torch.zeros(2, 3), torch.ones(2, 3)).item() == pytest.approx(math.log(2), abs=1e-6)
    logits = torch.tensor([[math.log(3.0), -math.log(3.0)]])
    targets = torch.tensor([[1.0, 0.0]])
    # sigmoid(ln 3) = 3/4 -> -log(3/4) for both entries
    assert presence_bce_loss(logits, targets).item() == pytest.approx(math.log(4 / 3), abs=1e-6)


def _two_by_two_maps() -> torch.Tensor:
    """v0: e0 at (0,0), -e1 elsewhere; v1: e1 at (1,1), -e0 elsewhere.  [2, D=2, 2, 2]"""
    v = torch.zeros(2, 2, 2, 2)
    v[0] = -E1[:, None, None]
    v[0, :, 0, 0] = E0
    v[1] = -E0[:, None, None]
    v[1, :, 1, 1] = E1
    return v


def test_maxmil_exact_orthogonal():
    audio = torch.stack([E0, E1])
    visual = _two_by_two_maps()
    tau = 0.5
    sim = maxmil_similarity(audio, visual, tau)
    # s00 = max(1, 0) = 1; s01 = max(0, -1) = 0; s10 = max(0, -1) = 0; s11 = 1  (then / tau)
    assert torch.allclose(sim, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    loss, logits = maxmil_contrastive_loss(audio, visual, tau)
    # each direction: mean CE = log(1 + e^-2); the two directions are summed
    assert loss.item() == pytest.approx(2 * softplus_neg(2.0), abs=1e-6)
    assert torch.equal(logits, sim)


def test_maxmil_takes_max_over_positions_and_normalises():
    audio = torch.tensor([[3.0, 0.0]])  # not unit length: normalised inside
    visual = torch.zeros(1, 2, 1, 2)
    visual[0, :, 0, 0] = torch.tensor([0.0, 5.0])
    visual[0, :, 0, 1] = torch.tensor([1.0, 1.0])
    sim = maxmil_similarity(audio, visual, tau=1.0)
    assert sim.item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)


# --------------------------------------------------------------------------------------------------
def test_sources_from_multihot():
    labels = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.float32)
    classes, mask = sources_from_multihot(labels)
    assert classes.tolist() == [[1, 3], [2, -1], [-1, -1]]
    assert mask.tolist() == [[True, True], [True, False], [False, False]]
    classes, mask = sources_from_multihot(labels, max_sources=3)
    assert classes.shape == (3, 3) and classes[0].tolist() == [1, 3, -1]


def _loc_case():
    """B=2, C=2, D=2, one 1x1 position; sample 0 sounds class 0, sample 1 sounds class 1."""
    f = (torch.tensor([1.0, 1.0]) / math.sqrt(2)).view(1, 2, 1, 1).repeat(2, 1, 1, 1)
    gv = torch.stack([E0, E1]).unsqueeze(0).repeat(2, 1, 1)  # g^v_{j,0} = e0, g^v_{j,1} = e1
    ga = torch.zeros(2, 2, 2)
    ga[0, 0], ga[0, 1] = E0, E0
    ga[1, 0], ga[1, 1] = E1, E1
    classes = torch.tensor([[0], [1]])
    mask = torch.tensor([[True], [True]])
    return ga, f, gv, classes, mask


def test_avgn_localization_exact_paper_vs_public():
    ga, f, gv, classes, mask = _loc_case()
    tau = 0.5
    # paper: f * g^v_{j,n} = (1/sqrt2) e_n -> cos with g^a_{i,n} = e_n is 1 for both images (log 2);
    # visual -> audio: target e_n, candidates = the two pairs' audio: e_n (own) and the orthogonal
    # one -> [1, 0] / tau
    paper = avgn_localization_loss(ga, f, classes, mask, tau=tau, target="paper", visual_emb=gv)
    assert paper.item() == pytest.approx(math.log(2) + softplus_neg(1 / tau), abs=1e-6)
    # public: every cosine with f = (1,1)/sqrt2 is 1/sqrt2 -> both directions are log 2
    public = avgn_localization_loss(ga, f, classes, mask, tau=tau, target="public")
    assert public.item() == pytest.approx(2 * math.log(2), abs=1e-6)
    a_only = avgn_localization_loss(ga, f, classes, mask, tau=tau, target="paper", visual_emb=gv, symmetric=False)
    assert a_only.item() == pytest.approx(math.log(2), abs=1e-6)


def test_avgn_localization_public_single_source_equals_ezvsl():
    g = torch.Generator().manual_seed(0)
    b, c, d = 5, 4, 8
    ga = torch.randn(b, c, d, generator=g)
    f = F.normalize(torch.randn(b, d, 3, 3, generator=g), dim=1)
    cls = torch.randint(0, c, (b,), generator=g)
    loss = avgn_localization_loss(ga, f, cls[:, None], torch.ones(b, 1, dtype=torch.bool), tau=0.07, target="public")
    ref, _ = maxmil_contrastive_loss(ga[torch.arange(b), cls], f, tau=0.07)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def _reference_pair_loss(ga, f, gv, classes, mask, tau, target):
    """Slow loop version that materialises f * g explicitly."""
    b = ga.shape[0]
    pairs = [(i, int(classes[i, s])) for i in range(b) for s in range(classes.shape[1]) if mask[i, s]]

    def tgt(j, n):
        t = f[j].flatten(1)  # [D, Q]
        if target == "paper":
            t = t * gv[j, n][:, None]
        return F.normalize(t, dim=0)

    losses = []
    for p, (i, n) in enumerate(pairs):
        a2v = torch.stack([(F.normalize(ga[i, n], dim=0) @ tgt(j, n)).max() for j in range(b)]) / tau
        # candidates: the own pair and the pairs of other samples
        cands = [q for q, (k, _) in enumerate(pairs) if q == p or k != i]
        v2a = torch.stack([(F.normalize(ga[pairs[q][0], pairs[q][1]], dim=0) @ tgt(i, n)).max() for q in cands]) / tau
        own = cands.index(p)
        losses.append(F.cross_entropy(a2v[None], torch.tensor([i])) + F.cross_entropy(v2a[None], torch.tensor([own])))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("target", ["paper", "public"])
def test_avgn_localization_matches_loop_reference_with_padding(target):
    g = torch.Generator().manual_seed(1)
    b, c, d = 4, 5, 6
    ga = torch.randn(b, c, d, generator=g)
    gv = torch.randn(b, c, d, generator=g)
    f = F.normalize(torch.randn(b, d, 2, 3, generator=g), dim=1)
    classes = torch.tensor([[0, 3], [2, -1], [4, 1], [1, -1]])
    mask = classes >= 0
    loss = avgn_localization_loss(ga, f, classes, mask, tau=0.1, target=target, visual_emb=gv)
    ref = _reference_pair_loss(ga, f, gv, classes, mask, 0.1, target)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    a2v, v2a, idx = avgn_pair_scores(ga, f, classes, mask, 0.1, target, gv)
    assert a2v.shape == (6, b) and v2a.shape == (6, 6) and idx.tolist() == [0, 0, 1, 2, 2, 3]
    # the positive score is the same in both directions; the other source of a mixture is masked
    assert torch.allclose(a2v[torch.arange(6), idx], v2a.diagonal(), atol=1e-5)
    assert torch.isinf(v2a[0, 1]) and torch.isinf(v2a[4, 3]) and torch.isfinite(v2a[0, 2])


def test_avgn_localization_no_sources_is_zero_with_graph():
    ga = torch.randn(2, 3, 4, requires_grad=True)
    f = torch.randn(2, 4, 2, 2)
    loss = avgn_localization_loss(ga, f, torch.full((2, 1), -1), torch.zeros(2, 1, dtype=torch.bool), target="public")
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError):
        avgn_localization_loss(ga, f, torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool), target="paper")


def test_avgn_total_loss_parts_and_weights():
    ga, f, gv, classes, mask = _loc_case()
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    outputs = {
        "audio_emb": ga,
        "visual_emb": gv,
        "visual_map_feats": f,
        "audio_logits": torch.zeros(2, 2),
        "visual_logits": torch.zeros(2, 2),
        "token_logits": torch.tensor([[2.0, 0.0], [0.0, 2.0]]),
    }
    cfg = AVGNConfig(num_classes=2, dim=2, heads=1, tau=0.5, w_loc=2.0, w_token=0.5, w_audio_cls=1.0, w_visual_cls=3.0)
    total, parts = avgn_total_loss(outputs, {"labels": labels}, cfg)
    loc = math.log(2) + softplus_neg(2.0)
    assert parts["loc"].item() == pytest.approx(loc, abs=1e-6)
    assert parts["token"].item() == pytest.approx(softplus_neg(2.0), abs=1e-6)
    assert parts["audio_cls"].item() == pytest.approx(math.log(2), abs=1e-6)
    expected = 2.0 * loc + 0.5 * softplus_neg(2.0) + 1.0 * math.log(2) + 3.0 * math.log(2)
    assert total.item() == pytest.approx(expected, abs=1e-5)
    # explicit sources / visual labels give the same loc term; visual labels feed the visual BCE
    total2, parts2 = avgn_total_loss(
        outputs,
        {"labels": labels, "source_classes": classes, "source_mask": mask, "visual_labels": torch.zeros(2, 2)},
        cfg,
    )
    assert parts2["loc"].item() == pytest.approx(loc, abs=1e-6)
    assert parts2["visual_cls"].item() == pytest.approx(math.log(2), abs=1e-6)


# --------------------------------------------------------------------------------------------------
def test_mal_cycle_exact_images_graph():
    temp = 0.5
    visual = torch.stack([E0, E1]).view(2, 2, 1, 1)  # one group of K=2 frames, 1x1 maps
    slots = torch.stack([E0, E1]).unsqueeze(0)  # [G=1, K=2, D=2]
    loss, acc = mal_cycle_loss_images(visual, slots, temp=temp)
    p = 1 / (1 + math.exp(-1 / temp))  # softmax([1, 0] / temp)[0]
    assert loss.item() == pytest.approx(-math.log(p * p + (1 - p) * (1 - p)), abs=1e-5)
    assert acc.item() == 1.0
    # swapping the second clip's slots breaks the cycle
    loss_bad, acc_bad = mal_cycle_loss_images(visual, slots, slots2=slots.flip(1), temp=temp)
    assert loss_bad.item() > loss.item() and acc_bad.item() == 0.0


def test_mal_cycle_exact_regions_graph():
    temp = 0.5
    visual = torch.stack([E0, E1], dim=1).view(1, 2, 1, 2)  # one frame, two regions e0 | e1
    slots = torch.stack([E0, E1]).unsqueeze(0)  # [B=1, K=2, D=2]
    loss, acc = mal_cycle_loss_regions(visual, slots, temp=temp)
    p = 1 / (1 + math.exp(-1 / temp))
    assert loss.item() == pytest.approx(-math.log(p * p + (1 - p) * (1 - p)), abs=1e-5)
    assert acc.item() == 1.0


def test_frame_nodes_split_a_concat_image_into_its_frames():
    v = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)  # [B, D, h=2, w=4]: two 2x2 frames
    f = frame_nodes(v)
    assert f.shape == (2, 2, 3, 4)
    assert torch.equal(f[1, 0], v[1, :, :, :2].reshape(3, 4)) and torch.equal(f[1, 1], v[1, :, :, 2:].reshape(3, 4))
    assert frame_nodes(v[..., :2]).shape == (2, 1, 3, 4)  # a square map is one frame


def test_mal_cycle_mixture_graph_needs_the_own_frame():
    temp = 0.5
    visual = torch.stack([E0, E1]).view(2, 2, 1, 1)  # two mixtures, one 1x1 frame each: e0, e1
    aligned = torch.stack([E0, E1]).view(2, 1, 2)  # K=1: each mixture's slot matches its own frame
    swapped = aligned.flip(0)  # each slot matches the *other* mixture's frame
    p = 1 / (1 + math.exp(-1 / temp))
    mix, acc = mal_cycle_loss_mixture(visual, aligned, temp=temp)
    assert mix.item() == pytest.approx(-math.log(p), abs=1e-5) and acc.item() == 1.0  # first step: own frame, p = 1
    mix_bad, acc_bad = mal_cycle_loss_mixture(visual, swapped, temp=temp)
    assert mix_bad.item() == pytest.approx(-math.log(1 - p), abs=1e-5) and acc_bad.item() == 0.0
    # the batch frame graph closes the swapped cycle through the other mixture's frame as well as the aligned one
    frames_aligned, _ = mal_cycle_loss_frames(visual, aligned, temp=temp)
    frames_swapped, _ = mal_cycle_loss_frames(visual, swapped, temp=temp)
    assert frames_swapped.item() == pytest.approx(frames_aligned.item(), abs=1e-6)
    assert frames_aligned.item() == pytest.approx(-math.log(p * p + (1 - p) * (1 - p)), abs=1e-5)


def test_mal_cycle_exact_pairs_graph():
    temp = 0.5
    # two concat duets (frames e0 | e1 and e1 | e0, one region each), each with slots e0, e1: two groups
    # of the public graph, nothing crossing them, so each has the one-group loss of the images graph
    duet = torch.stack([E0, E1], dim=1).view(1, 2, 1, 2)
    visual = torch.cat([duet, duet.flip(-1)])
    slots = torch.stack([E0, E1]).unsqueeze(0).repeat(2, 1, 1)  # [B=2, K=2, D=2]
    loss, acc = mal_cycle_loss_pairs(visual, slots, temp=temp)
    p = 1 / (1 + math.exp(-1 / temp))
    assert loss.item() == pytest.approx(-math.log(p * p + (1 - p) * (1 - p)), abs=1e-5)
    assert acc.item() == 1.0
    images, _ = mal_cycle_loss_images(torch.stack([E0, E1, E1, E0]).view(4, 2, 1, 1), slots, temp=temp)
    assert loss.item() == pytest.approx(images.item(), abs=1e-6)
    # frames that do not tell the two slots apart (e1 is as near to both) return less often
    far = torch.stack([E0, -E0], dim=1).view(1, 2, 1, 2)
    loss_far, _ = mal_cycle_loss_pairs(far, slots[:1], temp=temp)
    assert loss_far.item() > loss.item() + 0.1
    with pytest.raises(ValueError, match="concat duets only"):
        mal_cycle_loss_pairs(visual[..., :1], slots, temp=temp)  # single frames: no pair to walk over


def test_mal_cycle_exact_frames_graph():
    temp = 0.5
    # a concat duet (frames e0 | e1, one region each) with slots e0, e1: the public graph of one group
    visual = torch.stack([E0, E1], dim=1).view(1, 2, 1, 2)
    slots = torch.stack([E0, E1]).unsqueeze(0)
    loss, acc = mal_cycle_loss_frames(visual, slots, temp=temp)
    p = 1 / (1 + math.exp(-1 / temp))
    assert loss.item() == pytest.approx(-math.log(p * p + (1 - p) * (1 - p)), abs=1e-5)
    assert acc.item() == 1.0
    # the private-bridge shortcut: each mixture's second slot matches a region of the *other* frame
    e = torch.eye(4)
    visual = torch.stack([e[:, [0, 1]], e[:, [2, 3]]]).view(2, 4, 2, 1)  # one 2x1 frame each: (e0, e1), (e2, e3)
    slots = torch.stack([e[[0, 2]], e[[1, 3]]])  # mixture 0: e0, e2; mixture 1: e1, e3
    frames, _ = mal_cycle_loss_frames(visual, slots, temp=temp)
    regions, _ = mal_cycle_loss_regions(visual, slots, temp=temp)
    x = math.exp(-1 / temp)
    q, r, r_other = 1 / (1 + x), 1 / (2 + 2 * x), x / (2 + 2 * x)  # slot -> frame; frame -> one of its 2 near slots; -> a far slot
    assert frames.item() == pytest.approx(-math.log(q * r + (1 - q) * r_other), abs=1e-5)
    assert regions.item() < frames.item() - 0.25  # a region graph rewards the shortcut, a frame graph does not
