"""`m2a-demo` end to end with a handful of iterations: it runs the `Trainer` on both synthetic
recipes, chains stage 2 to stage 1's last checkpoint, prints the trainers' final validation and
writes every promised output."""

from __future__ import annotations

import importlib
import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from m2a_perception.weights import load_checkpoint
from m2a_training import demo
from m2a_training.cli.demo import main
from m2a_training.config import load_train_config
from m2a_training.demo import format_figures, obstacle_is_hottest

SMALL_WORLD = [
    'data.synthetic_world.num_train=4',
    'data.synthetic_world.num_val=2',
    'data.synthetic_world.num_anomaly_val=3',
    'data.synthetic_world.num_outlier_images=6',
    'solver.batch_size=2',
    'loss.num_points=256',
    'logging.progress_bar=false',
    'logging.tensorboard=false',
]


def test_demo_runs_both_recipes_and_writes_every_output(tmp_path, capsys):
    threads = torch.get_num_threads()
    argv = ['--out', str(tmp_path), '--stage1-iters', '3', '--stage2-iters', '2']
    for override in SMALL_WORLD:
        argv += ['--set', override]
    # The replay through the node is covered by tests/replay.
    argv += ['--gallery', '2', '--no-replay']
    try:
        code = main(argv)
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / 'metrics.json').read_text())
    # The printed figures are the trainers' last validations.
    assert f'after stage 1: {format_figures(report["after_stage1"])}' in printed
    assert f'after stage 2: {format_figures(report["after_stage2"])}' in printed
    assert report['anomaly_kinds'] == ['rock', 'barrel', 'tyre', 'cone']

    stage1 = load_train_config(tmp_path / 'stage1' / 'config.yaml')
    stage2 = load_train_config(tmp_path / 'stage2' / 'config.yaml')
    assert (stage1.stage, stage2.stage) == (1, 2)
    assert stage1.solver.max_iters == 3 and stage2.solver.max_iters == 2
    stage1_model = tmp_path / 'stage1' / 'checkpoints' / 'iter_0000003' / 'model.safetensors'
    assert stage2.model.init_checkpoint == str(stage1_model)
    # The demo checkpoint is stage 2's last model, bit for bit, with the demo model config.
    stage2_model = tmp_path / 'stage2' / 'checkpoints' / 'iter_0000002' / 'model.safetensors'
    shipped, final = load_file(tmp_path / 'm2a_demo.safetensors'), load_file(stage2_model)
    assert shipped.keys() == final.keys()
    assert all(torch.equal(shipped[k], final[k]) for k in shipped)
    _model, config = load_checkpoint(tmp_path / 'm2a_demo.safetensors')
    assert config.name == 'demo'

    hottest = report['hottest_region']
    assert (hottest['scenes'], hottest['gallery_scenes']) == (3, 2)
    assert f'in {hottest["scenes_where_the_obstacle_is_hottest"]} of 3 held-out' in printed
    # Two rows of four 128x256 tiles, drawn at twice the scene resolution.
    with Image.open(tmp_path / 'gallery.png') as sheet:
        assert sheet.size == (4 * 2 * 256, 2 * 2 * 128)
    scenes = sorted((tmp_path / 'gallery').iterdir())
    assert [s.name for s in scenes] == ['anomaly_000000', 'anomaly_000001']
    for name in (
        'input.png',
        'anomaly_heatmap.png',
        'semantic_overlay.png',
        'panoptic_overlay.png',
        'segments.json',
    ):
        assert (scenes[0] / name).is_file(), name


def test_obstacle_is_hottest_compares_obstacle_and_inlier_maxima():
    label = np.array([[0, 0, 1], [255, 0, 1]], np.uint8)
    anomaly = np.array([[0.1, 0.2, 0.7], [0.99, 0.3, 0.1]], np.float32)
    # The void pixel's 0.99 does not count; the obstacle's 0.7 beats the inliers' 0.3.
    assert obstacle_is_hottest(anomaly, label)
    anomaly[0, 1] = 0.7  # a tie is not a win
    assert not obstacle_is_hottest(anomaly, label)
    assert not obstacle_is_hottest(anomaly, np.zeros_like(label))


def test_the_demo_replay_commands_parse_with_their_tools(tmp_path, monkeypatch):
    # The demo's replay runs `python -m` tools in child processes; each command line must be
    # one those tools' parsers accept, with the shared vocabulary's meanings.
    calls = []
    monkeypatch.setattr(demo, 'run_console_script', lambda *call: calls.append(call) or 'report')
    checkpoint = tmp_path / 'model.safetensors'
    assert demo.replay_through_node(tmp_path / 'anomaly', checkpoint, tmp_path) == 'report'
    modules = [module for module, _ in calls]
    assert modules == ['m2a_perception.cli.pack_bag', 'm2a_perception.cli.replay']
    pack, replay = (
        importlib.import_module(module).build_parser().parse_args(arguments)
        for module, arguments in calls
    )
    assert pack.fps == 5.0 and pack.out == tmp_path / 'camera_bag' and pack.overwrite
    assert replay.live and replay.checkpoint == checkpoint.resolve()
    assert replay.json == tmp_path / 'replay_report.json'
    assert replay.param == ['output_resolution:=source']
