"""The web page, driven in a real (headless) Chromium: upload, pick the speaker, run, watch the result play.

The app runs as `launch()` in a subprocess with the bundled demo model on CPU, exactly as `latentsync app`
serves it. Every request the page makes is recorded, so the test also proves the page needs no internet.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from media.clips import write_clip
from media.faces import astronaut_frames
from media.servers import free_port, serving
from media.speech import speech, write_audio

from latentsync.errors import LatentSyncError
from latentsync.video.reader import probe

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "build" / "test-artifacts" / "app.png"
RATE = 16000
SPEECH_SECONDS = 1.6  # 40 frames: three progress reports (chunks of 16) and a ping-pong loop of the 1 s video
RUN_TIMEOUT_S = 180
APP = ("import sys; from latentsync.app.ui import launch; "
       "launch(['demo'], port=int(sys.argv[1]), device='cpu', dtype='fp32')")

# Skipped without a browser, except in CI (.ci/run installs Chromium and sets the variable): there it must run.
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("LATENTSYNC_REQUIRE_BROWSER"),
    reason=f"no Chromium at {CHROMIUM} to drive the page with (Debian: apt-get install chromium)",
)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app's base URL, served by a subprocess (gradio's uploads kept in a temporary folder)."""
    root = tmp_path_factory.mktemp("app")
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio")}
    url = f"http://127.0.0.1:{port}/"
    with serving([sys.executable, "-c", APP, str(port)], url, root / "app.log", env=env, timeout=90):
        yield url


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A silent 1 s clip of two faces, 1.6 s of speech, and a text file posing as a video."""
    d = tmp_path_factory.mktemp("media")
    wav = speech("Hello there, nice to meet you.", rate=RATE)[: int(SPEECH_SECONDS * RATE)]
    (d / "notes.txt").write_text("not a video\n")
    return {
        "video": write_clip(d / "two.mp4", astronaut_frames(25, size=(640, 360), fps=25, two_faces=True), fps=25),
        "speech": write_audio(d / "speech.wav", wav, RATE),
        "text": d / "notes.txt",
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, app: str) -> Iterator[object]:
    """A fresh page on the app that fails the test if it asks anything of a host other than the app."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    elsewhere: list[str] = []
    page.on("request", lambda r: None if r.url.startswith((app, "data:", "blob:")) else elsewhere.append(r.url))
    page.goto(app)
    yield page
    page.close()
    assert not elsewhere, f"the page reached beyond the app: {elsewhere}"


def test_lipsync_in_the_browser(page, media: dict[str, Path]) -> None:
    from playwright.sync_api import expect

    page.locator("#video-in input[type=file]").set_input_files(str(media["video"]))
    page.locator("#audio-in input[type=file]").set_input_files(str(media["speech"]))
    expect(page.locator("#faces img")).to_have_count(2, timeout=60_000)
    expect(page.locator("#faces")).to_contain_text("face 1")
    page.locator("#faces img").nth(1).click()  # a click on a face makes it the speaker
    expect(page.locator("#face").get_by_label("face 1", exact=True)).to_be_checked()
    steps = page.locator("#steps input[type=number]")
    steps.fill("10")
    steps.press("Enter")
    expect(page.locator("#steps input[type=range]")).to_have_value("10")
    page.get_by_text("Speed", exact=True).click()  # the closed accordion of speed settings
    page.locator("#sampler").get_by_label("dpm++", exact=True).check()
    interval = page.locator("#cache-interval input[type=number]")
    interval.fill("2")
    interval.press("Enter")
    expect(page.locator("#cache-interval input[type=range]")).to_have_value("2")

    page.locator("#run").click()
    seen = set()  # (done, total) frames as the progress bar showed them while the run went on
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not page.locator("#result video").count():
        assert time.monotonic() < deadline, "no result video"
        seen.update(tuple(map(int, m)) for m in re.findall(r"(\d+)/(\d+) frames", page.inner_text("body")))
        page.wait_for_timeout(200)
    assert any(0 < done < total for done, total in seen), f"the progress bar never moved: {sorted(seen)}"

    played = page.evaluate("""async () => {
        const v = document.querySelector('#result video');
        if (v.readyState < 1) await new Promise(r => v.addEventListener('loadedmetadata', r, {once: true}));
        v.muted = true;
        await v.play();
        const start = v.currentTime;
        await new Promise(r => setTimeout(r, 800));
        return {duration: v.duration, start, now: v.currentTime};
    }""")
    assert abs(played["duration"] - SPEECH_SECONDS) < 0.1, played  # the output lasts as long as the speech
    assert played["now"] > played["start"], played
    expect(page.locator("#status textarea")).to_have_value(
        re.compile(r"40 frames, 0 without a face.*; dpm\+\+, 10 steps, guidance 1.5, DeepCache every 2 steps")
    )
    link = page.locator("#download a[href]").first
    body = page.request.get(link.get_attribute("href")).body()
    assert body[4:8] == b"ftyp", "the download is not an MP4"

    page.evaluate("document.querySelector('#result video').pause()")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    if os.environ.get("LATENTSYNC_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(SCREENSHOT, REPO / "docs" / "app.png")


def test_a_bad_upload_shows_its_one_line_error(page, media: dict[str, Path]) -> None:
    from playwright.sync_api import expect

    with pytest.raises(LatentSyncError) as raised:
        probe(media["text"])
    reason = "as a video or image"
    assert reason in str(raised.value)  # the reader's own message, which the page must pass on
    page.locator("#video-in input[type=file]").set_input_files(str(media["text"]))
    expect(page.locator("#status textarea")).to_have_value(re.compile(re.escape(reason)), timeout=30_000)
    page.locator("#run").click()
    error = page.locator(".toast-body.error")
    expect(error).to_contain_text(reason, timeout=30_000)
    expect(error).to_contain_text(media["text"].name)
    expect(page.locator("#result video")).to_have_count(0)
    expect(page.locator("#download a[href]")).to_have_count(0)
