"""sensor_msgs <-> numpy conversions: every encoding, zero-copy views, every bad input."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from m2a_perception.ros.conversions import (
    INPUT_ENCODINGS,
    CorruptCompressedImageError,
    EmptyImageError,
    ImageConversionError,
    ImageLimits,
    ImageMessageBuffer,
    ImageSizeError,
    ImageTooLargeError,
    NonFiniteValuesError,
    StepMismatchError,
    TruncatedDataError,
    UnsupportedEncodingError,
    array_to_image_msg,
    compressed_msg_to_rgb,
    image_msg_to_array,
    image_msg_to_rgb,
    rgb_to_compressed_msg,
)

pytestmark = pytest.mark.ros

HEIGHT, WIDTH = 6, 8


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def make_msg(encoding: str, rows: np.ndarray, pad: int = 0, big_endian: bool = False) -> Image:
    """An Image whose rows are `rows` (H, row_bytes) uint8 followed by `pad` bytes each."""
    height, row_bytes = rows.shape
    padded = np.zeros((height, row_bytes + pad), dtype=np.uint8)
    padded[:, :row_bytes] = rows
    msg = Image(height=height, encoding=encoding, step=row_bytes + pad)
    msg.is_bigendian = int(big_endian)
    msg.data = array.array('B', padded.tobytes())
    return msg


def as_rows(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels).view(np.uint8).reshape(pixels.shape[0], -1)


def set_width(msg: Image, width: int) -> Image:
    msg.width = width
    return msg


def buffer_of(msg: Image) -> np.ndarray:
    return np.frombuffer(msg.data, dtype=np.uint8)


@pytest.mark.parametrize('pad', [0, 5])
@pytest.mark.parametrize(
    ('encoding', 'to_native'),
    [
        ('rgb8', lambda rgb: rgb),
        ('bgr8', lambda rgb: rgb[..., ::-1]),
        ('rgba8', lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
        ('bgra8', lambda rgb: np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)])),
    ],
)
def test_colour_encodings_are_views(rgb, encoding, to_native, pad):
    msg = set_width(make_msg(encoding, as_rows(to_native(rgb)), pad), WIDTH)
    out = image_msg_to_rgb(msg)
    assert out.shape == (HEIGHT, WIDTH, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, buffer_of(msg)), 'colour encodings must not be copied'


@pytest.mark.parametrize('pad', [0, 3])
def test_mono8_is_broadcast_view(rgb, pad):
    gray = rgb[..., 0].copy()
    msg = set_width(make_msg('mono8', gray, pad), WIDTH)
    out = image_msg_to_rgb(msg)
    assert out.shape == (HEIGHT, WIDTH, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)
    assert np.shares_memory(out, buffer_of(msg))


@pytest.mark.parametrize('big_endian', [False, True])
def test_mono16_keeps_high_byte(big_endian):
    values = np.arange(HEIGHT * WIDTH, dtype=np.uint16).reshape(HEIGHT, WIDTH) * 1000
    raw = values.astype('>u2' if big_endian else '<u2')
    msg = set_width(make_msg('mono16', as_rows(raw), pad=2, big_endian=big_endian), WIDTH)
    np.testing.assert_array_equal(image_msg_to_array(msg), values)
    np.testing.assert_array_equal(image_msg_to_rgb(msg)[..., 1], (values >> 8).astype(np.uint8))


def test_32fc1_scales_unit_intensity():
    values = np.linspace(0.0, 1.0, HEIGHT * WIDTH, dtype=np.float32).reshape(HEIGHT, WIDTH)
    values[0, 0], values[0, 1] = -0.5, 1.5  # clipped
    msg = set_width(make_msg('32FC1', as_rows(values)), WIDTH)
    out = image_msg_to_rgb(msg)[..., 0]
    assert out[0, 0] == 0 and out[0, 1] == 255
    np.testing.assert_allclose(out[1:], np.rint(values[1:] * 255), atol=1)


# Byte order of one pixel pair in each yuv422 variant (Y0, Y1 are the two luma samples).
YUV_ORDERS = {'yuv422': 'UYVY', 'uyvy': 'UYVY', 'yuv422_yuy2': 'YUYV', 'yuyv': 'YUYV'}


def bt601_video_range(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, Cb, Cr planes (uint8, ITU-R BT.601 video range, the yuv422 camera convention)."""
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    luma = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return tuple(np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (luma, cb, cr))


