"""sensor_msgs images <-> numpy arrays, without cv_bridge.

Inputs become numpy views over the message buffer wherever the layout allows it (rgb8, rgba8,
bgr8 and bgra8 are channel views, mono8 is broadcast); only encodings that need arithmetic
(mono16, 32FC1, yuv422 variants, compressed images) allocate. Every malformed message raises a
subclass of `ImageConversionError` whose `reason` names the defect for diagnostics counters.

Outputs are written into `ImageMessageBuffer`s: a message and its data buffer are allocated once
per output and rewritten in place for every frame, so publishing costs one copy (numpy into the
message buffer) plus the middleware's serialisation.

Allowed dependencies: numpy, OpenCV, sensor_msgs, std_msgs.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header


class ImageConversionError(ValueError):
    """An image message that cannot be turned into an array; `reason` is a short counter key."""

    reason: ClassVar[str] = 'invalid'


class UnsupportedEncodingError(ImageConversionError):
    """The encoding (or compressed format) is not one this node can read."""

    reason = 'encoding'


class StepMismatchError(ImageConversionError):
    """`step` (bytes per row) is inconsistent with width and encoding."""

    reason = 'step'


class TruncatedDataError(ImageConversionError):
    """`data` holds fewer than `step * height` bytes."""

    reason = 'data_size'


class ImageSizeError(ImageConversionError):
    """Width or height are impossible for the encoding (e.g. odd width for yuv422)."""

    reason = 'size'


class EmptyImageError(ImageSizeError):
    """Width, height or the compressed payload is zero."""

    reason = 'zero_size'


class ImageTooLargeError(ImageSizeError):
    """The frame exceeds the configured maximum size."""

    reason = 'too_large'


class AspectRatioError(ImageSizeError):
    """The frame is within the size limits but too elongated to resize to the model's input."""

    reason = 'aspect'


class NonFiniteValuesError(ImageConversionError):
    """A floating-point image contains NaN or infinity."""

    reason = 'non_finite'


class CorruptCompressedImageError(ImageConversionError):
    """A JPEG/PNG payload is truncated, malformed or cannot be decoded."""

    reason = 'corrupt'


@dataclass(frozen=True)
class ImageLimits:
    """Largest frame accepted; protects the node from absurd allocations.

    Attributes:
        max_width: pixels.
        max_height: pixels.
    """

    max_width: int = 4096
    max_height: int = 4096

    @property
    def max_compressed_bytes(self) -> int:
        """Upper bound for a compressed payload: a valid JPEG/PNG is never far above raw RGBA."""
        return self.max_width * self.max_height * 4 + 65536


@dataclass(frozen=True)
class EncodingLayout:
    """Memory layout of one `sensor_msgs/Image` encoding.

    Attributes:
        dtype: sample type (native byte order; the message's `is_bigendian` decides the real one).
        channels: samples per pixel (2 for the packed yuv422 variants).
    """

    dtype: np.dtype
    channels: int

    @property
    def pixel_bytes(self) -> int:
        return self.dtype.itemsize * self.channels


_U8 = np.dtype(np.uint8)
_U16 = np.dtype(np.uint16)
_F32 = np.dtype(np.float32)

# Names as in sensor_msgs/image_encodings.hpp. 'yuv422' is UYVY byte order and 'yuv422_yuy2' is
# YUYV; newer distributions add the unambiguous aliases 'uyvy' and 'yuyv'.
ENCODING_LAYOUTS: dict[str, EncodingLayout] = {
    'rgb8': EncodingLayout(_U8, 3),
    'bgr8': EncodingLayout(_U8, 3),
    'rgba8': EncodingLayout(_U8, 4),
    'bgra8': EncodingLayout(_U8, 4),
    'mono8': EncodingLayout(_U8, 1),
    'mono16': EncodingLayout(_U16, 1),
    '32FC1': EncodingLayout(_F32, 1),
    'yuv422': EncodingLayout(_U8, 2),
    'uyvy': EncodingLayout(_U8, 2),
    'yuv422_yuy2': EncodingLayout(_U8, 2),
    'yuyv': EncodingLayout(_U8, 2),
}
INPUT_ENCODINGS: tuple[str, ...] = tuple(ENCODING_LAYOUTS)
OUTPUT_ENCODINGS: tuple[str, ...] = ('32FC1', 'mono8', 'mono16', 'bgr8', 'rgb8')
COMPRESSED_FORMATS: tuple[str, ...] = ('jpeg', 'png')

