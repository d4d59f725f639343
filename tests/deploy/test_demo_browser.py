"""The demo page at / in a real headless browser (Debian's chromium + chromedriver, driven by Selenium): upload
the bundled portrait, wait for the drawing, and check that landmark pixels were drawn on the face."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.artifacts import SHIPPED_CHECKPOINT
from tests.support.server import ROOT, running_server

PORTRAIT = ROOT / "tests" / "data" / "astronaut.jpg"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="chromium/chromedriver not installed (apt-get install chromium chromium-driver)",
    ),
]


def landmark_pixels(rgb: np.ndarray, box: tuple[int, int, int, int]) -> int:
    """Pixels in ``box`` of the drawing's colours: saturated red/yellow/green with no blue (the points)."""
    x1, y1, x2, y2 = box
    region = rgb[y1:y2, x1:x2].astype(int)
    return int(((region[..., 2] < 40) & (np.maximum(region[..., 0], region[..., 1]) > 180)).sum())


def chrome(*flags: str):  # noqa: ANN201
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900", *flags):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)


def wait_for_answer(driver) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(
        lambda d: (
            d.execute_script("return document.getElementById('canvas').dataset.faces")
            or "error" in d.find_element(By.ID, "status").get_attribute("class")
        )
    )


def test_with_api_keys_the_page_asks_for_a_key_and_then_draws(tmp_path):
    from selenium.webdriver.common.by import By

    with running_server(SHIPPED_CHECKPOINT, tmp_path / "server.log", api_keys="s3cret,other") as (base, _):
        driver = chrome()
        try:
            driver.get(f"{base}/")  # the page itself is open
            upload = driver.find_element(By.ID, "file")
            driver.execute_script("arguments[0].hidden = false", upload)
            upload.send_keys(str(PORTRAIT))
            wait_for_answer(driver)
            assert "API key" in driver.find_element(By.ID, "status").text
            assert driver.find_element(By.ID, "keybox").is_displayed()
            driver.find_element(By.ID, "apikey").send_keys("s3cret")
            driver.find_element(By.ID, "usekey").click()  # re-sends the same photo with the key
            wait_for_answer(driver)
            assert driver.execute_script("return document.getElementById('canvas').dataset.faces") == "1"
            assert not driver.find_element(By.ID, "keybox").is_displayed()
        finally:
            driver.quit()
    assert "s3cret" not in (tmp_path / "server.log").read_text()  # never logged


def test_upload_the_portrait_and_see_its_landmarks(tmp_path):
    from selenium.webdriver.common.by import By

    with running_server(SHIPPED_CHECKPOINT, tmp_path / "server.log") as (base, _):
        driver = chrome()
        try:
            driver.get(f"{base}/")
            assert "dsc-landmarks" in driver.title
            upload = driver.find_element(By.ID, "file")
            driver.execute_script("arguments[0].hidden = false", upload)
            upload.send_keys(str(PORTRAIT))
            wait_for_answer(driver)
            status = driver.find_element(By.ID, "status").text
            assert driver.execute_script("return document.getElementById('canvas').dataset.faces") == "1", status
            assert "1 face(s)" in status
            rows = driver.find_elements(By.CSS_SELECTOR, "#faces tbody tr")
            assert len(rows) == 1
            assert driver.find_elements(By.CSS_SELECTOR, "#timings tbody tr")  # timings shown
            data_url = driver.execute_script("return document.getElementById('canvas').toDataURL('image/png')")
            driver.save_screenshot(str(tmp_path / "demo.png"))
        finally:
            driver.quit()
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))
    original = np.asarray(Image.open(PORTRAIT).convert("RGB"))
    assert drawn.shape == original.shape
    face = (150, 60, 300, 200)  # the face in the 512 x 512 portrait
    assert landmark_pixels(drawn, face) > 300  # 68 points of a few pixels each
    assert landmark_pixels(original, face) < 30
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    Path(ROOT / "runs").mkdir(exist_ok=True)
    shutil.copy(tmp_path / "demo.png", ROOT / "runs" / "demo_screenshot.png")  # to look at (runs/ is ignored)


def write_camera_clip(path: Path, frames: int = 30) -> tuple[int, int, int, int]:
    """A Y4M clip for Chromium's fake camera: the portrait at 0.9x on a 640x480 grey frame, drifting right by
    1 px a frame. Returns the box that holds the face in every frame."""
    import cv2

    portrait = cv2.resize(cv2.imread(str(PORTRAIT)), (461, 461), interpolation=cv2.INTER_AREA)
    with path.open("wb") as fh:
        fh.write(b"YUV4MPEG2 W640 H480 F15:1 Ip A1:1 C420jpeg\n")
        for i in range(frames):
            frame = np.full((480, 640, 3), 110, np.uint8)
            frame[10:471, 80 + i : 541 + i] = portrait
            fh.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return (215, 64, 380, 190)  # the portrait's face (150, 60, 300, 200) at 0.9x, moved by (80..110, 10)


def test_the_webcam_mode_streams_the_camera_and_draws_tracked_points(tmp_path):
    """Chromium's fake camera plays a clip of the portrait; with keys on, the page asks for one, sends it as the
    WebSocket sub-protocol, and draws each answer on its frame with the track id and frames/s."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = tmp_path / "camera.y4m"
    face = write_camera_clip(clip)
    flags = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--use-file-for-fake-video-capture={clip}")  # fmt: skip
    with running_server(SHIPPED_CHECKPOINT, tmp_path / "server.log", api_keys="s3cret") as (base, _):
        driver = chrome(*flags)
        try:
            driver.get(f"{base}/")
            driver.find_element(By.ID, "camera").click()
            WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "keybox").is_displayed())
            driver.find_element(By.ID, "apikey").send_keys("s3cret")
            driver.find_element(By.ID, "usekey").click()  # the camera starts again, with the key
            WebDriverWait(driver, 90).until(
                lambda d: (
                    "frames/s" in d.find_element(By.ID, "status").text
                    and d.execute_script("return document.getElementById('canvas').dataset.faces") == "1"
                )
            )
            WebDriverWait(driver, 60).until(lambda d: "#1" in d.find_element(By.ID, "status").text)
            status = driver.find_element(By.ID, "status").text
            data_url = driver.execute_script("return document.getElementById('canvas').toDataURL('image/png')")
            driver.find_element(By.ID, "camera").click()  # stop
            WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "camera").text == "Use the camera")
        finally:
            driver.quit()
    assert "track #1" in status
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))
    assert drawn.shape == (480, 640, 3)
    assert landmark_pixels(drawn, face) > 300
    log = (tmp_path / "server.log").read_text()
    assert "s3cret" not in log
    assert '"route": "/landmarks/stream"' in log  # the stream's own log line when it closed
