"""Reproduce the paper's tables in one command: a sweep of ordinary training runs, and a report beside the paper.

    python -m train.sweep table1 --dataset cifar100 --data-dir DATA --seeds 3 --output sweeps/t1-c100
    python -m train.sweep table2 --dataset cifar100 --data-dir DATA --output sweeps/t2
    python -m train.sweep table3 --dataset cifar100 --data-dir DATA --output sweeps/t3
    python -m train.sweep custom --models resnet18_cifar resnet18_spa --epochs 6 --opt sgd --output sweeps/mine
    python -m train.sweep table1 ... --dry-run          # the runs, and their cost from steps timed here
    python -m train.sweep report sweeps/t1-c100         # the table again, from what is on disk
    torchrun --nproc_per_node=8 -m train.sweep table1 ...   # each run uses DDP

Each cell and seed is a `python -m train` run in OUTPUT/<cell>/seed<S>/; every training flag after
the sweep's own passes through to it. Started again with the same command, a sweep skips finished
runs, resumes an interrupted one and runs the rest; a finished run whose arguments differ from the
sweep's is refused, never mixed in. The report (Markdown, JSON, PNG with error bars) is built from the
run directories alone: ours as mean +- std over seeds next to the paper's single run.
"""
import argparse
import json
import math
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import timm
import torch

import timm_spa  # noqa: F401  registers the models
from timm_spa import paper
from timm_spa.models import MODEL_NAMES

from . import train as train_cli
from .checkpoint import atomic_write
from .cli import (
    Interrupted,
    ModelKwargs,
    UsageError,
    add_debug_flag,
    interrupt_on_termination,
    message,
    positive_int,
    run_cli,
)
from .data import load_dataset
from .distributed import cleanup, init_distributed
from .engine import train_step
from .precision import resolve_amp_dtype
from .report import pyplot
from .run_dir import ARGS, RESULTS, RunDir, RunError, comparable, dump_json

PROG = 'python -m train.sweep'
MANIFEST = 'sweep.json'
REPORT_MD, REPORT_JSON, REPORT_PNG = 'report.md', 'report.json', 'report.png'
WRITTEN_BY = f'{PROG} report'  # in report.json, and as the first line of report.md: what report may overwrite
REPORT_MARK = f'<!-- written by {WRITTEN_BY} -->'
STAGES = (1, 2, 3, 4)
SWEEP_OWNED = ('model', 'model_kwargs', 'seed', 'output', 'resume', 'overwrite')  # set per run by the sweep


@dataclass(frozen=True)
class Cell:
    """One cell of a table: a model with its attention placement and k, where it goes, the paper's number."""
    model: str
    row: str
    col: str
    attn_stages: Optional[Tuple[int, ...]] = None
    k: Optional[int] = None
    paper: Optional[Dict[str, float]] = None  # data set tag -> the paper's top-1 there

    @property
    def name(self) -> str:
        parts = [self.model]
        if self.attn_stages is not None:
            parts.append('s' + ''.join(map(str, self.attn_stages)))
        if self.k is not None:
            parts.append(f'k{self.k}')
        return '-'.join(parts)

    @property
    def model_kwargs(self) -> dict:
        kwargs = {}
        if self.attn_stages is not None:
            kwargs['attn_stages'] = self.attn_stages
        if self.k is not None:
            kwargs['attn_kwargs'] = {'k': self.k}
        return kwargs


def table1() -> List[Cell]:
    """Table 1: every model, the attention block after stage 3 (k = 2)."""
    return [Cell(model, row=model, col='top-1', paper=paper.TOP1.get(model)) for model in MODEL_NAMES]


def table2() -> List[Cell]:
    """Table 2: NL and SPA (and, beyond the paper, GC) after each one stage, ResNet-18 and -50."""
    return [Cell(f'resnet{depth}_{kind}', row=f'resnet{depth}_{kind}', col=f'stage {stage}', attn_stages=(stage,),
                 paper={'cifar100': paper.TABLE2_TOP1[(f'resnet{depth}_{kind}', stage)]}
                 if (f'resnet{depth}_{kind}', stage) in paper.TABLE2_TOP1 else None)
            for kind in ('nl', 'spa', 'gc') for depth in (18, 50) for stage in STAGES]


