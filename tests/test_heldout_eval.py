"""`eval.heldout`'s reconstruction measure: the lower face of an output against its source, by the source's
alignment. A faithful output scores SSIM 1 and no colour difference; a greyed lower face is caught."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from media.clips import write_clip
from media.faces import astronaut_frames

from latentsync.eval.heldout import lower_face_box, reconstruction
from latentsync.eval.sync import aligned_frames
from latentsync.face.align import Aligner
from latentsync.face.mask import load_mask


def test_reconstruction_scores_the_lower_face(tmp_path: Path) -> None:
    mask = load_mask(128)
    rows, cols = lower_face_box(mask)
    assert (mask[rows, cols] < 0.5).mean() > 0.7 and (mask[: rows.start] >= 0.5).all()

    frames = list(astronaut_frames(12, size=(480, 360), fps=25))
    source = write_clip(tmp_path / "source.mp4", frames, fps=25)
    same = reconstruction(source, source, 128, mask)
    assert same.frames == 12 and same.ssim == 1.0 and same.colour == 0.0

    aligner = Aligner(128)
    greyed = []
    for frame, m in aligned_frames(source, 128):
        crop = aligner.warp(frame, m)
        crop[rows, cols] = (0.6 * crop[rows, cols] + 0.4 * 128).astype(np.uint8)  # a small VAE's grey cast
        greyed.append(aligner.restore(frame, crop, m))
    output = write_clip(tmp_path / "greyed.mp4", greyed, fps=25)
    grey = reconstruction(source, output, 128, mask)
    assert grey.ssim < 0.9 and grey.colour > 5  # measured: 0.76 and 9.5 levels; the bars are 0.75 and 4
