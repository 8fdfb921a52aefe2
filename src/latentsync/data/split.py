"""`latentsync data split`: divide a pipeline's filelist into training and held-out lists by person, not by file.

Clips of one person are alike, so a held-out set that shares people with the training set measures memory, not
generalisation. A split plan (YAML) names, for each side, the people and their source files:

    held_out:
      person_a: [a.mp4]
    train:
      person_b: [b1.mp4, b2.mpg]

Every clip the pipeline made keeps its source's name as a prefix (`b1-shot000-seg01.mp4`, `b2.mpg-shot000.mp4`, or
`b1.mp4` when passed on whole), which is how it is traced back to its source and so to a person. One list per side is written next to
the filelist (`train.txt`, `held_out.txt`), in the filelist's own format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from latentsync.errors import ConfigError

_PIECE = re.compile(r"(?P<source>.+?)(?:-shot\d{3})?(?:-seg\d{2})?")


@dataclass
class SplitReport:
    lists: dict[str, Path] = field(default_factory=dict)  # side -> written filelist
    clips: dict[str, int] = field(default_factory=dict)  # side -> clips in it
    people: dict[str, int] = field(default_factory=dict)  # side -> people with at least one clip
    missing: list[str] = field(default_factory=list)  # sources of the plan with no clip (dropped by a step)

    def table(self) -> str:
        rows = [f"{side:<10} {self.people[side]:>4} people {self.clips[side]:>6} clips -> {path}"
                for side, path in self.lists.items()]
        if self.missing:
            rows.append(f"no clips from {len(self.missing)} planned file(s): {', '.join(self.missing)}")
        return "\n".join(rows)


def read_plan(path: Path) -> dict[str, dict[str, str]]:
    """side -> {source name and its stem -> person} (outputs keep a source's name, less an `.mp4`); a one-line
    ConfigError when a file has two people or sides."""
    try:
        plan = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the split plan {path} ({str(exc).splitlines()[0]})") from None
    if not isinstance(plan, dict) or not all(isinstance(people, dict) for people in plan.values()):
        raise ConfigError(f"split plan {path}: expected 'side: {{person: [files]}}' mappings")
    owners: dict[str, str] = {}
    sides: dict[str, dict[str, str]] = {}
    for side, people in plan.items():
        sides[side] = {}
        for person, files in people.items():
            for name in files:
                if name in owners:
                    raise ConfigError(f"split plan {path}: {name} is listed twice ({owners[name]} and {side}/{person})")
                owners[name] = f"{side}/{person}"
                sides[side][name] = sides[side][Path(name).stem] = person
    return sides


def split_filelist(filelist: Path, plan_path: Path) -> SplitReport:
    """Write one filelist per side of the plan next to `filelist`; every clip must trace back to a planned file."""
    if not filelist.is_file():
        raise ConfigError(f"filelist not found: {filelist}")
    sides = read_plan(plan_path)
    lines = [line.strip() for line in filelist.read_text().splitlines() if line.strip()]
    chosen: dict[str, list[str]] = {side: [] for side in sides}
    people: dict[str, set[str]] = {side: set() for side in sides}
    seen: set[str] = set()
    for line in lines:
        source = _PIECE.fullmatch(Path(line).stem)["source"]
        side = next((s for s, stems in sides.items() if source in stems), None)
        if side is None:
            raise ConfigError(f"{line} (from {source}) is in no person of the split plan {plan_path}")
        chosen[side].append(line)
        people[side].add(sides[side][source])
        seen.add(source)
    planned = {name for stems in sides.values() for name in stems if Path(name).suffix}
    report = SplitReport(missing=sorted(n for n in planned if n not in seen and Path(n).stem not in seen))
    for side, clips in chosen.items():
        path = filelist.parent / f"{side}.txt"
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_text("".join(f"{clip}\n" for clip in clips))
        tmp.replace(path)
        report.lists[side], report.clips[side], report.people[side] = path, len(clips), len(people[side])
    return report
