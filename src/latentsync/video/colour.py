"""Y'CbCr <-> RGB with the source's own colour matrix, range and bit depth, so that re-encoding changes nothing.

The model works on RGB, files hold Y'CbCr. A round trip (decode to RGB, encode back) is only invisible when both
directions use the same matrix (BT.601, BT.709, BT.2020, ...), the same range (limited 16-235 or full 0-255), the
same bit depth and matching chroma resampling. FFmpeg's swscale defaults to BT.601 limited whatever the source
says and rounds with a bias, which is how every output pixel used to come out about 2 levels darker, and darker
again with each re-sync. Here the conversion is done in float32 (OpenCV's `transform`, fast and exact to
rounding) from the matrix the file is tagged with:

- decode: chroma is upsampled by repetition and Y'CbCr -> RGB is the exact inverse of the encode below;
- encode: RGB -> Y'CbCr with the same matrix, then each 2x2 (4:2:0) chroma block is the mean of its 4 samples,
  which undoes the repetition exactly, so a pixel nobody edited gets back its own codes (to rounding).

An untagged matrix is taken as players take it (BT.709 for HD sizes, BT.601 below, judged on the source's size);
an untagged range as limited.
The output carries the source's tags unchanged (an untagged source stays untagged, so players show both alike).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import av
import cv2
import numpy as np

# AVColorSpace / AVColorPrimaries / AVColorTransferCharacteristic / AVColorRange values (FFmpeg's pixfmt.h).
UNSPECIFIED = 2  # matrix, primaries and transfer
BT709 = 1
RANGE_UNSPECIFIED, RANGE_LIMITED, RANGE_FULL = 0, 1, 2
# (Kr, Kb) per AVColorSpace value. BT.2020 constant luminance is not a linear matrix of this kind and is read with
# the BT.2020 one, the closest; codings without Kr/Kb (YCgCo, ICtCp) go by the size guess, like untagged ones.
_COEFFICIENTS = {
    1: (0.2126, 0.0722),  # BT.709
    4: (0.30, 0.11),  # FCC
    5: (0.299, 0.114),  # BT.470BG (BT.601 625 lines)
    6: (0.299, 0.114),  # SMPTE 170M (BT.601 525 lines)
    7: (0.212, 0.087),  # SMPTE 240M
    9: (0.2627, 0.0593),  # BT.2020 non-constant luminance
    10: (0.2627, 0.0593),
}
_PLANAR_YUV = re.compile(r"yuv(j?)(420|422|444)p(?:(9|10|12|14|16)le)?")
_SUBSAMPLING = {"420": (2, 2), "422": (2, 1), "444": (1, 1)}  # (x, y) chroma factors


@dataclass(frozen=True)
class Colour:
    """How a video's pixels are coded: tags as found in the file (UNSPECIFIED when absent) plus bit depth.

    `Colour()` is what RGB images become: 8-bit BT.709 limited range, tagged as such.
    """

    matrix: int = BT709
    primaries: int = BT709
    transfer: int = BT709
    value_range: int = RANGE_LIMITED
    bit_depth: int = 8
    hd: bool = True  # decides an untagged matrix, as mpv, VLC and browsers do: BT.709 for HD sizes, else BT.601

    @classmethod
    def of(cls, frame: av.VideoFrame) -> Colour | None:
        """The colour description of a decoded frame, or None when its pixels are not planar Y'CbCr."""
        match = _PLANAR_YUV.fullmatch(frame.format.name)
        if match is None:
            return None
        full = bool(match[1]) or int(frame.color_range) == RANGE_FULL
        tagged_range = int(frame.color_range)
        return cls(
            matrix=int(frame.colorspace),
            primaries=int(frame.color_primaries),
            transfer=int(frame.color_trc),
            value_range=RANGE_FULL if full else tagged_range if tagged_range == RANGE_LIMITED else RANGE_UNSPECIFIED,
            bit_depth=int(match[3] or 8),
            hd=frame.width >= 1280 or frame.height > 576,
        )

    @property
    def full_range(self) -> bool:
        return self.value_range == RANGE_FULL

    @property
    def output_depth(self) -> int:
        """Bit depth written: 8, or 10 for deeper sources (what H.264 High 10 and every x264 build carry)."""
        return 8 if self.bit_depth <= 8 else 10

    @property
    def pix_fmt(self) -> str:
        return "yuv420p" if self.output_depth == 8 else "yuv420p10le"

    def coefficients(self) -> tuple[float, float]:
        """(Kr, Kb) of the matrix; an untagged one (or one that is not a linear matrix) goes by `hd`."""
        if self.matrix in _COEFFICIENTS:
            return _COEFFICIENTS[self.matrix]
        return _COEFFICIENTS[1] if self.hd else _COEFFICIENTS[6]

    def tag(self, context: av.video.codeccontext.VideoCodecContext) -> None:
        """Write these tags into an encoder's context (x264 puts them in the stream's VUI)."""
        context.colorspace, context.color_primaries, context.color_trc = self.matrix, self.primaries, self.transfer
        context.color_range = self.value_range


