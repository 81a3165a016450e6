"""Train a timm-spa model with the paper's recipe, choose the checkpoint on held-out data, test once.

    python -m train --dataset cifar10 --data-dir DATA --model resnet18_spa --output runs/r18spa
    torchrun --nproc_per_node=2 -m train ...          # DDP: NCCL on GPUs, gloo on CPUs

Defaults are the paper's recipe (SGD momentum 0.9, lr 0.1, batch 128, weight decay 5e-4, cosine,
200 epochs, pad-4 crop + flip). Short budgets want timm's levers on top: `--opt sgd` (Nesterov),
`--sched-on-updates` with `--warmup-epochs`/`--warmup-lr`, `--smoothing`, `--amp`, `--channels-last`.
The run directory gets `last.pth.tar` (everything needed to resume, written atomically every
epoch), `model_best.safetensors` (best on the validation split held out of train), `summary.csv`,
`curves.png` and `results.json` (the numbers the hub tooling publishes).
"""
import argparse
import contextlib
import json
import math
import signal
import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import timm
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, distribute_bn, random_seed
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import timm_spa  # noqa: F401  registers the models
from timm_spa.models import UnknownModelArguments

from .checkpoint import (
    CheckpointError,
    load_training_state,
    save_training_state,
    save_weights,
)
from .cli import (
    Interrupted,
    ModelKwargs,
    UsageError,
    WorkerDied,
    add_debug_flag,
    check_device,
    check_model_name,
    check_torchcompile,
    did_you_mean,
    ignore_worker_deaths,
    interrupt_on_termination,
    run_cli,
    worker_died,
)
from .clock import EpochClock
from .data import (
    AUGMENT_EXAMPLES,
    DATASETS,
    DataError,
    DataSplits,
    TransformedSamples,
    build_loader,
    build_transforms,
    load_dataset,
    timm_augmentation,
)
from .distributed import DistEnv, barrier, cleanup, from_main, gather_to_main, init_distributed, launch_rank
from .engine import EpochTally, TrainingDiverged, evaluate, rng_state, train_one_epoch
from .lineage import describe_parent, lineage_record, load_initial_checkpoint
from .precision import AMP_DTYPES, describe_precision, precision_record, resolve_amp_dtype
from .report import git_commit, hardware, hardware_record, plot_curves, read_summary, software, write_summary
from .run_dir import LAST, RECOVERY, DatasetRecord, Results, RunDir, comparable, new_run_id

PROG = 'python -m train'
# what may differ when a run is resumed: where the data lies and what it is called, how fast and how loudly it
# trains; never what
RESUME_SAFE = ('data_dir', 'download', 'decode_cache', 'dataset_label', 'workers', 'device', 'amp', 'amp_dtype',
               'channels_last', 'torchcompile', 'log_interval', 'progress', 'recovery_interval')
