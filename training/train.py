#!/usr/bin/env python
"""Train the sprite U-Net on a laptop CPU, one GPU or many.

    accelerate launch --config_file training/configs/cpu.yaml training/train.py --output_dir runs/sprites

(plain ``python training/train.py`` works too). Flags follow diffusers'
examples/unconditional_image_generation/train_unconditional.py where they apply. The loop is the course's:
draw t uniformly in 1..T, noise the sprite with the correct x_t = sqrt(ab) x0 + sqrt(1 - ab) noise, and
regress the noise with MSE; each context vector is zeroed with probability --context_dropout, so the zero
vector means "any sprite" and guidance works. The whole dataset sits on the device as one tensor; the data
loader only deals out batches of indices (accelerate gives every process its own shard), so there is no
per-sample Python work. Output: the pipeline in the diffusers layout with EMA weights, a model card, and
optionally a push to the Hub (outputs.py). Checkpoints are atomic (see checkpointing.py); the flags are in
options.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.logging import get_logger  # noqa: E402
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed  # noqa: E402
from diffusers import UNet2DModel  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from model import (  # noqa: E402
    ModelLoadError,
    NoiseSchedule,
    load_pipeline,
    make_scheduler,
    unet_timestep,
)
from model.unet import build_unet, guidance_weights, with_guidance_rows  # noqa: E402
from training import checkpointing, plots  # noqa: E402
from training.options import ConfigError, check_args, guidance_knots, parse_args, public_settings  # noqa: E402
from training.outputs import save_outputs  # noqa: E402
from training.sprite_data import COURSE_CONTEXTS, DatasetError, dataset_from_args  # noqa: E402

logger = get_logger(__name__)


def timestep_weights(num_steps: int, strategy: str = "none", multiplier: float = 1.0,
                     portion: float = 0.25) -> torch.Tensor | None:
    """Sampling weights of the course steps 1..T (None: uniform), as diffusers' SDXL training script biases them.

    "earlier" multiplies the weight of the first ``portion`` of the steps, the low-noise end; "later" the last.
    Written out here because diffusers keeps its version inside an example script, not in the library.
    """
    if strategy == "none" or multiplier == 1.0:
        return None
    weights = torch.ones(num_steps)
    favoured = max(1, round(portion * num_steps))
    if strategy == "earlier":
        weights[:favoured] *= multiplier
    elif strategy == "later":
        weights[-favoured:] *= multiplier
    else:
        raise ValueError(f"unknown timestep bias strategy {strategy!r}")
    return weights / weights.sum()


def noisy_batch(x0: torch.Tensor, context: torch.Tensor, schedule: NoiseSchedule, context_dropout: float,
                hflip: bool, t_weights: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training input: (x_t, course step t in 1..T, context with dropout, the noise, x0 as flipped);
    t is uniform, or drawn with ``t_weights`` (timestep_weights)."""
    n = x0.shape[0]
    if hflip:
        flip = torch.rand(n, device=x0.device) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    if context_dropout > 0:
        context = context * (torch.rand(n, device=x0.device) >= context_dropout)[:, None]
    noise = torch.randn_like(x0)
    if t_weights is None:
        t = torch.randint(1, schedule.num_steps + 1, (n,), device=x0.device)
    else:
        t = torch.multinomial(t_weights, n, replacement=True).to(x0.device) + 1
    return schedule.add_noise(x0, noise, t), t, context, noise, x0


