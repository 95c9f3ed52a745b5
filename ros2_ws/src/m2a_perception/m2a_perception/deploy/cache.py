"""Engine cache: a key that cannot go stale, a JSON sidecar per engine, load/build policies.

TensorRT engines are tied to the exact weights, graph code, input shape, precision recipe, tool
versions and GPU (shared/reference/tensorrt.md §1.6 and §6). torch-tensorrt's built-in cache keys
on none of the versions and not on the GPU, and onnxruntime's not on the weights; this cache keys
on all of them (`EngineKey`), names the engine file after the key's digest, and writes a JSON
sidecar next to the untouched engine file recording the key fields, build time, tool versions,
the engine's sha256 and the accuracy-gate result.

Policies (`EngineCache.resolve`):

- `load_only`: use a valid cached engine, otherwise fail with a message that says what differs
  and how to build one; never builds (the vehicle was provisioned offline);
- `build_if_missing`: use a valid cached engine, otherwise build, gate and save one;
- `force_rebuild`: always build, gate and save.

An engine is valid only if its sidecar parses, has the current schema, records exactly the
requested key, records an accepted gate result, and the engine file's sha256 matches; a file
that then fails to deserialise is treated as corrupt. Writes are atomic (temporary file in the
same folder, fsync, rename): the engine first, then the sidecar, which seals it; a crash in
between leaves an engine whose sha256 the old sidecar does not match, which is detected.

Allowed dependencies: standard library, torch (versions, device queries).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from m2a_perception.weights.checkpoint import fsync_directory

LOGGER = logging.getLogger(__name__)

# Bump when the model, export or precision code changes the compiled graph in a way the source
# hash below would not show (e.g. a changed dependency). The source hash catches local edits.
MODEL_CODE_VERSION = '1'
KEY_SCHEMA = 1
SIDECAR_SCHEMA = 1
SIDECAR_SUFFIX = '.json'

LOAD_ONLY = 'load_only'
BUILD_IF_MISSING = 'build_if_missing'
FORCE_REBUILD = 'force_rebuild'
POLICIES = (LOAD_ONLY, BUILD_IF_MISSING, FORCE_REBUILD)

# Progress states reported through `on_state` (the node maps them onto its diagnostics).
STATE_CHECKING = 'checking'
STATE_LOADING = 'loading'
STATE_BUILDING = 'building'
STATE_GATING = 'gating'
STATE_SAVING = 'saving'
STATE_READY = 'ready'
STATE_FAILED = 'failed'

StateCallback = Callable[[str, str], None]
# How the node's diagnostics (BackendState: loading, building, ready, failed) read each state.
NODE_STATES = {
    STATE_CHECKING: 'loading',
    STATE_LOADING: 'loading',
    STATE_BUILDING: 'building',
    STATE_GATING: 'building',
    STATE_SAVING: 'building',
    STATE_READY: 'ready',
    STATE_FAILED: 'failed',
}

# Source files whose content defines the compiled graph, relative to the package root.
_GRAPH_SOURCES = ('model', 'export.py', 'deploy/precision.py', 'config.py')
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class EngineCacheError(RuntimeError):
    """The cache cannot provide an engine under the requested policy; the message says why."""


class EngineMissingError(EngineCacheError):
    """No engine exists for the key."""


class EngineStaleError(EngineCacheError):
    """An engine exists but was built for something else (weights, versions, GPU, ...)."""


class EngineCorruptError(EngineCacheError):
    """The engine or its sidecar is unreadable, truncated or does not match its checksum."""


class EngineRejectedError(EngineCacheError):
    """The engine never passed the accuracy gate and was not explicitly overridden."""


# --- hashing --------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open('rb') as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 of tensors (names, dtypes, shapes and bytes) for models without a file."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to('cpu').contiguous()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b'')
    return digest.hexdigest()


def graph_source_sha256(root: Path = _PACKAGE_ROOT) -> str:
    """Hex sha256 over the source files that define the compiled graph (paths and contents)."""
    digest = hashlib.sha256()
    files: list[Path] = []
    for entry in _GRAPH_SOURCES:
        path = root / entry
        files.extend(sorted(path.rglob('*.py')) if path.is_dir() else [path])
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b'\0')
        digest.update(path.read_bytes() + b'\0')
    return digest.hexdigest()


def _canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(',', ':'))


# --- toolchain ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Toolchain:
    """Versions and device that an engine is bound to.

    Attributes:
        torch, torch_tensorrt, tensorrt: versions ('none' if not installed; a TensorRT package
            that is installed but cannot be imported is marked so).
        cuda: CUDA version torch was built with ('none' for CPU builds).
        gpu_name: `torch.cuda.get_device_name`, or 'cpu'.
        compute_capability: e.g. 'sm_87' (Orin), 'sm_90' (H100), or 'none'.
        platform: machine architecture plus the Jetson L4T release when present.
    """

    torch: str
    torch_tensorrt: str
    tensorrt: str
    cuda: str
    gpu_name: str
    compute_capability: str
    platform: str

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def _distribution_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _tensorrt_version() -> str:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # a broken TensorRT install raises more than ImportError
        installed = _distribution_version('tensorrt', 'tensorrt-cu12', 'tensorrt-cu13')
        return 'none' if installed is None else f'{installed} (not importable)'


def _platform_name() -> str:
    name = platform.machine() or 'unknown'
    release = Path('/etc/nv_tegra_release')
    if release.is_file():
        try:
            first = release.read_text(errors='replace').splitlines()[0]
        except (OSError, IndexError):
            first = 'unreadable'
        name += ' L4T ' + ' '.join(first.lstrip('# ').split()[:4]).rstrip(',')
    return name


def probe_toolchain(device: torch.device | str = 'cuda') -> Toolchain:
    """The toolchain of this machine for engines on `device` (no TensorRT import is required)."""
    device = torch.device(device)
    gpu_name, capability = 'cpu', 'none'
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise EngineCacheError(f'device {device} requested but CUDA is not available')
        gpu_name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        capability = f'sm_{major}{minor}'
    return Toolchain(
        torch=torch.__version__,
        torch_tensorrt=_distribution_version('torch_tensorrt', 'torch-tensorrt') or 'none',
        tensorrt=_tensorrt_version(),
        cuda=torch.version.cuda or 'none',
        gpu_name=gpu_name,
        compute_capability=capability,
        platform=_platform_name(),
    )


def tool_versions() -> dict[str, str]:
    """Versions recorded in sidecars for the record (not part of the key beyond `Toolchain`)."""
    versions = {'python': sys.version.split()[0]}
    for name in ('torch', 'onnx', 'onnxruntime', 'onnxscript', 'numpy', 'm2a_perception'):
        versions[name] = _distribution_version(name) or 'none'
    versions['cudnn'] = (
        str(torch.backends.cudnn.version()) if torch.cuda.is_available() else 'none'
    )
    return versions


# --- key ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two engines are interchangeable iff their keys are equal.

    Attributes:
        backend: engine kind ('tensorrt', 'tensorrt-onnx', ...).
        model_name: model config name (readability; the weights hash covers the config too).
        weights_sha256: sha256 of the checkpoint file (or of the state dict without a file).
        model_code_version: `MODEL_CODE_VERSION`.
        graph_source_sha256: hash of the model, export and precision sources.
        input_shape: static (B, 3, H, W) of the engine input.
        input_dtype: 'uint8' for inference graphs, 'float32' for normalised input.
        valid_size: (h, w) of the image inside the padded input.
        normalization: pixel mean then std (RGB), baked into the graph.
        precision: precision recipe id (e.g. 'fp16-islands-v1').
        builder: builder settings that change the engine (typing, TF32, optimisation level,
            ONNX file hash, ...), as a JSON-compatible mapping.
        toolchain: versions, GPU name and compute capability.
        schema: `KEY_SCHEMA`.
    """

    backend: str
    model_name: str
    weights_sha256: str
    model_code_version: str
    graph_source_sha256: str
    input_shape: tuple[int, int, int, int]
    input_dtype: str
    valid_size: tuple[int, int]
    normalization: tuple[float, ...]
    precision: str
    builder: Mapping[str, Any]
    toolchain: Toolchain
    schema: int = KEY_SCHEMA

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data['input_shape'] = list(self.input_shape)
        data['valid_size'] = list(self.valid_size)
        data['normalization'] = list(self.normalization)
        data['builder'] = json.loads(_canonical_json(dict(self.builder)))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineKey:
        """Inverse of `as_dict`; raises KeyError/TypeError/ValueError on malformed data."""
        values = dict(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f'unknown key fields {unknown}')
        values['input_shape'] = tuple(int(v) for v in values['input_shape'])
        values['valid_size'] = tuple(int(v) for v in values['valid_size'])
        values['normalization'] = tuple(float(v) for v in values['normalization'])
        values['toolchain'] = Toolchain(**values['toolchain'])
        values['builder'] = dict(values['builder'])
        return cls(**values)

    def digest(self) -> str:
        """Hex sha256 of the canonical JSON of every field."""
        return hashlib.sha256(_canonical_json(self.as_dict()).encode()).hexdigest()

    def flat(self) -> dict[str, Any]:
        """Fields flattened to 'toolchain.gpu_name', 'builder.optimization_level', ..."""
        flat: dict[str, Any] = {}
        for name, value in self.as_dict().items():
            if isinstance(value, dict):
                for sub, sub_value in value.items():
                    flat[f'{name}.{sub}'] = sub_value
            else:
                flat[name] = value
        return flat

    def differences(self, other: EngineKey) -> list[str]:
        """Human-readable 'field: theirs -> ours' lines where `other` differs from self."""
        mine, theirs = self.flat(), other.flat()
        lines = []
        for name in sorted(set(mine) | set(theirs)):
            if mine.get(name) != theirs.get(name):
                lines.append(f'{name}: {_short(theirs.get(name))} -> {_short(mine.get(name))}')
        return lines

    def file_stem(self) -> str:
        """e.g. 'cityscapes_r50_gma-512x1024-fp16-islands-v1-tensorrt-1f2e3d4c5b6a7980'."""
        _, _, height, width = self.input_shape
        return (
            f'{self.model_name}-{height}x{width}-{self.precision}-{self.backend}-'
            f'{self.digest()[:16]}'
        )


