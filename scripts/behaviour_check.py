"""Behaviour check for refactors: train every method on the smoke profile (2 epochs, seed 0, one
thread) and write its per-epoch losses / validation metrics and its test evaluation, and the test
evaluations of the references, to OUT/<name>.json. Run it with the code before and after a change on
the same build and machine, then compare the two folders byte by byte:

    PYTHONPATH=/path/to/old/checkout python scripts/behaviour_check.py DATA OUT_BEFORE
    python scripts/behaviour_check.py DATA OUT_AFTER
    for f in OUT_BEFORE/*.json; do cmp "$f" "OUT_AFTER/$(basename "$f")"; done

DATA is a smoke build (``avgn data build --profile smoke --out DATA``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("methods", nargs="*", default=["avgn", "ezvsl", "mal"])
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from avgn.evaluate import evaluate_reference, evaluate_run
    from avgn.train import train

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        rd = out / "runs" / method
        s = train(method, data, rd, seed=0, profile="smoke", progress=False, overrides={"train.epochs": 2})
        hist = json.loads((rd / "history.json").read_text())
        ev = evaluate_run(rd, "test", progress=False)
        keep = {"history": [{k: h[k] for k in ("train", "val", "val_score", "embedding_dependence", "token_raw_accuracy") if k in h} for h in hist],
                "test": ev["results"], "threshold": s.get("presence_threshold"), "best_epoch": s["best_epoch"]}
        (out / f"{method}.json").write_text(json.dumps(keep, indent=1, sort_keys=True))
        print(method, "done", s["best_val_score"], flush=True)
    for kind in ("centre", "object", "perfect"):
        ev = evaluate_reference(kind, data, out / "runs" / f"ref-{kind}", profile="smoke", split="test", progress=False)
        (out / f"ref-{kind}.json").write_text(json.dumps(ev["results"], indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
