"""Point prompts (avgn.segment.prompts) and the promptable segmenters (avgn.segment.segmenters):
hand-made maps, GrabCut on a synthetic two-region image, Segment Anything's loading path with a
checkpoint written by the test (no real weights exist here)."""

from __future__ import annotations

import pytest
import torch

from avgn.segment.prompts import PromptConfig, fuse_maps, is_flat, sample_points

pytestmark = pytest.mark.usefixtures("one_thread")


def _peak_map() -> torch.Tensor:
    m = torch.zeros(40, 50)
    m[20, 30] = 1.0  # argmax at (x=30, y=20)
    m[10, 40] = 0.5  # the (+10, -10) neighbour
    m[30, 20] = 0.7  # the (-10, +10) neighbour: the best one
    m[0, 0] = 0.9  # high but not on the grid
    return m


def test_naive_is_the_first_argmax():
    assert sample_points(_peak_map()).tolist() == [[30, 20]]
    ties = torch.zeros(5, 6)
    ties[1, 4] = ties[3, 2] = 1.0
    assert sample_points(ties).tolist() == [[4, 1]]  # row-major first


def test_grid_adds_the_best_neighbour_at_the_offset():
    cfg = PromptConfig("grid", offset=10)
    assert sample_points(_peak_map(), cfg).tolist() == [[30, 20], [20, 30]]
    # a neighbour 10 px away outside the image is skipped, not wrapped
    m = torch.zeros(12, 12)
    m[0, 0], m[0, 10], m[10, 10] = 1.0, 0.2, 0.8
    assert sample_points(m, cfg).tolist() == [[0, 0], [10, 10]]


def test_grid_without_a_positive_neighbour_returns_the_argmax_alone():
    # GSAVL's grid sampler crashes here (no neighbour > 0)
    m = torch.zeros(30, 30)
    m[15, 15] = 1.0
    assert sample_points(m, PromptConfig("grid")).tolist() == [[15, 15]]
    # "above the map's minimum", not "above 0": a negative map works the same way
    assert sample_points(m - 5.0, PromptConfig("grid")).tolist() == [[15, 15]]


@pytest.mark.parametrize("sampler", ["naive", "grid", "probabilistic"])
@pytest.mark.parametrize("value", [0.0, 3.5])
def test_flat_maps_prompt_the_centre(sampler, value):
    m = torch.full((20, 31), value)
    assert is_flat(m)
    assert sample_points(m, PromptConfig(sampler), torch.Generator().manual_seed(0)).tolist() == [[15, 10]]


def test_probabilistic_is_seeded_and_stays_in_the_top_percent():
    g = torch.Generator().manual_seed(1)
    m = torch.rand(50, 40, generator=g)
    cfg = PromptConfig("probabilistic", k=3, top_fraction=0.01)
    a = sample_points(m, cfg, torch.Generator().manual_seed(7))
    b = sample_points(m, cfg, torch.Generator().manual_seed(7))
    assert a.shape == (3, 2) and torch.equal(a, b)
    top = set(torch.topk(m.flatten(), 20).indices.tolist())  # 1 % of 2000 pixels
    for _ in range(10):
        pts = sample_points(m, cfg, g)
        assert {int(y * 40 + x) for x, y in pts.tolist()} <= top
    draws = torch.cat([sample_points(m, cfg, torch.Generator().manual_seed(s)) for s in range(20)])
    assert len({tuple(p) for p in draws.tolist()}) > 3  # really drawn, not the argmax every time
    with pytest.raises(ValueError, match="Generator"):
        sample_points(m, cfg)


def test_probabilistic_follows_the_map_values():
    m = torch.zeros(10, 10)
    m[0, 0], m[0, 1] = 1.0, 0.25  # weights 1 : 0.25 among the top 2 %
    pts = sample_points(m, PromptConfig("probabilistic", k=4000, top_fraction=0.02), torch.Generator().manual_seed(0))
    share = float((pts[:, 0] == 0).float().mean())
    assert share == pytest.approx(0.8, abs=0.03)


