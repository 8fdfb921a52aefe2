"""`latentsync doctor`: what this install can do, on one screen, and what to do about each problem.

Each check is a small function that returns a `Check`: a name, what was found, and, when something is wrong, the
one thing to do about it. Checks never raise: a broken part of the install is exactly what this command is for.
The command exits 1 when a check that every run needs fails (torch, video I/O, the face stack, the demo model),
so scripts and CI can use it as a gate.
"""

from __future__ import annotations

import platform
import traceback
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

import numpy as np


@dataclass
class Check:
    name: str
    found: str
    problem: str | None = None  # what to do about it; None: fine
    required: bool = True  # a failed required check makes the command exit 1

    def line(self) -> str:
        mark = "ok  " if self.problem is None else ("FAIL" if self.required else "note")
        text = f"{mark} {self.name:<10} {self.found}"
        return text if self.problem is None else f"{text}\n     {'':<10} -> {self.problem}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def check_python() -> Check:
    return Check("python", f"{platform.python_version()} on {platform.system()} {platform.machine()}, "
                           f"latentsync {_version('latentsync')}")


def check_torch() -> Check:
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    return Check("torch", f"{torch.__version__} ({build}), {torch.get_num_threads()} threads")


def check_device() -> Check:
    """The device and dtype `--device auto --dtype auto` picks, with the GPU's capability and memory."""
    import torch

    from latentsync.pipeline.runtime import resolve_device, resolve_dtype

    device = resolve_device("auto")
    dtype = str(resolve_dtype("auto", device)).removeprefix("torch.")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return Check("device", f"cuda: {props.name}, compute capability {props.major}.{props.minor}, "
                               f"{props.total_memory / 2**30:.0f} GiB; runs in {dtype}")
    problem = None
    if not torch.version.cuda:
        problem = ("CPU only: fine for the demo model; for the official models install a CUDA build of torch "
                   "(https://pytorch.org), then reinstall latentsync without touching torch")
    elif not torch.cuda.is_available():
        problem = "this torch has CUDA but sees no GPU: check the NVIDIA driver (nvidia-smi)"
    return Check("device", f"cpu; runs in {dtype}", problem, required=False)


def check_video() -> Check:
    """PyAV's bundled FFmpeg, with the H.264 and AAC encoders every output needs."""
    import av

    missing = [name for name in ("libx264", "aac") if name not in av.codecs_available]
    versions = av.library_versions.get("libavcodec", ())
    found = f"PyAV {av.__version__}, FFmpeg libavcodec {'.'.join(map(str, versions))}"
    if missing:
        return Check("video", found, f"encoders {', '.join(missing)} missing: reinstall PyAV from its wheel "
                                     "(`pip install --force-reinstall av`), which bundles them")
    return Check("video", found + ", H.264 + AAC encoders present")


def check_faces() -> Check:
    """mediapipe's face detection and mesh, run once on a blank frame (loads their graphs and models)."""
    from latentsync.face.landmarks import FaceLandmarker

    found = f"mediapipe {_version('mediapipe')}, opencv {_version('opencv-python-headless')}"
    try:
        with FaceLandmarker() as landmarker:
            landmarker.detect(np.zeros((128, 128, 3), dtype=np.uint8))
    except Exception as exc:  # any failure here is the finding
        return Check("faces", found, f"the face stack does not run ({type(exc).__name__}: {exc}); "
                                     "install it as the Makefile does: `pip install --no-deps mediapipe==0.10.21`")
    return Check("faces", found + "; face detection + mesh run")


def check_models() -> list[Check]:
    """The bundled demo model (required) and the official ones (optional), with where they live."""
    from latentsync.errors import LatentSyncError
    from latentsync.models.modeldir import DEMO_MODEL, OFFICIAL_MODELS, ModelDir, official_model_dir

    checks = []
    for name in (DEMO_MODEL, *OFFICIAL_MODELS):
        try:
            model = ModelDir.resolve(name)
            checks.append(Check(f"model {name}", f"{model.spec.resolution} px, at {model.spec.root}"))
        except LatentSyncError as exc:
            fix = (f"`latentsync download --model {name}` (into {official_model_dir(name)})" if name != DEMO_MODEL
                   else str(exc))
            checks.append(Check(f"model {name}", "not installed", fix, required=name == DEMO_MODEL))
    return checks


CHECKS: list[Callable[[], Check | list[Check]]] = [
    check_python, check_torch, check_device, check_video, check_faces, check_models,
]


def run_checks() -> list[Check]:
    """Every check; one that crashes is reported as a failure with its error, never raised."""
    results: list[Check] = []
    for check in CHECKS:
        try:
            got = check()
        except Exception as exc:
            name = check.__name__.removeprefix("check_")
            last = traceback.extract_tb(exc.__traceback__)[-1]
            got = Check(name, "check failed", f"{type(exc).__name__}: {exc} (at {last.filename}:{last.lineno})")
        results += got if isinstance(got, list) else [got]
    return results


def doctor() -> int:
    """Print the checks; 1 when a required one fails."""
    results = run_checks()
    for result in results:
        print(result.line())
    failed = [r for r in results if r.problem is not None and r.required]
    ready = "ready: `latentsync run VIDEO AUDIO -o OUT --model demo`"
    print(f"\n{len(failed)} problem(s) to fix" if failed else f"\n{ready}")
    return 1 if failed else 0
