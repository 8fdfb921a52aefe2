"""U-Net time per 16-frame chunk on a GPU: upstream's 20 guided DDIM steps against a distilled student's 1-4
unguided steps, for full-size LatentSync 1.5 (`stage2`, 256 px) and 1.6 (`stage2_512`, 512 px).

    PYTHONPATH=src python3 bench/gpu_unet.py [--out FILE] [--presets stage2,stage2_512] [--reps 3]
    PYTHONPATH=src python3 bench/gpu_unet.py --dry      # tiny shapes on the CPU: checks the script, not the speed

Random weights give true speed (the work does not depend on the values). Only the U-Net is timed: it is 90% of
inference, and a student changes nothing else. Each setting: fp16 and bf16, eager and `torch.compile` (bf16
only: compiling takes minutes per shape). Needs only torch and PyYAML, so it runs on a bare GPU image from the
source tree (`bench/gpu.sh`). Prints a Markdown table and writes it to `--out`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from latentsync.models.unet import UNet3DConditionModel, load_unet_yaml  # noqa: E402

FRAMES = 16
TEACHER_STEPS = 20
STUDENT_STEPS = (4, 2, 1)


def chunk_seconds(unet: torch.nn.Module, calls: int, batch: int, size: int, dtype: torch.dtype, device: str,
                  reps: int) -> float:
    """Seconds for `calls` U-Net calls on a batch of `batch` x 16 frames (2 = guided), best of `reps` after a
    warm-up run."""
    sample = torch.randn(batch, 13, FRAMES, size, size, device=device, dtype=dtype)
    audio = torch.randn(batch, FRAMES, 50, unet.config.cross_attention_dim, device=device, dtype=dtype)
    t = torch.tensor(500, device=device)

    def run() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(calls):
                unet(sample, t, audio)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run()
    return min(run() for _ in range(reps))


def bench_preset(preset: str, device: str, dtypes: list[str], compile_dtypes: list[str], reps: int,
                 teacher_steps: int) -> list[dict]:
    config = load_unet_yaml(preset)
    resolution = int(config.get("data", {}).get("resolution", 256))
    rows = []
    for name in dtypes:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]
        for compiled in (False, True) if name in compile_dtypes else (False,):
            unet = UNet3DConditionModel.from_config_file(preset).to(device, dtype).eval()
            started = time.perf_counter()
            model = torch.compile(unet) if compiled else unet
            settings = [(f"{teacher_steps} steps, guidance", teacher_steps, 2)]
            settings += [(f"student, {k} step{'s' * (k > 1)}", k, 1) for k in STUDENT_STEPS]
            base = None
            for label, calls, batch in settings:
                seconds = chunk_seconds(model, calls, batch, resolution // 8, dtype, device, reps)
                base = base or seconds
                rows.append({"preset": preset, "resolution": resolution, "dtype": name, "compile": compiled,
                             "setting": label, "ms": 1000 * seconds, "fps": FRAMES / seconds,
                             "speedup": base / seconds})
            rows[-1]["setup_s"] = time.perf_counter() - started
            del model, unet
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def table(rows: list[dict], device_name: str) -> str:
    lines = [f"U-Net only, one 16-frame chunk, random weights, on {device_name} (`bench/gpu_unet.py`)", "",
             "| model | dtype | compile | setting | ms per chunk | U-Net frames/s | speed-up |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['preset']}` ({r['resolution']} px) | {r['dtype']} | {'yes' if r['compile'] else 'no'} "
                     f"| {r['setting']} | {r['ms']:.1f} | {r['fps']:.1f} | {r['speedup']:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="stage2,stage2_512")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dry", action="store_true", help="tiny U-Net, fp32, CPU, 2 teacher steps: a script check")
    args = parser.parse_args()
    if args.dry:
        presets, device, dtypes, compiled, reps, steps = [str(ROOT / "tests/configs/unet_tiny.yaml")], "cpu", \
            ["fp32"], [], 1, 2
        device_name = "CPU (dry run: tiny shapes, not a speed)"
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --dry to check the script on a CPU")
        presets, device, dtypes, compiled, reps, steps = args.presets.split(","), "cuda", ["fp16", "bf16"], \
            ["bf16"], args.reps, TEACHER_STEPS
        device_name = f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    rows = []
    for preset in presets:
        rows += bench_preset(preset, device, dtypes, compiled, reps, steps)
        print(table(rows, device_name), flush=True)
    text = table(rows, device_name)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
