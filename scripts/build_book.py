#!/usr/bin/env python3
"""Build the avgn book to static HTML and check the result.

    python scripts/build_book.py            # -> _build/html/index.html

Runs ``myst build --html`` from the repository root (the site template path in
``myst.yml`` is resolved against the working directory), with a timeout, and
makes sure no process it started outlives it (mystmd's content server, the
theme's render/server processes). Then it checks the output and exits non-zero
when something is wrong:

* mystmd errors, and mystmd warnings about references (unresolved
  cross-references, links, labels); ``--strict-warnings`` fails on every warning;
* problems reported by the theme (``_build/theme-report.json``: links or
  cross-references it could not resolve, assets it could not fetch);
* every chapter of the ``toc`` in ``myst.yml`` has an HTML page;
* every resource a browser would load (``<img src/srcset>``, stylesheets,
  scripts, CSS ``url(...)``, media, iframes) resolves to a file inside
  ``_build/html``, and nothing is fetched from any host but localhost;
* every internal ``<a href>`` points to an existing page and anchor.

The book is executed elsewhere (papermill writes the notebooks in ``book/``);
this script only renders what is there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
HTML = BUILD / "html"
REPORT = BUILD / "theme-report.json"
LOG = BUILD / "myst-build.log"
THEME = ROOT / "theme"

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
# mystmd warnings that mean a broken reference
REFERENCE_WARNING = re.compile(
    r"reference|target|label|link|xref|anchor|not found|could not resolve|unresolved", re.IGNORECASE
)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

_children: list[subprocess.Popen] = []


# --------------------------------------------------------------------------- processes


def _kill_children(*_args) -> None:
    """End the process groups this script started (never anything else), then forget them."""
    while _children:
        proc = _children.pop()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except (ProcessLookupError, PermissionError):
                pass
            except subprocess.TimeoutExpired:
                pass
        # whatever is left in the group (a server whose parent already exited): SIGKILL
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _on_signal(signum, _frame):
    _kill_children()
    sys.exit(128 + signum)


def _run(cmd: list[str], cwd: Path, timeout: float, log_path: Path | None = None) -> tuple[int, str]:
    """Run cmd in its own process group, echo and capture its output, kill the group afterwards."""
    env = dict(os.environ)
    env.setdefault("NO_COLOR", "1")
    env.setdefault("FORCE_COLOR", "0")
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
    )
    _children.append(proc)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_children()
        reader.join(timeout=5)
    output = ANSI.sub("", "".join(lines))
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(output, encoding="utf-8")
    if timed_out:
        return 124, output + f"\n[build_book] timed out after {timeout:.0f} s\n"
    return proc.returncode if proc.returncode is not None else 1, output


def _find_myst() -> str:
    local = Path(sys.executable).parent / "myst"
    if local.exists():
        return str(local)
    found = shutil.which("myst")
    if not found:
        sys.exit("build_book: `myst` not found: pip install mystmd==1.11.0 (extra `book` of this project)")
    return found


# --------------------------------------------------------------------------- output checks


class _PageParser(HTMLParser):
    """Collects what a browser would fetch, the links, and the ids of one HTML page."""

    FETCH_ATTRS = {
        ("img", "src"), ("img", "srcset"), ("script", "src"), ("iframe", "src"), ("embed", "src"),
        ("object", "data"), ("source", "src"), ("source", "srcset"), ("video", "src"), ("video", "poster"),
        ("audio", "src"), ("track", "src"), ("input", "src"), ("image", "href"), ("use", "href"),
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.fetched: list[tuple[str, str]] = []  # (tag, url)
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.images = 0
        self.styles: list[str] = []
        self.classes: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if attrs.get("name") and tag == "a":
            self.ids.add(attrs["name"])
        if attrs.get("class"):
            self.classes.extend(attrs["class"].split())
        if tag == "img":
            self.images += 1
        for (t, attr) in self.FETCH_ATTRS:
            if tag == t and attrs.get(attr):
                value = attrs[attr]
                if attr == "srcset":
                    for part in value.split(","):
                        if part.strip():
                            self.fetched.append((tag, part.strip().split()[0]))
                else:
                    self.fetched.append((tag, value))
        if tag == "link" and attrs.get("href"):
            rel = (attrs.get("rel") or "").lower()
            if any(r in rel for r in ("stylesheet", "icon", "preload", "modulepreload", "manifest", "prefetch")):
                self.fetched.append(("link", attrs["href"]))
        if tag == "a" and attrs.get("href") is not None:
            self.links.append(attrs["href"])
        if attrs.get("style"):
            self.styles.append(attrs["style"])
        if tag == "style":
            self._in_style = True

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")]+)\1\s*\)""")
CSS_IMPORT = re.compile(r"""@import\s+(['"])([^'"]+)\1""")