@pytest.mark.parametrize('pad', [0, 4])
@pytest.mark.parametrize('encoding', sorted(YUV_ORDERS))
def test_yuv422_variants(encoding, pad):
    # Flat colours survive 4:2:2 chroma subsampling exactly enough to compare.
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.uint8)
    rgb = np.repeat(np.repeat(colours[:, None, :], WIDTH, axis=1), 2, axis=0)
    luma, cb, cr = bt601_video_range(rgb)
    packed = np.empty((rgb.shape[0], WIDTH * 2), dtype=np.uint8)
    if YUV_ORDERS[encoding] == 'UYVY':
        packed[:, 0::4], packed[:, 1::4] = cb[:, 0::2], luma[:, 0::2]
        packed[:, 2::4], packed[:, 3::4] = cr[:, 0::2], luma[:, 1::2]
    else:
        packed[:, 0::4], packed[:, 1::4] = luma[:, 0::2], cb[:, 0::2]
        packed[:, 2::4], packed[:, 3::4] = luma[:, 1::2], cr[:, 0::2]
    msg = set_width(make_msg(encoding, packed, pad), WIDTH)
    out = image_msg_to_rgb(msg)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_allclose(out.astype(int), rgb.astype(int), atol=3)


def test_every_input_encoding_is_covered():
    tested = {'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16', '32FC1', *YUV_ORDERS}
    assert set(INPUT_ENCODINGS) == tested


@pytest.mark.parametrize('image_format', ['jpeg', 'png', 'rgb8; jpeg compressed bgr8'])
def test_compressed_round_trip(rgb, image_format):
    smooth = cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_LINEAR)
    msg = rgb_to_compressed_msg(smooth, 'png' if image_format == 'png' else 'jpeg')
    msg.format = image_format
    out = compressed_msg_to_rgb(msg)
    assert out.shape == smooth.shape
    tolerance = 0 if image_format == 'png' else 40
    assert np.abs(out.astype(int) - smooth.astype(int)).max() <= tolerance


# ---------------------------------------------------------------------------------------------
# Bad input: each defect raises its own exception type with a precise message.


def good_msg() -> Image:
    return array_to_image_msg(np.zeros((HEIGHT, WIDTH, 3), np.uint8), 'rgb8')


def test_unsupported_encoding():
    msg = good_msg()
    msg.encoding = 'bayer_rggb8'
    with pytest.raises(UnsupportedEncodingError, match="unsupported encoding 'bayer_rggb8'"):
        image_msg_to_rgb(msg)


def test_step_smaller_than_row():
    msg = good_msg()
    msg.step = WIDTH * 3 - 3
    with pytest.raises(StepMismatchError, match=r'step 21 is smaller than width 8 x 3'):
        image_msg_to_rgb(msg)


def test_step_not_multiple_of_sample_size():
    msg = array_to_image_msg(np.zeros((HEIGHT, WIDTH), np.float32), '32FC1')
    msg.step = WIDTH * 4 + 2
    msg.data = array.array('B', bytes(msg.step * HEIGHT))
    with pytest.raises(StepMismatchError, match='not a multiple of the 4-byte sample size'):
        image_msg_to_rgb(msg)


def test_data_shorter_than_step_times_height():
    msg = good_msg()
    msg.data = msg.data[:-10]
    with pytest.raises(TruncatedDataError, match=r'data has 134 bytes but step x height'):
        image_msg_to_rgb(msg)


@pytest.mark.parametrize(('height', 'width'), [(0, 0), (0, 4), (4, 0)])
def test_zero_size(height, width):
    msg = Image(height=height, width=width, encoding='rgb8', step=width * 3)
    with pytest.raises(EmptyImageError, match='zero-size image'):
        image_msg_to_rgb(msg)


def test_huge_frame_rejected_before_touching_data():
    # No data at all: the size check must come first, not a truncation error.
    msg = Image(height=2, width=5000, encoding='mono8', step=5000)
    with pytest.raises(ImageTooLargeError, match='5000x2 frame exceeds the limit 4096x4096'):
        image_msg_to_rgb(msg, ImageLimits())


def test_odd_width_yuv422():
    msg = Image(height=2, width=5, encoding='yuyv', step=10)
    msg.data = array.array('B', bytes(20))
    with pytest.raises(ImageSizeError, match='needs an even width'):
        image_msg_to_rgb(msg)


@pytest.mark.parametrize('bad_value', [np.nan, np.inf, -np.inf])
def test_non_finite_float_image(bad_value):
    values = np.full((HEIGHT, WIDTH), 0.5, np.float32)
    values[2, 3] = bad_value
    with pytest.raises(NonFiniteValuesError, match='1 NaN or infinite values'):
        image_msg_to_rgb(array_to_image_msg(values, '32FC1'))


def jpeg_msg() -> CompressedImage:
    frame = np.full((32, 48, 3), 120, np.uint8)
    return rgb_to_compressed_msg(frame, 'jpeg')


def with_payload(msg: CompressedImage, payload: bytes) -> CompressedImage:
    msg.data = array.array('B', payload)
    return msg


