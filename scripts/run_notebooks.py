"""Execute the book's chapters with papermill.

The sources are ``notebooks/NN_name.py`` (jupytext py:percent). Each is converted to an unexecuted
``.ipynb`` under ``build/notebooks/`` and executed by papermill with the chosen profile:

    python scripts/run_notebooks.py                       # all chapters, profile cpu -> book/*.ipynb
    python scripts/run_notebooks.py --only 01_data_prep   # one chapter
    python scripts/run_notebooks.py --jobs 2              # two chapters at a time (2 cores), chapter 0 last
    python scripts/run_notebooks.py --profile gpu -p device cuda
    python scripts/run_notebooks.py --profile smoke --prepare-only --out build/smoke
        # inject the smoke parameters without executing (the notebooks `pytest --nbval-lax` runs)
    python scripts/run_notebooks.py --normalize-only book/*.ipynb
        # normalise already executed notebooks in place (see below), without executing anything

Execution happens with the output folder as working directory, so the chapters' default
``workdir`` (``..``: the repository, whose ``data/``, ``figures/`` and ``results/`` they use) is right
for ``book/``; with an output folder elsewhere, pass it (``-p workdir=..``). ``--prepare-only`` runs
are given the output folder itself as ``workdir``, so a smoke run never touches the book's figures,
results or data.

Every notebook written is normalised so that a rerun whose results did not change leaves no diff:

* papermill's injected-parameters cell is merged into the chapter's ``parameters`` cell, which then
  shows the values of the run (its first comment line lists what papermill injected);
* cell ids are derived from the chapter and the cell's source (not random);
* volatile metadata is dropped: papermill's per-cell and per-notebook timings, status and paths, the
  kernel's ``execution`` timestamps;
* ipywidgets model ids are renumbered in a fixed order; inline SVG outputs lose their date.

Figures are made deterministic by ``book/matplotlibrc`` (a fixed ``svg.hashsalt``), which is copied
into every other output folder: matplotlib reads ``matplotlibrc`` from the working directory, and
both papermill and ``pytest --nbval`` run a notebook from its folder.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jupytext
import nbformat
import papermill as pm
from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parents[1]
#: matplotlib settings of every execution (copied next to the executed notebooks)
MATPLOTLIBRC = ROOT / "book" / "matplotlibrc"

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
#: papermill's notebook metadata that changes on every run (or with the checkout's location)
VOLATILE_PAPERMILL_KEYS = ("start_time", "end_time", "duration", "exception", "input_path", "output_path")
#: cell metadata written by papermill (timings, status) and by the kernel (``execution`` timestamps)
VOLATILE_CELL_KEYS = ("papermill", "execution")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_REF = "IPY_MODEL_"
SVG_DATE = re.compile(r"\s*<dc:date>[^<]*</dc:date>")


def chapters(only: list[str] | None = None) -> list[Path]:
    """The chapter sources in execution order (``notebooks/NN_*.py``), optionally filtered by stem:
    chapters 1-9 in order, then chapter 0, whose first section collects what the others found."""
    found = sorted((p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py")), key=lambda p: (p.stem.startswith("00_"), p.stem))
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


# --------------------------------------------------------------------------- parameters cell


def _first_tagged(nb: NotebookNode, tag: str) -> int | None:
    """Index of the first cell tagged ``tag``, or None."""
    for i, cell in enumerate(nb.cells):
        if tag in cell.get("metadata", {}).get("tags", []):
            return i
    return None


def _assigned_names(tree: ast.Module) -> list[str] | None:
    """The names of a module made only of ``name = value`` statements, in order; None otherwise."""
    names: list[str] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            names.append(stmt.targets[0].id)
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            names.append(stmt.target.id)
        else:
            return None
    return names


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def _injected_values(source: str) -> dict[str, str] | None:
    """``{name: value source}`` of papermill's injected cell, or None when it is not plain assignments."""
    tree = _parse(source)
    if tree is None or _assigned_names(tree) is None:
        return None
    return {_stmt_name(stmt): ast.get_source_segment(source, stmt.value) for stmt in tree.body}


def _injected_body(source: str) -> str:
    """papermill's injected cell without its ``# Parameters`` comment line."""
    return source.split("\n", 1)[1] if source.startswith("# Parameters\n") else source


def _header(values: dict[str, str] | None) -> str:
    """First line of the merged parameters cell: the injected values, e.g. ``profile="cpu", seed=0``."""
    if values is None:
        return "# parameters of this run (papermill)"
    return "# parameters of this run (papermill): " + ", ".join(f"{k}={_one_line(v)}" for k, v in values.items())


