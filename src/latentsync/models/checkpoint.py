"""Reading and writing weight files in the official LatentSync layouts.

Official U-Net and SyncNet checkpoints are `torch.save`d dicts: `{"state_dict": {...}, "global_step": int, ...}`
with un-prefixed keys. Our own files may also be safetensors (a flat state dict; `global_step` kept in the
metadata), which load without unpickling and can be memory-mapped.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from latentsync.errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors",)


@dataclass
class CheckpointFile:
    """The contents of a weight file: tensors, the training step, and any other top-level entries."""

    state_dict: dict[str, torch.Tensor]
    global_step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> CheckpointFile:
    """Read an official `{"state_dict", "global_step"?}` file, a bare state dict, or a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path, map_location)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a loadable torch file, truncated or corrupt ({type(exc).__name__})"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    if "state_dict" in obj:
        state = obj["state_dict"]
        extra = {k: v for k, v in obj.items() if k not in ("state_dict", "global_step")}
        step = int(obj.get("global_step", 0) or 0)
    else:
        state, extra, step = obj, {}, 0
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} has no tensor state_dict")
    return CheckpointFile(dict(state), step, extra)


def save_checkpoint(
    path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], global_step: int = 0, **extra: Any
) -> Path:
    """Write atomically (temp file + rename) so an interrupted save never leaves a half-written file.

    `.safetensors` paths get a flat state dict with `global_step` in the metadata; any other suffix gets the
    official torch dict `{"state_dict", "global_step", **extra}`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        if path.suffix in SAFETENSORS_SUFFIXES:
            from safetensors.torch import save_file

            save_file(tensors, tmp, metadata={"global_step": str(int(global_step))})
        else:
            torch.save({"state_dict": tensors, "global_step": int(global_step), **extra}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_fits(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise one `CheckpointError` line, "<what>: 2 missing (a, b); 1 wrong shape (c [3] vs model [4])", when the
    keys or shapes of `found` differ from `expected`; a strict load after this cannot fail."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [
        f"{k} {list(found[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in found and found[k].shape != expected[k].shape
    ]
    problems = [
        f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{what}: {'; '.join(problems)}")


def load_legacy_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str,
                       device: str | torch.device = "cpu") -> torch.nn.Module:
    """Assign `state` into `model` (built on the meta device) strictly; returns it in eval mode, on `device`.

    For files written by old PyTorch (the published SyncNet v2 and hyperIQA weights): BatchNorm
    `num_batches_tracked` counters may be absent, as torch's own loader allows; they play no part in eval mode.
    Anything else that differs is one `CheckpointError` line starting with `what`.
    """
    expected = model.state_dict()
    state = dict(state)
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    check_fits(expected, state, what)
    model.load_state_dict({k: v.to(device=device, dtype=expected[k].dtype) for k, v in state.items()}, assign=True)
    return model.eval()


def _read_safetensors(path: Path, map_location: str | torch.device) -> CheckpointFile:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
    return CheckpointFile(state, int(meta.get("global_step", 0)), {})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
