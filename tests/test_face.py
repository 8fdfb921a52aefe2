"""Face stack: mediapipe landmarks, the three template points, alignment round trip, tracking, the fixed mask."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
from media.faces import ASTRONAUT_FACE_BOX, astronaut, astronaut_frames

from latentsync.errors import ConfigError, LatentSyncError
from latentsync.face.align import Aligner
from latentsync.face.landmarks import Face, FaceLandmarker
from latentsync.face.mask import load_mask
from latentsync.face.track import FaceSelector, FaceTracker, parse_face_selector, smooth_landmarks

SMALL = (640, 360)


@pytest.fixture(scope="module")
def still() -> FaceLandmarker:
    with FaceLandmarker(tracking=False) as landmarker:
        yield landmarker


def _place(angle: float, scale: float, shift: tuple[float, float], size=(1280, 720)) -> np.ndarray:
    """The astronaut photo rotated/scaled about the face and moved, on a grey 720p frame."""
    m = cv2.getRotationMatrix2D((225, 125), angle, scale)
    m[:, 2] += shift
    return cv2.warpAffine(astronaut(), m, size, borderValue=(90, 90, 90))


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _inside(point, box, margin: float = 0.0) -> bool:
    return box[0] - margin <= point[0] <= box[2] + margin and box[1] - margin <= point[1] <= box[3] + margin


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


# --- landmarks ---------------------------------------------------------------------------------------------


def test_one_face_on_the_astronaut(still: FaceLandmarker) -> None:
    faces = still.detect(astronaut())
    assert len(faces) == 1
    face = faces[0]
    assert face.landmarks.shape == (468, 2) and face.landmarks.dtype == np.float32
    assert _iou(face.bbox, ASTRONAUT_FACE_BOX) > 0.8, face.bbox
    left, right, nose = face.points3
    assert left[0] < nose[0] < right[0]
    assert nose[1] > left[1] + 20 and nose[1] > right[1] + 20
    assert 45 < right[0] - left[0] < 65, f"brow distance {right[0] - left[0]:.1f} px on a 94 px face"


def test_no_face_in_background(still: FaceLandmarker) -> None:
    frame = next(astronaut_frames(1, size=SMALL, absent=(0, 1)))
    assert still.detect(frame) == []


def test_small_face_found_by_the_full_range_fallback(still: FaceLandmarker) -> None:
    """A 94 px face in 1280x720 (7% of the width) is below the mesh's short-range detector; the fallback finds it."""
    frame = _place(5.0, 1.0, (500, 200))
    m = cv2.getRotationMatrix2D((225, 125), 5.0, 1.0)
    m[:, 2] += (500, 200)
    corners = np.array(ASTRONAUT_FACE_BOX).reshape(2, 2) @ m[:, :2].T + m[:, 2]
    faces = still.detect(frame)
    assert len(faces) == 1 and faces[0].score is not None and faces[0].score > 0.5
    assert _iou(faces[0].bbox, corners.ravel()) > 0.7, (faces[0].bbox, corners.ravel())


def test_missing_mediapipe_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions", None)
    with pytest.raises(LatentSyncError, match="pip install --no-deps mediapipe==0.10.21"):
        FaceLandmarker()


# --- alignment ---------------------------------------------------------------------------------------------

PLACEMENTS = {"upright": (0.0, 2.0, (400, 100)), "rot+12": (12.0, 1.6, (350, 150)), "rot-8": (-8.0, 2.4, (500, 60))}