def table3() -> List[Cell]:
    """Table 3: resnet18_spa by k and stage; then two stages at once (k = 2), which the text discusses."""
    cells = [Cell('resnet18_spa', row=f'k = {k}', col=f'stage {stage}', attn_stages=(stage,), k=k,
                  paper={'cifar100': paper.TABLE3_TOP1[(k, stage)]} if (k, stage) in paper.TABLE3_TOP1 else None)
             for k in (2, 4, 8, 16, 32) for stage in STAGES]
    cells += [Cell('resnet18_spa', row='k = 2, two stages', col=f'stages {a}+{b}', attn_stages=(a, b), k=2)
              for a, b in ((1, 2), (1, 3), (2, 3))]
    return cells


TABLES = {'table1': table1, 'table2': table2, 'table3': table3}


def custom(models: Sequence[str]) -> List[Cell]:
    return [Cell(model, row=model, col='top-1', paper=paper.TOP1.get(model)) for model in models]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug_flag(p)
    sub = p.add_subparsers(dest='command', required=True)
    for name in (*TABLES, 'custom'):
        s = sub.add_parser(name, help=f'run {name} (training flags pass through to every run)')
        if name == 'custom':
            s.add_argument('--models', nargs='+', required=True)
        s.add_argument('--output', required=True, help='the sweep folder: OUTPUT/<cell>/seed<S>/ per run')
        s.add_argument('--seeds', type=positive_int, default=1, help='runs per cell, seeds --first-seed, +1, ...')
        s.add_argument('--first-seed', type=int, default=42)
        s.add_argument('--dry-run', action='store_true', help='list the runs and estimate their cost, train nothing')
    s = sub.add_parser('report', help='the table from what OUTPUT holds')
    s.add_argument('output', help="a sweep's --output, or any folder of runs of one recipe (run directories or their "
                                   'records, e.g. docs/runs/cifar10-v2-e30); writes report.md, .json and .png there')
    return p


def parse(argv: Optional[List[str]]) -> Tuple[argparse.Namespace, List[str]]:
    args, train_argv = build_parser().parse_known_args(argv)
    if args.command == 'report' and train_argv:
        raise UsageError(f'report takes no training flags: {" ".join(train_argv)}.')
    owned = [a for a in train_argv if a.lstrip('-').split('=')[0].replace('-', '_') in SWEEP_OWNED]
    if owned:
        raise UsageError(f'{", ".join(owned)}: the sweep sets the model, its arguments, the seed and each run\'s '
                         'directory itself; drop them (use --models, --seeds and --output of the sweep).')
    return args, train_argv


def _kwargs_flags(kwargs: dict) -> List[str]:
    return ['--model-kwargs', *ModelKwargs.words(kwargs)] if kwargs else []


def run_args(cell: Cell, seed: int, train_argv: List[str], folder: Path) -> argparse.Namespace:
    """The arguments of one run: the sweep's training flags, then the cell's model and placement."""
    argv = [*train_argv, '--model', cell.model, *_kwargs_flags(cell.model_kwargs), '--seed', str(seed),
            '--output', str(folder)]
    args = train_cli.parse_args(argv)
    train_cli.check_args(args)
    return args


def plan(cells: List[Cell], args: argparse.Namespace, train_argv: List[str]) -> List[dict]:
    out = Path(args.output)
    runs = []
    for cell in cells:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            folder = out / cell.name / f'seed{seed}'
            runs.append(dict(cell=cell, seed=seed, folder=folder, args=run_args(cell, seed, train_argv, folder)))
    return runs


def _differences(recorded: dict, wanted: argparse.Namespace) -> List[str]:
    keys = sorted(set(vars(wanted)) - set(train_cli.RESUME_SAFE) - set(train_cli.NOT_RECORDED))
    return [f'--{k.replace("_", "-")}: run {recorded.get(k)!r}, sweep {getattr(wanted, k)!r}' for k in keys
            if comparable(recorded.get(k)) != comparable(getattr(wanted, k))]


def status(run: dict) -> str:
    """'finished', 'interrupted' or 'new'; a finished run made with other arguments is refused."""
    folder = RunDir(run['folder'])
    if folder.results.is_file():
        results = folder.read_finished(check_checkpoint=False).results
        diffs = _differences(results.args, run['args'])
        if diffs:
            raise RunError(f'{folder} is a finished run with other arguments than this sweep ({"; ".join(diffs)}). '
                           'Run the sweep with its arguments, or give the sweep another --output.')
        return 'finished'
    return 'interrupted' if folder.resumable else 'new'


