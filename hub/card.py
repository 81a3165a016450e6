"""The model card (README.md) of an exported run: Hub metadata, then the facts, all from the results.

The front matter is built with huggingface_hub's `ModelCardData` and `EvalResult`; the body follows
timm's own cards (Model Details, usage for classification, feature maps and embeddings, citation)
and adds what a budget run must say: the data set's caveats, how the checkpoint was chosen, the
budget, the precision and CPU, and every argument of the run.
"""
import shlex
from typing import Any, Dict, List, Optional, Tuple

import torch
from huggingface_hub import EvalResult, ModelCardData
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from timm_spa import paper
from train.lineage import totals
from train.precision import describe_flags
from train.run_dir import CURVES, DatasetRecord, Results
from train.train import command_flags

from .repository import CHECK_IMAGES

DATASET_IDS = {'cifar10': 'cifar10', 'cifar100': 'cifar100', 'tinyimagenet': 'zh-plus/tiny-imagenet'}
# the Hub data set's name for the split the test numbers were measured on, where it is not 'test'
TEST_SPLIT_NAMES = {'tinyimagenet': 'valid'}
# what a reader must know to compare the test numbers with others' (beyond the copy's own notes)
DATASET_CAVEATS = {
    'tinyimagenet': "Tiny-ImageNet's test images have no public labels: the test split here is the archive's "
                    "official 10,000-image val split (`valid` in zh-plus/tiny-imagenet on the Hub), the usual "
                    'choice, so it was never used to choose the checkpoint; that was chosen on images held out '
                    'of train.',
}
RECIPE_KEYS = ('epochs', 'batch_size', 'opt', 'lr', 'momentum', 'weight_decay', 'sched', 'decay_rate',
               'sched_on_updates',
               'min_lr', 'warmup_epochs', 'warmup_lr', 'smoothing', 'aa', 'reprob', 'remode', 'recount', 'mixup',
               'cutmix', 'mixup_prob', 'mixup_switch_prob', 'mixup_mode', 'mixup_off_epoch', 'dist_bn', 'model_ema',
               'model_ema_decay', 'amp', 'amp_dtype', 'channels_last', 'img_size', 'val_size', 'val_split_seed', 'seed',
               'workers', 'pretrained')
_ACTIVATION_OPS = ('convolution', 'mm', 'addmm', 'bmm', 'baddbmm')  # fvcore's activation count: conv and matmul


class _CountActivations(TorchDispatchMode):
    """Output elements of every convolution and matrix product, as fvcore's activation count."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in _ACTIVATION_OPS:
            self.count += out.numel()
        return out


def model_profile(model: nn.Module, image_size: int) -> Tuple[float, float]:
    """(GMACs, activations in millions) of one image's forward pass at `image_size`."""
    x = torch.zeros(1, 3, image_size, image_size)
    model = model.eval()
    flops = FlopCounterMode(display=False)
    activations = _CountActivations()
    with torch.no_grad(), flops, activations:
        model(x)
    return flops.get_total_flops() / 2 / 1e9, activations.count / 1e6


def card_data(results: Results, repo_id: str) -> ModelCardData:
    data = results.dataset
    dataset_id = DATASET_IDS.get(data.name, data.name)
    evals = [EvalResult(task_type='image-classification', task_name='Image Classification', dataset_type=dataset_id,
                        dataset_name=data.label, dataset_split=TEST_SPLIT_NAMES.get(data.name, 'test'),
                        metric_type='accuracy',
                        metric_value=round(value, 2), metric_name=name)
             for value, name in ((results.test_top1, 'Top-1 accuracy'), (results.test_top5, 'Top-5 accuracy'))]
    return ModelCardData(
        library_name='timm', license='apache-2.0', pipeline_tag='image-classification',
        tags=['image-classification', 'timm', 'timm-spa', results.model],
        datasets=[dataset_id] if data.name in DATASET_IDS else None, metrics=['accuracy'],
        model_name=repo_id.split('/')[-1], eval_results=evals)


