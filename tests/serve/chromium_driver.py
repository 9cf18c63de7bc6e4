"""Headless Chromium from the system's packages (Debian ``chromium`` + ``chromium-driver``) through selenium:
no browser download. ``start_chromium(tmp)`` or ``pytest.skip`` with the reason; ``element_pixels`` gives a
screenshot of one element as a numpy array and ``non_blank`` checks it."""
from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest

CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
         "--window-size=1400,1100")


def start_chromium(profile_dir):
    """A selenium Chrome driver on the system Chromium, fresh profile in ``profile_dir``; skips when absent."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    if missing:
        pytest.skip(f"browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} not found; "
                    f"apt-get install chromium chromium-driver)")
    selenium = pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[demo]')")
    del selenium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


def element_pixels(element) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"))


def save_screenshot(element, name: str) -> None:
    """Copy an element screenshot to ``$SCREENSHOT_DIR/name`` when that variable is set (README images)."""
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(element.screenshot_as_png)


def shutdown(driver, profile_dir) -> None:
    driver.quit()
    shutil.rmtree(profile_dir, ignore_errors=True)


def non_blank(pixels: np.ndarray) -> bool:
    """More than a flat colour: pixel standard deviation above 10 (of 255)."""
    return float(pixels.std()) > 10.0