def _one_line(code: str) -> str:
    """``code`` on one line, to be shown in a comment."""
    return " ".join(code.split())


def _stmt_name(stmt: ast.stmt) -> str:
    """The assigned name of a ``name = value`` (or ``name: type = value``) statement."""
    target = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target
    return target.id


def _replace_values(source: str, tree: ast.Module, values: dict[str, str]) -> str:
    """``source`` with the value of every top-level assignment to a name of ``values`` replaced."""
    data = source.encode("utf-8")  # ast offsets are UTF-8 byte offsets
    line_starts = [0]
    for line in data.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    spans = []
    for stmt in tree.body:
        name = _stmt_name(stmt)
        if name in values:
            v = stmt.value
            start = line_starts[v.lineno - 1] + v.col_offset
            end = line_starts[v.end_lineno - 1] + v.end_col_offset
            spans.append((start, end, values[name].encode("utf-8")))
    for start, end, new in sorted(spans, reverse=True):
        data = data[:start] + new + data[end:]
    return data.decode("utf-8")


def merged_parameters_source(defaults: str, injected: str) -> str:
    """One parameters cell for the chapter's ``defaults`` and papermill's ``injected`` cell.

    The first comment line lists the injected values (``# parameters of this run (papermill):
    profile="cpu", seed=0``). When the defaults are plain ``name = <literal>`` statements, as in every
    chapter, the injected values replace the defaults in place (a second comment line keeps the
    defaults they changed) and injected names the chapter does not define are appended. Otherwise
    (code that could read a parameter) the defaults are kept and followed by the injected
    statements, which is exactly what papermill executed.
    """
    values = _injected_values(injected)
    if values is None:  # not plain assignments (another kernel language?): keep both, in order
        header = "# parameters of this run: the chapter's defaults, then the values papermill injected"
        return f"{header}\n{defaults.rstrip()}\n\n# injected by papermill\n{_injected_body(injected).strip()}"
    header = _header(values)
    tree = _parse(defaults)
    names = _assigned_names(tree) if tree is not None else None
    literal = names is not None and len(set(names)) == len(names) and all(_is_literal(s.value) for s in tree.body)
    injected_lines = "\n".join(f"{k} = {v}" for k, v in values.items())
    if not literal:
        return f"{header}\n{defaults.rstrip()}\n\n# injected by papermill (replacing the defaults above)\n{injected_lines}"
    old = {_stmt_name(s): ast.get_source_segment(defaults, s.value) for s in tree.body}
    changed = [f"{k}={_one_line(old[k])}" for k, v in values.items() if k in old and old[k] != v]
    lines = [header]
    if changed:
        lines.append("# the chapter's defaults they replace: " + ", ".join(changed))
    replaced = _replace_values(defaults, tree, values).rstrip()
    if replaced:
        lines.append(replaced)
    extra = [f"{k} = {v}" for k, v in values.items() if k not in old]
    if extra:
        lines.extend(["", *extra] if replaced else extra)
    return "\n".join(lines)


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def merge_parameters(nb: NotebookNode) -> None:
    """Fold papermill's ``injected-parameters`` cell into the ``parameters`` cell (in place).

    The merged cell keeps the ``parameters`` tag and the position, metadata and execution count of
    the chapter's parameters cell; outputs of both cells are kept. Without a ``parameters`` cell the
    injected cell itself becomes the parameters cell. No injected cell: nothing to do.
    """
    i_inj = _first_tagged(nb, INJECTED_TAG)
    if i_inj is None:
        return
    injected = nb.cells[i_inj]
    i_par = _first_tagged(nb, PARAMETERS_TAG)
    if i_par is None:
        header = _header(_injected_values(injected.source))
        injected.source = f"{header}\n{_injected_body(injected.source).strip()}"
        injected.metadata["tags"] = [PARAMETERS_TAG if t == INJECTED_TAG else t for t in injected.metadata["tags"]]
        return
    target = nb.cells[i_par]
    target.source = merged_parameters_source(target.source, injected.source)
    target.setdefault("outputs", []).extend(injected.get("outputs", []))
    del nb.cells[i_inj]


# --------------------------------------------------------------------------- stable ids and metadata


