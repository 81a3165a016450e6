"""Turn a finished training run into a Hub repository folder.

The folder holds `model.safetensors` and `config.json` written by timm's own `save_config_for_hf` (so
`create_model("hf-hub:...")` and `local-dir:` rebuild the exact architecture, `attn_stages` and
`attn_kwargs` included), `README.md` (the model card, every number read from the run's results),
`results.json` itself and the training curves. The architecture comes from the weights' own
metadata; a run whose files disagree (results, weights, checkpoint from different runs) is refused.
"""
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import timm
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf  # not re-exported by timm.models, unlike save_for_hf

from timm_spa.models import hub_repo_id
from train.checkpoint import CheckpointError, current_umask, load_weights, non_finite_tensors, weights_state
from train.run_dir import RESULTS, RUN_FILES, FinishedRun, RunDir, dump_json

from .card import model_card
from .repository import CONFIG, CURVES, REPO_FILES, WEIGHTS, RepositoryError, check_repo_id


def default_repo_id(finished: FinishedRun) -> str:
    return hub_repo_id(finished.results.hub_name)


def _holds_a_run(folder: Path) -> Optional[Path]:
    """The first run directory at or below `folder` (a folder holding run files), if any."""
    for root, _dirs, files in os.walk(folder):
        if set(files) & set(RUN_FILES) - set(REPO_FILES):
            return Path(root)
    return None


def check_output(out: Path, run: Path, overwrite: bool) -> None:
    """Refuse an --output whose replacement would delete a run, or files export did not write."""
    out_r, run_r = out.resolve(), run.resolve()
    if out_r == run_r or run_r.is_relative_to(out_r) or out_r.is_relative_to(run_r):
        where = 'is' if out_r == run_r else 'contains' if run_r.is_relative_to(out_r) else 'lies inside'
        raise RepositoryError(f'--output {out} {where} the run directory {run}: exporting there would overwrite or '
                              'delete the run. Choose a folder outside it, e.g. repos/NAME.')
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


def export_run(run_dir: str, output: str, repo_id: Optional[str] = None, overwrite: bool = False) -> Path:
    """Write the Hub repository folder for `run_dir` into `output`; refuses runs it cannot vouch for."""
    run, out = RunDir(run_dir), Path(output)
    finished = run.read_finished()
    results = finished.results
    arch = results.model_args  # read_finished checked it against the weights' own metadata
    repo_id = check_repo_id(repo_id or default_repo_id(finished))
    check_output(out, run.path, overwrite)
    name = f"{arch['model']}.{results.tag}" if results.tag else arch['model']  # the tag's pretrained config
    model = timm.create_model(name, num_classes=arch['num_classes'], **arch['model_kwargs'])
    try:
        load_weights(model, run.best, arch['model'])
    except CheckpointError as e:
        raise RepositoryError(f'refusing to export {run}: its weights do not match the recorded architecture. '
                              f'{e}') from e
    state = weights_state(model)
    if non_finite_tensors(state):
        raise RepositoryError(f'refusing to export {run}: {run.best} holds NaN or infinite weights.')
    params = sum(p.numel() for p in model.parameters())
    if params != results.param_count:
        raise RepositoryError(f'refusing to export {run}: the recorded architecture has {params:,} parameters, '
                              f'the results file says {results.param_count:,}.')

    data = results.dataset
    size = data.image_size
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
    umask = current_umask()
    try:
        # timm's config.json (architecture arguments, pretrained config); one weights file, with what ties it to
        # the run and its numbers (timm's save_for_hf would write the same tensors once more, without them)
        save_config_for_hf(
            model, str(staging / CONFIG),
            model_config=dict(
                label_names=data.class_names,
                pretrained_cfg=dict(mean=tuple(data.mean), std=tuple(data.std), input_size=(3, size, size),
                                    crop_pct=1.0, pool_size=(-(-size // 8), -(-size // 8)), hf_hub_id=repo_id,
                                    tag=results.hub_tag)),
            model_args=dict(arch['model_kwargs']))
        save_file(state, str(staging / WEIGHTS), metadata=dict(
            format='pt', run_id=results.run_id, epoch=str(results.best_epoch), arch=dump_json(arch)))
        (staging / RESULTS).write_text(dump_json(results.to_dict()))
        if run.curves.is_file():
            shutil.copy(run.curves, staging / CURVES)
        (staging / 'README.md').write_text(model_card(results, repo_id, model, has_curves=run.curves.is_file()))
        for path in (staging, *staging.iterdir()):  # a folder like any other, not mkdtemp's private one
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        if out.exists():
            shutil.rmtree(out)  # check_output allowed it: an exported repository, nothing else
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out
