"""Engine cache: key computation and invalidation, policies, atomic writes, corrupt engines."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

from m2a_perception.deploy import cache as cache_module
from m2a_perception.deploy.cache import (
    BUILD_IF_MISSING,
    FORCE_REBUILD,
    LOAD_ONLY,
    EngineCache,
    EngineCorruptError,
    EngineKey,
    EngineMissingError,
    EnginePaths,
    EngineRejectedError,
    EngineStaleError,
    Toolchain,
    atomic_write_file,
    graph_source_sha256,
    make_engine_key,
    probe_toolchain,
    sha256_file,
    sha256_state_dict,
)
from m2a_perception.deploy.gate import GateFailedError, GateResult, GateThresholds

MAGIC = b'M2A-TEST-ENGINE\n'
TOOLCHAIN = Toolchain(
    torch='2.8.0',
    torch_tensorrt='2.8.0',
    tensorrt='10.3.0',
    cuda='12.6',
    gpu_name='Orin',
    compute_capability='sm_87',
    platform='aarch64 L4T R36 (release), REVISION: 4.3',
)


def make_key(**changes) -> EngineKey:
    key = make_engine_key(
        backend='tensorrt',
        model_name='tiny',
        weights_sha256='a' * 64,
        input_shape=(1, 3, 64, 128),
        input_dtype='uint8',
        valid_size=None,
        pixel_mean=(123.675, 116.28, 103.53),
        pixel_std=(58.395, 57.12, 57.375),
        precision='fp16-islands-v1',
        builder={'use_explicit_typing': True, 'optimization_level': 3},
        toolchain=TOOLCHAIN,
    )
    toolchain_changes = {k: v for k, v in changes.items() if k in Toolchain.__dataclass_fields__}
    key_changes = {k: v for k, v in changes.items() if k not in toolchain_changes}
    if toolchain_changes:
        key_changes['toolchain'] = dataclasses.replace(TOOLCHAIN, **toolchain_changes)
    return dataclasses.replace(key, **key_changes)


def gate_result(passed: bool = True) -> GateResult:
    return GateResult(
        passed=passed,
        failures=() if passed else ('argmax agreement 90.000% is below 99.50%',),
        reference='torch',
        candidate='test',
        num_images=1,
        input_shape=(1, 3, 64, 128),
        argmax_agreement=1.0 if passed else 0.9,
        worst_image_agreement=1.0 if passed else 0.9,
        anomaly_max_abs=0.0,
        anomaly_mean_abs=0.0,
        class_logits_max_abs=0.0,
        mask_logits_max_abs=0.0,
        non_finite=0,
        auprc_reference=None,
        auprc_candidate=None,
        auprc_delta_points=None,
        fpr95_delta_points=None,
        thresholds=GateThresholds(),
        seconds=0.0,
    )


class FakeEngines:
    """A trivial engine format: MAGIC + payload. Counts builds and loads."""

    def __init__(self, payload: bytes = b'v1', gate_passes: bool = True) -> None:
        self.payload = payload
        self.gate_passes = gate_passes
        self.builds = 0
        self.loads = 0

    def build(self, path: Path) -> dict[str, str]:
        self.builds += 1
        path.write_bytes(MAGIC + self.payload)
        return {'builder': 'fake'}

    def load(self, path: Path) -> bytes:
        self.loads += 1
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            raise ValueError('not an engine')
        return data[len(MAGIC) :]

    def gate(self, engine: bytes) -> GateResult:
        return gate_result(self.gate_passes)

    def resolve(self, cache: EngineCache, key: EngineKey, policy: str, **kwargs):
        return cache.resolve(
            key,
            policy,
            suffix='.plan',
            build=self.build,
            load=self.load,
            gate=self.gate,
            **kwargs,
        )


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith('.')]


# --- key ------------------------------------------------------------------------------------

KEY_FIELD_CHANGES = {
    'backend': 'tensorrt-onnx',
    'model_name': 'cityscapes_r50_gma',
    'weights_sha256': 'b' * 64,
    'model_code_version': '2',
    'graph_source_sha256': 'c' * 64,
    'input_shape': (1, 3, 128, 256),
    'input_dtype': 'float32',
    'valid_size': (60, 128),
    'normalization': (0.0, 0.0, 0.0, 1.0, 1.0, 1.0),
    'precision': 'fp32-v1',
    'builder': {'use_explicit_typing': True, 'optimization_level': 5},
    'torch': '2.13.0',
    'torch_tensorrt': '2.13.0',
    'tensorrt': '11.0.0',
    'cuda': '13.0',
    'gpu_name': 'NVIDIA H100 80GB HBM3',
    'compute_capability': 'sm_90',
    'platform': 'x86_64',
    'schema': 2,
}


def test_key_digest_is_deterministic_and_round_trips_through_json():
    key = make_key()
    assert key.digest() == make_key().digest()
    restored = EngineKey.from_dict(json.loads(json.dumps(key.as_dict())))
    assert restored == key
    assert restored.digest() == key.digest()
    assert key.file_stem().startswith('tiny-64x128-fp16-islands-v1-tensorrt-')


def test_key_covers_every_field():
    fields = {f.name for f in dataclasses.fields(EngineKey)} - {'toolchain'}
    fields |= {f.name for f in dataclasses.fields(Toolchain)}
    assert fields == set(KEY_FIELD_CHANGES)


@pytest.mark.parametrize(('field', 'value'), sorted(KEY_FIELD_CHANGES.items()))
def test_changing_any_key_field_invalidates_the_engine(tmp_path, field, value):
    engines = FakeEngines()
    cache = EngineCache(tmp_path)
    built = engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    changed = make_key(**{field: value})
    assert changed.digest() != make_key().digest()
    # Keyed lookup: another file name, so the old engine is never picked up.
    assert cache.paths(changed, '.plan') != built.paths
    # The old engine checked against the new key is stale, naming the field.
    entry = cache.lookup(changed, built.paths)
    assert entry.status == 'stale'
    assert field in entry.reason
    with pytest.raises(EngineStaleError, match=field):
        engines.resolve(cache, changed, LOAD_ONLY, paths=built.paths)
    # build_if_missing builds a new engine for the new key.
    rebuilt = engines.resolve(cache, changed, BUILD_IF_MISSING)
    assert rebuilt.built and engines.builds == 2


def test_load_only_miss_names_the_stale_engines_and_the_build_command(tmp_path):
    engines = FakeEngines()
    cache = EngineCache(tmp_path)
    engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    other_gpu = make_key(gpu_name='NVIDIA GeForce RTX 4090', compute_capability='sm_89')
    with pytest.raises(EngineMissingError) as raised:
        engines.resolve(cache, other_gpu, LOAD_ONLY, build_hint='run m2a-build-engine here')
    message = str(raised.value)
    assert 'toolchain.gpu_name: Orin -> NVIDIA GeForce RTX 4090' in message
    assert 'toolchain.compute_capability: sm_87 -> sm_89' in message
    assert 'run m2a-build-engine here' in message
    assert engines.builds == 1


def test_graph_source_hash_follows_the_sources(tmp_path):
    for name in ('model/a.py', 'export.py', 'deploy/precision.py', 'config.py'):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('x = 1\n')
    before = graph_source_sha256(tmp_path)
    (tmp_path / 'model' / 'a.py').write_text('x = 2\n')
    assert graph_source_sha256(tmp_path) != before
    assert len(graph_source_sha256()) == 64


def test_weights_hashes(tmp_path, tiny_model):
    state = tiny_model.state_dict()
    assert sha256_state_dict(state) == sha256_state_dict(dict(state))
    changed = dict(state)
    name = next(iter(changed))
    changed[name] = changed[name] + 1
    assert sha256_state_dict(changed) != sha256_state_dict(state)
    path = tmp_path / 'f.bin'
    path.write_bytes(b'abc')
    assert sha256_file(path) == 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'


def test_probe_toolchain_on_cpu():
    toolchain = probe_toolchain('cpu')
    assert toolchain.gpu_name == 'cpu'
    assert toolchain.compute_capability == 'none'
    assert toolchain.torch == torch.__version__
    if not torch.cuda.is_available():
        with pytest.raises(cache_module.EngineCacheError, match='CUDA is not available'):
            probe_toolchain('cuda')


# --- policies -------------------------------------------------------------------------------


def test_build_if_missing_builds_once_then_loads(tmp_path):
    engines = FakeEngines()
    states = []
    cache = EngineCache(tmp_path, on_state=lambda state, detail: states.append(state))
    first = engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    assert first.built and first.engine == b'v1'
    assert states == ['checking', 'building', 'gating', 'saving', 'ready']
    states.clear()
    second = engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    assert not second.built and second.engine == b'v1'
    assert states == ['checking', 'loading', 'ready']
    assert engines.builds == 1
    sidecar = json.loads(first.paths.sidecar.read_text())
    assert sidecar['key'] == make_key().as_dict()
    assert sidecar['key_digest'] == make_key().digest()
    assert sidecar['gate']['passed'] and sidecar['gate']['accepted']
    assert sidecar['engine']['sha256'] == sha256_file(first.paths.engine)
    assert sidecar['build_info'] == {'builder': 'fake'}
    assert {'torch', 'tensorrt', 'gpu_name'} <= set(sidecar['tool_versions'])
    assert sidecar['build_seconds'] >= 0 and sidecar['built_at']
    assert first.paths.engine.stat().st_mode & 0o777 == 0o644
    assert no_temporaries(tmp_path)


def test_load_only_never_builds(tmp_path):
    engines = FakeEngines()
    states = []
    cache = EngineCache(tmp_path, on_state=lambda state, detail: states.append(state))
    with pytest.raises(EngineMissingError, match='policy load_only never builds'):
        engines.resolve(cache, make_key(), LOAD_ONLY)
    assert engines.builds == 0
    assert states[-1] == 'failed'
    engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    assert not engines.resolve(cache, make_key(), LOAD_ONLY).built


def test_force_rebuild_always_builds(tmp_path):
    engines = FakeEngines()
    cache = EngineCache(tmp_path)
    engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    engines.payload = b'v2'
    rebuilt = engines.resolve(cache, make_key(), FORCE_REBUILD)
    assert rebuilt.built and rebuilt.engine == b'v2' and engines.builds == 2
    assert engines.resolve(cache, make_key(), LOAD_ONLY).engine == b'v2'


def test_unknown_policy_is_rejected(tmp_path):
    with pytest.raises(ValueError, match='unknown cache policy'):
        FakeEngines().resolve(EngineCache(tmp_path), make_key(), 'sometimes')


# --- gate handling --------------------------------------------------------------------------


def test_engine_failing_the_gate_is_refused_and_not_saved(tmp_path):
    engines = FakeEngines(gate_passes=False)
    cache = EngineCache(tmp_path)
    with pytest.raises(GateFailedError, match='refused'):
        engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    assert list(tmp_path.iterdir()) == []


def test_gate_override_is_recorded_and_warned_about(tmp_path, caplog):
    engines = FakeEngines(gate_passes=False)
    cache = EngineCache(tmp_path)
    built = engines.resolve(cache, make_key(), BUILD_IF_MISSING, allow_gate_failure=True)
    gate = json.loads(built.paths.sidecar.read_text())['gate']
    assert gate['passed'] is False and gate['overridden'] is True and gate['accepted'] is True
    with caplog.at_level(logging.WARNING):
        assert not engines.resolve(cache, make_key(), LOAD_ONLY).built
    assert 'explicit override' in caplog.text


def test_engine_without_accepted_gate_is_rejected(tmp_path):
    engines = FakeEngines()
    cache = EngineCache(tmp_path)
    built = engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    sidecar = json.loads(built.paths.sidecar.read_text())
    sidecar['gate'] = gate_result(False).as_dict()
    built.paths.sidecar.write_text(json.dumps(sidecar))
    assert cache.lookup(make_key(), built.paths).status == 'rejected'
    with pytest.raises(EngineRejectedError, match='accuracy gate'):
        engines.resolve(cache, make_key(), LOAD_ONLY)
    assert engines.resolve(cache, make_key(), BUILD_IF_MISSING).built


# --- corrupt engines ------------------------------------------------------------------------


def _corrupt_truncate(paths: EnginePaths) -> None:
    paths.engine.write_bytes(paths.engine.read_bytes()[:5])


def _corrupt_flip_byte(paths: EnginePaths) -> None:
    data = bytearray(paths.engine.read_bytes())
    data[-1] ^= 0xFF
    paths.engine.write_bytes(bytes(data))


def _corrupt_sidecar_json(paths: EnginePaths) -> None:
    paths.sidecar.write_text('{"sidecar_schema": 1, "key": ')


def _remove_sidecar(paths: EnginePaths) -> None:
    paths.sidecar.unlink()


def _sidecar_without_key(paths: EnginePaths) -> None:
    data = json.loads(paths.sidecar.read_text())
    del data['key']
    paths.sidecar.write_text(json.dumps(data))


def _undeserialisable_with_matching_checksum(paths: EnginePaths) -> None:
    # The sidecar checksum matches, but the engine cannot be loaded (e.g. built by another
    # TensorRT): only the loader can tell.
    paths.engine.write_bytes(b'garbage')
    data = json.loads(paths.sidecar.read_text())
    data['engine'].update(sha256=sha256_file(paths.engine), bytes=7)
    paths.sidecar.write_text(json.dumps(data))


CORRUPTIONS = {
    'truncated engine': (_corrupt_truncate, 'does not match the sha256'),
    'flipped byte': (_corrupt_flip_byte, 'does not match the sha256'),
    'broken sidecar json': (_corrupt_sidecar_json, 'sidecar unreadable'),
    'no sidecar': (_remove_sidecar, 'has no sidecar'),
    'sidecar without key': (_sidecar_without_key, 'no valid key'),
    'undeserialisable engine': (_undeserialisable_with_matching_checksum, 'failed to load'),
}


@pytest.mark.parametrize('corruption', sorted(CORRUPTIONS))
def test_corrupt_engine_is_detected_and_handled_by_the_policy(tmp_path, corruption):
    corrupt, message = CORRUPTIONS[corruption]
    engines = FakeEngines()
    cache = EngineCache(tmp_path)
    built = engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    corrupt(built.paths)
    with pytest.raises(EngineCorruptError, match=message):
        engines.resolve(cache, make_key(), LOAD_ONLY)
    rebuilt = engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    assert rebuilt.built and rebuilt.engine == b'v1'
    assert any(message in text for text in rebuilt.messages)
    assert not engines.resolve(cache, make_key(), LOAD_ONLY).built


def test_sidecar_from_another_schema_is_stale(tmp_path):
    engines = FakeEngines()
    cache = EngineCache(tmp_path)
    built = engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    data = json.loads(built.paths.sidecar.read_text())
    data['sidecar_schema'] = 999
    built.paths.sidecar.write_text(json.dumps(data))
    with pytest.raises(EngineStaleError, match='schema'):
        engines.resolve(cache, make_key(), LOAD_ONLY)


# --- atomic writes --------------------------------------------------------------------------


def test_atomic_write_failing_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / 'engine.plan'
    atomic_write_file(target, lambda tmp: tmp.write_bytes(b'old'))

    def half_write(tmp: Path) -> None:
        tmp.write_bytes(b'new, partial')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        atomic_write_file(target, half_write)
    assert target.read_bytes() == b'old'
    assert no_temporaries(tmp_path)


def test_atomic_write_keeps_the_file_name_for_the_writer(tmp_path):
    seen = []
    atomic_write_file(tmp_path / 'model.ep', lambda tmp: (seen.append(tmp.name), tmp.touch()))
    assert seen == ['model.ep']


def test_build_failing_mid_write_keeps_the_cached_engine(tmp_path):
    engines = FakeEngines()
    cache = EngineCache(tmp_path)
    built = engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    before = (built.paths.engine.read_bytes(), built.paths.sidecar.read_text())

    def crashing_build(path: Path) -> None:
        path.write_bytes(MAGIC + b'half')
        raise RuntimeError('builder crashed')

    with pytest.raises(RuntimeError, match='builder crashed'):
        cache.resolve(
            make_key(),
            FORCE_REBUILD,
            suffix='.plan',
            build=crashing_build,
            load=engines.load,
            gate=engines.gate,
        )
    assert (built.paths.engine.read_bytes(), built.paths.sidecar.read_text()) == before
    assert no_temporaries(tmp_path)
    assert engines.resolve(cache, make_key(), LOAD_ONLY).engine == b'v1'


def test_crash_between_engine_and_sidecar_is_detected(tmp_path, monkeypatch):
    engines = FakeEngines()
    cache = EngineCache(tmp_path)
    built = engines.resolve(cache, make_key(), BUILD_IF_MISSING)
    engines.payload = b'v2'

    def crash(path, data):
        raise OSError('power cut')

    monkeypatch.setattr(cache_module, 'write_json_atomic', crash)
    with pytest.raises(OSError, match='power cut'):
        engines.resolve(cache, make_key(), FORCE_REBUILD)
    monkeypatch.undo()
    # New engine, old sidecar: the checksum no longer matches.
    assert cache.lookup(make_key(), built.paths).status == 'corrupt'
    with pytest.raises(EngineCorruptError):
        engines.resolve(cache, make_key(), LOAD_ONLY)
    assert engines.resolve(cache, make_key(), BUILD_IF_MISSING).engine == b'v2'


def test_every_progress_state_maps_onto_a_node_diagnostics_state():
    states = {
        getattr(cache_module, name) for name in dir(cache_module) if name.startswith('STATE_')
    }
    assert set(cache_module.NODE_STATES) == states
    assert set(cache_module.NODE_STATES.values()) == {'loading', 'building', 'ready', 'failed'}
