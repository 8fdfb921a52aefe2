"""The Gradio page: upload a video (or a still image) and speech, pick the speaker, lip-sync, watch and download.

The page only parses and reports; the work is `LipSyncPipeline.run`'s, on a model loaded once per name by the
shared `PipelineCache`. Inputs are plain files (`gr.File`, `gr.Audio(type="filepath")`) and the output is the
pipeline's H.264/AAC MP4, so no component ever needs an ffmpeg executable: PyAV decodes any container itself.
"""

from __future__ import annotations

import contextvars
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from latentsync.app.pipelines import PipelineCache, model_defaults, preview_faces
from latentsync.errors import LatentSyncError, ModelNotFoundError
from latentsync.models.scheduler import SAMPLERS
from latentsync.pipeline.lipsync import FPS, RunOptions
from latentsync.pipeline.report import Progress

LARGEST = "largest"
STEPS = (1, 50)  # slider min, max; it starts at the model's steps (20 for 1.5/1.6, 1-4 for a distilled student)
GUIDANCE = (1.0, 3.0)  # starts at the model's guidance: upstream's 1.5; 1.0 turns guidance off (students)
INTRO = (
    "Upload a video or a still image of a face and, optionally, the speech to lip-sync it to "
    "(default: the video's own soundtrack). With several people in view, pick the speaker."
)

# System fonts only: the default theme's fonts are served by the app itself, but a page that names no web font
# cannot wait on one, and renders the same offline.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
)


def build_ui(cache: PipelineCache, models: list[str], work_dir: Path) -> gr.Blocks:
    """The page, wired to `cache`; outputs are written to fresh folders under `work_dir`.

    `models` fills the model menu, the first being the default. Raises ModelNotFoundError when it is empty: a
    page whose only button can never work is worse than saying so at start-up.
    """
    if not models:
        raise ModelNotFoundError("no model installed: run `latentsync download` or use the bundled `demo` model")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    # delete_cache: gradio keeps a copy of every upload and result; drop those older than a day, hourly.
    with gr.Blocks(title="LatentSync", analytics_enabled=False, delete_cache=(3600, 86400)) as blocks:
        gr.Markdown(f"# LatentSync lip-sync\n{INTRO}")
        with gr.Row():
            with gr.Column():
                video = gr.File(label="Video or image", file_count="single", type="filepath", elem_id="video-in")
                audio = gr.Audio(
                    label="Speech (optional: default is the video's own soundtrack)",
                    type="filepath",
                    sources=["upload", "microphone"],
                    buttons=[],  # "share" posts to Hugging Face Spaces: nothing a local page should offer
                    elem_id="audio-in",
                )
                faces = gr.Gallery(
                    label="Faces found, left to right (click one to make it the speaker)",
                    columns=5,
                    fit_columns=False,  # thumbnails stay small (caption in view) however few faces there are
                    height=150,
                    allow_preview=False,
                    interactive=False,
                    buttons=[],
                    elem_id="faces",
                )
                face = gr.Radio([LARGEST], value=LARGEST, label="Speaker", elem_id="face")
                with gr.Accordion("Settings", open=True):
                    model = gr.Dropdown(models, value=models[0], label="Model", elem_id="model")
                    defaults = model_defaults(models[0])
                    guidance = gr.Slider(
                        *GUIDANCE, value=defaults.guidance, step=0.1, label="Guidance", elem_id="guidance"
                    )
                    steps = gr.Slider(*STEPS, value=defaults.steps, step=1, label="Denoising steps", elem_id="steps")
                    seed = gr.Number(value=RunOptions.seed, precision=0, label="Seed", elem_id="seed")
                with gr.Accordion("Speed", open=False):
                    sampler = gr.Radio(list(SAMPLERS), value=defaults.sampler, elem_id="sampler",
                                       label="Sampler (ddim: upstream; dpm++: made for 6-12 steps; ddim-trailing: "
                                             "1-4 steps, distilled students)")
                    cache_interval = gr.Slider(1, 4, value=RunOptions.cache_interval, step=1, elem_id="cache-interval",
                                               label="DeepCache: deep U-Net features every N-th step (1 = off)")
                run = gr.Button("Lip-sync", variant="primary", elem_id="run")
            with gr.Column():
                result = gr.Video(label="Result", interactive=False, buttons=["download"], elem_id="result")
                download = gr.File(label="Download", interactive=False, elem_id="download")
                status = gr.Textbox(label="Status", interactive=False, lines=2, elem_id="status")

        # Face detection must not wait behind a long lip-sync run: it gets a queue lane of its own.
        video.change(_show_faces, video, [faces, face, status], concurrency_id="faces", concurrency_limit=1)
        faces.select(_pick_face, None, face, queue=False)
        model.change(_model_settings, model, [guidance, steps, sampler], queue=False)
        # Clear the last result first: after a failed run no earlier output should look like its result.
        run.click(lambda: (None, None, ""), None, [result, download, status], queue=False).then(
            _runner(cache, work_dir), [video, audio, model, guidance, steps, seed, face, sampler, cache_interval],
            [result, download, status],
        )
    return blocks


