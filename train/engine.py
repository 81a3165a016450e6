"""One training epoch and one evaluation pass, with metrics summed exactly across ranks."""
import math
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .distributed import DistEnv, all_reduce_sum
from .precision import autocast_context


class TrainingDiverged(RuntimeError):
    """The training loss stopped being a finite number."""


def _progress(loader, desc: str, enabled: bool):
    if not enabled:
        return loader
    from tqdm import tqdm
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def train_step(
        model: nn.Module, images: torch.Tensor, targets: torch.Tensor, optimizer, loss_fn: Callable,
        device: torch.device, amp_dtype: Optional[str] = None, scaler: Optional[torch.amp.GradScaler] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step (forward under autocast, backward, optimizer step; a GradScaler for CUDA
    float16): the step that training, the sweep's cost estimate and the benchmarks all time. Returns
    (logits, loss)."""
    with autocast_context(device, amp_dtype):
        try:
            logits = model(images)
        except ValueError as e:
            if 'Expected more than 1 value per channel' not in str(e):
                raise
            raise ValueError(
                f'a training batch of {images.shape[0]} image(s) of {images.shape[-2]}x{images.shape[-1]} reaches '
                'a 1x1 feature map, where BatchNorm sees one value per channel and cannot train. Use a larger '
                '-b (at least 2 images per process) or a larger --img-size.') from None
        loss = loss_fn(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return logits, loss


def train_one_epoch(
        model: nn.Module, loader, optimizer, loss_fn: Callable, env: DistEnv, amp_dtype: Optional[str] = None,
        scaler: Optional[torch.amp.GradScaler] = None, ema: Optional[nn.Module] = None, channels_last: bool = False,
        epoch: int = 0, log_interval: int = 0, progress: bool = False, log: Callable[[str], None] = print,
        scheduler=None,
) -> Dict[str, float]:
    """Returns mean loss, top-1, images/s and the share of step time spent waiting for data.

    With a timm `scheduler`, its `step_update` runs after every optimizer step (a no-op unless it
    was built to step on updates). A loss that is not finite stops the epoch with `TrainingDiverged`.
    """
    model.train()
    totals = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
    data_time = step_time = 0.0
    steps = len(loader)
    bar = _progress(loader, f'epoch {epoch}', progress and env.is_main)
    start = end = time.perf_counter()
    for step, (images, targets) in enumerate(bar):
        images, targets = images.to(env.device, non_blocking=True), targets.to(env.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        data_time += time.perf_counter() - end
        logits, loss = train_step(model, images, targets, optimizer, loss_fn, env.device, amp_dtype, scaler)
        if ema is not None:
            ema.update(model)
        if scheduler is not None:
            scheduler.step_update(num_updates=epoch * steps + step + 1)
        n, loss_value = targets.shape[0], loss.item()
        # in DDP every rank gets the same verdict, so all of them stop at the same step
        verdict = all_reduce_sum(torch.tensor([loss_value], dtype=torch.float64), env).item() \
            if env.distributed else loss_value
        if not math.isfinite(verdict):
            raise TrainingDiverged(f'the training loss is {verdict} at epoch {epoch}, step {step + 1}/{steps}')
        totals += torch.tensor([loss_value * n, (logits.argmax(1) == targets).sum().item(), n], dtype=torch.float64)
        now = time.perf_counter()
        step_time, end = now - start, now
        rate = totals[2].item() * env.world_size / max(step_time, 1e-9)
        if bar is not loader:
            bar.set_postfix(loss=f'{totals[0].item() / totals[2].item():.3f}',
                            acc=f'{100 * totals[1].item() / totals[2].item():.1f}', img_s=f'{rate:.0f}')
        if log_interval and env.is_main and (step + 1) % log_interval == 0:
            log(f'epoch {epoch} step {step + 1}/{steps} loss {loss_value:.4f} img/s {rate:.1f}')
    totals = all_reduce_sum(totals, env)
    count = max(totals[2].item(), 1)
    return dict(train_loss=totals[0].item() / count, train_top1=100 * totals[1].item() / count,
                img_s=totals[2].item() / max(step_time, 1e-9), data_share=data_time / max(step_time, 1e-9),
                train_s=step_time)


@torch.no_grad()
def evaluate(model: nn.Module, loader, env: DistEnv, amp_dtype: Optional[str] = None,
             channels_last: bool = False, predictions: Optional[List[int]] = None) -> Dict[str, float]:
    """Loss, top-1 and top-5 over every image of the loader's data set, counted once across ranks.

    `predictions`, when given, receives this rank's top-1 class of every image, in the loader's order.
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss * n, top1, top5, n
    for images, targets in loader:
        images, targets = images.to(env.device), targets.to(env.device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(env.device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        loss = nn.functional.cross_entropy(logits, targets, reduction='sum')
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == targets[:, None]
        if predictions is not None:
            predictions.extend(top[:, 0].tolist())
        totals += torch.tensor([loss.item(), hits[:, 0].sum().item(), hits.any(1).sum().item(), targets.shape[0]],
                               dtype=torch.float64)
    totals = all_reduce_sum(totals, env)
    count = max(totals[3].item(), 1)
    return dict(loss=totals[0].item() / count, top1=100 * totals[1].item() / count,
                top5=100 * totals[2].item() / count, count=int(totals[3].item()))