@pytest.mark.parametrize(
    ('mangle', 'error', 'text'),
    [
        (lambda p: p[: len(p) // 2], CorruptCompressedImageError, 'missing end-of-image'),
        (lambda p: b'\x00' * 16 + p[16:], CorruptCompressedImageError, 'start-of-image'),
        (lambda p: b'\xff\xd8\xff\xda\x00\x04xx' + p[-2:], CorruptCompressedImageError, 'scan'),
        (lambda p: b'', EmptyImageError, 'has no data'),
    ],
)
def test_corrupt_jpeg(mangle, error, text):
    msg = jpeg_msg()
    with pytest.raises(error, match=text):
        compressed_msg_to_rgb(with_payload(msg, mangle(bytes(msg.data))))


def test_corrupt_png():
    msg = rgb_to_compressed_msg(np.zeros((8, 8, 3), np.uint8), 'png')
    payload = bytes(msg.data)
    with pytest.raises(CorruptCompressedImageError, match='missing IEND'):
        compressed_msg_to_rgb(with_payload(msg, payload[:-12]))
    with pytest.raises(CorruptCompressedImageError, match='bad signature'):
        compressed_msg_to_rgb(with_payload(msg, b'GIF89a' + payload[6:]))


def test_huge_compressed_frame():
    msg = rgb_to_compressed_msg(np.zeros((20, 64, 3), np.uint8), 'png')
    with pytest.raises(ImageTooLargeError, match='64x20 frame exceeds the limit 32x32'):
        compressed_msg_to_rgb(msg, ImageLimits(32, 32))


@pytest.mark.parametrize('image_format', ['tiff', '16UC1; compressedDepth png'])
def test_unsupported_compressed_format(image_format):
    msg = jpeg_msg()
    msg.format = image_format
    with pytest.raises(UnsupportedEncodingError, match='format'):
        compressed_msg_to_rgb(msg)


def test_every_error_has_a_distinct_reason():
    classes = [
        UnsupportedEncodingError,
        StepMismatchError,
        TruncatedDataError,
        ImageSizeError,
        EmptyImageError,
        ImageTooLargeError,
        NonFiniteValuesError,
        CorruptCompressedImageError,
    ]
    assert all(issubclass(c, ImageConversionError) for c in classes)
    assert len({c.reason for c in classes}) == len(classes)


# ---------------------------------------------------------------------------------------------
# Output builders


@pytest.mark.parametrize(
    ('encoding', 'pixels'),
    [
        ('32FC1', np.linspace(0, 1, HEIGHT * WIDTH, dtype=np.float32).reshape(HEIGHT, WIDTH)),
        ('mono8', np.arange(HEIGHT * WIDTH, dtype=np.uint8).reshape(HEIGHT, WIDTH)),
        ('mono16', np.arange(HEIGHT * WIDTH, dtype=np.uint16).reshape(HEIGHT, WIDTH) * 1000),
        ('bgr8', np.arange(HEIGHT * WIDTH * 3, dtype=np.uint8).reshape(HEIGHT, WIDTH, 3)),
        ('rgb8', np.arange(HEIGHT * WIDTH * 3, dtype=np.uint8).reshape(HEIGHT, WIDTH, 3)),
    ],
)
def test_output_builders_round_trip_and_keep_header(encoding, pixels):
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = 12, 34
    buffer = ImageMessageBuffer(encoding)
    msg = buffer.fill(header, pixels)
    assert msg.header is header
    assert (msg.encoding, msg.height, msg.width) == (encoding, HEIGHT, WIDTH)
    assert msg.step == WIDTH * pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1)
    assert len(msg.data) == msg.step * msg.height
    np.testing.assert_array_equal(image_msg_to_array(msg), pixels)


def test_output_buffer_is_reused_until_the_size_changes():
    buffer = ImageMessageBuffer('mono8')
    msg, view = buffer.prepare(Header(), HEIGHT, WIDTH)
    view[:] = 9
    assert buffer_of(msg).max() == 9, 'the view must write into the message'
    data_before = msg.data
    msg_again, _ = buffer.prepare(Header(), HEIGHT, WIDTH)
    assert msg_again is msg and msg_again.data is data_before
    resized, view = buffer.prepare(Header(), HEIGHT * 2, WIDTH)
    assert resized.height == HEIGHT * 2 and view.shape == (HEIGHT * 2, WIDTH)


def test_output_builder_rejects_wrong_shapes():
    with pytest.raises(ValueError, match='output encoding'):
        ImageMessageBuffer('yuv422')
    with pytest.raises(ValueError, match=r'bgr8 needs \(H, W, 3\)'):
        ImageMessageBuffer('bgr8').fill(Header(), np.zeros((HEIGHT, WIDTH), np.uint8))
