"""tools/gpu_check.py in its CPU dry run: every section runs, the JSON holds their figures.

The GPU machine is lent for minutes at a time, so the one prepared GPU call must not fail on a
typo: this runs the same script, every section, on the tiny config on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp('gpu_check') / 'gpu_check.json'
    env = {
        **os.environ,
        'OMP_NUM_THREADS': '1',
        # torch.compile's inductor spends minutes generating and compiling C++ for the CPU; with
        # dynamo disabled `torch.compile` returns the model as is, so the torch-compile code path
        # (loader kind, TorchBackend wrapper, gate) still runs, in seconds.
        'TORCHDYNAMO_DISABLE': '1',
    }
    result = subprocess.run(
        [sys.executable, 'tools/gpu_check.py', '--cpu-dry-run', '--json', str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(out.read_text())


def test_every_section_ran(dry_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    _, report = dry_run
    statuses = {name: section['status'] for name, section in report['sections'].items()}
    assert statuses == {
        'parity': 'ok',
        'gates': 'ok',
        'gpu_tests': 'ok',
        'latency': 'ok',
        'training': 'ok',
        'profile': 'ok',
    }
    assert report['dry_run'] is True
    assert report['config'] == 'tiny'
    assert report['command'].startswith('tools/gpu_check.py --cpu-dry-run')


def test_cpu_against_cpu_parity_is_exact(
    dry_run: tuple[subprocess.CompletedProcess, dict],
) -> None:
    # The dry run compares the CPU with itself: the same weights and inputs give equal logits.
    parity = dry_run[1]['sections']['parity']
    assert parity['class_logits_max_abs'] == 0.0
    assert parity['mask_logits_max_abs'] == 0.0
    assert parity['argmax_agreement'] == 1.0


def test_sections_hold_their_figures(dry_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    sections = dry_run[1]['sections']
    assert sections['gates']['torch-compile fp32']['passed'] is True
    assert set(sections['latency']['backends_measured']) >= {'torch'}
    single_runs = sections['latency']['single_camera']['runs']
    assert {run['cameras'] for run in single_runs} == {1}
    assert {run['cameras'] for run in sections['latency']['four_cameras']['runs']} == {4}
    for stage in ('stage1', 'stage2'):
        assert sections['training'][stage]['steps_timed'] == 2
        assert sections['training'][stage]['it_per_s'] > 0
    assert len(sections['profile']['kernels']) == 15
    # The gpu tests are collected (not run) on the CPU; pytest exits 0 for a collection.
    assert sections['gpu_tests']['returncode'] == 0


def test_summary_table_is_printed_last(dry_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    stdout = dry_run[0].stdout
    table = stdout[stdout.rindex('== gpu_check summary') :]
    assert 'parity argmax agreement' in table
    assert 'training stage2 it/s' in table


def test_refuses_to_run_without_cuda_unless_dry() -> None:
    result = subprocess.run(
        [sys.executable, 'tools/gpu_check.py'],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert 'no CUDA device here' in result.stderr
