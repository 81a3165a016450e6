"""The run directory: the files a training run leaves behind, and the typed results record.

This module is the one owner of that contract. `python -m train` writes a run directory;
`python -m hub export`, `python -m train.validate --run` and `python -m visualize --run` read it
through `RunDir`, which checks that its parts belong together before anyone publishes or reports
a number from it: the results file, the chosen weights and the training checkpoint all carry the
run's id, and the weights' epoch is the one the results name.
"""
import contextlib
import json
import math
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

from filelock import FileLock, Timeout
from torch import nn

from .checkpoint import CheckpointError, atomic_write, load_training_state, load_weights, weights_metadata

LAST = 'last.pth.tar'  # everything needed to resume, timm's checkpoint keys
RECOVERY = 'recovery.pth.tar'  # --recovery-interval: the state in the middle of the epoch after LAST's
BEST = 'model_best.safetensors'  # the weights chosen on the validation split
RESULTS = 'results.json'  # the numbers, written once the test split was evaluated
SUMMARY = 'summary.csv'  # one row per epoch
CURVES = 'curves.png'
ARGS = 'args.json'  # the run's arguments, readable while it trains
RUN_FILES = (LAST, RECOVERY, BEST, RESULTS, SUMMARY, CURVES, ARGS)
LOCK = '.lock'  # held (flock) by the one process writing the run; the kernel releases it when that process dies
OWNER = '.owner.json'  # who holds the lock: pid, host, command, since when
# what `hub export` writes beside results.json and curves.png, and a run never does: a folder holding one of
# these is a Hub repository (a release), never a training output
REPO_WEIGHTS = 'model.safetensors'
REPO_CONFIG = 'config.json'
RESULTS_VERSION = 2
OPTIONAL_RESULTS = ('lineage', 'stopped_s')  # fields a version-2 results file may lack (added later, with a default)


class RunError(ValueError):
    """A run directory that is incomplete, inconsistent, or written by another version."""


class RunBusy(RunError):
    """A run directory another process is writing."""


def new_run_id() -> str:
    return uuid.uuid4().hex


def dump_json(value: Any) -> str:
    """Strict JSON: NaN or infinity is refused rather than written as a token no JSON parser reads."""
    return json.dumps(value, indent=2, allow_nan=False, default=str) + '\n'


def check_not_a_run_file(path: Union[str, Path], flag: str) -> None:
    """Refuse an output path that is one of a run's (or a Hub repository's) own files: a report written there would
    replace the run's record or weights, silently."""
    path = Path(path).expanduser()
    folder = path.parent
    is_run = any((folder / name).is_file() for name in (ARGS, RESULTS, LAST))
    is_repo = (folder / REPO_CONFIG).is_file() or (folder / REPO_WEIGHTS).is_file()
    if (is_run or is_repo) and path.name in (*RUN_FILES, REPO_CONFIG, REPO_WEIGHTS, 'README.md', 'history.json'):
        what = 'run directory' if is_run else 'Hub repository'
        raise RunError(f'{flag} {path} is a file of the {what} {folder}: writing there would replace its own '
                       f'{path.name}. Write elsewhere, e.g. {folder.name}-{path.stem}-report{path.suffix}.')


def comparable(value: Any) -> Any:
    """`value` as it reads back from JSON, so that tuples and lists compare equal, as they are stored."""
    return json.loads(json.dumps(value, default=str))


@dataclass
class DatasetRecord:
    name: str
    label: str
    notes: List[str]
    num_classes: int
    class_names: List[str]
    train_images: int
    val_images: int
    test_images: int
    val_split_seed: int
    image_size: int
    mean: List[float]
    std: List[float]
    # SHA-256 over the train and test splits' images and labels (`Samples.fingerprint`): --resume and
    # `train.validate --run` refuse other data. None in runs of versions that did not record it
    fingerprint: Optional[str] = None


