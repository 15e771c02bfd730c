"""Train and evaluate a group of the book's variants ahead of executing the chapters.

The chapters call the same :func:`avgn.pipeline.run_variant` and reuse finished runs, so running this
first (e.g. in the background, or on another machine with the same data) only moves the work:

    python scripts/run_variants.py --group main --profile cpu                  # chapter 3
    python scripts/run_variants.py --group baselines --profile cpu             # chapter 3, public designs
    python scripts/run_variants.py --group ablations --profile cpu --seeds 0 1 # chapter 4
    python scripts/run_variants.py --group main --splits test test_style test_audio test_real \
        --eval-sets composed=test/trio/concat,test/quartet/concat                          # chapter 5
    python scripts/run_variants.py --group text --profile cpu --splits test test_zeroshot  # chapter 9

Runs go to ``data/runs`` and the data to ``data/embedded/<profile>`` (the chapters' defaults).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from avgn.config import PROFILE_NAMES, get_profile
    from avgn.data.build import build_dataset, dataset_dir
    from avgn.pipeline import run_variant
    from avgn.runs import VARIANT_GROUPS as groups
    from avgn.runs import RunLockedError
    from avgn.runs import variant_dirs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", choices=sorted(groups), required=True)
    p.add_argument("--profile", default="cpu", choices=PROFILE_NAMES)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the profile's seeds")
    p.add_argument("--splits", nargs="+", default=["test"])
    p.add_argument("--eval-sets", nargs="*", default=[], metavar="TAG=SET,SET",
                   help="extra evaluations of chosen sets, e.g. composed=test/trio/concat,test/quartet/concat (chapter 5)")
    p.add_argument("--labels", nargs="+", default=None, help="only the variants with these labels, e.g. 'depth 12'")
    p.add_argument("--only-finished", action="store_true",
                   help="evaluate runs that have finished training and skip the others (never trains; safe beside a training job)")
    p.add_argument("--skip-locked", action="store_true",
                   help="skip a run another process is training (its run lock is held) instead of stopping: two queues "
                        "over the same variants share the work")
    p.add_argument("--data-dir", default=str(ROOT / "data" / "embedded"))
    p.add_argument("--runs-dir", default=str(ROOT / "data" / "runs"))
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (e.g. 1 each for two queues on two cores)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    seeds = args.seeds if args.seeds is not None else list(get_profile(args.profile).seeds)
    eval_sets = {}
    for item in args.eval_sets:
        tag, sep, names = item.partition("=")
        if not sep or not names:
            raise SystemExit(f"--eval-sets expects TAG=SET[,SET...], got {item!r}")
        eval_sets[tag] = names.split(",")
    data = dataset_dir(args.data_dir, args.profile, 0)
    build_dataset(profile=args.profile, seed=0, out=data, progress=False)
    for s in seeds:  # every variant of seed 0 first: a partial queue still gives complete comparisons
        for v in groups[args.group]:
            if args.labels and v.label not in args.labels:
                continue
            if args.only_finished and not (variant_dirs(v, args.runs_dir, args.profile, s)[0] / "run.json").is_file():
                print(f"[{v.label} / seed {s}] not finished: skipped", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                out = run_variant(v, args.profile, s, data, args.runs_dir, device=args.device, eval_splits=args.splits,
                                  eval_sets=eval_sets or None, progress=False)
            except RunLockedError as err:
                if not args.skip_locked:
                    raise
                print(f"[{v.label} / seed {s}] skipped: {err}", flush=True)
                continue
            print(f"[{v.label} / seed {s}] {time.perf_counter() - t0:.0f} s\n  " + "\n  ".join(out["commands"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
