"""`latentsync serve --live-avatar`: the WebSocket protocol, the session bound, bad input and disconnects, driven
in-process with the tiny random model (the page itself is driven in Chromium by test_live_page.py)."""

from __future__ import annotations

import json
import math
import struct
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from media.clips import write_clip
from media.faces import astronaut_frames
from media.speech import speech
from starlette.websockets import WebSocketDisconnect

from latentsync.app.pipelines import PipelineCache
from latentsync.app.serve.api import create_app
from latentsync.app.serve.live import LiveHub
from latentsync.app.serve.service import JobManager, ServeConfig

RATE = 16000


@pytest.fixture(scope="module")
def pipelines() -> PipelineCache:
    return PipelineCache("cpu", "fp32")


@pytest.fixture(scope="module")
def avatar_path(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("avatar") / "anna.mp4",
                      astronaut_frames(25, size=(320, 240), fps=25), fps=25)


@pytest.fixture(scope="module")
def pcm() -> bytes:
    wav = speech("Good morning.", rate=RATE)[: int(0.9 * RATE)]
    return (np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes()


@contextmanager
def client(tmp_path: Path, tiny_model: Path, pipelines: PipelineCache, hub: LiveHub | None) -> Iterator[TestClient]:
    manager = JobManager(ServeConfig(models=[str(tiny_model)], root=tmp_path), pipelines)
    with TestClient(create_app(manager, hub)) as c:
        yield c


@pytest.fixture(scope="module")
def hub(tiny_model, pipelines, avatar_path) -> LiveHub:
    return LiveHub(pipelines.get(str(tiny_model)), [avatar_path], max_sessions=1)


def closing(ws) -> tuple[dict, int]:
    """The error message and the close code that follows it."""
    message = ws.receive_json()
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    return message, closed.value.code


def wait_idle(hub: LiveHub) -> None:
    deadline = time.monotonic() + 30
    while hub.active:
        assert time.monotonic() < deadline, "the session was not freed"
        time.sleep(0.05)


def test_audio_in_frames_out(tmp_path, tiny_model, pipelines, hub, pcm):
    with client(tmp_path, tiny_model, pipelines, hub) as c:
        assert c.get("/live/avatars").json() == {"avatars": ["anna"], "sessions": 1, "active": 0}
        assert "WebSocket" in c.get("/live").text
        with c.websocket_connect("/live/ws?avatar=anna&chunk=8&steps=1") as ws:
            ready = ws.receive_json()
            assert ready == {"type": "ready", "fps": 25, "sample_rate": 16000, "width": 320, "height": 240,
                             "avatar": "anna", "chunk_frames": 8, "sampling": "ddim, 1 steps, guidance 1.5"}
            for at in range(0, len(pcm), 1000):  # uneven pieces, as a client may send them
                ws.send_bytes(pcm[at : at + 1000])
            ws.send_text(json.dumps({"type": "end"}))
            indices, end = [], None
            while end is None:
                message = ws.receive()
                if message.get("bytes") is not None:
                    data = message["bytes"]
                    indices.append(struct.unpack(">I", data[:4])[0])
                    image = cv2.imdecode(np.frombuffer(data[4:], np.uint8), cv2.IMREAD_COLOR)
                    assert image.shape == (240, 320, 3)
                else:
                    end = json.loads(message["text"])
        total = math.ceil(len(pcm) / 2 / 640)
        assert end["type"] == "end" and end["made"] + end["skipped"] == total == len(indices) + end["dropped"]
        assert indices == sorted(indices) and indices[-1] == total - 1
    wait_idle(hub)


def test_a_full_server_refuses_the_next_session(tmp_path, tiny_model, pipelines, hub, pcm):
    with client(tmp_path, tiny_model, pipelines, hub) as c:
        with c.websocket_connect("/live/ws") as first:
            assert first.receive_json()["type"] == "ready"
            with c.websocket_connect("/live/ws") as second:
                message, code = closing(second)
            assert code == 1013 and message == {
                "type": "error", "detail": "the server is busy: 1 live session(s) at most; try again later"}
            assert c.get("/live/avatars").json()["active"] == 1
        wait_idle(hub)  # the first one left: its slot is free again
        with c.websocket_connect("/live/ws") as again:
            assert again.receive_json()["type"] == "ready"
    wait_idle(hub)


@pytest.mark.parametrize("send, reason", [
    (lambda ws: ws.send_bytes(b"\x01\x02\x03"), "audio must be 16-bit PCM: got 3 bytes, an odd count"),
    (lambda ws: ws.send_text("hello"), 'text messages must be {"type": "end"}; audio goes in binary messages'),
])
def test_malformed_audio_closes_the_session_with_its_reason(tmp_path, tiny_model, pipelines, hub, send, reason):
    with client(tmp_path, tiny_model, pipelines, hub) as c:
        with c.websocket_connect("/live/ws") as ws:
            assert ws.receive_json()["type"] == "ready"
            send(ws)
            message, code = closing(ws)
        assert code == 1007 and message == {"type": "error", "detail": reason}
    wait_idle(hub)


def test_a_client_that_leaves_frees_its_session(tmp_path, tiny_model, pipelines, hub, pcm):
    with client(tmp_path, tiny_model, pipelines, hub) as c:
        with c.websocket_connect("/live/ws?chunk=4&steps=1") as ws:
            assert ws.receive_json()["type"] == "ready"
            ws.send_bytes(pcm)  # frames are being made when the client goes
        wait_idle(hub)


@pytest.mark.parametrize("query, detail", [
    ("avatar=bob", "no avatar 'bob' here (avatars: anna)"),
    ("chunk=17", "chunk must be a whole number from 1 to 16, got '17'"),
    ("steps=x", "steps must be a whole number from 1 to 50, got 'x'"),
])
def test_bad_requests_are_refused_in_one_line(tmp_path, tiny_model, pipelines, hub, query, detail):
    with client(tmp_path, tiny_model, pipelines, hub) as c:
        with c.websocket_connect(f"/live/ws?{query}") as ws:
            message, code = closing(ws)
    assert code == 1008 and message == {"type": "error", "detail": detail}
    assert hub.active == 0


def test_live_mode_off_says_how_to_turn_it_on(tmp_path, tiny_model, pipelines):
    with client(tmp_path, tiny_model, pipelines, None) as c:
        assert "--live-avatar" in c.get("/live/avatars").json()["detail"]
        with c.websocket_connect("/live/ws") as ws:
            message, code = closing(ws)
    assert code == 1008 and "--live-avatar VIDEO" in message["detail"]