def _css_urls(css: str) -> list[str]:
    return [m.group(2) for m in CSS_URL.finditer(css)] + [m.group(2) for m in CSS_IMPORT.finditer(css)]


def _resolve(base_file: Path, url: str) -> tuple[str, Path | None]:
    """('skip'|'external'|'local', path) for a URL found in base_file."""
    url = url.strip()
    if not url or url.startswith(("data:", "#", "javascript:", "about:", "blob:", "mailto:", "tel:")):
        return "skip", None
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") or url.startswith("//"):
        host = (parts.hostname or "").lower()
        return ("local-host", None) if host in LOCAL_HOSTS else ("external", None)
    if parts.scheme and parts.scheme != "file":
        return "skip", None
    path = unquote(parts.path)
    if not path:
        return "skip", None
    target = (HTML / path.lstrip("/")) if path.startswith("/") else (base_file.parent / path)
    target = Path(os.path.normpath(target))
    if target.is_dir():
        target = target / "index.html"
    return "local", target


def check_output(toc: list[str]) -> tuple[list[str], list[str], dict]:
    errors: list[str] = []
    warnings: list[str] = []
    stats = {"pages": 0, "images": 0, "image_files": set(), "bytes": 0}

    if not (HTML / "index.html").is_file():
        return [f"{HTML / 'index.html'} was not written"], warnings, stats

    # every toc chapter has a page
    report = json.loads(REPORT.read_text(encoding="utf-8")) if REPORT.is_file() else None
    if report is not None:
        by_source = {p["source"].lstrip("/"): p for p in report["pages"]}
        for f in toc:
            page = by_source.get(f)
            if page is None:
                errors.append(f"toc chapter {f} has no page in the output")
            elif not (HTML / page["file"]).is_file():
                errors.append(f"toc chapter {f}: {page['file']} is missing")
        errors.extend(f"theme: {e}" for e in report.get("errors", []))
        warnings.extend(f"theme: {w}" for w in report.get("warnings", []))
    else:
        warnings.append(f"{REPORT} not found (not built with theme/): toc pages checked by slug only")
        for i, f in enumerate(toc):
            slug = re.sub(r"^\d+[_-]?", "", Path(f).stem).lower().replace("_", "-")
            candidates = [HTML / "index.html"] if i == 0 else [HTML / f"{slug}.html", HTML / slug / "index.html"]
            if not any(c.is_file() for c in candidates):
                errors.append(f"toc chapter {f} has no page in the output (looked for {slug})")

    pages: dict[Path, _PageParser] = {}
    for file in sorted(HTML.rglob("*.html")):
        parser = _PageParser()
        parser.feed(file.read_text(encoding="utf-8", errors="replace"))
        pages[file.resolve()] = parser

    css_files = sorted(HTML.rglob("*.css"))
    for file in sorted(HTML.rglob("*")):
        if file.is_file():
            stats["bytes"] += file.stat().st_size

    def check_fetch(base: Path, url: str, what: str) -> Path | None:
        kind, target = _resolve(base, url)
        rel = base.relative_to(HTML)
        if kind == "external":
            errors.append(f"{rel}: {what} {url} is fetched from the network (the book must work offline)")
        elif kind == "local-host":
            errors.append(f"{rel}: {what} {url} points to a local server that will not be running")
        elif kind == "local":
            try:
                target.relative_to(HTML.resolve())
            except ValueError:
                errors.append(f"{rel}: {what} {url} points outside _build/html")
                return None
            if not target.is_file():
                errors.append(f"{rel}: {what} {url} does not exist in _build/html")
                return None
            return target
        return None

    for file, parser in pages.items():
        stats["pages"] += 1
        stats["images"] += parser.images
        for tag, url in parser.fetched:
            target = check_fetch(file, url, f"<{tag}>")
            if target is not None and tag == "img":
                stats["image_files"].add(target)
        for style in parser.styles:
            for url in _css_urls(style):
                check_fetch(file, url, "CSS url()")
        for cls in ("xref-unresolved", "link-unresolved"):
            n = parser.classes.count(cls)
            if n:
                errors.append(f"{file.relative_to(HTML)}: {n} unresolved reference(s) marked .{cls}")
        for href in parser.links:
            kind, target = _resolve(file, href)
            if href.startswith("#") and len(href) > 1 and unquote(href[1:]) not in parser.ids:
                errors.append(f"{file.relative_to(HTML)}: link {href} has no target on the page")
            if kind != "local":
                continue
            if not target.is_file():
                errors.append(f"{file.relative_to(HTML)}: link {href} points to a missing file")
                continue
            frag = unquote(urlsplit(href).fragment)
            if frag and target.suffix == ".html":
                other = pages.get(target.resolve())
                if other is not None and frag not in other.ids:
                    errors.append(f"{file.relative_to(HTML)}: link {href}: no #{frag} in {target.relative_to(HTML)}")

    for css in css_files:
        for url in _css_urls(css.read_text(encoding="utf-8", errors="replace")):
            check_fetch(css.resolve(), url, "CSS url()")

    return errors, warnings, stats