def _lineage_lines(results: Results) -> List[str]:
    """What the weights started from, and every epoch and hour behind them (this run's and its ancestors')."""
    lineage = results.lineage
    if not lineage:
        return ['- Lineage: trained from scratch (random initialisation).']
    parent = lineage['parent']
    ids = ', '.join(f'{key} `{parent[key]}`' for key in ('repo_id', 'run_id') if parent.get(key)) or \
        f"`{parent['source']}`"
    lines = [f"- Lineage: started from {ids} (weights SHA-256 `{parent['weights_sha256'][:16]}`), with a fresh "
             'optimizer and schedule.']
    if lineage['totals_known']:
        epochs, seconds = totals(results)
        lines.append(f"- In all: {epochs} epochs ({parent['total_epochs']} before this run, {results.epochs} in it) "
                     f'and {seconds / 3600:.2f} h of training ({parent["total_wall_time_s"] / 3600:.2f} h before '
                     f'this run), on {parent.get("hardware", "-")} before.')
    else:
        lines.append('- In all: unknown: the initial weights came as a bare file, without the record of how they '
                     'were trained.')
    size, parent_size = results.dataset.image_size, parent.get('image_size')
    if parent_size and parent_size != size:
        lines.append(f'- Schedule: progressive resizing: the initial weights were trained at {parent_size} x '
                     f'{parent_size} pixels, this run at {size} x {size} (the model is fully convolutional, so one '
                     'set of weights takes both).')
    return lines


def _parent_recipe_lines(results: Results) -> List[str]:
    """The initial weights' arguments where they differ from this run's: in a staged schedule (e.g. most epochs at
    a lower resolution, then a few at the test size) the first stage is most of the recipe."""
    parent = (results.lineage or {}).get('parent') or {}
    theirs, ours = parent.get('args'), results.args
    if not theirs:
        return []
    keys = [k for k in RECIPE_KEYS if k in theirs or k in ours]
    keys += sorted((set(theirs) | set(ours)) - set(RECIPE_KEYS))

    def shown(args: Dict[str, Any], key: str) -> str:
        return f'`{args[key]}`' if key in args else '-'

    rows = [f'| `{key}` | {shown(theirs, key)} | {shown(ours, key)} |' for key in keys
            if shown(theirs, key) != shown(ours, key)]
    name = f"run `{parent['run_id']}`" if parent.get('run_id') else f"`{parent['source']}`"
    return ['', f'The initial weights ({name}) were trained with the same arguments but these:', '',
            "| argument | initial weights' run | this run |", '|---|---|---|', *rows]


def _shell_word(word: str) -> str:
    """`word` quoted for bash, a leading `~/` left bare so that the shell expands it."""
    return '~/' + shlex.quote(word[2:]) if word.startswith('~/') else shlex.quote(word)


def _shell_lines(head: str, flags: List[List[str]], width: int = 110) -> List[str]:
    """`head` and its flags as bash lines of about `width` characters, a flag never split from its values."""
    lines, line = [], head
    for words in flags:
        part = ' '.join(map(_shell_word, words))
        if len(line) + 1 + len(part) > width:
            lines.append(line + ' \\')
            line = '    ' + part
        else:
            line += ' ' + part
    return lines + [line]


def _training_commands(results: Results, name: str) -> List[str]:
    """The commands that train the weights again from their runs' records and export them as this repository: a
    staged schedule's first stage too, where the run it started from recorded its arguments."""
    parent = (results.lineage or {}).get('parent') or {}
    start, run = results.args.get('initial_checkpoint'), f'runs/{name}'
    lines = []
    if start and parent.get('run_dir') and parent.get('args'):
        lines += _shell_lines('python -m train', [*command_flags(parent['args']), ['--output', start]])
    lines += _shell_lines('python -m train', [*command_flags(results.args), ['--output', run]])
    return lines + _shell_lines('python -m hub export', [[run], ['--output', name]])


def _stopped_lines(results: Results) -> List[str]:
    """What the wall time leaves out: time the process was stopped (SIGSTOP, Ctrl-Z) is not training time."""
    if results.stopped_s is None:
        return ['- Time the process spent stopped (SIGSTOP, Ctrl-Z) was not measured for every epoch (some ran '
                'under an earlier version), so the wall time may include it.']
    if results.stopped_s >= 1:
        return [f'- The wall time leaves out {results.stopped_s / 3600:.2f} h ({results.stopped_s:.0f} s) during which '
                'the process was stopped (SIGSTOP, Ctrl-Z).']
    return []


HISTORY_HEADING = '## Release history'


def history_section(history: List[dict]) -> str:
    """The card's record of the weights this name published before, oldest first."""
    lines = [HISTORY_HEADING, '',
             'The weights behind this name were replaced on purpose; these are the releases they replaced.', '',
             '| replaced on | run id | test top-1 | test top-5 | val top-1 | epochs | hardware, precision | '
             'weights sha256 |', '|---|---|---:|---:|---:|---:|---|---|']
    lines += [f"| {e.get('replaced_on', '-')} | `{e['run_id']}` | {e.get('test_top1', float('nan')):.2f} | "
              f"{e.get('test_top5', float('nan')):.2f} | {e.get('val_top1', float('nan')):.2f} | "
              f"{e.get('epochs', '-')} | {e.get('hardware', '-')}, {e.get('precision', '-')} | "
              f"`{e.get('weights_sha256', '-')[:16]}` |" for e in history]
    return '\n'.join(lines) + '\n'


