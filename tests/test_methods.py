"""The method interface and registry: every method through the same calls; a new method is one
class; the engine never branches on a method's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import avgn.methods.registry as registry
from avgn.config import PROFILE_NAMES, EvalConfig, get_profile
from avgn.evaluate import EvalSet, SetName, evaluate_sets
from avgn.experiment import get_experiment
from avgn.methods import Method, MethodPredictor, create_model, get_method, list_methods, register_method
from avgn.models.config import EncoderConfig

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def test_registry_lists_every_method_and_reference():
    assert list_methods(learned=True) == ("avgn", "ezvsl", "mal", "dsol", "tvsl")
    assert list_methods(learned=False) == ("centre", "object", "perfect")
    assert [get_method(n).kind for n in list_methods()] == ["class_aware", "shared", "slots", "class_aware", "class_aware", "shared", "shared", "slots"]
    assert get_method("AVGN").modes == ("oracle", "predicted") and get_method("ezvsl").modes == ("oracle",)
    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of avgn, ezvsl, mal, dsol, tvsl, centre"):
        get_method("nope")


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize("name", ["avgn", "ezvsl", "mal", "dsol"])
def test_default_config_comes_from_the_profile_table(name, profile):
    p = get_profile(profile)
    cfg = get_method(name).default_config(p)
    assert cfg == get_experiment(name, profile).model
    assert cfg.encoder.audio_width == p.encoder.audio_width and cfg.encoder.freeze_visual == p.encoder.freeze_visual
    assert cfg.dim == (min(p.sizes.dim, 128) if name in ("mal", "dsol") else p.sizes.dim)


def test_a_profile_gives_a_method_its_own_training_settings():
    """``Profile.method_train``: on the cpu profile EZ-VSL trains 20 epochs, AVGN 16 without early
    stopping, every other method the shared schedule; a misspelt field fails when the profile is made."""
    from dataclasses import replace

    cpu = get_profile("cpu")
    assert get_experiment("ezvsl", "cpu").train == replace(cpu.train, epochs=20) == cpu.train_for("ezvsl")
    assert get_experiment("avgn", "cpu").train == replace(cpu.train, epochs=16, early_stopping_patience=None) == cpu.train_for("avgn")
    assert get_experiment("mal", "cpu").train == cpu.train == cpu.train_for("mal")
    assert get_experiment("ezvsl", "smoke").train == get_profile("smoke").train
    assert get_experiment("ezvsl", "cpu", **{"train.epochs": 3}).train.epochs == 3  # an override still wins
    with pytest.raises(ValueError, match=r"method_train\['ezvsl'\] sets unknown TrainConfig fields \['epoch'\]"):
        replace(cpu, method_train=(("ezvsl", (("epoch", 3),)),))


def _batch(b: int = 4, c: int = 5) -> dict:
    g = torch.Generator().manual_seed(0)
    classes = torch.tensor([[0, 1], [2, -1], [3, 4], [1, -1]])[:b]
    labels = torch.zeros(b, c)
    for i, row in enumerate(classes.tolist()):
        for k in row:
            if k >= 0:
                labels[i, k] = 1.0
    return {"spec": torch.randn(b, 1, 65, 40, generator=g), "visual_feats": torch.relu(torch.randn(b, 512, 3, 3, generator=g)),
            "labels": labels, "classes": classes}


@pytest.mark.parametrize("name", ["avgn", "ezvsl", "mal"])  # DSOL: tests/test_dsol.py (two stages)
def test_every_learned_method_trains_and_predicts_through_the_interface(name):
    m = get_method(name)
    enc = EncoderConfig(audio_width=0.125, freeze_visual=True)
    cfg = m.with_num_classes(m.config_cls(dim=16, encoder=enc, **({"heads": 2, "depth": 1} if name == "avgn" else {})), 5)
    torch.manual_seed(0)
    model = m.build(cfg)
    batch = _batch()
    out = model(spec=batch["spec"], visual_feats=batch["visual_feats"])
    loss, parts = m.loss(model, out, batch)
    assert torch.isfinite(loss) and "total" in parts and not parts["total"].requires_grad
    loss.backward()
    pred = MethodPredictor(m, model)(batch)
    k = {"class_aware": 5, "shared": 1, "slots": cfg.num_sources if name == "mal" else None}[m.kind]
    assert pred["maps"].shape == (4, k, 3, 3) and pred["maps"].dtype == torch.float32
    assert ("audio_probs" in pred) == ("predicted" in m.modes)
    assert isinstance(m.value_label(model), str) and m.value_label(model)


def test_create_model_and_references_have_no_model():
    model = create_model("ezvsl", dim=16, encoder=EncoderConfig(audio_width=0.125))
    assert model.cfg.dim == 16
    with pytest.raises(ValueError, match="no trainable model"):
        create_model("centre")
    with pytest.raises(TypeError, match="not a trained model"):
        get_method("centre").build(None)


def test_register_method_checks_the_declaration(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class NoName(Method):
        label = "x"

    class BadKind(Method):
        name, label, kind = "bad-kind", "x", "heatmap"

    class SelectsSlots(Method):
        name, label, kind, modes = "slots-predicted", "x", "slots", ("oracle", "predicted")

    class Clash(Method):
        name, label = "avgn", "another AVGN"

    for cls, msg in ((NoName, "must set"), (BadKind, "kind must be one of"), (SelectsSlots, "only a class-aware method"), (Clash, "already registered")):
        with pytest.raises(ValueError, match=msg):
            register_method(cls)


def test_a_new_method_is_one_class(monkeypatch):
    """Registered in a few lines, it is evaluated by the same engine as the others."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_method
    class MaskUnion(Method):
        name, label, kind, learned = "mask-union", "union of the masks", "shared", False

        def predict_batch(self, model, batch, device, bf16=False, channels_last=False):
            return {"maps": batch["masks"].any(1, keepdim=True).float()}

    assert "mask-union" in list_methods(learned=False)
    masks = torch.zeros(2, 2, 8, 8, dtype=torch.bool)
    masks[:, 0, :4, :4] = masks[:, 1, 4:, 4:] = True
    classes = torch.tensor([[0, 1], [1, 2]])
    batch = {"spec": torch.zeros(2, 1, 4, 4), "masks": masks, "classes": classes, "labels": torch.zeros(2, 3),
             "n_sources": torch.tensor([2, 2]), "scene_ids": ["a", "b"]}
    res = evaluate_sets(MethodPredictor(get_method("mask-union")), [EvalSet(SetName.parse("test/duet/scene"), 2, [batch])], EvalConfig())
    r = res["results"]["test/duet/scene"]
    assert r["predicted"] == r["oracle"] and r["oracle"]["cap"] == pytest.approx(0.5)  # each mask is half the map's top


