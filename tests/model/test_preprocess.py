"""Pre-processing: detectron2 resize arithmetic, normalisation, padding and the way back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from m2a_perception.config import PreprocessConfig, load_model_config
from m2a_perception.preprocess import (
    DegenerateResizeError,
    Preprocessor,
    PreprocessRecord,
    TapCache,
    bilinear_taps,
    compute_resized_size,
    map_to_source,
    resize_uint8,
    resize_uint8_pil,
    resize_uint8_torch,
)


@pytest.mark.parametrize(
    ('source', 'expected'),
    [
        ((1024, 2048), (1024, 2048)),  # Cityscapes: untouched
        ((720, 1280), (1024, 1820)),  # Road Anomaly: 1280 * 1024/720 = 1820.4 -> 1820
        ((1080, 1920), (1024, 1820)),  # 1920 * 1024/1080 = 1820.44
        ((512, 4096), (256, 2048)),  # long side capped at 2048
        ((2048, 1024), (2048, 1024)),  # portrait: short side is the width
    ],
)
def test_resize_follows_resize_shortest_edge(source, expected):
    assert compute_resized_size(*source, short_side=1024, max_size=2048) == expected


def test_short_side_zero_keeps_the_source_size():
    assert compute_resized_size(375, 1242, short_side=0, max_size=2048) == (375, 1242)


def test_preprocessor_normalises_pads_and_records_geometry():
    config = PreprocessConfig(short_side=64, max_size=256)
    image = np.full((45, 80, 3), (124, 116, 104), dtype=np.uint8)
    image[0, 0] = (255, 0, 0)
    images, record = Preprocessor(config)(image)
    assert record == PreprocessRecord(
        source_size=(45, 80), resized_size=(64, 114), padded_size=(64, 128)
    )
    assert images.shape == (1, 3, 64, 128) and images.dtype == torch.float32
    # Padding is exactly zero after normalisation (bottom/right), as detectron2 pads.
    assert torch.count_nonzero(images[..., 114:]) == 0
    # Interior pixels are (RGB - mean) / std of the PIL-bilinear resized image.
    resized = np.asarray(Image.fromarray(image).resize((114, 64), Image.Resampling.BILINEAR))
    mean, std = np.array(config.pixel_mean), np.array(config.pixel_std)
    expected = (resized.astype(np.float32) - mean) / std
    np.testing.assert_allclose(
        images[0, :, :, :114].permute(1, 2, 0).numpy(), expected, rtol=1e-5, atol=1e-5
    )


def test_preprocessor_rejects_wrong_images():
    preprocessor = Preprocessor(load_model_config('tiny').preprocess)
    with pytest.raises(ValueError, match='uint8 RGB'):
        preprocessor(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match='uint8 RGB'):
        preprocessor(np.zeros((10, 10, 3), dtype=np.float32))


def test_map_to_source_crops_the_padding_and_restores_the_source_size():
    record = PreprocessRecord(source_size=(45, 80), resized_size=(64, 114), padded_size=(64, 128))
    # A map at 1/4 of the padded size whose padded columns hold a sentinel value.
    maps = torch.zeros(1, 1, 16, 32)
    maps[..., 29:] = 100.0
    restored = map_to_source(maps, record)
    assert restored.shape == (1, 1, 45, 80)
    assert restored[..., :70].max() < 1e-6  # the padding did not leak into the image
    labels = torch.zeros(1, 1, 16, 32, dtype=torch.uint8)
    labels[..., :8, :] = 7
    restored_labels = map_to_source(labels, record, mode='nearest')
    assert restored_labels.dtype == torch.uint8 and restored_labels.shape == (1, 1, 45, 80)
    assert set(restored_labels.unique().tolist()) == {0, 7}


def test_map_to_source_without_padding_is_one_resize():
    record = PreprocessRecord(
        source_size=(1024, 2048), resized_size=(512, 1024), padded_size=(512, 1024)
    )
    maps = torch.rand(1, 2, 128, 256)
    expected = torch.nn.functional.interpolate(
        maps, size=(1024, 2048), mode='bilinear', align_corners=False
    )
    torch.testing.assert_close(map_to_source(maps, record), expected)


@pytest.mark.parametrize(
    ('height', 'width', 'short_side', 'max_size', 'resized'),
    [(1, 4096, 256, 512, '512x0'), (4096, 1, 256, 512, '0x512'), (1, 65535, 512, 1024, '1024x0')],
)
def test_extreme_aspect_ratios_are_refused_before_resizing(
    height: int, width: int, short_side: int, max_size: int, resized: str
) -> None:
    message = f'a {width}x{height} frame would be resized to {resized} pixels'
    with pytest.raises(DegenerateResizeError, match=message):
        compute_resized_size(height, width, short_side, max_size)
    # A 1-row frame max_size wide still keeps its one row.
    assert compute_resized_size(1, max_size, short_side, max_size) == (1, max_size)


# (source height, width, target height, width): camera frames at the usual inference sizes,
# up-scaling, odd ratios, one-pixel sides, and frames whose height shrinks more than twice the
# width does (where Pillow 13 runs its vertical pass first).
RESIZE_CASES = [
    (1080, 1920, 512, 910),
    (720, 1280, 1024, 1820),
    (128, 256, 256, 512),
    (375, 1242, 256, 848),
    (193, 141, 179, 384),
    (40, 68, 120, 300),
    (300, 200, 40, 190),
    (190, 291, 17, 250),
    (1, 7, 3, 2),
    (9, 1, 1, 5),
]


def _pillow13_vertical_first(source: tuple[int, int], target: tuple[int, int]) -> bool:
    """Pillow 13's rule (Resample.c ImagingResampleInner): vertical pass first when the height
    shrinks by more than twice what the width does."""
    shrink_h, shrink_w = source[0] - target[0], source[1] - target[1]
    return shrink_h > 0 and shrink_h > 2 * shrink_w


def _frame(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(('height', 'width', 'out_h', 'out_w'), RESIZE_CASES)
def test_torch_resize_gives_pillows_bytes(height, width, out_h, out_w):
    frame = _frame(height, width, seed=height * width)
    expected = np.array(Image.fromarray(frame).resize((out_w, out_h), Image.Resampling.BILINEAR))
    order = _pillow13_vertical_first((height, width), (out_h, out_w))
    frame_t = torch.from_numpy(frame)
    on_torch = resize_uint8_torch(frame_t, (out_h, out_w), vertical_first=order)
    on_pil = resize_uint8_pil(frame_t, (out_h, out_w), vertical_first=order)
    np.testing.assert_array_equal(on_torch.numpy(), expected)
    np.testing.assert_array_equal(on_pil.numpy(), expected)


def test_default_pass_order_is_horizontal_first_as_before_pillow_13():
    """Pillow <= 12 (detectron2's, the released checkpoints') always resized the width first;
    for a frame whose height shrinks much more, Pillow 13's two-axis resize differs."""
    frame = _frame(300, 200, seed=3)
    width_then_height = (
        Image.fromarray(frame)
        .resize((190, 300), Image.Resampling.BILINEAR)
        .resize((190, 40), Image.Resampling.BILINEAR)
    )
    ours = resize_uint8(torch.from_numpy(frame), (40, 190))
    np.testing.assert_array_equal(ours.numpy(), np.array(width_then_height))
    np.testing.assert_array_equal(resize_uint8_torch(torch.from_numpy(frame), (40, 190)), ours)
    pillow13 = np.array(Image.fromarray(frame).resize((190, 40), Image.Resampling.BILINEAR))
    assert (pillow13 != ours.numpy()).any()