NOT_RECORDED = ('resume', 'output', 'overwrite', 'debug')  # how this process was started, not the run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default='cifar10', choices=DATASETS)
    g.add_argument('--data-dir', default=None, help='data set root (docs/training.md gives the layouts)')
    g.add_argument('--download', action='store_true', help='download CIFAR into --data-dir if it is not there')
    g.add_argument('--val-size', type=int, default=None,
                   help='images held out of train to choose the checkpoint (default 5000 for CIFAR)')
    g.add_argument('--val-split-seed', type=int, default=0, help='fixes which images are held out')
    g.add_argument('--dataset-label', default=None, help='name to report the data set under, e.g. its caveats')
    g.add_argument('--img-size', type=int, default=None, help='input size (default: the data set native size)')
    g.add_argument('-j', '--workers', type=int, default=2)
    g.add_argument('--decode-cache', default=None, metavar='DIR',
                   help='decode image files once into an array file in DIR, read by every later epoch and run '
                        '(Tiny-ImageNet: 1.3 GB for its 110,000 images)')
    g = p.add_argument_group('model')
    g.add_argument('--model', default='resnet18_spa')
    g.add_argument('--pretrained', action='store_true')
    g.add_argument('--initial-checkpoint', default=None, metavar='WEIGHTS',
                   help='start from these weights with a fresh optimizer and schedule (timm\'s flag): a weights file, '
                        'a finished run directory, a repository folder, hf-hub:ORG/NAME or a published arch.tag; '
                        'its lineage (run or repo id, epochs, hours) goes into results.json and the card')
    g.add_argument('--num-classes', type=int, default=None, help='default: the data set class count')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ModelKwargs,
                   help='e.g. attn_stages=(1,) "attn_kwargs={\'k\': 8}"')
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=False,
                   help='channels-last memory format (--no-channels-last turns it off on --resume)')
    g = p.add_argument_group('recipe')
    g.add_argument('--epochs', type=int, default=200)
    g.add_argument('-b', '--batch-size', type=int, default=128)
    g.add_argument('--opt', default='momentum',
                   help="timm optimizer name: 'momentum' = SGD with momentum (the paper), 'sgd' = with Nesterov")
    g.add_argument('--lr', type=float, default=0.1)
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=5e-4)
    g.add_argument('--sched', default='cosine', help="timm scheduler: 'cosine', 'poly' (with --decay-rate 1: linear "
                                                 "decay to --min-lr), 'step', ...")
    g.add_argument('--decay-rate', type=float, default=0.1,
                   help="timm's --decay-rate: the LR factor per step of 'step'/'multistep', the power of 'poly'")
    g.add_argument('--sched-on-updates', action='store_true',
                   help='set the LR after every update (warm-up included) instead of once per epoch')
    g.add_argument('--min-lr', type=float, default=0.0)
    g.add_argument('--warmup-epochs', type=int, default=0, help='linear warm-up from --warmup-lr (timm)')
    g.add_argument('--warmup-lr', type=float, default=1e-5)
    g.add_argument('--smoothing', type=float, default=0.0, help='label smoothing of the training loss')
    g.add_argument('--aa', default=None, metavar='POLICY',
                   help=f"timm's augmentation policy after crop and flip, e.g. {AUGMENT_EXAMPLES}")
    g.add_argument('--reprob', type=float, default=0.0, help="timm's random erasing: probability per image")
    g.add_argument('--remode', default='pixel', choices=('const', 'rand', 'pixel'),
                   help='random erasing fill: const (zeros), rand (one colour per box), pixel (noise per pixel)')
    g.add_argument('--recount', type=int, default=1, help='random erasing: at most this many boxes per image')
    g.add_argument('--mixup', type=float, default=0.0, help="timm's mixup: alpha of the mixing weight (0: off)")
    g.add_argument('--cutmix', type=float, default=0.0, help="timm's cutmix: alpha of the box area (0: off)")
    g.add_argument('--mixup-prob', type=float, default=1.0, help='probability of mixing a batch')
    g.add_argument('--mixup-switch-prob', type=float, default=0.5,
                   help='with both: probability of cutmix instead of mixup')
    g.add_argument('--mixup-mode', default='batch', choices=('batch', 'pair', 'elem'),
                   help='one mixing weight per batch, per pair of images or per image')
    g.add_argument('--mixup-off-epoch', type=int, default=0, help='stop mixing from this epoch on (0: never)')
    g.add_argument('--dist-bn', default='reduce', choices=('reduce', 'broadcast', ''),
                   help="timm's: under torchrun, average ('reduce') each rank's BatchNorm statistics, or take rank "
                        "0's ('broadcast'), before every evaluation; '' leaves each rank its own")
    g.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights; it is what gets validated')
    g.add_argument('--model-ema-decay', type=float, default=0.999)
    g.add_argument('--amp', action=argparse.BooleanOptionalAction, default=False,
                   help='mixed precision: float16 on CUDA; bfloat16 on a CPU that has it natively, else float32')
    g.add_argument('--amp-dtype', choices=sorted(AMP_DTYPES), default=None,
                   help='force this autocast dtype (implies --amp), even on a CPU that only emulates it')
    g.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                   help='torch.compile the model (default backend inductor)')
    g.add_argument('--no-torchcompile', dest='torchcompile', action='store_const', const=None,
                   help='train without torch.compile (on --resume of a run that had it)')
    g.add_argument('--seed', type=int, default=42)
    g = p.add_argument_group('run')
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    g.add_argument('--output', default=None, help='run directory (default runs/<model>-<dataset>-seed<seed>)')
    g.add_argument('--resume', default=None,
                   help='continue the run in this directory with its own arguments (a finished run: evaluate its '
                        'chosen checkpoint again and rewrite its results)')
    g.add_argument('--overwrite', action='store_true', help='delete the run files --output holds, then train anew')
    g.add_argument('--recovery-interval', type=int, default=0, metavar='N',
                   help=f'also save the training state every N steps to {RECOVERY} (timm\'s flag), so that a run '
                        'stopped in the middle of a long epoch resumes there, exactly as if it had not stopped '
                        '(0: only at the end of each epoch)')
    g.add_argument('--log-interval', type=int, default=50, help='log every N steps (0: per epoch only)')
    g.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                   help='progress bar (default: when stderr is a terminal)')
    add_debug_flag(p)
    return p