ENGINE = ("avgn/train.py", "avgn/engine.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "avgn" / "evaluate").glob("*.py")),
          "avgn/runs.py", "avgn/store/queue.py", "avgnbook/explorer.py", "avgnbook/analysis.py", "avgnbook/pipeline.py")


@pytest.mark.parametrize("module", ENGINE)
def test_the_engine_never_branches_on_a_method_name(module):
    names = set(list_methods())
    tree = ast.parse((ROOT / module).read_text())
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Compare, ast.If, ast.IfExp)):
            for c in ast.walk(node):
                if isinstance(c, ast.Constant) and c.value in names:
                    hits.append(f"line {node.lineno}: {c.value!r}")
    assert not hits, f"{module} compares with method names (declare the difference on the method instead): {hits}"


def test_a_run_refuses_data_built_for_another_profile(fake_build):
    from avgn.runs import check_data, data_identity

    ident = check_data(fake_build, "smoke")
    assert ident == data_identity(fake_build) and ident["profile"] == "smoke"
    with pytest.raises(ValueError, match=r"built for the 'smoke' profile, not 'cpu'.*avgn data build --profile cpu"):
        check_data(fake_build, "cpu")
    with pytest.raises(ValueError, match="not the build this run was trained on.*catalog_sha256"):
        check_data(fake_build, "smoke", expected=dict(ident, catalog_sha256="0" * 64))


def test_variants_are_typed_and_checked_when_made():
    from avgn.experiment import get_experiment
    from avgn.runs import Variant
    from avgnbook.variants import DEPTH_VARIANTS, VARIANT_GROUPS, WIDTH_VARIANTS

    assert [v.level for v in DEPTH_VARIANTS] == [1, 3, 6, 12] and {v.factor for v in DEPTH_VARIANTS} == {"depth"}
    assert VARIANT_GROUPS["ablations"][:4] == DEPTH_VARIANTS and VARIANT_GROUPS["ablations"][-1:] == WIDTH_VARIANTS
    for v in WIDTH_VARIANTS:  # the level a table shows is the width the variant trains with
        assert get_experiment("avgn", "cpu", **dict(v.overrides)).model.encoder.audio_width == v.level
    with pytest.raises(KeyError, match="model.dpeth"):
        Variant("typo", "avgn", overrides=(("model.dpeth", 2),), name="typo")
    with pytest.raises(ValueError, match="unknown method"):
        Variant("x", "centre")


@pytest.mark.parametrize("channels_last", [False, True])
def test_model_inputs_cast_cached_features_in_one_copy(channels_last):
    """Cached float16 features arrive as float32 in the requested memory format, values unchanged."""
    from avgn.methods import model_inputs

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    batch = {"spec": torch.randn(2, 1, 5, 6), "visual_feats": torch.randn(2, 8, 3, 4).half()}
    kw = model_inputs(batch, torch.device("cpu"), channels_last)
    v = kw["visual_feats"]
    assert v.dtype == torch.float32 and v.is_contiguous(memory_format=fmt)
    assert torch.equal(v, batch["visual_feats"].float())
    assert kw["spec"].is_contiguous(memory_format=fmt) and torch.equal(kw["spec"], batch["spec"])
