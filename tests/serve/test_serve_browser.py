"""The web demo in a real browser (headless Debian Chromium via selenium, one browser for the module): load the
page, upload an image and ask (an answer appears), open the real-format fixture slide, a synthetic tissue slide and
a synthetic volume from the data root and check that the viewer shows non-blank pixels, and ask about the slide
and the volume. Skipped with the reason when Chromium is not installed. ``SCREENSHOT_DIR=DIR`` keeps the viewer
screenshots (the README's images)."""
from __future__ import annotations

import pytest

from chromium_driver import element_pixels, non_blank, save_screenshot, shutdown, start_chromium
from serve_models import FIXTURE_SLIDE

WAIT = 120
BOT = '#chat [data-testid="bot"]'


@pytest.fixture(scope="module")
def page(demo_server, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium_profile")
    driver = start_chromium(profile)
    driver.get(demo_server["url"])
    _wait(driver, lambda d: d.find_elements("css selector", "#ask-btn") and d.find_elements(
        "css selector", "#upload input[type=file]"), "the page to render")
    yield driver
    shutdown(driver, profile)


def _wait(driver, condition, what):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.5).until(condition, message=f"timed out waiting for {what}")


def _viewer_info(driver) -> str:
    return driver.find_element("css selector", "#viewer-info").text


def _viewer_image(driver):
    return driver.find_element("css selector", "#viewer img")


def _open_server_path(driver, path: str, kind: str):
    box = driver.find_element("css selector", "#server-path textarea, #server-path input")
    box.clear()
    box.send_keys(path)
    driver.find_element("css selector", "#open-btn").click()
    name = path.rsplit("/", 1)[-1]
    _wait(driver, lambda d: _viewer_info(d).startswith(f"{kind} {name}:"), f"the {kind} viewer on {name}")
    _wait_view(driver)


def _wait_view(driver):
    _wait(driver, lambda d: d.find_elements("css selector", "#viewer img") and
          _viewer_image(d).get_attribute("naturalWidth") not in (None, "0"), "the rendered view")


def _ask(driver, question: str) -> str:
    bots_before = len(driver.find_elements("css selector", BOT))
    box = driver.find_element("css selector", "#question textarea, #question input")
    box.send_keys(question)
    driver.find_element("css selector", "#ask-btn").click()

    def answered(d):
        bots = d.find_elements("css selector", BOT)
        return len(bots) > bots_before and bots[-1].text.strip()

    _wait(driver, answered, "an answer in the chat")
    return driver.find_elements("css selector", BOT)[-1].text


def test_upload_image_and_ask(page, demo_server):
    page.find_element("css selector", "#upload input[type=file]").send_keys(str(demo_server["root"] / "red_disc.png"))
    _wait(page, lambda d: _viewer_info(d).startswith("image red_disc.png:"), "the uploaded image in the viewer")
    _wait_view(page)
    viewer = page.find_element("css selector", "#viewer")
    assert non_blank(element_pixels(viewer))
    save_screenshot(viewer, "viewer_image.png")
    assert _ask(page, "What colour is the disc?").strip()


@pytest.mark.skipif(not FIXTURE_SLIDE.is_file(), reason=f"fixture slide {FIXTURE_SLIDE} absent (no ../shared)")
def test_fixture_slide_viewer(page):
    _open_server_path(page, "fixture_boxes.tiff", "wsi")
    viewer = page.find_element("css selector", "#viewer")
    pixels = element_pixels(viewer)
    assert non_blank(pixels)
    assert "Deep Zoom levels" in _viewer_info(page)
    assert _ask(page, "What is on this slide?").strip()  # the model reads the fixture slide's tissue tile


def test_synthetic_slide_viewer_and_ask(page):
    _open_server_path(page, "synthetic_slide.tiff", "wsi")
    info = _viewer_info(page)
    assert "tissue tiles" in info, info
    viewer = page.find_element("css selector", "#viewer")
    pixels = element_pixels(viewer)
    assert non_blank(pixels)
    green = (pixels[..., 1] > 150) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)
    assert green.sum() > 50, "the tissue grid overlay is not drawn"
    save_screenshot(viewer, "viewer_slide.png")
    assert _ask(page, "What grade is this tumour?").strip()


def test_slide_zoom_and_click_to_pan(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    _open_server_path(page, "synthetic_slide.tiff", "wsi")
    before = _viewer_image(page).get_attribute("src")
    zoom = page.find_element("css selector", "#zoom input[type=number]")
    zoom.send_keys(Keys.CONTROL, "a")
    zoom.send_keys("6", Keys.ENTER)
    _wait(page, lambda d: _viewer_image(d).get_attribute("src") != before, "the zoomed view")
    zoomed = _viewer_image(page).get_attribute("src")
    image = _viewer_image(page)
    ActionChains(page).move_to_element_with_offset(image, image.size["width"] // 3, 0).click().perform()
    _wait(page, lambda d: _viewer_image(d).get_attribute("src") != zoomed, "the view to pan after a click")
    assert non_blank(element_pixels(page.find_element("css selector", "#viewer")))


def test_volume_viewer_and_ask(page):
    _open_server_path(page, "head_ct.nii.gz", "volume")
    viewer = page.find_element("css selector", "#viewer")
    pixels = element_pixels(viewer)
    assert non_blank(pixels)
    save_screenshot(viewer, "viewer_volume.png")
    assert _ask(page, "Is there a lesion?").strip()