# (flag, test, what it must be) for the numbers a run cannot start with
_CHECKS = (
    ('epochs', lambda v: v >= 1, 'an int >= 1'),
    ('batch_size', lambda v: v >= 1, 'an int >= 1'),
    ('lr', lambda v: math.isfinite(v) and v > 0, 'a number > 0'),
    ('momentum', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('weight_decay', lambda v: math.isfinite(v) and v >= 0, 'a number >= 0'),
    ('min_lr', lambda v: math.isfinite(v) and v >= 0, 'a number >= 0'),
    ('decay_rate', lambda v: math.isfinite(v) and v > 0, 'a number > 0'),
    ('warmup_lr', lambda v: math.isfinite(v) and v >= 0, 'a number >= 0'),
    ('warmup_epochs', lambda v: v >= 0, 'an int >= 0'),
    ('smoothing', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('reprob', lambda v: 0 <= v <= 1, 'in [0, 1]'),
    ('recount', lambda v: v >= 1, 'an int >= 1'),
    ('mixup', lambda v: math.isfinite(v) and v >= 0, 'a number >= 0'),
    ('cutmix', lambda v: math.isfinite(v) and v >= 0, 'a number >= 0'),
    ('mixup_prob', lambda v: 0 <= v <= 1, 'in [0, 1]'),
    ('mixup_switch_prob', lambda v: 0 <= v <= 1, 'in [0, 1]'),
    ('mixup_off_epoch', lambda v: v >= 0, 'an int >= 0'),
    ('model_ema_decay', lambda v: 0 < v < 1, 'in (0, 1)'),
    ('img_size', lambda v: v is None or v >= 1, 'an int >= 1 (pixels)'),
    ('val_size', lambda v: v is None or v >= 1, 'an int >= 1'),
    ('num_classes', lambda v: v is None or v >= 1, 'an int >= 1'),
    ('workers', lambda v: v >= 0, 'an int >= 0'),
    ('log_interval', lambda v: v >= 0, 'an int >= 0'),
    ('recovery_interval', lambda v: v >= 0, 'an int >= 0'),
)


def run_arguments(recorded: Dict[str, Any]) -> Dict[str, Any]:
    """A run's recorded arguments, with each flag added after the run was made at its default: what that run did,
    as new flags start off. How the recording process was started (`NOT_RECORDED`) is left out."""
    defaults = vars(build_parser().parse_args([]))
    return {k: v for k, v in (defaults | recorded).items() if k not in NOT_RECORDED}


OWN_MACHINE = ('device', 'progress', 'log_interval')  # what the machine running a command picks, not the run's
ALWAYS_GIVEN = ('dataset', 'model', 'epochs', 'seed')  # what a reader of a command looks for first


def command_flags(recorded: Dict[str, Any]) -> List[List[str]]:
    """The flags of `python -m train` that train a recorded run again, each with its values: every argument the run
    had at another value than its default, and its data set, model, epochs and seed. Written from the parser, so
    that they parse back to the recorded values (what a card gives as the command that made its weights)."""
    flags, done = [], set(NOT_RECORDED + OWN_MACHINE)
    for action in build_parser()._actions:  # argparse keeps each flag's spelling and default only there
        key = action.dest
        if key in done or key not in recorded:
            continue
        done.add(key)
        value = recorded[key]
        if key not in ALWAYS_GIVEN and comparable(value) == comparable(action.default):
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            flags.append([action.option_strings[0] if value else action.option_strings[1]])
            continue
        flag = max(action.option_strings, key=len)  # --batch-size, not -b
        if isinstance(action, ModelKwargs):
            flags.append([flag, *ModelKwargs.words(value)])
        elif action.nargs == 0:  # store_true
            flags.append([flag])
        else:
            flags.append([flag, str(value)])
    return flags


def training_recipe(results: Results) -> Dict[str, Any]:
    """The arguments that decide what a run trained, beside the model: not where its data lay or how fast it ran
    (what `--resume` lets change). Releases, or runs that differ only in their seed, compare like with like where
    these agree. A flag added after a run was made has its default there: what that run did (new flags start off)."""
    return {k: v for k, v in run_arguments(results.args).items() if k != 'model' and k not in RESUME_SAFE}


def check_args(args: argparse.Namespace) -> None:
    """Refuse values no run can start with, naming the flag; raises `UsageError`."""
    for key, test, allowed in _CHECKS:
        if not test(getattr(args, key)):
            raise UsageError(f'--{key.replace("_", "-")} {getattr(args, key)} is not allowed: it must be {allowed}.')
    if args.min_lr > args.lr:
        raise UsageError(f'--min-lr {args.min_lr} is above --lr {args.lr}: the schedule would raise the learning rate '
                         'as it decays. Give a --min-lr below --lr.')
    if args.warmup_epochs >= args.epochs:
        raise UsageError(f'--warmup-epochs {args.warmup_epochs} must be below --epochs {args.epochs}.')
    if args.aa:
        try:
            timm_augmentation(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), args.aa)
        except (AssertionError, ValueError, KeyError, IndexError, TypeError) as e:
            raise UsageError(f"--aa {args.aa!r} is not one of timm's augmentation policies ({e or type(e).__name__}): "
                             f'e.g. {AUGMENT_EXAMPLES}.') from None
    check_optimizer_and_schedule(args)
    if (args.mixup or args.cutmix) and args.batch_size % 2:
        raise UsageError(f'--mixup/--cutmix mix a batch with itself reversed, so -b must be even (it is '
                         f'{args.batch_size}).')
    if args.pretrained and args.initial_checkpoint:
        raise UsageError('--pretrained and --initial-checkpoint both choose the initial weights; give one of them '
                         '(a published name works as --initial-checkpoint arch.tag).')
    check_device(args.device)
    check_model_name(args.model)
    check_torchcompile(args.torchcompile, args.device)


# the names timm 1.0.31's create_scheduler_v2 takes (timm lists its optimizers, not its schedulers)
TIMM_SCHEDULERS = ('cosine', 'tanh', 'step', 'multistep', 'plateau', 'poly', 'wsd', 'rsqrt', 'constant')


def check_optimizer_and_schedule(args: argparse.Namespace) -> None:
    """--opt and --sched as timm's factories take them, before the data set is read (minutes for Tiny-ImageNet):
    a typo gets the closest names; a schedule timm refuses for these epochs gets timm's reason."""
    from timm.optim import list_optimizers
    known = list_optimizers()
    if args.opt.lower() not in known:
        raise UsageError(f'--opt {args.opt}: timm has no such optimizer.'
                         + did_you_mean(args.opt.lower(), known, ' timm.optim.list_optimizers() lists them.', n=3))
    probe = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=args.lr)
    try:
        create_scheduler_v2(probe, sched=args.sched, num_epochs=args.epochs, min_lr=args.min_lr,
                            warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr, decay_rate=args.decay_rate)
    except ValueError as e:
        hint = did_you_mean(args.sched, TIMM_SCHEDULERS) if args.sched not in TIMM_SCHEDULERS else ''
        raise UsageError(f'--sched {args.sched}: {e}{hint}') from None


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    return args


