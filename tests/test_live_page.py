"""The live page in a real (headless) Chromium: `latentsync serve --live-avatar` as a user starts it, the browser's
microphone fed from a speech file (Chromium's fake capture device), the avatar's frames coming back and played."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from media.clips import write_clip
from media.faces import astronaut_frames
from media.servers import free_port, serving
from media.speech import speech, write_audio
from test_app_ui import CHROMIUM, CHROMIUM_ARGS

RATE = 16000
STREAM_SECONDS = 2.0

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("LATENTSYNC_REQUIRE_BROWSER"),
    reason=f"no Chromium at {CHROMIUM} to drive the page with (Debian: apt-get install chromium)",
)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("live-page")
    wav = speech("Hello there, how are you today? I am fine, thank you.", rate=48000)
    return {
        "avatar": write_clip(d / "anna.mp4", astronaut_frames(25, size=(320, 240), fps=25), fps=25),
        "speech": write_audio(d / "speech.wav", wav, 48000, codec="pcm_s16le"),
        "root": d / "service",
    }


@pytest.fixture(scope="module")
def server(tiny_model, media) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-c", "import sys; from latentsync.cli import main; sys.exit(main())", "serve",
               "--model", str(tiny_model), "--live-avatar", str(media["avatar"]), "--root", str(media["root"]),
               "--port", str(port), "--device", "cpu", "--dtype", "fp32"]
    with serving(command, url + "health", media["root"].parent / "serve.log"):
        yield url


def test_the_microphone_streams_in_and_the_avatar_plays_back(server, media):
    from playwright.sync_api import expect, sync_playwright

    args = CHROMIUM_ARGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                            f"--use-file-for-fake-audio-capture={media['speech']}%noloop",
                            "--autoplay-policy=no-user-gesture-required"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        page = browser.new_page()
        elsewhere: list[str] = []
        page.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:")) else elsewhere.append(r.url))
        page.goto(server + "live")
        expect(page.locator("#avatar option")).to_have_text(["anna"])
        page.locator("#chunk").select_option("16")
        page.locator("#steps").fill("1")
        page.locator("#mic").click()
        page.wait_for_function(f"window.liveState.sent >= {STREAM_SECONDS * RATE}", timeout=30_000)
        page.locator("#stop").click()
        screens = set()  # what the canvas shows while the frames play
        deadline = time.monotonic() + 60
        while not page.evaluate("window.liveState.end !== null && window.liveState.frames.length === 0"):
            assert time.monotonic() < deadline, "the stream did not end"
            screens.add(page.evaluate("document.getElementById('screen').toDataURL()"))
            page.wait_for_timeout(100)
        state = page.evaluate("({sent: liveState.sent, received: liveState.received, lastPts: liveState.lastPts, "
                              "shown: liveState.shown, end: liveState.end, error: liveState.error})")
        browser.close()
    assert not elsewhere, f"the page reached beyond the service: {elsewhere}"
    assert state["error"] == "", state
    frames = math.ceil(state["sent"] / 640)  # the frames the streamed audio needs
    made, skipped = state["end"]["made"], state["end"]["skipped"]
    assert made + skipped == frames and state["received"] == made, state
    assert abs(state["lastPts"] - (frames - 1) / 25) < 1e-6 or skipped, state  # the video lasts as the audio sent
    assert made >= 16 and state["shown"] > 10 and len(screens) > 3, (state, len(screens))  # moving video
