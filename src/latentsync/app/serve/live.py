"""Live lip-sync over a WebSocket, and the page that uses it: `latentsync serve --live-avatar VIDEO`.

    GET /live                   the page: microphone or a speech file in, the talking avatar out, played live
    GET /live/avatars           {"avatars": [...], "sessions": max, "active": n}
    WS  /live/ws?avatar=NAME[&chunk=16][&lookahead=4][&steps=N]

Why a WebSocket and not WebRTC: a lip-synced frame must be shown with the audio it was made for, and here every
frame carries its presentation time on the audio's own clock, exactly; WebRTC would re-encode the frames with a
video codec on the same CPU that runs the model, jitter-buffer them on its own clock and need ICE/STUN set-up to
cross a NAT, for a stream whose rate the model, not the network, limits. A WebSocket passes any proxy that passes
HTTP and is a few lines in any language.

Protocol, after the connection opens:
- server -> client, text: {"type": "ready", "fps": 25, "sample_rate": 16000, "width", "height", "avatar",
  "chunk_frames", "sampling"};
- client -> server, binary: audio, 16-bit little-endian PCM, 16 kHz mono, any length per message;
  text {"type": "end"}: no more audio (the last frames are made, then the server closes);
- server -> client, binary: a 4-byte big-endian frame index i, then the frame as JPEG; show it at i / 25 s on the
  clock of the audio sent;
- server -> client, text at the end: {"type": "end", "made", "skipped", "dropped"}; on a problem
  {"type": "error", "detail": "<one line>"}, then the socket closes with that line as its reason: 1013 when every
  session is taken, 1007 for malformed audio, 1008 for a bad request, 1011 for a failure of ours.
A client that disconnects frees its session at once; one that reads too slowly loses frames, not memory.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from importlib import resources
from pathlib import Path

import cv2
from fastapi import FastAPI, WebSocket
from fastapi.responses import HTMLResponse
from starlette.websockets import WebSocketDisconnect

from latentsync.errors import AudioError, ConfigError, LatentSyncError
from latentsync.live import Avatar, LiveOptions, LiveSession
from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions

JPEG_QUALITY = 85
MAX_STEPS = 50
CLOSE_BUSY, CLOSE_BAD_AUDIO, CLOSE_BAD_REQUEST, CLOSE_FAILURE = 1013, 1007, 1008, 1011


class LiveHub:
    """The live side of a service: one pipeline, its avatars (prepared once, at start) and a bound on sessions."""

    def __init__(self, pipeline: LipSyncPipeline, avatar_paths: list[Path], max_sessions: int = 2) -> None:
        if max_sessions < 1:
            raise ConfigError(f"--live-sessions must be at least 1, got {max_sessions}")
        self.pipeline = pipeline
        self.max_sessions = max_sessions
        self.avatars: dict[str, Avatar] = {}
        for path in avatar_paths:
            if path.stem in self.avatars:
                raise ConfigError(f"--live-avatar: two avatars are called {path.stem!r}; rename one")
            self.avatars[path.stem] = Avatar.open(path, pipeline.models.resolution)
        self.active = 0
        self._lock = threading.Lock()

    def open(self, avatar: str, options: RunOptions, live: LiveOptions) -> LiveSession:
        """A new session, or LiveBusy when `max_sessions` are running, or ConfigError for an unknown avatar."""
        if avatar not in self.avatars:
            raise ConfigError(f"no avatar {avatar!r} here (avatars: {', '.join(self.avatars)})")
        with self._lock:
            if self.active >= self.max_sessions:
                raise LiveBusy(f"the server is busy: {self.max_sessions} live session(s) at most; try again later")
            self.active += 1
        try:
            return LiveSession(self.pipeline, self.avatars[avatar], options, live)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        with self._lock:
            self.active -= 1


class LiveBusy(LatentSyncError):
    """Every live session is taken."""


def add_live_routes(app: FastAPI, hub: LiveHub | None) -> None:
    """The page, the avatar list and the WebSocket. Without a hub (no --live-avatar) they say how to turn it on."""
    off = "live mode is off: start `latentsync serve` with --live-avatar VIDEO"

    @app.get("/live", response_class=HTMLResponse, include_in_schema=False)
    def live_page() -> HTMLResponse:
        return HTMLResponse(resources.files("latentsync.app.serve").joinpath("live.html").read_text())

    @app.get("/live/avatars")
    def live_avatars() -> dict[str, object]:
        if hub is None:
            return {"avatars": [], "sessions": 0, "active": 0, "detail": off}
        return {"avatars": list(hub.avatars), "sessions": hub.max_sessions, "active": hub.active}

    @app.websocket("/live/ws")
    async def live_socket(ws: WebSocket) -> None:
        await ws.accept()
        if hub is None:
            return await _refuse(ws, CLOSE_BAD_REQUEST, off)
        try:
            query = ws.query_params
            options = RunOptions(steps=_int(query, "steps", 1, MAX_STEPS))
            chunk, lookahead = _int(query, "chunk", 1, 16), _int(query, "lookahead", 0, 25)
            live = LiveOptions(**({} if chunk is None else {"chunk_frames": chunk}),
                               **({} if lookahead is None else {"lookahead_frames": lookahead}))
            session = hub.open(query.get("avatar") or next(iter(hub.avatars)), options, live)
        except LiveBusy as exc:
            return await _refuse(ws, CLOSE_BUSY, str(exc))
        except LatentSyncError as exc:
            return await _refuse(ws, CLOSE_BAD_REQUEST, str(exc))
        try:
            await _stream(ws, session)
        finally:
            hub.release()  # the slot is free at once; the worker ends after the chunk in hand
            await asyncio.to_thread(session.close)


def _int(query: object, name: str, low: int, high: int) -> int | None:
    text = query.get(name)  # type: ignore[attr-defined]
    if text is None:
        return None
    if not text.isdigit() or not low <= int(text) <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {text!r}")
    return int(text)


async def _refuse(ws: WebSocket, code: int, detail: str) -> None:
    """Tell the client why in one line, and close. A client that already left is not told."""
    try:
        await ws.send_text(json.dumps({"type": "error", "detail": detail}))
        await ws.close(code, detail.encode()[:123].decode(errors="ignore"))  # a close reason has 123 bytes at most
    except (WebSocketDisconnect, RuntimeError):
        pass


async def _stream(ws: WebSocket, session: LiveSession) -> None:
    """Receive audio and send frames until the stream is over, the client leaves or something fails."""
    width, height = session.avatar.size
    await ws.send_text(json.dumps({"type": "ready", "fps": 25, "sample_rate": 16000, "width": width,
                                   "height": height, "avatar": session.avatar.name,
                                   "chunk_frames": session.live.chunk_frames, "sampling": session.sampling}))
    receiver = asyncio.create_task(_receive(ws, session))
    sender = asyncio.create_task(_send(ws, session))
    # Until either fails (the client left, bad audio, a failure) or both are through (the end message, then the
    # last frame sent).
    done, pending = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:
        task.cancel()
    failure = next((t.exception() for t in done if t.exception() is not None), None)
    if failure is None or isinstance(failure, (WebSocketDisconnect, OSError)):  # through, or the client left
        return
    if isinstance(failure, AudioError):
        await _refuse(ws, CLOSE_BAD_AUDIO, str(failure))
    elif isinstance(failure, LatentSyncError):
        await _refuse(ws, CLOSE_BAD_REQUEST, str(failure))
    else:
        await _refuse(ws, CLOSE_FAILURE, f"the live session failed: {type(failure).__name__}: {failure}")
        raise failure


async def _receive(ws: WebSocket, session: LiveSession) -> None:
    """Audio in until the client's end message (or it leaves: WebSocketDisconnect)."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        if message.get("bytes") is not None:
            session.push(message["bytes"])
            continue
        try:
            command = json.loads(message.get("text") or "")
        except json.JSONDecodeError:
            command = None
        if not isinstance(command, dict) or command.get("type") != "end":
            raise AudioError('text messages must be {"type": "end"}; audio goes in binary messages')
        session.end()
        return


async def _send(ws: WebSocket, session: LiveSession) -> None:
    """Frames out as they come; the end message once the session is over, then close."""
    while True:
        frame = await asyncio.to_thread(session.get, 0.25)
        if frame is None:
            if session.finished:
                break
            continue
        ok, jpeg = await asyncio.to_thread(
            cv2.imencode, ".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        await ws.send_bytes(struct.pack(">I", frame.index) + jpeg.tobytes())
    stats = session.stats
    await ws.send_text(json.dumps({"type": "end", "made": stats.made, "skipped": stats.skipped,
                                   "dropped": stats.dropped}))
    await ws.close(1000)