def given_flags(argv: Optional[List[str]]) -> Set[str]:
    """The arguments written on the command line, whatever their value (defaults included)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resume_args(args: argparse.Namespace, given: Set[str], state: dict, run: RunDir) -> argparse.Namespace:
    """The resumed run's own arguments, with the flags that are safe to change taken from this command.

    A flag that would change what is trained (recipe, data split, model) is refused with the list of
    differences: continuing with it would mix two runs under one set of results.
    """
    saved, parser = state['args'], build_parser()
    diffs = [f'--{key.replace("_", "-")} {getattr(args, key)!r} (the run has {saved.get(key)!r})'
             for key in sorted(given - set(RESUME_SAFE) - set(NOT_RECORDED))
             if comparable(getattr(args, key)) != comparable(saved.get(key, parser.get_default(key)))]
    if diffs:
        raise UsageError(f'--resume {run} continues that run with its own arguments, and these differ: '
                         f'{"; ".join(diffs)}. Drop them to continue it, or start a new run with another --output. '
                         f'Only {", ".join("--" + k.replace("_", "-") for k in RESUME_SAFE)} may change on resume.')
    merged = run_arguments(saved)
    merged.update({k: getattr(args, k) for k in given & set(RESUME_SAFE)})
    merged.update(resume=args.resume, output=str(run), overwrite=False, debug=args.debug,
                  progress=args.progress if 'progress' in given or 'progress' not in saved else saved['progress'])
    return argparse.Namespace(**merged)


def _run_directory(args: argparse.Namespace) -> RunDir:
    if args.resume:
        resume = Path(args.resume)
        run = RunDir(resume if resume.is_dir() or not resume.exists() else resume.parent)
        if args.output and Path(args.output).resolve() != run.path.resolve():
            raise UsageError(f'--resume continues a run in its own directory ({run}); drop --output {args.output}.')
        run.check_not_repository('--resume')
        if not run.resumable:
            raise UsageError(f'--resume {args.resume}: no {LAST} there, so there is nothing to resume. Start the run '
                             f'with --output {run}' + (' --overwrite.' if run.held() else '.'))
        return run
    run = RunDir(args.output or Path('runs') / f'{args.model}-{args.dataset}-seed{args.seed}')
    run.check_not_repository()
    return run


def _check_free(args: argparse.Namespace, run: RunDir) -> None:
    """A new run never lands beside another run's files, unless --overwrite asks to delete those."""
    held = run.held()
    if held and not args.overwrite and not args.resume and not run.resumable:
        raise UsageError(f'{run} holds {", ".join(held)} of a run that stopped before it saved a step, so there is '
                         'nothing to resume: pass --overwrite to start it again, or choose another --output.')
    if held and not args.overwrite and not args.resume:
        raise UsageError(f'{run} already holds a run ({", ".join(held)}). Pass --resume {run} to continue it, '
                         '--overwrite to replace it, or another --output.')


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """The random stream of an epoch is a function of (seed, epoch, rank) alone, so a resumed run
    draws exactly what the uninterrupted run drew, for any number of ranks and loader workers."""
    random_seed((seed * 1_000_003 + epoch * 9_973) % 2**31, rank)  # timm's: torch, random and numpy


def _model_args(args: argparse.Namespace, num_classes: int) -> dict:
    """What rebuilds the architecture: the model's name, class count and keyword arguments."""
    return dict(model=args.model, num_classes=num_classes, model_kwargs=dict(args.model_kwargs))


def _check_same_data(saved: dict, now: DatasetRecord, run: RunDir) -> None:
    """A resumed run must see the data it was trained on, wherever --data-dir points now."""
    keys = ('name', 'num_classes', 'class_names', 'train_images', 'val_images', 'test_images', 'val_split_seed',
            'image_size')
    diffs = [f'{key}: run {saved.get(key)!r}, now {getattr(now, key)!r}' for key in keys
             if comparable(saved.get(key)) != comparable(getattr(now, key))]
    if saved.get('fingerprint') and saved['fingerprint'] != now.fingerprint:  # same counts, other images or labels
        diffs.append(f'its images and labels (fingerprint {saved["fingerprint"][:12]}, now {now.fingerprint[:12]})')
    if diffs:
        raise DataError(f'--resume {run}: the data set is not the one the run was trained on ({"; ".join(diffs)}). '
                        'Point --data-dir at that data set.')


def _create_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    try:
        return timm.create_model(args.model, pretrained=args.pretrained, num_classes=num_classes, **args.model_kwargs)
    except UnknownModelArguments as e:  # only the arguments' names: an error inside the model is not the user's
        raise UsageError(f'--model-kwargs {args.model_kwargs}: {args.model} {e.what}. Check the argument names: '
                         "attn_stages, attn_kwargs and timm ResNet's (drop_rate, ...).") from None


def run(args: argparse.Namespace, given: Optional[Set[str]] = None) -> Results:
    """Train, choose the checkpoint on the validation split, evaluate it once on the test split.

    `given`: the flags written on the command line (default: those that differ from their defaults);
    on resume only the safe ones of them may differ from the run's own arguments.
    """
    check_args(args)
    if given is None:
        defaults = build_parser()
        given = {k for k, v in vars(args).items() if v != defaults.get_default(k)}
    run_dir = _run_directory(args)
    writer = launch_rank() == 0  # under torchrun, rank 0 writes the run
    with run_dir.lock() if writer else contextlib.nullcontext():
        if writer:
            _check_free(args, run_dir)  # now that no other process can write here
        try:
            return _train_and_test(args, given, run_dir)
        except KeyboardInterrupt as e:
            signum = getattr(e, 'signum', signal.SIGINT)
            how = f' ({signal.Signals(signum).name})' if signum != signal.SIGINT else ''
            raise Interrupted(f'interrupted{how}: {_how_to_continue(run_dir)}.', signum) from None
        except (RuntimeError, ConnectionError, EOFError) as e:
            ignore_worker_deaths()
            said = worker_died(e)
            if said is None:
                raise
            raise WorkerDied(f'{said}; {_how_to_continue(run_dir)}') from None


def _how_to_continue(run_dir: RunDir) -> str:
    """What `--resume` would continue from, for the message of a run that stopped early."""
    saved = RECOVERY if run_dir.recovery.is_file() else LAST
    return (f'`python -m train --resume {run_dir}` continues it from {saved}' if run_dir.resumable
            else 'no epoch was saved yet, so start it again')


