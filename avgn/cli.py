"""The ``avgn`` command line. Every subcommand calls the same library function a notebook calls.

    avgn env                                   print the environment report
    avgn data build --profile P --seed S --out DIR
    avgn data features --profile P [--splits S ...|--all]   the frozen backbone's feature cache (evaluation splits)
    avgn train --method METHOD --profile P --seed S --data DIR --out RUN_DIR [--resume]
    avgn eval RUN_DIR --split test                 evaluate a trained run (its best checkpoint)
    avgn eval RUN_DIR --set object_prior_alpha=0.4 --out DIR   ... with an inference-time model change
    avgn eval --reference centre|object --profile P --data DIR --out DIR --split test
    avgn eval RUN_DIR --sets test/solo/silence test/solo/noise test/solo/offscreen --tag negative   negative audio
    avgn localize RUN_DIR --image FRAME.png --audio CLIP.wav [--classes auto|NAME,...] [--out DIR]
    avgn localize RUN_DIR --video FILE.mp4 [--time SECONDS]     ... a video's frame and audio (needs ffmpeg)
    avgn runs status [--profile P]             the book's runs: done, stale, missing, and the time left
    avgn runs train [--profile P] [--keys K ...] [--workers 2]   train, evaluate and store what is left
    avgn runs check [--profile P]              verify every stored record (hashes, ids)
    avgn runs compare OTHER_STORE [--profile P]   a retrained store against the committed one
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avgn.config import PROFILE_NAMES
from avgn.methods import list_methods


def _cmd_env(args: argparse.Namespace) -> int:
    from avgn.env import environment_report

    for key, value in environment_report(args.device).items():
        print(f"{key:>14}: {value}")
    return 0


def _cmd_data_build(args: argparse.Namespace) -> int:
    from avgn.data.build import build_dataset, dataset_dir

    out = Path(args.out) if args.out else dataset_dir("data/embedded", args.profile, args.seed)
    manifest = build_dataset(profile=args.profile, seed=args.seed, out=out, progress=not args.quiet)
    print(f"manifest: {manifest}")
    return 0


def _cmd_data_features(args: argparse.Namespace) -> int:
    from avgn.data.build import dataset_dir
    from avgn.data.manifest import load_manifest
    from avgn.experiment import get_experiment
    from avgn.features import compute_features

    data = Path(args.data) if args.data else dataset_dir("data/embedded", args.profile, args.seed)
    inputs = get_experiment("avgn", args.profile).inputs
    if not inputs.cached_features:
        print(f"profile {args.profile} trains its visual backbone: it caches no features")
        return 0
    if not (data / "manifest.parquet").is_file():
        raise SystemExit(f"{data / 'manifest.parquet'} is missing: build the data first (avgn data build --profile {args.profile})")
    splits = args.splits or None
    if splits is None and not args.all:  # what the chapters evaluate; training computes the training split's itself
        splits = sorted(s for s in load_manifest(data)["split"].unique() if s != "train")
    r = compute_features(data, inputs.features, splits=splits, device=args.device, progress=not args.quiet)
    print(f"features {r['key']}: {r['n_computed']} computed, {r['n_cached']} cached, {r['seconds']:.0f} s ({r['dir']})")
    return 0


def _parse_sets(items: list[str]) -> dict[str, object]:
    """``key=value`` pairs: JSON values (``3``, ``0.5``, ``true``, ``null``, ``[1, 2]``), ``None`` for null,
    anything else as a string."""
    import json

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value (e.g. train.epochs=3), got {item!r}")
        if value in ("None", "none"):  # Python's spelling of JSON's null: "no value" (e.g. no early stopping)
            out[key] = None
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from avgn.runs import run_dir_for
    from avgn.train import train

    out = Path(args.out) if args.out else run_dir_for("data/runs", args.method, args.profile, args.seed)
    summary = train(
        args.method, Path(args.data), out, seed=args.seed, profile=args.profile, device=args.device,
        resume=args.resume, progress=not args.quiet, overrides=_parse_sets(args.set),
    )
    if summary.get("finished"):
        print(f"run: {out} (best epoch {summary['best_epoch']}, val score {summary['best_val_score']:.4f})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from avgn.evaluate import evaluate_reference, evaluate_run, results_frame

    split = args.split[0] if len(args.split) == 1 else args.split
    if args.reference:
        if not (args.data and args.out):
            raise SystemExit("avgn eval --reference needs --data DIR and --out DIR")
        payload = evaluate_reference(args.reference, args.data, args.out, profile=args.profile, split=split,
                                     sets=args.sets, device=args.device, progress=not args.quiet, tag=args.tag)
    else:
        if not args.run_dir:
            raise SystemExit("avgn eval needs RUN_DIR (or --reference)")
        payload = evaluate_run(args.run_dir, split, sets=args.sets, checkpoint=args.checkpoint, data_dir=args.data,
                               device=args.device, progress=not args.quiet, model_overrides=_parse_sets(args.set) or None,
                               out_dir=args.out, tag=args.tag)
    df = results_frame(payload["results"])
    if len(df):
        table = df.pivot_table(index=["set", "mode"], columns="metric", values="value", sort=False)
        keep = [c for c in ("ap", "iou@0.5", "cap", "piap", "ciou@0.3", "auc", "presence_f1", "false_alarm", "offscreen_selected",
                            "own_detect", "visible_ap", "own_visible_ap", "visible_ap_drop") if c in table.columns]
        print(table[keep].round(4).to_string())
    if "detection" in payload:  # negative-audio sets: how the method reports a source
        print(f"negative audio: {payload['detection']['note']}")
    print(f"written: {payload.get('files', {}).get('json', '(not written)')}")
    return 0


def _cmd_localize(args: argparse.Namespace) -> int:
    from avgn.localize import localize

    res = localize(args.run_dir, args.image, args.audio, video=args.video, time=args.time, classes=args.classes,
                   out_dir=args.out, offset=args.offset, device=args.device,
                   command=" ".join(["avgn", *sys.argv[1:]]) if sys.argv[1:2] == ["localize"] else None)
    if res["video"] is not None:
        v = res["video"]
        print(f"video: frame at {v['time_s']:g} s, audio {v['window_s'][0]:.2f}-{v['window_s'][1]:.2f} s of {v['file']}")
    if res["message"]:
        print(res["message"])
    for s in res["sources"]:
        extra = f", presence {s['presence']:.2f}" if "presence" in s else ""
        print(f"{s['name']}: peak {s['peak_value']:.3f} at (x, y) = {tuple(s['peak_xy'])}{extra} -> {s['overlay']}, {s['mask']}")
    print(f"written: {Path(res['out_dir']) / 'localize.json'}")
    return 0


def _cmd_runs_status(args: argparse.Namespace) -> int:
    from avgn.store.queue import format_duration, plan_status
    from avgn.store.records import RunStore, size_report

    store = RunStore(args.profile, args.store)
    df = plan_status(args.profile, store, args.data)
    show = df if args.all else df[df["state"] != "done"]
    if len(show):
        print(show[["key", "label", "chapters", "state", "est_seconds", "note"]].assign(
            est_seconds=show["est_seconds"].map(lambda s: format_duration(s) if s else "-")).rename(columns={"est_seconds": "est. time"})
              .to_string(index=False))
    counts = df["state"].value_counts().to_dict()
    size = size_report(store)
    print(f"{len(df)} runs planned: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    print(f"left: about {format_duration(df['est_seconds'].sum() / 2)} on 2 cores (two workers, one thread each); "
          f"store {store.base}: {size['runs']} records, weights {size['weights'] / 1e6:.1f} MB, other files {size['records'] / 1e6:.1f} MB")
    done, left = df["wall_seconds"].sum(), df["est_seconds"].sum()
    print(f"the whole plan: {format_duration(done)} measured by the {int((df['state'] == 'done').sum())} stored runs + "
          f"{format_duration(left)} estimated for the rest = about {format_duration((done + left) / 2)} on 2 cores (two workers)")
    return 0


def _cmd_runs_train(args: argparse.Namespace) -> int:
    from avgn.store.queue import train_queue

    failed = train_queue(args.profile, keys=args.keys, workers=args.workers, store_root=args.store, data_dir=args.data,
                         device=args.device, dry_run=args.dry_run)
    return 1 if failed else 0


def _cmd_runs_store_one(args: argparse.Namespace) -> int:
    from avgn.store.queue import QueueLockedError, store_run
    from avgn.store.records import RunStore

    try:
        sr = store_run(args.key, args.profile, store=RunStore(args.profile, args.store), data_dir=args.data, device=args.device)
    except QueueLockedError as err:
        print(f"avgn: {err}", file=sys.stderr)
        return 3
    print(f"stored {sr.key} (id {sr.id}) in {sr.folder}")
    return 0


def _cmd_runs_check(args: argparse.Namespace) -> int:
    from avgn.store.queue import plan_status

    from avgn.store.records import RunStore

    df = plan_status(args.profile, RunStore(args.profile, args.store), args.data)
    bad = df[df["state"].isin(["broken", "stale"])]
    for _, r in bad.iterrows():
        print(f"{r['key']}: {r['state']} {r['note']}".rstrip())
    print(f"{len(df) - len(bad)} of {len(df)} planned runs have a sound, current record or none yet; {len(bad)} broken or stale")
    return 1 if len(bad) else 0


def _cmd_runs_compare(args: argparse.Namespace) -> int:
    from avgn.store.queue import compare_stores

    df = compare_stores(args.profile, args.other, args.store)
    if df.empty:
        print(f"no common evaluations between {args.other} and the committed store")
        return 1
    flagged = df[df["flag"]]
    print(f"{len(df)} numbers of {df['key'].nunique()} runs compared; {len(flagged)} beyond 2 sd of the committed seeds (or 0.01)")
    if len(flagged):
        print(flagged[["key", "set", "mode", "metric", "value", "committed_mean", "committed_sd"]].round(4).to_string(index=False))
    return 1 if len(flagged) else 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for the ``avgn`` console script."""
    parser = argparse.ArgumentParser(prog="avgn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p_env = sub.add_parser("env", help="print versions and the compute device")
    p_env.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p_env.set_defaults(func=_cmd_env)

    p_data = sub.add_parser("data", help="build or inspect the embedded benchmark")
    data_sub = p_data.add_subparsers(dest="data_command", required=True)
    p_build = data_sub.add_parser("build", help="build the embedded benchmark for a profile")
    p_build.add_argument("--profile", choices=PROFILE_NAMES, default="cpu")
    p_build.add_argument("--seed", type=int, default=0)
    p_build.add_argument("--out", default=None, help="output folder (default: data/embedded/<profile>[_seed<S>])")
    p_build.add_argument("--quiet", action="store_true", help="no progress bars")
    p_build.set_defaults(func=_cmd_data_build)
    p_feat = data_sub.add_parser("features", help="compute the frozen visual backbone's feature cache of a build")
    p_feat.add_argument("--profile", choices=PROFILE_NAMES, default="cpu")
    p_feat.add_argument("--seed", type=int, default=0)
    p_feat.add_argument("--data", default=None, help="the build folder (default: data/embedded/<profile>[_seed<S>])")
    p_feat.add_argument("--splits", nargs="+", default=None, help="these splits (default: every split but train)")
    p_feat.add_argument("--all", action="store_true", help="every split, train included")
    p_feat.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p_feat.add_argument("--quiet", action="store_true", help="no progress bar")
    p_feat.set_defaults(func=_cmd_data_features)

    p_train = sub.add_parser("train", help="train AVGN / EZ-VSL / Mix-and-Localize (validation-selected)")
    p_train.add_argument("--method", choices=list_methods(learned=True), required=True)
    p_train.add_argument("--profile", choices=PROFILE_NAMES, default="cpu")
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--data", default="data/embedded", help="the built benchmark (default: data/embedded)")
    p_train.add_argument("--out", default=None, help="run folder (default: data/runs/PROFILE/METHOD-seedS)")
    p_train.add_argument("--resume", action="store_true", help="continue (or reuse) the run in --out")
    p_train.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p_train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a configuration field, e.g. --set train.epochs=3 (repeatable)")
    p_train.add_argument("--quiet", action="store_true", help="no progress output")
    p_train.set_defaults(func=_cmd_train)

    p_eval = sub.add_parser("eval", help="evaluate a trained run (or a reference) on a split")
    p_eval.add_argument("run_dir", nargs="?", help="the run folder")
    p_eval.add_argument("--split", nargs="+", default=["test"], help="split(s), e.g. test test_style (default: test)")
    p_eval.add_argument("--sets", nargs="+", default=None, help="only these sets, e.g. test/duet/concat; negative audio: test/solo/silence, test/duet/noise, "
                        "test/solo/offscreen, ... (avgn.evaluate)")
    p_eval.add_argument("--checkpoint", default="best", help="best (default) or last")
    p_eval.add_argument("--reference", choices=list_methods(learned=False), default=None, help="evaluate a non-learned reference")
    p_eval.add_argument("--profile", choices=PROFILE_NAMES, default="cpu", help="inputs of the reference (with --reference)")
    p_eval.add_argument("--data", default=None, help="the built benchmark (default: the run's)")
    p_eval.add_argument("--out", default=None, help="output folder of a reference evaluation, or of a run evaluated with --set")
    p_eval.add_argument("--tag", default=None, help="name of the output files eval_<tag>.* (default: the split)")
    p_eval.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="inference-time model setting, e.g. object_prior_alpha=0.4 (needs --out)")
    p_eval.add_argument("--device", default="auto")
    p_eval.add_argument("--quiet", action="store_true")
    p_eval.set_defaults(func=_cmd_eval)

    p_loc = sub.add_parser("localize", help="localize the sounding sources of your own frame and recording, or video, with a trained run")
    p_loc.add_argument("run_dir", help="a finished run folder")
    p_loc.add_argument("--image", default=None, help="the frame (PNG, JPEG, ...), with --audio")
    p_loc.add_argument("--audio", default=None, help="the recording (WAV, FLAC, OGG, ...), mono or stereo, with --image")
    p_loc.add_argument("--video", default=None, help="instead of --image/--audio: a video (MP4, MKV, WebM, ...; needs ffmpeg)")
    p_loc.add_argument("--time", type=float, default=None,
                       help="with --video: the frame's time stamp in seconds, the audio window centred on it (default: the middle)")
    p_loc.add_argument("--classes", default="auto", help="auto (the method's own selection) or class names, comma-separated")
    p_loc.add_argument("--offset", type=float, default=None, help="with --audio: start of the audio window in seconds (default 0)")
    p_loc.add_argument("--out", default=None, help="output folder (default: RUN_DIR/localize/<image name>, or <video name>_t<time>)")
    p_loc.add_argument("--device", default="auto")
    p_loc.set_defaults(func=_cmd_localize)

    p_runs = sub.add_parser("runs", help="the book's run plan and the committed run store (status, train, check)")
    runs_sub = p_runs.add_subparsers(dest="runs_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", choices=PROFILE_NAMES, default="cpu")
    common.add_argument("--store", default=None, help="the store's root folder (default: store/ in the repository)")
    common.add_argument("--data", default=None, help="the profile's data build (default: data/embedded/<profile>)")
    p_st = runs_sub.add_parser("status", parents=[common], help="which runs are done, stale or missing, and the time left")
    p_st.add_argument("--all", action="store_true", help="list the done runs too")
    p_st.set_defaults(func=_cmd_runs_status)
    p_rt = runs_sub.add_parser("train", parents=[common], help="train, evaluate and store the missing and stale runs")
    p_rt.add_argument("--keys", nargs="+", default=None, help="only these runs (e.g. avgn/seed0 ref-centre)")
    p_rt.add_argument("--workers", type=int, default=2, help="runs side by side, one torch thread each (default 2)")
    p_rt.add_argument("--device", default="auto")
    p_rt.add_argument("--dry-run", action="store_true", help="say what would be stored, and how long it should take")
    p_rt.set_defaults(func=_cmd_runs_train)
    p_one = runs_sub.add_parser("store-one", parents=[common], help="train, evaluate and store one run (what each worker runs)")
    p_one.add_argument("key")
    p_one.add_argument("--device", default="auto")
    p_one.set_defaults(func=_cmd_runs_store_one)
    p_cmp = runs_sub.add_parser("compare", parents=[common], help="a retrained store (make runs) against the committed one, metric by metric")
    p_cmp.add_argument("other", help="the other store's root folder")
    p_cmp.set_defaults(func=_cmd_runs_compare)
    p_ck = runs_sub.add_parser("check", parents=[common], help="verify every stored record against its files and the plan")
    p_ck.set_defaults(func=_cmd_runs_check)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message already says what went wrong and how to fix it: no traceback for them."""
    from avgn.data.assets import AssetMissingError
    from avgn.data.build import BuildConfigMismatchError
    from avgn.data.datasets import DataFileError
    from avgn.localize import LocalizeInputError
    from avgn.runs import RunLockedError
    from avgn.store.plan import PlanKeyError
    from avgn.store.records import StoreError

    return (AssetMissingError, BuildConfigMismatchError, DataFileError, LocalizeInputError, RunLockedError, StoreError, PlanKeyError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``avgn`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except _known_errors() as err:
        print(f"avgn: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
