"""The browser console for real: the server and `python -m grf_stream.console` as processes, a real
headless Chromium whose camera and microphone are the MOSI clip of ../shared/data/media."""

import asyncio
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
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


def test_ctrl_c_stops_the_console_while_a_page_is_open():
    import aiohttp

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "grf_stream.console", "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 60
        while not answers(url):
            assert process.poll() is None and time.time() < deadline, "the console did not start"
            time.sleep(0.2)

        async def hold_a_page_open():
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(url.replace("http", "ws") + "ws") as page:
                    process.send_signal(signal.SIGINT)
                    closing = await page.receive(timeout=10)  # the console says it is going away
                    return closing.type, page.close_code

        kind, code = asyncio.run(hold_a_page_open())
        assert kind == aiohttp.WSMsgType.CLOSE and code == aiohttp.WSCloseCode.GOING_AWAY
        assert process.wait(timeout=10) is not None
    finally:
        process.kill()


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
    """The MOSI clip as Chromium's fake camera (y4m) and microphone (wav)."""
    from grf_stream.console.devices import write_fake_devices

    return write_fake_devices(CLIP, tmp_path_factory.mktemp("devices"))


@pytest.fixture
def browser(fake_devices):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from grf_stream.console.devices import chromium_flags

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,860",
                 "--autoplay-policy=no-user-gesture-required",  # audio without a click, for the worklet test
                 *chromium_flags(*fake_devices)]:
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


@needs_browser
@needs_clip
@pytest.mark.parametrize("context_rate", [16000, 48000])
def test_the_microphone_worklet_sends_100_ms_of_pcm16_at_16_khz_whatever_the_browser_rate(console, browser,
                                                                                          context_rate):
    """A 440 Hz tone at half scale through the page's AudioWorklet, in a context at 16 kHz (what the
    page asks for) and at 48 kHz (where a browser will not resample: the worklet then does)."""
    browser.get(console)
    chunks = browser.execute_async_script(TONE_THROUGH_THE_WORKLET, context_rate)
    assert not isinstance(chunks, str), chunks  # a str is the page's error
    samples = np.frombuffer(bytes(chunks[-1]), "<i2").astype(float)  # the wire's byte order: little-endian
    assert len(samples) == 1600  # 100 ms at 16 kHz
    crossings = np.count_nonzero(np.diff(np.signbit(samples)))
    assert crossings / 2 / 0.1 == pytest.approx(440, abs=15)
    assert np.abs(samples).max() / 32767 == pytest.approx(0.5, abs=0.05)


# Three chunks from the worklet fed a tone, as lists of bytes; or the error, as a str.
TONE_THROUGH_THE_WORKLET = """
const [rate, done] = arguments;
(async () => {
  const context = new AudioContext({sampleRate: rate});
  await context.audioWorklet.addModule("/page/pcm16-worklet.js");
  const chunker = new AudioWorkletNode(context, "pcm16-chunker");
  const tone = new OscillatorNode(context, {frequency: 440});
  tone.connect(new GainNode(context, {gain: 0.5})).connect(chunker);
  chunker.connect(context.destination);
  const chunks = [];
  chunker.port.onmessage = (event) => {
    chunks.push(Array.from(new Uint8Array(event.data)));
    if (chunks.length === 3) { context.close(); done(chunks); }
  };
  tone.start();
  await context.resume();
})().catch((error) => done(String(error)));
"""
