"""Turn a finished training run into a Hub repository folder.

The folder holds `model.safetensors` and `config.json` written by timm's own `save_for_hf` (so
`create_model("hf-hub:...")` and `local-dir:` rebuild the exact architecture, `attn_stages` and
`attn_kwargs` included), `README.md` (the model card, every number read from the run's
`results.json`), `results.json` itself and the training curves.
"""
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import timm
from timm.models import save_for_hf

from timm_spa.models import hub_repo_id
from train.checkpoint import BEST, CheckpointError, load_weights
from train.report import CURVES, RESULTS

from .card import model_card

REQUIRED = ('model', 'model_args', 'param_count', 'dataset', 'epochs', 'seed', 'best_epoch', 'val_top1',
            'test_top1', 'test_top5', 'checkpoint_selection', 'wall_time_s', 'hardware', 'software', 'args')


class ExportError(ValueError):
    """A run that cannot be published as it is."""


def read_results(run_dir: Path) -> Dict[str, Any]:
    path = run_dir / RESULTS
    if not path.is_file():
        raise ExportError(f'{run_dir} has no {RESULTS}: only a finished `python -m train` run can be exported.')
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f'{path} is not valid JSON ({e}).') from e
    missing = [key for key in REQUIRED if results.get(key) is None]
    if missing:
        raise ExportError(f'{path} is incomplete (missing {", ".join(missing)}): the run did not finish. '
                          'Resume it with `python -m train --resume` before exporting.')
    return results


def default_repo_id(results: Dict[str, Any]) -> str:
    suffix = results.get('tag') or results['dataset']['name']
    return hub_repo_id(f"{results['model']}.{suffix}")


def export_run(run_dir: str, output: str, repo_id: Optional[str] = None, overwrite: bool = False) -> Path:
    """Write the Hub repository folder for `run_dir` into `output`; refuses runs it cannot vouch for."""
    run, out = Path(run_dir), Path(output)
    results = read_results(run)
    repo_id = repo_id or default_repo_id(results)
    arch = results['model_args']
    if arch.get('model') != results['model']:
        raise ExportError(f"{run / RESULTS} describes model {results['model']} but its model_args build "
                          f"{arch.get('model')}: the results file was edited or comes from another run.")
    name = f"{arch['model']}.{results['tag']}" if results.get('tag') else arch['model']  # the tag's config
    model = timm.create_model(name, num_classes=arch['num_classes'], **arch['model_kwargs'])
    try:
        load_weights(model, run / BEST, arch['model'])
    except CheckpointError as e:
        raise ExportError(f'refusing to export {run}: its weights do not match the recorded architecture. {e}') \
            from e
    params = sum(p.numel() for p in model.parameters())
    if params != results['param_count']:
        raise ExportError(f"refusing to export {run}: the recorded architecture has {params:,} parameters, the "
                          f"results file says {results['param_count']:,}.")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f'{out} is not empty; pass --overwrite to replace it or choose another --output.')
        shutil.rmtree(out)

    data = results['dataset']
    size = data['image_size']
    save_for_hf(
        model, out,
        model_config=dict(
            label_names=data['class_names'],
            pretrained_cfg=dict(mean=tuple(data['mean']), std=tuple(data['std']), input_size=(3, size, size),
                                crop_pct=1.0, pool_size=(-(-size // 8), -(-size // 8)), hf_hub_id=repo_id,
                                tag=results.get('tag') or data['name'])),
        model_args=dict(arch['model_kwargs']), safe_serialization=True)
    shutil.copy(run / RESULTS, out / RESULTS)
    if (run / CURVES).is_file():
        shutil.copy(run / CURVES, out / CURVES)
    (out / 'README.md').write_text(model_card(results, repo_id, has_curves=(out / CURVES).is_file()))
    return out