@dataclass
class _RunData:
    """The three splits as loaders, and what results.json records about them."""
    splits: DataSplits
    record: DatasetRecord
    train: DataLoader
    val: DataLoader
    test: DataLoader


def _load_data(args: argparse.Namespace, env: DistEnv, log: Callable[[str], None]) -> _RunData:
    """Read the data set, decode every image once (a corrupt file stops the run before epoch 0), build loaders."""
    splits = load_dataset(args.dataset, args.data_dir, args.val_size, args.val_split_seed, args.download,
                          args.dataset_label, args.decode_cache, log)
    num_classes = args.num_classes or splits.num_classes
    if num_classes != splits.num_classes:
        raise DataError(f'--num-classes {num_classes} disagrees with the data set: {splits.label} has '
                        f'{splits.num_classes} classes. Drop --num-classes or point --data-dir at the right data.')
    for note in splits.notes:
        log(f'note: {note}')
    for samples, indices in (splits.split('train'), splits.split('val'), splits.split('test')):
        samples.check_readable(indices[env.rank::env.world_size])  # before epoch 0, not after the last
    image_size = args.img_size or splits.image_size
    eval_tf = build_transforms(splits, image_size, False)
    train_tf = build_transforms(splits, image_size, True, args.aa, args.reprob, args.remode, args.recount)
    sets = (TransformedSamples(splits.train, splits.train_indices, train_tf),
            TransformedSamples(splits.train, splits.val_indices, eval_tf),
            TransformedSamples(splits.test, None, eval_tf))
    record = DatasetRecord(
        name=args.dataset, label=splits.label, notes=list(splits.notes), num_classes=num_classes,
        class_names=list(splits.class_names), train_images=len(sets[0]), val_images=len(sets[1]),
        test_images=len(sets[2]), val_split_seed=args.val_split_seed, image_size=image_size, mean=list(splits.mean),
        std=list(splits.std), fingerprint=splits.fingerprint())
    loader_args = dict(workers=args.workers, seed=args.seed, rank=env.rank, world_size=env.world_size,
                       pin_memory=env.device.type == 'cuda')
    loaders = (build_loader(s, args.batch_size, i == 0, **loader_args) for i, s in enumerate(sets))
    return _RunData(splits, record, *loaders)


@dataclass
class _TrainingState:
    """The model and everything that steps with it: all of it goes into the checkpoint."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    num_epochs: int
    ema: Optional[ModelEmaV3]
    scaler: Optional[torch.amp.GradScaler]

    def state(self) -> Dict[str, Any]:
        return dict(state_dict=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(),
                    state_dict_ema=self.ema.module.state_dict() if self.ema is not None else None,
                    amp_scaler=self.scaler.state_dict() if self.scaler is not None else None)

    def load(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state['state_dict'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        if self.ema is not None and state.get('state_dict_ema') is not None:
            self.ema.module.load_state_dict(state['state_dict_ema'])
        if self.scaler is not None and state.get('amp_scaler') is not None:
            self.scaler.load_state_dict(state['amp_scaler'])

    def _models(self) -> Dict[str, nn.Module]:
        return dict(model=self.model, **({'ema': self.ema.module} if self.ema is not None else {}))

    def rank_buffers(self) -> Dict[str, torch.Tensor]:
        """This rank's BatchNorm running statistics (the model's and the EMA's): inside an epoch each rank has its
        own, which `--dist-bn` averages at the epoch's end, so a recovery checkpoint keeps every rank's."""
        return {f'{owner}.{name}': buffer.detach().cpu().clone() for owner, module in self._models().items()
                for name, buffer in module.named_buffers() if 'running_' in name}

    def load_rank_buffers(self, buffers: Dict[str, torch.Tensor]) -> None:
        for owner, module in self._models().items():
            for name, buffer in module.named_buffers():
                if f'{owner}.{name}' in buffers:
                    buffer.copy_(buffers[f'{owner}.{name}'])


def _build_training(args: argparse.Namespace, model: nn.Module, env: DistEnv, updates_per_epoch: int,
                    amp_dtype: Optional[str]) -> _TrainingState:
    """timm's optimizer, scheduler and EMA for the model, as timm's train.py builds them."""
    model = model.to(env.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, min_lr=args.min_lr, warmup_epochs=args.warmup_epochs,
        warmup_lr=args.warmup_lr, decay_rate=args.decay_rate, step_on_epochs=not args.sched_on_updates,
        updates_per_epoch=updates_per_epoch)
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    scaler = torch.amp.GradScaler(env.device.type) if amp_dtype == 'float16' else None
    return _TrainingState(model, optimizer, scheduler, num_epochs, ema, scaler)


@dataclass
class _RunProgress:
    """Where the run stands: what a resumed run reads back from its checkpoint and summary."""
    run_id: str
    parent: Optional[dict]
    start_epoch: int = 0
    best: Dict[str, Any] = field(default_factory=lambda: dict(top1=-1.0, epoch=-1))
    history: List[Dict[str, Any]] = field(default_factory=list)
    recovery: Optional[Dict[str, Any]] = None  # where start_epoch stopped inside, from a recovery checkpoint


def _resume_state(run_dir: RunDir) -> Dict[str, Any]:
    """The checkpoint furthest on: the recovery one where it lies inside the epoch after last.pth.tar's."""
    last = load_training_state(run_dir.last) if run_dir.last.is_file() else None
    if not run_dir.recovery.is_file():
        return last
    try:
        recovery = load_training_state(run_dir.recovery)
    except CheckpointError as e:
        raise CheckpointError(f'{e} Delete it to resume from ' + (
            f'{LAST} (the end of epoch {last["epoch"]}).' if last else 'nothing: the run starts again.')) from None
    if last is None or (recovery['run_id'] == last['run_id'] and recovery['epoch'] == last['epoch'] + 1):
        return recovery
    return last  # a kill between the end of an epoch's checkpoint and the recovery file's removal left it behind