def stable_cell_ids(nb: NotebookNode, stem: str) -> None:
    """Give every cell the id ``<stem>-<hash of its type and source>`` (``-2``, ``-3`` for repeats).

    The id of a cell does not depend on its position, so inserting a cell changes no other id.
    """
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", stem)[:40]  # what nbformat allows in an id (at most 64)
    seen: dict[str, int] = {}
    for cell in nb.cells:
        digest = hashlib.sha256(f"{cell.cell_type}\n{cell.source}".encode("utf-8")).hexdigest()[:8]
        base = f"{prefix}-{digest}"
        seen[base] = seen.get(base, 0) + 1
        cell["id"] = base if seen[base] == 1 else f"{base}-{seen[base]}"
    if nb.nbformat == 4 and nb.nbformat_minor < 5:
        nb.nbformat_minor = 5  # cell ids exist from nbformat 4.5


def strip_volatile_metadata(nb: NotebookNode) -> None:
    """Drop papermill's timings, status and paths, and the kernel's execution timestamps (in place)."""
    papermill_meta = nb.metadata.get("papermill")
    if papermill_meta is not None:
        for key in VOLATILE_PAPERMILL_KEYS:
            papermill_meta.pop(key, None)
    for cell in nb.cells:
        for key in VOLATILE_CELL_KEYS:
            cell.metadata.pop(key, None)


def _widget_refs(obj: object) -> Iterator[str]:
    """Model ids referenced (``IPY_MODEL_<id>``) in a widget state, in a fixed (sorted-key) order."""
    if isinstance(obj, str):
        if obj.startswith(WIDGET_REF):
            yield obj[len(WIDGET_REF):]
    elif isinstance(obj, dict):
        for key in sorted(obj):
            yield from _widget_refs(obj[key])
    elif isinstance(obj, list):
        for item in obj:
            yield from _widget_refs(item)


def _rename_refs(obj: object, mapping: dict[str, str]) -> object:
    """A copy of ``obj`` with every ``IPY_MODEL_<old>`` replaced by ``IPY_MODEL_<new>``."""
    if isinstance(obj, str):
        if obj.startswith(WIDGET_REF) and obj[len(WIDGET_REF):] in mapping:
            return WIDGET_REF + mapping[obj[len(WIDGET_REF):]]
        return obj
    if isinstance(obj, dict):
        return type(obj)((k, _rename_refs(v, mapping)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_rename_refs(v, mapping) for v in obj]
    return obj


def _widget_views(nb: NotebookNode) -> Iterator[dict]:
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if isinstance(view, dict) and "model_id" in view:
                yield view


def stable_widget_ids(nb: NotebookNode, stem: str) -> None:
    """Replace the random ipywidgets model ids by ids numbered in a fixed order (in place).

    The order: the models shown by the outputs (in cell order), each followed depth-first by the
    models its state refers to; then models nobody refers to, ordered by their state. Outputs and
    the saved widget state (``metadata.widgets``) are renamed consistently.
    """
    state_meta = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {})
    state: dict = state_meta.get("state", {})
    roots = [view["model_id"] for view in _widget_views(nb)]
    if not roots and not state:
        return
    order: list[str] = []
    seen: set[str] = set()

    def visit(root: str) -> None:
        stack = [root]
        while stack:
            model = stack.pop()
            if model in seen:
                continue
            seen.add(model)
            order.append(model)
            stack.extend(reversed(list(_widget_refs(state.get(model, {})))))

    for root in roots:
        visit(root)
    masked = {m: json.dumps(_rename_refs(state[m], {r: "" for r in state}), sort_keys=True) for m in state}
    for model in sorted(set(state) - seen, key=masked.__getitem__):
        visit(model)
    mapping = {
        old: hashlib.sha256(f"{stem}-widget-{k}".encode("utf-8")).hexdigest()[:32] for k, old in enumerate(order)
    }
    for view in _widget_views(nb):
        view["model_id"] = mapping[view["model_id"]]
    if state:
        state_meta["state"] = {mapping[m]: _rename_refs(v, mapping) for m, v in sorted(state.items(), key=lambda kv: mapping[kv[0]])}