def estimate_seconds(runs: List[dict], steps: int = 2) -> Iterator[Tuple[dict, float]]:
    """(run, seconds) for each run as soon as its cell is timed: `steps` training steps of the run's own
    batch, precision and memory format (after one warm-up step), scaled by the data set's size: epochs x
    (train + validation images), plus the test split once."""
    timed = {}
    splits = None  # every run of a sweep trains on the same data
    for run in runs:
        a, cell = run['args'], run['cell']
        key = (a.model, json.dumps(cell.model_kwargs, default=list))
        if key not in timed:
            splits = splits or load_dataset(a.dataset, a.data_dir, a.val_size, a.val_split_seed)
            size = a.img_size or splits.image_size
            device = torch.device(a.device)
            amp_dtype, _ = resolve_amp_dtype(a.amp, a.amp_dtype, device)
            model = timm.create_model(a.model, num_classes=splits.num_classes, **a.model_kwargs).to(device).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
            x = torch.randn(a.batch_size, 3, size, size, device=device)
            if a.channels_last:
                model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, splits.num_classes, (a.batch_size,), device=device)
            for i in range(steps + 1):
                if i == 1:
                    start = time.perf_counter()
                train_step(model, x, y, optimizer=optimizer, loss_fn=torch.nn.functional.cross_entropy, device=device,
                           amp_dtype=amp_dtype)
            per_image = (time.perf_counter() - start) / (steps * a.batch_size)
            counts = len(splits.train_indices), len(splits.val_indices), len(splits.test)
            # evaluation costs about a third of a training step per image
            timed[key] = per_image * (a.epochs * (counts[0] + counts[1] / 3) + counts[2] / 3)
        yield run, timed[key]


def dry_run(runs: List[dict], states: List[str], header: str) -> None:
    """List the runs, each with its estimated cost as soon as it is timed (a slow CPU takes minutes a cell)."""
    print(header, flush=True)
    todo = [r for r, s in zip(runs, states, strict=True) if s != 'finished']
    costs = estimate_seconds(todo)
    total = 0.0
    for run, state in zip(runs, states, strict=True):
        cost = ''
        if state != 'finished':
            seconds = next(costs)[1]
            total += seconds
            cost = f'  ~{seconds / 3600:.2f} h'
        print(f"  {run['folder']}  {state}{cost}", flush=True)
    print(f'estimated time for the {len(todo)} runs not finished: {total / 3600:.1f} h on this machine '
          '(timed training steps, random data; loading and logging not included)', flush=True)


def manifest(out: Path, args: argparse.Namespace, train_argv: List[str], dataset: dict) -> dict:
    """The sweep folder's record of what it holds (the report's rows): one table and one data set per folder, and
    the models of every custom sweep run into it so far, so that a second sweep never drops the first one's rows."""
    try:
        previous = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        previous = {}  # none yet, or cut short: the run directories below it still say what was run
    previous = previous if isinstance(previous, dict) else {}
    table = previous.get('table')
    if table not in (None, args.command):
        raise UsageError(f'{out} holds a {table} sweep ({MANIFEST}); a {args.command} sweep there would put two '
                         'tables in one report. Give it another --output.')
    held = previous.get('dataset')
    if held is not None and held != dataset:
        raise UsageError(f'{out} holds a sweep on {_describe(held)} ({MANIFEST}); a sweep on {_describe(dataset)} '
                         'there would put two data sets in one report. Give it another --output.')
    models = getattr(args, 'models', None)
    if models is not None:
        models = list(dict.fromkeys([*(previous.get('models') or []), *models]))
    return dict(table=args.command, dataset=dataset, models=models, seeds=args.seeds, first_seed=args.first_seed,
                train_argv=train_argv)


def _describe(dataset: dict) -> str:
    label = dataset.get('label')
    return f"--dataset {dataset.get('name')}" + (f' ({label})' if label else '')


