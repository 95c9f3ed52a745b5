"""The training loop: stage 1 (closed set) and stage 2 (mask contrastive), one process or DDP.

    summary = train(load_train_config('config/train/synthetic_stage1.yaml'))

What one run does:
1. joins the torchrun process group if there is one (NCCL on CUDA, gloo on CPU);
2. builds the model from `model.config` and/or `model.init_checkpoint` (backbone-only
   conversions are accepted here), freezes the backbone (model config) and the parameters the
   forward pass never uses, and builds AdamW, the poly schedule and (CUDA) the AMP grad scaler;
3. streams batches from `IterationBatches` (stateless: batch `it` follows from the seed and `it`);
4. each iteration: `engine.train_step`, scheduler step; every `logging.period` logs losses, lr and
   ETA (console, `metrics.jsonl`, TensorBoard); every `validation.period` validates through the
   shared `Segmenter` and keeps `best_model.safetensors`; every `checkpoint.period` writes an
   atomic checkpoint (`checkpointing.py`);
5. a NaN or infinite loss stops the run with `TrainingDivergedError`, writing nothing, so the
   last good checkpoint stays the newest one.

With `resume=True` the run continues from `<output_dir>/checkpoints/last_checkpoint`: model,
optimizer, scheduler, grad scaler, sampler position, every rank's RNG state, best-so-far and the
iteration are restored, and the continued run computes the same losses as an uninterrupted one.

Allowed dependencies: numpy, torch, tqdm, tensorboard, m2a_perception, m2a_training.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from m2a_perception.config import ModelConfig, load_model_config
from m2a_perception.model import Mask2Anomaly, build_model
from m2a_perception.weights import read_checkpoint
from m2a_perception.weights.checkpoint import check_state_dict
from m2a_perception.weights.convert import UNUSED_MODEL_KEY
from m2a_training import checkpointing as ckpt
from m2a_training.config import ConfigError, TrainConfig
from m2a_training.data.anomaly_mix import AnomalyMix, build_outlier_pool
from m2a_training.data.augment import Augmenter, Transform, compose_transforms
from m2a_training.data.cityscapes import CityscapesDataset
from m2a_training.data.sampler import IterationBatches, keep_batch
from m2a_training.data.synthetic import generate_synthetic_world, synthetic_world_is_current
from m2a_training.distributed import (
    DistributedContext,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from m2a_training.engine import build_optimizer, train_step
from m2a_training.losses import SetCriterion
from m2a_training.schedule import build_lr_scheduler
from m2a_training.validation import ValidationResult, Validator

logger = logging.getLogger(__name__)

# Terms of the final decoder output shown in logs (the auxiliary ones go to metrics.jsonl only
# through the total).
_LOGGED_TERMS = ('loss_ce', 'loss_mask', 'loss_dice', 'loss_ood')


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the run stopped and wrote nothing for that iteration."""


@dataclass
class TrainingSummary:
    """What a run did (returned on every rank).

    Attributes:
        output_dir: where checkpoints and logs are.
        start_iteration: 0, or the iteration a resumed run continued from.
        iteration: completed iterations at the end.
        losses: this rank's total loss of every iteration run here, by 1-based iteration.
        validations: metrics of every validation round, by iteration.
        last_checkpoint: newest checkpoint folder, if any.
        best_model: `best_model.safetensors`, if a validation round produced one.
        best_score, best_iteration: the selection metric of the best model and its iteration.
    """

    output_dir: Path
    start_iteration: int
    iteration: int
    losses: dict[int, float] = field(default_factory=dict)
    validations: dict[int, dict[str, float]] = field(default_factory=dict)
    last_checkpoint: Path | None = None
    best_model: Path | None = None
    best_score: float | None = None
    best_iteration: int | None = None