def _short(value: Any) -> str:
    text = str(value)
    return (
        text[:16] + '…' if len(text) > 40 and all(c in '0123456789abcdef' for c in text) else text
    )


def make_engine_key(
    *,
    backend: str,
    model_name: str,
    weights_sha256: str,
    input_shape: tuple[int, int, int, int],
    input_dtype: str,
    valid_size: tuple[int, int] | None,
    pixel_mean: tuple[float, float, float],
    pixel_std: tuple[float, float, float],
    precision: str,
    builder: Mapping[str, Any],
    toolchain: Toolchain,
) -> EngineKey:
    """Assemble a key with the current model-code version and graph-source hash."""
    input_shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
    if len(input_shape) != 4 or input_shape[1] != 3:
        raise ValueError(f'input_shape must be (B, 3, H, W), got {input_shape}')
    return EngineKey(
        backend=backend,
        model_name=model_name,
        weights_sha256=weights_sha256,
        model_code_version=MODEL_CODE_VERSION,
        graph_source_sha256=graph_source_sha256(),
        input_shape=input_shape,
        input_dtype=input_dtype,
        valid_size=tuple(valid_size or input_shape[2:]),  # type: ignore[arg-type]
        normalization=tuple(float(v) for v in (*pixel_mean, *pixel_std)),
        precision=precision,
        builder=dict(builder),
        toolchain=toolchain,
    )


