"""scripts/run_notebooks.py: the executed notebooks are reviewable.

One parameters cell shows the values of the run; cell ids, metadata, widget ids and figures do not
change when a chapter is re-executed with the same results. The unit tests use small synthetic
notebooks; ``test_rerun_of_chapter_00_is_identical`` executes chapter 00 (profile smoke) twice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run_notebooks.py"
CELL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # nbformat 4.5


@pytest.fixture(scope="module")
def rn() -> ModuleType:
    """scripts/run_notebooks.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("run_notebooks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- synthetic notebooks

DEFAULTS = 'profile = "cpu"\nseed = 0  # the seed\ndevice = "auto"'
INJECTED = '# Parameters\nprofile = "smoke"\nseed = 0\nextra = 3\n'
SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg">\n <metadata>\n  <cc:Work>\n'
    "   <dc:date>{date}</dc:date>\n   <dc:format>image/svg+xml</dc:format>\n  </cc:Work>\n </metadata>\n</svg>\n"
)


def _widget_state(ids: list[str]) -> dict:
    """A VBox (ids[0]) with two children (ids[1], ids[2]) and a layout (ids[3]); ids[4] is unreferenced."""
    box, child1, child2, layout, orphan = ids
    return {
        "state": {
            box: {"model_name": "VBoxModel", "state": {"children": [f"IPY_MODEL_{child1}", f"IPY_MODEL_{child2}"],
                                                        "layout": f"IPY_MODEL_{layout}"}},
            child1: {"model_name": "ButtonModel", "state": {"description": "a", "layout": f"IPY_MODEL_{layout}"}},
            child2: {"model_name": "ButtonModel", "state": {"description": "b"}},
            layout: {"model_name": "LayoutModel", "state": {}},
            orphan: {"model_name": "LayoutModel", "state": {"width": "10px"}},
        },
        "version_major": 2,
        "version_minor": 0,
    }


def executed_like(stamp: str) -> NotebookNode:
    """A notebook as papermill leaves it: random cell and widget ids, timings that depend on ``stamp``."""
    ids = [uuid.uuid4().hex for _ in range(5)]
    timing = {"start_time": stamp, "end_time": stamp, "duration": 0.5, "exception": False, "status": "completed"}
    execution = {"iopub.execute_input": stamp, "shell.execute_reply": stamp}
    cells = [
        new_markdown_cell("# A chapter"),
        new_code_cell(DEFAULTS, metadata={"tags": ["parameters"]}),
        new_code_cell(INJECTED, metadata={"tags": ["injected-parameters"]}),
        new_code_cell("x = 1"),
        new_code_cell("x = 1"),  # the same source twice: still unique ids
        new_code_cell("fig", outputs=[new_output("display_data", data={"image/svg+xml": SVG.format(date=stamp),
                                                                        "text/plain": "<Figure>"})]),
        new_code_cell("explorer", outputs=[new_output("execute_result", execution_count=6, data={
            "application/vnd.jupyter.widget-view+json": {"model_id": ids[0], "version_major": 2, "version_minor": 0},
            "text/plain": "VBox()"})]),
    ]
    for n, cell in enumerate(cells):
        cell.metadata["papermill"] = dict(timing)
        cell.metadata.setdefault("tags", [])
        if cell.cell_type == "code":
            cell.metadata["execution"] = dict(execution)
            cell.execution_count = n
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "papermill": {"parameters": {"profile": "smoke", "seed": 0, "extra": 3}, "version": "2.7.0",
                      "start_time": stamp, "end_time": stamp, "duration": 1.0, "exception": None,
                      "input_path": f"/somewhere/{stamp}/in.ipynb", "output_path": f"/elsewhere/{stamp}/out.ipynb"},
        "widgets": {"application/vnd.jupyter.widget-state+json": _widget_state(ids)},
    })
    return nb


def _tagged(nb: NotebookNode, tag: str) -> list[NotebookNode]:
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def _run_source(source: str) -> dict:
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - the test's own snippets
    namespace.pop("__builtins__")
    return namespace


# --------------------------------------------------------------------------- unit tests


def test_normalised_notebooks_of_two_runs_are_identical(rn):
    a = rn.normalize_notebook(executed_like("2026-01-01T00:00:00"), "07_chapter")
    b = rn.normalize_notebook(executed_like("2026-06-30T12:34:56"), "07_chapter")
    assert nbformat.writes(a) == nbformat.writes(b)
    assert nbformat.writes(rn.normalize_notebook(a, "07_chapter")) == nbformat.writes(a), "not idempotent"
    nbformat.validate(a)


