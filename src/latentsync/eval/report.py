"""Writing an `EvalReport`: `report.json` (everything), `report.md` (tables) and `sync_offsets.png` (curves)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from latentsync.eval.evaluate import EvalReport
from latentsync.eval.lse import MAX_OFFSET

COLUMNS = [  # (field, header, format)
    ("sync_score", "StableSyncNet cos", "{:.3f}"),
    ("sync_conf", "conf", "{:.3f}"),
    ("sync_offset", "offset", "{:+d}"),
    ("lse_c", "LSE-C", "{:.2f}"),
    ("lse_d", "LSE-D", "{:.2f}"),
    ("lse_offset", "v2 offset", "{:+d}"),
    ("psnr", "PSNR dB", "{:.2f}"),
    ("ssim", "SSIM", "{:.4f}"),
]


def write_report(report: EvalReport, out_dir: str | Path) -> list[Path]:
    """Write the report files into `out_dir` (created); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"videos": [asdict(v) for v in report.videos], "means": report.means(), "fid": report.fid,
            "fvd": report.fvd, "notes": report.notes}
    paths = [out_dir / "report.json", out_dir / "report.md"]
    paths[0].write_text(json.dumps(data, indent=1, allow_nan=True))
    paths[1].write_text(markdown(report))
    if any(v.curves for v in report.videos):
        paths.append(_plot(report, out_dir / "sync_offsets.png"))
    return paths


def markdown(report: EvalReport) -> str:
    """The per-video table (only the columns some video has), means, FID/FVD and notes."""
    shown = [c for c in COLUMNS if any(getattr(v, c[0]) is not None for v in report.videos)]
    lines = ["# latentsync eval", "", "| video | frames (face) | " + " | ".join(h for _, h, _ in shown) + " |",
             "|---|---:|" + "---:|" * len(shown)]
    for v in report.videos:
        cells = [_cell(getattr(v, name), fmt) for name, _, fmt in shown]
        lines.append(f"| {Path(v.video).name} | {v.frames} ({v.face_frames}) | " + " | ".join(cells) + " |")
    means = report.means()
    if means:
        lines += ["", "Means over videos: " + ", ".join(f"{k} {v:.4g}" for k, v in means.items()) + "."]
    for name, value in (("FID", report.fid), ("FVD", report.fvd)):
        if value is not None:
            lines.append(f"{name} (face crops, against the references): {value:.3f}")
    if report.notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in report.notes]
    lines += ["", "Offsets are in frames at 25 fps; positive means the audio runs ahead of the lips."]
    return "\n".join(lines) + "\n"


def _cell(value: float | int | None, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return fmt.format(value)


def _plot(report: EvalReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for v in report.videos for name in v.curves})
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    offsets = list(range(-MAX_OFFSET, MAX_OFFSET + 1))
    for ax, name in zip(axes[0], names):
        for v in report.videos:
            if name in v.curves:
                ax.plot(offsets, v.curves[name], label=Path(v.video).name)
        ax.set_title(f"{name}: mean distance per offset (min = sync)")
        ax.set_xlabel("offset (frames; + = audio ahead)")
        ax.set_ylabel("distance")
        ax.grid(alpha=0.3)
        if len(report.videos) <= 10:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