def _with_section(card: str, heading: str, section: str) -> str:
    """`card` with its section `heading` replaced by `section` where it has one (removed where `section` is
    empty), else with `section` added before the citation."""
    head, found, rest = card.partition(heading + '\n')
    if found:
        _, more, tail = rest.partition('\n## ')  # the old section ends at the next heading of its level
        rest = '## ' + tail if more else ''
        return head + (f'{section}\n' if section and rest else section) + rest
    if not section:
        return card
    head, marker, tail = card.partition('## Citation')
    return f'{head}{section}\n{marker}{tail}' if marker else f'{card}\n{section}'


def with_history(card: str, history: List[dict]) -> str:
    """`card` with its release history section (none where there is no history)."""
    return _with_section(card, HISTORY_HEADING, history_section(history) if history else '')


REMEASURED_HEADING = '## Measured again'


def remeasured_section(entry: dict) -> str:
    """The card's record of `python -m hub remeasure`: these weights on the whole test split, as released and,
    for a network with attention blocks, with each block replaced by the identity (nothing retrained)."""
    lines = [REMEASURED_HEADING, '',
             f"`python -m hub remeasure` measured these weights again on the whole test split ({entry['images']:,} "
             f"images) on {entry['date']}, loaded as a user loads them, in float32 on {entry['measured_on']}.", '',
             '| | top-1 (%) | top-5 (%) |', '|---|---:|---:|',
             f"| as released | {entry['top1']:.2f} | {entry['top5']:.2f} |"]
    ablated = entry.get('without_attention')
    if ablated:
        lines += [f"| each attention block replaced by the identity (its residual branch removed, nothing retrained) "
                  f"| {ablated['top1']:.2f} | {ablated['top5']:.2f} |", '',
                  'The second row is what the trained network gives without what its attention blocks add: how much '
                  'it relies on them.']
    return '\n'.join(lines) + '\n'


def with_remeasured(card: str, entry: Optional[dict]) -> str:
    """`card` with its re-measurement section (none without a record of these weights)."""
    return _with_section(card, REMEASURED_HEADING, remeasured_section(entry) if entry else '')


def transformers_usage(repo_id: str, data: DatasetRecord) -> List[str]:
    """The card's usage through transformers (its TimmWrapper), which builds timm's own evaluation transform from
    config.json: the same preprocessing as the timm snippet, which tests/test_transformers.py checks."""
    return [
        '### With transformers', '',
        "transformers runs the model through its `TimmWrapper` (`pipeline`, `AutoModelForImageClassification`, "
        '`AutoImageProcessor`), with or without `import timm_spa`:', '',
        '```python',
        'from transformers import pipeline',
        '',
        f'classifier = pipeline("image-classification", model="{repo_id}")',
        'print(classifier("image.png"))  # [{"label": ..., "score": ...}, ...], labels by name',
        '```', '',
        '```python',
        'import torch',
        'from PIL import Image',
        'from transformers import AutoImageProcessor, AutoModelForImageClassification',
        '',
        f'processor = AutoImageProcessor.from_pretrained("{repo_id}")',
        f'model = AutoModelForImageClassification.from_pretrained("{repo_id}").eval()',
        'inputs = processor(Image.open("image.png").convert("RGB"), return_tensors="pt")',
        'with torch.no_grad():',
        '    logits = model(**inputs).logits',
        'print(model.config.id2label[logits.argmax(-1).item()])',
        '```', '',
        f"`AutoImageProcessor` builds timm's own evaluation transform from `config.json` (resize to "
        f'{data.image_size} x {data.image_size} pixels, bilinear, centre crop at `crop_pct` 1.0, normalise with mean '
        f'{tuple(data.mean)} and std {tuple(data.std)}): transformers feeds the model exactly what the timm snippet '
        "does, and its logits are the timm model's.", '',
    ]


def _spread_row(model: str, summary: dict, runs: List[dict]) -> str:
    each = ', '.join(f"{r['test_top1']:.2f} ({r['seed']})" for r in runs)
    return f"| `{model}` | {summary['n']} | {summary['mean']:.2f} +- {summary['std']:.2f} | {each} |" \
        if summary['n'] > 1 else f"| `{model}` | 1 | {summary['mean']:.2f} | {each} |"