def sweep(args: argparse.Namespace, train_argv: List[str]) -> List[dict]:
    cells = custom(args.models) if args.command == 'custom' else TABLES[args.command]()
    runs = plan(cells, args, train_argv)
    first = runs[0]['args']
    record = manifest(Path(args.output), args, train_argv, dict(name=first.dataset, label=first.dataset_label))
    states = [status(run) for run in runs]
    if args.dry_run:
        dry_run(runs, states, f'{len(runs)} runs ({len(cells)} cells x {args.seeds} seeds) in {args.output}:')
        return runs
    out = Path(args.output)
    env = init_distributed(runs[0]['args'].device)  # under torchrun: one process group for every run
    try:
        if env.is_main:  # every rank runs the sweep; one writes
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / MANIFEST, lambda tmp: tmp.write_text(dump_json(record)))
        for index, (run, state) in enumerate(zip(runs, states, strict=True)):
            print(f"[{index + 1}/{len(runs)}] {run['folder']}: {state}", flush=True)
            if state == 'finished':
                continue
            a = run['args']
            if state == 'interrupted':
                a = argparse.Namespace(**dict(vars(a), resume=str(run['folder']), output=None))
                given = {k for k in vars(a) if k not in train_cli.NOT_RECORDED}  # every recipe flag must agree
            else:
                a = argparse.Namespace(**dict(vars(a), overwrite=True))  # at most args.json of a run killed early
                given = None
            try:
                train_cli.run(a, given)
            except Interrupted as e:
                again = 'resumes it' if RunDir(run['folder']).resumable else 'starts it again (no step was saved)'
                raise Interrupted(f'interrupted ({signal.Signals(e.signum).name}) in {run["folder"]}: running this '
                                  f'sweep again {again} and runs the rest.', e.signum) from None
        if env.is_main:
            report(out)
    finally:
        cleanup(env)
    return runs


def _finished_runs(out: Path) -> Tuple[List[dict], List[str]]:
    """The runs whose results can be read (a run directory, or the record of one: its results.json; a run recorded
    twice counts once), and for each one that cannot, a line naming it and why."""
    found, skipped = [], []
    for path in sorted(out.rglob(RESULTS)):
        run = RunDir(path.parent)
        try:  # a run's record without its weights (docs/runs) is its results.json alone; with them, both must agree
            found.append(dict(folder=path.parent, results=run.read_finished(False).results if run.best.exists()
                              else run.read_results()))
        except (RunError, ValueError) as e:
            skipped.append(f'{path.parent}: {message(e)}')
            print(f'skipping {skipped[-1]}', file=sys.stderr)
    return list({run['results'].run_id: run for run in found}.values()), skipped


def _unfinished_models(out: Path) -> Tuple[str, ...]:
    """Models of runs still training (arguments written, no results yet), so the report marks them."""
    models = []
    for run in (RunDir(path.parent) for path in sorted(out.rglob(ARGS))):
        if not run.results.is_file():
            try:
                models.append(run.read_args()['model'])
            except RunError as e:
                print(f'skipping {run}: {message(e)}', file=sys.stderr)
            except (KeyError, TypeError):
                print(f'skipping {run}: {run.args} names no model', file=sys.stderr)
    return tuple(models)


def _summary(values: List[float]) -> dict:
    return dict(n=len(values), mean=statistics.fmean(values) if values else None,
                std=statistics.stdev(values) if len(values) > 1 else None, values=values)


