"""The web console end to end: a running loop on the embedded default, driven in headless Chromium.

Checks what a user sees: the chart has data, adapter markers and the canary's score per
version, the adapter link and its "promoted vN" label follow the promoted version, the gallery shows
samples with verdict badges that match the API, the filters work, a sample opens in
the 3-D view (upright and resting pose), a dropped PNG appears in the prompt list, a
dropped text file shows the API's own 415 message, the page fits 1280 px and 390 px,
and a stopped loop or API gives a banner, not a blank page.

The screenshots go to the test's temp dir: a test run never rewrites committed files.
``python scripts/console_screenshots.py`` (which sets ``DSO_WRITE_SCREENSHOTS=1``) writes
them to docs/console.png and docs/console-mobile.png instead.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest_broker import make_settings
from PIL import Image
from prometheus_client import CollectorRegistry

from dso.api.app import create_app
from dso.api.server import ApiServer
from dso.broker import Broker
from dso.broker.promotion import CanaryRecord, Decision
from dso.broker.server import EmbeddedValkey
from dso.config import Settings
from dso.telemetry import LoopMetrics
from test_console_support import (
    CHROMEDRIVER,
    CHROMIUM,
    TOKEN,
    RunningLoop,
    browser,
    drop_file,
    feed_falling_shapes,
    save_full_page,
    set_screen,
)
from test_loop_support import export_random_tiny_model, loop_test_settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="chromium/chromedriver not installed (apt-get install chromium chromium-driver; "
        "CI runs scripts/ci-system-deps.sh)",
    ),
]
DOCS = Path(__file__).resolve().parent.parent / "docs"
SCREENSHOTS_ENV = "DSO_WRITE_SCREENSHOTS"  # "1": write the screenshots to docs/ (scripts/console_screenshots.py)
DESKTOP, MOBILE = 1280, 390
UI_TIMEOUT_S = 20.0
THUMBS_LOADED = ("[...document.querySelectorAll('.sample-card img')].every("
                 "i => i.getAttribute('src') && i.complete && i.naturalWidth > 0)")


def wait_js(driver, script: str, timeout_s: float = UI_TIMEOUT_S, what: str = ""):
    """Poll a JS expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        if time.monotonic() > deadline:
            banner = driver.execute_script("return document.getElementById('banner').textContent")
            raise AssertionError(f"page never showed {what or script!r} within {timeout_s} s (banner: {banner!r})")
        time.sleep(0.2)


def without_addresses(text: str) -> str:
    return re.sub(r"0x[0-9a-f]+", "0x?", text)


def wait_promoted_shown(driver, broker: Broker, timeout_s: float = UI_TIMEOUT_S) -> int:
    """The label and the download link name the broker's promoted version; returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        promoted = broker.promotion.promoted()
        label, link = driver.execute_script("return [document.getElementById('promoted-label').textContent, "
                                            "document.getElementById('adapter-link').getAttribute('href')]")
        if label == f"promoted v{promoted}" and link == f"/v1/adapters/{promoted}/archive":
            return promoted
        if time.monotonic() > deadline:
            raise AssertionError(f"label {label!r} and link {link!r} never showed promoted v{promoted}")
        time.sleep(0.2)


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def loop(tmp_path: Path, valkey_server):
    model = export_random_tiny_model(tmp_path / "model")
    broker_values = make_settings(
        tmp_path, redis_url=valkey_server.url, max_backlog=16, replay_capacity=256, read_block_ms=0
    ).model_dump()
    settings = loop_test_settings(model, broker_values, publish_every=2, default_prompts=2)
    broker = Broker.open(settings.broker)
    running = RunningLoop(settings, broker, tmp_path / "run").start()
    try:
        yield running
    finally:
        running.stop_workers()
        running.stop_api()
        broker.close()


def screenshot_dir(tmp_path: Path) -> Path:
    """docs/ only when asked for with DSO_WRITE_SCREENSHOTS=1; the test's own temp dir otherwise."""
    if os.environ.get(SCREENSHOTS_ENV) == "1":
        return DOCS
    (tmp_path / "screenshots").mkdir(exist_ok=True)
    return tmp_path / "screenshots"