def _code_scale(depth: int, full: bool) -> tuple[float, float, float, float]:
    """(luma offset, luma span, chroma offset, chroma span) of integer codes at `depth` bits."""
    if full:
        top = float(2**depth - 1)
        return 0.0, top, float(2 ** (depth - 1)), top
    s = float(2 ** (depth - 8))
    return 16 * s, 219 * s, 128 * s, 224 * s


def _rgb_from_ypbpr(kr: float, kb: float) -> np.ndarray:
    """3x3 matrix taking (Y', Pb, Pr) with Y' in [0, 1], P in [-0.5, 0.5] to (R, G, B) in [0, 1]."""
    kg = 1 - kr - kb
    return np.array(
        [
            [1.0, 0.0, 2 * (1 - kr)],
            [1.0, -2 * kb * (1 - kb) / kg, -2 * kr * (1 - kr) / kg],
            [1.0, 2 * (1 - kb), 0.0],
        ]
    )


def _decode_matrix(colour: Colour, depth: int) -> np.ndarray:
    """3x4 affine map from (Y, Cb, Cr) codes to RGB in 0..255."""
    y0, ys, c0, cs = _code_scale(depth, colour.full_range)
    to_ypbpr = np.array([[1 / ys, 0, 0, -y0 / ys], [0, 1 / cs, 0, -c0 / cs], [0, 0, 1 / cs, -c0 / cs]])
    return (255.0 * _rgb_from_ypbpr(*colour.coefficients()) @ to_ypbpr).astype(np.float32)


def _encode_matrix(colour: Colour) -> np.ndarray:
    """3x4 affine map from RGB in 0..255 to (Y, Cb, Cr) codes at the output depth: `_decode_matrix` inverted."""
    y0, ys, c0, cs = _code_scale(colour.output_depth, colour.full_range)
    to_ypbpr = np.linalg.inv(_rgb_from_ypbpr(*colour.coefficients())) / 255.0
    codes = np.diag([ys, cs, cs]) @ to_ypbpr
    return np.hstack([codes, np.array([[y0], [c0], [c0]])]).astype(np.float32)


def _plane(frame: av.VideoFrame, index: int, dtype: type) -> np.ndarray:
    plane = frame.planes[index]
    data = np.frombuffer(plane, dtype=dtype).reshape(plane.height, -1)
    return data[:, : plane.width]


def frame_to_rgb(frame: av.VideoFrame, colour: Colour) -> np.ndarray:
    """RGB uint8 HxWx3 of a planar Y'CbCr frame, converted with `colour`'s matrix and range."""
    match = _PLANAR_YUV.fullmatch(frame.format.name)
    if match is None:
        raise ValueError(f"not a planar Y'CbCr frame: {frame.format.name}")
    depth = int(match[3] or 8)
    dtype = np.uint8 if depth == 8 else np.dtype("<u2")
    width, height = frame.width, frame.height
    fx, fy = _SUBSAMPLING[match[2]]
    channels = [_plane(frame, 0, dtype)]
    for index in (1, 2):
        chroma = _plane(frame, index, dtype)
        if fx > 1 or fy > 1:  # repetition, the exact counterpart of the encoder's block mean
            size = (chroma.shape[1] * fx, chroma.shape[0] * fy)
            chroma = cv2.resize(chroma, size, interpolation=cv2.INTER_NEAREST)[:height, :width]
        channels.append(np.ascontiguousarray(chroma))
    # Integer in, integer out: OpenCV computes in floating point and rounds once, saturating.
    rgb = cv2.transform(cv2.merge(channels), _decode_matrix(colour, depth))
    return rgb if depth == 8 else np.minimum(rgb, 255).astype(np.uint8)


def rgb_to_frame(rgb: np.ndarray, colour: Colour) -> av.VideoFrame:
    """A 4:2:0 frame (`colour.pix_fmt`) of an RGB uint8 image with even sides, tagged with `colour`."""
    height, width = rgb.shape[:2]
    matrix = _encode_matrix(colour)
    deep = colour.output_depth > 8
    luma = cv2.transform(rgb.astype(np.uint16) if deep else rgb, matrix[:1])
    # The mean of each 2x2 block in RGB, then the matrix: the same as averaging chroma (the map is affine), and
    # in float so that the block means are not rounded twice.
    means = cv2.resize(rgb.astype(np.float32), (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    chroma = cv2.transform(means, matrix[1:])
    top = 2**colour.output_depth - 1
    dtype = np.dtype("<u2") if deep else np.uint8
    planes = [np.minimum(luma, top) if deep else luma]
    planes += [np.clip(np.rint(chroma[:, :, c]), 0, top).astype(dtype) for c in (0, 1)]
    frame = av.VideoFrame(width, height, colour.pix_fmt)
    for plane, codes in zip(frame.planes, planes):
        padded = np.zeros((plane.height, plane.line_size // codes.itemsize), dtype)
        padded[:, : plane.width] = codes
        plane.update(padded)
    frame.colorspace, frame.color_range = colour.matrix, colour.value_range
    frame.color_primaries, frame.color_trc = colour.primaries, colour.transfer
    return frame