def seeds_section(seeds: dict) -> List[str]:
    """The spread over the seeds of the run's recipe (`hub export --seeds`), beside the baseline's and the paper's
    difference: what one run cannot say."""
    commits = sorted({run['git_commit'][:7] for run in seeds['runs']})
    lines = ['## Seeds', '',
             f"These weights are one of {seeds['test_top1']['n']} runs of `{seeds['model']}` with the same arguments "
             f"but the seed (code at {', '.join(f'`{c}`' for c in commits)}), from the run records in "
             f"`{seeds['records']}` (`python -m train.sweep report` compares them too):", '',
             '| model | runs | test top-1 (%), mean +- std | each run (seed) |', '|---|---:|---:|---|',
             _spread_row(seeds['model'], seeds['test_top1'], seeds['runs'])]
    if seeds['baseline']:
        lines.append(_spread_row(seeds['baseline'], seeds['baseline_test_top1'], seeds['baseline_runs']))
        vs = seeds['vs_baseline']
        said = (f"{vs['difference']:+.2f} points, 95% confidence interval [{vs['low']:+.2f}, {vs['high']:+.2f}] "
                "(Welch's t)" if vs else 'no interval: fewer than two runs on one side')
        paper_said = f"; the paper's (single runs): {seeds['paper_vs_baseline']:+.2f}" \
            if seeds['paper_vs_baseline'] is not None else ''
        lines += ['', f"Difference from `{seeds['baseline']}`: {said}{paper_said}."]
    return lines + ['']