def test_torch_resize_taps_for_a_two_to_one_shrink():
    """Known answer: halving 4 pixels widens the triangle to support 2; output 0 (centre 1.0)
    takes pixels 0..2 at scaled distances -0.25, 0.25, 0.75, i.e. weights 3/4 3/4 1/4,
    normalised to 3/7 3/7 1/7 and rounded to 22-bit fixed point."""
    indices, weights = bilinear_taps(4, 2)
    one = 1 << 22
    assert indices[0].tolist()[:3] == [0, 1, 2]
    assert weights[0].tolist()[:3] == [round(one * 3 / 7), round(one * 3 / 7), round(one * 1 / 7)]
    frame = torch.tensor([[[0], [70], [140], [210]]], dtype=torch.uint8).expand(1, 4, 1)
    resized = resize_uint8_torch(frame.contiguous(), (1, 2))
    expected = np.array(
        Image.fromarray(frame[..., 0].numpy()).resize((2, 1), Image.Resampling.BILINEAR)
    )
    assert resized[..., 0].tolist() == expected.tolist()


def test_frames_of_one_size_reuse_the_device_taps_and_keep_pillows_bytes():
    """The Preprocessor's tap cache: the first 90x160 -> 64x114 frame computes one tap set per
    axis, the second frame reuses both (the very same tensors); bytes stay Pillow's."""
    preprocessor = Preprocessor(PreprocessConfig(short_side=64, max_size=256))
    taps = preprocessor.taps
    outputs = []
    for seed in (11, 12):
        frame = torch.from_numpy(_frame(90, 160, seed=seed))
        outputs.append(resize_uint8_torch(frame, (64, 114), taps=taps))
        np.testing.assert_array_equal(
            outputs[-1].numpy(), resize_uint8_pil(frame, (64, 114)).numpy()
        )
    assert (taps.misses, taps.hits, len(taps)) == (2, 2, 2)
    width_taps = taps.get(160, 114, torch.device('cpu'))
    assert width_taps is taps.get(160, 114, torch.device('cpu'))
    expected_indices, expected_weights = bilinear_taps(160, 114)
    assert torch.equal(width_taps[0], expected_indices)
    assert torch.equal(width_taps[1], expected_weights)
    assert not torch.equal(outputs[0], outputs[1])  # two different frames, not one result cached


