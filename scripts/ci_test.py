"""``make test``'s test run: the unit tests and the chapters' smoke runs, spread over the cores.

The chapters' smoke notebooks (``build/smoke/NN_*.ipynb``, prepared by ``scripts/run_notebooks.py
--profile smoke --prepare-only``) are not independent: chapters 0-3 build the smoke benchmark and
train the runs that the later chapters reuse, so they run first, in order, in one ``pytest --nbval-lax``
process. The unit tests (in two shards of about equal measured cost, :func:`unit_shards`) run beside
them. Every later chapter is its own job, queued after chapters 0-3 and handed to whichever process
slot frees first (the longest first), so neither core idles while the
other still has minutes of work. Each job runs with one torch thread (``OMP_NUM_THREADS=1``),
writes its log under ``build/test-logs/`` and the log is printed when the job ends; the exit status is
non-zero when any job failed (later chapters are not run when chapters 0-3 failed: they would only
repeat the failure after retraining what those chapters should have left).

    python scripts/ci_test.py                 # what make test runs (2 slots)
    python scripts/ci_test.py --jobs 1        # everything in one process slot, in order
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the chapters every later chapter reuses (benchmark, chapter 2's and chapter 3's runs)
HEAD_CHAPTERS = ("00_overview", "01_data_prep", "02_train_avgn", "03_main_results")
#: later chapters started before the others (their smoke runs take the longest: ablation and T-VSL runs)
LONGEST_FIRST = ("04_ablations", "09_text_anchors", "07_silent_objects")


@dataclass
class Job:
    """One pytest process: its name, arguments and, once started, its process, log and timings."""

    name: str
    args: list[str]
    proc: subprocess.Popen | None = None
    log: Path | None = None
    start: float = 0.0
    seconds: float = 0.0
    rc: int | None = None
    needs_head: bool = False


def smoke_jobs(smoke: Path) -> tuple[Job, list[Job]]:
    """The head job (chapters 0-3 in one process) and one job per later chapter, longest first."""
    notebooks = sorted(smoke.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise SystemExit(f"no smoke notebooks in {smoke}: run `python scripts/run_notebooks.py --profile smoke "
                         f"--prepare-only --out {smoke}` first (make smoke-notebooks)")
    stems = [p.stem for p in notebooks]
    missing = [s for s in HEAD_CHAPTERS if s not in stems]
    if missing:
        raise SystemExit(f"{smoke} lacks the chapters the others reuse: {', '.join(missing)}")
    nbval = ["--nbval-lax", "-p", "no:cacheprovider", "--durations=8"]
    head = Job("chapters 00-03", [*(str(smoke / f"{s}.ipynb") for s in HEAD_CHAPTERS), *nbval])
    rest = [s for s in stems if s not in HEAD_CHAPTERS]
    rest.sort(key=lambda s: (LONGEST_FIRST.index(s) if s in LONGEST_FIRST else len(LONGEST_FIRST), s))
    return head, [Job(f"chapter {s}", [str(smoke / f"{s}.ipynb"), *nbval], needs_head=True) for s in rest]


#: Measured seconds per unit-test file (``{"test_x.py": s}``), written by :func:`write_test_costs` from a
#: ``make test`` run's JUnit reports (``build/test-logs/test_costs.json``) and committed here; files it
#: does not list are costed by their size.
TEST_COSTS = ROOT / "tests" / "test_costs.json"


def file_costs(files: list[Path], costs: Path = TEST_COSTS) -> dict[Path, float]:
    """Seconds per file: the measured cost where :data:`TEST_COSTS` has it; otherwise the file's size
    scaled by the measured files' seconds per byte (bytes alone without a table)."""
    table = json.loads(costs.read_text()) if costs.is_file() else {}
    known = [f for f in files if f.name in table]
    rate = (sum(table[f.name] for f in known) / max(1, sum(f.stat().st_size for f in known))) if known else 1.0
    return {f: float(table[f.name]) if f.name in table else f.stat().st_size * rate for f in files}


def unit_shards(unit: str, n: int, costs: Path = TEST_COSTS) -> list[list[str]]:
    """The test files under ``unit`` in at most ``n`` shards of about equal cost (:func:`file_costs`;
    the costliest file first, each onto the lightest shard), so that the unit tests share the slots
    with the chapters; ``unit`` that is a file, or a folder with one test file, is one shard."""
    path = Path(unit)
    files = sorted(path.glob("test_*.py")) if path.is_dir() else [path]
    if not files:
        raise SystemExit(f"no test files under {unit}")
    cost = file_costs(files, costs)
    shards: list[list[Path]] = [[] for _ in range(max(1, min(n, len(files))))]
    for f in sorted(files, key=lambda f: (-cost[f], f.name)):
        min(shards, key=lambda sh: sum(cost[x] for x in sh)).append(f)
    return [[str(f) for f in sorted(sh)] for sh in shards]