def test_console_shows_the_loop_learning(loop, tmp_path: Path):
    shots = screenshot_dir(tmp_path)
    broker = loop.broker
    feed_falling_shapes(broker, loop.settings, count=3)
    loop.wait_for(lambda: broker.replay.counts()["unstable"] >= 2 and broker.replay.counts()["stable"] >= 4,
                  60, "both verdicts in the replay buffer")
    loop.wait_for(lambda: (broker.adapters.latest() or 0) >= 2, 60, "two published adapters")
    # the canary's part (no canary runs in this loop): the base model's reference, v1 passes the gate, v2 does not
    broker.promotion.record(CanaryRecord(version=0, decision=Decision.baseline, scores={"stable_ratio": 0.5}))
    broker.promotion.record(CanaryRecord(version=1, decision=Decision.promoted, scores={"stable_ratio": 0.75},
                                         reasons=["within every bound"]))
    broker.promotion.record(CanaryRecord(version=2, decision=Decision.refused, scores={"stable_ratio": 0.6},
                                         reasons=["stable 0.60 below the promoted 0.75"]))

    driver = browser(DESKTOP, 900)
    try:
        driver.get(loop.url + "/")
        driver.execute_script("sessionStorage.setItem('dso.console.token', arguments[0])", TOKEN)
        driver.refresh()

        # the chart shows data, with the published adapter versions marked
        wait_js(driver, "Number(document.getElementById('chart').dataset.points) > 0", what="chart points")
        wait_js(driver, "Number(document.getElementById('chart').dataset.versions) >= 1", what="adapter markers")
        assert driver.execute_script("return document.querySelectorAll('#chart .rate-line').length") == 1
        window_rate = driver.execute_script("return document.getElementById('fig-window').textContent")
        assert window_rate.endswith("%"), window_rate
        link = wait_js(driver, "document.getElementById('adapter-link').getAttribute('aria-disabled') === 'false' "
                               "&& document.getElementById('adapter-link').getAttribute('href')", what="adapter link")
        assert link.startswith("/v1/adapters/") and link.endswith("/archive")
        # the canary's score per version is on the chart, and the link follows the promoted version, not the newest
        wait_js(driver, "document.querySelector('#chart .canary-mark.promoted[data-version=\"1\"]') && "
                        "document.querySelector('#chart .canary-mark.refused[data-version=\"2\"]') && "
                        "document.querySelector('#chart .canary-mark.baseline[data-version=\"0\"]')",
                what="the canary's markers")
        assert driver.execute_script("return document.querySelectorAll('#chart .canary-line').length") == 1
        assert "canary" in driver.execute_script("return document.getElementById('chart-caption').textContent")
        wait_promoted_shown(driver, broker)

        # the gallery shows the newest samples with verdict badges that agree with the API (which verdicts depends on
        # how many samples the generator made since the falling shapes: the verdict filter below finds those)
        wait_js(driver, "document.querySelectorAll('.sample-card .badge.unstable, .sample-card .badge.stable').length >= 4",
                what="verdict badges")
        cards = driver.execute_script(
            "return [...document.querySelectorAll('.sample-card')].map(c => "
            "[c.dataset.sampleId, c.querySelector('.badge').textContent, c.querySelector('.sample-meta').textContent])"
        )
        api = httpx.Client(base_url=loop.url, timeout=10)
        checked = 0
        for sample_id, badge, meta in cards[:8]:
            answer = api.get(f"/v1/samples/{sample_id}")
            if answer.status_code == 404:
                continue  # evicted from the replay buffer since the page listed it
            truth = answer.json()
            assert badge == ("stable" if truth["stable"] else "unstable")
            assert f"tilt {truth['tilt_deg']:.1f}°" in meta and f"v{truth['adapter_version']}" in meta
            checked += 1
        assert checked >= 4
        wait_js(driver, THUMBS_LOADED, what="every thumbnail loaded")

        # filter by verdict, then by prompt
        driver.execute_script("const s = document.getElementById('filter-verdict'); s.value = 'unstable';"
                              "s.dispatchEvent(new Event('change'));")
        wait_js(driver, "[...document.querySelectorAll('.sample-card')].length > 0 && "
                        "[...document.querySelectorAll('.sample-card')].every(c => c.dataset.verdict === 'unstable')",
                what="only unstable cards")
        wait_js(driver, "document.querySelectorAll('.sample-card .thumbs figure').length >= 3",
                what="a resting-pose thumbnail")

        # open an unstable sample in the 3-D view, then its final resting pose
        driver.execute_script("document.querySelector('.sample-card').click()")
        first = driver.execute_script("return document.querySelector('.sample-card').dataset.sampleId")
        mode = wait_js(driver, f"document.getElementById('viewer').dataset.loaded === '{first}:upright' && 'webgl' "
                               "|| document.getElementById('viewer').dataset.mode === 'fallback' && 'fallback'",
                       what="the 3-D view")
        assert not driver.execute_script("return document.getElementById('pose-resting').disabled")
        driver.execute_script("document.getElementById('pose-resting').click()")
        wait_js(driver, f"document.getElementById('viewer').dataset.pose === 'resting' && "
                        f"(document.getElementById('viewer').dataset.loaded === '{first}:resting' || "
                        "document.getElementById('viewer').dataset.mode === 'fallback')", what="the resting pose")
        assert "final resting pose" in driver.execute_script("return document.getElementById('viewer-caption').textContent")

        prompt_of_first = api.get(f"/v1/samples/{first}").json()["prompt_id"]
        driver.execute_script(
            "const v = document.getElementById('filter-verdict'); v.value = '';"
            "const p = document.getElementById('filter-prompt'); p.value = arguments[0];"
            "p.dispatchEvent(new Event('change'));", prompt_of_first)
        wait_js(driver, "[...document.querySelectorAll('.sample-card')].length > 0 && [...document.querySelectorAll("
                        f"'.sample-card')].every(c => c.dataset.promptId === '{prompt_of_first}')", what="cards of one prompt")

        # drag-and-drop upload: a PNG appears in the prompt list ...
        image = png_bytes(seed=7)
        prompt_id = hashlib.sha256(image).hexdigest()
        drop_file(driver, "dropped.png", "image/png", image)
        wait_js(driver, "document.getElementById('upload-message').classList.contains('ok')", what="upload accepted")
        wait_js(driver, f"document.querySelector('#prompt-list li[data-prompt-id=\"{prompt_id}\"]')",
                what="the uploaded prompt in the list")
        assert broker.prompts.exists(prompt_id)
        # ... and a text file named .png shows the API's own message
        text = b"these are notes, not an image\n"
        expected = api.post("/v1/prompts", files={"images": ("notes.png", text, "image/png")},
                            headers={"Authorization": f"Bearer {TOKEN}"})
        assert expected.status_code == 415
        drop_file(driver, "notes.png", "image/png", text)
        message = wait_js(driver, "document.getElementById('upload-message').classList.contains('error') && "
                                  "document.getElementById('upload-message').textContent", what="upload refused")
        # (the detail quotes Pillow's error, which names a buffer's address: compare without addresses)
        assert without_addresses(expected.json()["detail"]) in without_addresses(message) and "415" in message

        # usable at 1280 px and at 390 px: nothing wider than the screen
        driver.execute_script("const p = document.getElementById('filter-prompt'); p.value = '';"
                              "p.dispatchEvent(new Event('change'));")
        wait_js(driver, "document.querySelectorAll('.sample-card .badge.stable').length >= 1", what="all cards again")
        set_screen(driver, DESKTOP)
        wait_js(driver, f"document.querySelectorAll('.sample-card').length > 8 && {THUMBS_LOADED}", what="desktop gallery")
        wide, _ = save_full_page(driver, shots / "console.png", DESKTOP, ready_js=THUMBS_LOADED)
        assert wide <= DESKTOP
        set_screen(driver, MOBILE, mobile=True)
        wait_js(driver, f"document.querySelectorAll('.sample-card').length <= 8 && {THUMBS_LOADED}", what="phone gallery")
        narrow, _ = save_full_page(driver, shots / "console-mobile.png", MOBILE, mobile=True, ready_js=THUMBS_LOADED)
        assert narrow <= MOBILE, f"the page is {narrow} px wide on a {MOBILE} px screen"
        columns = driver.execute_script(
            "return getComputedStyle(document.querySelector('.layout')).gridTemplateColumns.split(' ').length")
        assert columns == 1, "one column on a phone"
        for name, width in (("console.png", DESKTOP), ("console-mobile.png", MOBILE)):
            with Image.open(shots / name) as shot:
                assert shot.width == width and shot.height > 600

        # graceful degradation: a stopped loop, then a stopped API, each get a banner, not a blank page
        loop.stop_workers()
        # the workers stop one by one, so wait until the banner names all three
        banner = wait_js(driver, "!document.getElementById('banner').hidden && "
                                 "document.getElementById('banner').textContent.includes('not running') && "
                                 "document.getElementById('banner').textContent.includes('generator: not alive') && "
                                 "document.getElementById('banner').textContent", what="the loop-stopped banner")
        assert all(f"{role}: not alive" in banner for role in ("generator", "simulator", "learner")), banner
        assert driver.execute_script("return document.getElementById('loop-state').textContent") == "loop stopped"
        loop.stop_api()
        wait_js(driver, "document.getElementById('banner').dataset.level === 'error' && "
                        "document.getElementById('banner').textContent.includes('does not answer')",
                what="the API-down banner")
        assert driver.execute_script("return document.querySelectorAll('.sample-card').length") > 0, \
            "the last data stays on screen"
        print(f"3-D view mode: {mode}")
    finally:
        driver.quit()


def test_console_says_so_when_the_broker_is_down(tmp_path: Path):
    """An API whose Redis has gone: the page loads and explains, instead of staying blank."""
    with EmbeddedValkey(tmp_path / "valkey") as server:
        settings = Settings(broker=make_settings(tmp_path, redis_url=server.url))
        broker = Broker.open(settings.broker)
        api = ApiServer(create_app(settings, broker, metrics=LoopMetrics(CollectorRegistry())), port=0).start(
            announce=False
        )
        server.stop()
        driver = browser(DESKTOP, 900)
        try:
            driver.get(api.url + "/")
            banner = wait_js(driver, "document.getElementById('banner').dataset.level === 'error' && "
                                     "document.getElementById('banner').textContent", what="the broker-down banner")
            assert "cannot reach the loop's broker" in banner and "Redis unreachable" in banner
            assert driver.execute_script("return document.getElementById('loop-state').textContent") == "broker down"
            assert driver.execute_script("return document.getElementById('gallery-panel').offsetHeight") > 0
        finally:
            driver.quit()
            api.stop()
            broker.close()