def _resume(state: dict, training: _TrainingState, progress: _RunProgress, model_args: dict, data: _RunData,
            run_dir: RunDir, env: DistEnv, log: Callable[[str], None]) -> None:
    """Continue from the checkpoint after checking it belongs to these arguments and this data."""
    if comparable(state['model_args']) != comparable(model_args):
        raise CheckpointError(f'{run_dir.last} was saved for {state["model_args"]}, but its arguments build '
                              f'{model_args}: the checkpoint was edited or belongs to another run.')
    _check_same_data(state['dataset'], data.record, run_dir)
    recovery = state.get('recovery')
    if recovery is not None and recovery['world_size'] != env.world_size:
        raise CheckpointError(
            f'{run_dir.recovery} was saved in the middle of epoch {state["epoch"]} by {recovery["world_size"]} '
            f'process(es), and this is {env.world_size}: the rest of that epoch is divided among the processes that '
            f'began it. Resume with as many processes (torchrun --nproc_per_node {recovery["world_size"]}), or '
            'delete the file to resume from '
            + (f'{LAST}.' if run_dir.last.is_file() else 'the start.'))
    training.load(state)
    progress.best, progress.parent, progress.recovery = state['best'], state.get('parent'), recovery
    progress.start_epoch = state['epoch'] + (recovery is None)
    progress.run_id = state['run_id']
    progress.history = [row for row in read_summary(run_dir.summary) if row['epoch'] < progress.start_epoch]
    where = f', after its step {recovery["step"]} of {len(data.train)} ({RECOVERY})' if recovery else ''
    log(f'resumed {run_dir} at epoch {progress.start_epoch} of {training.num_epochs}{where} (best val top-1 '
        f'{progress.best["top1"]:.2f} at epoch {progress.best["epoch"]})')


def _train_and_eval_models(args: argparse.Namespace, training: _TrainingState,
                           env: DistEnv) -> Tuple[nn.Module, nn.Module, nn.Module]:
    """The module to train (DDP, then torch.compile, as timm's train.py), the one whose weights are evaluated
    and saved (the EMA when there is one), and the forward that evaluates it (compiled or not)."""
    train_model = DistributedDataParallel(
        training.model, device_ids=[env.device] if env.device.type == 'cuda' else None) if env.distributed \
        else training.model
    eval_model = training.ema.module if training.ema is not None else training.model
    if not args.torchcompile:
        return train_model, eval_model, eval_model
    # static shapes: a second input shape would recompile with dynamic shapes, which torch 2.14's inductor fails
    # on for CPU bmm (timm's NonLocalAttn as well as SPA); a last smaller batch recompiles. Checkpoints keep
    # the plain keys: they are saved from the modules, never from the compiled wrappers.
    return (torch.compile(train_model, backend=args.torchcompile, dynamic=False), eval_model,
            torch.compile(eval_model, backend=args.torchcompile, dynamic=False))


def _sync_batch_norm(how: str, training: '_TrainingState', env: DistEnv) -> None:
    """As timm's train.py before it validates: each rank's BatchNorm running statistics averaged over the ranks
    ('reduce') or rank 0's everywhere ('broadcast'), the EMA's too, so that every rank evaluates and rank 0 saves
    the model the whole run trained, not one rank's view of its shard."""
    if not env.distributed or how not in ('reduce', 'broadcast'):
        return
    for model in (training.model, *((training.ema.module,) if training.ema is not None else ())):
        distribute_bn(model, env.world_size, reduce=how == 'reduce')


def _mixup(args: argparse.Namespace, num_classes: int) -> Optional[Mixup]:
    """timm's Mixup/CutMix as its train.py builds it: label smoothing moves into the soft targets it makes."""
    if not (args.mixup or args.cutmix):
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, mode=args.mixup_mode, label_smoothing=args.smoothing,
                 num_classes=num_classes)


def _train_and_test(args: argparse.Namespace, given: Set[str], run_dir: RunDir) -> Results:
    """A run as its steps: read what a resume continues, set everything up, train and validate each epoch,
    test the chosen checkpoint once."""
    state = None
    if args.resume:
        state = _resume_state(run_dir)
        args = resume_args(args, given, state, run_dir)
        check_args(args)
    if args.data_dir:  # recorded absolute: a resume or `train.validate --run` from another folder reads the same data
        args.data_dir = str(Path(args.data_dir).expanduser().resolve())
    env = init_distributed(args.device)
    try:
        prepared = _prepare(args, state, run_dir, env)
        for epoch in range(prepared.progress.start_epoch, prepared.training.num_epochs):
            stats, clock = prepared.train_epoch(epoch)
            prepared.end_epoch(epoch, stats, clock)
        return prepared.test_once()
    finally:
        cleanup(env)