def test_tap_cache_is_bounded_least_recently_used_first():
    taps = TapCache(max_entries=2)
    cpu = torch.device('cpu')
    first = taps.get(10, 5, cpu)
    taps.get(20, 5, cpu)
    assert taps.get(10, 5, cpu) is first  # refreshed: (20, 5) is now the oldest
    taps.get(30, 5, cpu)
    assert len(taps) == 2 and taps.get(10, 5, cpu) is first
    assert taps.misses == 3
    taps.get(20, 5, cpu)  # was dropped: computed again
    assert taps.misses == 4


def test_preprocessor_resizes_like_pillow_then_normalises():
    config = PreprocessConfig(short_side=64, max_size=256)
    frame = _frame(90, 160, seed=7)
    images, record = Preprocessor(config)(frame)
    assert record.resized_size == (64, 114)
    resized = np.array(Image.fromarray(frame).resize((114, 64), Image.Resampling.BILINEAR))
    mean = np.array(config.pixel_mean, dtype=np.float32)
    std = np.array(config.pixel_std, dtype=np.float32)
    expected = ((resized.astype(np.float32) - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(images[0, :, :64, :114].numpy(), expected, rtol=0, atol=1e-6)
    assert float(images[0, :, :, 114:].abs().max()) == 0.0


@pytest.mark.gpu
@pytest.mark.parametrize(('height', 'width', 'out_h', 'out_w'), RESIZE_CASES[:4])
def test_resize_on_cuda_gives_the_cpu_bytes(height, width, out_h, out_w):
    frame = torch.from_numpy(_frame(height, width, seed=1))
    on_cuda = resize_uint8(frame.cuda(), (out_h, out_w))
    assert on_cuda.is_cuda
    np.testing.assert_array_equal(on_cuda.cpu().numpy(), resize_uint8(frame, (out_h, out_w)))


@pytest.mark.gpu
def test_preprocessor_on_cuda_copies_the_taps_once():
    config = PreprocessConfig(short_side=64, max_size=256)
    preprocessor = Preprocessor(config)
    for seed in (21, 22):
        frame = _frame(90, 160, seed=seed)
        images, _ = preprocessor(frame, device='cuda', dtype=torch.uint8)
        expected = np.array(Image.fromarray(frame).resize((114, 64), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(
            images[0, :, :64, :114].permute(1, 2, 0).cpu().numpy(), expected
        )
    taps = preprocessor.taps
    assert (taps.misses, taps.hits) == (2, 2)
    assert taps.get(160, 114, torch.device('cuda', 0))[0].is_cuda
