"""The `latentsync` command. Parses, reports and delegates: no model maths lives here."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from latentsync import __version__
from latentsync.errors import ConfigError, LatentSyncError

Handler = Callable[[argparse.Namespace], int]


class _Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, docker stop, systemd), raised in the main thread as Ctrl-C is: whatever cleans up
    after Ctrl-C (a run deletes its temporary output) cleans up after it too."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _model_init(args: argparse.Namespace) -> int:
    from latentsync.models.create import create_model_dir

    t0 = time.perf_counter()
    spec = create_model_dir(
        args.config, args.out, seed=args.seed, vae=args.vae, syncnet=args.syncnet, whisper=args.whisper, force=args.force
    )
    print(f"wrote model {spec.root} (resolution {spec.resolution}, seed {args.seed}) in {time.perf_counter() - t0:.1f} s")
    return 0


def _model_pack(args: argparse.Namespace) -> int:
    from latentsync.models.create import pack_model_dir

    spec = pack_model_dir(args.src, args.out, half=not args.full_precision, syncnet_config=args.syncnet_config,
                          syncnet_weights=args.syncnet, steps=args.steps, guidance=args.guidance, paste=args.paste,
                          force=args.force)
    size = sum(p.stat().st_size for p in spec.root.rglob("*") if p.is_file())
    print(f"wrote model {spec.root} ({size / 2**20:.1f} MiB)")
    return 0


def _model_info(args: argparse.Namespace) -> int:
    from latentsync.models.modeldir import ModelDir

    model_dir = ModelDir.resolve(args.model)
    spec = model_dir.spec
    print(f"model      {model_dir.label} -> {spec.root}")
    print(f"resolution {spec.resolution}")
    for label, path in [("unet", spec.unet_weights), ("vae", spec.vae), ("whisper", spec.whisper_path), ("syncnet", spec.syncnet_weights)]:
        if path is not None:
            print(f"{label:<10} {path}")
    if args.check:
        from latentsync.pipeline.smoke import smoke_check

        for line in smoke_check(model_dir):
            print(line)
    return 0


def _download(args: argparse.Namespace) -> int:
    from latentsync.models.hub import download_official

    spec = download_official(args.model, args.dir, with_syncnet=args.with_syncnet)
    print(f"model {args.model} ready in {spec.root}; use it with --model {args.dir or args.model}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions, preflight
    from latentsync.pipeline.progress import progress_bar

    options = RunOptions(steps=args.steps, guidance=args.guidance, seed=args.seed, face=args.face, crf=args.crf,
                         sampler=args.sampler, cache_interval=args.cache_interval, cache_depth=args.cache_depth,
                         batch=args.batch, paste=args.paste)
    preflight(args.video, args.audio, args.out, args.face)
    pipeline = LipSyncPipeline.from_model(args.model, args.device, args.dtype, args.compile, args.channels_last)
    with progress_bar("lip-sync", unit="frame", quiet=args.quiet) as progress:
        report = pipeline.run(args.video, args.audio, args.out, options, progress)
    print(report.summary())
    if args.verbose:
        print(report.stage_table())
    return 0


def _app(args: argparse.Namespace) -> int:
    from latentsync.app.pipelines import installed_models
    from latentsync.app.ui import launch

    models = installed_models(args.model or ())
    if not models:
        raise ConfigError("no model is installed: run `latentsync download --model 1.6`, or pass --model DIR")
    launch(models, host=args.host, port=args.port, device=args.device, dtype=args.dtype, share=args.share)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from latentsync.app.serve.api import serve
    from latentsync.app.serve.service import ServeConfig

    config = ServeConfig(models=args.model or ["1.6"], workers=args.workers, queue_size=args.queue_size,
                         max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds,
                         allowed_dirs=args.allow_path, result_ttl=args.result_ttl, device=args.device, dtype=args.dtype,
                         live_avatars=args.live_avatar, live_sessions=args.live_sessions)
    if args.root is not None:
        config.root = args.root
    for name, value in [("--workers", config.workers), ("--queue-size", config.queue_size),
                        ("--live-sessions", config.live_sessions)]:
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    serve(config, host=args.host, port=args.port)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from latentsync.doctor import doctor

    return doctor()


def _eval(args: argparse.Namespace) -> int:
    from latentsync.eval.evaluate import EvalSettings, evaluate
    from latentsync.eval.report import markdown, write_report

    settings = EvalSettings(syncnet=None if args.syncnet == "none" else args.syncnet, syncnet_v2=args.syncnet_v2,
                            inception=args.inception, i3d=args.i3d, face=args.face, device=args.device)
    report = evaluate(args.videos, args.reference or (), settings)
    paths = write_report(report, args.out)
    print(markdown(report), end="")
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _add_server_arguments(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--model", action="append", help="model to offer: 1.5, 1.6, demo or a folder (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=port, help=f"port (default {port})")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])


def _add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """The `latentsync data synth` options; also sets `handler=run_synth` (the CLI's dispatch convention)."""
    parser.add_argument("out", type=Path, help="output folder; raw/ and aligned/ are created inside")
    parser.add_argument("--clips", type=int, required=True, help="number of clips (existing complete ones are kept)")
    parser.add_argument(
        "--seconds", type=float, nargs=2, metavar=("MIN", "MAX"), default=(4.0, 8.0),
        help="clip length range in seconds (default 4 8)",
    )  # fmt: skip
    parser.add_argument("--resolution", type=int, default=128, help="side of the aligned face crops (default 128)")
    parser.add_argument("--size", default="640x360", help="raw frame size WIDTHxHEIGHT (default 640x360)")
    parser.add_argument("--photo", type=Path,
                        help="face(s) to animate: an image, a video (a random frame per clip), a folder of them or a "
                             ".txt list (one per line; clip i takes entry i mod n) (default: scikit-image's astronaut)")
    parser.add_argument("--augment", action="store_true",
                        help="vary each clip's face: flip, colour shift, re-lighting (new-looking people)")
    parser.add_argument("--other-faces", action="store_true", help="put a second, silent person beside the speaker")
    parser.add_argument("--seed", type=int, default=0, help="clip i is a function of (seed, i) (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    """Run `latentsync data synth` from parsed arguments and print the summary line."""
    from latentsync.data.synth import parse_size, synthesize
    from latentsync.pipeline.progress import progress_bar

    size = parse_size(args.size)
    with progress_bar("synth", unit="clip", quiet=args.quiet) as progress:
        report = synthesize(
            args.out, args.clips, tuple(args.seconds), args.resolution, size, args.photo, args.other_faces,
            args.seed, args.workers, progress, args.augment,
        )  # fmt: skip
    print(report.summary())
    return 0


_DATA_STEPS = {
    "broken": "set aside files that cannot be opened or decoded, or have no audio (writes no video)",
    "resample": "re-encode to constant 25 fps with 16 kHz mono audio",
    "shots": "split at hard cuts (PySceneDetect adaptive detector, threshold 2)",
    "segments": "cut shots into 5-10 s pieces (shorter shots are dropped; --min-seconds changes the 5 s)",
    "align": "the speaker's face as RESxRES crops (inference's landmarks + affine)",
    "sync": "keep clips in sync (SyncNet conf >= 3, |offset| <= 6) and fix the offset",
    "quality": "keep clips of good image quality (hyperIQA score >= 40)",
}


def _add_data_arguments(parser: argparse.ArgumentParser, step: str | None) -> None:
    """Options of `data run` (step None) and of `data STEP`; each step gets only the options it uses."""
    parser.add_argument("input_dir", type=Path, help="folder of input files (searched recursively)")
    parser.add_argument("output_dir", type=Path, help="output folder (a rerun resumes what is recorded there)")
    if step in (None, "segments"):
        parser.add_argument("--min-seconds", type=float, metavar="SECONDS",
                            help="shortest piece kept; shots are cut into pieces of SECONDS to 2 x SECONDS (default 5)")
    if step in (None, "align"):
        parser.add_argument("--resolution", type=int, metavar="RES",
                            help="side of the face crops (default 256; 512 for LatentSync 1.6)")
        parser.add_argument("--max-face-lost", type=float, metavar="SHARE",
                            help="drop a clip whose face is missing in more than this share of frames (default 0.04)")
    if step in (None, "sync"):
        parser.add_argument("--syncnet", type=Path, metavar="WEIGHTS",
                            help="sync filter SyncNet: syncnet_v2.model, a StableSyncNet file, a model folder or name "
                                 "(e.g. demo); without: the filter is skipped, with a warning")
    if step in (None, "quality"):
        parser.add_argument("--iqa", type=Path, metavar="FILE",
                            help="hyperIQA koniq_pretrained.pkl for the quality filter (without: skipped, warning)")
    if step is None:
        parser.add_argument("--only", nargs="+", metavar="STEP", choices=list(_DATA_STEPS),
                            help="run only these steps; the others contribute what their manifests record")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="parallel processes with --backend local (default 1; Ray schedules by its own CPUs)")
    parser.add_argument("--backend", choices=["local", "ray"], default="local",
                        help="local processes, or Ray tasks (default local)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="Ray cluster to join (e.g. auto or ray://host:10001; default: start a local instance)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_data, data_step=step)


def _run_data(args: argparse.Namespace) -> int:
    """Run `latentsync data run` or one `latentsync data STEP`, print the final table; exit 1 if files failed."""
    from latentsync.data.runner import make_backend, run_pipeline, run_single
    from latentsync.data.steps import STEP_NAMES, build_steps

    settings = {k: getattr(args, k, None) for k in ("resolution", "max_face_lost", "syncnet", "iqa", "min_seconds")}
    steps = build_steps(**{k: v for k, v in settings.items() if v is not None})
    if args.ray_address and args.backend != "ray":
        raise ConfigError("--ray-address needs --backend ray")
    backend = make_backend(args.backend, args.workers, args.ray_address)
    try:
        if args.data_step is None:
            report = run_pipeline(args.input_dir, args.output_dir, steps, backend, args.only, args.quiet)
        else:
            step = steps[STEP_NAMES.index(args.data_step)]
            report = run_single(step, args.input_dir, args.output_dir, backend, args.quiet)
    finally:
        backend.close()
    print(report.table())
    return 1 if report.errors else 0


def _split_data(args: argparse.Namespace) -> int:
    from latentsync.data.split import split_filelist

    print(split_filelist(args.filelist, args.plan).table())
    return 0


def _train(args: argparse.Namespace) -> int:
    from latentsync.train import loop

    if args.train_command == "unet":
        from latentsync.train.unet import train_unet as train
    elif args.train_command == "vae":
        from latentsync.train.vae import train_vae as train
    elif args.train_command == "distill":
        from latentsync.train.distill import train_distill as train
    else:
        from latentsync.train.syncnet import train_syncnet as train
    path = train(args.config, loop.parse_overrides(args.overrides))
    if loop.is_main():
        print(f"final checkpoint {path}")
        if args.train_command == "distill":
            print(f"student model folder {path.parent.parent / 'model'} (run it with --model)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentsync", description="Lip-sync video to speech with LatentSync.")
    parser.add_argument("--version", action="version", version=f"latentsync {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (load reports, timings)")
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="create or inspect model folders").add_subparsers(dest="model_command", required=True)
    init = model.add_parser("init", help="write a freshly initialised model folder (random weights)")
    init.add_argument("--config", required=True, help="U-Net preset (stage1, stage2, stage2_efficient, stage1_512, stage2_512, small) or yaml")
    init.add_argument("--out", required=True, type=Path, help="folder to create")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--vae", help="VAE preset (small, sd-vae-ft-mse) or folder with config.json; default fits the U-Net")
    init.add_argument("--syncnet", help="also write a random SyncNet of this preset or yaml")
    init.add_argument("--whisper", type=Path, help="OpenAI-format Whisper file to copy in (default: reference the packaged tiny.en)")
    init.add_argument("--force", action="store_true", help="replace OUT if it exists")
    init.set_defaults(handler=_model_init)
    pack = model.add_parser("pack", help="copy a trained model folder to ship it (float16 weights, optional SyncNet)")
    pack.add_argument("src", help="model folder (e.g. a U-Net training run's OUTPUT_DIR/model)")
    pack.add_argument("out", type=Path, help="folder to create")
    pack.add_argument("--syncnet-config", help="SyncNet preset or yaml of --syncnet")
    pack.add_argument("--syncnet", type=Path, help="trained SyncNet checkpoint to include")
    pack.add_argument("--steps", type=int, help="default inference steps of the packed model")
    pack.add_argument("--guidance", type=float, help="default guidance scale of the packed model")
    pack.add_argument("--paste", choices=["upstream", "seamless"], help="default paste of the packed model")
    pack.add_argument("--full-precision", action="store_true", help="keep float32 weights (default: float16)")
    pack.add_argument("--force", action="store_true", help="replace OUT if it exists")
    pack.set_defaults(handler=_model_pack)
    info = model.add_parser("info", help="show what a --model resolves to")
    info.add_argument("--model", required=True, help="1.5, 1.6, demo (bundled) or a model folder")
    info.add_argument("--check", action="store_true", help="load every component and run one guided U-Net step")
    info.set_defaults(handler=_model_info)

    run = sub.add_parser("run", help="lip-sync VIDEO to AUDIO and write OUT")
    run.add_argument("video", type=Path, help="video (any container/codec/fps) or a still image")
    run.add_argument("audio", type=Path, nargs="?", help="speech (audio or video file); default: VIDEO's own audio")
    # A str, not a Path: Path drops a trailing slash, which must reach check_writable to be refused.
    run.add_argument("-o", "--out", required=True, help="output .mp4 (written only when the run succeeds)")
    run.add_argument("--model", default="1.6", help="1.5, 1.6, demo (the small bundled model) or a model folder (default 1.6)")
    run.add_argument("--steps", type=int, help="sampler steps (default: the model's, 20 for 1.5/1.6)")
    run.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's, 1.5 for 1.5/1.6)")
    run.add_argument("--seed", type=int, default=1247)
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    run.add_argument("--face", default="largest", help="speaker: largest, N (N-th face from the left, 0-based) or x,y")
    run.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better (default 18, visually lossless)")
    run.add_argument("--paste", choices=["upstream", "seamless"],
                     help="upstream: the whole crop back, as the official code (default for 1.5/1.6); seamless: only "
                          "the lower face, colour-matched and feathered (the model's default when its model.yaml asks)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    speed = run.add_argument_group("speed (measured trade-offs: bench/RESULTS.md)")
    speed.add_argument("--sampler", choices=["ddim", "dpm++", "ddim-trailing"],
                       help="ddim (upstream), dpm++ (DPM-Solver++, for 8-12 steps) or ddim-trailing (1-4 steps, for "
                            "distilled students) (default: the model's, ddim for 1.5/1.6)")
    speed.add_argument("--cache-interval", type=int, default=1, metavar="N",
                       help="DeepCache: run the deep U-Net levels every N-th step only (default 1: every step)")
    speed.add_argument("--cache-depth", type=int, default=1, metavar="L",
                       help="DeepCache branch: outer U-Net levels recomputed on the other steps (default 1)")
    speed.add_argument("--batch", type=int, default=1, metavar="N", help="chunks of 16 frames denoised together")
    speed.add_argument("--compile", default="off", choices=["off", "default", "reduce-overhead", "max-autotune"],
                       help="torch.compile the U-Net and VAE decoder (reduce-overhead adds CUDA graphs)")
    speed.add_argument("--channels-last", action="store_true", help="channels-last memory layout for the convolutions")
    run.set_defaults(handler=_run)

    app = sub.add_parser("app", help="the web page: upload a video and speech, lip-sync in the browser")
    _add_server_arguments(app, 7860)
    app.add_argument("--share", action="store_true", help="also publish a public gradio.live link (off by default)")
    app.set_defaults(handler=_app)

    serve = sub.add_parser("serve", help="the HTTP API: a job queue whose workers keep the models loaded")
    _add_server_arguments(serve, 8000)
    serve.add_argument("--workers", type=int, default=1, help="jobs run at once, sharing the loaded models (default 1)")
    serve.add_argument("--queue-size", type=int, default=32, help="jobs waiting at most; more get 503 (default 32)")
    serve.add_argument("--max-upload-mb", type=float, default=500.0, help="request size limit; more gets 413 (default 500)")
    serve.add_argument("--max-seconds", type=float, default=600.0, help="longest video or audio; more gets 422 (default 600)")
    serve.add_argument("--allow-path", type=Path, action="append", default=[], metavar="DIR",
                       help="let jobs name server files under DIR by path (repeatable; default: uploads only)")
    serve.add_argument("--root", type=Path, help="job folder (default: $LATENTSYNC_HOME/service)")
    serve.add_argument("--result-ttl", type=float, default=86400.0, help="seconds a finished job is kept (default 1 day)")
    serve.add_argument("--live-avatar", type=Path, action="append", default=[], metavar="VIDEO",
                       help="turn on live lip-sync (page at /live) with this face: a short video or an image, "
                            "animated by the first --model (repeatable)")
    serve.add_argument("--live-sessions", type=int, default=2, help="live sessions at once; more are refused (default 2)")
    serve.set_defaults(handler=_serve)

    ev = sub.add_parser("eval", help="lip-sync and image quality of output videos (LSE-C/D, sync score, PSNR/SSIM, FID/FVD)")
    ev.add_argument("videos", nargs="+", type=Path, help="videos to score, each with its own soundtrack")
    ev.add_argument("--reference", nargs="+", type=Path, help="one original per video: PSNR/SSIM, and FID/FVD against them")
    ev.add_argument("--syncnet", default="demo", help="StableSyncNet: model name, folder or weights file, or 'none' (default demo)")
    ev.add_argument("--syncnet-v2", type=Path, help="syncnet_v2.model for LSE-C / LSE-D (the standard SyncNet)")
    ev.add_argument("--inception", type=Path, help="TorchScript Inception (inception-2015-12-05.pt) for FID")
    ev.add_argument("--i3d", type=Path, help="TorchScript I3D (i3d_torchscript.pt) for FVD")
    ev.add_argument("--face", default="largest", help="speaker: largest, N or x,y (as for run)")
    ev.add_argument("--device", default="cpu", help="cpu or cuda")
    ev.add_argument("-o", "--out", type=Path, default=Path("eval-report"), help="report folder (default eval-report)")
    ev.set_defaults(handler=_eval)

    data = sub.add_parser("data", help="training data: synthesis and processing").add_subparsers(dest="data_command", required=True)
    _add_synth_arguments(data.add_parser("synth", help="synthetic talking-face clips (raw and aligned forms)"))
    _add_data_arguments(data.add_parser("run", help="turn a folder of videos into a training set (all steps, resumable)"), None)
    for name, help_text in _DATA_STEPS.items():
        _add_data_arguments(data.add_parser(name, help=f"one pipeline step alone: {help_text}"), name)
    split = data.add_parser("split", help="divide a filelist into training and held-out lists by person")
    split.add_argument("filelist", type=Path, help="a run's filelist.txt; SIDE.txt is written beside it per side")
    split.add_argument("plan", type=Path, help="YAML: side -> person -> source files (see docs/data-pipeline.md)")
    split.set_defaults(handler=_split_data)

    train = sub.add_parser("train", help="train the U-Net, a SyncNet or a small VAE (torchrun for several GPUs), or "
                                         "distil a few-step U-Net")
    train_sub = train.add_subparsers(dest="train_command", required=True)
    for name, packaged in [("unet", "unet_small, unet_stage1, unet_stage2, unet_stage2_efficient, unet_stage1_512, "
                                    "unet_stage2_512"), ("syncnet", "syncnet_small, syncnet_16_pixel_attn"),
                          ("vae", "vae_small"), ("distill", "distill_demo")]:
        what = dict(unet="train the U-Net", syncnet="train the SyncNet", vae="train the VAE",
                    distill="distil a model's U-Net into a 1-4 step student (docs/distill.md)")[name]
        p = train_sub.add_parser(name, help=what)
        p.add_argument("config", help=f"training yaml, or a packaged one: {packaged}")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set data.root=data/aligned --set run.max_steps=500")
        p.set_defaults(handler=_train)

    doctor = sub.add_parser("doctor", help="check this install: versions, device, video, face stack, models")
    doctor.set_defaults(handler=_doctor)
    download = sub.add_parser("download", help="fetch official weights from the Hugging Face hub")
    download.add_argument("--model", required=True, choices=["1.5", "1.6"])
    download.add_argument("--dir", type=Path, help="target folder (default: where --model 1.5/1.6 looks)")
    download.add_argument("--with-syncnet", action="store_true", help="also fetch stable_syncnet.pt")
    download.set_defaults(handler=_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. SIGTERM is handled like Ctrl-C while it runs (here, not at import, and the previous handler
    is restored after, so a program that imports latentsync keeps its own); exit status 128 + the signal."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there may handlers be set
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return args.handler(args)
    except LatentSyncError as exc:
        print(f"latentsync: error: {exc}", file=sys.stderr)
        return 2
    except _Terminated:
        print("latentsync: interrupted (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("latentsync: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:  # None: a handler set outside Python, which cannot be put back; the default instead
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    sys.exit(main())