@dataclass
class _PreparedRun:
    """A run once set up: what its epochs read, and where they write."""
    args: argparse.Namespace
    run_dir: RunDir
    env: DistEnv
    log: Callable[[str], None]
    amp_dtype: Optional[str]
    data: _RunData
    training: _TrainingState
    progress: _RunProgress
    model_args: dict
    recorded: dict  # the arguments results.json and the checkpoints record
    train_model: nn.Module
    eval_model: nn.Module
    eval_forward: nn.Module
    mixup: Optional[Mixup]
    loss_fn: nn.Module
    machine: str  # where this process trains: a resumed run may go on elsewhere

    def checkpoint(self, epoch: int, **extra: Any) -> Dict[str, Any]:
        return dict(self.training.state(), epoch=epoch, arch=self.args.model, best=self.progress.best,
                    model_args=self.model_args, run_id=self.progress.run_id, args=comparable(self.recorded),
                    dataset=comparable(asdict(self.data.record)), parent=self.progress.parent, **extra)

    def save_recovery(self, epoch: int, clock: EpochClock, lr: float, tally: EpochTally) -> None:
        """Every --recovery-interval steps: the state, each rank's tally, random streams and BatchNorm statistics,
        the epoch's time and the learning rate it began with."""
        if tally.steps % self.args.recovery_interval or tally.steps == len(self.data.train):
            return  # the epoch's own checkpoint follows the last step
        env = self.env
        ranks = gather_to_main(dict(tally=asdict(tally), rng=rng_state(), buffers=self.training.rank_buffers()), env)
        if env.is_main:
            save_training_state(self.run_dir.recovery, self.checkpoint(epoch, metric=None, recovery=dict(
                step=tally.steps, world_size=env.world_size, ranks=ranks, epoch_s=clock.running_s(),
                stopped_s=clock.stopped_s(), lr=lr)))

    def train_epoch(self, epoch: int) -> Tuple[Dict[str, float], EpochClock]:
        """One epoch of training, from where a recovery checkpoint stopped inside it if there is one."""
        args, training, env = self.args, self.training, self.env
        recovered, self.progress.recovery = self.progress.recovery, None
        clock = EpochClock(*((recovered['epoch_s'], recovered['stopped_s']) if recovered else ()))
        rank_state = recovered['ranks'][env.rank] if recovered else dict(tally={}, rng=None)
        # the learning rate of the epoch's first step: its own for a schedule stepped per epoch (the optimizer holds
        # the next epoch's once the scheduler has stepped), where the decay began for one stepped per update
        lr = recovered.get('lr', training.optimizer.param_groups[0]['lr']) if recovered \
            else training.optimizer.param_groups[0]['lr']
        if rank_state.get('buffers'):  # this rank's own statistics, as they were when the run stopped
            training.load_rank_buffers(rank_state['buffers'])
        _seed_epoch(args.seed, epoch, env.rank)
        self.data.train.sampler.set_epoch(epoch)
        if self.mixup is not None:
            self.mixup.mixup_enabled = not args.mixup_off_epoch or epoch < args.mixup_off_epoch
        try:
            stats = train_one_epoch(
                self.train_model, self.data.train, training.optimizer, loss_fn=self.loss_fn, env=env,
                amp_dtype=self.amp_dtype, scaler=training.scaler, ema=training.ema, channels_last=args.channels_last,
                epoch=epoch, log_interval=args.log_interval, progress=args.progress, log=self.log,
                scheduler=training.scheduler, tally=EpochTally(**rank_state['tally']), rng=rank_state['rng'],
                after_step=partial(self.save_recovery, epoch, clock, lr) if args.recovery_interval else None,
                mixup=self.mixup)
        except TrainingDiverged as e:
            kept = f'{self.run_dir.last} (after epoch {epoch - 1})' if epoch > 0 else 'none, it diverged in epoch 0'
            raise TrainingDiverged(f'{e}: training diverged, so the run stops here. Kept the last good state: '
                                   f'{kept}. Lower --lr (it is {args.lr}) or add --warmup-epochs, and start '
                                   'a new run.') from None
        training.scheduler.step(epoch + 1)
        return dict(stats, lr=lr), clock

    def end_epoch(self, epoch: int, stats: Dict[str, float], clock: EpochClock) -> None:
        """Validate, add the epoch to the history, keep the best weights and the checkpoint, say how it went."""
        training, progress, run_dir, env = self.training, self.progress, self.run_dir, self.env
        _sync_batch_norm(self.args.dist_bn, training, env)
        val = evaluate(self.eval_forward, self.data.val, env, self.amp_dtype, self.args.channels_last)
        stopped_s, epoch_s = clock.stopped_s(), clock.running_s()  # SIGSTOP/Ctrl-Z: time the run did not run
        history = progress.history
        history.append(dict(
            epoch=epoch, lr=stats.pop('lr'), **stats, val_loss=val['loss'],
            val_top1=val['top1'], val_top5=val['top5'], epoch_s=epoch_s, stopped_s=stopped_s,
            elapsed_s=(history[-1]['elapsed_s'] if history else 0.0) + epoch_s,
            precision=describe_precision(self.amp_dtype), hardware=self.machine))
        improved = val['top1'] > progress.best['top1']
        if improved:
            progress.best = dict(top1=val['top1'], top5=val['top5'], epoch=epoch)
        if env.is_main:
            if improved:
                save_weights(run_dir.best, self.eval_model, metadata=dict(
                    arch=json.dumps(self.model_args), epoch=str(epoch), run_id=progress.run_id))
            write_summary(run_dir.summary, history)
            save_training_state(run_dir.last, self.checkpoint(epoch, metric=val['top1']))
            run_dir.recovery.unlink(missing_ok=True)  # it lies inside this epoch, which last.pth.tar now ends
        left = training.num_epochs - epoch - 1  # at this epoch's pace: the hours a CPU user plans around
        plural = 's' if left > 1 else ''
        to_go = f', ~{left * epoch_s / 3600:.1f} h for the {left} epoch{plural} left' if left else ''
        self.log(f"epoch {epoch}: train loss {stats['train_loss']:.4f} top-1 {stats['train_top1']:.2f} | val "
                 f"top-1 {val['top1']:.2f} top-5 {val['top5']:.2f} | {stats['img_s']:.1f} img/s, data "
                 f"{100 * stats['data_share']:.0f}% of step time, {epoch_s / 60:.1f} min"
                 f"{to_go}"
                 f"{' *best*' if improved else ''}")

    def test_once(self) -> Results:
        """The checkpoint chosen on the validation split, evaluated once on the test split, and the results file."""
        args, data, training, progress, run_dir, env = (
            self.args, self.data, self.training, self.progress, self.run_dir, self.env)
        best, record = progress.best, data.record
        barrier(env)  # rank 0 wrote it
        run_dir.load_best(self.eval_model, progress.run_id, best['epoch'], args.model)
        # in float32 whatever the training precision: the number anyone reloading the weights reproduces
        clock = EpochClock()
        test = evaluate(self.eval_model, data.test, env, None, args.channels_last)
        if test['count'] != record.test_images:
            raise RuntimeError(f'evaluated {test["count"]} test images, expected {record.test_images}')
        test_stopped_s = clock.stopped_s()
        wall_time_s = progress.history[-1]['elapsed_s'] + clock.running_s()
        stopped = [row.get('stopped_s', math.nan) for row in progress.history]  # NaN: not measured (older run)
        splits = data.splits
        results = Results(
            run_id=progress.run_id, model=args.model,
            tag=splits.tag if record.num_classes == splits.num_classes else None, model_args=self.model_args,
            param_count=sum(p.numel() for p in training.model.parameters()), dataset=record,
            epochs=training.num_epochs, seed=args.seed, best_epoch=best['epoch'], val_top1=best['top1'],
            val_top5=best['top5'], test_top1=test['top1'], test_top5=test['top5'], test_loss=test['loss'],
            checkpoint_selection=f'best validation top-1 on {record.val_images} images held out of train '
                                 f'(split seed {args.val_split_seed}); test split evaluated once, every image '
                                 'once, in float32',
            wall_time_s=wall_time_s, lineage=lineage_record(progress.parent, training.num_epochs, wall_time_s),
            stopped_s=sum(stopped) + test_stopped_s if all(map(math.isfinite, stopped)) else None,
            hardware=hardware_record(progress.history), world_size=env.world_size,
            precision=precision_record([row['precision'] for row in progress.history], env.device),
            software=software(), git_commit=git_commit(), args=comparable(self.recorded))
        if env.is_main:
            plot_curves(run_dir.curves, progress.history, f'{args.model} on {splits.label}')
            run_dir.write_results(results)
            self.log(f"test top-1 {test['top1']:.2f} top-5 {test['top5']:.2f} ({test['count']} images) for the "
                     f"epoch-{best['epoch']} checkpoint chosen on validation top-1 {best['top1']:.2f}")
            self.log(f'wrote {run_dir.results}, {run_dir.best}, {run_dir.summary}, {run_dir.curves}')
        return results