def derive_seed(*values: int) -> int:
    """A 63-bit seed from integers (stable across runs, platforms and processes)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def build_initial_model(config: TrainConfig) -> tuple[Mask2Anomaly, ModelConfig, str]:
    """The network with its initial weights.

    Returns:
        The model (CPU, training mode), its config, and a description of the initial weights.

    Raises:
        ConfigError: neither `model.config` nor `model.init_checkpoint` is set, or they disagree.
        CheckpointError: the initial checkpoint is unreadable or does not fit.
    """
    section = config.model
    if section.config is None and section.init_checkpoint is None:
        raise ConfigError('set model.config and/or model.init_checkpoint')
    model_config = load_model_config(section.config) if section.config is not None else None
    if section.init_checkpoint is None:
        assert model_config is not None
        return build_model(model_config).train(), model_config, 'random initialisation'
    path = Path(section.init_checkpoint)
    # Both 'trained' (stage 2 from stage 1) and 'backbone_only' (stage 1) initialisations.
    contents = read_checkpoint(path)
    if model_config is not None and contents.config != model_config:
        raise ConfigError(
            f'model.config {section.config!r} differs from the config stored in '
            f"{path} ({contents.config.name!r}); drop model.config to use the checkpoint's"
        )
    model = build_model(contents.config)
    check_state_dict(path, model, contents.state_dict)
    model.load_state_dict(contents.state_dict, strict=True)
    return model.train(), contents.config, f'{contents.weights_state} weights from {path}'


def freeze_unused_parameters(model: torch.nn.Module) -> list[str]:
    """Freeze parameters the forward pass never reads (GMA `fusion_layer`, kept for checkpoint
    compatibility). AdamW would leave them untouched anyway (they never get a gradient); frozen,
    DistributedDataParallel needs no unused-parameter search."""
    names = []
    for name, parameter in model.named_parameters():
        if UNUSED_MODEL_KEY.search(name) and parameter.requires_grad:
            parameter.requires_grad_(False)
            names.append(name)
    return names


def build_train_transform(config: TrainConfig) -> Transform:
    """Augmentation, preceded in stage 2 by AnomalyMix (official order)."""
    augment = Augmenter(config.data.augment)
    mix = config.data.anomaly_mix
    if mix is None:
        return augment
    pool = build_outlier_pool(
        config.data_path(mix.annotation_file),
        config.data_path(mix.image_dir),
        pool_size=mix.pool_size,
        min_side=mix.min_side,
        seed=config.seed,
        keep_empty_masks=mix.keep_empty_masks,
    )
    logger.info('AnomalyMix: %d outlier images, probability %.2f', len(pool), mix.probability)
    return compose_transforms(AnomalyMix(pool, mix.probability), augment)


def ensure_synthetic_world(config: TrainConfig, context: DistributedContext) -> None:
    """Generate the synthetic world at `data.root` (rank 0) if configured and missing, or if
    the world there was written by a version whose files meant something else."""
    spec = config.data.synthetic_world
    root = Path(config.data.root)
    if spec is not None and context.is_main and not synthetic_world_is_current(root):
        logger.info('generating the synthetic road world at %s', root)
        kinds = {} if spec.anomaly_kinds is None else {'anomaly_kinds': spec.anomaly_kinds}
        generate_synthetic_world(
            root,
            num_train=spec.num_train,
            num_val=spec.num_val,
            num_anomaly_val=spec.num_anomaly_val,
            num_outlier_images=spec.num_outlier_images,
            size=spec.size,
            seed=spec.seed,
            outlier_object_scale=spec.outlier_object_scale,
            **kinds,
        )
    barrier()


class Trainer:
    """One training run (see the module docstring). Build it on every rank, then `run`."""

    def __init__(self, config: TrainConfig, context: DistributedContext) -> None:
        self.config = config
        self.context = context
        self.device = context.device
        self.output_dir = Path(config.output_dir)
        self.checkpoint_root = self.output_dir / 'checkpoints'
        self.git_revision = ckpt.git_revision()
        solver = config.solver
        if solver.batch_size % context.world_size:
            raise ConfigError(
                f'solver.batch_size {solver.batch_size} (global) does not split over '
                f'{context.world_size} ranks'
            )
        if config.runtime.num_threads is not None:
            torch.set_num_threads(config.runtime.num_threads)

        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
        ckpt.seed_everything(config.seed)
        self.model, self.model_config, init_description = build_initial_model(config)
        if self.model_config.num_classes != config.loss.num_classes:
            raise ConfigError(
                f'model has {self.model_config.num_classes} classes, loss.num_classes is '
                f'{config.loss.num_classes}'
            )
        if self.model_config.instance_head.enabled and config.data.target_mode != 'panoptic':
            raise ConfigError(
                "the model's instance head (instance_head.kind: centroid) learns from one mask "
                f'per instance; set data.target_mode: panoptic (got {config.data.target_mode!r})'
            )
        frozen = freeze_unused_parameters(self.model)
        self.model.to(self.device)
        self.optimizer = build_optimizer(
            self.model, lr=solver.lr, weight_decay=solver.weight_decay
        )
        self.scheduler = build_lr_scheduler(
            self.optimizer,
            solver.max_iters,
            solver.poly_power,
            solver.warmup_iters,
            solver.warmup_factor,
        )
        amp = solver.amp and self.device.type == 'cuda'
        self.autocast_dtype = getattr(torch, solver.amp_dtype) if amp else None
        self.scaler = (
            torch.amp.GradScaler('cuda') if amp and solver.amp_dtype == 'float16' else None
        )
        self.criterion = SetCriterion(config.loss).to(self.device)
        self.train_model: torch.nn.Module = self.model
        if context.is_distributed:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None
            )
        # From here on every rank has its own random stream (restored on resume).
        ckpt.seed_everything(derive_seed(config.seed, context.rank, 1))

        ensure_synthetic_world(config, context)
        self.train_dataset = CityscapesDataset(
            config.data_path(config.data.cityscapes),
            config.data.train_split,
            mode=config.data.target_mode,
            transform=build_train_transform(config),
            seed=config.seed,
        )
        self.batches = IterationBatches(
            self.train_dataset,
            global_batch=solver.batch_size,
            rank=context.rank,
            world_size=context.world_size,
            seed=config.seed,
            pixel_mean=self.model_config.preprocess.pixel_mean,
            pixel_std=self.model_config.preprocess.pixel_std,
            size_divisibility=self.model_config.preprocess.size_divisibility,
        )
        self.validator = Validator(config, context) if config.validation.period else None

        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        logger.info(
            'stage %d run %r: %s; %d trainable parameters; %s; %d rank(s), global batch %d, '
            '%d iterations, AMP %s',
            config.stage,
            config.name,
            init_description,
            trainable,
            f'froze unused {len(frozen)} tensors' if frozen else 'no unused tensors',
            context.world_size,
            solver.batch_size,
            solver.max_iters,
            solver.amp_dtype if amp else 'off',
        )
        self.best_score: float | None = None
        self.best_iteration: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.writer: Any = None

    # ------------------------------------------------------------ state

    def training_state(self, iteration: int) -> dict[str, Any]:
        """Everything but the weights, as tensors and plain containers (all ranks' RNG)."""
        return {
            'format': ckpt.STATE_FORMAT,
            'version': ckpt.STATE_VERSION,
            'iteration': iteration,
            'optimizer': self.optimizer.state_dict(),
            'scheduler': ckpt.scheduler_state(self.scheduler),
            'scaler': self.scaler.state_dict() if self.scaler is not None else {},
            'sampler': {
                'samples_seen': iteration * self.config.solver.batch_size,
                'global_batch': self.config.solver.batch_size,
                'seed': self.config.seed,
            },
            'rng': {
                'world_size': self.context.world_size,
                'ranks': all_gather_objects(ckpt.capture_rng_state()),
            },
            'best': {
                'metric': self.config.validation.selection_metric,
                'score': self.best_score,
                'iteration': self.best_iteration,
            },
        }

    def save(self, iteration: int) -> Path:
        """Write checkpoint `iteration` (rank 0 writes; every rank takes part)."""
        state = self.training_state(iteration)
        folder = self.checkpoint_root / ckpt.checkpoint_name(iteration)
        if self.context.is_main:
            meta = {
                'iteration': iteration,
                'seed': self.config.seed,
                'git_revision': self.git_revision,
                'world_size': self.context.world_size,
                'stage': self.config.stage,
                'name': self.config.name,
                'metrics': self.last_metrics,
                'best': state['best'],
                'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
            }
            folder = ckpt.save_training_checkpoint(
                self.checkpoint_root,
                iteration,
                model_state=self.model.state_dict(),
                model_config=self.model_config,
                training_state=state,
                config_yaml=self.config.to_yaml(),
                meta=meta,
                keep_last=self.config.checkpoint.keep_last,
            )
            logger.info('iteration %d: checkpoint %s', iteration, folder)
        barrier()
        return folder

    def restore(self, folder: Path) -> int:
        """Load checkpoint `folder` into this rank; returns its iteration."""
        state = ckpt.load_training_state(folder)
        sampler = state['sampler']
        if sampler['global_batch'] != self.config.solver.batch_size:
            raise ckpt.TrainingCheckpointError(
                f'{folder} was trained with global batch {sampler["global_batch"]}; resume '
                f'with solver.batch_size={sampler["global_batch"]} (the sample stream depends '
                'on it)'
            )
        if sampler['seed'] != self.config.seed:
            raise ckpt.TrainingCheckpointError(
                f'{folder} was trained with seed {sampler["seed"]}, the config says '
                f'{self.config.seed}'
            )
        contents = read_checkpoint(folder / ckpt.MODEL_FILE)
        if contents.config != self.model_config:
            raise ckpt.TrainingCheckpointError(
                f"{folder}: its model config differs from this run's ({contents.config.name!r} "
                f'vs {self.model_config.name!r})'
            )
        check_state_dict(folder, self.model, contents.state_dict)
        self.model.load_state_dict(contents.state_dict, strict=True)
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        if self.scaler is not None and state['scaler']:
            self.scaler.load_state_dict(state['scaler'])
        configured = [self.config.solver.lr] * len(self.scheduler.base_lrs)
        if not np.allclose(self.scheduler.base_lrs, configured):
            logger.warning(
                "the checkpoint's base lr %s differs from solver.lr %s; keeping the checkpoint's",
                self.scheduler.base_lrs,
                self.config.solver.lr,
            )
        ranks = state['rng']['ranks']
        if len(ranks) == self.context.world_size:
            ckpt.restore_rng_state(ranks[self.context.rank])
        else:
            logger.warning(
                'checkpoint has RNG states of %d ranks, this run has %d: reseeding (data order '
                'and augmentation are unaffected; dropout-free model, so only exact bitwise '
                'reproducibility is lost)',
                len(ranks),
                self.context.world_size,
            )
            ckpt.seed_everything(
                derive_seed(self.config.seed, self.context.rank, state['iteration'])
            )
        best = state['best']
        self.best_score, self.best_iteration = best['score'], best['iteration']
        return int(state['iteration'])

    # ------------------------------------------------------------ logging

    def _log_iteration(
        self,
        iteration: int,
        window: deque[dict[str, float]],
        seconds_per_iter: float,
    ) -> dict[str, float]:
        keys = window[-1].keys()
        means = {k: float(np.mean([entry[k] for entry in window if k in entry])) for k in keys}
        means = all_reduce_mean(means, self.device)
        remaining = self.config.solver.max_iters - iteration
        record = {
            'iteration': iteration,
            **means,
            'lr': self.scheduler.get_last_lr()[0],
            'seconds_per_iter': seconds_per_iter,
            'eta_seconds': seconds_per_iter * remaining,
        }
        if self.device.type == 'cuda':
            record['max_memory_mib'] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.context.is_main:
            memory = record.get('max_memory_mib')
            logger.info(
                'iteration %d/%d  loss %.3f  %s  lr %.3g  %.3f s/it  ETA %s%s',
                iteration,
                self.config.solver.max_iters,
                means['loss'],
                '  '.join(f'{k} {means[k]:.3f}' for k in _LOGGED_TERMS if k in means),
                record['lr'],
                seconds_per_iter,
                _format_duration(record['eta_seconds']),
                f'  max memory {memory:.0f} MiB' if memory is not None else '',
            )
            self._append_metrics(record)
            if self.writer is not None:
                for key, value in means.items():
                    self.writer.add_scalar(f'train/{key}', value, iteration)
                self.writer.add_scalar('train/lr', record['lr'], iteration)
                self.writer.add_scalar('train/seconds_per_iter', seconds_per_iter, iteration)
                if self.scaler is not None:
                    self.writer.add_scalar('train/amp_scale', self.scaler.get_scale(), iteration)
        return record

    def _append_metrics(self, record: dict[str, Any]) -> None:
        with (self.output_dir / 'metrics.jsonl').open('a') as stream:
            stream.write(json.dumps(record) + '\n')

    # ------------------------------------------------------------ validation

    def validate(self, iteration: int) -> ValidationResult:
        assert self.validator is not None
        started = time.perf_counter()
        result = self.validator.run(self.model, self.model_config)
        self.train_model.train()
        self.last_metrics = result.metrics
        score = result.selection_score
        improved = math.isfinite(score) and (self.best_score is None or score > self.best_score)
        if improved:
            self.best_score, self.best_iteration = score, iteration
        if self.context.is_main:
            text = '  '.join(f'{k} {v:.4f}' for k, v in sorted(result.metrics.items()))
            logger.info(
                'iteration %d validation (%.0f s): %s  [%s %.4f%s]',
                iteration,
                time.perf_counter() - started,
                text,
                self.config.validation.selection_metric,
                score,
                ', new best' if improved else f', best {self.best_score} at {self.best_iteration}',
            )
            self._append_metrics({'iteration': iteration, 'validation': result.metrics})
            if self.writer is not None:
                for key, value in result.metrics.items():
                    if math.isfinite(value):
                        self.writer.add_scalar(f'val/{key}', value, iteration)
                for key, values in result.histograms.items():
                    if values.size:
                        self.writer.add_histogram(f'val/{key}', values, iteration)
            if improved:
                metadata = {
                    'iteration': str(iteration),
                    'seed': str(self.config.seed),
                    'git_revision': self.git_revision,
                    'selection_metric': self.config.validation.selection_metric,
                    'selection_score': repr(score),
                    'metrics': json.dumps(result.metrics, sort_keys=True),
                    'train_config': self.config.to_yaml(),
                }
                path = ckpt.save_best_model(
                    self.output_dir,
                    model_state=self.model.state_dict(),
                    model_config=self.model_config,
                    metadata=metadata,
                )
                logger.info('iteration %d: best model so far written to %s', iteration, path)
        barrier()
        return result

    # ------------------------------------------------------------ loop

    def _open_outputs(self) -> None:
        if not self.context.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / 'config.yaml').write_text(self.config.to_yaml())
        if self.config.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output_dir / 'tensorboard'))

    def _close_outputs(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def run(self, *, resume: bool = False, stop_after: int | None = None) -> TrainingSummary:
        """Train to `solver.max_iters` (or stop after iteration `stop_after`).

        Args:
            resume: continue from the newest checkpoint in `output_dir` if there is one.
            stop_after: stop after this iteration, as a pre-empted job would (testing and
                time-sliced clusters); the poly schedule still spans `max_iters`.

        Raises:
            FileExistsError: `output_dir` already holds checkpoints and `resume` is False.
            TrainingDivergedError: the loss became NaN or infinite.
        """
        if self.context.is_main:
            ckpt.remove_stale_temporaries(self.checkpoint_root)
            ckpt.remove_stale_temporaries(self.output_dir)
        barrier()
        last = ckpt.find_last_checkpoint(self.checkpoint_root)
        start = 0
        if last is not None and not resume:
            raise FileExistsError(
                f'{self.output_dir} already holds checkpoints (newest {last.name}); pass '
                '--resume to continue that run, or choose another output_dir'
            )
        if last is not None:
            start = self.restore(last)
            logger.info('resumed from %s at iteration %d', last, start)
        elif resume:
            logger.info('--resume: no checkpoint in %s, starting from scratch', self.output_dir)
        self._open_outputs()
        summary = TrainingSummary(self.output_dir, start, start, last_checkpoint=last)
        try:
            if self.context.is_main and self.config.logging.progress_bar:
                # Log lines go through tqdm.write so they do not tear the progress bar.
                with logging_redirect_tqdm():
                    self._loop(start, summary, stop_after)
            else:
                self._loop(start, summary, stop_after)
        finally:
            self._close_outputs()
        if self.context.is_main and (self.output_dir / ckpt.BEST_MODEL_FILE).is_file():
            summary.best_model = self.output_dir / ckpt.BEST_MODEL_FILE
        summary.best_score, summary.best_iteration = self.best_score, self.best_iteration
        return summary

    def _loop(self, start: int, summary: TrainingSummary, stop_after: int | None) -> None:
        config = self.config
        solver = config.solver
        end = solver.max_iters if stop_after is None else min(solver.max_iters, stop_after)
        if start >= end:
            logger.info('nothing to do: iteration %d already reached', start)
            return
        loader = torch.utils.data.DataLoader(
            self.batches,
            batch_size=None,
            sampler=range(start, end),
            num_workers=config.data.num_workers,
            collate_fn=keep_batch,
            prefetch_factor=2 if config.data.num_workers else None,
        )
        window: deque[dict[str, float]] = deque(maxlen=config.logging.period)
        progress = tqdm(
            total=solver.max_iters,
            initial=start,
            desc=f'stage {config.stage}',
            unit='it',
            dynamic_ncols=True,
            disable=not (self.context.is_main and config.logging.progress_bar),
        )
        timer_start, timed = time.perf_counter(), 0
        with progress:
            for iteration, batch in zip(range(start, end), loader, strict=True):
                batch = batch.to(self.device)
                generator = torch.Generator(device=self.device)
                generator.manual_seed(derive_seed(config.seed, self.context.rank, iteration))
                try:
                    result = train_step(
                        self.train_model,
                        self.criterion,
                        self.optimizer,
                        batch,
                        max_grad_norm=solver.grad_clip,
                        generator=generator,
                        scaler=self.scaler,
                        autocast_dtype=self.autocast_dtype,
                    )
                except FloatingPointError as error:
                    raise self._diverged(iteration + 1, error, summary) from error
                self.scheduler.step()
                done = iteration + 1
                summary.iteration = done
                summary.losses[done] = result.loss
                entry = {'loss': result.loss, 'grad_norm': result.grad_norm}
                entry.update({k: v for k, v in result.terms.items() if k in _LOGGED_TERMS})
                window.append(entry)
                timed += 1
                progress.update()
                lr = self.scheduler.get_last_lr()[0]
                progress.set_postfix(loss=f'{result.loss:.3f}', lr=f'{lr:.2e}')
                final = done == solver.max_iters
                if done % config.logging.period == 0 or final:
                    self._log_iteration(done, window, (time.perf_counter() - timer_start) / timed)
                if self.validator is not None and (done % config.validation.period == 0 or final):
                    summary.validations[done] = self.validate(done).metrics
                    timer_start, timed = time.perf_counter(), 0
                if done % config.checkpoint.period == 0 or final or done == end:
                    summary.last_checkpoint = self.save(done)
                    timer_start, timed = time.perf_counter(), 0

    def _diverged(
        self, iteration: int, error: FloatingPointError, summary: TrainingSummary
    ) -> TrainingDivergedError:
        last = summary.last_checkpoint
        where = (
            f'the last good checkpoint is {last} (iteration {int(last.name.split("_")[-1])}); '
            'continue from it with --resume (consider a lower solver.lr, or solver.amp=false)'
            if last is not None
            else 'no checkpoint had been written yet'
        )
        message = (
            f'training stopped at iteration {iteration}: {error}. Nothing was saved for this '
            f'iteration; {where}'
        )
        logger.error(message)
        return TrainingDivergedError(message)


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return '?'
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f'{hours}:{minutes:02d}:{secs:02d}'


def train(
    config: TrainConfig, *, resume: bool = False, stop_after: int | None = None
) -> TrainingSummary:
    """Run training in this process (joining a torchrun process group if there is one)."""
    context = init_distributed(config.runtime.device)
    try:
        return Trainer(config, context).run(resume=resume, stop_after=stop_after)
    finally:
        shutdown_distributed(context)
