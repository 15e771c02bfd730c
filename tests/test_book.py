"""Reader test of the rendered book (``_build/html``), in headless Debian Chromium.

Build the book first with ``python scripts/build_book.py``; then
``pytest -m book tests/test_book.py``. Screenshots go to ``_build/screenshots/``.

Needs: PyPI ``selenium`` and Debian ``chromium`` + ``chromium-driver`` (the
driver is never downloaded: both paths below are given to Selenium).
"""

from __future__ import annotations

import base64
import functools
import http.server
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
REPORT = ROOT / "_build" / "theme-report.json"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("AVGN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AVGN_CHROMEDRIVER", "/usr/bin/chromedriver")
BUILD_HINT = "run `python scripts/build_book.py` first"


# --------------------------------------------------------------------------- helpers


def _toc_files() -> list[str]:
    """The chapters of the toc of ``myst.yml``, read as ``scripts/build_book.py`` reads them."""
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    build_book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_book)
    files = build_book._toc()
    assert files, f"{ROOT / 'myst.yml'} has no toc"
    return files


@pytest.fixture(scope="module")
def book() -> dict:
    """The pages of the built book, checked against the toc of myst.yml."""
    if not (HTML / "index.html").is_file():
        pytest.fail(f"{HTML / 'index.html'} does not exist: {BUILD_HINT}")
    if not REPORT.is_file():
        pytest.fail(f"{REPORT} does not exist (the book was not built with theme/): {BUILD_HINT}")
    report = json.loads(REPORT.read_text(encoding="utf-8"))
    pages = report["pages"]
    by_source = {p["source"].lstrip("/"): p for p in pages}
    toc = _toc_files()
    missing = [f for f in toc if f not in by_source]
    assert not missing, f"toc chapters without a page in _build/html: {missing} ({BUILD_HINT})"
    chapters = [by_source[f] for f in toc]
    for page in chapters:
        assert (HTML / page["file"]).is_file(), f"{page['file']} is missing from {HTML}"
    return {"chapters": chapters}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def server(book):
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} not found: apt-get install chromium chromium-driver")
    profile = tempfile.mkdtemp(prefix="avgn-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open(driver, url: str) -> None:
    driver.get(url)
    driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const wait = () => Promise.all([...document.images].map(
            (img) => img.complete ? null : new Promise((r) => { img.onload = img.onerror = r; })));
        (document.readyState === 'complete' ? wait() : new Promise((r) => addEventListener('load', r)).then(wait))
            .then(() => document.fonts ? document.fonts.ready : null).then(() => done(true));
        """
    )


def _screenshot(driver, name: str) -> Path:
    """Full-page screenshot (the viewport is stretched to the page height, then restored)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)")
    height = max(900, min(int(height), 16000))
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False}
    )
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path = SHOTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def _broken_images(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.getAttribute('src'))"
    )


def _failed_requests(driver) -> list[str]:
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and ("Failed to load" in entry["message"] or "net::" in entry["message"])
    ]


def _check_page(driver, book, page) -> None:
    chapters = book["chapters"]
    driver.get_log("browser")  # drop earlier entries

    heading = driver.execute_script("const h = document.querySelector('article h1'); return h ? h.textContent : ''")
    assert page["title"] in heading, f"{page['file']}: title {page['title']!r} not in <h1> {heading!r}"
    assert page["title"] in driver.title

    broken = _broken_images(driver)
    assert not broken, f"{page['file']}: images that did not load: {broken}"

    sidebar = driver.execute_script(
        "return [...document.querySelectorAll('nav.sidebar .toc-entry > a')]"
        ".map(a => [a.textContent.trim(), a.getAttribute('href'), a.getAttribute('aria-current')])"
    )
    titles = [entry[0] for entry in sidebar]
    for chapter in chapters:
        assert chapter["title"] in titles, f"{page['file']}: sidebar lacks chapter {chapter['title']!r}: {titles}"
    current = [entry for entry in sidebar if entry[2] == "page"]
    assert [c[0] for c in current] == [page["title"]], f"{page['file']}: current chapter not highlighted: {current}"

    position = [c["file"] for c in chapters].index(page["file"])
    prev_href = driver.execute_script("const a = document.querySelector('nav.pager a[rel=prev]'); return a && a.getAttribute('href')")
    next_href = driver.execute_script("const a = document.querySelector('nav.pager a[rel=next]'); return a && a.getAttribute('href')")
    assert prev_href or next_href or len(chapters) == 1, f"{page['file']}: no previous/next links"
    if position > 0:
        assert prev_href == chapters[position - 1]["file"], f"{page['file']}: previous link {prev_href!r}"
    if position < len(chapters) - 1:
        assert next_href == chapters[position + 1]["file"], f"{page['file']}: next link {next_href!r}"

    dangling = driver.execute_script(
        "return [...document.querySelectorAll('article a[href^=\"#\"]')]"
        ".map(a => decodeURIComponent(a.getAttribute('href').slice(1)))"
        ".filter(id => id && !document.getElementById(id))"
    )
    assert not dangling, f"{page['file']}: links to missing anchors: {dangling}"
    unresolved = driver.execute_script("return document.querySelectorAll('.xref-unresolved, .link-unresolved').length")
    assert unresolved == 0, f"{page['file']}: {unresolved} unresolved references"

    failed = _failed_requests(driver)
    assert not failed, f"{page['file']}: failed requests: {failed}"


# --------------------------------------------------------------------------- tests


def test_index_page(book, server, browser):
    first = book["chapters"][0]
    assert first["file"] == "index.html"
    _open(browser, f"{server}/")
    assert _screenshot(browser, "index").stat().st_size > 0
    _check_page(browser, book, first)


def test_chapter_page(book, server, browser):
    chapters = book["chapters"]
    page = chapters[1] if len(chapters) > 1 else chapters[0]
    _open(browser, f"{server}/{page['file']}")
    assert _screenshot(browser, Path(page["file"]).stem).stat().st_size > 0
    _check_page(browser, book, page)


def test_every_page_and_cross_page_links(book, server, browser):
    """All chapters render cleanly, and links into other chapters land on an existing anchor."""
    targets: set[str] = set()
    for page in book["chapters"]:
        _open(browser, f"{server}/{page['file']}")
        _check_page(browser, book, page)
        targets.update(
            browser.execute_script(
                "return [...document.querySelectorAll('article a[href]')].map(a => a.getAttribute('href'))"
                ".filter(h => !h.startsWith('#') && !/^[a-z]+:/i.test(h) && h.includes('#'))"
            )
        )
    for target in sorted(targets):
        file, _, anchor = target.partition("#")
        _open(browser, f"{server}/{file}")
        found = browser.execute_script("return !!document.getElementById(arguments[0])", anchor)
        assert found, f"cross-page link {target!r} points to a missing anchor"


def test_opens_from_disk(book, browser):
    """The book also works from file:// (relative URLs): styles, maths fonts and images load."""
    page = book["chapters"][-1]
    _open(browser, (HTML / page["file"]).as_uri())
    assert not _broken_images(browser)
    sidebar_width = browser.execute_script("return document.querySelector('nav.sidebar').getBoundingClientRect().width")
    assert 200 < sidebar_width < 400, "book.css did not apply from file://"
    next_or_prev = browser.execute_script("const a = document.querySelector('nav.pager a'); return a && a.href")
    assert next_or_prev is None or next_or_prev.startswith("file://")
