"""Execute the book's chapters with papermill.

The sources are ``notebooks/NN_name.py`` (jupytext py:percent). Each is converted to an unexecuted
``.ipynb`` under ``build/notebooks/`` and executed by papermill with the chosen profile:

    python scripts/run_notebooks.py                       # all chapters, profile cpu -> book/*.ipynb
    python scripts/run_notebooks.py --only 01_data_prep   # one chapter
    python scripts/run_notebooks.py --profile gpu -p device cuda
    python scripts/run_notebooks.py --profile smoke --prepare-only --out build/smoke
        # inject the smoke parameters without executing (the notebooks `pytest --nbval-lax` runs)

Execution happens with the output folder as working directory, so the chapters' relative default
paths (``../data``, ``../figures``) point at the repository's folders. ``--prepare-only`` runs are
given their own data, runs and figure folders under the output folder, so a smoke run never touches
the book's figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import papermill as pm

ROOT = Path(__file__).resolve().parents[1]


def chapters(only: list[str] | None = None) -> list[Path]:
    """The chapter sources in order (``notebooks/NN_*.py``), optionally filtered by stem."""
    found = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    if only:
        missing = set(only) - {p.stem for p in found}
        if missing:
            raise SystemExit(f"unknown chapter(s): {', '.join(sorted(missing))}; have {[p.stem for p in found]}")
        found = [p for p in found if p.stem in only]
    return found


def _parse_params(items: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"-p expects key=value, got {item!r}")
        try:
            params[key] = int(value)
        except ValueError:
            params[key] = value
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="book", help="folder for the executed notebooks (default: book)")
    parser.add_argument("--only", nargs="*", help="chapter stems to run, e.g. 00_overview")
    parser.add_argument("--prepare-only", action="store_true", help="inject parameters without executing")
    parser.add_argument("-p", "--param", action="append", default=[], help="extra parameter key=value")
    args = parser.parse_args(argv)

    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    staging = ROOT / "build" / "notebooks"
    staging.mkdir(parents=True, exist_ok=True)
    params: dict[str, object] = {"profile": args.profile, "seed": args.seed}
    if args.prepare_only:
        params.update(data_dir=str(out / "data"), figures_dir=str(out / "figures"), runs_dir=str(out / "runs"),
                      results_dir=str(out / "results"))
    params.update(_parse_params(args.param))

    for src in chapters(args.only):
        nb = jupytext.read(src)
        nb.metadata.pop("jupytext", None)  # pairing/filter settings belong to the source, not the book
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        raw = staging / f"{src.stem}.ipynb"
        nbformat.write(nb, raw)
        target = out / f"{src.stem}.ipynb"
        t0 = time.perf_counter()
        print(f"[{src.stem}] {'preparing' if args.prepare_only else 'executing'} with {params}", flush=True)
        pm.execute_notebook(
            str(raw), str(target), parameters=params, cwd=str(out), kernel_name="python3",
            prepare_only=args.prepare_only, progress_bar=False, log_output=False,
        )
        print(f"[{src.stem}] -> {target.relative_to(ROOT)} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