def test_bad_maps_and_configs_raise():
    with pytest.raises(ValueError, match="NaN"):
        sample_points(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        sample_points(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="sampler"):
        PromptConfig("best")


def test_fusion_of_av_map_and_prior():
    av = torch.tensor([[0.0, 2.0], [4.0, 4.0]])  # minmax: 0, .5, 1, 1
    prior = torch.tensor([[10.0, 0.0], [0.0, 5.0]])  # minmax: 1, 0, 0, .5
    assert torch.allclose(fuse_maps(av, prior, 1.0), av / 4)
    assert torch.allclose(fuse_maps(av, prior, 0.0), prior / 10)
    raw = torch.tensor([[0.6, 0.2], [0.4, 0.7]])  # 0.4 * av + 0.6 * prior
    assert torch.allclose(fuse_maps(av, prior), (raw - 0.2) / 0.5)
    with pytest.raises(ValueError):
        fuse_maps(av, prior, 1.5)


# ---- GrabCut ----------------------------------------------------------------------------------------
def _two_region_image() -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy reddish background and a blue L-shaped object (its mask)."""
    g = torch.Generator().manual_seed(0)
    img = torch.empty(3, 64, 64)
    img[0], img[1], img[2] = 0.8, 0.3, 0.2
    obj = torch.zeros(64, 64, dtype=torch.bool)
    obj[14:50, 18:30] = True
    obj[38:50, 18:56] = True
    img[:, obj] = torch.tensor([0.1, 0.2, 0.9])[:, None]
    return (img + 0.05 * torch.randn(3, 64, 64, generator=g)).clamp(0, 1), obj


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def test_grabcut_segments_the_object_from_one_point_and_a_blob():
    pytest.importorskip("cv2")
    from avgn.segment.segmenters import GrabCutSegmenter

    img, obj = _two_region_image()
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    heat = torch.exp(-((xx - 30.0) ** 2 + (yy - 36.0) ** 2) / (2 * 16.0**2))  # a blob, not the shape
    seg = GrabCutSegmenter()
    mask = seg(img, torch.tensor([[24, 40]]), torch.tensor([1]), heat)
    assert mask.dtype == torch.bool and mask.shape == (64, 64)
    assert _iou(mask, obj) > 0.9
    assert _iou(heat >= 0.5, obj) < 0.6  # the blob alone is worse: GrabCut did the work
    # without a heatmap the frame border is the background seed
    assert _iou(seg(img, torch.tensor([[24, 40]]), torch.tensor([1])), obj) > 0.9
    # deterministic
    assert torch.equal(mask, seg(img, torch.tensor([[24, 40]]), torch.tensor([1]), heat))


def test_grabcut_rejects_bad_prompts():
    pytest.importorskip("cv2")
    from avgn.segment.segmenters import GrabCutSegmenter

    img, _ = _two_region_image()
    seg = GrabCutSegmenter()
    with pytest.raises(ValueError, match="outside"):
        seg(img, torch.tensor([[64, 0]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="foreground seed"):
        seg(img, torch.tensor([[5, 5]]), torch.tensor([0]), torch.zeros(64, 64))


# ---- Segment Anything by path ----------------------------------------------------------------------
def _tiny_sam():
    """A Segment Anything model of the package's classes, shrunk (64 px input, 1 block) for a CPU test."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    d, size, patch = 32, 64, 16
    torch.manual_seed(0)
    return Sam(
        image_encoder=ImageEncoderViT(img_size=size, patch_size=patch, embed_dim=d, depth=1, num_heads=2, out_chans=d,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True, window_size=2),
        prompt_encoder=PromptEncoder(embed_dim=d, image_embedding_size=(size // patch, size // patch), input_image_size=(size, size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=d, mlp_dim=64, num_heads=2),
                                 transformer_dim=d, iou_head_depth=2, iou_head_hidden_dim=d),
    ).eval()


def test_sam_loads_a_vit_b_checkpoint_written_here(tmp_path):
    """The real loading path (the package's registry + load_state_dict) on a randomly initialised
    vit_b saved by the test: the weights that come back are the saved ones."""
    pytest.importorskip("segment_anything")
    from segment_anything import sam_model_registry

    from avgn.segment.segmenters import SamSegmenter

    torch.manual_seed(0)
    src = sam_model_registry["vit_b"]()
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(src.state_dict(), path)
    seg = SamSegmenter.from_checkpoint(path, "vit_b")
    for name in ("image_encoder.patch_embed.proj.weight", "mask_decoder.iou_prediction_head.layers.0.weight"):
        assert torch.equal(seg.sam.state_dict()[name], src.state_dict()[name])
    fresh = sam_model_registry["vit_b"]()  # another random init differs: the load did something
    assert not torch.equal(fresh.state_dict()["image_encoder.patch_embed.proj.weight"], seg.sam.state_dict()["image_encoder.patch_embed.proj.weight"])


def test_sam_errors_name_the_file_and_the_fix(tmp_path):
    pytest.importorskip("segment_anything")
    from avgn.segment.segmenters import SamSegmenter

    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        SamSegmenter.from_checkpoint(tmp_path / "missing.pth", "vit_b")
    path = tmp_path / "tiny.pth"
    torch.save(_tiny_sam().state_dict(), path)
    with pytest.raises(ValueError, match="not a vit_b Segment Anything checkpoint"):
        SamSegmenter.from_checkpoint(path, "vit_b")
    with pytest.raises(ValueError, match="unknown SAM architecture"):
        SamSegmenter.from_checkpoint(path, "vit_t")


def test_sam_predicts_a_mask_of_the_image_size():
    pytest.importorskip("segment_anything")
    from avgn.segment.segmenters import SamSegmenter

    seg = SamSegmenter(_tiny_sam())
    img, _ = _two_region_image()
    img = img[:, :, :48]  # not square: the predictor resizes and pads
    mask = seg(img, torch.tensor([[20, 30], [40, 10]]), torch.tensor([1, 0]))
    assert mask.dtype == torch.bool and mask.shape == (64, 48)


# ---- the trained promptable decoder ----------------------------------------------------------------
def _synthetic_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames with two rectangles of random colours on noise; the target is one of them."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, 3, 48, 48, generator=g) * 0.3
    masks = torch.zeros(n, 48, 48, dtype=torch.bool)
    for i in range(n):
        for k in range(2):
            y0, x0 = (int(v) for v in torch.randint(0, 30, (2,), generator=g))
            hh, ww = (int(v) for v in torch.randint(8, 18, (2,), generator=g))
            imgs[i, :, y0:y0 + hh, x0:x0 + ww] = 0.4 + 0.6 * torch.rand(3, 1, 1, generator=g)
            if k == 1:
                masks[i] = False
                masks[i, y0:y0 + hh, x0:x0 + ww] = True
    return imgs, masks


def test_trained_decoder_learns_to_segment_the_prompted_object():
    from avgn.segment.decoder import DecoderConfig, DecoderSegmenter, train_point_decoder

    cfg = DecoderConfig(size=48, width=8, sigma=2.0, steps=150, batch_size=8, lr=5e-3)
    imgs, masks = _synthetic_pairs(64, 0)
    model, losses = train_point_decoder(imgs, masks, cfg, seed=0)
    assert sum(losses[-20:]) / 20 < 0.6 * sum(losses[:20]) / 20
    seg = DecoderSegmenter(model, cfg)
    test_imgs, test_masks = _synthetic_pairs(16, 1)  # held-out frames
    ious = []
    for img, m in zip(test_imgs, test_masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        c = len(ys) // 2
        pred = seg(img, torch.tensor([[int(xs[c]), int(ys[c])]]), torch.tensor([1]))
        assert pred.shape == (48, 48) and pred.dtype == torch.bool
        ious.append(_iou(pred, m) if pred.any() else 0.0)
    assert sum(ious) / len(ious) > 0.5
    with pytest.raises(ValueError, match="foreground"):
        seg(test_imgs[0], torch.tensor([[3, 3]]), torch.tensor([0]))
