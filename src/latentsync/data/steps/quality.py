"""Step 7, `quality`: drop clips whose image quality is low, judged by hyperIQA.

As upstream: hyperIQA with KonIQ weights (`koniq_pretrained.pkl`, user-supplied) scores the first, middle and
last frames of each clip, and a clip is kept when the mean score is >= 40. The evaluator returns
`{"score": mean}` (`models.hyperiqa.quality_score`: one centre 224 crop per frame, as upstream's filter, whose
threshold was set on those scores). `--iqa` takes the weights file itself; a file that does not fit hyperIQA is
a one-line error before any work. Without `--iqa` the step passes every clip on unchecked, with a warning (see
`FilterStep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from latentsync.data.runner import Item, Result
from latentsync.data.steps.common import Evaluator, FilterStep, Loader, pass_on
from latentsync.models.hyperiqa import MIN_QUALITY, load_hyperiqa, quality_frame_indices, quality_score
from latentsync.video.reader import VideoFrames

MIN_SCORE = MIN_QUALITY


def load_quality_evaluator(weights: Path, device: str) -> Evaluator:
    """The hyperIQA evaluator for a weights file: clip -> {"score"}, the mean over the first, middle and last
    frames (module docstring)."""
    model = load_hyperiqa(weights, device)

    def evaluate(clip: Path) -> dict[str, float]:
        frames = VideoFrames(clip)
        picked = [next(frames.iter_range(i, i + 1)) for i in quality_frame_indices(len(frames))]
        return {"score": quality_score(model, picked)}

    return evaluate


@dataclass(frozen=True)
class QualityStep(FilterStep):
    name = "quality"
    what = "hyperIQA"
    option = "--iqa"
    loader: Loader | None = load_quality_evaluator

    def settings(self) -> str:
        return f"{super().settings()} min_score={MIN_SCORE:g}"

    def judge(self, item: Item, out_dir: Path, figures: dict[str, float], seconds: float) -> Result:
        score = float(figures["score"])
        if score < MIN_SCORE:
            return Result.drop("low image quality", f"hyperIQA score {score:.1f} < {MIN_SCORE:g}", **figures)
        return pass_on(item, seconds, **figures)
