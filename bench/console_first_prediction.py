"""How soon after Start the browser console shows its first prediction, against the terminal client.

In one run, one server (`python -m grf_stream.serve`, warmed as by default) and one console
(`python -m grf_stream.console`), and alternately, `--repeats` times each:
- console: a fresh headless Chromium whose camera and microphone are the CMU-MOSI clip (fake capture
  devices fed by files, python -m grf_stream.console.devices) opens the page and presses Start; timed
  by the page from the click to the first prediction it receives (capture start-up, the AudioWorklet,
  JPEG encoding and the WebSocket relay included);
- client: `grf_stream.client`'s Client replaying the same clip (frames and sound) in real time,
  straight to the server over ZeroMQ; timed from its hello to its first prediction.
Both use the default window of 1 s, so neither can predict before a second of audio or video has
been captured: the gap between them is what the browser path adds.

    python bench/console_first_prediction.py [--repeats 5] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from report import command_line, cpu_name, write_section
from first_chunk import CLIP, ROOT, start_server
from serve_latency import free_port
from grf_stream.client import Client, media_events
from grf_stream.console.devices import chromium_flags, write_fake_devices
from grf_stream.serving import protocol as p


def start_console(server: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "grf_stream.console", "--server", server, "--port", str(port)],
                               cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1)
            return process, url
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the console did not start")


def console_first(url: str, devices: tuple[Path, Path]) -> float:
    """Seconds from pressing Start in a fresh browser to the page's first prediction."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("google-chrome")
    for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", *chromium_flags(*devices)]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(url)
        driver.find_element(By.ID, "start").click()
        for _ in range(300):
            first = driver.execute_script("return window.grfConsole.state.firstPredictionS")
            if first is not None:
                driver.find_element(By.ID, "stop").click()
                return first
            time.sleep(0.05)
        raise SystemExit("the page showed no prediction within 15 s")
    finally:
        driver.quit()


class FirstPrediction(Client):
    """The terminal client, noting when its first prediction arrives instead of printing."""

    def show(self, reply) -> None:
        if isinstance(reply, p.Prediction) and self.predictions == 0:
            self.first = time.perf_counter()


def client_first(server: str, events) -> float:
    """Seconds from the terminal client's hello to its first prediction, replaying the clip."""
    async def run():
        client = FirstPrediction(server, f"bench-{time.time_ns()}", as_json=False)
        receiver = asyncio.create_task(client.receive())
        started = time.perf_counter()
        await client.replay(events, ["audio", "video"], "window", 1.0, speed=1.0)
        await asyncio.wait_for(client.closed.wait(), 30)
        receiver.cancel()
        client.close()
        return client.first - started

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, help="update this markdown file's section (BENCHMARKS.md)")
    args = parser.parse_args()
    if not shutil.which("chromedriver"):
        raise SystemExit("needs Chromium and its driver: apt-get install chromium chromium-driver")
    devices = write_fake_devices(CLIP, Path(tempfile.mkdtemp()))
    events = media_events(CLIP, None, None)
    server_process, server, banner = start_server(warm=True)
    console_process, url = start_console(server)
    times: dict[str, list[float]] = {"console (browser, Start to first prediction)": [],
                                     "terminal client (hello to first prediction)": []}
    try:
        for _ in range(args.repeats):
            times["console (browser, Start to first prediction)"].append(console_first(url, devices))
            times["terminal client (hello to first prediction)"].append(client_first(server, events))
    finally:
        console_process.terminate()
        server_process.terminate()
        server_process.wait(60)
    rows = [f"| {name} | {statistics.median(ts):.2f} s | {min(ts):.2f}-{max(ts):.2f} s |" for name, ts in times.items()]
    body = "\n".join([f"Machine: {cpu_name()}; {banner}", "",
                      f"One server and one console; {args.repeats} starts of each, alternating; window 1 s.", "",
                      "| path | first prediction, median | range |", "|---|---|---|", *rows])
    print(body)
    if args.write:
        write_section(args.write, "console_first_prediction", "Console: first prediction after Start", body,
                      command_line("console_first_prediction.py"))


if __name__ == "__main__":
    main()
