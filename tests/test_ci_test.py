"""scripts/ci_test.py: make test's scheduler of the unit tests and the chapters' smoke runs.

Synthetic notebooks that stamp when they start and end stand in for the chapters: chapters 0-3 run in
order in one process beside the unit tests, every later chapter only after chapter 3 has ended, two at
a time at most; a failing chapter 0-3 skips the later chapters (chapters 0-3 themselves all run); the exit status reports any failure.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ci_test.py"
CHAPTERS = ("00_overview", "01_data_prep", "02_train_avgn", "03_main_results", "05_flexible_sources", "09_text_anchors")


@pytest.fixture(scope="module")
def ci_test():
    spec = importlib.util.spec_from_file_location("ci_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ci_test"] = mod  # dataclasses look their module up while the module runs
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules["ci_test"]


def _fake_chapters(smoke: Path, stamps: Path, fail: str | None = None) -> None:
    """One notebook per chapter that appends ``<name> start|end <time>`` to ``stamps``."""
    smoke.mkdir(parents=True)
    for name in CHAPTERS:
        code = (f"import time\nopen({str(stamps)!r}, 'a').write(f'{name} start {{time.time()}}\\n')\ntime.sleep(0.3)\n"
                + ("raise RuntimeError('chapter failed')\n" if name == fail else "")
                + f"open({str(stamps)!r}, 'a').write(f'{name} end {{time.time()}}\\n')")
        nbformat.write(new_notebook(cells=[new_code_cell(code)]), smoke / f"{name}.ipynb")


def _stamps(path: Path) -> dict[tuple[str, str], float]:
    return {(n, what): float(t) for n, what, t in (line.split() for line in path.read_text().splitlines())}


def _unit(tmp_path: Path, stamps: Path) -> Path:
    test = tmp_path / "unit" / "test_fake_unit.py"
    test.parent.mkdir()
    test.write_text(f"import time\n\ndef test_unit():\n    open({str(stamps)!r}, 'a').write(f'unit start {{time.time()}}\\n')\n"
                    f"    time.sleep(1.0)\n    open({str(stamps)!r}, 'a').write(f'unit end {{time.time()}}\\n')\n")
    return test


def test_later_chapters_wait_for_chapters_0_to_3_and_share_two_slots(ci_test, tmp_path, capsys):
    stamps = tmp_path / "stamps.txt"
    _fake_chapters(tmp_path / "smoke", stamps)
    rc = ci_test.main(["--smoke", str(tmp_path / "smoke"), "--logs", str(tmp_path / "logs"), "--unit", str(_unit(tmp_path, stamps)),
                       "--python", sys.executable])
    out = capsys.readouterr().out
    assert rc == 0, out
    t = _stamps(stamps)
    assert set(t) == {(n, w) for n in (*CHAPTERS, "unit") for w in ("start", "end")}
    head = CHAPTERS[:4]
    for a, b in zip(head, head[1:]):  # in order, in one process
        assert t[(a, "end")] <= t[(b, "start")]
    assert t[("unit", "start")] < t[("00_overview", "end")]  # beside chapters 0-3, not after them
    for later in CHAPTERS[4:]:
        assert t[(later, "start")] >= t[("03_main_results", "end")]
    events = sorted((v, +1 if w == "start" else -1) for (n, w), v in t.items())
    running = [sum(d for _, d in events[: i + 1]) for i in range(len(events))]
    assert max(running) <= 2  # two slots
    assert "every job passed" in out
    assert out.index("started chapter 09_text_anchors") < out.index("started chapter 05_flexible_sources")  # the longest first


def test_a_failing_head_chapter_skips_the_later_ones_and_fails(ci_test, tmp_path, capsys):
    stamps = tmp_path / "stamps.txt"
    _fake_chapters(tmp_path / "smoke", stamps, fail="02_train_avgn")
    rc = ci_test.main(["--smoke", str(tmp_path / "smoke"), "--logs", str(tmp_path / "logs"), "--unit", str(_unit(tmp_path, stamps)),
                       "--python", sys.executable, "--jobs", "1"])
    out = capsys.readouterr().out
    assert rc == 1
    t = _stamps(stamps)
    assert ("02_train_avgn", "start") in t and ("02_train_avgn", "end") not in t
    assert ("03_main_results", "end") in t  # the head process goes on (its log shows how far the rest got)
    assert not any(n in CHAPTERS[4:] for n, _ in t)
    assert ("unit", "end") in t  # the unit tests still ran
    assert "chapter 09_text_anchors: not run (chapters 00-03 failed)" in out
    assert "failed: chapters 00-03" in out


def test_missing_head_chapters_are_named(ci_test, tmp_path):
    (tmp_path / "smoke").mkdir()
    nbformat.write(new_notebook(cells=[new_code_cell("1")]), tmp_path / "smoke" / "04_ablations.ipynb")
    with pytest.raises(SystemExit, match="lacks the chapters the others reuse: 00_overview, 01_data_prep"):
        ci_test.main(["--smoke", str(tmp_path / "smoke")])
    with pytest.raises(SystemExit, match="no smoke notebooks in .*make smoke-notebooks"):
        ci_test.main(["--smoke", str(tmp_path / "empty")])


def test_unit_shards_balance_the_test_files(ci_test, tmp_path):
    """Costliest file first onto the lightest shard: by bytes without a cost table, by the measured
    seconds with one (unlisted files at the measured seconds per byte); a single file is one shard."""
    sizes = {"test_a.py": 900, "test_b.py": 500, "test_c.py": 400, "test_d.py": 100}
    for name, n in sizes.items():
        (tmp_path / name).write_text("#" * n)
    (tmp_path / "helpers.py").write_text("#" * 5000)  # not a test file
    none = tmp_path / "no_costs.json"
    shards = ci_test.unit_shards(str(tmp_path), 2, costs=none)
    assert [sorted(Path(f).name for f in sh) for sh in shards] == [["test_a.py", "test_d.py"], ["test_b.py", "test_c.py"]]
    table = tmp_path / "costs.json"
    table.write_text(json.dumps({"test_d.py": 100.0, "test_c.py": 4.0}))  # d is slow; a, b: 104 s per 500 bytes
    cost = ci_test.file_costs([tmp_path / n for n in sizes], table)
    assert cost[tmp_path / "test_a.py"] == pytest.approx(900 * 104 / 500)
    shards = ci_test.unit_shards(str(tmp_path), 2, costs=table)
    # costs a 187.2, b 104, d 100, c 4: a -> 1, b -> 2, d -> 2 (204), c -> 1 (191.2)
    assert [sorted(Path(f).name for f in sh) for sh in shards] == [["test_a.py", "test_c.py"], ["test_b.py", "test_d.py"]]
    assert ci_test.unit_shards(str(tmp_path / "test_a.py"), 2, costs=none) == [[str(tmp_path / "test_a.py")]]
    assert len(ci_test.unit_shards(str(tmp_path), 9, costs=none)) == 4


def test_test_costs_are_summed_per_file_from_junit_reports(ci_test, tmp_path):
    report = tmp_path / "r.xml"
    report.write_text('<testsuites><testsuite name="pytest">'
                      '<testcase classname="tests.test_a" name="t1" time="1.25"/><testcase classname="tests.test_a" name="t2" time="2.5"/>'
                      '<testcase classname="tests.test_b.TestX" name="t3" time="0.5"/></testsuite></testsuites>')
    costs = ci_test.write_test_costs([report], tmp_path / "out.json")
    assert costs == {"test_a.py": 3.8, "test_b.py": 0.5}
    assert json.loads((tmp_path / "out.json").read_text()) == costs
