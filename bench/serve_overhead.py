"""What `latentsync serve` costs on top of the work itself: status-poll throughput and per-job latency overhead.

    .venv/bin/python bench/serve_overhead.py [--model demo] [--seconds 3] [--steps 10]

1. The same input is lip-synced three ways: `latentsync run` (a fresh process: model load included), the
   pipeline called in-process with the models already loaded, and the service (POST upload, poll every 0.2 s,
   GET the result) with the models already loaded. Overhead = service wall time - in-process run time.
2. GET /jobs/{id} is polled by 1 and 4 clients (keep-alive connections) for a few seconds, while the service is
   idle and while a job is running, and requests/s are counted.
Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll_rate(url: str, clients: int, seconds: float) -> float:
    """Requests/s of GET `url` by `clients` threads, each on its own keep-alive connection."""
    counts = [0] * clients
    stop = time.perf_counter() + seconds

    def poll(i: int) -> None:
        with httpx.Client() as client:
            while time.perf_counter() < stop:
                client.get(url).raise_for_status()
                counts[i] += 1

    threads = [threading.Thread(target=poll, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def submit(base: str, video: Path, audio: Path, steps: int) -> str:
    files = {"video": (video.name, video.read_bytes()), "audio": (audio.name, audio.read_bytes())}
    answer = httpx.post(f"{base}/jobs", files=files, data={"steps": steps}, timeout=60)
    answer.raise_for_status()
    return answer.json()["id"]


def wait_done(base: str, job: str, every: float = 0.2) -> dict:
    """Poll as a client would, on one kept-alive connection (a new client per request costs ~10 ms of CPU, which
    on 2 cores is taken from the run being measured)."""
    with httpx.Client() as client:
        while (status := client.get(f"{base}/jobs/{job}").json())["status"] not in ("done", "failed", "cancelled"):
            time.sleep(every)
    if status["status"] != "done":
        raise RuntimeError(f"job {job} ended {status['status']}: {status['error']}")
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the synthetic input")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    cli = Path(sys.executable).with_name("latentsync")
    seconds = str(args.seconds)
    subprocess.run([str(cli), "data", "synth", str(work / "sample"), "--clips", "2", "--seconds", seconds, seconds,
                    "--seed", "7", "-q"], check=True)
    video, audio = work / "sample/raw/clip_0000.mp4", work / "sample/raw/clip_0001.mp4"

    t0 = time.perf_counter()
    subprocess.run([str(cli), "run", str(video), str(audio), "-o", str(work / "cli.mp4"), "--model", args.model,
                    "--steps", str(args.steps), "-q"], check=True, stdout=subprocess.DEVNULL)
    cli_s = time.perf_counter() - t0

    pipeline = LipSyncPipeline.from_model(args.model)
    pipeline.run(video, audio, work / "warm.mp4", RunOptions(steps=args.steps))  # warm-up, as the service is
    t0 = time.perf_counter()
    pipeline.run(video, audio, work / "direct.mp4", RunOptions(steps=args.steps))
    direct_s = time.perf_counter() - t0
    del pipeline

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(cli), "serve", "--model", args.model, "--port", str(port), "--root",
                               str(work / "service")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                httpx.get(f"{base}/health").raise_for_status()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        wait_done(base, submit(base, video, audio, args.steps))  # warm-up
        t0 = time.perf_counter()
        job = submit(base, video, audio, args.steps)
        inside_s = wait_done(base, job)["report"]["seconds"]
        httpx.get(f"{base}/jobs/{job}/result").raise_for_status()
        service_s = time.perf_counter() - t0
        idle = {n: poll_rate(f"{base}/jobs/{job}", n, 3.0) for n in (1, 4)}
        busy_job = submit(base, video, audio, args.steps)
        busy = {n: poll_rate(f"{base}/jobs/{busy_job}", n, 3.0) for n in (1, 4)}
        wait_done(base, busy_job)
    finally:
        server.terminate()
        server.wait()

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; model {args.model}, "
          f"{args.seconds:g} s input, {args.steps} steps\n")
    print("| way | wall s | overhead vs in-process |\n|---|---:|---:|")
    print(f"| `latentsync run` (new process, loads the model) | {cli_s:.2f} | {cli_s - direct_s:+.2f} s |")
    print(f"| in-process `pipeline.run` (model loaded) | {direct_s:.2f} | - |")
    print(f"| service: POST + poll every 0.2 s + GET result | {service_s:.2f} | {service_s - direct_s:+.2f} s |")
    print(f"| (of which the run inside the service) | {inside_s:.2f} | {inside_s - direct_s:+.2f} s |\n")
    print("| GET /jobs/{id} | 1 client | 4 clients |\n|---|---:|---:|")
    print(f"| service idle | {idle[1]:.0f} req/s | {idle[4]:.0f} req/s |")
    print(f"| a job running | {busy[1]:.0f} req/s | {busy[4]:.0f} req/s |")


if __name__ == "__main__":
    main()