OPTIONAL_DATASET = ('fingerprint',)  # fields a dataset record may lack (added later, with a default)


@dataclass
class Results:
    """What `results.json` holds; every number a model card or report shows comes from here."""
    run_id: str
    model: str
    tag: Optional[str]  # the pretrained tag this run's data set and class count correspond to
    model_args: Dict[str, Any]  # model, num_classes, model_kwargs: enough to rebuild the architecture
    param_count: int
    dataset: DatasetRecord
    epochs: int
    seed: int
    best_epoch: int
    val_top1: float
    val_top5: float
    test_top1: float
    test_top5: float
    test_loss: float
    checkpoint_selection: str
    wall_time_s: float
    hardware: str
    world_size: int
    precision: Dict[str, Any]  # train (what autocast ran, per epoch), test, and the CPU's bfloat16 flags
    software: Dict[str, str]
    git_commit: str
    args: Dict[str, Any]
    results_version: int = RESULTS_VERSION
    # the weights this run started from (--initial-checkpoint) and the epochs and hours behind them all;
    # None: trained from scratch (and in files written before the field existed)
    lineage: Optional[Dict[str, Any]] = None
    # seconds the process was stopped (SIGSTOP, Ctrl-Z), left out of wall_time_s and of summary.csv's epoch_s
    # and elapsed_s; None: not known for every epoch (some ran before it was measured, or the field is older)
    stopped_s: Optional[float] = None

    @property
    def hub_tag(self) -> str:
        """The tag the weights are published under: the pretrained tag, or the data set's name off the tags."""
        return self.tag or self.dataset.name

    @property
    def hub_name(self) -> str:
        """`arch.tag` of the weights."""
        return f'{self.model}.{self.hub_tag}'

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = RESULTS) -> 'Results':
        """Validate and type a parsed results file; every problem is named with its fix."""
        if not isinstance(data, dict):
            raise RunError(f'{source} is not a results record (a JSON object was expected).')
        version = data.get('results_version')
        if version != RESULTS_VERSION:
            if isinstance(version, int) and version > RESULTS_VERSION:
                fix = 'upgrade timm-spa to read it.'
            else:
                fix = ('re-finish the run with this version: `python -m train --resume RUN_DIR` evaluates a '
                       'finished run again from its last.pth.tar and rewrites the results.')
            raise RunError(f'{source} has results version {version!r}; this timm-spa reads version '
                           f'{RESULTS_VERSION}: {fix}')
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data) - set(OPTIONAL_RESULTS))
        if missing:
            raise RunError(f'{source} is incomplete (missing {", ".join(missing)}): the run did not finish, or the '
                           'file was edited. Finish it with `python -m train --resume RUN_DIR`.')
        unknown = sorted(set(data) - names)
        if unknown:
            raise RunError(f'{source} has fields this version does not know ({", ".join(unknown)}); it was edited '
                           'or written by another timm-spa version.')
        dataset = data['dataset']
        data_names = {f.name for f in fields(DatasetRecord)}
        if not isinstance(dataset, dict) or not data_names - set(OPTIONAL_DATASET) <= set(dataset) <= data_names:
            raise RunError(f'{source}: its dataset record does not have the fields {sorted(data_names)}.')
        for key in ('val_top1', 'val_top5', 'test_top1', 'test_top5'):
            value = data[key]
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 100:
                raise RunError(f'{source}: {key} is {value!r}, not a percentage.')
        arch = data['model_args']
        if not isinstance(arch, dict) or set(arch) != {'model', 'num_classes', 'model_kwargs'}:
            raise RunError(f'{source}: model_args must hold model, num_classes and model_kwargs.')
        if arch['model'] != data['model']:
            raise RunError(f"{source} describes model {data['model']} but its model_args build {arch['model']}: "
                           'the file was edited or comes from another run.')
        return cls(**dict(data, dataset=DatasetRecord(**dataset)))