@pytest.mark.parametrize("resolution", [256, 512])
@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_crop_points_land_on_template(still: FaceLandmarker, resolution: int, placement: str) -> None:
    """Landmarks found again on the aligned crop sit where the fit put them, and near the template.

    Two comparisons, both in crop pixels (template mapped through the anisotropic face_size -> res resize):
    with the fit's own prediction (isolates warp + resize; what remains is landmark noise: the crop shows the
    face upright and stretched, the frame showed it rotated),
    and with the template itself (adds the fit residual: three points of a real face are not an exact
    similarity of upstream's template; for the astronaut the nose sits ~8 px lower at 256).
    """
    frame = _place(*PLACEMENTS[placement])
    aligner = Aligner(resolution)
    face = still.detect(frame)[0]
    m = aligner.fit(face.points3, smooth=False)
    crop = aligner.warp(frame, m)
    assert crop.shape == (resolution, resolution, 3) and crop.dtype == np.uint8
    found = still.detect(crop)
    assert len(found) == 1
    scale = np.array([resolution / aligner.face_size[0], resolution / aligner.face_size[1]])
    predicted = (face.points3 @ m[:, :2].T + m[:, 2] + 0.5) * scale - 0.5
    err_fit = np.linalg.norm(found[0].points3 - predicted, axis=1)
    err_template = np.linalg.norm(found[0].points3 - aligner.crop_template, axis=1)
    unit = resolution / 256
    msg = f"{placement} @{resolution}: error vs fit {err_fit.round(1)} px, vs template {err_template.round(1)} px"
    # mediapipe's brow points move by up to ~3% of the face when the same face is seen rotated (rot+12: 8.5 px
    # at 256); the nose is steadier.
    assert err_fit.max() < 10 * unit and err_fit[2] < 4 * unit, msg
    assert err_template.max() < 18 * unit, msg


@pytest.mark.parametrize("resolution", [128, 256, 512])
def test_template_and_face_size(resolution: int) -> None:
    aligner = Aligner(resolution)
    ratio = resolution / 256 * 2.8
    np.testing.assert_allclose(aligner.template, np.array([[17, 20], [58, 20], [37.5, 40]]) * ratio)
    assert aligner.face_size == {128: (105, 140), 256: (210, 280), 512: (420, 560)}[resolution]


def test_fit_on_template_is_identity() -> None:
    for smooth in (False, True):
        aligner = Aligner(256)
        np.testing.assert_allclose(aligner.fit(aligner.template, smooth=smooth), np.eye(2, 3), atol=1e-12)