def test_cell_ids_are_stable_unique_and_follow_the_source(rn):
    nb = rn.normalize_notebook(executed_like("t"), "07_chapter")
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == len(ids), ids
    assert all(CELL_ID.match(i) and i.startswith("07_chapter-") for i in ids), ids
    # inserting a cell changes no other id
    grown = executed_like("t")
    grown.cells.insert(3, new_code_cell("y = 2"))
    grown_ids = [c.id for c in rn.normalize_notebook(grown, "07_chapter").cells]
    assert set(ids) <= set(grown_ids) and len(grown_ids) == len(ids) + 1


def test_volatile_metadata_is_dropped(rn):
    nb = rn.normalize_notebook(executed_like("2026-01-01T00:00:00"), "07_chapter")
    text = nbformat.writes(nb)
    for volatile in ("2026-01-01", "start_time", "end_time", "duration", "iopub", "input_path", "output_path",
                     "/somewhere", "dc:date"):
        assert volatile not in text, volatile
    assert nb.metadata.papermill == {"parameters": {"profile": "smoke", "seed": 0, "extra": 3}, "version": "2.7.0"}
    assert all("papermill" not in c.metadata and "execution" not in c.metadata for c in nb.cells)
    assert nb.metadata.kernelspec.name == "python3"
    assert "<dc:format>image/svg+xml</dc:format>" in nb.cells[4].outputs[0].data["image/svg+xml"]


def test_one_parameters_cell_shows_the_values_of_the_run(rn):
    nb = rn.normalize_notebook(executed_like("t"), "07_chapter")
    assert not _tagged(nb, "injected-parameters")
    (cell,) = _tagged(nb, "parameters")
    assert nb.cells.index(cell) == 1 and len(nb.cells) == 6
    lines = cell.source.splitlines()
    assert lines[0] == '# parameters of this run (papermill): profile="smoke", seed=0, extra=3'
    assert lines[1] == "# the chapter's defaults they replace: profile=\"cpu\""
    assert 'profile = "smoke"' in lines and "seed = 0  # the seed" in lines and 'device = "auto"' in lines
    assert lines[-1] == "extra = 3"
    # it runs to what papermill ran: the defaults, then the injected cell
    assert _run_source(cell.source) == {**_run_source(DEFAULTS), **_run_source(INJECTED)}


def test_merged_parameters_keep_comments_annotations_and_multiline_defaults(rn):
    defaults = 'a = 1\nb = [1,\n     2]  # a list\nc: int = 3  # annotated\nname = "é"'
    injected = '# Parameters\nb = [3]\nc = 4\nd = "ü"\n'
    merged = rn.merged_parameters_source(defaults, injected)
    lines = merged.splitlines()
    assert lines[:2] == ['# parameters of this run (papermill): b=[3], c=4, d="ü"',
                         "# the chapter's defaults they replace: b=[1, 2], c=3"]
    assert "b = [3]  # a list" in lines and "c: int = 4  # annotated" in lines and 'name = "é"' in lines
    assert _run_source(merged) == {**_run_source(defaults), **_run_source(injected)}


def test_parameters_with_code_keep_papermills_order(rn):
    defaults = 'root = "../data"\ndata_dir = root + "/embedded"'
    injected = '# Parameters\nroot = "/tmp/data"\n'
    merged = rn.merged_parameters_source(defaults, injected)
    assert merged.splitlines()[0] == '# parameters of this run (papermill): root="/tmp/data"'
    # data_dir was computed from the default root before papermill's value replaced it
    assert _run_source(merged) == {"root": "/tmp/data", "data_dir": "../data/embedded"}


def test_notebook_without_injected_cell_keeps_its_parameters(rn):
    nb = executed_like("t")
    del nb.cells[2]
    (cell,) = _tagged(rn.normalize_notebook(nb, "07_chapter"), "parameters")
    assert cell.source == DEFAULTS


def test_injected_cell_without_parameters_cell_becomes_it(rn):
    nb = executed_like("t")
    del nb.cells[1]
    out = rn.normalize_notebook(nb, "07_chapter")
    assert not _tagged(out, "injected-parameters")
    (cell,) = _tagged(out, "parameters")
    assert cell.source.splitlines()[0].startswith('# parameters of this run (papermill): profile="smoke"')
    assert _run_source(cell.source) == _run_source(INJECTED)


