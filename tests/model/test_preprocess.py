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
    compute_resized_size,
    map_to_source,
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
