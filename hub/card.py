"""The model card (README.md) of an exported run: Hub metadata, then the facts, all from results.json."""
import json
from typing import Any, Dict

from timm_spa import paper

DATASET_IDS = {'cifar10': 'cifar10', 'cifar100': 'cifar100', 'tinyimagenet': 'zh-plus/tiny-imagenet'}
RECIPE_KEYS = ('epochs', 'batch_size', 'opt', 'lr', 'momentum', 'weight_decay', 'sched', 'min_lr', 'warmup_epochs',
               'model_ema', 'model_ema_decay', 'amp', 'amp_dtype', 'channels_last', 'img_size', 'val_size',
               'val_split_seed', 'seed', 'workers', 'pretrained')


def _yaml_value(value: Any) -> str:
    return json.dumps(value)  # JSON scalars and lists are valid YAML flow values


def front_matter(results: Dict[str, Any], repo_id: str) -> str:
    data = results['dataset']
    dataset_id = DATASET_IDS.get(data['name'])
    lines = ['---', 'library_name: timm', 'license: apache-2.0', 'pipeline_tag: image-classification',
             'tags:', '- image-classification', '- timm', '- timm-spa', f"- {results['model']}"]
    if dataset_id:
        lines += ['datasets:', f'- {dataset_id}']
    lines += ['metrics:', '- accuracy', 'model-index:', f'- name: {_yaml_value(repo_id.split("/")[-1])}',
              '  results:', '  - task:', '      type: image-classification', '      name: Image Classification',
              '    dataset:', f'      name: {_yaml_value(data["label"])}', f'      type: {dataset_id or data["name"]}',
              '      split: test', '    metrics:']
    for key, name in (('test_top1', 'Top-1 accuracy'), ('test_top5', 'Top-5 accuracy')):
        lines += ['    - type: accuracy', f'      value: {results[key]:.2f}', f'      name: {name}']
    lines.append('---')
    return '\n'.join(lines)


def model_card(results: Dict[str, Any], repo_id: str, has_curves: bool = True) -> str:
    data, args, arch = results['dataset'], results['args'], results['model_args']
    model, tag = results['model'], results.get('tag')
    paper_top1 = paper.TOP1.get(model, {}).get(tag) if tag else None
    kwargs = ', '.join(f'{k}={v!r}' for k, v in arch['model_kwargs'].items())
    hours = results['wall_time_s'] / 3600
    lines = [
        front_matter(results, repo_id), '',
        f'# {repo_id.split("/")[-1]}', '',
        f'`{model}` ({results["param_count"]:,} parameters) trained on {data["label"]} with the recipe of '
        f'*{paper.TITLE}* ({paper.AUTHORS}): a CIFAR-style ResNet from the '
        '[timm-spa](https://pypi.org/project/timm-spa/) plugin for timm'
        + (f', created with `{kwargs}`' if kwargs else '') + '.', '',
        '## Usage', '',
        '```python',
        'import timm, torch',
        f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()',
        'config = timm.data.resolve_data_config({}, model=model)',
        'transform = timm.data.create_transform(**config)',
        'logits = model(transform(image).unsqueeze(0))  # image: a PIL image',
        '```', '',
        '`pip install timm-spa` registers the model family with timm (no import needed).', '',
        '## Results', '',
        '| | top-1 (%) | top-5 (%) |', '|---|---:|---:|',
        f'| this checkpoint, test split ({data["test_images"]:,} images) | {results["test_top1"]:.2f} | '
        f'{results["test_top5"]:.2f} |',
        f'| this checkpoint, validation split ({data["val_images"]:,} images held out of train) | '
        f'{results["val_top1"]:.2f} | {results["val_top5"]:.2f} |' if results.get('val_top5') is not None else
        f'| this checkpoint, validation split ({data["val_images"]:,} images) | {results["val_top1"]:.2f} | - |',
        f'| paper, Table 1 (single run; epochs not stated) | {paper_top1:.2f} | - |' if paper_top1 is not None
        else '| paper, Table 1 | not reported for this data set | - |', '',
        f'Data set: **{data["label"]}**.', '',
    ]
    lines += [f'- {note}' for note in data.get('notes', [])]
    lines += [
        '', '## How the checkpoint was chosen', '',
        f'{results["checkpoint_selection"][0].upper()}{results["checkpoint_selection"][1:]}. The best epoch was '
        f'{results["best_epoch"]} of {results["epochs"]}; the test split was not used for any choice.', '',
        '## Budget', '',
        f'- Epochs: {results["epochs"]}; seeds: 1 (seed {results["seed"]}): a single run, no mean or spread.',
        f'- Hardware: {results["hardware"]}; wall time {hours:.2f} h ({results["wall_time_s"]:.0f} s).',
        f'- Software: {", ".join(f"{k} {v}" for k, v in results["software"].items())}; '
        f'code at commit `{results.get("git_commit", "unknown")}`.', '',
        '## Recipe', '',
        'Every argument of the run. The defaults are the paper\'s recipe: SGD with momentum 0.9, lr 0.1, batch '
        '128, weight decay 5e-4, cosine schedule, pad-4 random crop and horizontal flip, nothing else.', '',
        '| argument | value |', '|---|---|',
    ]
    lines += [f'| `{key}` | `{args[key]}` |' for key in RECIPE_KEYS if key in args]
    lines += [f'| `{key}` | `{value}` |' for key, value in sorted(args.items()) if key not in RECIPE_KEYS]
    if has_curves:
        lines += ['', '## Training curves', '', '![training curves](curves.png)']
    lines += ['', '## Citation', '', '```bibtex', paper.BIBTEX, '```', '']
    return '\n'.join(lines)