# --- files ----------------------------------------------------------------------------------


def atomic_write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` with a temporary path that keeps `path`'s name, fsync, rename over `path`.

    The temporary file lives in a private folder next to `path` (same file system, so the rename
    is atomic) and carries the final name, for writers that look at the suffix. `path` is either
    the old file or the complete new one, never a partial write; the folder is removed on error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent))
    try:
        tmp = folder / path.name
        write(tmp)
        if not tmp.is_file():
            raise EngineCacheError(f'writer produced no file for {path}')
        with tmp.open('rb') as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + '\n'
    atomic_write_file(path, lambda tmp: tmp.write_text(text))


@dataclass(frozen=True)
class EnginePaths:
    """An engine file and its sidecar (`<engine>.json`)."""

    engine: Path
    sidecar: Path

    @classmethod
    def for_engine(cls, engine: str | os.PathLike[str]) -> EnginePaths:
        engine = Path(engine)
        return cls(engine, engine.with_name(engine.name + SIDECAR_SUFFIX))


@dataclass(frozen=True)
class CacheEntry:
    """Result of looking a key up.

    Attributes:
        status: 'hit', 'missing', 'stale', 'corrupt' or 'rejected'.
        paths: where the engine and sidecar are (or would be).
        reason: why it is not a hit ('' for hits).
        sidecar: the parsed sidecar, when it could be read.
    """

    status: str
    paths: EnginePaths
    reason: str = ''
    sidecar: dict[str, Any] | None = None

    @property
    def hit(self) -> bool:
        return self.status == 'hit'

    def error(self, hint: str = '') -> EngineCacheError:
        """The exception matching this entry's status, with an actionable message."""
        classes = {
            'missing': EngineMissingError,
            'stale': EngineStaleError,
            'corrupt': EngineCorruptError,
            'rejected': EngineRejectedError,
        }
        message = self.reason + (f'. {hint}' if hint else '')
        return classes.get(self.status, EngineCacheError)(message)


def read_sidecar(path: Path) -> dict[str, Any]:
    """Parse a sidecar; raises EngineCorruptError if unreadable, EngineStaleError on schema."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EngineCorruptError(f'{path}: sidecar missing') from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EngineCorruptError(f'{path}: sidecar unreadable ({error})') from error
    if not isinstance(data, dict):
        raise EngineCorruptError(f'{path}: sidecar is not a JSON object')
    if data.get('sidecar_schema') != SIDECAR_SCHEMA:
        raise EngineStaleError(
            f'{path}: sidecar schema {data.get("sidecar_schema")!r}, this code writes '
            f'{SIDECAR_SCHEMA}'
        )
    return data


def sidecar_key(sidecar: Mapping[str, Any], path: Path) -> EngineKey:
    try:
        return EngineKey.from_dict(sidecar['key'])
    except (KeyError, TypeError, ValueError) as error:
        raise EngineCorruptError(f'{path}: sidecar has no valid key ({error!r})') from error


# --- cache ----------------------------------------------------------------------------------

T = TypeVar('T')


@dataclass
class Resolved(Generic[T]):
    """What `EngineCache.resolve` returns.

    Attributes:
        engine: the loaded engine (whatever `load` returned).
        paths: engine and sidecar files.
        sidecar: the sidecar contents.
        built: True if this call built the engine.
        seconds: wall time of the call (load, or build + gate + save).
    """

    engine: T
    paths: EnginePaths
    sidecar: dict[str, Any]
    built: bool
    seconds: float
    messages: list[str] = field(default_factory=list)


class EngineCache:
    """A folder of engines named by key digest, each sealed by a JSON sidecar.

    Args:
        directory: the cache folder (created on first write).
        on_state: optional callback `(state, detail)` for progress ('building', 'gating', ...).
    """

    def __init__(self, directory: str | os.PathLike[str], on_state: StateCallback | None = None):
        self.directory = Path(directory)
        self.on_state = on_state

    def _notify(self, state: str, detail: str) -> None:
        LOGGER.debug('%s: %s', state, detail)
        if self.on_state is not None:
            self.on_state(state, detail)

    def paths(self, key: EngineKey, suffix: str) -> EnginePaths:
        """Where the engine for `key` lives (suffix e.g. '.ep', '.plan')."""
        return EnginePaths.for_engine(self.directory / f'{key.file_stem()}{suffix}')

    def lookup(self, key: EngineKey, paths: EnginePaths) -> CacheEntry:
        """Check the engine at `paths` against `key` without loading it."""
        if not paths.sidecar.exists():
            if paths.engine.exists():
                return CacheEntry(
                    'corrupt',
                    paths,
                    f'{paths.engine} has no sidecar {paths.sidecar.name} (interrupted build or '
                    'copied without it); its provenance is unknown',
                )
            return CacheEntry('missing', paths, self._missing_reason(key, paths))
        try:
            sidecar = read_sidecar(paths.sidecar)
            recorded = sidecar_key(sidecar, paths.sidecar)
        except EngineStaleError as error:
            return CacheEntry('stale', paths, str(error))
        except EngineCorruptError as error:
            return CacheEntry('corrupt', paths, str(error))
        if recorded != key:
            differences = key.differences(recorded)
            return CacheEntry(
                'stale',
                paths,
                f'{paths.engine.name} was built for a different setup: ' + '; '.join(differences),
                sidecar,
            )
        engine_info = sidecar.get('engine') or {}
        if not paths.engine.is_file():
            return CacheEntry(
                'missing', paths, f'{paths.engine} is missing (sidecar only)', sidecar
            )
        size = paths.engine.stat().st_size
        if engine_info.get('bytes') != size or engine_info.get('sha256') != sha256_file(
            paths.engine
        ):
            return CacheEntry(
                'corrupt',
                paths,
                f'{paths.engine} does not match the sha256/size recorded in its sidecar '
                f'({size} bytes on disk, {engine_info.get("bytes")} recorded): truncated, '
                'overwritten or tampered with',
                sidecar,
            )
        gate = sidecar.get('gate')
        if not isinstance(gate, dict) or not gate.get('accepted'):
            summary = (gate or {}).get('failures') or ['no gate result recorded']
            return CacheEntry(
                'rejected',
                paths,
                f'{paths.engine.name} did not pass the accuracy gate ({"; ".join(summary)})',
                sidecar,
            )
        return CacheEntry('hit', paths, '', sidecar)

    def _missing_reason(self, key: EngineKey, paths: EnginePaths) -> str:
        reason = f'no engine for this setup at {paths.engine}'
        others = self.stale_candidates(key)
        if others:
            path, differences = others[0]
            reason += (
                f'; {len(others)} engine(s) for the same model and size exist but were built for '
                f'a different setup, e.g. {path.name}: ' + '; '.join(differences[:6])
            )
        return reason

    def stale_candidates(self, key: EngineKey) -> list[tuple[Path, list[str]]]:
        """Engines in the folder for the same model, backend and input shape but another key."""
        found = []
        if not self.directory.is_dir():
            return found
        for sidecar_path in sorted(self.directory.glob('*' + SIDECAR_SUFFIX)):
            try:
                recorded = sidecar_key(read_sidecar(sidecar_path), sidecar_path)
            except EngineCacheError:
                continue
            same_target = (recorded.backend, recorded.model_name, recorded.input_shape) == (
                key.backend,
                key.model_name,
                key.input_shape,
            )
            if same_target and recorded != key:
                engine = sidecar_path.with_name(sidecar_path.name[: -len(SIDECAR_SUFFIX)])
                found.append((engine, key.differences(recorded)))
        return found

    def resolve(
        self,
        key: EngineKey,
        policy: str,
        *,
        suffix: str,
        build: Callable[[Path], Mapping[str, Any] | None],
        load: Callable[[Path], T],
        gate: Callable[[T], Any],
        allow_gate_failure: bool = False,
        paths: EnginePaths | None = None,
        build_hint: str = '',
    ) -> Resolved[T]:
        """Return a loaded engine for `key` under `policy`.

        Args:
            key: the engine key for this machine and model.
            policy: one of `POLICIES`.
            suffix: engine file suffix ('.ep', '.plan', '.onnx').
            build: writes an engine to the given path; returns build information (JSON-able).
            load: loads an engine file (raise on failure; any exception counts as corrupt).
            gate: runs the accuracy gate on a loaded engine and returns a `GateResult`.
            allow_gate_failure: keep an engine that fails the gate (recorded as overridden).
            paths: explicit engine/sidecar paths (a prebuilt engine); default: keyed by digest.
            build_hint: appended to `load_only` errors (e.g. the m2a-build-engine command).

        Raises:
            EngineCacheError: (a subclass) with `load_only` when there is no valid engine.
            GateFailedError: when a freshly built engine fails the gate without override.
            ValueError: for an unknown policy.
        """
        if policy not in POLICIES:
            raise ValueError(f'unknown cache policy {policy!r}; choose from {POLICIES}')
        start = time.perf_counter()
        paths = paths or self.paths(key, suffix)
        messages: list[str] = []
        if policy != FORCE_REBUILD:
            self._notify(STATE_CHECKING, str(paths.engine))
            entry = self.lookup(key, paths)
            if entry.hit:
                self._notify(STATE_LOADING, str(paths.engine))
                try:
                    engine = load(paths.engine)
                except Exception as error:  # deserialisation failures come in many types
                    entry = CacheEntry(
                        'corrupt',
                        paths,
                        f'{paths.engine} failed to load ({type(error).__name__}: {error})',
                        entry.sidecar,
                    )
                else:
                    assert entry.sidecar is not None
                    if entry.sidecar['gate'].get('overridden'):
                        LOGGER.warning(
                            '%s failed its accuracy gate and was accepted by explicit override',
                            paths.engine,
                        )
                    self._notify(STATE_READY, str(paths.engine))
                    return Resolved(
                        engine, paths, entry.sidecar, False, time.perf_counter() - start, messages
                    )
            if policy == LOAD_ONLY:
                self._notify(STATE_FAILED, entry.reason)
                raise entry.error(build_hint or 'policy load_only never builds engines')
            messages.append(entry.reason)
            LOGGER.warning('%s; building a new engine (policy %s)', entry.reason, policy)
        engine, sidecar = self._build(key, paths, build, load, gate, allow_gate_failure)
        return Resolved(engine, paths, sidecar, True, time.perf_counter() - start, messages)

    def _build(
        self,
        key: EngineKey,
        paths: EnginePaths,
        build: Callable[[Path], Mapping[str, Any] | None],
        load: Callable[[Path], T],
        gate: Callable[[T], Any],
        allow_gate_failure: bool,
    ) -> tuple[T, dict[str, Any]]:
        from m2a_perception.deploy.gate import enforce_gate  # gate imports metrics; keep lazy

        paths.engine.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(
            tempfile.mkdtemp(
                prefix=f'.{paths.engine.name}.', suffix='.build', dir=paths.engine.parent
            )
        )
        try:
            tmp_engine = folder / paths.engine.name
            self._notify(STATE_BUILDING, f'{key.backend} {key.precision} {key.input_shape}')
            build_start = time.perf_counter()
            try:
                info = dict(build(tmp_engine) or {})
                if not tmp_engine.is_file():
                    raise EngineCacheError(f'the {key.backend} builder wrote no engine file')
                build_seconds = time.perf_counter() - build_start
                self._notify(STATE_GATING, f'comparing {tmp_engine.name} with eager FP32')
                engine = load(tmp_engine)
                result = enforce_gate(gate(engine), allow_gate_failure)
            except BaseException as error:
                self._notify(STATE_FAILED, f'{type(error).__name__}: {error}')
                raise
            self._notify(STATE_SAVING, str(paths.engine))
            sidecar = {
                'sidecar_schema': SIDECAR_SCHEMA,
                'key': key.as_dict(),
                'key_digest': key.digest(),
                'engine': {
                    'file': paths.engine.name,
                    'sha256': sha256_file(tmp_engine),
                    'bytes': tmp_engine.stat().st_size,
                },
                'built_at': datetime.datetime.now(datetime.timezone.utc).isoformat(),
                'build_seconds': build_seconds,
                'host': socket.gethostname(),
                'tool_versions': {**tool_versions(), **key.toolchain.as_dict()},
                'build_info': json.loads(json.dumps(info, default=str)),
                'gate': result.as_dict(),
            }
            # Engine first, then the sidecar that seals it (see the module docstring). Engines
            # are read by the node, which may run as another user.
            tmp_engine.chmod(0o644)
            os.replace(tmp_engine, paths.engine)
            fsync_directory(paths.engine.parent)
            write_json_atomic(paths.sidecar, sidecar)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self._notify(STATE_READY, str(paths.engine))
        return engine, sidecar
