"""Drive the atlas page in Debian's Chromium with Playwright's Python package.

Playwright's own browser download cannot be reached here, so it drives the system's
Chromium (Debian package ``chromium``: /usr/bin/chromium) through ``executable_path``.
:func:`chromium_path` finds it, installs it with apt-get when running as root on a
machine that has apt-get (as tests/cluster/test_slurm.py installs SLURM), and otherwise
skips the calling test with the reason.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

# As root in a container Chromium needs --no-sandbox; the networking flags stop its own
# background requests (updates, sync), which a closed network refuses loudly.
LAUNCH_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 860}
INSTALL_LOCK = Path(tempfile.gettempdir()) / "histoatlas-chromium-install.lock"
READY = (
    "window.HistoAtlas && HistoAtlas.state.firstPaintMs !== null && HistoAtlas.state.labelsReady"
    " && HistoAtlas.state.mosaicTilesLoaded > 0"
)


def find_chromium() -> str | None:
    """Path of the system's Chromium, or None."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_path() -> str:
    """Chromium's path, installing Debian's package if missing (root + apt-get); else skip."""
    pytest.importorskip(
        "playwright.sync_api",
        reason="the atlas browser tests need Playwright's Python package (pip install playwright)",
    )
    path = find_chromium()
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            "Chromium is not installed (Debian/Ubuntu: apt-get install chromium), and without "
            "root and apt-get the tests cannot install it; the atlas browser tests need it"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open(INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time across test processes
        if find_chromium() is None:
            out = ""
            for cmd in (
                ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "chromium"],
            ):
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
                out += proc.stdout + proc.stderr
    path = find_chromium()
    if path is None:
        pytest.skip(f"could not install Chromium with apt-get:\n{out[-2000:]}")
    return path


class AtlasPage:
    """One page of the atlas in a fresh browser context, recording what it does.

    Attributes
    ----------
    page : playwright Page
    console : list of (type, text)
        Console messages and uncaught errors (type ``pageerror``).
    requests : list of str
        Every URL the page asked for.
    blocked : list of str
        Requests that would have left the machine (aborted).
    dialogs : list of str
        ``alert``/``confirm``/``prompt`` messages (dismissed).
    """

    def __init__(self, browser, atlas_dir: Path) -> None:
        self.url = (Path(atlas_dir) / "index.html").resolve().as_uri()
        self.context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        self.console: list[tuple[str, str]] = []
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.dialogs: list[str] = []
        self.context.route(re.compile(r"^(https?|wss?|ftp)://"), self._block)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", self._dialog)

    def _block(self, route) -> None:
        self.blocked.append(route.request.url)
        route.abort()

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, timeout_ms: int = 30_000) -> AtlasPage:
        """Load the page and wait until it has drawn, loaded its data and mosaic tiles."""
        self.page.goto(self.url)
        self.wait_until(READY, timeout_ms=timeout_ms)
        return self

    def wait_until(self, expression: str, arg=None, timeout_ms: int = 30_000) -> None:
        """Poll ``expression`` (a JS expression, or a function of ``arg``) until it is truthy.

        Playwright's ``wait_for_function`` evaluates its predicate with ``eval`` inside the
        page, which the atlas's Content-Security-Policy (no 'unsafe-eval') refuses; a
        ``page.evaluate`` goes through the DevTools protocol, which the policy does not
        govern, so the page is tested under the policy it ships with.
        """
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            value = self.page.evaluate(expression, arg)
            if value:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{expression!r} still {value!r} after {timeout_ms} ms on {self.url}"
                )
            self.page.wait_for_timeout(50)

    def eval(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def errors(self) -> list[tuple[str, str]]:
        """Console errors and warnings, and uncaught exceptions."""
        return [(t, text) for t, text in self.console if t in ("error", "warning", "pageerror")]

    def close(self) -> None:
        self.context.close()
