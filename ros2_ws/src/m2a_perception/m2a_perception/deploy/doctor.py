"""The vehicle self-check behind `m2a-doctor`: versions against the support matrix, engine, gate.

`run_doctor` probes this machine (GPU, driver, CUDA, torch, torch-tensorrt, TensorRT,
onnxruntime), compares the versions with `SUPPORT_MATRIX` (the targets of
docs/vehicle_deployment.md, sources in shared/reference/tensorrt.md and anchors-2026-12.md),
then builds or loads the engine of a `BackendSpec` through the one loader
(`m2a_perception.runtime.loader`), reads its accuracy gate from the sidecar and times the
backend on a blank input of the engine size. Each finding is a `Check`; a failed check's
message is one sentence saying what is missing and what to do.

Which checks count (`require`):
    all    every check must pass: the machine runs the TensorRT route (the vehicle default);
    route  only the checks the requested backend kind needs (e.g. `onnxruntime` on CPU).

Allowed dependencies: standard library, numpy, torch, the core (`runtime.loader`, `deploy.cache`,
`weights`); TensorRT is imported only through `probe_toolchain`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2a_perception.deploy.cache import probe_toolchain, tool_versions
from m2a_perception.runtime.loader import BackendError, BackendSpec, load_backend
from m2a_perception.weights.checkpoint import atomic_write

REQUIRE_MODES = ('all', 'route')
DEPLOYMENT_DOC = 'docs/vehicle_deployment.md'

# The documented targets (docs/vehicle_deployment.md "Versions"): versions as major.minor
# prefixes; None means the target has no documented version of that tool.
SUPPORT_MATRIX: tuple[dict[str, Any], ...] = (
    {
        'target': 'Jetson Orin, JetPack 6.2',
        'cuda': '12.6',
        'tensorrt': '10.3',
        'torch': '2.8',
        'torch_tensorrt': '2.8',
        'routes': ('tensorrt', 'tensorrt-onnx'),
    },
    {
        'target': 'Jetson Orin, JetPack 7.2',
        'cuda': '13',
        'tensorrt': '10.16',
        'torch': None,  # third-party wheels only (torch 2.12); the .plan route needs no torch
        'torch_tensorrt': None,
        'routes': ('tensorrt-onnx',),
    },
    {
        'target': 'desktop / RTX, torch-tensorrt 2.13',
        'cuda': '13',
        'tensorrt': '11.0',
        'torch': '2.13',
        'torch_tensorrt': '2.13',
        'routes': ('tensorrt', 'tensorrt-onnx'),
    },
)

# What each backend kind needs besides the engine check itself.
ROUTE_NEEDS: dict[str, tuple[str, ...]] = {
    'torch': ('torch',),
    'torch-compile': ('torch',),
    'onnxruntime': ('torch', 'onnxruntime'),
    'tensorrt': ('gpu', 'cuda', 'torch', 'tensorrt', 'torch_tensorrt', 'support_matrix'),
    'tensorrt-onnx': ('gpu', 'cuda', 'torch', 'tensorrt', 'support_matrix'),
}
CHECK_ORDER = (
    'gpu',
    'driver',
    'cuda',
    'torch',
    'torch_tensorrt',
    'tensorrt',
    'onnxruntime',
    'support_matrix',
    'engine',
)
# Informational: Jetsons have no nvidia-smi, so the driver is reported but never required.
OPTIONAL = ('driver',)


@dataclass(frozen=True)
class Check:
    """One finding: `value` is what was found, `message` one sentence (what to fix on failure)."""

    name: str
    passed: bool
    required: bool
    value: str
    message: str = ''

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _minor(version: str) -> str:
    """'2.8.0+cu126' -> '2.8'; 'none' stays 'none'."""
    parts = version.split('+')[0].split('.')
    return '.'.join(parts[:2])


def _installed(version: str) -> bool:
    return version != 'none' and 'not importable' not in version


def driver_version(run: Callable[..., Any] = subprocess.run) -> str:
    """The NVIDIA driver from `nvidia-smi`, or 'none' (no nvidia-smi, e.g. on a Jetson)."""
    if shutil.which('nvidia-smi') is None:
        return 'none'
    try:
        result = run(
            ['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return 'none'
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else 'none'


def probe_versions(device: str) -> dict[str, str]:
    """GPU, driver, CUDA and tool versions of this machine ('none' where absent)."""
    cuda_device = device if device.startswith('cuda') else 'cuda'
    if torch.cuda.is_available():
        toolchain = probe_toolchain(cuda_device)
    else:
        toolchain = probe_toolchain('cpu')
    versions = toolchain.as_dict()
    versions['driver'] = driver_version() if torch.cuda.is_available() else 'none'
    versions['onnxruntime'] = tool_versions()['onnxruntime']
    return versions


def matching_target(versions: dict[str, str]) -> dict[str, Any] | None:
    """The `SUPPORT_MATRIX` row whose TensorRT version is installed, else None."""
    if not _installed(versions['tensorrt']):
        return None
    installed = _minor(versions['tensorrt'])
    return next((row for row in SUPPORT_MATRIX if row['tensorrt'] == installed), None)


def version_checks(versions: dict[str, str], kind: str, require: str) -> list[Check]:
    """The checks of the probed `versions` (see `probe_versions`) for backend `kind`."""
    needs = ROUTE_NEEDS[kind]

    def required(name: str) -> bool:
        if name in OPTIONAL:
            return False
        return require == 'all' or name in needs

    gpu = versions['gpu_name'] != 'cpu'
    checks = [
        Check(
            'gpu',
            gpu,
            required('gpu'),
            f'{versions["gpu_name"]} ({versions["compute_capability"]})' if gpu else 'none',
            ''
            if gpu
            else 'no CUDA GPU is visible to torch (torch.cuda.is_available() is '
            'False): the TensorRT routes need the vehicle GPU and a CUDA build of torch',
        ),
        Check(
            'driver',
            versions['driver'] != 'none',
            required('driver'),
            versions['driver'],
            ''
            if versions['driver'] != 'none'
            else 'nvidia-smi is not available, so the '
            'driver version is unknown (normal on a Jetson, where JetPack sets the driver)',
        ),
        Check(
            'cuda',
            versions['cuda'] != 'none',
            required('cuda'),
            versions['cuda'],
            ''
            if versions['cuda'] != 'none'
            else 'torch is a CPU-only build (torch.version.cuda '
            f'is None): install the CUDA build of torch for this target, see {DEPLOYMENT_DOC}',
        ),
        Check('torch', True, required('torch'), versions['torch']),
    ]
    for name, label, hint in (
        ('torch_tensorrt', 'torch-tensorrt', 'import torch_tensorrt failed'),
        ('tensorrt', 'TensorRT', 'import tensorrt failed'),
        ('onnxruntime', 'onnxruntime', 'the onnxruntime package is missing'),
    ):
        found = _installed(versions[name])
        what = {
            'torch_tensorrt': 'install the torch-tensorrt built for this torch and TensorRT',
            'tensorrt': 'install the TensorRT that matches JetPack/CUDA',
            'onnxruntime': 'install onnxruntime (pip install onnxruntime)',
        }[name]
        checks.append(
            Check(
                name,
                found,
                required(name),
                versions[name],
                ''
                if found
                else f'{label} is not installed ({hint}): {what}, see {DEPLOYMENT_DOC}',
            )
        )
    checks.append(_matrix_check(versions, kind, required('support_matrix')))
    return checks


def _matrix_check(versions: dict[str, str], kind: str, required: bool) -> Check:
    row = matching_target(versions)
    if row is None:
        documented = ', '.join(f'{r["tensorrt"]} ({r["target"]})' for r in SUPPORT_MATRIX)
        return Check(
            'support_matrix',
            False,
            required,
            'no target',
            f'the installed TensorRT ({versions["tensorrt"]}) is none of the supported '
            f'versions {documented}, see {DEPLOYMENT_DOC}',
        )
    problems = []
    if not versions['cuda'].startswith(row['cuda']):
        problems.append(f'CUDA {versions["cuda"]} (expected {row["cuda"]})')
    for name in ('torch', 'torch_tensorrt'):
        expected = row[name]
        if expected is None or (name == 'torch_tensorrt' and kind != 'tensorrt'):
            continue
        if _minor(versions[name]) != expected:
            problems.append(f'{name} {versions[name]} (expected {expected})')
    if kind in ('tensorrt', 'tensorrt-onnx') and kind not in row['routes']:
        problems.append(f'route {kind} (documented: {", ".join(row["routes"])})')
    message = ''
    if problems:
        message = (
            f'TensorRT {versions["tensorrt"]} is the {row["target"]} stack but '
            f'{"; ".join(problems)} do not match it, see {DEPLOYMENT_DOC}'
        )
    return Check('support_matrix', not problems, required, row['target'], message)


def time_backend(loaded: Any, iterations: int, warmup: int) -> dict[str, Any]:
    """Milliseconds per backend call on a (1, 3, H, W) blank input of the engine size.

    The input has the backend's `input_dtype` on its device, as the node's pre-processing
    hands it over (uint8 graphs get uint8, no float round trip).
    """
    backend = loaded.backend
    shape = getattr(backend, 'input_shape', None)
    if shape is not None and len(shape) == 4:
        height, width = int(shape[2]), int(shape[3])
    else:
        height, width = loaded.spec.engine_size or (512, 1024)
    device = torch.device(getattr(backend, 'device', None) or loaded.spec.device)
    dtype = getattr(backend, 'input_dtype', torch.float32)
    images = torch.zeros((1, 3, height, width), dtype=dtype, device=device)
    samples = []
    with torch.inference_mode():
        for index in range(warmup + iterations):
            start = time.perf_counter()
            backend(images)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            if index >= warmup:
                samples.append((time.perf_counter() - start) * 1000.0)
    return {
        'input': [1, 3, height, width],
        'input_dtype': str(dtype).removeprefix('torch.'),
        'iterations': iterations,
        'p50_ms': float(np.percentile(samples, 50)),
        'max_ms': float(max(samples)),
    }


def engine_check(
    spec: BackendSpec,
    iterations: int = 5,
    warmup: int = 1,
    on_state: Callable[[str, str], None] | None = None,
) -> tuple[Check, dict[str, Any]]:
    """Build or load `spec` through the loader, read its gate and time it."""
    details: dict[str, Any] = {'spec': dataclasses.asdict(spec)}
    start = time.perf_counter()
    try:
        loaded = load_backend(spec, on_state)
    except BackendError as error:
        details['error'] = str(error)
        return Check('engine', False, True, 'not loaded', f'{spec.kind}: {error}'), details
    details['load_seconds'] = time.perf_counter() - start
    details['backend'] = loaded.describe()
    gate = (loaded.sidecar or {}).get('gate')
    details['gate'] = gate
    details['timing'] = time_backend(loaded, iterations, warmup)
    passed = gate is None or bool(gate.get('passed'))  # torch kinds have no gate
    verb = 'built' if loaded.built else 'loaded'
    gate_text = 'no gate (eager)' if gate is None else f'gate {"passed" if passed else "FAILED"}'
    value = f'{verb}, {gate_text}, p50 {details["timing"]["p50_ms"]:.1f} ms'
    message = '' if passed else f'{spec.engine_path} did not pass its accuracy gate'
    return Check('engine', passed, True, value, message), details


def run_doctor(
    spec: BackendSpec,
    require: str = 'all',
    iterations: int = 5,
    on_state: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """The full report: `checks` (in `CHECK_ORDER`), `versions`, `engine` details, `ok`."""
    if require not in REQUIRE_MODES:
        raise ValueError(f'require must be one of {REQUIRE_MODES}, got {require!r}')
    versions = probe_versions(spec.device)
    checks = version_checks(versions, spec.kind, require)
    engine, details = engine_check(spec, iterations, on_state=on_state)
    checks.append(engine)
    return {
        'ok': all(check.passed for check in checks if check.required),
        'kind': spec.kind,
        'require': require,
        'versions': versions,
        'tool_versions': tool_versions(),
        'support_matrix': [dict(row, routes=list(row['routes'])) for row in SUPPORT_MATRIX],
        'checks': [check.as_dict() for check in checks],
        'engine': details,
    }


def format_report(report: dict[str, Any]) -> str:
    """The pass/fail table, then one sentence per failed check."""
    lines = [f'{"check":<16} {"result":<6} {"found"}']
    for check in report['checks']:
        result = 'ok' if check['passed'] else ('FAIL' if check['required'] else 'warn')
        lines.append(f'{check["name"]:<16} {result:<6} {check["value"]}')
    problems = [c for c in report['checks'] if not c['passed'] and c['message']]
    if problems:
        lines.append('')
        lines.extend(f'{"missing" if c["required"] else "note"}: {c["message"]}' for c in problems)
    lines.append('')
    verdict = 'PASS' if report['ok'] else 'FAIL'
    lines.append(f'm2a-doctor {verdict} (kind {report["kind"]}, require {report["require"]})')
    return '\n'.join(lines)


def write_report(path: Path, report: dict[str, Any]) -> Path:
    """Write `report` as JSON atomically (never a half-written file to attach to a bug)."""
    text = json.dumps(report, indent=2, default=str) + '\n'
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
    return Path(path)