def _show_faces(video: str | None) -> tuple[list[tuple[Any, str]], dict[str, Any], str]:
    """Gallery items, the speaker choices and a status line for a newly uploaded file.

    Problems are warnings here, not errors: the preview only looks at the first seconds, so "no face" may not
    hold for the whole video, and an unreadable file is reported again, as an error, if the user runs it.
    """
    choices = [(LARGEST, LARGEST)]
    if video is None:
        return [], gr.update(choices=choices, value=LARGEST), ""
    try:
        found = preview_faces(video)
    except LatentSyncError as exc:
        gr.Warning(str(exc))
        return [], gr.update(choices=choices, value=LARGEST), str(exc)
    labels = [f"face {i}" for i in range(len(found.crops))]
    choices += [(label, str(i)) for i, label in enumerate(labels)]
    note = f"{len(labels)} face(s) found at {found.frame_index / FPS:.1f} s; the speaker is the largest unless picked"
    return list(zip(found.crops, labels)), gr.update(choices=choices, value=LARGEST), note


def _model_settings(model: str) -> tuple[float, int, str]:
    """A newly picked model's own guidance, steps and sampler: a distilled student must not run at 20 guided steps."""
    defaults = model_defaults(model)
    return defaults.guidance, defaults.steps, defaults.sampler


def _pick_face(event: gr.SelectData) -> str:
    """A click on face i in the gallery selects `--face i`."""
    return str(event.index)


def _runner(cache: PipelineCache, work_dir: Path) -> Callable[..., tuple[str, str, str]]:
    """The run handler, bound to the app's cache and output folder (gradio reads its signature for gr.Progress)."""

    def run(
        video: str | None,
        audio: str | None,
        model: str,
        guidance: float,
        steps: float,
        seed: float | None,
        face: str | None,
        sampler: str,
        cache_interval: float,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, str, str]:
        """Lip-sync one upload; every user error becomes its one-line message in the page."""
        if video is None:
            raise gr.Error("upload a video or an image first", print_exception=False)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir))
        out = run_dir / f"{Path(video).stem}_lipsync.mp4"
        try:
            options = RunOptions(
                steps=int(steps),
                guidance=float(guidance),
                seed=RunOptions.seed if seed is None else int(seed),
                face=face or LARGEST,
                sampler=sampler,
                cache_interval=int(cache_interval),
            )
            progress(0.0, desc=f"loading model {model}")
            pipeline = cache.get(model)
            progress(0.0, desc="lip-syncing")
            report = pipeline.run(video, audio, out, options, _from_any_thread(progress))
        except BaseException as exc:
            shutil.rmtree(run_dir, ignore_errors=True)  # the writer leaves no partial file; drop the folder too
            if isinstance(exc, LatentSyncError):
                raise gr.Error(str(exc), print_exception=False) from exc
            raise
        return str(out), str(out), report.summary()

    return run


def _from_any_thread(progress: gr.Progress) -> Progress:
    """The pipeline's Progress callback, driving `progress` from whichever thread the pipeline calls it in.

    gr.Progress finds its request through context variables, and the pipeline reports from its encoder thread,
    which starts with an empty context: called there directly, the bar would silently never move. Each call
    therefore runs in a copy of the handler's context (a copy, because one context cannot be entered by two
    threads at once).
    """
    context = contextvars.copy_context()

    def report(done: int, total: int) -> None:
        context.copy().run(progress, (done, total), desc="lip-syncing", unit="frames")

    return report


def launch(
    models: list[str],
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "auto",
    dtype: str = "auto",
    share: bool = False,
) -> None:
    """Serve the page until interrupted; results live in a temporary folder removed on exit.

    Local only unless `host`/`share` say otherwise; no analytics or update checks, no web fonts, so the page
    works without internet. One run at a time: runs share the loaded model and the machine's compute.
    """
    # The Blocks flag stops the page's telemetry and update check; gradio's helpers elsewhere read the variable.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    cache = PipelineCache(device, dtype)
    cache.get(models[0])  # the default model loads before the page opens: a broken one fails here, not mid-demo
    with tempfile.TemporaryDirectory(prefix="latentsync-app-") as work_dir:
        blocks = build_ui(cache, models, Path(work_dir))
        blocks.queue(default_concurrency_limit=1)
        blocks.launch(
            server_name=host,
            server_port=port,
            share=share,
            allowed_paths=[work_dir],
            theme=THEME,
            ssr_mode=False,
            mcp_server=False,
            run_history=False,  # would keep every upload and result in the browser's storage
        )
