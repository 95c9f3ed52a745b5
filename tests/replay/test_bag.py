"""Bag reading and writing: typestore, camera discovery, damaged bags (no model involved)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rosbags.rosbag2 import Reader

from m2a_perception.ros.replay.bag import (
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    BagReader,
    BagReadError,
    CameraSource,
    OutputBag,
    TopicInfo,
    camera_from_topic,
    detect_cameras,
    find_message_definitions,
    m2a_typestore,
    message_definition_dirs,
)
from m2a_perception.ros.replay.pack import PackOptions, pack_images

from .conftest import write_pngs


def test_typestore_hashes_match_the_installed_interfaces():
    """rosbags' RIHS01 of every m2a message equals the hash rosidl generated at build time."""
    store = m2a_typestore()
    definitions = find_message_definitions()
    assert set(definitions) == {
        'm2a_perception_msgs/msg/InferenceStats',
        'm2a_perception_msgs/msg/OpenSetPanoptic',
        'm2a_perception_msgs/msg/OpenSetSegment',
    }
    installed = next(d for d in message_definition_dirs() if (d / 'InferenceStats.json').is_file())
    for name in definitions:
        data = json.loads((installed / f'{name.rpartition("/")[2]}.json').read_text())
        assert store.hash_rihs01(name) == data['type_hashes'][0]['hash_string'], name


@pytest.mark.parametrize(
    ('topic', 'msgtype', 'expected'),
    [
        ('/front/image', IMAGE_TYPE, CameraSource('front', '/front/image', 'raw', '')),
        (
            '/car/left/image_raw/compressed',
            COMPRESSED_TYPE,
            CameraSource('left', '/car/left/image_raw/compressed', 'compressed', '/car'),
        ),
        (
            '/cam0/image_rect_color',
            IMAGE_TYPE,
            CameraSource('cam0', '/cam0/image_rect_color', 'raw', ''),
        ),
        ('/front/ground_truth/anomaly', IMAGE_TYPE, None),
        ('/front/anomaly/heatmap', IMAGE_TYPE, None),
        ('/image', IMAGE_TYPE, None),
        ('/front/image', 'sensor_msgs/msg/CameraInfo', None),
    ],
)
def test_camera_from_topic(topic, msgtype, expected):
    assert camera_from_topic(topic, msgtype) == expected


def test_detect_cameras_prefers_raw_and_honours_requests():
    topics = {
        t: TopicInfo(t, m)
        for t, m in [
            ('/front/image', IMAGE_TYPE),
            ('/front/image/compressed', COMPRESSED_TYPE),
            ('/rear/image/compressed', COMPRESSED_TYPE),
            ('/odd-name/image', IMAGE_TYPE),
            ('/front/ground_truth/anomaly', IMAGE_TYPE),
        ]
    }
    with pytest.raises(ValueError, match='odd-name'):
        detect_cameras(topics)
    cameras = detect_cameras(topics, ['front', 'rear', 'odd=/odd-name/image'])
    assert [(c.name, c.transport, c.prefix) for c in cameras] == [
        ('front', 'raw', '/front'),
        ('rear', 'compressed', '/rear'),
        ('odd', 'raw', '/odd'),
    ]
    assert cameras[0].ground_truth_topic('anomaly') == '/front/ground_truth/anomaly'
    assert detect_cameras(topics, ['/front/image/compressed'])[0].transport == 'compressed'
    with pytest.raises(ValueError, match='no such camera'):
        detect_cameras(topics, ['left'])
    with pytest.raises(ValueError, match='not an Image'):
        detect_cameras(topics, ['x=/nothing'])


def test_output_bag_is_readable_after_an_exception(tmp_path):
    path = tmp_path / 'out'
    data = _tiny_image_cdr()

    def write_then_fail() -> None:
        with OutputBag(path) as bag:
            bag.add_topic('/x/image', IMAGE_TYPE)
            bag.write('/x/image', 1, data)
            raise RuntimeError('boom')

    with pytest.raises(RuntimeError, match='boom'):
        write_then_fail()
    with Reader(path) as reader:
        assert reader.message_count == 1
    with pytest.raises(FileExistsError, match='exists'):
        OutputBag(path)