def _toc() -> list[str]:
    import yaml

    config = yaml.safe_load((ROOT / "myst.yml").read_text(encoding="utf-8"))
    files: list[str] = []

    def collect(entries):
        for entry in entries or []:
            if isinstance(entry, dict):
                if "file" in entry:
                    files.append(entry["file"])
                collect(entry.get("children"))

    collect((config.get("project") or {}).get("toc"))
    return files


def _myst_messages(output: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) reported by mystmd (and by the theme through it)."""
    errors, warnings = [], []
    seen = set()
    for line in output.splitlines():
        text = line.strip()
        if not text or text in seen:
            continue
        if text.startswith(("⛔", "🛑")) or "avgn-theme:" in text or text.startswith(("Error", "error:")):
            seen.add(text)
            errors.append(text)
        elif text.startswith("⚠"):
            seen.add(text)
            warnings.append(text)
    return errors, warnings


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=900, help="seconds for the whole myst build (default 900)")
    ap.add_argument("--strict-warnings", action="store_true", help="fail on any mystmd warning, not only reference ones")
    ap.add_argument("--check-only", action="store_true", help="only check an existing _build/html")
    args = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    os.chdir(ROOT)  # myst resolves `site: template: theme` against the working directory
    started = time.time()
    toc = _toc()
    failures: list[str] = []
    notes: list[str] = []

    if not args.check_only:
        if not (THEME / "node_modules").is_dir():
            print("[build_book] installing the theme's npm packages (npm ci) ...", flush=True)
            rc, out = _run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], THEME, 600)
            if rc != 0:
                print(f"[build_book] npm ci failed (exit {rc})", file=sys.stderr)
                return 1
        missing = [f for f in toc if not (ROOT / f).is_file()]
        if missing:
            print(f"[build_book] toc files missing: {missing}", file=sys.stderr)
            return 1
        shutil.rmtree(HTML, ignore_errors=True)
        REPORT.unlink(missing_ok=True)
        rc, output = _run([_find_myst(), "build", "--html"], ROOT, args.timeout, LOG)
        if rc != 0:
            failures.append(f"myst build --html exited with {rc} (log: {LOG.relative_to(ROOT)})")
        myst_errors, myst_warnings = _myst_messages(output)
        if REPORT.is_file():  # the theme's own messages are read from its report below
            myst_errors = [e for e in myst_errors if "avgn-theme:" not in e]
        failures.extend(f"myst: {e}" for e in myst_errors)
        for w in myst_warnings:
            if args.strict_warnings or REFERENCE_WARNING.search(w):
                failures.append(f"myst: {w}")
            else:
                notes.append(f"myst: {w}")

    errors, warnings, stats = check_output(toc)
    failures.extend(errors)
    notes.extend(warnings)
    elapsed = time.time() - started

    print()
    print("=" * 72)
    print(
        f"book: {stats['pages']} pages ({len(toc)} in the toc), {stats['images']} images "
        f"({len(stats['image_files'])} image files), {stats['bytes'] / 1e6:.1f} MB in {HTML.relative_to(ROOT)}, "
        f"{elapsed:.1f} s"
    )
    for n in notes:
        print(f"  note: {n}")
    if failures:
        print(f"FAILED: {len(failures)} problem(s):", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"OK: open {HTML.relative_to(ROOT) / 'index.html'} (works from disk or any static server)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        _kill_children()
