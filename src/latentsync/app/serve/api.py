"""The HTTP API of `latentsync serve` (FastAPI; the OpenAPI schema is at /openapi.json, docs at /docs).

    POST   /jobs               submit: multipart uploads `video` (+ `audio`), or server-side `video_path`
                               (+ `audio_path`) inside an allowed folder; options `model`, `steps`, `guidance`,
                               `seed`, `face`  -> 202 and the job's status (Location: /jobs/<id>)
    GET    /jobs/{id}          status, queue position and progress in frames
    GET    /jobs/{id}/result   the lip-synced MP4 once the job is done (409 before)
    DELETE /jobs/{id}          cancel a queued or running job; delete a finished one and its result
    GET    /health             loaded models and job counts
    GET    /live, WS /live/ws  live lip-sync (with --live-avatar): the page and its WebSocket, see `live.py`

Every error is JSON `{"detail": "<one line>"}`: 400 malformed multipart body, 403 path outside the allowed
folders, 404 unknown or expired job, 409 no result (yet), 413 upload over the size limit, 422 bad options or
unusable media (the pipeline's own message), 503 queue full.
"""

from __future__ import annotations

import shutil
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Literal

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentsync.app.serve.jobs import DONE, Job, is_job_id, new_job_id, upload_name
from latentsync.app.serve.live import LiveHub, add_live_routes
from latentsync.app.serve.service import JobManager, QueueFullError, ServeConfig
from latentsync.audio.load import load_audio
from latentsync.errors import LatentSyncError
from latentsync.models.whisper import SAMPLE_RATE
from latentsync.pipeline.lipsync import RunOptions
from latentsync.video.reader import probe

MAX_STEPS = 100  # beyond this a job only burns the queue: upstream uses 20, and quality saturates well before
MAX_GUIDANCE = 10.0
MAX_CACHE_INTERVAL = 10


class Progress(BaseModel):
    frames_done: int
    frames_total: int
    fraction: float


