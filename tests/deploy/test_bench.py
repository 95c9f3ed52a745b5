"""m2a-bench on CPU with the tiny config: stages, cameras, speedups, unavailable backends."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_every_backend_comes_through_the_node_loader_from_a_checkpoint_file(
    tmp_path, capsys, monkeypatch, fast_onnxruntime_kind
):
    """Without --checkpoint the seeded random model is written to a temporary checkpoint per
    sampler, and every backend is a `BackendSpec` loaded by `runtime.loader.load_backend`, the
    node's loader; engine backends come with the sidecar it wrote and checked."""
    from m2a_perception.deploy.cache import EngineKey, read_sidecar, sha256_file
    from m2a_perception.runtime import loader
    from m2a_perception.weights import read_checkpoint

    loads = []

    def recording_load_backend(spec, on_state=None):
        loaded = loader.load_backend(spec, on_state)
        # While the bench's temporary checkpoint still exists: what the loader was given.
        contents = read_checkpoint(spec.checkpoint)
        engine = loaded.engine_file
        sidecar = read_sidecar(Path(engine + '.json')) if engine else None
        loads.append((spec, contents.config, sha256_file(spec.checkpoint), sidecar, loaded))
        return loaded

    monkeypatch.setattr(bench, 'load_backend', recording_load_backend)
    results, _ = _run(
        tmp_path,
        capsys,
        '--backend',
        'torch,onnxruntime',
        '--deform-sampling',
        'grid_sample,gather',
    )
    assert [(spec.kind, config.pixel_decoder.deform_sampling) for spec, config, *_ in loads] == [
        ('torch', 'grid_sample'),
        ('onnxruntime', 'grid_sample'),
        ('torch', 'gather'),
        ('onnxruntime', 'gather'),
    ]
    for spec, config, sha256, sidecar, loaded in loads:
        sampler = config.pixel_decoder.deform_sampling
        checkpoint = results['checkpoints'][sampler]
        assert checkpoint['random_weights'] and checkpoint['temporary']
        assert spec.checkpoint == checkpoint['checkpoint'] and sha256 == checkpoint['sha256']
        assert spec.checkpoint.endswith(f'tiny-{sampler}.safetensors')
        assert not Path(spec.checkpoint).exists()  # the temporary folder is gone
        label = f'{spec.kind}[{sampler}]@{SIZE_ARG}'
        assert results['backends'][label] == loaded.describe()
        assert results['backends'][label]['checkpoint'] == spec.checkpoint
        if spec.kind == 'torch':
            assert sidecar is None and loaded.sidecar is None
            continue
        # The engine is named by its key in the cache folder and sealed by a sidecar whose key
        # holds the checkpoint's hash, the bench size and the sampler.
        engine = Path(loaded.engine_file)
        assert engine.parent == Path(spec.engine_cache) and not spec.engine_path
        assert engine.name == EngineKey.from_dict(sidecar['key']).file_stem() + '.onnx'
        assert spec.engine_policy == 'build_if_missing' and spec.allow_gate_failed
        assert sidecar == loaded.sidecar
        assert sidecar['key']['weights_sha256'] == sha256
        assert sidecar['key']['input_shape'] == [1, 3, *TINY_SIZE]
        assert sidecar['key']['builder']['model_deform_sampling'] == sampler
        assert results['engines'][label]['loaded'] == loaded.describe()
        assert results['engines'][label]['sidecar'] == loaded.engine_file + '.json'
    assert (
        results['checkpoints']['grid_sample']['sha256']
        != (results['checkpoints']['gather']['sha256'])
    )


def test_engine_reuse_goes_through_the_sidecar_check(
    tmp_path, capsys, monkeypatch, fast_onnxruntime_kind
):
    """A second run reuses the engine only while the sidecar's recorded hash matches the file:
    an overwritten engine is rebuilt, as the node would under build_if_missing."""
    cache = tmp_path / 'engines'
    args = ('--backend', 'onnxruntime', '--engine-cache', str(cache))
    first, _ = _run(tmp_path, capsys, *args)
    engine = Path(first['engines'][f'onnxruntime@{SIZE_ARG}']['engine'])
    assert first['engines'][f'onnxruntime@{SIZE_ARG}']['built']
    again, _ = _run(tmp_path, capsys, *args)
    assert not again['engines'][f'onnxruntime@{SIZE_ARG}']['built']  # same checkpoint bytes
    assert again['checkpoints']['model']['sha256'] == first['checkpoints']['model']['sha256']
    engine.write_bytes(engine.read_bytes() + b'tampered')
    third, _ = _run(tmp_path, capsys, *args)
    assert third['engines'][f'onnxruntime@{SIZE_ARG}']['built']
    assert len(fast_onnxruntime_kind) == 2
    assert sorted(path.name for path in cache.iterdir()) == [engine.name, engine.name + '.json']


def test_a_given_checkpoint_is_used_as_is_for_its_own_sampler(
    tmp_path, capsys, tiny_checkpoint, fast_onnxruntime_kind
):
    results, _ = _run(
        tmp_path,
        capsys,
        '--checkpoint',
        str(tiny_checkpoint),
        '--backend',
        'torch,onnxruntime',
        '--deform-sampling',
        'grid_sample,gather',
    )
    own, switched = results['checkpoints']['grid_sample'], results['checkpoints']['gather']
    assert own['checkpoint'] == str(tiny_checkpoint) and not own['temporary']
    assert switched['temporary'] and not switched['random_weights']
    assert switched['checkpoint'].endswith('tiny-gather.safetensors')
    assert results['weights'] == str(tiny_checkpoint)
    # A trained checkpoint's engines must pass their gate: nothing is overridden.
    for label in (f'onnxruntime[grid_sample]@{SIZE_ARG}', f'onnxruntime[gather]@{SIZE_ARG}'):
        assert results['engines'][label]['gate']['passed']
        assert not results['engines'][label]['gate']['overridden']
    assert {run['backend'] for run in results['runs']} == {'torch', 'onnxruntime'}