def write_test_costs(reports: list[Path], out: Path) -> dict[str, float]:
    """Seconds per test file from JUnit XML ``reports`` (pytest ``--junitxml``), written to ``out``
    (copy it to :data:`TEST_COSTS` to shard by it)."""
    import xml.etree.ElementTree as ET

    costs: dict[str, float] = {}
    for r in reports:
        for case in ET.parse(r).getroot().iter("testcase"):
            name = (case.get("classname") or "").split(".")
            f = next((f"{part}.py" for part in name if part.startswith("test_")), None)
            if f is not None:
                costs[f] = costs.get(f, 0.0) + float(case.get("time") or 0.0)
    costs = {f: round(t, 1) for f, t in sorted(costs.items())}
    out.write_text(json.dumps(costs, indent=1) + "\n")
    return costs


def start(job: Job, logs: Path, python: str) -> None:
    """Start ``job`` as ``python -m pytest ...`` with one torch thread, its output in its log."""
    logs.mkdir(parents=True, exist_ok=True)
    job.log = logs / (job.name.replace(" ", "-") + ".log")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job.start = time.perf_counter()
    with open(job.log, "w") as out:
        job.proc = subprocess.Popen([python, "-m", "pytest", *job.args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    print(f"[ci_test] started {job.name} (log {job.log})", flush=True)


def finish(job: Job) -> None:
    """Record the exit of ``job`` and print its log."""
    job.seconds = time.perf_counter() - job.start
    print(f"\n==================== {job.name}: exit {job.rc} after {job.seconds / 60:.1f} min ====================", flush=True)
    sys.stdout.write(job.log.read_text(errors="replace"))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="process slots (default 2: the machines' cores)")
    parser.add_argument("--smoke", type=Path, default=ROOT / "build" / "smoke", help="the prepared smoke notebooks")
    parser.add_argument("--logs", type=Path, default=ROOT / "build" / "test-logs")
    parser.add_argument("--unit", default="tests", help="what the unit-test job collects (default: tests)")
    parser.add_argument("--unit-shards", type=int, default=2, help="unit-test processes (default 2: beside the chapters on the two slots)")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit("--jobs must be at least 1")

    head, rest = smoke_jobs(args.smoke.resolve())
    shards = unit_shards(args.unit, args.unit_shards)
    reports = [args.logs / f"unit-tests-{i + 1}.xml" for i in range(len(shards))]
    units = [Job("unit tests" if len(shards) == 1 else f"unit tests {i + 1}-{len(shards)}",
                 [*sh, "-m", "not cpu_store", "-p", "no:cacheprovider", "--durations=15", f"--junitxml={reports[i]}"])
             for i, sh in enumerate(shards)]
    queue = [head, *units, *rest]  # head first: everything after it waits for it
    store_tests = Path(args.unit) / "test_store_cpu.py"
    if store_tests.is_file():  # the committed cpu store re-evaluated on the cpu build (builds it: a few minutes)
        queue.insert(1 + len(units), Job("cpu run store", [str(store_tests), "-m", "cpu_store", "-p", "no:cacheprovider", "--durations=5"], needs_head=True))
    running: list[Job] = []
    done: list[Job] = []
    t0 = time.perf_counter()
    while queue or running:
        for job in list(running):
            if job.proc.poll() is not None:
                job.rc = job.proc.returncode
                running.remove(job)
                done.append(job)
                finish(job)
        head_done = head.rc is not None
        if head_done and head.rc != 0:  # the later chapters would only repeat the failure
            for job in [j for j in queue if j.needs_head]:
                queue.remove(job)
                job.rc = -1
                done.append(job)
                print(f"[ci_test] {job.name}: not run (chapters 00-03 failed)", flush=True)
        while len(running) < args.jobs:
            ready = [j for j in queue if not j.needs_head or head_done]
            if not ready:
                break
            queue.remove(ready[0])
            start(ready[0], args.logs, args.python)
            running.append(ready[0])
        time.sleep(0.5)

    print(f"\n==================== ci_test: {(time.perf_counter() - t0) / 60:.1f} min with {args.jobs} slot(s) ====================")
    for job in done:
        status = "not run" if job.rc == -1 else f"exit {job.rc}, {job.seconds / 60:.1f} min"
        print(f"  {job.name:<32} {status}")
    have = [r for r in reports if r.is_file()]
    if have:
        write_test_costs(have, args.logs / "test_costs.json")
        print(f"  unit-test seconds per file: {args.logs / 'test_costs.json'} (copy to {TEST_COSTS.relative_to(ROOT)} to shard by it)")
    failed = [j.name for j in done if j.rc != 0]
    print(f"make test: {'failed: ' + ', '.join(failed) if failed else 'every job passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
