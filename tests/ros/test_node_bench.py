"""m2a-node-bench end to end on small frames: it drives the real node and reports every stage."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from m2a_perception.cli.node_bench import NODE_STAGES, OUTPUT_TYPES, STAGES, cdr_stamp

from .helpers import REPO_ROOT, ros_env

pytestmark = pytest.mark.ros


def test_bench_measures_both_output_resolutions(tmp_path, tiny_checkpoint):
    report = tmp_path / 'bench.json'
    command = [
        sys.executable,
        '-m',
        'm2a_perception.cli.node_bench',
        '--checkpoint',
        str(tiny_checkpoint),
        '--size',
        '96x128',
        '--encoding',
        'bgr8',
        '--frames',
        '3',
        '--warmup',
        '1',
        '--fps',
        '20',
        '--repeats',
        '3',
        '--json',
        str(report),
        '--node-log',
        str(tmp_path / 'node.log'),
    ]
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=ros_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f'{done.stdout}\n{done.stderr}'
    assert 'node overhead: convert+handoff+pub' in done.stdout
    figures = json.loads(report.read_text())
    results = {r['resolution']: r for r in figures['results']}
    # The tiny model resizes the short side to 256; the source size is the camera's.
    assert results['model']['output_size'] == [256, 341]
    assert results['source']['output_size'] == [96, 128]
    for result in results.values():
        assert result['frames_complete'] == 3
        assert set(result['stages_ms']) == set(STAGES)
        assert result['stages_ms']['model']['p50'] > 0
        assert set(result['bytes_per_frame']) == set(OUTPUT_TYPES)
        assert all(size > 0 for size in result['bytes_per_frame'].values())
        # The floor needs one more subscriber process; the bench says when it got none.
        floor_measured = set(result['publish_floor_ms']) == set(OUTPUT_TYPES)
        assert floor_measured or 'publish floor not measured' in done.stderr
        overhead = sum(result['stages_ms'][s]['p50'] for s in NODE_STAGES)
        assert result['overhead_ms']['p50'] <= overhead * 1.5 + 1.0
    # This camera is smaller than the network input, so the model-size outputs are larger.
    assert sum(results['model']['bytes_per_frame'].values()) > sum(
        results['source']['bytes_per_frame'].values()
    )
    assert figures['receive_ms']['p50'] > 0


def test_cdr_stamp_reads_the_header_of_serialized_messages():
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_234_567, 890
    assert cdr_stamp(serialize_message(msg)) == (1_234_567, 890)
