"""scripts/ci_test.py: make test's scheduler of the unit tests and the chapters' smoke runs.

Synthetic notebooks that stamp when they start and end stand in for the chapters: chapters 0-3 run in
order in one process beside the unit tests, every later chapter only after chapter 3 has ended, two at
a time at most; a failing chapter 0-3 skips the later chapters (chapters 0-3 themselves all run); the exit status reports any failure.
"""

from __future__ import annotations

import importlib.util
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
    """Largest file first onto the lightest shard; a single file or a one-file folder is one shard."""
    sizes = {"test_a.py": 900, "test_b.py": 500, "test_c.py": 400, "test_d.py": 100}
    for name, n in sizes.items():
        (tmp_path / name).write_text("#" * n)
    (tmp_path / "helpers.py").write_text("#" * 5000)  # not a test file
    shards = ci_test.unit_shards(str(tmp_path), 2)
    assert [sorted(Path(f).name for f in sh) for sh in shards] == [["test_a.py", "test_d.py"], ["test_b.py", "test_c.py"]]
    assert ci_test.unit_shards(str(tmp_path / "test_a.py"), 2) == [[str(tmp_path / "test_a.py")]]
    assert len(ci_test.unit_shards(str(tmp_path), 9)) == 4
