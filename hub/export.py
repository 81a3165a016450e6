"""Turn a finished training run into a Hub repository folder, or write an exported one anew.

The folder holds `model.safetensors` and `config.json` written by timm's own `save_config_for_hf` (so
`create_model("hf-hub:...")` and `local-dir:` rebuild the exact architecture, `attn_stages` and
`attn_kwargs` included), `README.md` (the model card, every number read from the run's results),
`results.json` itself and the training curves. The architecture comes from the weights' own
metadata; a run whose files disagree (results, weights, checkpoint from different runs) is refused.

Given an exported repository (a release) instead of a run, export writes its config and card anew from its
results around the very same weights file, byte for byte: how a release takes a fix of its config or card
without a new release (`hub push` then sees the same weights and keeps the history as it is).

What is published names no place on the training machine: the paths among a run's arguments and its
lineage are written as `portable_path` names them, the rest of its record (every number) as it is.
"""
import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
from safetensors.torch import save_file

from timm_spa.models import hub_repo_id
from train.checkpoint import CheckpointError, current_umask, load_weights, non_finite_tensors, weights_state
from train.cli import UsageError
from train.lineage import with_parent_arguments
from train.report import CHECKOUT
from train.run_dir import RESULTS, RUN_FILES, Results, RunDir, dump_json
from train.sweep import seed_spread

from .card import model_card
from .repository import (
    CONFIG,
    CURVES,
    REPO_FILES,
    SEEDS,
    WEIGHTS,
    RepositoryError,
    check_repo_id,
    read_repository,
    write_config,
)


@dataclass
class _Source:
    """What an export is made from: a finished run, or an exported repository."""
    path: Path
    results: Results
    weights: Path
    curves: Path
    is_repository: bool
    repo_id: str  # the Hub id it was exported for; for a run, the project's for its name


def _read_source(path: Path) -> _Source:
    if (path / WEIGHTS).is_file() or (path / CONFIG).is_file():
        repo = read_repository(path, allow_repeated_args=True)
        exported_for = repo.config.get('pretrained_cfg', {}).get('hf_hub_id') or default_repo_id(repo.results)
        return _Source(path, repo.results, path / WEIGHTS, path / CURVES, True, exported_for)
    run = RunDir(path)
    results = run.read_finished().results
    return _Source(path, results, run.best, run.curves, False, default_repo_id(results))


def portable_path(value: Any, home: Path, checkout: Path) -> Any:
    """An absolute path as a published record names it: under the home folder as `~/...`; else, beside the
    timm-spa checkout, relative to it (as the README's commands, run from the checkout, name `../shared/...`);
    else as it is. Anything else (a relative path, `hf-hub:ORG/NAME`, a number) as it is."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    path = Path(os.path.normpath(value))
    if path.is_relative_to(home):
        return str(Path('~') / path.relative_to(home)) if path != home else '~'
    if checkout.parent != Path(checkout.anchor) and path.is_relative_to(checkout.parent):
        return os.path.relpath(path, checkout)
    return value


def _path_holders(record: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The parts of a results record whose values may be paths: its arguments, its lineage's parent and the
    parent's arguments."""
    parent = (record.get('lineage') or {}).get('parent')
    return [record['args']] + ([parent] if parent else []) + ([parent['args']] if parent and 'args' in parent else [])


def portable_record(record: Dict[str, Any], home: Optional[Path] = None, checkout: Path = CHECKOUT) -> Dict[str, Any]:
    """A results record with the paths of its arguments (`--data-dir`, `--decode-cache`,
    `--initial-checkpoint`, ...) and of its lineage's parent written by `portable_path`; every number as it
    is. The machine's paths say nothing about the weights and do not exist for a reader."""
    home = home or Path.home()
    out = copy.deepcopy(record)
    for holder in _path_holders(out):
        holder.update({k: portable_path(v, home, checkout) for k, v in holder.items()})
    return out


def machine_paths(record: Dict[str, Any]) -> List[str]:
    """The values of a results record that `portable_record` rewrites: paths of the machine that trained it."""
    pairs = zip(_path_holders(record), _path_holders(portable_record(record)), strict=True)
    return sorted({str(v) for held, written in pairs for k, v in held.items() if written[k] != v})


def default_repo_id(results: Results) -> str:
    return hub_repo_id(results.hub_name)


def _holds_a_run(folder: Path) -> Optional[Path]:
    """The first run directory at or below `folder` (a folder holding run files), if any."""
    for root, _dirs, files in os.walk(folder):
        if set(files) & set(RUN_FILES) - set(REPO_FILES):
            return Path(root)
    return None