class RunDir:
    """A training run directory: its file paths, and reading what it holds with every check applied."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def recovery(self) -> Path:
        return self.path / RECOVERY

    @property
    def resumable(self) -> bool:
        """Whether a checkpoint was saved (at an epoch's end, or inside one with --recovery-interval)."""
        return self.last.is_file() or self.recovery.is_file()

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def curves(self) -> Path:
        return self.path / CURVES

    @property
    def args(self) -> Path:
        return self.path / ARGS

    def repository(self) -> Optional[Path]:
        """The Hub repository folder this path is or lies inside (it holds model.safetensors or config.json)."""
        for folder in (self.path, *self.path.parents):
            if any((folder / name).is_file() for name in (REPO_WEIGHTS, REPO_CONFIG)):
                return folder
        return None

    def check_not_repository(self, flag: str = '--output') -> None:
        """Refuse to write a run into a Hub repository (an exported folder or a release), whatever the flags."""
        repo = self.repository()
        if repo is not None:
            what = 'is' if repo == self.path else 'lies inside'
            held = ', '.join(name for name in (REPO_WEIGHTS, REPO_CONFIG) if (repo / name).is_file())
            raise RunError(f'{flag} {self.path} {what} a Hub repository ({repo} holds {held}: a release or an '
                           'exported run), never a run directory; training never writes there, with or without '
                           '--overwrite. Choose another --output, e.g. runs/NAME.')

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Own the directory for the duration: a second process gets `RunBusy` naming the holder.

        An advisory lock (flock) on RUN/.lock; the kernel drops it when its process dies, even by SIGKILL, so
        a killed run never blocks its own --resume. A directory this call created and nothing else wrote is
        removed again on the way out.
        """
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f'cannot create the run directory {self.path}: {e.strerror}. Choose an --output '
                                  'you can write to.') from None
        lock = FileLock(self.path / LOCK, blocking=False)
        try:
            lock.acquire()
        except Timeout:
            raise RunBusy(f'{self.path} is in use by {self._holder()}: one process writes a run at a time. Wait for '
                          'it to end (or stop it, then --resume), or choose another --output.') from None
        except OSError as e:
            raise CheckpointError(f'cannot lock the run directory {self.path}: {e.strerror}. Choose an --output '
                                  'you can write to.') from None
        owner = self.path / OWNER
        try:
            owner.write_text(json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), command=' '.join(sys.argv),
                                             since=time.strftime('%Y-%m-%d %H:%M:%S'))))
            yield
        finally:
            owner.unlink(missing_ok=True)
            lock.release()
            if created and {p.name for p in self.path.iterdir()} <= {LOCK}:
                (self.path / LOCK).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.path.rmdir()

    def _holder(self) -> str:
        try:
            owner = json.loads((self.path / OWNER).read_text())
            return f"process {owner['pid']} on {owner['host']} (`{owner['command']}`, since {owner['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return 'another process'

    def load_best(self, model: nn.Module, run_id: str, epoch: int, model_name: str) -> None:
        """Load the chosen weights into `model`, after checking they are this run's, of this epoch."""
        meta = weights_metadata(self.best)
        if meta.get('run_id') != run_id or meta.get('epoch') != str(epoch):
            raise RunError(f'{self.best} holds run {meta.get("run_id")} epoch {meta.get("epoch")}, but this run is '
                           f'{run_id} with its best at epoch {epoch}: another process wrote into {self.path}. Its '
                           'test number would belong to other weights, so none is written; train again with another '
                           '--output.')
        load_weights(model, self.best, model_name)

    def held(self) -> List[str]:
        """The run files this directory already holds."""
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def remove_run_files(self) -> None:
        """Delete this directory's run files (and their temporaries), nothing else: for --overwrite."""
        for name in RUN_FILES:
            for path in (self.path / name, self.path / f'{name}.tmp'):
                if path.is_file():
                    path.unlink()

    def write_args(self, args: Dict[str, Any]) -> None:
        atomic_write(self.args, lambda tmp: tmp.write_text(dump_json(args)))

    def read_args(self) -> Dict[str, Any]:
        """The run's arguments (args.json), written before its first epoch: readable while it trains."""
        try:
            return json.loads(self.args.read_text())
        except (OSError, ValueError) as e:
            raise RunError(f'{self.args} cannot be read ({e}); the file is missing, truncated or was edited.') from e

    def write_results(self, results: Results) -> None:
        text = dump_json(results.to_dict())
        atomic_write(self.results, lambda tmp: tmp.write_text(text))

    def read_results(self) -> Results:
        if not self.results.is_file():
            held = self.held()
            state = f'it holds {", ".join(held)}' if held else 'it holds no run files'
            raise RunError(f'{self.path} has no {RESULTS} ({state}): only a finished `python -m train` run can be '
                           'used here. Finish it with `python -m train --resume RUN_DIR`.')
        try:
            data = json.loads(self.results.read_text(), parse_constant=_refuse_constant)
        except (json.JSONDecodeError, ValueError, UnicodeDecodeError) as e:
            raise RunError(f'{self.results} is not valid JSON ({e}); the file is truncated or was edited.') from e
        return Results.from_dict(data, str(self.results))

    def read_finished(self, check_checkpoint: bool = True) -> 'FinishedRun':
        """The results and the chosen weights' metadata, after checking that they belong together."""
        results = self.read_results()
        if not self.best.is_file():
            raise RunError(f'{self.path} has {RESULTS} but no {BEST}: the chosen weights are missing.')
        meta = weights_metadata(self.best)
        if meta.get('run_id') != results.run_id:
            raise RunError(f'{self.best} (run {meta.get("run_id")}) and {RESULTS} (run {results.run_id}) come from '
                           'different runs: the directory mixes two runs. Train it again with --overwrite, or '
                           'finish the run the weights belong to.')
        if meta.get('epoch') != str(results.best_epoch):
            raise RunError(f'{self.best} holds epoch {meta.get("epoch")}, but {RESULTS} reports epoch '
                           f'{results.best_epoch}: the files are out of step. Finish the run again with '
                           '`python -m train --resume RUN_DIR`.')
        arch = json.loads(meta['arch']) if 'arch' in meta else None
        if arch != results.model_args:
            raise RunError(f'{RESULTS} says the architecture is {results.model_args}, but the weights were saved '
                           f'for {arch}: the results file was edited or belongs to another run.')
        if check_checkpoint and self.last.is_file():
            saved = load_training_state(self.last).get('run_id')
            if saved != results.run_id:
                raise RunError(f'{self.last} (run {saved}) and {RESULTS} (run {results.run_id}) come from '
                               'different runs: the directory mixes two runs.')
        return FinishedRun(self, results)


@dataclass
class FinishedRun:
    """A run whose results, chosen weights (their metadata's architecture included) and checkpoint agree."""
    run_dir: RunDir
    results: Results

    def fill_unset(self, target: Any, data: bool = True) -> None:
        """Set each field of `target` that is unset (None or {}) to what this run recorded: its model and
        model kwargs, its chosen weights as `checkpoint`, its image size and, with `data`, its data set and
        validation split (for tools that evaluate or draw a run; explicit values are left alone)."""
        results = self.results
        recorded = dict(model=results.model, model_kwargs=dict(results.model_args['model_kwargs']),
                        checkpoint=str(self.run_dir.best), img_size=results.dataset.image_size)
        if data:
            recorded.update(dataset=results.dataset.name, data_dir=results.args.get('data_dir'),
                            val_size=results.dataset.val_images, val_split_seed=results.dataset.val_split_seed)
        for key, value in recorded.items():
            if getattr(target, key) in (None, {}):
                setattr(target, key, value)


def _refuse_constant(name: str) -> None:
    raise ValueError(f'{name} is not a JSON number')