def test_fit_inverts_a_similarity() -> None:
    aligner = Aligner(512)
    angle, scale, shift = np.radians(17.0), 0.63, np.array([311.0, -42.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = aligner.template @ rot.T + shift
    m = aligner.fit(points, smooth=False)
    np.testing.assert_allclose(points @ m[:, :2].T + m[:, 2], aligner.template, atol=1e-9)


def test_nose_bias_is_blended_and_reset() -> None:
    """Upstream's nose bias: 0.8 current + 0.2 previous, added to the translation; reset() forgets it."""
    aligner = Aligner(256)
    a = aligner.template + [[0, 0], [0, 0], [3.0, 0]]  # nose off-centre: a non-zero bias
    b = aligner.template + [[0, 0], [0, 0], [-3.0, 0]]
    plain_b = aligner.fit(b, smooth=False)
    first_a = aligner.fit(a) - aligner.fit(a, smooth=False)  # bias of a alone
    aligner.reset()
    aligner.fit(b)
    bias_b = aligner.fit(b) - plain_b  # steady state for b: the bias of b
    aligner.reset()
    aligner.fit(a)
    blended = aligner.fit(b) - plain_b
    np.testing.assert_allclose(blended, 0.2 * first_a + 0.8 * bias_b, atol=1e-12)
    assert np.abs(first_a).max() < 0.1, "the bias is in normalised units: a sub-pixel nudge"


def test_landmark_smoothing_steadies_the_crop(still: FaceLandmarker) -> None:
    """Jittered landmarks (1 px noise): the smoothed track moves the crop window far less between frames."""
    base = still.detect(astronaut())[0].landmarks
    rng = np.random.default_rng(0)
    raw = [base + rng.normal(0, 1.0, base.shape).astype(np.float32) for _ in range(30)]
    smoothed = [raw[0]]
    for lm in raw[1:]:
        smoothed.append(smooth_landmarks(smoothed[-1], lm))

    def window_motion(seq: list[np.ndarray]) -> float:
        aligner = Aligner(256)
        ms = [aligner.fit(Face.from_landmarks(lm).points3) for lm in seq]
        corners = np.array([[0, 0], [210, 0], [0, 280], [210, 280]], dtype=np.float64)
        where = [corners @ cv2.invertAffineTransform(m)[:, :2].T + cv2.invertAffineTransform(m)[:, 2] for m in ms]
        return float(np.mean([np.abs(p - q).max() for p, q in zip(where[1:], where[:-1])]))

    rough, steady = window_motion(raw), window_motion(smoothed)
    assert steady < 0.5 * rough, f"crop corner motion per frame: raw {rough:.2f} px, smoothed {steady:.2f} px"
    # A real move is followed, not damped: 20 px on a ~94 px face.
    moved = smooth_landmarks(base, base + 20)
    np.testing.assert_allclose(moved, base + 20, atol=1e-3)


@pytest.fixture(scope="module")
def pasted():
    frame = _place(8.0, 2.2, (420, 80))
    aligner = Aligner(256)
    with FaceLandmarker(tracking=False) as landmarker:
        m = aligner.fit(landmarker.detect(frame)[0].points3, smooth=False)
    crop = aligner.warp(frame, m)
    return frame, aligner, m, crop


def test_restore_leaves_outside_untouched(pasted) -> None:
    frame, aligner, m, crop = pasted
    soft = aligner.soft_mask(frame.shape, m)
    edited = np.zeros_like(crop)  # the most different face there is
    out = aligner.restore(frame, edited, m)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    outside = soft == 0
    assert 0.7 < outside.mean() < 0.99
    assert np.array_equal(out[outside], frame[outside])
    assert (out[soft > 0.99] < frame[soft > 0.99]).mean() > 0.95  # and the face itself is replaced


def test_restore_unedited_crop_is_close(pasted) -> None:
    frame, aligner, m, crop = pasted
    out = aligner.restore(frame, crop, m)
    face = aligner.soft_mask(frame.shape, m) > 0
    psnr = _psnr(out[face], frame[face])
    assert psnr > 30, f"round trip through the crop: PSNR {psnr:.1f} dB over the pasted region"


def test_feather_is_monotone(pasted) -> None:
    frame, aligner, m, _ = pasted
    soft = aligner.soft_mask(frame.shape, m)
    assert soft.max() == pytest.approx(1.0) and soft.min() == 0.0
    cy, cx = (np.argwhere(soft >= 0.999).mean(axis=0)).round().astype(int)
    for ray in (soft[cy, cx::-1], soft[cy, cx:], soft[cy::-1, cx], soft[cy:, cx]):
        assert np.all(np.diff(ray) <= 1e-6), "soft mask rises again moving out from the face centre"
        assert ray[-1] == 0.0 and np.any((ray > 0.05) & (ray < 0.95))  # feathered, not a hard edge


def test_face_partly_outside_the_frame() -> None:
    aligner = Aligner(256)
    frame = np.full((200, 300, 3), 40, np.uint8)
    m = np.array([[1.0, 0.0, 150.0], [0.0, 1.0, 100.0]])  # the face box starts at (-150, -100)
    crop = aligner.warp(frame, m)
    assert (crop[:80, :80] == 127).all()  # outside the frame: fill 127
    out = aligner.restore(frame, np.full_like(crop, 200), m)
    assert out[0, 0].tolist() == [200, 200, 200] and out[-1, -1].tolist() == [40, 40, 40]


# --- tracking ----------------------------------------------------------------------------------------------


def test_drift_clip_is_tracked_on_every_frame() -> None:
    clip = list(astronaut_frames(12, size=SMALL, seed=3, with_boxes=True))
    with FaceTracker("largest") as tracker:
        faces = [tracker(frame) for frame, _ in clip]
    assert all(f is not None for f in faces)
    assert tracker.track_id == 0  # one track, never broken
    for f, (_, boxes) in zip(faces, clip):
        assert _iou(f.bbox, boxes[0]) > 0.7


def test_absent_frames_give_none_and_tracking_resumes() -> None:
    clip = astronaut_frames(12, size=SMALL, seed=1, absent=(4, 8))
    with FaceTracker("largest") as tracker:
        found = [tracker(frame) is not None for frame in clip]
    assert found == [True] * 4 + [False] * 4 + [True] * 4
    assert tracker.track_id == 1  # a new track after the gap (callers reset their Aligner)


@pytest.mark.parametrize(("spec", "expected"), [("largest", 0), ("0", 0), ("1", 1), ("460,200", 1), ("5,5", 0)])
def test_selector_picks_and_keeps_the_person(spec: str, expected: int) -> None:
    clip = astronaut_frames(8, size=SMALL, seed=2, two_faces=True, with_boxes=True)
    with FaceTracker(spec) as tracker:
        for frame, boxes in clip:
            face = tracker(frame)
            assert face is not None and _inside(face.center, boxes[expected]), spec
    assert tracker.track_id == 0


@pytest.mark.parametrize(("spec", "leaver"), [("largest", 0), ("1", 1)])
def test_no_swap_when_the_speaker_leaves(spec: str, leaver: int) -> None:
    clip = astronaut_frames(
        10, size=SMALL, seed=4, two_faces=True, absent=(3, 7), absent_faces=(leaver,), with_boxes=True
    )
    with FaceTracker(spec) as tracker:
        for i, (frame, boxes) in enumerate(clip):
            face = tracker(frame)
            if 3 <= i < 7:
                assert face is None, f"frame {i}: took the other person while the speaker was away"
            else:
                assert face is not None and _inside(face.center, boxes[leaver]), f"frame {i}"


def test_small_faces_are_rejected() -> None:
    tracker = FaceTracker("largest", landmarker=_NoLandmarker())
    tiny = Face.from_landmarks(np.random.default_rng(0).uniform(10, 50, (468, 2)))
    assert not tracker.plausible(tiny, (360, 640, 3))
    big = Face.from_landmarks(tiny.landmarks * 3)
    assert tracker.plausible(big, (360, 640, 3))
    assert not tracker.plausible(Face.from_landmarks(tiny.landmarks * 3 - 130), (360, 640, 3))  # mostly outside


class _NoLandmarker:
    """Stands in for FaceLandmarker where a test only needs the tracker's own logic."""

    def detect(self, frame: np.ndarray) -> list[Face]:
        return []


@pytest.mark.parametrize("spec", ["", "biggest", "-1", "1.5", "1,2,3", "x,y", "10,", "0x1"])
def test_bad_selector_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="--face"):
        parse_face_selector(spec)


def test_selector_syntax() -> None:
    assert FaceSelector.parse(" Largest ") == FaceSelector("largest")
    assert FaceSelector.parse("2") == FaceSelector("index", index=2)
    assert FaceSelector.parse("640, 360") == FaceSelector("point", point=(640, 360))


# --- mask --------------------------------------------------------------------------------------------------


def test_mask_256() -> None:
    mask = load_mask(256)
    assert mask.shape == (256, 256) and mask.dtype == np.float32
    assert set(np.unique(mask).tolist()) == {0.0, 1.0}
    zero = mask == 0
    assert zero.mean() == pytest.approx(0.407, abs=0.001)
    rows = np.flatnonzero(zero.any(axis=1))
    assert (rows[0], rows[-1]) == (95, 242)
    assert load_mask(256) is mask  # cached


def test_mask_512() -> None:
    mask = load_mask(512)
    assert mask.shape == (512, 512) and mask.dtype == np.float32
    assert mask.min() >= 0 and mask.max() <= 1
    assert (mask < 0.5).mean() == pytest.approx(0.407, abs=0.002)
    assert 0 < ((mask > 0) & (mask < 1)).mean() < 0.05  # Lanczos: soft only along the edge
    assert (load_mask(256).repeat(2, 0).repeat(2, 1) != (mask > 0.5)).mean() < 0.01
