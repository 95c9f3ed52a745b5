"""Offline replay (`replay_bag`, `m2a-replay`): headers, output topics, metrics, damaged input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from m2a_perception.classes import label_ids_to_train_ids
from m2a_perception.cli.replay import main as replay_main
from m2a_perception.evaluation.streams import EvaluationSettings
from m2a_perception.metrics.component import OBSTACLE_TRACK, ComponentAccumulator
from m2a_perception.metrics.pixel import SMIYC_PROTOCOL, PixelCurveAccumulator
from m2a_perception.metrics.semantic import ConfusionMatrix
from m2a_perception.pictures import read_rgb
from m2a_perception.pipeline import Segmenter
from m2a_perception.ros.params import settings_from_parameters
from m2a_perception.ros.replay.bag import BagReadError
from m2a_perception.ros.replay.evaluation import evaluate_recorded_bag
from m2a_perception.ros.replay.offline import ReplayOptions, replay_bag
from m2a_perception.ros.replay.pack import PackOptions, pack_images
from m2a_perception.ros.topics import OUTPUT_TOPICS

from .conftest import NUM_ANOMALY_SCENES, SOURCE_RESOLUTION, write_pngs

OUTPUTS = {f'/front/{topic}' for topic in OUTPUT_TOPICS.values()}
HEADER_OUTPUTS = OUTPUTS  # every per-camera output carries the input header


def read_with_rosbags(path: Path) -> dict[str, list[tuple[int, object]]]:
    """Decode every message with a typestore that learns custom types from the bag only."""
    store = get_typestore(Stores.ROS2_KILTED)
    messages: dict[str, list[tuple[int, object]]] = {}
    with Reader(path) as reader:
        for connection in reader.connections:
            if connection.msgtype not in store.types:
                store.register(get_types_from_msg(connection.msgdef.data, connection.msgtype))
        for connection, log_time, raw in reader.messages():
            msg = store.deserialize_cdr(raw, connection.msgtype)
            messages.setdefault(connection.topic, []).append((log_time, msg))
    return messages


def read_with_mcap(path: Path) -> dict[str, list[object]]:
    (storage,) = path.glob('*.mcap')
    messages: dict[str, list[object]] = {}
    with storage.open('rb') as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for _, channel, _, decoded in reader.iter_decoded_messages():
            messages.setdefault(channel.topic, []).append(decoded)
    return messages


def same(first: object, second: object) -> bool:
    """Equal, with NaN equal to NaN (metric dicts hold NaN where a metric is undefined)."""
    return json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def header_key(msg) -> tuple[int, int, str]:
    return int(msg.header.stamp.sec), int(msg.header.stamp.nanosec), str(msg.header.frame_id)


@pytest.fixture(scope='module')
def replayed(anomaly_bag, node_parameters, tmp_path_factory):
    out = tmp_path_factory.mktemp('replay') / 'out'
    options = ReplayOptions(progress=False, component_track='obstacle')
    report = replay_bag(anomaly_bag, out, parameters=node_parameters, options=options)
    return report, out


def test_every_frame_is_processed(replayed):
    report, _ = replayed
    assert report.mode == 'as-fast'
    assert report.input_error is None
    camera = report.cameras['front']
    assert (camera.received, camera.processed, camera.failed) == (NUM_ANOMALY_SCENES,) * 2 + (0,)
    assert report.latency_ms['model'].count == NUM_ANOMALY_SCENES
    assert report.latency_ms['total'].p50 >= report.latency_ms['model'].p50 > 0
    assert report.throughput_fps > 0
    assert report.output_counts['/front/stats'] == NUM_ANOMALY_SCENES
    assert 'AuPRC' in report.format_text()


def test_headers_survive_end_to_end(anomaly_bag, replayed):
    _, out = replayed
    inputs = read_with_rosbags(anomaly_bag)['/front/image']
    expected = [(log_time, header_key(msg)) for log_time, msg in inputs]
    assert len(expected) == NUM_ANOMALY_SCENES
    outputs = read_with_rosbags(out)
    assert [(t, header_key(m)) for t, m in outputs['/front/image']] == expected
    for topic in HEADER_OUTPUTS:
        assert [(t, header_key(m)) for t, m in outputs[topic]] == expected, topic
    for _, panoptic in outputs['/front/panoptic/segments']:
        assert header_key(panoptic.segment_ids) == header_key(panoptic)
    for (_, stats), (_, image) in zip(outputs['/front/stats'], inputs, strict=True):
        assert stats.camera == 'front'
        assert header_key(stats) == header_key(image)


def test_every_output_topic_decodes_with_rosbags_and_mcap(replayed):
    _, out = replayed
    expected = OUTPUTS | {'/diagnostics', '/front/image', '/front/ground_truth/anomaly'}
    with_rosbags = read_with_rosbags(out)
    with_mcap = read_with_mcap(out)
    assert set(with_rosbags) == set(with_mcap) == expected
    for topic in expected:
        assert len(with_rosbags[topic]) == len(with_mcap[topic]) > 0, topic
    encodings = {
        'anomaly/score': '32FC1',
        'anomaly/heatmap': 'bgr8',
        'anomaly/mask': 'mono8',
        'panoptic/semantic': 'mono8',
        'panoptic/confidence': 'mono8',
        'overlay': 'rgb8',
    }
    for relative, encoding in encodings.items():
        message = with_mcap[f'/front/{relative}'][0]
        assert (message.encoding, message.height, message.width) == (encoding, 64, 128)
    panoptic = with_mcap['/front/panoptic/segments'][0]
    assert panoptic.segment_ids.encoding == 'mono16'
    assert panoptic.anomaly_threshold == pytest.approx(0.5)
    statuses = [s.name for s in with_mcap['/diagnostics'][-1].status]
    assert statuses == [
        'm2a_perception: backend',
        'm2a_perception: processing',
        'm2a_perception: camera front',
    ]


def direct_metrics(world, checkpoint):
    """The same frames through `Segmenter` and the metric classes, without any bag."""
    settings = settings_from_parameters(SOURCE_RESOLUTION)
    segmenter = Segmenter.from_checkpoint(checkpoint, postprocess_config=settings.postprocess)
    pixel = PixelCurveAccumulator(SMIYC_PROTOCOL)
    at_node = ComponentAccumulator(OBSTACLE_TRACK)
    frames = []
    for path in sorted((world.anomaly_root / 'images').iterdir()):
        from PIL import Image

        label = np.asarray(Image.open(world.anomaly_root / 'labels_masks' / path.name))
        score = segmenter(read_rgb(path)).anomaly_map.numpy()
        pixel.update(score, label)
        at_node.update(score >= np.float32(0.5), label)
        frames.append((score, label))
    metrics = pixel.compute()
    best = ComponentAccumulator(OBSTACLE_TRACK)
    for score, label in frames:
        best.update_from_scores(score.astype(np.float16), label, metrics.best_f1_threshold)
    return metrics.as_dict(), best.compute().as_dict(), at_node.compute().as_dict()


def test_metrics_match_a_direct_computation(world, tiny_checkpoint, replayed):
    report, _ = replayed
    pixel, best, at_node = direct_metrics(world, tiny_checkpoint)
    metrics = report.metrics
    assert metrics['frames_evaluated'] == NUM_ANOMALY_SCENES
    assert same(metrics['pixel'], pixel)
    assert same(metrics['components'], best)
    assert same(metrics['components_at_node_threshold'], at_node)
    assert metrics['thresholds']['components'] == pixel['best_f1_threshold']


def test_metrics_match_m2a_eval(world, tiny_checkpoint, replayed, tmp_path):
    """`m2a-eval --protocol node` on the folder the bag was packed from gives the same numbers."""
    from m2a_training.cli.evaluate import main as eval_main

    out = tmp_path / 'eval'
    status = eval_main(
        [
            '--checkpoint', str(tiny_checkpoint),
            '--dataset', f'synthetic={world.root}',
            '--out', str(out),
            '--gallery', '0', '--no-panoptic', '--workers', '0', '--no-progress',
            '--threads', '1', '--device', 'cpu', '--protocol', 'node',
        ]
    )  # fmt: skip
    assert status == 0
    result = json.loads((out / 'results.json').read_text())['datasets']['synthetic']
    report, _ = replayed
    assert result['num_frames'] == report.metrics['frames_evaluated'] == NUM_ANOMALY_SCENES
    for key in ('auprc', 'fpr95', 'auroc', 'best_f1', 'best_f1_threshold', 'num_positive_pixels'):
        assert report.metrics['pixel'][key] == pytest.approx(result['pixel'][key], abs=1e-12), key
    assert result['component']['track'] == report.metrics['components']['track'] == 'obstacle'
    for key in ('siou', 'ppv', 'f1_star', 'num_gt_components', 'num_pred_components'):
        replayed_value = report.metrics['components'][key]
        assert replayed_value == pytest.approx(result['component'][key], abs=1e-12, nan_ok=True)


def test_recorded_outputs_give_the_same_report(replayed):
    report, out = replayed
    recorded = evaluate_recorded_bag(out, EvaluationSettings(component_track='obstacle'))
    assert same(recorded.metrics, report.metrics)
    assert recorded.cameras['front'].processed == NUM_ANOMALY_SCENES
    assert recorded.latency_ms['model'].count == NUM_ANOMALY_SCENES
    assert recorded.latency_ms['model'].mean == pytest.approx(report.latency_ms['model'].mean)


def test_semantic_ground_truth(world, tiny_checkpoint, node_parameters, tmp_path):
    cityscapes = world.cityscapes_root
    bag = tmp_path / 'val'
    pack_images(
        cityscapes / 'leftImg8bit' / 'val',
        bag,
        semantic=cityscapes / 'gtFine' / 'val',
        options=PackOptions(
            recursive=True,
            image_suffix='_leftImg8bit',
            semantic_suffix='_gtFine_labelIds',
            semantic_format='labelids',
        ),
    )
    report = replay_bag(
        bag, tmp_path / 'out', parameters=node_parameters, options=ReplayOptions(progress=False)
    )
    semantic = report.metrics['semantic']
    assert semantic['frames'] == 2
    assert 'pixel' not in report.metrics
    segmenter = Segmenter.from_checkpoint(
        tiny_checkpoint, postprocess_config=settings_from_parameters(SOURCE_RESOLUTION).postprocess
    )
    matrix = ConfusionMatrix(20)
    from PIL import Image

    for path in sorted((cityscapes / 'leftImg8bit' / 'val').rglob('*.png')):
        label_path = (
            cityscapes
            / 'gtFine'
            / 'val'
            / path.parent.name
            / path.name.replace('_leftImg8bit', '_gtFine_labelIds')
        )
        truth = label_ids_to_train_ids(np.asarray(Image.open(label_path)))
        matrix.update(segmenter(read_rgb(path)).semantic.numpy(), truth)
    expected = matrix.compute()
    assert same(semantic['confusion'], expected.as_dict())
    assert semantic['iou_unknown'] == pytest.approx(expected.iou[19], nan_ok=True)


@pytest.fixture(scope='module')
def truncated_bag(tmp_path_factory) -> Path:
    """Six 256x512 frames in several mcap chunks, the file cut at 70 %."""
    root = tmp_path_factory.mktemp('truncated')
    write_pngs(root / 'frames', 6, (256, 512))
    pack_images(root / 'frames', root / 'complete', options=PackOptions(rate_hz=5.0))
    bag = root / 'bag'
    shutil.copytree(root / 'complete', bag)
    (storage,) = bag.glob('*.mcap')
    data = storage.read_bytes()
    storage.write_bytes(data[: int(len(data) * 0.7)])
    return bag


def test_truncated_input_gives_a_clear_error_and_a_valid_partial_bag(
    truncated_bag, node_parameters, tmp_path
):
    out = tmp_path / 'out'
    with pytest.raises(BagReadError) as info:
        replay_bag(
            truncated_bag, out, parameters=node_parameters, options=ReplayOptions(progress=False)
        )
    message = str(info.value)
    assert 'damaged' in message and 'complete.mcap is truncated or corrupt' in message
    report = info.value.report
    processed = report.frames_processed
    assert 0 < processed < 6
    assert report.input_error == message
    with Reader(out) as reader:  # closed properly: index and metadata present
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts['/front/image'] == counts['/front/stats'] == processed
    assert {t: len(m) for t, m in read_with_mcap(out).items()} == {
        t: n for t, n in counts.items() if n
    }


def test_cli_exit_codes_and_report(truncated_bag, anomaly_bag, tiny_checkpoint, tmp_path, capsys):
    common = ['--checkpoint', str(tiny_checkpoint), '--no-progress', '--threads', '1']
    out = tmp_path / 'damaged'
    assert replay_main([str(truncated_bag), '--out', str(out), *common]) == 1
    captured = capsys.readouterr()
    assert 'error: input bag' in captured.err and 'damaged' in captured.err
    assert 'closed and is readable' in captured.out
    assert json.loads((out / 'replay_report.json').read_text())['input_error']

    params_file = Path(__file__).resolve().parents[2] / 'config' / 'm2a_perception.yaml'
    out = tmp_path / 'ok'
    args = [str(anomaly_bag), '--out', str(out), *common, '--params-file', str(params_file)]
    assert replay_main([*args, '-p', 'anomaly.threshold:=0.7', '--max-frames', '2']) == 0
    report = json.loads((out / 'replay_report.json').read_text())
    assert report['frames_processed'] == 2
    assert report['metrics']['thresholds']['components_at_node_threshold'] == 0.7
    assert 'Foxglove' in capsys.readouterr().out

    assert replay_main([*args, '--overwrite', '-p', 'anomaly.threshold:=2.0']) == 2
    assert 'anomaly.threshold must be in [0.0, 1.0]' in capsys.readouterr().err
    assert replay_main([str(anomaly_bag), '--out', str(tmp_path / 'x'), '--no-progress']) == 2
    assert 'model.checkpoint is empty' in capsys.readouterr().err


def test_recorded_rate_drops_frames_like_the_node(node_parameters, tmp_path):
    """At 50 Hz the tiny CPU model cannot keep up: the latest-frame slot overwrites frames."""
    write_pngs(tmp_path / 'frames', 8, (64, 128))
    pack_images(tmp_path / 'frames', tmp_path / 'fast', options=PackOptions(rate_hz=50.0))
    report = replay_bag(
        tmp_path / 'fast',
        tmp_path / 'out',
        parameters=node_parameters,
        options=ReplayOptions(rate='recorded', progress=False),
    )
    camera = report.cameras['front']
    assert camera.received == 8
    assert 0 < camera.processed < 8
    assert camera.processed + camera.dropped_overwritten + camera.dropped_stale == 8
    assert report.latency_ms['end_to_end'].count == camera.processed
    stats = read_with_rosbags(tmp_path / 'out')['/front/stats']
    assert stats[-1][1].frames_dropped_overwritten <= camera.dropped_overwritten
    assert stats[-1][1].frames_processed == camera.processed


def test_model_resolution_outputs_are_resized_for_the_metrics(
    anomaly_bag, tiny_checkpoint, tmp_path
):
    """With the node's default output_resolution (model), maps are published at the network
    input size and scored after a bilinear resize to the labels, with a note saying so."""
    report = replay_bag(
        anomaly_bag,
        tmp_path / 'out',
        parameters={'model.checkpoint': str(tiny_checkpoint)},
        options=ReplayOptions(progress=False, max_frames=1),
    )
    score = read_with_mcap(tmp_path / 'out')['/front/anomaly/score'][0]
    assert (score.height, score.width) == (256, 512)  # tiny model: short side 256
    assert report.metrics['frames_evaluated'] == 1
    assert any('output_resolution:=source' in note for note in report.metrics['notes'])


def test_compressed_sqlite3_bag_gives_the_same_metrics(world, node_parameters, replayed, tmp_path):
    """PNG CompressedImage in an sqlite3 bag: lossless, so the metrics equal the raw replay."""
    bag = tmp_path / 'png'
    pack_images(
        world.anomaly_root,
        bag,
        options=PackOptions(image_format='png', storage='sqlite3', rate_hz=2.0),
    )
    report = replay_bag(
        bag,
        tmp_path / 'out',
        parameters=node_parameters,
        options=ReplayOptions(progress=False, component_track='obstacle'),
    )
    assert report.cameras['front'].topic == '/front/image/compressed'
    assert report.cameras['front'].processed == NUM_ANOMALY_SCENES
    assert same(report.metrics, replayed[0].metrics)
    assert '/front/image/compressed' in read_with_mcap(tmp_path / 'out')


def test_two_cameras_in_one_bag(anomaly_bag, node_parameters, tmp_path):
    """Two cameras (one in a namespace) share the model; each gets its outputs and metrics."""
    from m2a_perception.ros.replay.bag import BagReader, OutputBag

    bag = tmp_path / 'two'
    rename = {
        '/front/image': ['/front/image', '/car/rear/image_raw'],
        '/front/ground_truth/anomaly': [
            '/front/ground_truth/anomaly',
            '/car/rear/ground_truth/anomaly',
        ],
    }
    with BagReader(anomaly_bag) as reader, OutputBag(bag) as output:
        for source, targets in rename.items():
            for target in targets:
                output.add_topic(target, reader.topics[source].msgtype)
        for message in reader.messages():
            for target in rename[message.topic]:
                output.write(target, message.log_time_ns, message.data)
    report = replay_bag(
        bag, tmp_path / 'out', parameters=node_parameters, options=ReplayOptions(progress=False)
    )
    assert {name: c.processed for name, c in report.cameras.items()} == {
        'front': NUM_ANOMALY_SCENES,
        'rear': NUM_ANOMALY_SCENES,
    }
    assert report.metrics['frames_evaluated'] == 2 * NUM_ANOMALY_SCENES
    outputs = read_with_mcap(tmp_path / 'out')
    assert len(outputs['/car/rear/anomaly/score']) == len(outputs['/front/anomaly/score']) == 4
    assert {s.name for s in outputs['/diagnostics'][-1].status} >= {
        'm2a_perception: camera front',
        'm2a_perception: camera rear',
    }
