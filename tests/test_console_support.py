"""Shared set-up for the console tests (no tests here): a running loop with its API, and headless Chromium.

The loop is the real one, in-process: generator, simulator and learner workers in
threads over an embedded Valkey, a random tiny generator (the shipped weights are
not needed), the real MuJoCo oracle, and the API served by uvicorn. A random model's
blobs nearly always stand, so a few hand-built shapes that tip over are fed through
the same sample stream: the simulator labels them like any other sample.
"""

from __future__ import annotations

import base64
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from dso.actors import GeneratorWorker, Learner, SimulatorWorker, seed_default_prompts
from dso.actors.running import run_until_stopped
from dso.api.app import create_app
from dso.api.server import ApiServer
from dso.broker import Broker
from dso.broker.records import SampleRecord
from dso.config import Settings
from dso.telemetry import LoopMetrics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    # software WebGL (SwiftShader), so the 3-D view renders without a GPU
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
)
TOKEN = "console-e2e-token"


def falling_shape(resolution: int, arm_offset: int = 0) -> np.ndarray:
    """A thin post carrying a long arm at its top: its centre of mass is far outside its base, so it tips."""
    n = resolution
    occ = np.zeros((n, n, n), dtype=bool)
    post = slice(n // 8, n // 4)
    occ[post, n // 2 - 2 : n // 2 + 2, : (5 * n) // 8] = True
    occ[n // 8 : n - 2 - arm_offset, n // 2 - 4 : n // 2 + 4, (5 * n) // 8 : (3 * n) // 4] = True
    return occ


def feed_falling_shapes(broker: Broker, settings: Settings, count: int) -> list[str]:
    """Put ``count`` falling shapes on the samples stream under the first prompt; returns their sample ids."""
    prompt_id = broker.prompts.active()[0]
    flow = settings.model.transformer
    latent_shape = (flow.in_channels, flow.resolution, flow.resolution, flow.resolution)
    rng = np.random.default_rng(0)
    ids = []
    for index in range(count):
        record = SampleRecord(
            prompt_id=prompt_id, view=0, adapter_version=0, seed=10_000 + index,
            latent=rng.standard_normal(latent_shape).astype(np.float32),
            occupancy=falling_shape(settings.shapes.resolution, arm_offset=index),
        )
        broker.samples.put(record.sample_id, record.to_bytes())
        ids.append(record.sample_id)
    return ids


@dataclass
class RunningLoop:
    """The loop's three roles in threads, plus the API (with the console) on a free port."""

    settings: Settings
    broker: Broker
    run_dir: Path
    stop: threading.Event = field(default_factory=threading.Event)
    threads: dict[str, threading.Thread] = field(default_factory=dict)
    server: ApiServer | None = None

    def start(self) -> RunningLoop:
        seed_default_prompts(self.broker.prompts, self.settings)
        generator = GeneratorWorker(self.broker, self.settings)
        simulator = SimulatorWorker(self.broker, self.settings)
        learner = Learner(self.broker, self.settings, self.run_dir)

        def learner_step() -> bool:
            result = learner.step()
            return result.trained or result.ingested > 0

        steps: dict[str, Callable[[], bool]] = {
            "generator": lambda: generator.step() is not None,
            "simulator": lambda: simulator.step(block_ms=0) > 0,
            "learner": learner_step,
        }
        for name, step in steps.items():
            thread = threading.Thread(
                target=run_until_stopped, args=(step, self.stop, self.settings.loop.idle_sleep_s, name),
                name=f"console-e2e-{name}", daemon=True,
            )
            self.threads[name] = thread
            thread.start()
        checks = {name: thread.is_alive for name, thread in self.threads.items()}
        app = create_app(
            self.settings, self.broker, metrics=LoopMetrics(CollectorRegistry()), component_checks=checks,
            environ={"DSO_API_TOKEN": TOKEN},
        )
        self.server = ApiServer(app, port=0).start(announce=False)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def stop_workers(self, timeout_s: float = 30.0) -> None:
        self.stop.set()
        for thread in self.threads.values():
            thread.join(timeout_s)

    def stop_api(self) -> None:
        if self.server is not None:
            self.server.stop()

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the loop did not reach '{what}' within {timeout_s} s")
            if not all(t.is_alive() for t in self.threads.values()):
                raise RuntimeError(f"a loop thread died while waiting for '{what}'")
            time.sleep(0.2)


def browser(width: int, height: int):
    """Headless Debian Chromium driven by Selenium through Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def set_screen(driver, width: int, height: int = 900, mobile: bool = False) -> None:
    """Emulate a screen ``width`` x ``height`` CSS px (media queries follow it)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def save_full_page(
    driver, path: Path, width: int, mobile: bool = False, ready_js: str = "true", timeout_s: float = 20.0
) -> tuple[int, int]:
    """Grow the emulated screen to the page's height and save one PNG of the whole page once ``ready_js`` holds.

    Returns the page's scroll width and height.
    """
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    set_screen(driver, width, height, mobile)
    time.sleep(0.5)  # let the 3-D view and the chart follow the new size
    deadline = time.monotonic() + timeout_s
    while not driver.execute_script(f"return ({ready_js});"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page was not ready for its screenshot within {timeout_s} s: {ready_js}")
        time.sleep(0.1)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    scroll_width = int(driver.execute_script("return document.documentElement.scrollWidth"))
    set_screen(driver, width, 900, mobile)
    return scroll_width, height


DROP_FILE_JS = """
const [name, type, b64, zoneId] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, { type }));
const zone = document.getElementById(zoneId);
for (const kind of ['dragenter', 'dragover', 'drop']) {
  zone.dispatchEvent(new DragEvent(kind, { dataTransfer: transfer, bubbles: true, cancelable: true }));
}
"""


def drop_file(driver, name: str, content_type: str, data: bytes, zone_id: str = "drop-zone") -> None:
    """Drag and drop one file onto the page's drop zone, as a user's drag from the desktop would."""
    driver.execute_script(DROP_FILE_JS, name, content_type, base64.b64encode(data).decode(), zone_id)
