"""Live sessions on this machine: latency, sustained frames/s, and quality against the offline run of the same audio.

    .venv/bin/python bench/live.py [--model demo] [--avatar VIDEO] [--audio FILE] [--seconds 6]
                                   [--settings a,b,...] [--threads N] [--json FILE]

Per setting, the audio is pushed in 20 ms pieces at the pace it would arrive from a microphone, while the frames
are read as they come (`LiveSession`), and the table gives:
- first frame: seconds from the first pushed sample to the first frame;
- latency p50 / p95: per frame, seconds from the arrival of the frame's last audio sample to the frame. It holds
  the chunk (40 ms a frame), Whisper's 120 ms of context after the frame, the lookahead and the compute;
- frames/s: frames read per second after the first chunk, and skipped: frames the session skipped because the machine
  fell behind by more than max_lag_seconds (2 s); at 25 frames/s and 0 skipped the setting runs live;
- ceiling: frames/s with all the audio there from the start (compute bound, nothing skipped);
- mouth PSNR / SSIM: quality against the offline run of the same audio (16-frame chunks, all the audio known, the
  same steps), on the mouth region (the generated part of the aligned crop), of the frames the setting makes on a
  machine that keeps up (`lockstep`: each frame sees exactly the audio a live stream gives it by then).
`1-step` rows run the demo model itself at one step, guidance 1: the cost of a distilled student, not its quality.

Defaults: the bundled GRID clips (scripts/demo/) as avatar and speech.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PIECE = 320  # samples pushed at a time: 20 ms, as a browser's audio callback delivers them
# name -> (LiveOptions fields, RunOptions fields)
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "chunk16": ({"chunk_frames": 16}, {}),
    "chunk8": ({"chunk_frames": 8}, {}),
    "chunk4": ({"chunk_frames": 4}, {}),
    "chunk16-look0": ({"chunk_frames": 16, "lookahead_frames": 0}, {}),
    "chunk16-look16": ({"chunk_frames": 16, "lookahead_frames": 16}, {}),
    "1-step-chunk16": ({"chunk_frames": 16}, {"steps": 1, "sampler": "ddim-trailing", "guidance": 1.0}),
    "1-step-chunk4": ({"chunk_frames": 4}, {"steps": 1, "sampler": "ddim-trailing", "guidance": 1.0}),
}


def paced(session: Any, wav: np.ndarray) -> tuple[list[Any], list[float]]:
    """Push `wav` in real time from a thread; read every frame here. (frames, the time each was read)"""
    def feed() -> None:
        start = time.perf_counter()
        for i, at in enumerate(range(0, len(wav), PIECE)):
            delay = start + i * PIECE / 16000 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            session.push(wav[at : at + PIECE])
        session.end()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    frames, times = [], []
    for frame in session.frames():
        frames.append(frame)
        times.append(time.perf_counter())
    feeder.join()
    return frames, times


def lockstep(session: Any, wav: np.ndarray) -> list[Any]:
    """The frames a live run makes on a machine that always keeps up: each 20 ms piece is pushed only once the
    session has made every frame the audio before it allows, so each frame sees exactly the audio a live stream
    would have given it by then (and nothing is skipped)."""
    frames = []
    for at in range(0, len(wav), PIECE):
        session.push(wav[at : at + PIECE])
        session.wait_idle()
        while (frame := session.get(timeout=0)) is not None:
            frames.append(frame)
    session.end()
    return frames + list(session.frames())


def mouth_quality(frames: list[Any], reference: dict[int, np.ndarray], avatar: Any, box: tuple[slice, slice]) -> tuple[float, float]:
    """(PSNR dB, mean SSIM) of the frames' mouth regions against the reference frames of the same index."""
    from latentsync.eval.metrics import ssim
    from latentsync.face.align import Aligner

    aligner = Aligner(avatar.cycle[0].crop.shape[0])
    errors, scores = [], []
    for f in frames:
        affine = avatar.frame(f.index).affine
        if affine is None or f.index not in reference:
            continue
        a, b = (aligner.warp(img, affine)[box] for img in (f.image, reference[f.index]))
        errors.append(np.mean((a.astype(np.float64) - b) ** 2))
        scores.append(ssim(a, b))
    mse = float(np.mean(errors))
    return (float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))), float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--avatar", type=Path, default=REPO / "scripts" / "demo" / "grid_lwbsza.mp4")
    parser.add_argument("--audio", type=Path, default=REPO / "scripts" / "demo" / "grid_swiz3n.mp4")
    parser.add_argument("--seconds", type=float, default=6.0, help="audio used (looped when shorter)")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    from latentsync.audio.load import load_audio
    from latentsync.face.mask import load_mask
    from latentsync.live import Avatar, LiveOptions, LiveSession
    from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions

    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        sys.exit(f"unknown settings: {', '.join(unknown)} (known: {', '.join(SETTINGS)})")
    pipeline = LipSyncPipeline.from_model(args.model, device=args.device)
    avatar = Avatar.open(args.avatar, pipeline.models.resolution)
    wav = load_audio(args.audio, 16000)
    wav = np.tile(wav, int(np.ceil(args.seconds * 16000 / len(wav))))[: int(args.seconds * 16000)]
    generated = load_mask(pipeline.models.resolution, pipeline.models.spec.mask) < 0.5
    rows, cols = np.nonzero(generated)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))

    def bulk(live: dict[str, Any], run: dict[str, Any]) -> tuple[dict[int, np.ndarray], float]:
        options = LiveOptions(**{**live, "max_lag_seconds": None, "queue_frames": 10**6})
        with LiveSession(pipeline, avatar, RunOptions(**run), options) as session:
            t0 = time.perf_counter()
            session.push(wav, final=True)
            frames = {f.index: f.image for f in session.frames()}
            return frames, len(frames) / (time.perf_counter() - t0)

    references: dict[str, dict[int, np.ndarray]] = {}
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        live, run = SETTINGS[name]
        key = json.dumps(run, sort_keys=True)
        if key not in references:
            references[key], _ = bulk({}, run)  # the offline run: 16-frame chunks, all the audio known
        _, ceiling = bulk(live, run)
        with LiveSession(pipeline, avatar, RunOptions(**run), LiveOptions(**live)) as session:
            frames, times = paced(session, wav)
            stats = session.stats
        first_chunk = live.get("chunk_frames", 16)  # made at once: the rate counts from the end of the first chunk
        fps = (len(frames) - first_chunk) / (times[-1] - times[first_chunk - 1]) if len(frames) > first_chunk else 0.0
        latencies = np.array(stats.latencies)
        with LiveSession(pipeline, avatar, RunOptions(**run), LiveOptions(**{**live, "max_lag_seconds": None,
                                                                             "queue_frames": 10**6})) as session:
            psnr, ssim = mouth_quality(lockstep(session, wav), references[key], avatar, box)
        results[name] = {
            "first_frame_s": stats.first_frame_seconds, "p50_s": float(np.percentile(latencies, 50)),
            "p95_s": float(np.percentile(latencies, 95)), "fps": fps, "ceiling_fps": ceiling,
            "made": stats.made, "skipped": stats.skipped, "dropped": stats.dropped, "psnr": psnr, "ssim": ssim,
            "sampling": session.sampling,
        }
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    print(f"model `{args.model}` ({pipeline.models.resolution} px), avatar {args.avatar.name}, "
          f"{args.seconds:g} s of {args.audio.name}, torch threads {torch.get_num_threads()}\n")
    print("| setting | sampling | first frame s | latency p50 s | p95 s | frames/s | skipped | ceiling frames/s "
          "| mouth PSNR dB | mouth SSIM |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['sampling']} | {r['first_frame_s']:.2f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} "
              f"| {r['fps']:.1f} | {r['skipped']} | {r['ceiling_fps']:.1f} | {r['psnr']:.1f} | {r['ssim']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