_YUV_TO_RGB = {
    'yuv422': cv2.COLOR_YUV2RGB_UYVY,
    'uyvy': cv2.COLOR_YUV2RGB_UYVY,
    'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUYV,
    'yuyv': cv2.COLOR_YUV2RGB_YUYV,
}
# Pure channel copies/reorders (no arithmetic), for contiguous RGB.
_TO_RGB = {
    'rgb8': None,
    'bgr8': cv2.COLOR_BGR2RGB,
    'rgba8': cv2.COLOR_RGBA2RGB,
    'bgra8': cv2.COLOR_BGRA2RGB,
    'mono8': cv2.COLOR_GRAY2RGB,
}
_HOST_IS_BIG_ENDIAN = sys.byteorder == 'big'


def image_msg_to_array(msg: Image, limits: ImageLimits | None = None) -> np.ndarray:
    """Validate an Image and return its pixels as a view over `msg.data`.

    Row padding (`step` larger than a row) is skipped by strides, never copied.

    Args:
        msg: the message; `data` must support the buffer protocol (rclpy uses `array.array`).
        limits: maximum frame size; None accepts any size.

    Returns:
        (H, W) for one-channel encodings, (H, W, C) otherwise, in the encoding's sample type with
        the message's byte order. Read-only if the message buffer is.

    Raises:
        ImageConversionError: a subclass naming the defect.
    """
    layout = _layout_of(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(width, height, limits)
    if msg.encoding in _YUV_TO_RGB and width % 2:
        raise ImageSizeError(
            f'{msg.encoding} packs pixel pairs and needs an even width, got {width}'
        )
    row_bytes = width * layout.pixel_bytes
    if step < row_bytes:
        raise StepMismatchError(
            f'step {step} is smaller than width {width} x {layout.pixel_bytes} bytes per pixel '
            f'= {row_bytes} for {msg.encoding}'
        )
    if step % layout.dtype.itemsize:
        raise StepMismatchError(
            f'step {step} is not a multiple of the {layout.dtype.itemsize}-byte sample size of '
            f'{msg.encoding}'
        )
    needed = step * height
    available = len(msg.data) * memoryview(msg.data).itemsize
    if available < needed:
        raise TruncatedDataError(
            f'data has {available} bytes but step x height = {step} x {height} = {needed}'
        )
    raw = np.frombuffer(msg.data, dtype=_U8, count=needed).reshape(height, step)[:, :row_bytes]
    dtype = layout.dtype
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder('>' if msg.is_bigendian else '<')
    samples = raw.view(dtype)
    if layout.channels == 1:
        return samples
    return samples.reshape(height, width, layout.channels)


def image_msg_to_rgb(
    msg: Image, limits: ImageLimits | None = None, contiguous: bool = False
) -> np.ndarray:
    """Any supported Image -> (H, W, 3) uint8 RGB, a view whenever the encoding allows.

    mono8 is broadcast to three channels (no copy); mono16 keeps its high byte; 32FC1 is an
    intensity in [0, 1] (simulators), scaled to 0..255 and clipped; yuv422 variants are converted
    with OpenCV (BT.601, as cv_bridge does).

    Args:
        msg: the message.
        limits: maximum frame size; None accepts any size.
        contiguous: return a C-contiguous array. rgb8 without row padding stays a zero-copy
            view; other encodings get one OpenCV channel copy (the same values as copying the
            view, several times faster than numpy on reversed or broadcast strides).

    Raises:
        ImageConversionError: a subclass naming the defect.
    """
    pixels = image_msg_to_array(msg, limits)
    encoding = msg.encoding
    if encoding in _YUV_TO_RGB:
        return cv2.cvtColor(pixels, _YUV_TO_RGB[encoding])
    if contiguous and encoding in _TO_RGB:
        if encoding == 'rgb8':
            return pixels if pixels.flags.c_contiguous else np.ascontiguousarray(pixels)
        return cv2.cvtColor(pixels, _TO_RGB[encoding])
    if encoding == 'rgb8':
        return pixels
    if encoding == 'bgr8':
        return pixels[..., ::-1]
    if encoding == 'rgba8':
        return pixels[..., :3]
    if encoding == 'bgra8':
        return pixels[..., 2::-1]
    if encoding == 'mono8':
        gray = pixels
    elif encoding == 'mono16':
        gray = (pixels >> 8).astype(_U8)
    else:  # 32FC1
        if not np.isfinite(pixels).all():
            bad = int(pixels.size - np.count_nonzero(np.isfinite(pixels)))
            raise NonFiniteValuesError(f'{encoding} image has {bad} NaN or infinite values')
        gray = np.clip(pixels * 255.0 + 0.5, 0.0, 255.0).astype(_U8)
    if contiguous:
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    return np.broadcast_to(gray[..., None], (*gray.shape, 3))


def compressed_msg_to_rgb(
    msg: CompressedImage, limits: ImageLimits | None = None, contiguous: bool = False
) -> np.ndarray:
    """Decode a JPEG or PNG CompressedImage to (H, W, 3) uint8 RGB.

    The container is checked before decoding (signature, frame size against `limits`, end
    marker), so corrupt, truncated and oversized payloads fail fast with a precise message and
    libjpeg never decodes half a frame. The result is a channel-reversed view of OpenCV's BGR
    output, or with `contiguous` a C-contiguous array (decoded straight to RGB where OpenCV can).

    Raises:
        ImageConversionError: a subclass naming the defect.
    """
    kind = compressed_format(msg.format)
    payload = memoryview(msg.data).cast('B')
    if len(payload) == 0:
        raise EmptyImageError(f'{kind} CompressedImage has no data')
    if limits is not None and len(payload) > limits.max_compressed_bytes:
        raise ImageTooLargeError(
            f'{kind} payload of {len(payload)} bytes exceeds {limits.max_compressed_bytes}'
        )
    if kind == 'jpeg':
        height, width = _jpeg_frame_size(payload)
    else:
        height, width = _png_frame_size(payload)
    _check_size(width, height, limits)
    # OpenCV >= 4.10 decodes straight to RGB (the same values as BGR then swapped).
    rgb_flag = getattr(cv2, 'IMREAD_COLOR_RGB', None) if contiguous else None
    flags = cv2.IMREAD_COLOR if rgb_flag is None else rgb_flag
    decoded = cv2.imdecode(np.frombuffer(payload, dtype=_U8), flags)
    if decoded is None:
        raise CorruptCompressedImageError(f'{kind} payload could not be decoded')
    if decoded.shape[:2] != (height, width):
        raise CorruptCompressedImageError(
            f'{kind} header says {width}x{height} but decoded {decoded.shape[1]}x'
            f'{decoded.shape[0]}'
        )
    if rgb_flag is not None:
        return decoded
    if contiguous:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return decoded[..., ::-1]


def compressed_format(format_field: str) -> str:
    """'jpeg' or 'png' from a CompressedImage `format` ('jpeg', 'rgb8; jpeg compressed bgr8')."""
    text = format_field.lower()
    if 'compresseddepth' in text:
        raise UnsupportedEncodingError(
            f'CompressedImage format {format_field!r} (depth) is not supported'
        )
    if 'jpeg' in text or 'jpg' in text:
        return 'jpeg'
    if 'png' in text:
        return 'png'
    raise UnsupportedEncodingError(
        f'unsupported CompressedImage format {format_field!r}; supported: {COMPRESSED_FORMATS}'
    )


def _layout_of(encoding: str) -> EncodingLayout:
    layout = ENCODING_LAYOUTS.get(encoding)
    if layout is None:
        raise UnsupportedEncodingError(
            f'unsupported encoding {encoding!r}; supported: {", ".join(INPUT_ENCODINGS)}'
        )
    return layout


def _check_size(width: int, height: int, limits: ImageLimits | None) -> None:
    if width == 0 or height == 0:
        raise EmptyImageError(f'zero-size image {width}x{height}')
    if limits is not None and (width > limits.max_width or height > limits.max_height):
        raise ImageTooLargeError(
            f'{width}x{height} frame exceeds the limit {limits.max_width}x{limits.max_height} '
            '(parameters input.max_width / input.max_height)'
        )


# JPEG start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and the restart markers.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
# Encoders may pad after EOI; look for it near the end only.
_JPEG_EOI_SEARCH_BYTES = 64


def _jpeg_frame_size(data: memoryview) -> tuple[int, int]:
    """(height, width) from the SOF segment; raises if the stream is malformed or truncated."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise CorruptCompressedImageError('not a JPEG stream: missing start-of-image marker')
    tail = bytes(data[-_JPEG_EOI_SEARCH_BYTES:])
    if b'\xff\xd9' not in tail:
        raise CorruptCompressedImageError('truncated JPEG: missing end-of-image marker')
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise CorruptCompressedImageError(f'corrupt JPEG: expected a marker at byte {pos}')
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            pos += 2
            continue
        length = data[pos + 2] << 8 | data[pos + 3]
        if length < 2:
            raise CorruptCompressedImageError(f'corrupt JPEG: segment length {length} at {pos}')
        if marker in _JPEG_SOF_MARKERS:
            if pos + 9 > len(data):
                break
            height = data[pos + 5] << 8 | data[pos + 6]
            width = data[pos + 7] << 8 | data[pos + 8]
            return height, width
        if marker == 0xDA:
            raise CorruptCompressedImageError('corrupt JPEG: scan data before the frame header')
        pos += 2 + length
    raise CorruptCompressedImageError('truncated JPEG: no frame header found')


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _png_frame_size(data: memoryview) -> tuple[int, int]:
    """(height, width) from IHDR; raises if the signature, IHDR or IEND is missing."""
    if len(data) < 33 or bytes(data[:8]) != _PNG_SIGNATURE:
        raise CorruptCompressedImageError('not a PNG stream: bad signature or too short')
    if bytes(data[12:16]) != b'IHDR':
        raise CorruptCompressedImageError('corrupt PNG: first chunk is not IHDR')
    if bytes(data[-8:-4]) != b'IEND':
        raise CorruptCompressedImageError('truncated PNG: missing IEND chunk')
    width = int.from_bytes(data[16:20], 'big')
    height = int.from_bytes(data[20:24], 'big')
    return height, width


class ImageMessageBuffer:
    """One reusable `sensor_msgs/Image` of a fixed output encoding.

    `prepare` returns the message and a writable numpy view of its data; the buffer is
    reallocated only when the frame size changes. The message must be published before the next
    `prepare` (rclpy serialises during `publish`, so reuse right after it is safe).
    """

    def __init__(self, encoding: str) -> None:
        if encoding not in OUTPUT_ENCODINGS:
            raise ValueError(
                f'output encoding must be one of {OUTPUT_ENCODINGS}, got {encoding!r}'
            )
        self.encoding = encoding
        self.layout = ENCODING_LAYOUTS[encoding]
        self.msg = Image()
        self.msg.encoding = encoding
        self.msg.is_bigendian = int(_HOST_IS_BIG_ENDIAN)
        self._pixels: np.ndarray | None = None

    def prepare(self, header: Header, height: int, width: int) -> tuple[Image, np.ndarray]:
        """Point the message at `header` and return (message, writable pixel view).

        Args:
            header: copied by reference, so the output carries the input header unchanged.
            height: rows.
            width: columns.

        Returns:
            The message and its (H, W) or (H, W, C) view in the encoding's sample type.
        """
        if height <= 0 or width <= 0:
            raise ValueError(f'output size must be positive, got {width}x{height}')
        pixels = self._pixels
        if pixels is None or pixels.shape[:2] != (height, width):
            pixels = self._allocate(height, width)
        self.msg.header = header
        return self.msg, pixels

    def fill(self, header: Header, pixels: np.ndarray) -> Image:
        """Copy `pixels` (matching the encoding's shape and dtype) into the message."""
        expected_ndim = 2 if self.layout.channels == 1 else 3
        if pixels.ndim != expected_ndim or (
            expected_ndim == 3 and pixels.shape[2] != self.layout.channels
        ):
            raise ValueError(f'{self.encoding} needs {self._shape_text()}, got {pixels.shape}')
        msg, view = self.prepare(header, pixels.shape[0], pixels.shape[1])
        np.copyto(view, pixels, casting='same_kind')
        return msg

    def _allocate(self, height: int, width: int) -> np.ndarray:
        step = width * self.layout.pixel_bytes
        # array.array is what rclpy stores for uint8[]; frombytes of zeros is a single memset.
        self._pixels = None  # drop the old view before replacing its buffer
        self.msg.data = array.array('B', bytes(step * height))
        # Some rosidl versions copy on assignment, so view the buffer the message now holds.
        data = self.msg.data
        self.msg.height = height
        self.msg.width = width
        self.msg.step = step
        shape: tuple[int, ...] = (height, width)
        if self.layout.channels > 1:
            shape = (height, width, self.layout.channels)
        self._pixels = np.frombuffer(data, dtype=self.layout.dtype).reshape(shape)
        return self._pixels

    def _shape_text(self) -> str:
        if self.layout.channels == 1:
            return f'(H, W) {self.layout.dtype}'
        return f'(H, W, {self.layout.channels}) {self.layout.dtype}'


def array_to_image_msg(pixels: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """A new Image holding a copy of `pixels` (tests, tools; the node reuses buffers instead)."""
    buffer = ImageMessageBuffer(encoding)
    return buffer.fill(header if header is not None else Header(), pixels)


def rgb_to_compressed_msg(
    rgb: np.ndarray, image_format: str = 'jpeg', header: Header | None = None, quality: int = 90
) -> CompressedImage:
    """Encode (H, W, 3) uint8 RGB as a JPEG or PNG CompressedImage (bgr8 order, as OpenCV)."""
    kind = compressed_format(image_format)
    params: Sequence[int] = [cv2.IMWRITE_JPEG_QUALITY, quality] if kind == 'jpeg' else []
    ok, encoded = cv2.imencode('.jpg' if kind == 'jpeg' else '.png', rgb[..., ::-1], params)
    if not ok:
        raise ValueError(f'OpenCV failed to encode a {rgb.shape} image as {kind}')
    msg = CompressedImage()
    msg.header = header if header is not None else Header()
    msg.format = kind
    data = array.array('B')
    data.frombytes(encoded.tobytes())
    msg.data = data
    return msg