class JobStatus(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    model: str
    position: int | None  # place in the queue (0 = next), while queued
    progress: Progress
    created: float  # Unix times
    started: float | None
    finished: float | None
    expires: float | None
    error: str | None  # why a failed job failed, in one line
    report: dict[str, Any] | None  # a done job's RunReport: frames, seconds per stage, peak memory
    deleted: bool  # true in the answer to a DELETE that removed a finished job


class Health(BaseModel):
    models: list[str]
    workers: int
    queue_size: int
    jobs: dict[str, int]


class ErrorBody(BaseModel):
    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


class BodyLimit:
    """Answer 413 to a request body over `max_bytes`, by its Content-Length or, when that is absent or wrong,
    as soon as more bytes arrive, so an oversized upload is never stored in full."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = ErrorBody(detail=f"upload larger than the service's limit of {self.max_bytes / 2**20:g} MB")
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse(too_large.model_dump(), 413)(scope, receive, send)
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # whatever the app answers to its cut-off body, the client gets the 413
                if not started:
                    started = True
                    await JSONResponse(too_large.model_dump(), 413)(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            await guarded_send({"type": "http.response.start"})


class _TooLarge(Exception):
    pass


def create_app(manager: JobManager, live: LiveHub | None = None) -> FastAPI:
    """The FastAPI app over a JobManager (and the live sessions of `live`, when given). Its lifespan starts the
    manager (if not started) and stops it."""
    config = manager.config

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not manager.started:
            manager.start()
        yield
        manager.stop()

    app = FastAPI(title="latentsync", summary="Lip-sync a video to new speech", version="1", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=int(config.max_upload_mb * 2**20))

    @app.exception_handler(RequestValidationError)
    async def one_line_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, 422)

    @app.exception_handler(405)
    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        """Starlette's 405 names only the first route matching the path; list every method it has."""
        allowed = {m for r in app.routes if isinstance(r, APIRoute) and r.path_regex.match(request.url.path)
                   for m in r.methods}
        return JSONResponse({"detail": "method not allowed"}, 405, headers={"Allow": ", ".join(sorted(allowed))})

    @app.post("/jobs", status_code=202, response_model=JobStatus, responses=_errors(400, 403, 413, 422, 503))
    def submit_job(
        video: Annotated[UploadFile | None, File(description="the face video or image")] = None,
        audio: Annotated[UploadFile | None, File(description="the speech (default: the video's soundtrack)")] = None,
        video_path: Annotated[str | None, Form(description="a server-side video, inside an allowed folder")] = None,
        audio_path: Annotated[str | None, Form(description="a server-side audio file, inside an allowed folder")] = None,
        model: Annotated[str | None, Form(description="one of the service's models (default: the first)")] = None,
        steps: Annotated[int | None, Form(ge=1, le=MAX_STEPS, description="denoising steps")] = None,
        guidance: Annotated[float | None, Form(ge=1.0, le=MAX_GUIDANCE, description="guidance scale")] = None,
        seed: Annotated[int, Form(ge=0, le=2**63 - 1)] = 1247,
        face: Annotated[str, Form(max_length=32, description="largest, N (N-th face from the left) or x,y")] = "largest",
        sampler: Annotated[Literal["ddim", "dpm++", "ddim-trailing"] | None,
                           Form(description="ddim (upstream), dpm++ (8-12 steps), ddim-trailing (1-4 steps, "
                                            "distilled students); default: the model's")] = None,
        cache_interval: Annotated[int, Form(ge=1, le=MAX_CACHE_INTERVAL,
                                            description="DeepCache: deep U-Net levels every N-th step")] = 1,
    ) -> JSONResponse:
        if not manager.has_room():
            raise HTTPException(503, f"the queue is full ({config.queue_size} jobs); retry later")
        model = model or config.models[0]
        if model not in config.models:
            raise HTTPException(422, f"model {model!r} is not served here (served: {', '.join(config.models)})")
        if (video is None) == (video_path is None):
            raise HTTPException(422, "give exactly one of a `video` upload or a `video_path`")
        if audio is not None and audio_path is not None:
            raise HTTPException(422, "give at most one of an `audio` upload or an `audio_path`")
        try:
            options = RunOptions(steps=steps, guidance=guidance, seed=seed, face=face, sampler=sampler,
                                 cache_interval=cache_interval)
        except LatentSyncError as exc:
            raise HTTPException(422, str(exc)) from None
        job_id = new_job_id()
        incoming = manager.store.incoming(job_id)
        try:
            kept = ("steps", "guidance", "seed", "face", "sampler", "cache_interval")
            job = Job(job_id, model, {k: getattr(options, k) for k in kept}, "")
            job.video = _take(video, video_path, "video", incoming, job)
            job.audio = _take(audio, audio_path, "audio", incoming, job)
            _check_media(incoming / job.video, None if job.audio is None else incoming / job.audio, config.max_seconds)
            status = manager.submit(job, incoming)
        except QueueFullError as exc:
            shutil.rmtree(incoming, ignore_errors=True)
            raise HTTPException(503, str(exc)) from None
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        return JSONResponse(status, 202, headers={"Location": f"/jobs/{job_id}"})

    def _take(upload: UploadFile | None, path: str | None, role: str, incoming: Path, job: Job) -> str | None:
        """Store an upload under a name of ours, or check a server-side path; return what the job records."""
        if upload is not None:
            name = upload_name(role, upload.filename)
            with open(incoming / name, "wb") as out:
                shutil.copyfileobj(upload.file, out, 1 << 20)
            job.uploaded.append(name)
            return name
        if path is None:
            return None
        if not config.allowed_dirs:
            raise HTTPException(403, f"{role}_path: server-side paths are disabled (start with --allow-path DIR)")
        if "\x00" in path:
            raise HTTPException(422, f"{role}_path: not a valid path")
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(d.resolve()) for d in config.allowed_dirs):
            raise HTTPException(403, f"{role}_path: outside the folders this service may read")
        try:
            found = resolved.is_file()
        except OSError:  # e.g. a name too long for the file system
            found = False
        if not found:
            raise HTTPException(422, f"{role}_path: no such file")
        return str(resolved)

    def _status_or_404(job_id: str) -> dict[str, Any]:
        status = manager.status(job_id) if is_job_id(job_id) else None
        if status is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown, deleted or expired)")
        return status

    @app.get("/jobs/{job_id}", response_model=JobStatus, responses=_errors(404))
    def job_status(job_id: str) -> dict[str, Any]:
        return _status_or_404(job_id)

    @app.get(
        "/jobs/{job_id}/result",
        response_class=FileResponse,
        responses={200: {"content": {"video/mp4": {}}, "description": "the lip-synced video"}, **_errors(404, 409)},
    )
    def job_result(job_id: str) -> FileResponse:
        status = _status_or_404(job_id)
        if status["status"] != DONE:
            raise HTTPException(409, f"job {job_id} is {status['status']}: no result")
        return FileResponse(
            manager.result_path(job_id), media_type="video/mp4", filename=f"{job_id}.mp4",
            background=BackgroundTask(manager.fetched, job_id),
        )

    @app.delete("/jobs/{job_id}", response_model=JobStatus, responses=_errors(404))
    def cancel_job(job_id: str) -> dict[str, Any]:
        status = manager.cancel(job_id) if is_job_id(job_id) else None
        if status is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown, deleted or expired)")
        return status

    add_live_routes(app, live)

    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(models=config.models, workers=config.workers, queue_size=config.queue_size, jobs=manager.counts())

    return app


def _check_media(video: Path, audio: Path | None, max_seconds: float) -> None:
    """422 for media the pipeline could not use or that is too long, before the job takes a queue slot."""
    try:
        info = probe(video)
        seconds = len(load_audio(audio or video, SAMPLE_RATE)) / SAMPLE_RATE
    except LatentSyncError as exc:
        raise HTTPException(422, _without_folder(str(exc), video.parent)) from None
    if not info.is_image and info.duration > max_seconds:
        raise HTTPException(422, f"the video is {info.duration:.0f} s long; this service takes at most {max_seconds:g} s")
    if seconds > max_seconds:
        raise HTTPException(422, f"the audio is {seconds:.0f} s long; this service takes at most {max_seconds:g} s")


def _without_folder(message: str, folder: Path) -> str:
    """Pipeline messages name the file; the service's own folders are nobody's business but its own."""
    return message.replace(f"{folder}/", "")


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load the models (a bad `--model` fails here, before the port opens), then serve until stopped."""
    import uvicorn

    manager = JobManager(config)
    manager.start()
    live = None
    if config.live_avatars:  # prepared now: a bad avatar fails here, before the port opens
        live = LiveHub(manager.pipelines.get(config.models[0]), config.live_avatars, config.live_sessions)
    uvicorn.run(create_app(manager, live), host=host, port=port, log_level="info")