def strip_svg_dates(nb: NotebookNode) -> None:
    """Remove the creation date matplotlib writes into inline SVG outputs (in place)."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if isinstance(data.get("image/svg+xml"), str):
                data["image/svg+xml"] = SVG_DATE.sub("", data["image/svg+xml"])


def normalize_notebook(nb: NotebookNode, stem: str) -> NotebookNode:
    """The reviewable form of an executed (or prepared) notebook: a normalised copy of ``nb``.

    One parameters cell with the run's values (:func:`merge_parameters`), stable cell ids
    (:func:`stable_cell_ids`), no timings or absolute paths (:func:`strip_volatile_metadata`),
    stable widget ids (:func:`stable_widget_ids`), undated SVGs (:func:`strip_svg_dates`).
    Idempotent; outputs are otherwise left as they are.
    """
    nb = copy.deepcopy(nb)
    merge_parameters(nb)
    strip_volatile_metadata(nb)
    stable_widget_ids(nb, stem)
    strip_svg_dates(nb)
    stable_cell_ids(nb, stem)
    return nb


def normalized_text(text: str, stem: str) -> str:
    """The file content of the normalised notebook ``text`` (JSON as nbformat writes it, ending in a newline)."""
    out = nbformat.writes(normalize_notebook(nbformat.reads(text, as_version=4), stem))
    return out if out.endswith("\n") else out + "\n"


def normalize_file(path: Path) -> bool:
    """Normalise the notebook at ``path`` in place (its stem names the chapter); True if it changed."""
    before = path.read_text(encoding="utf-8")
    after = normalized_text(before, path.stem)
    if after == before:
        return False
    path.write_text(after, encoding="utf-8")
    return True


# --------------------------------------------------------------------------- execution


def install_matplotlibrc(folder: Path) -> None:
    """Put the book's ``matplotlibrc`` in the execution folder (where matplotlib looks for it)."""
    target = folder / "matplotlibrc"
    if target.resolve() != MATPLOTLIBRC.resolve():
        shutil.copyfile(MATPLOTLIBRC, target)


def _shown(path: Path) -> str:
    """``path`` relative to the repository root when inside it, else as is."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="book", help="folder for the executed notebooks, relative to the "
                        "repository root unless absolute (default: book)")
    parser.add_argument("--only", nargs="*", help="chapter stems to run, e.g. 00_overview")
    parser.add_argument("--prepare-only", action="store_true", help="inject parameters without executing")
    parser.add_argument("--jobs", type=int, default=1, help="chapters executed side by side, one torch thread each "
                        "(chapter 0, which reads the others' findings, runs after them)")
    parser.add_argument("-p", "--param", action="append", default=[], help="extra parameter key=value")
    parser.add_argument("--normalize-only", nargs="+", metavar="NOTEBOOK", type=Path,
                        help="only normalise these executed notebooks in place (no execution)")
    args = parser.parse_args(argv)

    if args.normalize_only:
        for path in args.normalize_only:
            if not path.is_file():
                raise SystemExit(f"--normalize-only: {path} is not a file")
            print(f"{path}: {'normalised' if normalize_file(path) else 'already normalised'}", flush=True)
        return 0

    out = (ROOT / args.out).resolve()  # an absolute --out stays as it is
    out.mkdir(parents=True, exist_ok=True)
    install_matplotlibrc(out)
    staging = ROOT / "build" / "notebooks"
    staging.mkdir(parents=True, exist_ok=True)
    params: dict[str, object] = {"profile": args.profile, "seed": args.seed}
    if args.prepare_only:
        params.update(workdir=str(out))  # its own data/, figures/ and results/ (avgnbook.chapter.ChapterPaths)
    params.update(_parse_params(args.param))

    def run_one(src: Path) -> None:
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
        normalize_file(target)  # a failed execution raises above and leaves papermill's notebook as it is
        print(f"[{src.stem}] -> {_shown(target)} ({time.perf_counter() - t0:.1f} s)", flush=True)

    todo = chapters(args.only)
    if args.jobs <= 1 or args.prepare_only:
        for src in todo:
            run_one(src)
        return 0
    # chapters 1-9 side by side (each kernel one torch thread), then chapter 0, which reads what they wrote
    import os
    from concurrent.futures import ThreadPoolExecutor

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # the kernels inherit it
    t0, failed = time.perf_counter(), []
    for batch in ([c for c in todo if not c.stem.startswith("00_")], [c for c in todo if c.stem.startswith("00_")]):
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_one, c): c for c in batch}
        for fut, c in futures.items():
            if fut.exception() is not None:
                failed.append(c.stem)
                print(f"[{c.stem}] FAILED: {str(fut.exception()).strip().splitlines()[-1][:300]}", flush=True)
        if failed:
            break  # chapter 0 would read a half-written book
    print(f"{len(todo) - len(failed)} chapters in {time.perf_counter() - t0:.0f} s with {args.jobs} jobs"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
