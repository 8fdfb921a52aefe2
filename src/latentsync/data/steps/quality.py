"""Step 7, `quality`: drop clips whose image quality is low, judged by hyperIQA.

As upstream: hyperIQA with KonIQ weights (`koniq_pretrained.pkl`, user-supplied) scores the first, middle and
last frames of each clip, and a clip is kept when the mean score is >= 40. The evaluator returns
`{"score": mean}`; which code reads the weights is `load_quality_evaluator`'s decision. Without `--iqa` the step
passes every clip on unchecked, with a warning (see `FilterStep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from latentsync.data.runner import Item, Result
from latentsync.data.steps.common import Evaluator, FilterStep, Loader, pass_on
from latentsync.errors import ConfigError

MIN_SCORE = 40.0


def load_quality_evaluator(weights: Path, device: str) -> Evaluator:
    """The hyperIQA evaluator for a weights file: clip -> {"score"} (module docstring).

    None is wired in yet: the data pipeline runs its quality step only without weights (skipped, with a warning).
    """
    raise ConfigError(f"--iqa {weights}: no hyperIQA evaluator is available to the data pipeline yet")


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
