"""The browser console for real: the server and `python -m grf_stream.console` as processes, a real
headless Chromium whose camera and microphone are the MOSI clip of ../shared/data/media."""

import asyncio
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, free_port
from grf_stream.serving import protocol as p

CLIP = ROOT.parent / "shared" / "data" / "media" / "Oz06ZWiO20M_6.mp4"
PAGE = ROOT / "grf_stream" / "console" / "page"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
needs_clip = pytest.mark.skipif(not CLIP.exists(), reason="needs ../shared/data (the CMU-MOSI clip as camera and microphone)")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and its driver: apt-get install chromium chromium-driver (Debian/Ubuntu; README, Test)")


@pytest.fixture(scope="module")
def server(start_server):
    with start_server("idle_timeout_s=20") as address:
        yield address


@pytest.fixture(scope="module")
def console(server):
    """`python -m grf_stream.console` relaying to the server; yields the page's URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "grf_stream.console", "--server", server, "--port", str(port)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 60
        while not answers(url):
            assert process.poll() is None and time.time() < deadline, process.stdout.read()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# -- the relay, without a browser ----------------------------------------------------------------------


def exchange(url: str, messages: list[p.Message], replies: int, origin: str | None = None) -> list:
    """Protocol messages through the console's WebSocket, as binary msgpack; the replies, decoded."""
    import aiohttp

    async def run():
        headers = {"Origin": origin} if origin else {}
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url.replace("http", "ws") + "ws", headers=headers) as ws:
                for message in messages:
                    await ws.send_bytes(p.encode(message))
                return [p.decode_reply((await ws.receive(timeout=60)).data) for _ in range(replies)]

    return asyncio.run(run())


def test_the_relay_carries_the_protocol_unchanged(console):
    got = exchange(console, [p.Hello("relay", 0, 0.0, ["text"], "window"),
                             p.Text("relay", 1, 0.5, "what a wonderful film", True),
                             p.Bye("relay", 2, 1.0)], replies=3)
    assert [type(r) for r in got] == [p.Welcome, p.Prediction, p.Closed]
    assert got[1].modality == "text" and np.isfinite(got[1].value)
    assert got[2].reason == "bye"


def test_a_bad_message_is_answered_by_the_server_like_any_other(console):
    got = exchange(console, [p.Text("never-opened", 0, 0.0, "hello?", True)], replies=1)
    assert isinstance(got[0], p.Error) and got[0].code == p.UNKNOWN_SESSION


def test_another_web_site_cannot_open_the_relay(console):
    import aiohttp

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        exchange(console, [], replies=0, origin="http://elsewhere.example")
    assert refused.value.status == 403


def test_the_page_loads_nothing_from_elsewhere():
    references = []
    for path in PAGE.iterdir():
        text = path.read_text()
        references += re.findall(r'(?:src|href)="([^"]*)"', text)
        references += re.findall(r'(?:from|addModule\()\s*"([^"]*)"', text)
    assert references, "the pattern found no references: update it"
    assert not [r for r in references if "//" in r or r.startswith("data:")], references


# -- the page in a real browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_devices(tmp_path_factory) -> tuple[Path, Path]:
    """The MOSI clip as Chromium's fake camera (y4m: 4:2:0 frames) and microphone (16-bit wav)."""
    import cv2

    from grf_stream.features.media import read_audio, video_frames

    folder = tmp_path_factory.mktemp("devices")
    frames = list(video_frames(CLIP, 30.0))
    height, width = frames[0].shape[:2]
    with open(folder / "clip.y4m", "wb") as y4m:
        y4m.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            y4m.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    sound = read_audio(CLIP)
    with wave.open(str(folder / "clip.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sound.sample_rate)
        wav.writeframes((np.clip(sound.samples, -1, 1) * 32767).astype("<i2").tobytes())
    return folder / "clip.y4m", folder / "clip.wav"


@pytest.fixture
def browser(fake_devices):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    video, audio = fake_devices
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,860",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-video-capture={video}", f"--use-file-for-fake-audio-capture={audio}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def page_state(driver) -> dict:
    return driver.execute_script("return window.grfConsole.state")


def wait_for(driver, condition, what: str, timeout_s: float = 60) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        state = page_state(driver)
        if condition(state):
            return state
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout_s} s; the page holds {summary(state)}")


def summary(state: dict) -> str:
    modalities = [r["modality"] for r in state["predictions"]]
    return f"predictions {modalities}, errors {state['errors']}, welcome {state['welcome'] is not None}"


def fused(*modalities):
    return lambda state: set(modalities) <= {r["modality"] for r in state["predictions"]}


@needs_browser
@needs_clip
def test_a_real_browser_streams_camera_microphone_and_phrases_and_plots_every_step(console, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(console)
    browser.find_element(By.ID, "start").click()
    state = wait_for(browser, fused("video", "audio"), "no prediction for both a video and an audio step")
    print(f"first prediction {state['firstPredictionS']:.2f} s after start")
    browser.find_element(By.ID, "phrase").send_keys("this movie was a wonderful surprise", Keys.ENTER)
    state = wait_for(browser, fused("text"), "no prediction for the typed phrase")
    text_step = next(r for r in state["predictions"] if r["modality"] == "text")
    assert set(text_step["modalities"]) == {"video", "audio", "text"}  # the context holds all three now
    assert not state["errors"]

    plotted = browser.execute_script("const {plot} = window.grfConsole; plot.draw(); return plot.drawn")
    assert plotted == len(page_state(browser)["predictions"])
    colours = browser.execute_script(PIXELS_OF_EACH_MODALITY)
    assert all(colours[m] > 0 for m in ("text", "audio", "video")), colours  # each kind of point is on the canvas
    browser.save_screenshot(str(tmp_path / "console.png"))
    print(f"screenshot: {tmp_path / 'console.png'}")

    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(url.startswith(console.rstrip("/")) or url.startswith("ws://") for url in resources), resources
    browser.find_element(By.ID, "stop").click()
    state = wait_for(browser, lambda s: s["closed"] is not None, "no closed after stop", 30)
    assert state["closed"]["reason"] == "bye" and state["closed"]["stats"]["steps"] >= 3
    assert state["server"]["active_sessions"] >= 1 and "drops" in state["server"]  # the server's numbers came
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe


# Pixels of the canvas in each modality's colour (plot.js COLOURS), exact RGB matches.
PIXELS_OF_EACH_MODALITY = """
const canvas = document.getElementById("plot");
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
const hex = {text: "#d9480f", audio: "#1971c2", video: "#2f9e44"};
const counts = {};
for (const [modality, colour] of Object.entries(hex)) {
  const [r, g, b] = [1, 3, 5].map(i => parseInt(colour.slice(i, i + 2), 16));
  let n = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] === r && data[i + 1] === g && data[i + 2] === b) n++;
  counts[modality] = n;
}
return counts;
"""
