"""Where a run's initial weights come from (`--initial-checkpoint`), and what is behind them.

timm's `train.py` calls the flag `--initial-checkpoint`: start from given weights with a fresh optimizer
and schedule. Here it takes a weights file, a run directory (its chosen weights), an exported or released
repository folder, `hf-hub:ORG/NAME`, or a published `arch.tag`. The parent's record (run id or repo id,
its epochs and hours, its own parent's totals, and its arguments) goes into the run's `results.json` as `lineage`,
so a card can state every epoch, hour and argument behind its weights, not only the last run's.
"""
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from torch import nn

from timm_spa.models import hub_repo_id, published_names

from .checkpoint import CheckpointError, file_sha256, load_weights, weights_metadata
from .run_dir import REPO_WEIGHTS, RESULTS, Results, RunDir, RunError

HF_HUB_PREFIX = 'hf-hub:'


def totals(results: Results) -> Tuple[int, float]:
    """Epochs and seconds behind a run's weights, its ancestors' included."""
    lineage = results.lineage or {}
    return lineage.get('total_epochs', results.epochs), lineage.get('total_wall_time_s', results.wall_time_s)


def _hub_files(repo_id: str) -> Tuple[Path, Path]:
    from huggingface_hub import hf_hub_download
    try:
        return (Path(hf_hub_download(repo_id, REPO_WEIGHTS)), Path(hf_hub_download(repo_id, RESULTS)))
    except Exception as e:  # any failure to fetch is named with the repository and the endpoint
        from huggingface_hub import constants
        raise CheckpointError(f'--initial-checkpoint: cannot fetch {repo_id} from {constants.ENDPOINT} '
                              f'({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e}). '
                              'Check HF_ENDPOINT (e.g. `python -m hub serve releases/`), or give a local file.') \
            from None


def resolve(spec: str) -> Tuple[Path, Optional[Results], Dict[str, Any]]:
    """The weights file `spec` names, the results that describe it (None for a bare file), and where it is."""
    path = Path(spec).expanduser()
    if spec.startswith(HF_HUB_PREFIX) or (not path.exists() and spec in published_names()):
        repo_id = spec[len(HF_HUB_PREFIX):] if spec.startswith(HF_HUB_PREFIX) else hub_repo_id(spec)
        weights, results_file = _hub_files(repo_id)
        return weights, RunDir(results_file.parent).read_results(), dict(repo_id=repo_id)
    if path.is_dir():
        run = RunDir(path)
        if run.best.is_file():  # a finished training run: its weights chosen on the validation split
            return run.best, run.read_finished(check_checkpoint=False).results, dict(run_dir=str(path))
        if (path / REPO_WEIGHTS).is_file():  # an exported or released repository folder
            results = run.read_results()
            if weights_metadata(path / REPO_WEIGHTS).get('run_id') != results.run_id:
                raise RunError(f'--initial-checkpoint {spec}: its {REPO_WEIGHTS} and {RESULTS} come from different '
                               'runs; export the run again.')
            return path / REPO_WEIGHTS, results, dict(folder=str(path))
        raise CheckpointError(f'--initial-checkpoint {spec} is a folder without weights: give a weights file, a '
                              'finished run directory, a repository folder, hf-hub:ORG/NAME or a published name '
                              f'({", ".join(published_names()) or "none yet"}).')
    if path.is_file():
        return path, None, dict(file=str(path))
    raise CheckpointError(f'--initial-checkpoint {spec}: no such file or folder, and not a published name '
                          f'({", ".join(published_names()) or "none yet"}) or hf-hub:ORG/NAME.')


def load_initial_checkpoint(model: nn.Module, spec: str, model_name: str) -> Dict[str, Any]:
    """Load the weights `spec` names into `model` (strictly) and return the lineage record of the parent."""
    weights, results, where = resolve(spec)
    try:
        load_weights(model, weights, model_name)
    except CheckpointError as e:
        raise CheckpointError(f'--initial-checkpoint {spec}: {e}') from None
    parent: Dict[str, Any] = dict(source=spec, **where, weights_sha256=file_sha256(weights))
    if results is not None:
        epochs, seconds = totals(results)
        parent.update(run_id=results.run_id, model=results.model, dataset=results.dataset.label,
                      epochs=results.epochs, total_epochs=epochs, total_wall_time_s=seconds,
                      test_top1=results.test_top1, hardware=results.hardware, image_size=results.dataset.image_size,
                      args=results.args)
    elif weights.suffix == '.safetensors':
        meta = weights_metadata(weights)
        parent.update({k: meta[k] for k in ('run_id', 'epoch') if k in meta})
    return parent


def with_parent_arguments(record: Dict[str, Any]) -> Dict[str, Any]:
    """A run's results record with its parent's arguments in its lineage: runs started before the parent's
    arguments were recorded get them from the parent's run directory where the lineage names it, while that still
    holds the same run (else the record as it is)."""
    parent = (record.get('lineage') or {}).get('parent') or {}
    if 'args' in parent or not parent.get('run_dir') or not parent.get('run_id'):
        return record
    try:
        results = RunDir(Path(parent['run_dir']).expanduser()).read_results()
    except RunError:
        return record
    if results.run_id != parent['run_id']:
        return record
    return dict(record, lineage=dict(record['lineage'], parent=dict(parent, args=results.args)))


def lineage_record(parent: Optional[Dict[str, Any]], epochs: int, wall_time_s: float) -> Optional[Dict[str, Any]]:
    """The `lineage` of results.json: the parent, and the totals behind this run's weights (None from scratch).

    A parent whose epochs are unknown (a bare weights file) leaves the totals at this run's own, and says so.
    """
    if parent is None:
        return None
    known = 'total_epochs' in parent
    return dict(parent=parent, totals_known=known,
                total_epochs=epochs + (parent['total_epochs'] if known else 0),
                total_wall_time_s=wall_time_s + (parent['total_wall_time_s'] if known else 0.0))


def describe_parent(parent: Dict[str, Any]) -> str:
    """The parent in a few words: its repo id, run id or file, the epochs behind it where known, and the image
    size its own run trained at (a progressive-resizing schedule shows in the table)."""
    name = parent.get('repo_id') or (f"run {parent['run_id']}" if parent.get('run_id') else parent['source'])
    if 'total_epochs' not in parent:
        return f'{name}, epochs unknown'
    total, size = parent['total_epochs'], parent.get('image_size')
    if not size:
        return f'{name}, {total} epochs'
    own = parent['epochs']  # the parent's own run; its ancestors' sizes are in their own records
    return f'{name}, {total} epochs at {size}x{size}' if own == total else \
        f'{name}, {total} epochs, the last {own} at {size}x{size}'


def describe(results: Results) -> str:
    """One line for cards and tables: 'from scratch', or the parent and the totals."""
    lineage = results.lineage
    if not lineage:
        return 'from scratch'
    total = f" = {lineage['total_epochs']} epochs" if lineage['totals_known'] else ' epochs (in all: unknown)'
    return f"from {describe_parent(lineage['parent'])}; + {results.epochs}{total}"
