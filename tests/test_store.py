"""The run plan and the run store: identities, records, refusals, the queue's lock, checkout, and the
re-evaluation of a stored run from its fp16 weights (on the shared fake build, tiny experiments)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import avgn.store.plan as plan_mod
from avgn.runs import Variant, run_lock
from avgn.store.plan import Evaluation, PlanKeyError, PlannedRun, build_id, build_identity, run_id
from avgnbook.plan import book_plan
from avgn.store.queue import QueueLockedError, checkout, plan_status, store_run
from avgn.store.records import RunStore, StoreError

pytestmark = pytest.mark.usefixtures("one_thread")

VAL = (Evaluation("val", "val"),)


@pytest.fixture()
def stored(tiny_store, tiny_ids):
    return tiny_store


# ---- the plan ---------------------------------------------------------------------------------------
def test_book_plan_declares_every_chapter_run_once_with_its_dependencies():
    from avgnbook.variants import VARIANT_GROUPS

    plan = book_plan("cpu")
    assert len(plan) == len(set(plan))
    for group in ("main", "baselines", "paper", "ablations", "dsol", "text", "short"):
        for v in VARIANT_GROUPS[group]:
            for s in (0, 1, 2):
                assert f"{v.name or v.method}/seed{s}" in plan, (group, v.label, s)
    assert plan["ezvsl-ogl/seed1"].weights_key == "ezvsl/seed1" and not plan["ezvsl-ogl/seed1"].trains
    assert plan["dsol/seed2"].init_key == "dsol-stage1/seed2"
    # chapter 8's mask grid segments the maps of the stored AVGN and EZ-VSL runs of every seed with the stored decoder
    assert set(plan["mask-study/seed0"].dependencies) == {f"{m}/seed{s}" for m in ("avgn", "ezvsl") for s in (0, 1, 2)} | {"point-decoder/seed0"}
    assert {"ref-centre", "ref-object", "ref-perfect"} <= set(plan)
    assert [e.tag for e in plan["avgn/seed0"].evals] == ["test", "test_style", "test_audio", "test_real", "test_zeroshot", "composed", "negative",
                                                       "test_fixed"]
    # chapter 3's fixed-rule re-scoring only for runs with weights: adding it never retrains
    fixed = {k for k, r in plan.items() if "test_fixed" in [e.tag for e in r.evals]}
    assert {"avgn/seed2", "avgn-public/seed0", "ezvsl-ogl/seed1", "mal/seed0", "ref-object"} <= fixed
    assert "avgn-public/seed1" not in fixed and all(plan[k].keep_weights or not plan[k].trains for k in fixed)
    from avgn.evaluate import negative_set_names
    from avgnbook.plan import NEGATIVE_SETS

    assert NEGATIVE_SETS == negative_set_names("test")
    negative = {k for k, r in plan.items() if "negative" in [e.tag for e in r.evals]}
    assert {"ref-centre", "ref-object", "ezvsl/seed0", "mal/seed2"} <= negative  # the references and the main comparison
    # the main comparison is re-scored from stored weights for every seed, never retrained for a new protocol;
    # the design variants with negative-audio evaluations (AVGN's public-code target, AVGN trained on
    # negative audio) keep their first seed's weights only: the store's 250 MB
    main = {k for k in negative if k.split("/")[0] in ("ezvsl", "ezvsl-ogl", "mal", "avgn", "dsol", "tvsl-anchor-maps")}
    assert {"avgn/seed2", "tvsl-anchor-maps/seed1", "dsol/seed2", "mal/seed1"} <= main
    assert plan["tvsl-anchor-maps/seed1"].weights_key == "tvsl/seed1" and plan["tvsl/seed1"].keep_weights  # the book's T-VSL: a read of tvsl's weights
    assert all(plan[k].keep_weights for k in main)
    assert {k for k in negative - main if not plan[k].keep_weights} == {"avgn-public/seed1", "avgn-public/seed2",
                                                                        "avgn-negatives/seed1", "avgn-negatives/seed2"}


def test_run_id_is_a_content_hash_of_configuration_seed_build_and_method_version(monkeypatch, fake_build):
    from avgn.methods import get_method

    plan = book_plan("smoke")
    build = build_identity("smoke", fake_build)
    a = run_id(plan["avgn/seed0"], plan, build)
    assert a == run_id(plan["avgn/seed0"], plan, build) and len(a) == 16
    assert run_id(plan["avgn-depth1/seed0"], plan, build) != a  # configuration
    other_seed = PlannedRun(plan["avgn/seed0"].variant, 1, "smoke", plan["avgn/seed0"].evals)
    assert run_id(other_seed, plan, build) != a  # seed
    assert run_id(plan["avgn/seed0"], plan, {**build, "catalog_sha256": "0" * 64}) != a  # data build
    monkeypatch.setattr(type(get_method("avgn")), "version", 99)
    assert run_id(plan["avgn/seed0"], plan, build) != a  # training-code version
    # an inference-time variant and a second stage follow the runs they depend on
    ogl = run_id(plan["ezvsl-ogl/seed0"], plan, build)
    monkeypatch.setattr(type(get_method("ezvsl")), "version", 99)
    assert run_id(plan["ezvsl-ogl/seed0"], plan, build) != ogl
    dsol = run_id(plan["dsol/seed0"], plan, build)
    monkeypatch.setattr(type(get_method("dsol")), "version", 99)
    assert run_id(plan["dsol/seed0"], plan, build) != dsol


def test_build_identity_computed_from_the_assets_equals_the_builds_own(tmp_path):
    from test_data_build import SMALL, FakeProvider, build_fake

    build_fake(tmp_path / "b")
    from_file = build_identity("smoke", tmp_path / "b")
    computed = build_identity("smoke", config=SMALL, provider=FakeProvider())
    assert from_file == computed
    assert build_id(from_file) == build_id(computed)
    # a build of the same profile with other settings is another build
    assert build_id(build_identity("smoke", config=SMALL.with_overrides(clips_per_source=SMALL.clips_per_source + 1),
                                   provider=FakeProvider())) != build_id(computed)


# ---- storing, reading, checking out ------------------------------------------------------------------
def test_stored_runs_are_complete_verified_and_fp16(stored):
    store, plan = stored["store"], stored["plan"]
    st = plan_status("smoke", store, stored["data"], plan=plan)
    assert list(st["state"]) == ["done"] * 4, st
    sr = store.read("avgn/seed0")
    rec = sr.record
    assert rec["id"] == st.set_index("key").loc["avgn/seed0", "id"] and rec["trains"] and rec["checkpoint_epoch"] == 1
    assert st.set_index("key").loc["avgn/seed0", "wall_seconds"] == rec["wall_seconds"] > 0  # the whole plan's measured cost
    assert set(rec["files"]) == {"weights.safetensors", "config.json", "history.json", "run.json", "eval_val.json", "eval_val.csv",
                                 "eval_val_samples.csv.gz"}
    from safetensors.torch import load_file

    w = load_file(str(sr.folder / "weights.safetensors"))
    assert all(v.dtype == torch.float16 for v in w.values() if v.is_floating_point())
    assert not any(k.startswith("visual.backbone.") for k in w)  # the frozen packaged backbone is not stored
    assert store.read("ezvsl-ogl/seed0").record["weights_of"] == "ezvsl/seed0"
    assert "weights" not in store.read("ref-centre").record


def test_reevaluating_a_stored_run_from_its_weights_reproduces_its_record(stored, tmp_path):
    from avgn.evaluate import evaluate_run

    res = checkout("avgn/seed0", "smoke", tmp_path / "runs", stored["data"], stored["store"], stored["plan"])
    assert json.loads((res["run_dir"] / "store.json").read_text())["id"] == res["id"]
    again = evaluate_run(res["run_dir"], "val", device="cpu", progress=False, write=False)
    kept = json.loads((res["run_dir"] / "eval_val.json").read_text())["results"]
    n = 0
    for name, modes in kept.items():
        for mode, metrics in modes.items():
            for k, v in metrics.items():
                if isinstance(v, float) and v == v:
                    assert again["results"][name][mode][k] == pytest.approx(v, abs=1e-4), (name, mode, k)
                    n += 1
    assert n > 20
    # the inference-time variant checks out its weights' run too; its evaluation is its own
    ogl = checkout("ezvsl-ogl/seed0", "smoke", tmp_path / "runs", stored["data"], stored["store"], stored["plan"])
    assert (ogl["eval_dir"] / "eval_val.csv").is_file() and (ogl["run_dir"] / "checkpoints" / "best.json").is_file()
    assert ogl["eval_dir"] != ogl["run_dir"]


def _tiny_plan():
    from helpers import tiny_plan

    return tiny_plan()


def _copy(stored, tmp_path) -> RunStore:
    shutil.copytree(stored["store"].root, tmp_path / "store")
    return RunStore("smoke", tmp_path / "store")


def test_broken_records_are_refused_naming_the_file_and_the_command(stored, tmp_path):
    store = _copy(stored, tmp_path)
    cmd = "avgn runs train --profile smoke --keys avgn/seed0"
    folder = store.folder("avgn/seed0")
    # an edited evaluation
    p = folder / "eval_val.csv"
    p.write_text(p.read_text().replace("0.", "0.9", 1))
    with pytest.raises(StoreError, match=r"eval_val\.csv: its SHA-256 differs") as err:
        store.read("avgn/seed0")
    assert cmd in str(err.value) and "\n" not in str(err.value)
    # missing weights
    shutil.copyfile(stored["store"].folder("avgn/seed0") / "eval_val.csv", p)
    (folder / "weights.safetensors").unlink()
    with pytest.raises(StoreError, match=r"weights\.safetensors: missing"):
        store.read("avgn/seed0")
    # a truncated record
    rec = folder / "record.json"
    rec.write_text(rec.read_text()[: len(rec.read_text()) // 2])
    with pytest.raises(StoreError, match=r"record\.json: unreadable record"):
        store.read("avgn/seed0")
    # a record of another profile, placed under this one
    shutil.copytree(stored["store"].folder("ezvsl/seed0"), store.root / "cpu" / "ezvsl" / "seed0")
    with pytest.raises(StoreError, match=r"is 'ezvsl/seed0' of profile 'smoke', not 'ezvsl/seed0' of 'cpu'"):
        RunStore("cpu", store.root).read("ezvsl/seed0")
    # a record of another data build
    with pytest.raises(StoreError, match=r"trained on data build .* not this profile's build feedface"):
        store.read("ezvsl/seed0", build="feedface")
    # a run missing from the store: one line naming the key and the command
    shutil.rmtree(store.folder("ezvsl-ogl/seed0"))
    with pytest.raises(StoreError, match=r"no record of 'ezvsl-ogl/seed0' in the store; retrain it: `avgn runs train --profile smoke --keys ezvsl-ogl/seed0`"):
        checkout("ezvsl-ogl/seed0", "smoke", tmp_path / "runs", stored["data"], store, stored["plan"])
    # status reports the broken one, not as done
    st = plan_status("smoke", store, stored["data"], plan=stored["plan"]).set_index("key")
    assert st.loc["avgn/seed0", "state"] == "broken" and st.loc["ezvsl/seed0", "state"] == "done"


def test_a_changed_configuration_makes_the_stored_run_stale_and_checkout_refuses_it(stored, tmp_path, monkeypatch):
    from helpers import tiny_experiment

    monkeypatch.setattr(plan_mod, "get_experiment", lambda m, p="smoke", **o: tiny_experiment(m, **{"train.epochs": 1, "train.lr": 5e-4, **o}))
    st = plan_status("smoke", stored["store"], stored["data"], plan=stored["plan"]).set_index("key")
    assert st.loc["avgn/seed0", "state"] == "stale" and st.loc["ezvsl-ogl/seed0", "state"] == "stale"
    assert st.loc["ref-centre", "state"] == "done"  # a reference does not train
    with pytest.raises(StoreError, match=r"stale record .* `avgn runs train --profile smoke --keys avgn/seed0`"):
        checkout("avgn/seed0", "smoke", tmp_path / "runs", stored["data"], stored["store"], stored["plan"])


def test_a_key_the_plan_does_not_declare_is_an_error(stored, tmp_path):
    with pytest.raises(PlanKeyError, match=r"'avgn/seed7' is not a run of the smoke plan"):
        checkout("avgn/seed7", "smoke", tmp_path / "runs", stored["data"], stored["store"], stored["plan"])
    with pytest.raises(PlanKeyError, match=r"'nope/seed0' is not a run of the smoke plan"):
        store_run("nope/seed0", "smoke", store=stored["store"], data_dir=stored["data"], work_dir=tmp_path, plan=stored["plan"])


def test_two_queues_never_store_one_run(stored, tmp_path):
    work = tmp_path / "work"
    with run_lock(work / "locks" / "ezvsl" / "seed0"):
        with pytest.raises(QueueLockedError, match=r"ezvsl/seed0: another queue is storing it"):
            store_run("ezvsl/seed0", "smoke", store=_copy(stored, tmp_path), data_dir=stored["data"], work_dir=work, plan=stored["plan"],
                      retrain=True)


def test_missing_evaluations_are_rescored_from_the_stored_weights_without_training(stored, tmp_path):
    store = _copy(stored, tmp_path)
    plan = dict(stored["plan"])
    r = plan["avgn/seed0"]
    plan["avgn/seed0"] = PlannedRun(r.variant, r.seed, r.profile, r.evals + (Evaluation("val_solo", "val", ("val/solo/scene",)),), r.chapters)
    st = plan_status("smoke", store, stored["data"], plan=plan).set_index("key")
    assert st.loc["avgn/seed0", "state"] == "evals" and "val_solo" in st.loc["avgn/seed0", "note"]
    before = store.read("avgn/seed0").record
    sr = store_run("avgn/seed0", "smoke", store=store, data_dir=stored["data"], work_dir=tmp_path / "work", device="cpu", plan=plan)
    assert not (tmp_path / "work" / "runs").exists()  # nothing trained
    assert sr.record["files"]["weights.safetensors"] == before["files"]["weights.safetensors"]
    assert set(sr.eval_tags()) == {"val", "val_solo"}
    assert sr.record["files"]["eval_val.json"] == before["files"]["eval_val.json"]  # the current evaluation kept, not re-scored
    assert plan_status("smoke", store, stored["data"], plan=plan).set_index("key").loc["avgn/seed0", "state"] == "done"


def test_an_evaluation_with_another_scoring_rule_is_stored_as_its_own_and_rescored_when_the_rule_changes(stored, tmp_path):
    """Chapter 3's cIoU under the fixed binarisation is an evaluation of the plan (``eval_overrides``):
    re-scored from the stored weights (no training), equal to ``evaluate_run(..., overrides=...)``,
    kept in the record with its rule, and a changed rule makes it lacking again; the overrides change
    the scoring only."""
    from avgn.evaluate import evaluate_run

    store = _copy(stored, tmp_path)
    plan = dict(stored["plan"])
    rule = (("binarize_rule", "fixed"), ("binarize_value", 0.5))
    r = plan["ezvsl/seed0"]
    plan["ezvsl/seed0"] = PlannedRun(r.variant, r.seed, r.profile, r.evals + (Evaluation("val_fixed", "val", ("val/duet/scene",), rule),), r.chapters)
    sr = store_run("ezvsl/seed0", "smoke", store=store, data_dir=stored["data"], work_dir=tmp_path / "work", device="cpu", plan=plan)
    assert not (tmp_path / "work" / "runs").exists()  # nothing trained
    assert sr.record["evals"]["val_fixed"]["eval_overrides"] == [["binarize_rule", "fixed"], ["binarize_value", 0.5]]
    assert "eval_overrides" not in sr.record["evals"]["val"]
    got = checkout("ezvsl/seed0", "smoke", tmp_path / "runs", stored["data"], store, plan)
    fixed = json.loads((got["eval_dir"] / "eval_val_fixed.json").read_text())
    assert fixed["eval_config"]["binarize_rule"] == "fixed"
    want = evaluate_run(got["run_dir"], "val", sets=["val/duet/scene"], device="cpu", progress=False, write=False,
                        overrides={"eval.binarize_rule": "fixed", "eval.binarize_value": 0.5})
    protocol = json.loads((got["eval_dir"] / "eval_val.json").read_text())["results"]["val/duet/scene"]["oracle"]
    assert fixed["results"]["val/duet/scene"]["oracle"]["ciou@0.3"] == pytest.approx(want["results"]["val/duet/scene"]["oracle"]["ciou@0.3"])
    assert fixed["results"]["val/duet/scene"]["oracle"]["cap"] == pytest.approx(protocol["cap"])  # CAP does not depend on the rule
    assert plan_status("smoke", store, stored["data"], plan=plan).set_index("key").loc["ezvsl/seed0", "state"] == "done"
    plan["ezvsl/seed0"] = PlannedRun(r.variant, r.seed, r.profile, r.evals + (Evaluation("val_fixed", "val", ("val/duet/scene",),
                                                                                           (("binarize_rule", "fixed"), ("binarize_value", 0.3))),), r.chapters)
    st = plan_status("smoke", store, stored["data"], plan=plan).set_index("key").loc["ezvsl/seed0"]
    assert st["state"] == "evals" and st["note"] == "re-score val_fixed"
    plan["ezvsl/seed0"] = PlannedRun(r.variant, r.seed, r.profile, r.evals + (Evaluation("val_fixed", "val", ("val/duet/scene",)),), r.chapters)
    st = plan_status("smoke", store, stored["data"], plan=plan).set_index("key").loc["ezvsl/seed0"]
    assert st["state"] == "evals" and st["note"] == "re-score val_fixed"  # the protocol's rule again: the stored one is another
    with pytest.raises(ValueError, match="scoring only"):
        evaluate_run(got["run_dir"], "val", sets=["val/duet/scene"], device="cpu", progress=False, write=False, overrides={"model.dim": 8})


def test_chapter_context_reads_the_store_and_lists_the_runs_it_read(stored, tmp_path, monkeypatch):
    import avgnbook.chapter as book
    from avgnbook.variants import MAIN_VARIANTS

    monkeypatch.setattr(book, "build_dataset", lambda **kw: None)
    monkeypatch.setattr(book, "dataset_dir", lambda d, p, s: stored["data"])
    monkeypatch.setattr(book, "checkout", lambda key, profile, runs, data, store: checkout(key, profile, runs, data, store, stored["plan"]))
    ctx = book.chapter_context("03", "smoke", 0, "cpu", tmp_path, store_dir=stored["store"].root)
    assert (ctx.runs, ctx.results_dir, ctx.figures_dir) == (tmp_path / "data" / "runs", tmp_path / "results", tmp_path / "figures")
    ctx.run_variants([MAIN_VARIANTS[0], MAIN_VARIANTS[2], MAIN_VARIANTS[3]], eval_splits=("val",))
    ctx.run_references(["centre"])
    long = ctx.collect([MAIN_VARIANTS[0], MAIN_VARIANTS[3]], references=["centre"], split="val")
    ids = {k: stored["store"].read(k).id for k in ("avgn/seed0", "ezvsl-ogl/seed0", "ref-centre")}
    assert set(long["run"]) == set(ids.values())
    assert ctx.run_ids(long) == list(long["run"])  # a table the chapter computes itself gets the same ids
    with pytest.raises(KeyError, match="did not read"):
        ctx.run_ids(long.assign(seed=7))
    res = ctx.write(long, "t")
    assert list(res.columns)[4] == "run" and set(res["run"]) == set(ids.values())
    table = ctx.runs_table()
    assert set(table["key"]) == {"avgn/seed0", "ezvsl/seed0", "ezvsl-ogl/seed0", "ref-centre"}
    with pytest.raises(KeyError, match=r"has no evaluation \['test'\]"):
        ctx.run_variants([MAIN_VARIANTS[0]], eval_splits=("test",))
    with pytest.raises(PlanKeyError, match=r"'mal/seed0' is not a run of the smoke plan"):
        ctx.checkout("mal/seed0")


def test_a_retrained_store_is_compared_metric_by_metric_and_a_drifted_number_flagged(stored, tmp_path):
    import pandas as pd

    from avgn.store.queue import compare_stores
    from avgn.io import file_sha256

    other = _copy(stored, tmp_path)
    same = compare_stores("smoke", other.root, stored["store"].root, tags=("val",))
    assert len(same) > 20 and not same["flag"].any()
    folder = other.folder("ezvsl/seed0")
    df = pd.read_csv(folder / "eval_val.csv")
    i = df.index[(df["metric"] == "ap") & (df["mode"] == "oracle")][0]
    df.loc[i, "value"] += 0.05
    df.to_csv(folder / "eval_val.csv", index=False)
    rec = json.loads((folder / "record.json").read_text())
    rec["files"]["eval_val.csv"] = file_sha256(folder / "eval_val.csv")
    (folder / "record.json").write_text(json.dumps(rec))
    diff = compare_stores("smoke", other.root, stored["store"].root, tags=("val",))
    flagged = diff[diff["flag"]]
    assert len(flagged) == 1 and flagged.iloc[0]["key"] == "ezvsl/seed0" and flagged.iloc[0]["metric"] == "ap"


def test_a_second_store_trains_in_its_own_work_folder(tmp_path):
    from avgn.store.queue import default_work_dir

    assert default_work_dir(RunStore("cpu")).parts[-2:] == ("store-work", "cpu")
    assert default_work_dir(RunStore("cpu", tmp_path / "store-rerun")) == tmp_path / "store-rerun-work" / "cpu"


def test_a_run_the_plan_keeps_without_weights_is_stored_and_read_by_its_evaluations(stored, tmp_path):
    from dataclasses import replace

    plan = dict(stored["plan"])
    plan["ezvsl/seed0"] = replace(plan["ezvsl/seed0"], keep_weights=False)
    store = RunStore("smoke", tmp_path / "store")
    sr = store_run("ezvsl/seed0", "smoke", store=store, data_dir=stored["data"], work_dir=tmp_path / "work", device="cpu", plan=plan)
    assert "weights" not in sr.record and sr.record["weights_kept"] is False and "weights.safetensors" not in sr.record["files"]
    assert sr.id == stored["store"].read("ezvsl/seed0").id  # storage policy is not part of the run's identity
    res = checkout("ezvsl/seed0", "smoke", tmp_path / "runs", stored["data"], store, plan)
    assert (res["run_dir"] / "eval_val.csv").is_file() and not (res["run_dir"] / "checkpoints").exists()
    with pytest.raises(StoreError, match=r"stores no weights"):
        store.load_weights(store.read("ezvsl/seed0"))


def _fake_study(data_dir, out_dir, profile, seed, width=1):
    (out_dir / "sub").mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps({"profile": profile, "seed": seed, "width": width}))
    (out_dir / "sub" / "curve.csv").write_text("step,f1\n1,0.5\n")


def test_a_study_run_is_stored_with_its_files_and_checked_out_as_written(stored, tmp_path):
    from avgn.store.plan import Study

    plan = dict(stored["plan"])
    study = PlannedRun(None, 0, "smoke", (), ("02",), study=Study("fake-study", 1, _fake_study, (("width", 3),)))
    plan[study.key] = study
    assert study.key == "fake-study/seed0" and not study.trains and study.weights_key is None
    store = RunStore("smoke", tmp_path / "store")
    sr = store_run("fake-study/seed0", "smoke", store=store, data_dir=stored["data"], work_dir=tmp_path / "work", plan=plan)
    assert set(sr.record["files"]) == {"study/result.json", "study/sub/curve.csv"}
    res = checkout("fake-study/seed0", "smoke", tmp_path / "runs", stored["data"], store, plan)
    assert json.loads((res["run_dir"] / "result.json").read_text()) == {"profile": "smoke", "seed": 0, "width": 3}
    assert (res["run_dir"] / "sub" / "curve.csv").read_text().startswith("step,f1")
    # its parameters and its version are part of its id
    build = build_identity("smoke", stored["data"])
    ids = {run_id(PlannedRun(None, 0, "smoke", (), study=Study("fake-study", v, _fake_study, p)), plan, build)
           for v, p in ((1, (("width", 3),)), (2, (("width", 3),)), (1, (("width", 4),)))}
    assert len(ids) == 3 and sr.id in ids
    assert plan_status("smoke", store, stored["data"], plan=plan).set_index("key").loc["fake-study/seed0", "state"] == "done"


def _study_of_runs(data_dir, out_dir, profile, seed, runs):
    (out_dir / "read.json").write_text(json.dumps({k: [c["id"], sorted(p.name for p in c["run_dir"].iterdir())] for k, c in runs.items()}))


def test_a_study_of_stored_runs_reads_them_waits_for_them_and_goes_stale_with_them(stored, tmp_path, monkeypatch):
    """A study with ``needs`` (chapter 8's mask grid over the stored AVGN / EZ-VSL runs): its trainer
    gets their checkouts, their ids are part of its id and of its record, and the queue does not
    start it before they are stored (naming the one missing)."""
    import subprocess

    import avgn.store.queue as queue
    from avgn.store.plan import Study

    plan = dict(stored["plan"])
    study = PlannedRun(None, 0, "smoke", (), ("08",), study=Study("grid", 1, _study_of_runs, needs=("avgn/seed0", "ezvsl/seed0")))
    plan[study.key] = study
    assert study.dependencies == ("avgn/seed0", "ezvsl/seed0") and plan["ezvsl-ogl/seed0"].dependencies == ("ezvsl/seed0",)
    store = _copy(stored, tmp_path)
    sr = store_run("grid/seed0", "smoke", store=store, data_dir=stored["data"], work_dir=tmp_path / "work", plan=plan)
    ids = {k: store.read(k).id for k in ("avgn/seed0", "ezvsl/seed0")}
    assert sr.record["needs"] == ids == sr.record["identity"]["needs"]
    read = json.loads(checkout("grid/seed0", "smoke", tmp_path / "runs", stored["data"], store, plan)["run_dir"].joinpath("read.json").read_text())
    assert {k: v[0] for k, v in read.items()} == ids and "checkpoints" in read["avgn/seed0"][1]
    # another run of a needed key is another study
    build = build_identity("smoke", stored["data"])
    other = dict(plan, **{"avgn/seed0": PlannedRun(Variant("AVGN", "avgn", overrides=(("train.epochs", 9),), name="avgn"), 0, "smoke", VAL, ("03",))})
    assert run_id(other["grid/seed0"], other, build) != sr.id == run_id(study, plan, build)
    # the queue waits for what it needs
    store.remove("grid/seed0"), store.remove("ezvsl/seed0")
    monkeypatch.setattr(queue, "get_plan", lambda profile: plan)
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: pytest.fail(f"started {cmd}"))
    lines = []
    failed = queue.train_queue("smoke", keys=["grid/seed0"], workers=1, store_root=store.base.parent, data_dir=stored["data"], log=lines.append)
    assert failed == 1 and any("NOT STARTED grid/seed0: it needs ezvsl/seed0" in line for line in lines), lines


def test_a_stale_work_folder_is_set_aside_not_resumed(fake_build, tmp_path):
    """The work folder of a key whose configuration changed (a stale run) is renamed, never deleted
    nor resumed; the folder of the same configuration — as :func:`avgn.train.train` left it when
    interrupted, its fingerprint that of the experiment *for the build* — is left to resume."""
    import json as _json

    from avgn.store.queue import set_aside_other_run
    from avgn.train import train
    from helpers import tiny_experiment

    exp = tiny_experiment("avgn", **{"train.epochs": 2})
    run_dir = tmp_path / "avgn-seed0"
    assert set_aside_other_run(run_dir, exp, fake_build) is None  # nothing there
    train(exp, fake_build, run_dir, seed=0, device="cpu", progress=False, stop_after_epochs=1)  # interrupted after an epoch
    assert _json.loads((run_dir / "config.json").read_text())["fingerprint"] != exp.fingerprint()  # the build's class count
    assert set_aside_other_run(run_dir, exp, fake_build) is None and (run_dir / "checkpoints").is_dir()  # resumable
    fp = _json.loads((run_dir / "config.json").read_text())["fingerprint"]
    (run_dir / "config.json").write_text(_json.dumps({"fingerprint": "0123abcd"}))
    moved = set_aside_other_run(run_dir, exp, fake_build)
    assert moved == tmp_path / "avgn-seed0.replaced-0123abcd" and not run_dir.exists()
    assert (moved / "checkpoints").is_dir()
    # the same configuration trained for another store id (the method's training version changed): set aside too
    run_dir.mkdir()
    (run_dir / "config.json").write_text(_json.dumps({"fingerprint": fp}))
    assert set_aside_other_run(run_dir, exp, fake_build, "id-new") is None and (run_dir / "store_id.txt").read_text() == "id-new\n"
    assert set_aside_other_run(run_dir, exp, fake_build, "id-new") is None and run_dir.is_dir()  # the same id: resumable
    moved = set_aside_other_run(run_dir, exp, fake_build, "id-newer")
    assert moved == tmp_path / "avgn-seed0.replaced-id-new" and (run_dir / "store_id.txt").read_text() == "id-newer\n"
    assert not (run_dir / "config.json").exists()  # a fresh folder, marked for the new id


def test_queue_of_some_keys_starts_a_run_whose_dependency_is_stored_but_not_named(tiny_store, tiny_ids, tmp_path, monkeypatch):
    """`avgn runs train --keys ezvsl-ogl/seed0`: its weights come from the stored ezvsl/seed0, which the
    keys do not name; the queue starts it (it used to report the dependency as not stored)."""
    import subprocess

    import avgn.store.queue as queue

    root = tmp_path / "store"
    shutil.copytree(tiny_store["store"].base.parent, root)
    store = RunStore("smoke", root)
    store.remove("ezvsl-ogl/seed0")
    monkeypatch.setattr(queue, "get_plan", lambda profile: tiny_store["plan"])
    started = []

    class Done:
        returncode = 0

        def __init__(self, cmd, **kw):
            started.append(cmd[cmd.index("store-one") + 1])

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Done)
    lines = []
    failed = queue.train_queue("smoke", keys=["ezvsl-ogl/seed0"], workers=1, store_root=root, data_dir=tiny_store["data"], log=lines.append)
    assert failed == 0 and started == ["ezvsl-ogl/seed0"], lines
    assert not any("NOT STARTED" in line for line in lines)


def test_the_committed_smoke_store_holds_every_planned_run_current():
    """The smoke store costs minutes to retrain and every chapter's smoke run reads it: every run of the
    smoke plan must be stored and current, so a method's version bump cannot land without
    ``avgn runs train --profile smoke`` (the cpu store may lag: its queue takes hours)."""
    st = plan_status("smoke")
    bad = st[st["state"] != "done"]
    assert bad.empty, "retrain: avgn runs train --profile smoke --keys " + " ".join(bad["key"]) + "\n" + bad[["key", "state", "note"]].to_string()


def test_a_run_planned_again_under_another_key_takes_the_stored_weights_instead_of_training(stored, tmp_path, monkeypatch):
    """The id is the run's content: a key whose planned id a record under another key already has
    (a variant equal to what a changed default now is) is stored from that record's weights and
    evaluations, never retrained; a run with another id still trains."""
    import avgn.store.queue as queue
    from avgn.runs import Variant
    from avgn.store.plan import PlannedRun

    store = _copy(stored, tmp_path)
    plan = dict(stored["plan"])
    again = PlannedRun(Variant("AVGN, planned again", "avgn", name="avgn-again"), 0, "smoke", plan["avgn/seed0"].evals, ("03",))
    other = PlannedRun(Variant("AVGN, another run", "avgn", overrides=(("train.lr", 5e-4),), name="avgn-other"), 0, "smoke",
                       plan["avgn/seed0"].evals, ("03",))
    plan.update({again.key: again, other.key: other})
    st = plan_status("smoke", store, stored["data"], plan=plan).set_index("key")
    assert st.loc["avgn-again/seed0", "id"] == st.loc["avgn/seed0", "id"] and st.loc["avgn-again/seed0", "state"] == "missing"
    assert "stored as avgn/seed0" in st.loc["avgn-again/seed0", "note"] and st.loc["avgn-other/seed0", "note"] == ""
    assert st.loc["avgn-again/seed0", "est_seconds"] < st.loc["avgn-other/seed0", "est_seconds"]

    def no_training(*a, **k):
        raise AssertionError("trained a run the store already holds")

    monkeypatch.setattr(queue, "_train_into_stage", no_training)
    sr = store_run("avgn-again/seed0", "smoke", store=store, data_dir=stored["data"], work_dir=tmp_path / "work", device="cpu", plan=plan)
    base = store.read("avgn/seed0")
    assert sr.id == base.id and sr.record["same_run_as"] == "avgn/seed0" and sr.record["label"] == "AVGN, planned again"
    mine, theirs = store.load_weights(sr), store.load_weights(base)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)  # the same fp16 weights
    assert sr.record["files"]["eval_val.csv"] == base.record["files"]["eval_val.csv"]  # its current evaluation, kept
    assert sr.record["checkpoint_epoch"] == base.record["checkpoint_epoch"] and store.read("avgn-again/seed0").id == base.id
    assert plan_status("smoke", store, stored["data"], plan=plan).set_index("key").loc["avgn-again/seed0", "state"] == "done"
    with pytest.raises(AssertionError, match="trained a run"):  # another id: no twin, so it trains
        store_run("avgn-other/seed0", "smoke", store=store, data_dir=stored["data"], work_dir=tmp_path / "work", device="cpu", plan=plan)


def test_a_stale_key_whose_new_run_is_stored_under_another_key_takes_those_weights(stored, tmp_path, monkeypatch):
    """A default changed to what a variant had: the default's key is stale (its record is the old
    default's run) and its new id is the variant's record — stored from that record, not retrained."""
    import avgn.store.queue as queue
    from avgn.runs import Variant
    from avgn.store.plan import PlannedRun

    store = _copy(stored, tmp_path)
    plan = dict(stored["plan"])
    old_id = store.read("ezvsl/seed0").id
    plan["ezvsl/seed0"] = PlannedRun(Variant("now the AVGN run", "avgn", name="ezvsl"), 0, "smoke", plan["avgn/seed0"].evals, ("03",))
    row = plan_status("smoke", store, stored["data"], plan=plan).set_index("key").loc["ezvsl/seed0"]
    assert row["state"] == "stale" and row["stored_id"] == old_id and "stored as avgn/seed0" in row["note"]

    def no_training(*a, **k):
        raise AssertionError("trained a run the store already holds")

    monkeypatch.setattr(queue, "_train_into_stage", no_training)
    sr = store_run("ezvsl/seed0", "smoke", store=store, data_dir=stored["data"], work_dir=tmp_path / "work", device="cpu", plan=plan)
    base = store.read("avgn/seed0")
    assert sr.id == base.id != old_id and sr.record["same_run_as"] == "avgn/seed0"
    mine, theirs = store.load_weights(sr), store.load_weights(base)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert plan_status("smoke", store, stored["data"], plan=plan).set_index("key").loc["ezvsl/seed0", "state"] == "done"
