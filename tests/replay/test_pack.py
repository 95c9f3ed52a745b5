"""m2a-pack-bag: images and ground truth round-trip through a bag (mcap and sqlite3)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from m2a_perception.classes import label_ids_to_train_ids
from m2a_perception.cli.pack_bag import main
from m2a_perception.pictures import read_rgb
from m2a_perception.ros.conversions import compressed_msg_to_rgb, image_msg_to_rgb
from m2a_perception.ros.replay.pack import PackOptions, pack_images

from .conftest import NUM_ANOMALY_SCENES, write_pngs


def read_bag(path):
    """topic -> list of (log time, message) decoded with a plain rosbags typestore."""
    store = get_typestore(Stores.ROS2_KILTED)
    messages: dict[str, list] = {}
    with Reader(path) as reader:
        for connection, log_time, raw in reader.messages():
            msg = store.deserialize_cdr(raw, connection.msgtype)
            messages.setdefault(connection.topic, []).append((log_time, msg))
    return messages


def stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
@pytest.mark.parametrize('image_format', ['raw', 'png', 'original'])
def test_anomaly_set_round_trip(world, tmp_path, storage, image_format):
    options = PackOptions(
        rate_hz=4.0,
        start_time_s=100.0,
        frame_id='cam_front',
        image_format=image_format,
        storage=storage,
    )
    result = pack_images(world.anomaly_root, tmp_path / 'bag', options=options)
    assert result.frames == result.anomaly_labels == NUM_ANOMALY_SCENES
    topic = '/front/image' if image_format == 'raw' else '/front/image/compressed'
    assert result.camera.topic == topic
    messages = read_bag(tmp_path / 'bag')
    assert set(messages) == {topic, '/front/ground_truth/anomaly'}
    expected_stamps = [100_000_000_000 + i * 250_000_000 for i in range(NUM_ANOMALY_SCENES)]
    assert list(result.stamps_ns) == expected_stamps
    images = sorted((world.anomaly_root / 'images').iterdir())
    for index, ((log_time, msg), (label_time, label)) in enumerate(
        zip(messages[topic], messages['/front/ground_truth/anomaly'], strict=True)
    ):
        assert log_time == label_time == stamp(msg) == stamp(label) == expected_stamps[index]
        assert msg.header.frame_id == label.header.frame_id == 'cam_front'
        source = read_rgb(images[index])
        decoded = image_msg_to_rgb(msg) if image_format == 'raw' else compressed_msg_to_rgb(msg)
        np.testing.assert_array_equal(decoded, source)  # raw and PNG are lossless
        mask = np.asarray(Image.open(world.anomaly_root / 'labels_masks' / images[index].name))
        assert label.encoding == 'mono8'
        np.testing.assert_array_equal(label.data.reshape(label.height, label.width), mask)


def test_jpeg_and_bgr8(tmp_path):
    (tmp_path / 'frames').mkdir()
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    smooth = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:32, None], 128.0), -1)
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / 'frames' / 'frame_000.png')
    pack_images(tmp_path / 'frames', tmp_path / 'jpeg', options=PackOptions(image_format='jpeg'))
    pack_images(tmp_path / 'frames', tmp_path / 'bgr', options=PackOptions(encoding='bgr8'))
    source = read_rgb(tmp_path / 'frames' / 'frame_000.png')
    jpeg = read_bag(tmp_path / 'jpeg')['/front/image/compressed'][0][1]
    assert jpeg.format == 'jpeg'
    assert np.abs(compressed_msg_to_rgb(jpeg).astype(int) - source).mean() < 2.0
    bgr = read_bag(tmp_path / 'bgr')['/front/image'][0][1]
    assert bgr.encoding == 'bgr8'
    np.testing.assert_array_equal(image_msg_to_rgb(bgr), source)


def test_cityscapes_layout_with_semantic_label_ids(world, tmp_path):
    """Recursive city folders, `_leftImg8bit` stems and label ids -> train ids."""
    root = world.cityscapes_root
    options = PackOptions(
        recursive=True,
        image_suffix='_leftImg8bit',
        semantic_suffix='_gtFine_labelIds',
        semantic_format='labelids',
    )
    result = pack_images(
        root / 'leftImg8bit' / 'val',
        tmp_path / 'bag',
        semantic=root / 'gtFine' / 'val',
        options=options,
    )
    assert result.frames == result.semantic_labels == 2
    labels = read_bag(tmp_path / 'bag')['/front/ground_truth/semantic']
    label_files = sorted((root / 'gtFine' / 'val').rglob('*_gtFine_labelIds.png'))
    for (_, label), path in zip(labels, label_files, strict=True):
        expected = label_ids_to_train_ids(np.asarray(Image.open(path)))
        np.testing.assert_array_equal(label.data.reshape(label.height, label.width), expected)


def test_mask_map_and_bad_labels(tmp_path):
    write_pngs(tmp_path / 'frames', 1, (16, 32))
    masks = tmp_path / 'masks'
    masks.mkdir()
    raw = np.zeros((16, 32), np.uint8)
    raw[4:8, 4:8] = 2
    Image.fromarray(raw).save(masks / 'frame_000.png')
    with pytest.raises(ValueError, match=r'0/1/255 after --mask-map, found \[2\]'):
        pack_images(tmp_path / 'frames', tmp_path / 'bad', masks=masks)
    pack_images(
        tmp_path / 'frames', tmp_path / 'ok', masks=masks, options=PackOptions(mask_map={2: 1})
    )
    ((_, label),) = read_bag(tmp_path / 'ok')['/front/ground_truth/anomaly']
    assert int(label.data.sum()) == 16
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / 'frame_000.png')
    with pytest.raises(ValueError, match='differs from image'):
        pack_images(tmp_path / 'frames', tmp_path / 'small', masks=masks)


def test_cli(world, tmp_path, capsys):
    out = tmp_path / 'bag'
    assert main([str(world.anomaly_root), '--out', str(out), '--fps', '5', '--limit', '2']) == 0
    assert 'wrote' in capsys.readouterr().out
    assert main([str(world.anomaly_root), '--out', str(out)]) == 2
    assert 'exists' in capsys.readouterr().err
    assert main([str(world.anomaly_root), '--out', str(out), '--overwrite', '--limit', '1']) == 0
    assert main([str(tmp_path / 'missing'), '--out', str(tmp_path / 'x')]) == 2