def model_card(results: Results, repo_id: str, model: nn.Module, has_curves: bool = True,
               seeds: Optional[dict] = None) -> str:
    data, args, arch = results.dataset, results.args, results.model_args
    name = repo_id.split('/')[-1]
    paper_top1 = paper.TOP1.get(results.model, {}).get(results.tag) if results.tag else None
    kwargs = ', '.join(f'{k}={v!r}' for k, v in arch['model_kwargs'].items())
    gmacs, activations = model_profile(model, data.image_size)
    hours = results.wall_time_s / 3600
    precision = results.precision
    flags = f' (CPU flags: {describe_flags(precision["cpu_flags"])})' if precision.get('cpu_flags') else ''
    create = f'"hf-hub:{repo_id}", pretrained=True'
    lines = [
        '---', card_data(results, repo_id).to_yaml(), '---', '',
        f'# {name}', '',
        f'`{results.model}` trained on {data.label} ({data.num_classes} classes): a CIFAR-style ResNet from the '
        f'[timm-spa](https://pypi.org/project/timm-spa/) plugin for timm, from *{paper.TITLE}* ({paper.AUTHORS})'
        + (f', created with `{kwargs}`' if kwargs else '') + '.', '',
        '## Model Details', '',
        '- **Model Type:** Image classification / feature backbone',
        '- **Model Stats:**',
        f'  - Params (M): {results.param_count / 1e6:.1f}',
        f'  - GMACs: {gmacs:.2f}',
        f'  - Activations (M): {activations:.2f}',
        f'  - Image size: {data.image_size} x {data.image_size}',
        '- **Papers:**',
        f'  - {paper.TITLE}: https://arxiv.org/abs/{paper.ARXIV}',
        f'- **Original:** {paper.CODE_URL}',
        f'- **Dataset:** {data.label}', '',
        '## Model Usage', '',
        '`pip install timm-spa` registers the model family with timm (no import needed).', '',
        '### Image Classification', '',
        '```python',
        'import timm, torch',
        'from PIL import Image',
        '',
        'img = Image.open("image.png").convert("RGB")',
        f'model = timm.create_model({create}).eval()',
        'config = timm.data.resolve_model_data_config(model)',
        'transform = timm.data.create_transform(**config, is_training=False)',
        'with torch.no_grad():',
        '    output = model(transform(img).unsqueeze(0))',
        f'top_probabilities, top_indices = torch.topk(output.softmax(dim=1) * 100, k={min(5, data.num_classes)})',
        'labels = model.pretrained_cfg["label_names"]',
        '```', '',
        '### Feature Map Extraction', '',
        '```python',
        f'model = timm.create_model({create}, features_only=True).eval()',
        'with torch.no_grad():',
        '    for feature in model(transform(img).unsqueeze(0)):',
        '        print(feature.shape)  # one map per stage: the stem at full resolution, then /1, /2, /4, /8',
        '```', '',
        '### Image Embeddings', '',
        '```python',
        f'model = timm.create_model({create}, num_classes=0).eval()  # or: forward_features + forward_head',
        'with torch.no_grad():',
        '    embedding = model(transform(img).unsqueeze(0))  # (1, num_features)',
        '    features = model.forward_features(transform(img).unsqueeze(0))',
        '    embedding = model.forward_head(features, pre_logits=True)',
        '```', '',
        *transformers_usage(repo_id, data),
        '## Results', '',
        '| | top-1 (%) | top-5 (%) |', '|---|---:|---:|',
        f'| this checkpoint, test split ({data.test_images:,} images) | {results.test_top1:.2f} | '
        f'{results.test_top5:.2f} |',
        f'| this checkpoint, validation split ({data.val_images:,} images held out of train) | '
        f'{results.val_top1:.2f} | {results.val_top5:.2f} |',
        f'| paper, Table 1 (single run, official data; epochs not stated) | {paper_top1:.2f} | - |'
        if paper_top1 is not None else '| paper, Table 1 | not reported for this data set | - |', '',
        f'Data set: **{data.label}**.', '',
    ]
    lines += [f'- {note}' for note in data.notes]
    if data.name in DATASET_CAVEATS:
        lines.append(f'- {DATASET_CAVEATS[data.name]}')
    lines += [
        '- A single training run (one seed): no mean or seed-to-seed spread was measured, so this card makes no '
        'claim that this model is better or worse than another variant trained the same way.' if seeds is None else
        f'- These weights are a single training run (seed {results.seed}); "Seeds" below gives the spread over '
        f"{seeds['test_top1']['n']} seeds of its recipe, and no claim beyond it is made that this model is better or "
        'worse than another variant trained the same way.',
        '- The test numbers were measured in float32. Evaluated on another CPU, a borderline image may flip, so a '
        're-measurement can differ by one image (0.01 points on 10,000 images).',
        '- Before a release is published, timm-spa measures it again on the whole test split (`python -m hub '
        f'remeasure`); every CI run then re-classifies up to {CHECK_IMAGES:,} test images spread over the split '
        'and compares them with that record.', '',
        *(seeds_section(seeds) if seeds is not None else []),
        '## How the checkpoint was chosen', '',
        f'{results.checkpoint_selection[0].upper()}{results.checkpoint_selection[1:]}. The best epoch was '
        f'{results.best_epoch} of {results.epochs} (counted from 0); the test split was not used for any choice.', '',
        '## Budget', '',
        f'- Epochs: {results.epochs}; seeds: 1 (seed {results.seed}).',
        *_lineage_lines(results),
        f'- Hardware: {results.hardware}; {results.world_size} process(es); wall time {hours:.2f} h '
        f'({results.wall_time_s:.0f} s, training, validation and the test evaluation).',
        *_stopped_lines(results),
        f'- Precision: training in {precision["train"]}, test evaluation in {precision["test"]}{flags}.',
        f'- Software: {", ".join(f"{k} {v}" for k, v in results.software.items())}; code at commit '
        f'`{results.git_commit}`; run id `{results.run_id}`.', '',
        '## Recipe', '',
        "To train these weights again with timm-spa's `python -m train` (in a checkout at the commit above, "
        "`pip install -e '.[train]'`, the data set where `--data-dir` says): each argument the run had at another "
        'value than its default, the first stage first where the weights were trained in two.', '',
        '```bash', *_training_commands(results, name), '```', '',
        "Every argument of the run (`python -m train` of timm-spa). Its defaults are the paper's recipe: SGD "
        'with momentum 0.9, lr 0.1, batch 128, weight decay 5e-4, cosine schedule stepped per epoch, pad-4 random '
        'crop and horizontal flip, nothing else. Paths are named as from the timm-spa checkout the run was '
        'started in, `~` being the home folder of the machine it trained on.', '',
        '| argument | value |', '|---|---|',
    ]
    lines += [f'| `{key}` | `{args[key]}` |' for key in RECIPE_KEYS if key in args]
    lines += [f'| `{key}` | `{value}` |' for key, value in sorted(args.items()) if key not in RECIPE_KEYS]
    lines += _parent_recipe_lines(results)
    if has_curves:
        lines += ['', '## Training curves', '', f'![training curves]({CURVES})']
    lines += ['', '## Citation', '', '```bibtex', paper.BIBTEX, '```', '']
    return '\n'.join(lines)