def test_widget_ids_are_renamed_consistently(rn):
    nb = rn.normalize_notebook(executed_like("t"), "07_chapter")
    state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    view = nb.cells[-1].outputs[0].data["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert view in state and state[view]["model_name"] == "VBoxModel"
    refs = set(re.findall(r"IPY_MODEL_(\w+)", json.dumps(state)))
    assert len(state) == 5 and refs <= set(state)
    assert {m["model_name"] for m in state.values()} == {"VBoxModel", "ButtonModel", "LayoutModel"}


def test_normalize_only_rewrites_files_in_place(rn, tmp_path):
    path = tmp_path / "07_chapter.ipynb"
    nbformat.write(executed_like("2026-01-01T00:00:00"), path)
    assert rn.main(["--normalize-only", str(path)]) == 0
    first = path.read_bytes()
    assert b"start_time" not in first and b"injected-parameters" not in first
    assert rn.normalize_file(path) is False and path.read_bytes() == first


def test_committed_book_notebooks_are_normalised(rn):
    """book/*.ipynb are written by run_notebooks.py (or normalised with --normalize-only)."""
    books = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
    assert books
    for path in books:
        text = path.read_text(encoding="utf-8")
        assert rn.normalized_text(text, path.stem) == text, (
            f"{path.name} is not normalised: python scripts/run_notebooks.py --normalize-only {path.relative_to(ROOT)}"
        )
        nb = nbformat.reads(text, as_version=4)
        assert len(_tagged(nb, "parameters")) == 1 and not _tagged(nb, "injected-parameters"), path.name


# --------------------------------------------------------------------------- a real rerun


@pytest.mark.slow
def test_rerun_of_chapter_00_is_identical(tmp_path):
    """Chapter 00 (profile smoke) executed twice into two folders: byte-identical notebooks and figures."""
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        subprocess.run(
            [sys.executable, str(SCRIPT), "--profile", "smoke", "--only", "00_overview", "--out", str(out),
             "-p", "workdir=."],
            cwd=ROOT, env=dict(os.environ), check=True, timeout=600,
        )
    first, second = (out / "00_overview.ipynb" for out in runs)
    assert first.read_bytes() == second.read_bytes()
    figures = sorted(p.name for p in (runs[0] / "figures").iterdir())
    assert any(f.endswith(".svg") for f in figures) and any(f.endswith(".png") for f in figures)
    for name in figures:
        assert (runs[0] / "figures" / name).read_bytes() == (runs[1] / "figures" / name).read_bytes(), name

    nb = nbformat.read(first, as_version=4)
    assert not _tagged(nb, "injected-parameters")
    (cell,) = _tagged(nb, "parameters")
    lines = cell.source.splitlines()
    assert lines[0] == '# parameters of this run (papermill): profile="smoke", seed=0, workdir="."'
    for line in ('profile = "smoke"', "seed = 0", 'workdir = "."', 'device = "auto"'):
        assert any(x == line or x.startswith(line + "  # ") for x in lines), line  # the chapter's comment stays
    assert nb.metadata.papermill.parameters == {"profile": "smoke", "seed": 0, "workdir": "."}
    text = first.read_text(encoding="utf-8")
    assert "start_time" not in text and "iopub" not in text and str(tmp_path) not in text
    assert all(c.id.startswith("00_overview-") for c in nb.cells)


def test_chapter_zero_is_executed_last(rn):
    """Chapter 0's first section collects what the other chapters found, so it runs after them."""
    stems = [p.stem for p in rn.chapters()]
    assert stems[-1] == "00_overview" and stems[:-1] == sorted(stems[:-1])
    assert [p.stem for p in rn.chapters(["03_main_results", "00_overview"])] == ["03_main_results", "00_overview"]


def test_jobs_run_chapters_side_by_side_and_chapter_0_after_them(rn, monkeypatch, tmp_path):
    """``--jobs 2`` (``make book``): chapters 1-9 two at a time with one torch thread each, then chapter
    0, which reads what they wrote; a failed chapter is named, the others finish, chapter 0 is not run."""
    import threading
    import time

    events, lock, running = [], threading.Lock(), [0]

    def fake_execute(raw, target, **kw):
        stem = Path(target).stem
        with lock:
            running[0] += 1
            events.append(("start", stem, running[0], os.environ.get("OMP_NUM_THREADS")))
        time.sleep(0.05)
        with lock:
            running[0] -= 1
            events.append(("end", stem))
        if stem in fail:
            raise RuntimeError("PapermillExecutionError\nValueError: broken")
        Path(target).write_text("{}")

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "2")  # restored after the test: main() sets them for the kernels
    monkeypatch.setattr(rn.pm, "execute_notebook", fake_execute)
    monkeypatch.setattr(rn, "normalize_file", lambda path: False)
    monkeypatch.setattr(rn.jupytext, "read", lambda src: new_notebook())
    stems = ["00_overview", "01_data_prep", "02_train_avgn", "03_main_results"]
    fail: set[str] = set()
    assert rn.main(["--only", *stems, "--jobs", "2", "--out", str(tmp_path / "a")]) == 0
    starts = [e for e in events if e[0] == "start"]
    assert max(e[2] for e in starts) == 2 and {e[3] for e in starts} == {"1"}
    assert starts[-1][1] == "00_overview" and events.index(starts[-1]) > max(i for i, e in enumerate(events) if e[1] != "00_overview")
    events.clear()
    fail = {"02_train_avgn"}
    assert rn.main(["--only", *stems, "--jobs", "2", "--out", str(tmp_path / "b")]) == 1
    assert {e[1] for e in events} == {"01_data_prep", "02_train_avgn", "03_main_results"}  # chapter 0 is not run