def _prepare(args: argparse.Namespace, state: Optional[dict], run_dir: RunDir, env: DistEnv) -> _PreparedRun:
    """Data, model, optimizer and the rest (from the checkpoint when resuming); a new run's arguments are written,
    and `--overwrite` removes the old run's files only now that nothing above failed."""
    log = partial(print, flush=True) if env.is_main else (lambda *_: None)
    amp_dtype, precision_warning = resolve_amp_dtype(args.amp, args.amp_dtype, env.device)
    if precision_warning:
        log(f'warning: {precision_warning}')
    data = _load_data(args, env, log)
    num_classes = data.record.num_classes
    _seed_epoch(args.seed, -1, 0)  # identical initial weights on every rank
    model_args = _model_args(args, num_classes)
    model = _create_model(args, num_classes)
    progress = _RunProgress(run_id=from_main(new_run_id(), env), parent=None)
    if state is None and args.initial_checkpoint:  # a resumed run has its weights, and its parent's record
        progress.parent = load_initial_checkpoint(model, args.initial_checkpoint, args.model)
        log(f'initial weights: {args.initial_checkpoint} ({describe_parent(progress.parent)})')
    training = _build_training(args, model, env, len(data.train), amp_dtype)
    if state is not None:
        _resume(state, training, progress, model_args, data, run_dir, env, log)
    recorded = {k: v for k, v in vars(args).items() if k not in NOT_RECORDED}
    if env.is_main:
        if state is None and args.overwrite:
            run_dir.remove_run_files()  # only now: a typo above must not cost the old run
        run_dir.write_args(dict(recorded, run_id=progress.run_id))
        log(f'{args.model} on {data.splits.label}: {data.record.train_images} train / {data.record.val_images} '
            f'val / {data.record.test_images} test images, {num_classes} classes, {training.num_epochs} '
            f'epochs, {env.world_size} process(es) on {env.device.type} in {describe_precision(amp_dtype)}; '
            f'run directory {run_dir}')
    barrier(env)  # the old run's files are gone before any rank goes on
    mixup = _mixup(args, num_classes)
    loss_fn = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(label_smoothing=args.smoothing)
    train_model, eval_model, eval_forward = _train_and_eval_models(args, training, env)
    return _PreparedRun(args=args, run_dir=run_dir, env=env, log=log, amp_dtype=amp_dtype, data=data,
                        training=training, progress=progress, model_args=model_args, recorded=recorded,
                        train_model=train_model, eval_model=eval_model, eval_forward=eval_forward, mixup=mixup,
                        loss_fn=loss_fn, machine=hardware(env.device, env.world_size))


def main(argv: Optional[List[str]] = None) -> Optional[Results]:
    args = parse_args(argv)
    with interrupt_on_termination():
        return run_cli(PROG, lambda: run(args, given_flags(argv)), args.debug, (TrainingDiverged,))


if __name__ == '__main__':
    main()