def check_output(out: Path, run: Path, overwrite: bool, what: str = 'run') -> None:
    """Refuse an --output whose replacement would delete a run (or the repository exported from), or files export
    did not write."""
    out_r, run_r = out.resolve(), run.resolve()
    if out_r == run_r or run_r.is_relative_to(out_r) or out_r.is_relative_to(run_r):
        where = 'is' if out_r == run_r else 'contains' if run_r.is_relative_to(out_r) else 'lies inside'
        raise RepositoryError(f'--output {out} {where} the {what} {run}: exporting there would overwrite or delete the '
                              f'{what}. Choose a folder outside it, e.g. repos/NAME.')
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise RepositoryError(f'{out} is not empty; pass --overwrite to replace it or choose another --output.')
    inner = _holds_a_run(out)
    if inner is not None:
        raise RepositoryError(f'--output {out} holds a training run ({inner}); --overwrite never deletes runs. '
                              'Choose another --output.')
    foreign = sorted(p.name for p in out.iterdir() if p.name not in REPO_FILES and p.name != '.git')
    if foreign:
        raise RepositoryError(f'--output {out} holds files export did not write ({", ".join(foreign[:5])}); '
                              '--overwrite only replaces an exported repository. Choose another --output.')


def _seeds(src: _Source, results: Results, seeds: Optional[str]) -> Optional[dict]:
    """The seeds record of the export: from the run records under `seeds` (`train.sweep.seed_spread`, the folder
    named as `portable_path` names it), else the repository's own, else None."""
    if seeds:
        folder = Path(seeds).expanduser().resolve()
        if not folder.is_dir():
            raise UsageError(f'--seeds {seeds}: no such folder (the run records of the seeds to compare).')
        return dict(seed_spread(folder, results), records=portable_path(str(folder), Path.home(), CHECKOUT))
    if not (src.is_repository and (src.path / SEEDS).is_file()):
        return None
    try:
        record = json.loads((src.path / SEEDS).read_text())
        own = results.run_id in [run['run_id'] for run in record['runs']]
    except (ValueError, TypeError, KeyError) as e:
        raise RepositoryError(f'{src.path / SEEDS} is not a seeds record ({e!r}); restore it, or export again with '
                              '--seeds FOLDER.') from None
    if not own:
        raise RepositoryError(f'{src.path / SEEDS} does not list run {results.run_id}, whose weights these are: it '
                              "belongs to another release. Export again with --seeds FOLDER of this run's seeds.")
    return record


def export_run(source: str, output: str, repo_id: Optional[str] = None, overwrite: bool = False,
               seeds: Optional[str] = None) -> Path:
    """Write the Hub repository folder for `source` (a finished run directory, or an exported repository whose
    config and card are written anew around the same weights file) into `output`; refuses what it cannot vouch
    for. `seeds`: a folder of run records (`train.sweep.seed_spread`) whose spread over seeds goes on the card and
    into seeds.json; an exported repository keeps its own."""
    src, out = _read_source(Path(source).expanduser()), Path(output).expanduser()
    # a repository's record as published (its bytes are kept where nothing in it changes), or the run's
    held = json.loads((src.path / RESULTS).read_text()) if src.is_repository else \
        with_parent_arguments(src.results.to_dict())
    record = portable_record(held)
    results = Results.from_dict(record)
    arch = results.model_args  # checked against the weights' own metadata
    repo_id = check_repo_id(repo_id or src.repo_id)
    check_output(out, src.path, overwrite, 'repository' if src.is_repository else 'run')
    spread = _seeds(src, results, seeds)
    name = f"{arch['model']}.{results.tag}" if results.tag else arch['model']  # the tag's pretrained config
    model = timm.create_model(name, num_classes=arch['num_classes'], **arch['model_kwargs'])
    try:
        load_weights(model, src.weights, arch['model'])
    except CheckpointError as e:
        raise RepositoryError(f'refusing to export {src.path}: its weights do not match the recorded architecture. '
                              f'{e}') from e
    state = weights_state(model)
    if non_finite_tensors(state):
        raise RepositoryError(f'refusing to export {src.path}: {src.weights} holds NaN or infinite weights.')
    params = sum(p.numel() for p in model.parameters())
    if params != results.param_count:
        raise RepositoryError(f'refusing to export {src.path}: the recorded architecture has {params:,} parameters, '
                              f'the results file says {results.param_count:,}.')

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
    umask = current_umask()
    try:
        write_config(model, staging / CONFIG, results, repo_id)
        if src.is_repository:  # the published bytes, untouched
            shutil.copyfile(src.weights, staging / WEIGHTS)
        else:  # one weights file, with what ties it to the run and its numbers
            save_file(state, str(staging / WEIGHTS), metadata=dict(
                format='pt', run_id=results.run_id, epoch=str(results.best_epoch), arch=dump_json(arch)))
        if src.is_repository and record == held:  # the published record, untouched
            shutil.copyfile(src.path / RESULTS, staging / RESULTS)
        else:  # a run's record, or a release's that named the training machine's paths: only those rewritten
            (staging / RESULTS).write_text(dump_json(record))
        if src.curves.is_file():
            shutil.copy(src.curves, staging / CURVES)
        if spread is not None and not seeds:  # the repository's own record, untouched
            shutil.copyfile(src.path / SEEDS, staging / SEEDS)
        elif spread is not None:
            (staging / SEEDS).write_text(dump_json(spread))
        (staging / 'README.md').write_text(model_card(results, repo_id, model, has_curves=src.curves.is_file(),
                                                      seeds=spread))
        for path in (staging, *staging.iterdir()):  # a folder like any other, not mkdtemp's private one
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        if out.exists():
            shutil.rmtree(out)  # check_output allowed it: an exported repository, nothing else
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out
