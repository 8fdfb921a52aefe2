"""`latentsync doctor`: every part of the install on one screen, each problem with what to do, exit 1 on a broken
required part (and never a traceback)."""

from __future__ import annotations

import av
import pytest

from latentsync import doctor as doctor_mod
from latentsync.cli import main


def test_this_install_is_ready(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("python", "torch", "device", "video", "faces", "model demo", "model 1.6"):
        assert f" {name} " in out, name
    assert "ok   faces" in out and "face detection + mesh run" in out
    assert "H.264 + AAC encoders present" in out
    assert "ready: `latentsync run" in out


def test_a_broken_face_stack_fails_with_what_to_do(capsys, monkeypatch):
    import latentsync.face.landmarks as landmarks

    class Broken:
        def __init__(self, *args, **kwargs):
            raise ImportError("No module named 'mediapipe'")

    monkeypatch.setattr(landmarks, "FaceLandmarker", Broken)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL faces" in out and "No module named 'mediapipe'" in out and "pip install --no-deps mediapipe" in out
    assert "1 problem(s) to fix" in out


def test_missing_encoders_and_a_crashing_check_are_reported_not_raised(capsys, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})

    def crash():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(doctor_mod, "CHECKS", [doctor_mod.check_video, crash])
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL video" in out and "encoders libx264 missing" in out
    assert "FAIL crash" in out and "RuntimeError: driver exploded" in out
    assert "2 problem(s) to fix" in out


@pytest.mark.parametrize("cuda, seen, advice", [(None, False, "install a CUDA build"), ("12.4", False, "nvidia-smi")])
def test_a_cpu_only_machine_gets_a_note_not_a_failure(monkeypatch, cuda, seen, advice):
    import torch

    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: seen)
    check = doctor_mod.check_device()
    assert not check.required and advice in check.problem
    assert check.line().startswith("note device")