def diffusion_loss(predicted: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   schedule: NoiseSchedule, prediction_type: str = "epsilon",
                   snr_gamma: float | None = None) -> torch.Tensor:
    """MSE against the noise (the course's target) or against v, optionally min-SNR-gamma weighted.

    Min-SNR (Hang et al. 2023) caps the weight of the easy, low-noise steps at gamma / SNR, so they stop
    dominating the gradient: per sample min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v.
    """
    target = noise if prediction_type == "epsilon" else schedule.velocity(x0, noise, t)
    if snr_gamma is None:
        return F.mse_loss(predicted.float(), target.float())
    per_sample = F.mse_loss(predicted.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    snr = schedule.snr(t).float()
    weight = snr.clamp(max=snr_gamma) / (snr if prediction_type == "epsilon" else snr + 1)
    return (per_sample * weight).mean()


# Guidance distillation draws this share of its rows at scale 1 exactly, where the target is the teacher's own
# conditional (or, with the context dropped, unconditional) prediction: what the student's own two passes use, for
# scales beyond its largest. On the bundled pair it brought the student's conditional prediction to MSE 0.00028
# from the teacher's, against 0.00046 without, and its two passes at scale 2 to 0.00084, against 0.00133.
SCALE_ONE_SHARE = 0.25

@torch.no_grad()
def guided_target(teacher: UNet2DModel, noisy: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                  scale: torch.Tensor) -> torch.Tensor:
    """Guidance distillation's target (Meng et al. 2023, stage one): the teacher's classifier-free guided
    prediction, two passes, uncond + scale * (cond - uncond), at one scale per row."""
    both = teacher(torch.cat([noisy, noisy]), torch.cat([timestep, timestep]),
                   class_labels=torch.cat([context, torch.zeros_like(context)])).sample
    conditional, unconditional = both.chunk(2)
    return unconditional + scale.reshape(-1, 1, 1, 1) * (conditional - unconditional)


def parameter_groups(unet: UNet2DModel, num_contexts: int, args: argparse.Namespace) -> list[dict]:
    """The optimizer's parameter groups. A guidance-distillation student's class table gets a group of its own: its
    guidance rows start at zero and, at the fine-tuning learning rate, stay far smaller than a context's row (norms
    0.03 to 0.24 against about 15 after 1,600 steps), so the scale barely reaches the network. They train at
    --guidance_learning_rate instead, and the table's context rows, the teacher's, stay fixed (their gradient is
    zeroed: one tensor holds both, and Adam has no per-row learning rate)."""
    if not args.distill_guidance:
        return [{"params": list(unet.parameters())}]
    table = unet.class_embedding.weight
    table.register_hook(lambda grad: torch.cat([torch.zeros_like(grad[:num_contexts]), grad[num_contexts:]]))
    return [{"params": [p for p in unet.parameters() if p is not table]},
            {"params": [table], "lr": args.guidance_learning_rate, "weight_decay": 0.0}]


def class_balance_weights(contexts: torch.Tensor, balance: str) -> torch.Tensor:
    """Per-sprite drawing weights that give each context (its strongest entry) a share of the draws proportional
    to its size ** 0.5 ("sqrt") or ** 0 ("equal"), instead of its size."""
    labels = contexts.argmax(dim=1)
    counts = torch.bincount(labels).double()
    return counts[labels] ** -{"sqrt": 0.5, "equal": 1.0}[balance]


class BatchIndices(torch.utils.data.Dataset):
    """The numbers 0..n-1, fetched a whole batch at a time: images stay on the device, only indices travel."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return torch.tensor(indices)


def pretrained_unet(source: str, names: list[str], resolution: int, prediction_type: str) -> UNet2DModel:
    """The U-Net of a saved sprite pipeline, to fine-tune: loaded as the app loads models (safetensors only),
    and checked against the dataset's contexts and resolution first."""
    try:
        pipe = load_pipeline(source)
    except ModelLoadError as err:
        raise ConfigError(f"--pretrained_model_name_or_path: {err}") from None
    if pipe.guidance_knots:  # its class table holds scale rows a plain fine-tune would feed nothing
        raise ConfigError(f"--pretrained_model_name_or_path: {source} is guidance-distilled (one pass for guidance "
                          f"{pipe.guidance_knots[0]:g} to {pipe.guidance_knots[-1]:g}); fine-tune or distil the "
                          "two-pass model it came from (the bundled model's is model/teacher)")
    if len(pipe.context_names) != len(names):
        raise ConfigError(f"--pretrained_model_name_or_path: {source} has {len(pipe.context_names)} contexts "
                          f"({', '.join(pipe.context_names)}), the dataset {len(names)} ({', '.join(names)})")
    if list(pipe.context_names) != list(names):  # same count: the fine-tune relabels, so say so
        hint = " (the course's names, a .npy pair's default: --context_names sets them)" * (names == COURSE_CONTEXTS)
        logging.getLogger(__name__).warning(  # accelerate's logger needs the Accelerator, not made yet
            f"--pretrained_model_name_or_path: {source}'s contexts are {', '.join(pipe.context_names)}; the "
            f"fine-tuned model names them {', '.join(names)}{hint}")
    if pipe.unet.config.sample_size != resolution:
        raise ConfigError(f"--pretrained_model_name_or_path: {source} draws {pipe.unet.config.sample_size} px "
                          f"sprites, --resolution is {resolution}")
    if pipe.scheduler.config.prediction_type != prediction_type:
        raise ConfigError(f"--pretrained_model_name_or_path: {source} predicts {pipe.scheduler.config.prediction_type}"
                          f", --prediction_type is {prediction_type}")
    return pipe.unet


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator else torch.cuda.is_available()


def _as_is(batch: torch.Tensor) -> torch.Tensor:
    return batch


def adamw(params, **settings) -> torch.optim.AdamW:
    """AdamW with its fused kernel (one update for all tensors) where the device has one, else the default."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **settings)
    except (RuntimeError, TypeError):  # e.g. a device without the fused kernel
        return torch.optim.AdamW(params, **settings)


def ema_model(unet: UNet2DModel, max_decay: float, inv_gamma: float, power: float) -> EMAModel:
    """The EMA of the weights, updated with foreach kernels: two launches per step instead of three per
    tensor, which is most of an EMA step's cost where launches are the bottleneck (small models on a GPU)."""
    return EMAModel(unet.parameters(), decay=max_decay, use_ema_warmup=True, inv_gamma=inv_gamma, power=power,
                    model_cls=UNet2DModel, model_config=unet.config, foreach=True)


def train(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    for name in (__name__, "training"):
        logging.getLogger(name).setLevel(logging.INFO)
    check_args(args)
    output_dir = Path(args.output_dir)
    resume = checkpointing.resolve_resume(args.resume_from_checkpoint, output_dir, with_ema=args.use_ema)
    dataset = dataset_from_args(args)
    names = dataset.context_names
    if args.seed is not None:
        set_seed(args.seed)  # the same initial weights on every process and in every run with this seed
    if args.pretrained_model_name_or_path:
        unet = pretrained_unet(args.pretrained_model_name_or_path, names, args.resolution, args.prediction_type)
    else:
        try:
            unet = build_unet(len(names), args.model_config, args.resolution)
        except ValueError as err:
            raise ConfigError(f"--model_config: {err}") from None
    knots, teacher = guidance_knots(args), None
    if knots:  # the student gets a class-table row per knot; the teacher stays as loaded, frozen
        teacher = unet.eval().requires_grad_(False)
        unet = with_guidance_rows(teacher, len(knots))

    try:
        accelerator = Accelerator(
            # Several processes and no GPU: train on the CPU over gloo (accelerate would run each one alone).
            cpu=not _has_accelerator(),
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=None if args.logger == "none" else args.logger,
            project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                logging_dir=str(output_dir / args.logging_dir)),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed or 0),
        )
    except ValueError as err:  # e.g. fp16 where the device has none
        raise ConfigError(f"accelerate cannot run this setup: {err}") from None
    logger.info(f"{accelerator.distributed_type} with {accelerator.num_processes} process(es) on "
                f"{accelerator.device}, mixed precision {accelerator.mixed_precision}", main_process_only=True)
    if args.hub_token:
        logger.warning("--hub_token shows in process listings; HF_TOKEN or `hf auth login` keep it private")
    if args.seed is not None:
        set_seed(args.seed, device_specific=True)  # but different noise on each process
    if accelerator.is_main_process:
        checkpointing.remove_stale_temporaries(output_dir)
        if resume is None and checkpointing.list_checkpoints(output_dir):
            logger.warning(f"{output_dir} holds checkpoints of an earlier run; they are replaced as this run saves. "
                           "Use --resume_from_checkpoint latest to continue that run instead.")

    device = accelerator.device
    images, contexts = dataset.images.to(device), dataset.contexts.to(device)
    # Its own generator: starting an epoch must not draw from the global RNG, or a resumed run would drift.
    generator = torch.Generator().manual_seed(args.seed or 0)
    sampler = None if args.class_balance == "none" else torch.utils.data.WeightedRandomSampler(
        class_balance_weights(dataset.contexts, args.class_balance), len(dataset), generator=generator)
    loader = accelerator.prepare(torch.utils.data.DataLoader(
        BatchIndices(len(dataset)), batch_size=args.train_batch_size, shuffle=sampler is None, sampler=sampler,
        collate_fn=_as_is, generator=generator))
    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)

    ema = None
    if args.use_ema:
        ema = ema_model(unet, args.ema_max_decay, args.ema_inv_gamma, args.ema_power)
        ema.to(device)
        checkpointing.register_ema(accelerator, ema)
    if args.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    optimizer = adamw(parameter_groups(unet, len(names), args), lr=args.learning_rate,
                      betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay,
                      eps=args.adam_epsilon)
    # The prepared scheduler steps once per process per optimizer step.
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=max_steps * accelerator.num_processes)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    if teacher is not None:
        teacher.to(device)
    if args.torch_compile:
        unet.compile()  # in place: parameter names, and so checkpoints, stay those of the plain model

    global_step = 0
    if resume is None and args.initial_step:  # no checkpoint to restore: put the schedules where that run was
        global_step = args.initial_step
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": on purpose here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(global_step * accelerator.num_processes):
                lr_scheduler.step()
        if ema is not None:
            ema.optimization_step = global_step
    if resume is not None:
        global_step = checkpointing.load_checkpoint(accelerator, resume)
        logger.info(f"resuming from {resume.name} at step {global_step}", main_process_only=True)
    # Every logged (step, loss, lr), for the card's loss plot; a resume keeps the rows up to its step only.
    history_csv = output_dir / plots.LOSS_HISTORY
    history = plots.read_loss_history(history_csv, up_to_step=global_step) if resume is not None else []
    if accelerator.is_main_process:
        settings = public_settings(args)
        (output_dir / "training_args.json").write_text(json.dumps(settings, indent=2))
        accelerator.init_trackers("train", config={k: v if isinstance(v, int | float | str | bool) else str(v)
                                                   for k, v in settings.items()})

    schedule = NoiseSchedule(make_scheduler())
    schedule.alpha_bar = schedule.alpha_bar.to(device)
    global_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    budget = "" if args.max_train_steps else ", the --num_epochs budget"
    logger.info(f"{len(dataset)} sprites, {len(names)} contexts ({', '.join(names)}); {max_steps} steps of "
                f"{global_batch} images ({num_epochs} epochs{budget}); "
                f"{sum(p.numel() for p in unet.parameters()):,} parameters", main_process_only=True)
    progress = tqdm(total=max_steps, initial=global_step, desc="training", disable=not accelerator.is_main_process)
    seen: list[list[int]] = []
    loss_sum, loss_count, window_images, window_start = torch.zeros((), device=device), 0, 0, time.perf_counter()
    run_images, run_start, first_step = 0, None, global_step
    first_epoch, skip = divmod(global_step, steps_per_epoch)
    if global_step >= max_steps:  # resumed from the last checkpoint (killed before the export): no extra step
        first_epoch = num_epochs
    deadline = time.monotonic() + 60 * args.max_train_minutes if args.max_train_minutes else None
    t_weights = timestep_weights(schedule.num_steps, args.timestep_bias_strategy, args.timestep_bias_multiplier,
                                 args.timestep_bias_portion)
    unet.train()
    for epoch in range(first_epoch, num_epochs):
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip * args.gradient_accumulation_steps) if skip else loader
        skip = 0
        for idx in batches:
            if args.debug_record_indices:
                seen.append(idx.tolist())
            noisy, t, context, noise, x0 = noisy_batch(images[idx], contexts[idx], schedule, args.context_dropout,
                                                       dataset.hflip, t_weights)
            if args.channels_last:
                noisy = noisy.contiguous(memory_format=torch.channels_last)
            with accelerator.accumulate(unet):
                if teacher is None:
                    predicted = unet(noisy, unet_timestep(t), class_labels=context).sample
                    loss = diffusion_loss(predicted, x0, noise, t, schedule, args.prediction_type, args.snr_gamma)
                else:  # one pass at a random scale against the teacher's two
                    scale = 1 + torch.rand(len(t), device=device) * (args.distill_guidance - 1)
                    scale[torch.rand(len(t), device=device) < SCALE_ONE_SHARE] = 1.0  # the teacher's cond/uncond
                    target = guided_target(teacher, noisy, unet_timestep(t), context, scale)
                    rows = torch.cat([context, guidance_weights(scale, knots)], dim=1)
                    predicted = unet(noisy, unet_timestep(t), class_labels=rows).sample
                    loss = F.mse_loss(predicted.float(), target.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            loss_count += 1
            window_images += len(idx)
            if run_start is not None:
                run_images += len(idx) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            if ema is not None:
                ema.step(unet.parameters())
            if run_start is None:  # images/s over the run leaves out the first (warm-up, compile) step
                run_start = time.perf_counter()

            if global_step % args.logging_steps == 0 or global_step == max_steps:
                elapsed = time.perf_counter() - window_start
                logs = {"loss": accelerator.reduce(loss_sum / loss_count, "mean").item(),
                        "lr": lr_scheduler.get_last_lr()[0],
                        "images_per_sec": window_images * accelerator.num_processes / elapsed}
                progress.set_postfix(loss=f"{logs['loss']:.4f}", img_s=f"{logs['images_per_sec']:.0f}")
                accelerator.log({**logs, "epoch": epoch}, step=global_step)
                history.append(plots.LossRow(global_step, logs["loss"], logs["lr"]))
                loss_sum.zero_()
                loss_count, window_images, window_start = 0, 0, time.perf_counter()
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                if accelerator.is_main_process:  # first, so a checkpoint never lacks the rows up to its step
                    plots.write_loss_history(history_csv, history)
                saved = checkpointing.save_checkpoint(accelerator, output_dir, global_step,
                                                      args.checkpoints_total_limit)
                size = sum(f.stat().st_size for f in saved.rglob("*") if f.is_file()) / 1e6
                kept = args.checkpoints_total_limit or "every one"  # a checkpoint holds weights, EMA and Adam
                logger.info(f"saved {saved.name}: {size:.0f} MB on disk; keeping {kept} (--checkpoints_total_limit)",
                            main_process_only=True)
            if accelerator.is_main_process and global_step < max_steps and (
                    (args.save_images_steps and global_step % args.save_images_steps == 0)
                    or (args.push_at_checkpoints and args.checkpointing_steps
                        and global_step % args.checkpointing_steps == 0)):
                save_outputs(accelerator, unet, ema, names, args, global_step, final=False, history=history)
            if args.debug_step_delay:
                time.sleep(args.debug_step_delay)
            if deadline is not None and global_step % args.logging_steps == 0 and global_step < max_steps:
                # All processes reach this step together and agree through one reduce, so they stop together.
                late = torch.tensor(float(time.monotonic() >= deadline), device=device)
                if accelerator.reduce(late, "max").item() > 0:
                    logger.warning(f"--max_train_minutes {args.max_train_minutes:g} reached at step {global_step} "
                                   f"of {max_steps}; saving what was trained", main_process_only=True)
                    max_steps = global_step
            if global_step >= max_steps:
                break
        if global_step >= max_steps:
            break

    progress.close()
    if args.debug_record_indices:
        path = output_dir / f"seen_indices_rank{accelerator.process_index}.json"
        path.write_text(json.dumps(seen))
    accelerator.wait_for_everyone()
    code = 0
    if accelerator.is_main_process:
        run_time = time.perf_counter() - (run_start or time.perf_counter())
        summary = {"steps": global_step, "epochs": num_epochs, "global batch": global_batch,
                   "images per second": round(run_images / run_time, 1) if run_images else None,
                   "steps this session": global_step - first_step,
                   "processes": accelerator.num_processes, "device": str(device.type),
                   "mixed precision": str(accelerator.mixed_precision)}
        logger.info(f"trained to step {global_step}: {summary['images per second']} images/s")
        code = save_outputs(accelerator, unet, ema, names, args, global_step, final=True, summary=summary,
                            history=history)
    # The other ranks wait for the export here, so that all of them tear the process group down together:
    # a rank destroying it while the main process is still busy can hang (pytorch/pytorch#75097), and did,
    # once in CI, with two CPU processes over gloo. The DDP wrapper holds the group too, so it goes first,
    # while every rank is still here, not when train() returns (rank 0 hung there once more, in CI).
    del unet, optimizer, lr_scheduler, loader
    accelerator.free_memory()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except (ConfigError, DatasetError, checkpointing.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
