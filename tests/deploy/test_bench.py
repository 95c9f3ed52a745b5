"""m2a-bench on CPU with the tiny config: stages, cameras, speedups, unavailable backends."""

from __future__ import annotations

import json

import pytest
import torch

from m2a_perception.cli import bench
from m2a_perception.cli.bench import STAGES, main

from .conftest import TINY_SIZE

SIZE_ARG = f'{TINY_SIZE[0]}x{TINY_SIZE[1]}'
BASE = [
    '--model-config',
    'tiny',
    '--size',
    SIZE_ARG,
    '--iters',
    '2',
    '--warmup',
    '1',
    '--device',
    'cpu',
]


def _run(tmp_path, capsys, *extra):
    out = tmp_path / 'bench.json'
    assert main([*BASE, '--num-cameras', '1,2', '--json', str(out), *extra]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_bench_reports_stages_throughput_and_speedups_per_camera_count(tmp_path, capsys):
    results, output = _run(tmp_path, capsys)
    assert results['device'] == 'cpu' and results['cameras'] == [1, 2]
    assert results['command'].startswith('m2a-bench --model-config tiny')
    assert {'torch', 'tensorrt', 'cuda'} <= set(results['versions'])
    runs = {(run['size'], run['cameras'], run['backend']): run for run in results['runs']}
    assert set(runs) == {(SIZE_ARG, 1, 'torch'), (SIZE_ARG, 2, 'torch')}
    for (_, cameras, _), run in runs.items():
        assert set(run['stages']) == {*STAGES, 'total'}
        for stats in run['stages'].values():
            assert stats['n'] == 2 * cameras  # timed rounds x frames per round
            assert 0 <= stats['p50_ms'] <= stats['p99_ms']
        assert run['throughput_fps'] > 0
        assert run['speedup_vs_torch'] == {'model_p50': 1.0, 'total_p50': 1.0, 'throughput': 1.0}
        assert run['memory'] is None  # no CUDA
    # The pre-stage format: model latency per backend plus the post-processing row.
    legacy = results['sizes'][SIZE_ARG]
    assert set(legacy) == {'torch', 'postprocess'}
    assert legacy['torch']['p50_ratio_vs_torch'] == 1.0
    assert 'fps' in output and f'wrote {tmp_path / "bench.json"}' in output


def test_unavailable_backends_are_reported_and_skipped(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip('checks the CPU-only messages')
    results, output = _run(tmp_path, capsys, '--backend', 'torch,torch-fp16,tensorrt')
    assert results['unavailable']['torch-fp16'] == 'torch-fp16 (autocast) needs a CUDA device'
    assert 'CUDA' in results['unavailable']['tensorrt']
    assert {run['backend'] for run in results['runs']} == {'torch'}
    assert 'unavailable: tensorrt:' in output


def test_eager_fp32_is_added_as_the_speedup_reference(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip('checks the CPU-only messages')
    results, _ = _run(tmp_path, capsys, '--backend', 'tensorrt')
    assert results['reference_added'] is True
    assert {run['backend'] for run in results['runs']} == {'torch'}
    assert results['sizes'][SIZE_ARG] == {}


def test_onnxruntime_row_and_no_postprocess(tmp_path, capsys, fast_onnxruntime_kind):
    results, _ = _run(tmp_path, capsys, '--backend', 'onnxruntime,torch', '--no-postprocess')
    backends = {run['backend'] for run in results['runs']}
    assert backends == {'onnxruntime', 'torch'}
    legacy = results['sizes'][SIZE_ARG]
    assert set(legacy) == {'onnxruntime', 'torch'}  # no post-processing row
    assert legacy['onnxruntime']['p50_ratio_vs_onnxruntime'] == 1.0
    for run in results['runs']:
        assert run['speedup_vs_torch']['model_p50'] > 0
        assert run['stages']['post']['p50_ms'] < 1.0


def test_engine_backends_are_provisioned_through_the_engine_cache(
    tmp_path, capsys, monkeypatch, fast_onnxruntime_kind
):
    """The engine path of the bench (cache, gate, engine info), with onnxruntime as engine."""
    monkeypatch.setitem(bench.ENGINE_BACKENDS, 'ort-engine', ('onnxruntime', 'fp32'))
    monkeypatch.setattr(bench, 'BACKENDS', (*bench.BACKENDS, 'ort-engine'))
    cache = ['--engine-cache', str(tmp_path / 'engines')]
    results, _ = _run(tmp_path, capsys, '--backend', 'torch,ort-engine', *cache)
    info = results['engines'][f'ort-engine@{SIZE_ARG}']
    assert info['built'] and info['gate']['passed'] and info['engine'].endswith('.onnx')
    assert {run['backend'] for run in results['runs']} == {'torch', 'ort-engine'}
    again, _ = _run(tmp_path, capsys, '--backend', 'ort-engine', *cache)
    assert not again['engines'][f'ort-engine@{SIZE_ARG}']['built']
    assert len(fast_onnxruntime_kind) == 1


def test_bad_arguments(capsys):
    assert main([*BASE, '--backend', 'tpu']) == 2
    assert 'unknown backend' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*BASE, '--num-cameras', '0'])
    assert exit_info.value.code == 2
    assert 'positive' in capsys.readouterr().err
    assert main([*BASE, '--iters', '0']) == 2
    assert '--iters' in capsys.readouterr().err


def test_both_deform_samplers_in_one_run_with_the_ratio(tmp_path, capsys, fast_onnxruntime_kind):
    results, output = _run(
        tmp_path,
        capsys,
        '--backend',
        'torch,onnxruntime',
        '--deform-sampling',
        'grid_sample,gather',
    )
    labels = {(run['backend'], run['deform_sampling'], run['cameras']) for run in results['runs']}
    assert labels == {
        (backend, sampler, cameras)
        for backend in ('torch', 'onnxruntime')
        for sampler in ('grid_sample', 'gather')
        for cameras in (1, 2)
    }
    assert results['deform_sampling'] == ['grid_sample', 'gather']
    assert len(fast_onnxruntime_kind) == 2  # one engine per sampler, never a cache hit
    assert set(results['engines']) == {
        f'onnxruntime[grid_sample]@{SIZE_ARG}',
        f'onnxruntime[gather]@{SIZE_ARG}',
    }
    ratios = {(r['backend'], r['cameras']): r for r in results['deform_sampling_ratios']}
    assert set(ratios) == {(b, c) for b in ('torch', 'onnxruntime') for c in (1, 2)}
    for (backend, cameras), ratio in ratios.items():
        runs = {
            run['deform_sampling']: run['stages']['model']['p50_ms']
            for run in results['runs']
            if run['backend'] == backend and run['cameras'] == cameras
        }
        assert ratio['gather_model_p50_ms'] == runs['gather']
        assert ratio['grid_sample_model_p50_ms'] == runs['grid_sample']
        assert ratio['gather_over_grid_sample'] == runs['gather'] / runs['grid_sample']
    assert f'deform sampling {SIZE_ARG} 1 cam torch: model p50 gather' in output
    assert 'torch/gather' in output and 'onnxruntime/grid_sample' in output


def test_unknown_deform_sampler_is_an_argument_error(capsys):
    assert main([*BASE, '--deform-sampling', 'grid_sample,bicubic']) == 2
    assert "unknown deform_sampling 'bicubic'" in capsys.readouterr().err


def test_bench_prints_the_model_cost(tmp_path, capsys, tiny_model):
    results, output = _run(tmp_path, capsys)
    cost = results['model_cost']
    assert cost['size'] == list(TINY_SIZE) and cost['mask_embed'] == 'mlp'
    assert cost['parameters'] == sum(p.numel() for p in tiny_model.parameters())
    assert f'model cost at {SIZE_ARG}: ' in output and 'mask_embed mlp' in output
