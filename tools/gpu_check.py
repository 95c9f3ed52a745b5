#!/usr/bin/env python3
"""GPU validation of m2a in one prepared run: parity, precision gates, latency, memory, training.

Written for a GPU machine that is lent for a few minutes at a time and starts bare (no ROS, no
TensorRT, its own Python and torch): everything runs in this one process, under one time budget,
and each section records its figures or its error without stopping the others. The last thing
printed is a short table; the whole result goes to a JSON file (device, versions, command,
figures), written atomically.

Sections (in this order; `--sections` picks a subset):
    parity    full model (random weights, fixed seed) on CUDA FP32 vs CPU FP32: max-abs of both
              logits and semantic argmax agreement (TF32 off on both sides);
    gates     the accuracy gate (`deploy.gate.run_gate`) of CUDA FP16 and BF16 autocast and of
              `torch-compile` against CUDA FP32, on the gate's synthetic images;
    gpu_tests the `gpu`-marked pytest tests (post-processing CPU vs CUDA and the deploy ones),
              in a subprocess;
    latency   `m2a-bench` (the function the node calls per frame, per stage p50/p99, peak memory)
              at 512x1024 and 1024x2048 for every torch precision and `torch-compile`, then 4
              cameras sharing one model at 512x1024 (aggregate frames/s);
    training  stage-1 and stage-2 training steps at the paper's 380x760 crop, batch 2, AMP:
              iterations/s and peak memory;
    profile   a torch.profiler table of the top CUDA kernels of the FP16 model, each classed as
              compute-bound (matrix/conv kernels) or memory-bound (the rest).

`--cpu-dry-run` runs every section on the CPU with the tiny config and a few iterations, so the
one GPU call cannot fail on a typo; CI runs it (tests/tools/test_gpu_check.py).

Run on the GPU machine from the repository root (no install needed; see docs/benchmarks/README.md):
    PYTHONPATH=ros2_ws/src/m2a_perception:training:. python3 tools/gpu_check.py \\
        --budget-s 540 --json docs/benchmarks/h200_gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from m2a_perception.config import ModelConfig, load_model_config
from m2a_perception.deploy.gate import run_gate, strict_fp32, synthetic_gate_images
from m2a_perception.model import build_model
from m2a_perception.runtime.loader import BackendSpec, load_backend
from m2a_perception.weights.checkpoint import atomic_write, save_checkpoint

SECTIONS = ('parity', 'gates', 'gpu_tests', 'latency', 'training', 'profile')
REPO = Path(__file__).resolve().parent.parent
# Kernel-name fragments of matrix-multiply and convolution kernels (tensor-core work).
COMPUTE_KERNEL_HINTS = ('gemm', 'conv', 'cutlass', 'sm90', 'xmma', 'wgmma', 'mma', 'matmul')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='gpu_check', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        '--cpu-dry-run',
        action='store_true',
        help='every section on the CPU with the tiny config and few iterations (CI)',
    )
    parser.add_argument('--sections', default=','.join(SECTIONS), help='comma-separated subset')
    parser.add_argument('--budget-s', type=float, default=540.0, help='time budget of the run')
    parser.add_argument('--json', type=Path, default=None, help='result JSON (default: none)')
    parser.add_argument('--seed', type=int, default=0)
    return parser


class Budget:
    """Wall-clock budget shared by the sections; a section starts only if time is left."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left_s(self) -> float:
        return self.deadline - time.monotonic()


def run_section(
    name: str, work: Callable[[], dict[str, Any]], budget: Budget, min_left_s: float
) -> dict[str, Any]:
    """Run one section, recording its figures, its error or why it was skipped."""
    if budget.left_s() < min_left_s:
        return {'status': 'skipped', 'reason': f'{budget.left_s():.0f} s of the budget left'}
    start = time.monotonic()
    print(f'== gpu_check: {name} ({budget.left_s():.0f} s left)', flush=True)
    try:
        figures = work()
    except Exception as error:  # a section's failure must not lose the others' figures
        traceback.print_exc()
        return {'status': 'error', 'error': f'{type(error).__name__}: {error}'}
    return {'status': 'ok', 'seconds': round(time.monotonic() - start, 1), **figures}


