"""One training epoch and one evaluation pass, with metrics summed exactly across ranks."""
import math
import random
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .clock import running_clock
from .distributed import DistEnv, all_reduce_sum
from .precision import autocast_context, eval_precision


class TrainingDiverged(RuntimeError):
    """The training loss stopped being a finite number."""


def _progress(loader, desc: str, enabled: bool):
    if not enabled:
        return loader
    from tqdm import tqdm
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def train_step(
        model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, optimizer, loss_fn: Callable,
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


@dataclass
class EpochTally:
    """What an epoch has summed over its first `steps` steps. A recovery checkpoint carries it, so that an
    epoch resumed in its middle reports the numbers of the whole epoch, not of its second part."""
    steps: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    images: int = 0
    data_s: float = 0.0
    train_s: float = 0.0

    def stats(self, env: DistEnv) -> Dict[str, float]:
        """Mean loss, top-1 and images/s over every rank; data_share: the part of step time spent waiting."""
        loss_sum, correct, images = all_reduce_sum(
            torch.tensor([self.loss_sum, self.correct, self.images], dtype=torch.float64), env).tolist()
        count = max(images, 1)
        return dict(train_loss=loss_sum / count, train_top1=100 * correct / count,
                    img_s=images / max(self.train_s, 1e-9), data_share=self.data_s / max(self.train_s, 1e-9),
                    train_s=self.train_s)


def train_one_epoch(
        model: nn.Module, loader, optimizer, *, loss_fn: Callable, env: DistEnv, amp_dtype: Optional[str] = None,
        scaler: Optional[torch.amp.GradScaler] = None, ema: Optional[nn.Module] = None, channels_last: bool = False,
        epoch: int = 0, log_interval: int = 0, progress: bool = False, log: Callable[[str], None] = print,
        scheduler=None, tally: Optional[EpochTally] = None, rng: Optional[dict] = None,
        after_step: Optional[Callable[[EpochTally], None]] = None, mixup: Optional[Callable] = None,
) -> Dict[str, float]:
    """Returns mean loss, top-1, images/s and the share of step time spent waiting for data.

    With a timm `scheduler`, its `step_update` runs after every optimizer step (a no-op unless it
    was built to step on updates). A loss that is not finite stops the epoch with `TrainingDiverged`.
    A `tally` of steps already trained (a recovery checkpoint's) continues the epoch after them: their
    batches are drawn again and dropped, so the loader's order and augmentations stay those of the
    uninterrupted epoch, and then `rng` (this rank's random streams, saved with the tally) is restored.
    `after_step(tally)` runs after every step, e.g. to write a recovery checkpoint. `mixup` (timm's `Mixup`)
    mixes each batch and turns its labels into soft targets; top-1 then counts the larger share's class.
    """
    model.train()
    tally = tally if tally is not None else EpochTally()
    steps = len(loader)
    bar = _progress(loader, f'epoch {epoch}', progress and env.is_main)
    batches = enumerate(bar)
    for _ in range(tally.steps):
        next(batches)
    if rng is not None:
        set_rng_state(rng)
    train_s, start = tally.train_s, running_clock()  # a SIGSTOP inside a step is not training time
    end = start
    for step, (images, targets) in batches:
        images, targets = images.to(env.device, non_blocking=True), targets.to(env.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        tally.data_s += running_clock() - end
        if mixup is not None:  # also after --mixup-off-epoch: unmixed, but the soft targets keep the smoothing
            if images.shape[0] % 2:
                raise ValueError(f'--mixup/--cutmix mix a batch with itself reversed, so they need an even number of '
                                 f'images per batch; this one has {images.shape[0]} (the training split is smaller '
                                 'than one batch per process). Use an even -b no larger than the split.')
            images, soft = mixup(images, targets)
            targets = soft.argmax(1)
        else:
            soft = targets
        logits, loss = train_step(model, images, soft, optimizer=optimizer, loss_fn=loss_fn, device=env.device,
                                  amp_dtype=amp_dtype, scaler=scaler)
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
        tally.steps, tally.images = step + 1, tally.images + n
        tally.loss_sum += loss_value * n
        tally.correct += (logits.argmax(1) == targets).sum().item()
        end = running_clock()
        tally.train_s = train_s + end - start
        rate = tally.images * env.world_size / max(tally.train_s, 1e-9)
        if bar is not loader:
            bar.set_postfix(loss=f'{tally.loss_sum / tally.images:.3f}',
                            acc=f'{100 * tally.correct / tally.images:.1f}', img_s=f'{rate:.0f}')
        if log_interval and env.is_main and (step + 1) % log_interval == 0:
            log(f'epoch {epoch} step {step + 1}/{steps} loss {loss_value:.4f} img/s {rate:.1f}')
        if after_step is not None:
            after_step(tally)
    return tally.stats(env)


def rng_state() -> dict:
    """This process's random streams (torch, its CUDA device's if in use, numpy, random) in a form
    `torch.load(weights_only=True)` reads. Only the current CUDA device: under torchrun each rank has its own."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
                numpy=(kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss), random=random.getstate())


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    if state['cuda'] is not None and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(state['cuda'])
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state['random']
    random.setstate((version, tuple(internal), gauss_next))


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
        with eval_precision(env.device, amp_dtype):
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