def _tiny_image_cdr() -> bytes:
    store = m2a_typestore()
    image_type = store.types[IMAGE_TYPE]
    header_type = store.types['std_msgs/msg/Header']
    time_type = store.types['builtin_interfaces/msg/Time']
    import numpy as np

    msg = image_type(
        header=header_type(stamp=time_type(sec=1, nanosec=2), frame_id='f'),
        height=1,
        width=1,
        encoding='mono8',
        is_bigendian=0,
        step=1,
        data=np.zeros(1, np.uint8),
    )
    return bytes(store.serialize_cdr(msg, IMAGE_TYPE))


@pytest.fixture(scope='module')
def big_bag(tmp_path_factory) -> Path:
    """Six 256x512 rgb8 frames: several 1 MiB mcap chunks, so a truncation keeps some."""
    root = tmp_path_factory.mktemp('big')
    write_pngs(root / 'frames', 6, (256, 512))
    path = root / 'bag'
    pack_images(root / 'frames', path, options=PackOptions(rate_hz=5.0))
    return path


def truncate(bag: Path, destination: Path, fraction: float) -> Path:
    shutil.copytree(bag, destination)
    (storage,) = destination.glob('*.mcap')
    data = storage.read_bytes()
    storage.write_bytes(data[: int(len(data) * fraction)])
    return destination


def test_truncated_mcap_yields_the_intact_chunks_then_a_clear_error(big_bag, tmp_path):
    bag = truncate(big_bag, tmp_path / 'truncated', 0.7)
    with BagReader(bag) as reader:
        assert reader.recovering
        assert '/front/image' in reader.topics
        recovered = reader.topics['/front/image'].count
        assert 0 < recovered < 6
        delivered = []
        with pytest.raises(BagReadError, match='damaged') as info:
            delivered.extend(reader.messages())
        assert len(delivered) == recovered
        assert info.value.messages_read == recovered
        assert 'truncated or corrupt' in str(info.value)


def test_bag_without_metadata_is_read_from_its_storage_file(big_bag, tmp_path):
    bag = tmp_path / 'no_metadata'
    shutil.copytree(big_bag, bag)
    (bag / 'metadata.yaml').unlink()
    with BagReader(bag) as reader:
        assert not reader.recovering
        assert len(list(reader.messages())) == 6
    (storage,) = bag.glob('*.mcap')
    with BagReader(storage) as reader:
        assert reader.storage == 'mcap'
        assert reader.count(['/front/image']) == 6


def test_unreadable_bags_raise_clear_errors(tmp_path):
    with pytest.raises(BagReadError, match='does not exist'):
        BagReader(tmp_path / 'missing')
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(BagReadError, match=r'neither metadata\.yaml'):
        BagReader(empty)
    garbage = tmp_path / 'garbage'
    garbage.mkdir()
    (garbage / 'garbage.mcap').write_bytes(b'\x89MCAP0\r\n' + b'\x00' * 100)
    with pytest.raises(BagReadError, match='no message could be recovered'):
        BagReader(garbage)


def test_corrupt_sqlite_bag_raises_a_clear_error(tmp_path):
    write_pngs(tmp_path / 'frames', 2, (32, 64))
    bag = tmp_path / 'bag'
    pack_images(tmp_path / 'frames', bag, options=PackOptions(storage='sqlite3'))
    (storage,) = bag.glob('*.db3')
    data = bytearray(storage.read_bytes())
    data[:100] = b'\x00' * 100  # the SQLite header
    storage.write_bytes(bytes(data))
    with pytest.raises(BagReadError, match='cannot be opened'):
        BagReader(bag)