def random_checkpoint(config: ModelConfig, folder: Path, seed: int) -> Path:
    """A checkpoint of the model with seeded random weights (the loader only loads checkpoints)."""
    torch.manual_seed(seed)
    model = build_model(config)
    return save_checkpoint(
        folder / f'random_{config.name}.safetensors',
        model.state_dict(),
        config,
        extra_metadata={'origin': f'tools/gpu_check.py random weights, seed {seed}'},
    )


def _input_images(size: tuple[int, int], count: int, seed: int) -> torch.Tensor:
    """(count, 3, H, W) uint8 synthetic road-like images (the gate's own set)."""
    return synthetic_gate_images(size, count=count, seed=seed)


def _normalise(images: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    mean = torch.tensor(config.preprocess.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(config.preprocess.pixel_std).view(1, 3, 1, 1)
    return (images.float() - mean) / std


def parity(checkpoint: Path, config: ModelConfig, size: tuple[int, int], seed: int) -> dict:
    """CUDA FP32 vs CPU FP32 on the same inputs: max-abs of the logits, argmax agreement."""
    images = _normalise(_input_images(size, 1, seed), config)
    cpu = load_backend(BackendSpec(kind='torch', checkpoint=str(checkpoint), device='cpu'))
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    gpu = load_backend(BackendSpec(kind='torch', checkpoint=str(checkpoint), device=device))
    with strict_fp32():
        cpu_out = cpu.backend(images)
        gpu_out = gpu.backend(images.to(device))
    cpu_class, cpu_mask = cpu_out.class_logits, cpu_out.mask_logits
    gpu_class = gpu_out.class_logits.float().cpu()
    gpu_mask = gpu_out.mask_logits.float().cpu()
    semantic_cpu = _semantic(cpu_class, cpu_mask)
    semantic_gpu = _semantic(gpu_class, gpu_mask)
    return {
        'device': device,
        'size': list(size),
        'class_logits_max_abs': float((cpu_class - gpu_class).abs().max()),
        'mask_logits_max_abs': float((cpu_mask - gpu_mask).abs().max()),
        'argmax_agreement': float((semantic_cpu == semantic_gpu).float().mean()),
    }


def _semantic(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """(B, h, w) semantic argmax of the official semantic inference at mask resolution."""
    class_probs = class_logits.softmax(-1)[..., :-1]
    scores = torch.einsum('bqk,bqhw->bkhw', class_probs, mask_logits.sigmoid())
    return scores.argmax(1)


def gates(checkpoint: Path, config: ModelConfig, size: tuple[int, int], count: int) -> dict:
    """Accuracy gate of FP16 / BF16 autocast and torch-compile against eager FP32 on one device."""
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    images = _input_images(size, count, seed=1)
    reference = load_backend(BackendSpec(kind='torch', checkpoint=str(checkpoint), device=device))
    candidates = {
        'torch-compile fp32': BackendSpec(
            kind='torch-compile', checkpoint=str(checkpoint), device=device
        )
    }
    if device == 'cuda':
        for precision in ('fp16', 'bf16'):
            candidates[f'torch {precision}'] = BackendSpec(
                kind='torch', checkpoint=str(checkpoint), device=device, precision=precision
            )
    results: dict[str, Any] = {'device': device, 'size': list(size), 'images': count}
    for name, spec in candidates.items():
        candidate = load_backend(spec)
        start = time.monotonic()
        gate = run_gate(
            reference.backend,
            candidate.backend,
            images.to(device),
            config.preprocess.pixel_mean,
            config.preprocess.pixel_std,
        )
        results[name] = {**_gate_figures(gate), 'seconds': round(time.monotonic() - start, 1)}
    return results


def _gate_figures(gate: Any) -> dict[str, Any]:
    """The JSON-ready part of a GateResult."""
    if hasattr(gate, 'to_dict'):
        return gate.to_dict()
    if hasattr(gate, 'as_dict'):
        return gate.as_dict()
    return {k: v for k, v in vars(gate).items() if isinstance(v, (bool, int, float, str, list))}


def gpu_tests(dry_run: bool, timeout_s: float) -> dict:
    """The `gpu`-marked tests that need no ROS, in a subprocess (they skip loudly on the CPU)."""
    command = [
        sys.executable,
        '-m',
        'pytest',
        '-q',
        '-m',
        'gpu',
        '-p',
        'no:cacheprovider',
        'tests/postprocess/test_gpu.py',
        'tests/deploy/test_gpu.py',
    ]
    if dry_run:
        command.append('--collect-only')
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return {'returncode': result.returncode, 'summary': lines[-1] if lines else result.stderr}


def latency(checkpoint: Path, config_name: str, sizes: list[str], iters: int, device: str) -> dict:
    """`m2a-bench` per-stage latency and memory for each torch precision and torch-compile."""
    from m2a_perception.cli import bench

    wanted = ['torch', 'torch-fp16', 'torch-bf16', 'torch-compile', 'torch-compile-fp16']
    backends = [name for name in wanted if name in bench.BACKENDS]
    argv_single = [
        '--backend',
        ','.join(backends),
        '--size',
        ','.join(sizes),
        '--num-cameras',
        '1',
        '--checkpoint',
        str(checkpoint),
        '--device',
        device,
        '--iters',
        str(iters),
        '--warmup',
        '2',
    ]
    single = bench.run(_bench_args(bench, argv_single))
    argv_cameras = [
        '--backend',
        ','.join(backends),
        '--size',
        sizes[0],
        '--num-cameras',
        '4',
        '--checkpoint',
        str(checkpoint),
        '--device',
        device,
        '--iters',
        str(iters),
        '--warmup',
        '1',
    ]
    cameras = bench.run(_bench_args(bench, argv_cameras))
    return {
        'config': config_name,
        'backends_measured': backends,
        'backends_missing_in_bench': [name for name in wanted if name not in backends],
        'single_camera': single,
        'four_cameras': cameras,
    }


def _bench_args(bench: Any, argv: list[str]) -> argparse.Namespace:
    args = bench.build_parser().parse_args(argv)
    args.argv = argv
    return args


def training_batch(config: ModelConfig, crop: tuple[int, int], folder: Path, device: str) -> Any:
    """A batch of 2 augmented synthetic-world crops, outlier block marked, on `device`."""
    from dataclasses import replace

    from m2a_training.data.augment import AugmentConfig, Augmenter
    from m2a_training.data.cityscapes import CityscapesDataset, collate_training_batch
    from m2a_training.data.synthetic import generate_synthetic_world

    height, width = crop
    world = generate_synthetic_world(
        folder,
        num_train=2,
        num_val=0,
        num_anomaly_val=0,
        num_outlier_images=0,
        size=(height + 32, 2 * (height + 32)),
        seed=9,
    )
    augment = Augmenter(
        AugmentConfig(crop_size=crop, short_side_base=height + 32, color_jitter=False)
    )
    dataset = CityscapesDataset(world.cityscapes_root, 'train', transform=augment)
    samples = [dataset[(i, 0)] for i in range(2)]
    batch = collate_training_batch(
        samples, pixel_mean=config.preprocess.pixel_mean, pixel_std=config.preprocess.pixel_std
    )
    ood = batch.ood_masks.clone()
    ood[0, height // 3 : height // 2, width // 3 : width // 2] = True
    return replace(batch, ood_masks=ood).to(device)


def training(
    config: ModelConfig, crop: tuple[int, int], steps: int, device: str, folder: Path
) -> dict:
    """Stage-1 and stage-2 steps (batch 2, AMP on CUDA) at `crop`: it/s and peak memory."""
    from m2a_training.engine import build_optimizer, train_step
    from m2a_training.losses import ContrastiveLossConfig, CriterionConfig, SetCriterion

    results: dict[str, Any] = {'crop': list(crop), 'batch': 2, 'device': device}
    amp_dtype = torch.float16 if device == 'cuda' else None
    batch = training_batch(config, crop, folder, device)
    for stage, contrastive in (('stage1', None), ('stage2', ContrastiveLossConfig())):
        torch.manual_seed(0)
        model = build_model(config).to(device).train()
        criterion = SetCriterion(
            CriterionConfig(num_classes=config.num_classes, contrastive=contrastive)
        ).to(device)
        optimizer = build_optimizer(model)
        scaler = torch.amp.GradScaler('cuda') if amp_dtype is not None else None
        if device == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        times = []
        for index in range(steps + 1):
            start = time.perf_counter()
            train_step(model, criterion, optimizer, batch, scaler=scaler, autocast_dtype=amp_dtype)
            if device == 'cuda':
                torch.cuda.synchronize()
            if index > 0:  # the first step includes allocator and cuDNN warm-up
                times.append(time.perf_counter() - start)
        results[stage] = {
            'steps_timed': len(times),
            'it_per_s': round(1.0 / statistics.median(times), 3),
            'peak_memory_gib': round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if device == 'cuda'
            else None,
        }
    return results


def profile(checkpoint: Path, config: ModelConfig, size: tuple[int, int], top: int) -> dict:
    """Top CUDA kernels of the FP16 (CPU: FP32) model, classed compute- or memory-bound."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = torch.cuda.is_available()
    device = 'cuda' if cuda else 'cpu'
    spec = BackendSpec(
        kind='torch',
        checkpoint=str(checkpoint),
        device=device,
        precision='fp16' if cuda else 'fp32',
    )
    backend = load_backend(spec).backend
    images = _normalise(_input_images(size, 1, seed=2), config).to(device)
    for _ in range(2):
        backend(images)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(3):
            backend(images)
        if cuda:
            torch.cuda.synchronize()
    attribute = 'device_time_total' if cuda else 'cpu_time_total'
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attribute, 0.0), reverse=True)
    kernels = []
    for event in events[:top]:
        name = event.key
        kernels.append(
            {
                'name': name[:120],
                'total_ms': round(getattr(event, attribute, 0.0) / 1000.0 / 3, 3),
                'calls_per_forward': event.count // 3,
                'bound': 'compute'
                if any(hint in name.lower() for hint in COMPUTE_KERNEL_HINTS)
                else 'memory',
            }
        )
    return {'device': device, 'size': list(size), 'per_forward': True, 'kernels': kernels}


def versions() -> dict[str, str]:
    found = {'python': platform.python_version(), 'torch': torch.__version__}
    found['cuda'] = str(torch.version.cuda)
    if torch.cuda.is_available():
        found['gpu'] = torch.cuda.get_device_name(0)
        found['driver_capability'] = '.'.join(map(str, torch.cuda.get_device_capability(0)))
    for package in ('onnxruntime', 'onnx', 'numpy', 'scipy'):
        try:
            found[package] = __import__(package).__version__
        except ImportError:
            found[package] = 'missing'
    return found


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, figure) rows of the closing table."""
    rows = []
    for name in SECTIONS:
        section = results['sections'].get(name)
        if section is None:
            continue
        if section['status'] != 'ok':
            rows.append(
                (name, f'{section["status"]}: {section.get("error") or section["reason"]}')
            )
            continue
        if name == 'parity':
            rows.append(
                (
                    'parity max-abs (class, mask)',
                    f'{section["class_logits_max_abs"]:.2e}, {section["mask_logits_max_abs"]:.2e}',
                )
            )
            rows.append(('parity argmax agreement', f'{section["argmax_agreement"]:.5f}'))
        elif name == 'gates':
            for key, value in section.items():
                if isinstance(value, dict):
                    rows.append((f'gate {key}', 'passed' if value.get('passed') else 'FAILED'))
        elif name == 'gpu_tests':
            rows.append(('gpu tests', str(section['summary'])))
        elif name == 'latency':
            for run in section['single_camera'].get('runs', []):
                model, total = run['stages']['model'], run['stages']['total']
                rows.append(
                    (
                        f'latency {run["backend"]} {run["size"]} ms',
                        f'model p50 {model["p50_ms"]:.2f} p99 {model["p99_ms"]:.2f}, '
                        f'frame p50 {total["p50_ms"]:.2f}',
                    )
                )
            for run in section['four_cameras'].get('runs', []):
                rows.append(
                    (
                        f'4 cameras {run["backend"]} {run["size"]}',
                        f'{run["throughput_fps"]:.1f} fps',
                    )
                )
        elif name == 'training':
            for stage in ('stage1', 'stage2'):
                rows.append((f'training {stage} it/s', f'{section[stage]["it_per_s"]}'))
        elif name == 'profile':
            rows.append(('profile kernels', f'{len(section["kernels"])} listed'))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sections = [name.strip() for name in args.sections.split(',') if name.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f'gpu_check: unknown sections {unknown}; choose from {SECTIONS}', file=sys.stderr)
        return 2
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print(
            'gpu_check: no CUDA device here; use --cpu-dry-run to check the script on the CPU',
            file=sys.stderr,
        )
        return 2
    dry = args.cpu_dry_run
    config = load_model_config('tiny' if dry else 'cityscapes_r50_gma')
    device = 'cpu' if dry else 'cuda'
    size = (64, 128) if dry else (512, 1024)
    budget = Budget(args.budget_s)
    results: dict[str, Any] = {
        'tool': 'tools/gpu_check.py',
        'command': ' '.join(['tools/gpu_check.py', *(argv if argv is not None else sys.argv[1:])]),
        'dry_run': dry,
        'config': config.name,
        'started': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'versions': versions(),
        'sections': {},
    }
    with tempfile.TemporaryDirectory(prefix='m2a-gpu-check-') as tmp:
        checkpoint = random_checkpoint(config, Path(tmp), args.seed)
        plan: dict[str, tuple[Callable[[], dict[str, Any]], float]] = {
            'parity': (lambda: parity(checkpoint, config, size, args.seed), 30),
            'gates': (lambda: gates(checkpoint, config, size, 2 if dry else 8), 60),
            'gpu_tests': (lambda: gpu_tests(dry, max(30.0, min(180.0, budget.left_s()))), 30),
            'latency': (
                lambda: latency(
                    checkpoint,
                    config.name,
                    ['64x128'] if dry else ['512x1024', '1024x2048'],
                    2 if dry else 50,
                    device,
                ),
                90,
            ),
            'training': (
                lambda: training(
                    config,
                    (64, 96) if dry else (380, 760),
                    2 if dry else 20,
                    device,
                    Path(tmp) / 'world',
                ),
                60,
            ),
            'profile': (lambda: profile(checkpoint, config, size, 15), 20),
        }
        for name in sections:
            work, min_left_s = plan[name]
            # The dry run checks every code path, so it never skips a section for time.
            min_left = -float('inf') if dry else min_left_s
            results['sections'][name] = run_section(name, work, budget, min_left)
    results['finished'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
    if args.json is not None:
        text = json.dumps(results, indent=2, sort_keys=True, default=str)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    print('\n== gpu_check summary')
    for what, figure in summary_rows(results):
        print(f'  {what:<44} {figure}')
    failed = [n for n, s in results['sections'].items() if s['status'] == 'error']
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
