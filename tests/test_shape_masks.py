"""Chapter 8's study pieces (avgnbook.shape_masks) on synthetic pairs: blob vs GrabCut, pairs without a
map, the long rows; and the pairs of a (fake) benchmark build."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from avgnbook.shape_masks import BLOB, MapSource, PairSet, fused, load_pairs, mask_study, segment_source, split_variant
from avgn.segment.prompts import PromptConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(n: int = 3) -> PairSet:
    g = torch.Generator().manual_seed(0)
    imgs, masks = [], []
    for i in range(n):
        img = torch.empty(3, 48, 48)
        img[0], img[1], img[2] = 0.8, 0.3, 0.2
        m = torch.zeros(48, 48, dtype=torch.bool)
        m[8 + 2 * i:30, 10:22 + 3 * i] = True
        img[:, m] = torch.tensor([0.1, 0.2, 0.9])[:, None]
        imgs.append(((img + 0.04 * torch.randn(3, 48, 48, generator=g)).clamp(0, 1) * 255).round().to(torch.uint8))
        masks.append(m)
    return PairSet("test/solo/scene", torch.stack(imgs), torch.stack(masks), torch.zeros(n, dtype=torch.long), torch.arange(n),
                   [f"s{i}" for i in range(n)], ("drum",), n)


def _blob_source(pairs: PairSet, hit: torch.Tensor | None = None) -> MapSource:
    """A smooth blob centred on each object (not its shape)."""
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    maps = []
    for m in pairs.masks:
        cy, cx = (m.nonzero().float().mean(0)).tolist()
        maps.append(torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 9.0**2)))
    maps = torch.stack(maps)
    maps = (maps - maps.amin((1, 2), keepdim=True)) / (maps.amax((1, 2), keepdim=True) - maps.amin((1, 2), keepdim=True))
    return MapSource("blob map", "test", 0, "oracle", maps, torch.ones(len(pairs), dtype=torch.bool) if hit is None else hit)


def test_grabcut_masks_beat_the_blob_and_missing_maps_give_empty_masks():
    pytest.importorskip("cv2")
    from avgn.segment.segmenters import GrabCutSegmenter

    pairs = _pairs()
    src = _blob_source(pairs, hit=torch.tensor([True, True, False]))
    blob, prompts = segment_source(src, pairs, None)
    assert prompts == [None] * 3 and not bool(blob[2].any())
    cut, prompts = segment_source(src, pairs, GrabCutSegmenter(), PromptConfig("naive"))
    assert prompts[2] is None and not bool(cut[2].any())
    assert prompts[0].shape == (1, 2)
    long, per_pair = mask_study(pairs, [src], {"GrabCut": GrabCutSegmenter()}, ["naive", "grid"])
    wide = long.pivot_table(index="variant", columns="metric", values="value")
    assert set(wide.index) == {"blob map · - · blob", "blob map · naive · GrabCut", "blob map · grid · GrabCut"}
    assert wide.loc["blob map · naive · GrabCut", "miou"] > wide.loc["blob map · - · blob", "miou"] + 0.2
    # the pair without a map scores 0 in every row; two of three pairs can be segmented
    assert (per_pair[per_pair["scene_id"] == "s2"]["iou"] == 0).all()
    assert wide.loc["blob map · naive · GrabCut", "miou"] <= 2 / 3 + 1e-9
    assert set(split_variant(long)["segmenter"]) == {BLOB, "GrabCut"}
    assert set(long["run"]) == {""}  # a source without a stored run
    tagged, _ = mask_study(pairs, [replace(src, run="abc123")], {}, [])
    assert set(tagged["run"]) == {"abc123"}


def test_fusion_keeps_the_av_source_labels():
    pairs = _pairs()
    av = _blob_source(pairs)
    prior = MapSource("object prior", "object", -1, "oracle", torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(0)), torch.ones(3, dtype=torch.bool))
    f = fused(replace(av, run="abc123"), prior, 0.4)
    assert (f.label, f.method, f.seed, f.mode, f.run) == ("blob map + prior", "test", 0, "oracle", "abc123")  # the fusion keeps the run id
    assert float(f.maps.amin()) == 0.0 and float(f.maps.amax()) == 1.0
    assert torch.allclose(fused(av, prior, 1.0).maps, av.maps)


def test_load_pairs_of_a_build(fake_build):
    pairs = load_pairs(fake_build, "test/duet/scene", max_items=2)
    assert pairs.n_items == 2 and len(pairs) == 4  # two sources per scene
    assert pairs.images.dtype == torch.uint8 and pairs.images.shape[1:] == (3, *pairs.masks.shape[-2:])
    assert pairs.item.tolist() == [0, 0, 1, 1] and (pairs.classes >= 0).all()
    assert pairs.masks.flatten(1).any(1).all()
    with pytest.raises(ValueError, match="scene"):
        load_pairs(fake_build, "test/duet/concat")


def test_explorer_segment_toggle():
    pytest.importorskip("cv2")
    pytest.importorskip("ipywidgets")
    import numpy as np

    from avgnbook.explorer import Explorer, ExplorerItem, score_map
    from avgn.segment.segmenters import GrabCutSegmenter

    pairs = _pairs(1)
    src = _blob_source(pairs)
    gt = pairs.masks[0]
    item = ExplorerItem("s0", "test/solo/scene", pairs.image(0), gt[None], ["drum"], np.zeros(160, np.float32), np.zeros((1, 160), np.float32),
                        16000, maps={"M": {"shared": src.maps[0]}}, source_map={"M": {"drum": "shared"}}, kinds={"M": "shared"})
    ex = Explorer([item], draw=False, segmenter=GrabCutSegmenter())
    blob_ciou = ex.state["ciou"]
    assert not ex.state["segmented"] and ex.state["points"] is None
    assert blob_ciou == pytest.approx(score_map(src.maps[0], gt)[1])
    ex.segment.value = True
    st = ex.state
    assert st["segmented"] and st["points"].shape == (1, 2)
    assert st["ciou"] > blob_ciou + 0.2 and st["pixels"] != int(score_map(src.maps[0], gt)[0].sum())
    assert "GrabCut" in ex.render_still().axes[1].get_title()
    ex.segment.value = False
    assert ex.state["ciou"] == pytest.approx(blob_ciou)
    assert Explorer([item], draw=False).segment.disabled  # no segmenter, no toggle


@pytest.fixture(scope="module")
def tiny_runs(fake_build, tmp_path_factory):
    from helpers import tiny_experiment

    from avgn.train import train

    root = tmp_path_factory.mktemp("shape_mask_runs")
    out = {}
    for method in ("avgn", "ezvsl"):
        out[method] = root / method
        train(tiny_experiment(method, **{"train.epochs": 1}), fake_build, out[method], seed=0, device="cpu", progress=False)
    return out


def test_map_sources_of_trained_runs_and_the_prior(fake_build, tiny_runs):
    from avgnbook.shape_masks import prior_map_source, run_map_sources

    pairs = load_pairs(fake_build, "test/duet/scene", max_items=2)
    avgn = run_map_sources(tiny_runs["avgn"], pairs, fake_build, "AVGN", device="cpu")
    assert [(s.label, s.method, s.seed, s.mode) for s in avgn] == [("AVGN", "avgn", 0, "oracle"), ("AVGN", "avgn", 0, "predicted")]
    ez = run_map_sources(tiny_runs["ezvsl"], pairs, fake_build, "EZ-VSL", device="cpu")
    assert [s.mode for s in ez] == ["oracle"]
    for s in avgn + ez:
        assert s.maps.shape == pairs.masks.shape and float(s.maps.min()) >= 0 and float(s.maps.max()) <= 1
    assert bool(avgn[0].hit.all())
    # EZ-VSL has one map per frame: both sources of a scene get the same map
    assert torch.equal(ez[0].maps[0], ez[0].maps[1]) and not torch.equal(ez[0].maps[0], ez[0].maps[2])
    # AVGN's two sources of one scene have different classes, so different maps
    assert not torch.equal(avgn[0].maps[0], avgn[0].maps[1])
    prior = prior_map_source("smoke", pairs, fake_build, device="cpu")
    assert prior.seed == -1 and prior.maps.shape == pairs.masks.shape and torch.equal(prior.maps[0], prior.maps[1])
