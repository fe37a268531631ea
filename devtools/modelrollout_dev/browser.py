"""Headless Chromium for the tests that check a web page as a browser renders it: Debian's `chromium`
(`make deps` installs it), started with a fresh profile and without background networking (this machine has
no network beyond loopback; left on, Chromium's own connections fail by the dozen at every start)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",  # run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class BrowserError(RuntimeError):
    """No Chromium, or it failed; the message says which."""


def chromium_binary() -> Path:
    found = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium")
    if not found:
        raise BrowserError(
            "no headless browser: install Debian's `chromium` (`make deps` does) or set CHROMIUM_BIN"
        )
    return Path(found)


def rendered_dom(url: str, timeout: float = 60.0) -> str:
    """The DOM of `url` after Chromium loaded and laid it out (`--dump-dom`)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        done = subprocess.run(
            [str(chromium_binary()), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0 or not done.stdout.strip():
        raise BrowserError(f"chromium --dump-dom {url} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def screenshot(url: str, path: Path, width: int = 1280, height: int = 900, timeout: float = 60.0) -> Path:
    """A PNG of `url` as Chromium renders it at `width` x `height`."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        done = subprocess.run(
            [
                str(chromium_binary()),
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={path}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0 or not path.exists():
        raise BrowserError(f"chromium --screenshot {url} failed ({done.returncode}): {done.stderr[-2000:]}")
    return path
