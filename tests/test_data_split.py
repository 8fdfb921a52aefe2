"""`latentsync data split`: clips traced back to their source files, and so to people; one list per side."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentsync.cli import main
from latentsync.data.split import split_filelist
from latentsync.errors import ConfigError

PLAN = """
held_out:
  p1: [a.mp4]
train:
  p2: [b.mpg, c.mp4]
  p3: [d.mp4]
"""


def _files(tmp_path: Path, lines: list[str], plan: str = PLAN) -> tuple[Path, Path]:
    (tmp_path / "filelist.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "plan.yaml").write_text(plan)
    return tmp_path / "filelist.txt", tmp_path / "plan.yaml"


def test_pieces_follow_their_source_person(tmp_path, capsys):
    lines = ["align/a-shot000-seg00.mp4", "align/a-shot001.mp4", "align/b.mpg.mp4", "align/b.mpg-shot000-seg01.mp4",
             "align/c-seg00.mp4"]
    filelist, plan = _files(tmp_path, lines)
    report = split_filelist(filelist, plan)
    assert (tmp_path / "held_out.txt").read_text().split() == lines[:2]
    assert (tmp_path / "train.txt").read_text().split() == lines[2:]
    assert report.people == {"held_out": 1, "train": 1} and report.missing == ["d.mp4"]  # p3 made no clip
    assert main(["data", "split", str(filelist), str(plan)]) == 0
    assert "no clips from 1 planned file(s): d.mp4" in capsys.readouterr().out


@pytest.mark.parametrize(
    "lines, plan, message",
    [
        (["align/e-seg00.mp4"], PLAN, "align/e-seg00.mp4 \\(from e\\) is in no person"),
        (["align/a.mp4"], "held_out:\n  p1: [a.mp4]\ntrain:\n  p2: [a.mp4]\n", "a.mp4 is listed twice"),
        (["align/a.mp4"], "- a.mp4\n", "expected 'side: {person: \\[files\\]}'"),
    ],
)
def test_bad_plans_and_untraceable_clips_are_one_line_errors(tmp_path, lines, plan, message):
    filelist, plan_path = _files(tmp_path, lines, plan)
    with pytest.raises(ConfigError, match=message):
        split_filelist(filelist, plan_path)
    assert not (tmp_path / "train.txt").exists()
