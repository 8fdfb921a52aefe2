"""Speed settings of inference, each on the same input: speed, memory, and quality against the 20-step output.

    .venv/bin/python bench/speed.py [--model demo] [--seconds 6] [--size 1280x720] [--settings a,b,...]
                                    [--device auto] [--dtype auto] [--syncnet demo|none] [--json FILE]

Makes one input (the astronaut photo drifting in a 30 fps clip, TTS speech), runs the pipeline once per setting,
each in a fresh process so its peak RAM is its own, and prints a Markdown table: frames/s, ms per frame of each
stage, peak RAM and VRAM, and quality against the `ddim-20` output (upstream's setting): PSNR and SSIM of the
mouth region (the generated part of the aligned face crop, aligned once on the reference output and applied to
every output) and the StableSyncNet score difference. Compiled settings run twice and report the second run
(the first includes compilation, shown apart).

`--model` is any `--model` value, or `random:PRESET` for a fresh random-weight folder (e.g. `random:stage2_512`
for full-size 1.6, `random:stage2` for 1.5, `random:small`): random weights give true speed but no quality.
`--student FOLDER` adds a row for a distilled student of `--model` (`latentsync train distill`'s OUTPUT/model) at
its own settings, judged against its teacher's `ddim-20` output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

REFERENCE = "ddim-20"
STUDENT = "student"
# name -> (RunOptions fields, load settings); the reference comes first.
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    REFERENCE: ({"steps": 20}, {}),
    "ddim-20-batch2": ({"steps": 20, "batch": 2}, {}),
    "ddim-20-batch4": ({"steps": 20, "batch": 4}, {}),
    "ddim-20-channels-last": ({"steps": 20}, {"channels_last": True}),
    "ddim-20-bf16": ({"steps": 20}, {"dtype": "bf16"}),
    "ddim-20-fp16": ({"steps": 20}, {"dtype": "fp16"}),
    "ddim-20-compile": ({"steps": 20}, {"compile_mode": "default"}),
    "ddim-20-cudagraphs": ({"steps": 20}, {"compile_mode": "reduce-overhead"}),
    "ddim-20-cache2": ({"steps": 20, "cache_interval": 2}, {}),
    "ddim-20-cache3": ({"steps": 20, "cache_interval": 3}, {}),
    "ddim-20-cache3-depth2": ({"steps": 20, "cache_interval": 3, "cache_depth": 2}, {}),
    "ddim-10": ({"steps": 10}, {}),
    "dpm++-10": ({"steps": 10, "sampler": "dpm++"}, {}),
    "dpm++-8": ({"steps": 8, "sampler": "dpm++"}, {}),
    "dpm++-6": ({"steps": 6, "sampler": "dpm++"}, {}),
    "dpm++-10-cache2": ({"steps": 10, "sampler": "dpm++", "cache_interval": 2}, {}),
    "dpm++-8-cache2-batch4": ({"steps": 8, "sampler": "dpm++", "cache_interval": 2, "batch": 4}, {}),
    # A distilled student's sampling (its cost on any model; on the teacher itself, the quality without distilling)
    "student-4": ({"steps": 4, "sampler": "ddim-trailing", "guidance": 1.0}, {}),
    "student-2": ({"steps": 2, "sampler": "ddim-trailing", "guidance": 1.0}, {}),
    "student-1": ({"steps": 1, "sampler": "ddim-trailing", "guidance": 1.0}, {}),
    STUDENT: ({}, {}),  # --student FOLDER at its model.yaml's settings
}
GPU_ONLY = {"ddim-20-fp16", "ddim-20-cudagraphs"}
CPU_STAGES = ("decode", "face", "paste", "encode")


def child(args: argparse.Namespace) -> None:
    """One setting in this process: load, run (twice when compiled), write the report as JSON."""
    import torch

    from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions

    options, load = SETTINGS[args.child]
    dtype = load.get("dtype", args.dtype)
    pipeline = LipSyncPipeline.from_model(args.model, args.device, dtype, load.get("compile_mode", "off"),
                                          load.get("channels_last", False))
    runs = 2 if "compile_mode" in load else 1
    seconds = []
    for _ in range(runs):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        report = pipeline.run(args.video, args.audio, args.out, RunOptions(**options), None)
        seconds.append(report.seconds)
    Path(args.json).write_text(json.dumps({
        "frames": report.frames, "seconds": report.seconds, "first_seconds": seconds[0],
        "stages": report.stage_seconds, "peak_rss_mb": report.peak_rss_mb, "peak_vram_mb": report.peak_vram_mb,
    }))


def mouth_quality(reference: Path, others: dict[str, Path], resolution: int, mask_path: Path) -> dict[str, tuple[float, float]]:
    """(PSNR dB, mean SSIM) of each output's mouth region against the reference output's."""
    from latentsync.eval.metrics import ssim
    from latentsync.eval.sync import aligned_frames
    from latentsync.face.align import Aligner
    from latentsync.face.mask import load_mask
    from latentsync.video.reader import VideoFrames

    generated = load_mask(resolution, mask_path) < 0.5
    rows, cols = np.nonzero(generated)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    aligner = Aligner(resolution)
    affines = [m for _, m in aligned_frames(reference, resolution)]

    def mouths(video: Path) -> list[np.ndarray]:
        clip = VideoFrames(video)
        return [aligner.warp(image, m)[box] for image, m in zip(clip.iter_range(0, len(clip)), affines) if m is not None]

    ref = mouths(reference)
    out = {}
    for name, video in others.items():
        got = mouths(video)
        mse = np.mean([np.mean((a.astype(np.float64) - b) ** 2) for a, b in zip(got, ref)])
        psnr = float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
        out[name] = (psnr, float(np.mean([ssim(a, b) for a, b in zip(got, ref)])))
    return out


def sync_scores(videos: dict[str, Path], syncnet: str) -> dict[str, float | None]:
    from latentsync.eval.evaluate import EvalSettings, Evaluator

    report = Evaluator(EvalSettings(syncnet=syncnet))(list(videos.values()))
    return {name: m.sync_score for name, m in zip(videos, report.videos)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="a --model value, or random:PRESET (default demo)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--settings", help=f"comma-separated subset of: {', '.join(SETTINGS)}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--syncnet", default="demo", help="StableSyncNet for the score difference, or none")
    parser.add_argument("--student", help="a distilled student's model folder: one more row, at its own settings")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for hidden in ("video", "audio", "out"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import torch

    from lipsync_stages import make_inputs
    from latentsync.models.create import create_model_dir
    from latentsync.models.modeldir import ModelDir

    gpu = torch.cuda.is_available() and args.device != "cpu"
    names = args.settings.split(",") if args.settings else [n for n in SETTINGS
                                                              if (gpu or n not in GPU_ONLY) and n != STUDENT]
    names += [STUDENT] if args.student and STUDENT not in names else []
    if STUDENT in names and not args.student:
        parser.error("the student setting needs --student FOLDER")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    names = [REFERENCE] + [n for n in names if n != REFERENCE]
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video, audio = make_inputs(folder, args.seconds, size)
        model = args.model
        if model.startswith("random:"):
            model = str(create_model_dir(model.split(":", 1)[1], folder / "model", seed=0).root)
        spec = ModelDir.resolve(model).spec
        results, outputs = {}, {}
        for name in names:
            outputs[name], report = folder / f"{name}.mp4", folder / f"{name}.json"
            cmd = [sys.executable, __file__, "--child", name, "--model", args.student if name == STUDENT else model,
                   "--device", args.device,
                   "--dtype", args.dtype, "--video", str(video), "--audio", str(audio), "--out", str(outputs[name]),
                   "--json", str(report)]
            print(f"running {name} ...", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
            results[name] = json.loads(report.read_text())
        quality = mouth_quality(outputs[REFERENCE], outputs, spec.resolution, spec.mask)
        sync = sync_scores(outputs, args.syncnet) if args.syncnet != "none" else {}
    for name, (p, s) in quality.items():
        results[name].update(mouth_psnr=p, mouth_ssim=s, sync_score=sync.get(name))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results, args, spec.resolution, size))


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace, resolution: int, size: tuple[int, ...]) -> str:
    ref = results[REFERENCE]
    lines = [
        f"model `{args.model}` ({resolution} px), {args.seconds:g} s of {size[0]}x{size[1]} 30 fps input, "
        f"{ref['frames']} output frames, device {args.device}, dtype {args.dtype}",
        "",
        "| setting | frames/s | speed-up | denoise ms/frame | CPU stages ms/frame | peak RAM MB | peak VRAM MB "
        "| mouth PSNR dB | mouth SSIM | sync score (diff) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        fps = r["frames"] / r["seconds"]
        cpu = sum(r["stages"].get(s, 0.0) for s in CPU_STAGES)
        first = f" (1st run {r['first_seconds']:.0f} s)" if r["first_seconds"] != r["seconds"] else ""
        sync = "" if r.get("sync_score") is None else (
            f"{r['sync_score']:.3f} ({r['sync_score'] - ref['sync_score']:+.3f})")
        vram = f"{r['peak_vram_mb']:.0f}" if r["peak_vram_mb"] else "-"
        lines.append(
            f"| {name}{first} | {fps:.2f} | {fps / (ref['frames'] / ref['seconds']):.2f}x "
            f"| {1000 * r['stages'].get('denoise', 0.0) / r['frames']:.0f} | {1000 * cpu / r['frames']:.1f} "
            f"| {r['peak_rss_mb']:.0f} | {vram} | {r['mouth_psnr']:.1f} | {r['mouth_ssim']:.3f} | {sync} |"
        )
    stages = ", ".join(f"{s} {1000 * ref['stages'].get(s, 0.0) / ref['frames']:.1f}" for s in CPU_STAGES)
    lines += ["", f"CPU stages of `{REFERENCE}`, ms per frame: {stages}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
