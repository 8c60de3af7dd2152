"""The steering explorer in a real browser: JupyterLab on localhost, driven by headless Chromium.

``notebooks/06_explorer.ipynb`` (a copy, so that JupyterLab's autosave never touches the committed
file) is opened in a JupyterLab server started by the test, with the notebooks' quick mode
(``WORKBENCH_NOTEBOOK_QUICK=1``, vectors trained into a temporary ``WORKBENCH_RUNS``). Playwright runs
the cells up to the explorer, then acts as a person would: ticks a vector, drags its multiplier
slider, clicks **Generate** and **Update curve**, and checks what the page shows. A screenshot is
saved (to ``$WORKBENCH_BROWSER_SCREENSHOT`` when set: that is how the README's picture is made).

Needs Debian's ``chromium`` (``./setup.sh`` installs it when run as root) and the ``dev`` extra
(``jupyterlab``, ``playwright``). Without Chromium the test is skipped, unless
``WORKBENCH_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "06_explorer.ipynb"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.embedded]


def _chromium() -> str:
    path = os.environ.get("WORKBENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    missing = []
    if not path:
        missing.append("Debian's chromium (apt-get install chromium)")
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the {module} package (pip install -e '.[dev]')")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("WORKBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (WORKBENCH_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving a copy of the explorer notebook; yields its base URL."""
    _chromium()
    work = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    settings = work / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no "get notified about Jupyter news?" toast over the page
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, WORKBENCH_NOTEBOOK_QUICK="1", WORKBENCH_RUNS=str(work / "runs"), HF_HUB_OFFLINE="1",
               MPLBACKEND="module://matplotlib_inline.backend_inline",
               JUPYTER_CONFIG_DIR=str(work / "config"), JUPYTER_RUNTIME_DIR=str(work / "runtime"),
               IPYTHONDIR=str(work / "ipython"), JUPYTERLAB_SETTINGS_DIR=str(work / "settings"))
    log = open(work / "jupyter.log", "w")  # noqa: SIM115 (open while the server runs; closed in finally)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True", "--allow-root",
         "--LabApp.extension_manager=readonly",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("JupyterLab did not start:\n" + (work / "jupyter.log").read_text()[-3000:])
                time.sleep(0.5)
        yield {"base": base, "token": token, "work": work}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _number(text: str) -> float:
    """A slider readout as a float (ipywidgets writes negative numbers with U+2212, the minus sign)."""
    return float(text.strip().replace("\u2212", "-"))


def _curve_src(page) -> str:
    return page.locator(".jupyter-widgets img").last.get_attribute("src") or ""


def test_explorer_in_jupyterlab(jupyter, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    chromium = _chromium()
    shot = Path(os.environ.get("WORKBENCH_BROWSER_SCREENSHOT") or tmp_path / "explorer.png")
    url = f"{jupyter['base']}/lab/tree/{NOTEBOOK.name}?token={jupyter['token']}&reset"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext", timeout=120_000)
            # run every cell up to and including the one that displays the explorer (nothing after it)
            widget_cell = page.evaluate("""async () => {
                const panel = window.jupyterapp.shell.currentWidget;
                await panel.sessionContext.ready;
                const nb = panel.content;
                const i = nb.widgets.findIndex(c => c.model.sharedModel.getSource().includes('explorer.widget'));
                nb.activeCellIndex = i + 1;
                window.jupyterapp.commands.execute('notebook:run-all-above');  // not awaited: it runs for minutes
                return i;
            }""")
            assert widget_cell > 0, "the explorer cell was not found in the notebook"
            explorer = page.locator(".widget-vbox").filter(has=page.get_by_role("button", name="Generate")).first
            expect(explorer).to_be_visible(timeout=300_000)  # kernel start, model load, quick vectors

            # tick the CAA vector, untick BiPO, so that exactly the vector the test chose is applied
            rows = {name: explorer.locator(".widget-hbox").filter(
                        has=page.locator(".widget-checkbox").filter(has_text=name)) for name in ("bipo", "caa")}
            boxes = {name: row.locator("input[type=checkbox]") for name, row in rows.items()}
            assert boxes["bipo"].is_checked() and not boxes["caa"].is_checked()
            boxes["caa"].check()
            boxes["bipo"].uncheck()
            expect(boxes["caa"]).to_be_checked()

            # drag CAA's multiplier slider from 1.0 to near its right end (the range is -4..4)
            row = rows["caa"]
            readout = row.locator(".widget-readout")
            before = _number(readout.inner_text())
            handle = row.locator(".noUi-handle")
            track = row.locator(".noUi-target").bounding_box()
            handle.hover()
            page.mouse.down()
            page.mouse.move(track["x"] + 0.9 * track["width"], track["y"] + track["height"] / 2, steps=8)
            page.mouse.up()
            expect(readout).not_to_have_text(f"{before:.2f}")
            moved = _number(readout.inner_text())
            assert moved > before + 1.0, (before, moved)

            # Generate: the unsteered and the steered answers appear side by side and differ
            explorer.get_by_role("button", name="Generate").click()
            panels = explorer.locator("div[style*='display:flex'] > div")
            expect(panels).to_have_count(2, timeout=180_000)
            titles = [panels.nth(i).locator("div").first.inner_text() for i in range(2)]
            texts = [panels.nth(i).locator("div").nth(1).inner_text() for i in range(2)]
            assert titles[0] == "unsteered" and titles[1].startswith("steered: caa"), titles
            assert f"{moved:+g}" in titles[1], (titles, moved)
            assert all(t.strip() for t in texts), texts
            assert texts[0] != texts[1], texts

            # Update curve: an image appears; moving the slider again redraws it (the marker moves)
            explorer.get_by_role("button", name="Update curve").click()
            page.wait_for_function("""() => { const im = [...document.querySelectorAll('.jupyter-widgets img')].pop();
                                              return im && im.naturalWidth > 0; }""", timeout=180_000)
            first = _curve_src(page)
            shot.parent.mkdir(parents=True, exist_ok=True)
            explorer.scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=False)  # the state a person sees after both clicks
            handle.hover()
            page.mouse.down()
            page.mouse.move(track["x"] + 0.25 * track["width"], track["y"] + track["height"] / 2, steps=8)
            page.mouse.up()
            page.wait_for_function("(src) => { const im = [...document.querySelectorAll('.jupyter-widgets img')].pop();"
                                   " return im && im.src !== src && im.naturalWidth > 0; }", arg=first)
            assert _number(readout.inner_text()) < moved
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