def welch_interval(ours: Sequence[float], base: Sequence[float], level: float = 0.95) -> Optional[dict]:
    """mean(ours) - mean(base) with its Welch t confidence interval (unequal variances, Welch-Satterthwaite degrees
    of freedom); None where either side has fewer than two runs, so no spread was measured."""
    if len(ours) < 2 or len(base) < 2:
        return None
    from scipy import stats
    difference = statistics.fmean(ours) - statistics.fmean(base)
    var_ours, var_base = statistics.variance(ours) / len(ours), statistics.variance(base) / len(base)
    se = math.sqrt(var_ours + var_base)
    if se == 0:  # every run of both gave the same number: nothing to spread
        return dict(difference=difference, low=difference, high=difference, df=None, level=level)
    df = (var_ours + var_base) ** 2 / (var_ours ** 2 / (len(ours) - 1) + var_base ** 2 / (len(base) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return dict(difference=difference, low=difference - half, high=difference + half, df=df, level=level)


def baseline_of(model: str) -> str:
    """The plain ResNet of the same depth: what an attention block is measured against."""
    return f"{model.split('_', 1)[0]}_cifar"


def _recipe(results, ignored: Tuple[str, ...] = ('seed',)) -> str:
    """The run's training recipe less the `ignored` arguments (its seed), as one comparable string."""
    return json.dumps({k: v for k, v in train_cli.training_recipe(results).items() if k not in ignored},
                      sort_keys=True, default=str)


def _check_one_seed_each(folder: Path, found: List) -> None:
    """Refuse two runs of one model and seed: a run again with its seed is no second seed (it narrows the spread)."""
    seeds = [r.seed for r in found]
    if len(set(seeds)) < len(seeds):
        again = sorted({s for s in seeds if seeds.count(s) > 1})
        raise UsageError(f'{folder} holds more than one run of {found[0].model} with seed {again[0]}: runs of one '
                         'seed are not seeds. Keep one of them there.')


def seed_spread(folder: Path, results) -> dict:
    """The finished runs under `folder` of `results`' model and recipe, which differ from it only in their seed (its
    own run among them), and its baseline's (the plain ResNet of its depth) with that recipe: their test top-1
    over seeds and the difference with its Welch interval, beside the paper's (what `hub export --seeds` puts
    on a card)."""
    runs = [run['results'] for run in _finished_runs(Path(folder))[0]]
    recipe, base = _recipe(results), baseline_of(results.model)
    same = [r for r in runs if _recipe(r) == recipe]
    if results.run_id not in {r.run_id for r in same if r.model == results.model}:
        raise UsageError(f'{folder} holds no finished run {results.run_id} of this recipe (the run these weights '
                         'come from): the seeds on a card are its own run and the runs that differ from it only in '
                         'their seed.')
    mine, theirs = (sorted((r for r in same if r.model == model), key=lambda r: r.seed)
                    for model in (results.model, base))
    if len(mine) < 2:
        raise UsageError(f'{folder} holds no other seed of this run ({len(runs)} finished run(s) there, none of '
                         f'{results.model} with the same arguments but --seed): nothing to add to one run.')
    for found in (mine, theirs):
        _check_one_seed_each(folder, found)

    def described(found):
        return [dict(run_id=r.run_id, seed=r.seed, test_top1=r.test_top1, git_commit=r.git_commit) for r in found]

    spread = dict(model=results.model, runs=described(mine), test_top1=_summary([r.test_top1 for r in mine]),
                  baseline=None)
    if base != results.model and theirs:
        paper_top1, paper_base = (paper.TOP1.get(m, {}).get(results.tag) for m in (results.model, base))
        spread.update(baseline=base, baseline_runs=described(theirs),
                      baseline_test_top1=_summary([r.test_top1 for r in theirs]),
                      vs_baseline=welch_interval(spread['test_top1']['values'], [r.test_top1 for r in theirs]),
                      paper_vs_baseline=paper_top1 - paper_base if None not in (paper_top1, paper_base) else None)
    return spread


def _written_by_report(out: Path, name: str) -> bool:
    """Whether OUT/name is a file an earlier report wrote (the PNG goes with its report.json)."""
    try:
        if name == REPORT_MD:
            return (out / name).read_text().startswith(REPORT_MARK)
        return json.loads((out / REPORT_JSON).read_text()).get('written_by') == WRITTEN_BY
    except (OSError, ValueError, AttributeError):
        return False


def check_report_folder(out: Path) -> None:
    """Report only into a sweep folder (its manifest, or run directories below it), never over a file of
    someone else's."""
    if not out.is_dir():
        raise UsageError(f'{out} is not a sweep folder; give the --output of a `{PROG}` run.')
    if not (out / MANIFEST).is_file() and next(out.rglob(RESULTS), None) is None \
            and next(out.rglob(ARGS), None) is None:
        raise UsageError(f'{out} is not a sweep folder: it holds no {MANIFEST} and no run (no {RESULTS} or {ARGS} '
                         f'below it), so there is nothing to report. Give the --output of a `{PROG}` run.')
    foreign = [name for name in (REPORT_MD, REPORT_JSON, REPORT_PNG)
               if (out / name).exists() and not _written_by_report(out, name)]
    if foreign:
        raise UsageError(f'{out} holds {", ".join(foreign)}, which {WRITTEN_BY} did not write; it never overwrites '
                         'them. Move them out of the folder, then report again.')


def _check_one_recipe(out: Path, runs: List) -> None:
    """Refuse runs of several recipes in one report (e.g. 15 and 30 epochs): its mean +- std pools seeds, and runs
    of another recipe are no seeds. A table's cells may differ in the model and its arguments only."""
    recipes = [json.loads(r) for r in dict.fromkeys(_recipe(res, ('seed', 'model_kwargs')) for res in runs)]
    if len(recipes) < 2:
        return
    differ = sorted({k for recipe in recipes for k in recipe
                     if len({json.dumps(other.get(k), default=str) for other in recipes}) > 1})
    raise UsageError(f'{out} holds runs of {len(recipes)} recipes (they differ in '
                     f'{", ".join("--" + k.replace("_", "-") for k in differ)}): a report pools the seeds of one '
                     'recipe. Move the runs of each recipe into a folder of its own.')


def report(out: Path) -> dict:
    """The sweep's table from its run directories: mean +- std over seeds beside the paper's number."""
    out = Path(out)
    check_report_folder(out)
    manifest = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else {}
    runs, skipped = _finished_runs(out)
    labels = sorted({r['results'].dataset.label for r in runs})
    if len(labels) > 1:
        raise UsageError(f'{out} holds runs on {len(labels)} data sets ({"; ".join(labels)}): one report compares '
                         'one data set. Move the runs of each into a sweep folder of its own.')
    _check_one_recipe(out, [r['results'] for r in runs])
    table = manifest.get('table')
    if table in TABLES:
        cells = TABLES[table]()
    else:  # custom, or any folder of runs: one row per model and placement found (or asked for)
        seen = dict.fromkeys(tuple(manifest.get('models') or ()) + tuple(r['results'].model for r in runs)
                             + _unfinished_models(out))
        cells = custom(list(seen))
    by_cell: Dict[str, List] = {cell.name: [] for cell in cells}
    for run in runs:
        res = run['results']
        kwargs = res.model_args['model_kwargs']
        name = Cell(res.model, '', '', tuple(kwargs['attn_stages']) if 'attn_stages' in kwargs else None,
                    kwargs.get('attn_kwargs', {}).get('k')).name
        by_cell.setdefault(name, []).append(res)
    for found in by_cell.values():
        if found:
            _check_one_seed_each(out, found)
    tags = sorted({r['results'].hub_tag for r in runs})
    tag = tags[0] if len(tags) == 1 else None
    rows = []
    for cell in cells:
        found = by_cell.get(cell.name, [])
        top1 = _summary([r.test_top1 for r in found])
        ref = (cell.paper or {}).get(tag) if tag else None
        base = baseline_of(cell.model)
        base_runs = [r.test_top1 for r in by_cell.get(base, [])] if base != cell.name else []
        paper_base = paper.TOP1.get(base, {}).get(tag) if tag and base != cell.name else None
        rows.append(dict(cell=cell.name, model=cell.model, row=cell.row, col=cell.col, model_kwargs=cell.model_kwargs,
                         test_top1=top1, val_top1=_summary([r.val_top1 for r in found]), paper=ref,
                         difference=top1['mean'] - ref if top1['mean'] is not None and ref is not None else None,
                         baseline=base if base_runs else None,
                         vs_baseline=welch_interval(top1['values'], base_runs),
                         paper_vs_baseline=ref - paper_base if ref is not None and paper_base is not None else None,
                         epochs=sorted({r.epochs for r in found}), hardware=sorted({r.hardware for r in found}),
                         precision=sorted({r.precision['train'] for r in found})))
    first = runs[0]['results'] if runs else None
    data = dict(table=table or 'custom', title=table if table in TABLES else out.resolve().name, folder=str(out),
                dataset=first.dataset.label if first else None,
                dataset_notes=first.dataset.notes if first else [], rows=rows, runs=len(runs), skipped=skipped,
                written_by=WRITTEN_BY)
    text = _markdown(data)
    (out / REPORT_JSON).write_text(dump_json(data))
    (out / REPORT_MD).write_text(f'{REPORT_MARK}\n{text}')
    _plot(data, out / REPORT_PNG)
    print(text)
    print(f'wrote {out / REPORT_MD}, {REPORT_JSON} and {REPORT_PNG}')
    return data


def _fmt(summary: dict) -> str:
    if not summary['n']:
        return 'not run yet'
    if summary['n'] == 1:
        return f"{summary['mean']:.2f} (n=1)"
    return f"{summary['mean']:.2f} +- {summary['std']:.2f} (n={summary['n']})"


def _markdown(data: dict) -> str:
    rows = data['rows']
    lines = [f"### {data['title']}: test top-1 (%) on {data['dataset'] or 'no finished run yet'}", '']
    for note in data['dataset_notes']:
        lines.append(f'- {note}')
    budget = sorted({(tuple(r['epochs']), tuple(r['hardware']), tuple(r['precision'])) for r in rows if r['epochs']})
    for epochs, hardware, precision in budget:
        lines.append(f"- Budget: {', '.join(map(str, epochs))} epochs; {'; '.join(hardware)}; training in "
                     f"{', '.join(precision)}. Checkpoints chosen on a validation split held out of train; the "
                     'test split evaluated once per run.')
    lines += ['- Ours: mean +- sample std over seeds (n runs); the paper: a single run each.']
    if any(r['vs_baseline'] for r in rows):
        lines += ['- Ours - baseline: the difference of the means from the plain ResNet of the same depth in this '
                  "folder, [its 95% confidence interval] by Welch's t (unequal variances); an interval that holds 0 "
                  'shows no difference at these seeds. Paper - baseline: the same difference of its single runs.']
    lines += [f'- Not counted, its results cannot be read: {line}' for line in data.get('skipped', [])]
    lines.append('')
    cols = list(dict.fromkeys(r['col'] for r in rows))
    if cols == ['top-1']:
        lines += ['| model | ours | val top-1 | paper | ours - paper | ours - baseline [95% CI] | paper - baseline |',
                  '|---|---:|---:|---:|---:|---:|---:|']
        for r in rows:
            lines.append(f"| {r['row']} | {_fmt(r['test_top1'])} | {_fmt(r['val_top1'])} | "
                         f"{_num(r['paper'])} | {_num(r['difference'], signed=True)} | "
                         f"{_interval(r['vs_baseline'])} | {_num(r['paper_vs_baseline'], signed=True)} |")
    else:
        for col in cols:  # one block per column: the paper's layout, transposed to stay readable
            lines += [f'| {col} | ours | paper | ours - paper |', '|---|---:|---:|---:|']
            for r in (r for r in rows if r['col'] == col):
                lines.append(f"| {r['row']} | {_fmt(r['test_top1'])} | {_num(r['paper'])} | "
                             f"{_num(r['difference'], signed=True)} |")
            lines.append('')
    return '\n'.join(lines).rstrip() + '\n'


def _interval(comparison: Optional[dict]) -> str:
    if comparison is None:
        return '-'
    return f"{comparison['difference']:+.2f} [{comparison['low']:+.2f}, {comparison['high']:+.2f}]"


def _num(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return '-'
    return f'{value:+.2f}' if signed else f'{value:.2f}'


def _plot(data: dict, path: Path) -> None:
    plt = pyplot()
    rows = data['rows']
    labels = [f"{r['row']}\n{r['col']}" if r['col'] != 'top-1' else r['row'] for r in rows]
    means = [r['test_top1']['mean'] if r['test_top1']['mean'] is not None else math.nan for r in rows]
    stds = [r['test_top1']['std'] if r['test_top1']['std'] is not None else math.nan for r in rows]  # n < 2: none
    papers = [r['paper'] if r['paper'] is not None else math.nan for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(rows)), 4.2))
    ax.bar([i - 0.2 for i in x], means, 0.4, yerr=stds, capsize=3, label='ours (mean +- std over seeds)')
    ax.bar([i + 0.2 for i in x], papers, 0.4, label='paper (single run)', alpha=0.6)
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=60, ha='right', fontsize=7)
    ax.set_ylabel('test top-1 (%)')
    ax.set_title(f"{data['title']} on {data['dataset']}", fontsize=9)
    values = [v for v in means + papers if not math.isnan(v)]
    if values:
        ax.set_ylim(max(0.0, min(values) - 5), min(100.0, max(values) + 2))
    low = ax.get_ylim()[0]
    for i, row in enumerate(rows):  # how many runs each bar is, or that the cell has none yet
        n = row['test_top1']['n']
        ax.text(i - 0.2, low, f' n={n}' if n else ' not run yet', rotation=90, ha='center', va='bottom', fontsize=7,
                color='white' if n else 'black')
    ax.legend(fontsize=8)
    ax.grid(True, axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None):
    argv = sys.argv[1:] if argv is None else argv
    debug = '--debug' in argv

    def body():
        args, train_argv = parse(argv)
        return report(Path(args.output)) if args.command == 'report' else sweep(args, train_argv)

    with interrupt_on_termination():
        return run_cli(PROG, body, debug)


if __name__ == '__main__':
    main()
