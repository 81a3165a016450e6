"""The released weights: every repository folder under releases/ORG/NAME, checked, the table of them, and
their numbers measured again.

The folders are exactly what `python -m hub push --releases releases/` copied there (and what a push to
the Hub uploads); `RELEASED` in `timm_spa/models/published.py` names the same `arch.tag` names.

`releases/remeasured.json` records each release measured again on its whole test split (`python -m hub
remeasure`, minutes per release on a CPU), for the weights' SHA-256: the test top-1 and top-5 (which must
agree with the card) and the top-1 class of `CHECK_IMAGES` test images spread over the split (every k-th, as
test splits are often stored class by class). CI measures only those images (`--check`), compares them with
the record, and refuses a release the record does not cover: the full re-measurement is run and recorded
before a release lands.
"""
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch

from timm_spa import paper
from train.checkpoint import atomic_write, file_sha256
from train.cli import UsageError
from train.data import DATASETS, TransformedSamples, build_loader, build_transforms, load_dataset
from train.distributed import DistEnv
from train.engine import evaluate
from train.lineage import describe, totals
from train.report import hardware, software
from train.train import training_recipe

from .card import REMEASURED_HEADING, with_remeasured
from .release_slot import recover_releases
from .repository import (
    CARD,
    CHECK_IMAGES,
    WEIGHTS,
    Repository,
    RepositoryError,
    check_config,
    read_history,
    read_repository,
)

REMEASURED = 'remeasured.json'
TOLERANCE = 0.02  # points of top-1/top-5 a whole-split re-measurement may differ from the card by
MAX_FLIPS = 2  # images whose top-1 class may differ on another CPU (borderline logits): 0.02 points of 10,000
BOUND_SIGMAS = 5  # an honest card falls outside this many standard deviations about once in 1.7 million checks


def released_repositories(releases: Path) -> List[Repository]:
    """Every repository folder RELEASES/ORG/NAME, each checked: its files belong together and its
    config.json is the one its results give (`check_config`: the labels and preprocessing users get are
    those measured). A release a killed push left parked is put back first (`hub.release_slot`)."""
    releases = Path(releases)
    if not releases.is_dir():
        raise RepositoryError(f'{releases} is not a folder; give the releases folder (releases/ORG/NAME/...).')
    for line in recover_releases(releases):  # what a killed push left, put right before anything reads it
        print(f'note: {line}', file=sys.stderr)
    folders = sorted(p for p in releases.glob('*/*') if p.is_dir() and not p.name.startswith('.'))
    if not folders:
        raise RepositoryError(f'{releases} holds no repositories: expected ORG/NAME folders with model.safetensors, '
                              'config.json and results.json (what `python -m hub export` writes).')
    repos = []
    for folder in folders:
        repo = read_repository(folder)
        read_history(folder)
        check_config(repo)
        repos.append(repo)
    return repos


# Other CIFAR-10 model zoos' ResNet-18 (the CIFAR-style one, 11.17M parameters as `resnet18_cifar`), as
# their own pages publish it: (repository, page, test top-1, budget). Both measure the official test batch and
# keep the checkpoint best on that same test split.
PEERS_CIFAR10_RESNET18 = (
    ('kuangliu/pytorch-cifar', 'https://github.com/kuangliu/pytorch-cifar#accuracy', 93.02,
     '350 epochs, lr 0.1/0.01/0.001 steps'),
    ('huyvnphan/PyTorch_CIFAR10', 'https://github.com/huyvnphan/PyTorch_CIFAR10#statistics-of-supported-models',
     93.07, '100 epochs'),
)


def _recipe_labels(repos: List[Repository]) -> Dict[str, Dict[str, str]]:
    """Per data-set tag, each distinct recipe (as JSON) and its letter, in the order of the releases. Letters run
    on across data sets, so that no two recipes share one (recipes of different data sets never compare)."""
    labels: Dict[str, Dict[str, str]] = {}
    for repo in repos:
        recipe = json.dumps(training_recipe(repo.results), sort_keys=True)
        recipes = labels.setdefault(repo.results.tag, {})
        if recipe not in recipes:
            recipes[recipe] = chr(ord('A') + sum(map(len, labels.values())))
    return labels


def _recipe_notes(labels: Dict[str, Dict[str, str]]) -> List[str]:
    """For each data set whose releases come from more than one recipe, how each differs from the first."""
    notes = []
    for tag, recipes in labels.items():
        if len(recipes) < 2:
            continue
        (first, first_label), *others = [(json.loads(k), v) for k, v in recipes.items()]
        differences = []
        for recipe, label in others:
            keys = sorted(k for k in set(first) | set(recipe) if first.get(k) != recipe.get(k))
            differences.append(f'{label} differs from {first_label} in ' + ', '.join(
                f'`{k}` {recipe.get(k)!r} ({first_label}: {first.get(k)!r})' for k in keys))
        notes += ['', f'The `{tag}` releases come from {len(recipes)} recipes (column recipe): compare rows within '
                      f'one recipe only. Recipe {"; ".join(differences)}.']
    return notes


def _replaced_cell(replaced: List[dict]) -> str:
    """The column of the replaced release: the test top-1 and epochs of the release this one replaced, or '-'."""
    if not replaced:
        return '- | '
    return f"{replaced[-1]['test_top1']:.2f} ({replaced[-1]['epochs']} epochs) | "


def _without_attention_cells(repos: List[Repository]) -> Optional[List[str]]:
    """Each release's whole-split test top-1 with its attention blocks replaced by the identity, from the
    re-measurement of its current weights (`hub remeasure`), '-' where it has none (a plain ResNet); None when no
    release has one."""
    cells = []
    for repo in repos:
        try:
            entry = read_remeasured(repo.folder.parents[1]).get(_repo_id(repo))
        except RepositoryError:
            entry = None
        ablated = entry.get('without_attention') if _of_current_weights(entry, repo) else None
        cells.append(f"{ablated['top1']:.2f}" if ablated else '-')
    return cells if any(cell != '-' for cell in cells) else None


def release_table(repos: List[Repository]) -> str:
    """The table of released weights in docs/releases.md, every number read from the release folders, and what the paper
    and other model zoos publish for the same architectures. Where a data set's releases come from different
    recipes (a new recipe replaces an old one model by model), a column says which, and a note how they differ.
    Where a release replaced an earlier one, a column gives that one's test top-1 and epochs (from its history).
    Where releases were re-measured without their attention blocks, a column gives that top-1."""
    labels = _recipe_labels(repos)
    ablated = _without_attention_cells(repos)
    mixed = any(len(recipes) > 1 for recipes in labels.values())
    replaced = [read_history(repo.folder)[-1:] for repo in repos]  # the release each one replaced, if any
    any_replaced = any(replaced)
    lines = ['| model | tag | params | test top-1 | ' + ('without its block | ' if ablated else '')
             + 'test top-5 | val top-1 | epochs | ' + ('recipe | ' if mixed else '')
             + ('replaced release, test top-1 | ' if any_replaced else '')
             + 'wall time | lineage | hardware, precision | paper top-1 |',
             '|---|---|---:|---:|' + ('---:|' if ablated else '') + '---:|---:|---:|' + ('---|' if mixed else '')
             + ('---|' if any_replaced else '')
             + '---:|---|---|---:|']
    for i, (repo, before) in enumerate(zip(repos, replaced, strict=True)):
        r = repo.results
        ref = paper.TOP1.get(r.model, {}).get(r.tag) if r.tag else None
        epochs, seconds = totals(r)  # everything behind the weights, their ancestors included
        recipe = labels[r.tag][json.dumps(training_recipe(r), sort_keys=True)] + ' | ' if mixed else ''
        earlier = _replaced_cell(before) if any_replaced else ''
        without = f'{ablated[i]} | ' if ablated else ''
        lines.append(
            f'| `{r.model}` | `{r.hub_tag}` | {r.param_count / 1e6:.2f}M | {r.test_top1:.2f} | {without}'
            f'{r.test_top5:.2f} | {r.val_top1:.2f} | {epochs} | {recipe}{earlier}{seconds / 3600:.2f} h | '
            f'{describe(r)} | '
            f"{r.hardware}, {r.precision['train']} | {f'{ref:.2f}' if ref is not None else '-'} |")
    lines += _recipe_notes(labels)
    if any(r.results.tag == 'cifar10' for r in repos):
        peers = '; '.join(f'[{name}]({url}) {top1:.2f} ({budget})'
                          for name, url, top1, budget in PEERS_CIFAR10_RESNET18)
        lines += ['', f'For comparison on CIFAR-10: the paper\'s Table 1 (last column; single runs on the official '
                      f'test batch, epochs not stated), and for the plain CIFAR ResNet-18 other model zoos publish: '
                      f'{peers}; both on the official test batch, each checkpoint chosen on that test split.']
    if any(r.results.tag == 'tinyimagenet' for r in repos):
        lines += ['', "For comparison on Tiny-ImageNet-200: the paper's Table 1 (Tiny-ImageNet column; single runs at "
                      '64x64 on the official archive, its val split as the test split, epochs not stated).']
    return '\n'.join(lines)


def front_table(repos: List[Repository]) -> str:
    """The README's short table of released weights: what a reader choosing weights needs, each row linking its
    card (`release_table` has the rest: top-5, validation, epochs, hours, lineage, hardware, history), and the
    top-1 without its attention blocks where re-measured."""
    ablated = _without_attention_cells(repos)
    lines = ['| model | data | test top-1 | ' + ('without its block | ' if ablated else '') + 'paper top-1 | params | '
             'card |', '|---|---|---:|' + ('---:|' if ablated else '') + '---:|---:|---|']
    for i, repo in enumerate(repos):
        r = repo.results
        ref = paper.TOP1.get(r.model, {}).get(r.tag) if r.tag else None
        folder = repo.folder.resolve()
        card = f'releases/{folder.parent.name}/{folder.name}/README.md'
        paper_top1 = f'{ref:.2f}' if ref is not None else '-'
        without = f'{ablated[i]} | ' if ablated else ''
        lines.append(f'| `{r.model}` | {r.dataset.label} | {r.test_top1:.2f} | {without}{paper_top1} | '
                     f'{r.param_count / 1e6:.2f}M | [{folder.name}]({card}) |')
    return '\n'.join(lines)


def parse_data_dirs(pairs: Sequence[str]) -> Dict[str, str]:
    """`--data NAME=DIR` pairs as {data set name: folder}."""
    dirs: Dict[str, str] = {}
    for pair in pairs:
        name, sep, folder = pair.partition('=')
        if not sep or not folder or name not in DATASETS:
            raise UsageError(f'--data {pair!r}: give NAME=DIR with NAME one of {", ".join(DATASETS)}, e.g. '
                             '--data cifar10=../shared/data/cifar10-jpeg.')
        if name in dirs:
            raise UsageError(f'--data {name}= is given twice ({dirs[name]} and {folder}); give each data set once.')
        dirs[name] = folder
    return dirs


def plausible_whole_split_top1(subset_top1: float, subset: int, whole: int) -> Tuple[float, float]:
    """The whole-split top-1 that a top-1 measured on `subset` of its `whole` images leaves plausible: within
    `BOUND_SIGMAS` standard deviations of a subset drawn at random without replacement (binomial, with the
    finite-population correction). CI's every-k-th subset is stratified by class when the split is stored class by
    class, which only narrows the honest spread. It cannot prove a card right; it refuses one made up against
    its weights (a card claiming 99% for weights whose 1,000 images score 86.6%)."""
    p = min(max(subset_top1 / 100, 0.5 / subset), 1 - 0.5 / subset)  # never a zero-width interval
    sigma = math.sqrt(p * (1 - p) / subset * max(whole - subset, 0) / max(whole - 1, 1)) * 100
    return subset_top1 - BOUND_SIGMAS * sigma, subset_top1 + BOUND_SIGMAS * sigma


def check_stride(images: int) -> int:
    """The step between the test images CI checks: at most `CHECK_IMAGES` of them, spread over the whole split."""
    return max(1, math.ceil(images / CHECK_IMAGES))


class DecodedTestImages:
    """Each release's test split (or every k-th image of it), decoded once per data set, size and step, as the
    runs evaluated it."""

    def __init__(self, data_dirs: Dict[str, str]):
        self.data_dirs = data_dirs
        self.decoded: Dict[tuple, List] = {}

    def batches(self, repo: Repository, stride: int = 1) -> List:
        card = repo.results
        data_dir = self.data_dirs[card.dataset.name]
        key = (card.dataset.name, card.dataset.label, card.dataset.image_size, stride)
        if key in self.decoded:
            return self.decoded[key]
        splits = load_dataset(card.dataset.name, data_dir, card.dataset.val_images, card.dataset.val_split_seed,
                              label=card.args.get('dataset_label'), log=lambda _: None)
        if splits.label != card.dataset.label:
            raise RepositoryError(f'--data {card.dataset.name}={data_dir} is {splits.label}, but {repo.name} was '
                                  f'measured on {card.dataset.label}: give the data set its card names.')
        samples, indices = splits.split('test')
        if len(indices) != card.dataset.test_images:
            raise RepositoryError(f'--data {card.dataset.name}={data_dir} has {len(indices):,} test images, the card '
                                  f'of {repo.name} counts {card.dataset.test_images:,}: give the same copy of the '
                                  'data set.')
        transform = build_transforms(splits, card.dataset.image_size, False)
        loader = build_loader(TransformedSamples(samples, indices[::stride], transform), 250, False, workers=2, seed=0)
        self.decoded[key] = list(loader)
        return self.decoded[key]


def without_attention(model: torch.nn.Module) -> torch.nn.Module:
    """The model with each stage attention block replaced by the identity (the block's residual branch removed,
    nothing retrained): what the trained network gives without what its blocks add."""
    for stage in getattr(model, 'attn_stages', ()):
        getattr(model, f'layer{stage}')[-1] = torch.nn.Identity()
    return model


def measure(repo: Repository, batches: List, ablate: bool = False) -> dict:
    """Top-1, top-5 and every image's top-1 class of the released folder, loaded as a user loads it
    (`local-dir:` with `pretrained=True`), in float32 and the memory format the run measured in; with `ablate`,
    its attention blocks replaced by the identity (`without_attention`)."""
    channels_last = bool(repo.results.args.get('channels_last'))
    model = timm.create_model(f'local-dir:{repo.folder}', pretrained=True)
    if ablate:
        model = without_attention(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    predictions: List[int] = []
    metrics = evaluate(model, batches, DistEnv(), None, channels_last, predictions)
    return dict(images=metrics['count'], top1=metrics['top1'], top5=metrics['top5'], predictions=predictions,
                attn_stages=getattr(model, 'attn_stages', ()))


def read_remeasured(releases: Path) -> Dict[str, dict]:
    path = Path(releases) / REMEASURED
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RepositoryError(f'{path} cannot be read ({e}); restore it from version control or run '
                              '`python -m hub remeasure` again.') from None
    if not isinstance(record, dict) or not all(_is_entry(v) for v in record.values()):
        raise RepositoryError(f'{path} is not a re-measurement record; restore it from version control or run '
                              '`python -m hub remeasure` again.')
    return record


def _is_entry(entry) -> bool:
    """A record entry with every field of its type (an edited one, `"10000"` or `check_stride: 0`, is not)."""
    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 100

    ablated = entry.get('without_attention') if isinstance(entry, dict) else None
    return (isinstance(entry, dict) and isinstance(entry.get('weights_sha256'), str) and count(entry.get('images'))
            and (ablated is None or isinstance(ablated, dict) and number(ablated.get('top1'))
                 and number(ablated.get('top5')))
            and number(entry.get('top1')) and number(entry.get('top5')) and count(entry.get('check_stride'))
            and isinstance(entry.get('check_predictions'), list)
            and all(isinstance(c, int) and not isinstance(c, bool) for c in entry['check_predictions'])
            and len(entry['check_predictions']) == len(range(0, entry['images'], entry['check_stride'])))


def _agrees_with_card(measured: dict, repo: Repository) -> bool:
    """Whether a whole-split top-1 and top-5 are the card's, within `TOLERANCE` points, on as many images."""
    card = repo.results
    return (abs(measured['top1'] - card.test_top1) <= TOLERANCE and abs(measured['top5'] - card.test_top5) <= TOLERANCE
            and measured['images'] == card.dataset.test_images)


def _of_current_weights(entry: Optional[dict], repo: Repository) -> bool:
    """Whether a re-measurement record entry was measured on the weights the release holds now."""
    return entry is not None and entry['weights_sha256'] == file_sha256(repo.folder / WEIGHTS)


def _repo_id(repo: Repository) -> str:
    return f'{repo.folder.parent.name}/{repo.folder.name}'


def remeasured_entry(releases: Path, repo_id: str, repo: Repository) -> Optional[dict]:
    """RELEASES/remeasured.json's entry for the weights `repo` holds, or None (no entry, one of other weights, or
    an unreadable record, which `hub remeasure` replaces)."""
    try:
        entry = read_remeasured(Path(releases)).get(repo_id)
    except RepositoryError:
        return None
    return entry if _of_current_weights(entry, repo) else None


def check_against_remeasured(releases: Path, repo_id: str, repo: Repository) -> None:
    """Refuse numbers that the whole-split re-measurement of the very same weights in RELEASES/remeasured.json
    contradicts: a card says what its weights give (an edited results.json would otherwise reach the card and the
    table, and only CI's later check would catch it)."""
    entry = remeasured_entry(releases, repo_id, repo)
    if entry is not None and not _agrees_with_card(entry, repo):
        card = repo.results
        raise RepositoryError(
            f'{repo.folder / "results.json"} says test top-1 {card.test_top1:.2f} and top-5 {card.test_top5:.2f} '
            f'on {card.dataset.test_images:,} images, but {Path(releases) / REMEASURED} measured these very weights '
            f"at {entry['top1']:.2f} and {entry['top5']:.2f} on {entry['images']:,}: a card says what its weights "
            'give. Export the run again (its own numbers), or run `python -m hub remeasure` if the data changed.')


def needs_remeasure(releases: Path, repo_id: str, repo: Repository) -> bool:
    """Whether RELEASES/remeasured.json lacks what CI asks of `repo` released as `repo_id`: a whole-split
    re-measurement of its very weights that agrees with its card (a push of a new card alone keeps it)."""
    entry = remeasured_entry(releases, repo_id, repo)
    return entry is None or not _agrees_with_card(entry, repo)


def remeasure(releases: Path, data_dirs: Dict[str, str]) -> Dict[str, dict]:
    """Measure every release whose data set is in `data_dirs` on its whole test split and record it in
    RELEASES/remeasured.json; refuse (recording nothing) when a card's numbers are not what its weights give."""
    releases = Path(releases)
    if not data_dirs:
        raise UsageError('name the data: --data NAME=DIR for each data set of the releases, e.g. '
                         '--data cifar10=../shared/data/cifar10-jpeg.')
    repos = released_repositories(releases)
    try:
        old = read_remeasured(releases)
    except RepositoryError:  # measured afresh; only entries of releases not measured now would have been kept
        print(f'note: the earlier {REMEASURED} is unreadable; it is replaced by this measurement')
        old = {}
    test_images, record, wrong = DecodedTestImages(data_dirs), {}, []
    for repo in repos:
        card, started, name = repo.results, time.time(), repo.results.dataset.name
        if name not in data_dirs:  # kept while it still describes the same weights; CI refuses a missing one
            entry = old.get(_repo_id(repo))
            if _of_current_weights(entry, repo):
                record[_repo_id(repo)] = entry
            print(f'{repo.name}: not measured (no --data {name}=DIR); '
                  + ('its earlier record is kept' if _repo_id(repo) in record else 'it has no record'))
            continue
        got = measure(repo, test_images.batches(repo))
        line = (f'{repo.name}: top-1 {got["top1"]:.2f} top-5 {got["top5"]:.2f} on {got["images"]:,} test images '
                f'(card: {card.test_top1:.2f} / {card.test_top5:.2f}), {time.time() - started:.0f} s')
        print(line, flush=True)
        if not _agrees_with_card(got, repo):
            wrong.append(line)
        stride = check_stride(got['images'])
        record[_repo_id(repo)] = dict(
            weights_sha256=file_sha256(repo.folder / WEIGHTS), run_id=card.run_id, dataset=card.dataset.label,
            images=got['images'], top1=got['top1'], top5=got['top5'], measured_on=hardware(torch.device('cpu'), 1),
            software=software(), date=time.strftime('%Y-%m-%d'), check_stride=stride,
            check_predictions=got['predictions'][::stride])
        if got['attn_stages']:
            ablated = measure(repo, test_images.batches(repo), ablate=True)
            record[_repo_id(repo)]['without_attention'] = dict(top1=ablated['top1'], top5=ablated['top5'])
            print(f'{repo.name} without its attention blocks: top-1 {ablated["top1"]:.2f} top-5 '
                  f'{ablated["top5"]:.2f}', flush=True)
    if wrong:
        raise RepositoryError(f'{len(wrong)} release(s) do not measure what their cards say (more than {TOLERANCE} '
                              f'points apart): {"; ".join(wrong)}. {REMEASURED} is unchanged; export and push the '
                              'run again, or check that --data is the data set the card names.')
    path = releases / REMEASURED
    text = '{\n' + ',\n'.join(f' {json.dumps(k)}: {json.dumps(v)}' for k, v in sorted(record.items())) + '\n}\n'
    atomic_write(path, lambda tmp: tmp.write_text(text))  # a line per release: a replaced one is a one-line diff
    print(f'recorded {len(record)} re-measured release(s) in {path}')
    for repo in repos:  # each card shows its record
        card = (repo.folder / CARD).read_text()
        shown = with_remeasured(card, record.get(_repo_id(repo)))
        if shown != card:
            atomic_write(repo.folder / CARD, lambda tmp, text=shown: tmp.write_text(text))
    return record


def check_remeasured(releases: Path, data_dirs: Dict[str, str]) -> Dict[str, dict]:
    """CI's check: every release has a whole-split re-measurement of these very weights that agrees with its
    card, and (where its data is given) its top-1 classes on the `CHECK_IMAGES` test images are still those
    recorded, give or take `MAX_FLIPS` borderline images."""
    releases = Path(releases)
    repos = released_repositories(releases)
    record = read_remeasured(releases)
    fix = f'run `python -m hub remeasure {releases} --data NAME=DIR` (minutes per release) and commit {REMEASURED}.'
    test_images, problems, checked = DecodedTestImages(data_dirs), [], {}
    for repo in repos:
        entry, card = record.get(_repo_id(repo)), repo.results
        if not _of_current_weights(entry, repo):
            problems.append(f'{repo.name} has no whole-split re-measurement of its current weights')
            continue
        if not _agrees_with_card(entry, repo):
            problems.append(f'{repo.name}: its card says top-1 {card.test_top1:.2f} top-5 {card.test_top5:.2f} on '
                            f'{card.dataset.test_images:,} images, the record {entry["top1"]:.2f} / '
                            f'{entry["top5"]:.2f} on {entry["images"]:,}')
            continue
        shown = (repo.folder / CARD).read_text()
        if with_remeasured(shown, entry) != shown:
            problems.append(f'{repo.name}: its card does not show its re-measurement (section '
                            f'"{REMEASURED_HEADING[3:]}")')
            continue
        name = card.dataset.name
        if name not in data_dirs:
            print(f'{repo.name}: recorded {entry["top1"]:.2f} / {entry["top5"]:.2f} on {entry["images"]:,} images; '
                  f'the {len(entry["check_predictions"]):,}-image check is skipped (no --data {name}=DIR)')
            continue
        got = measure(repo, test_images.batches(repo, entry['check_stride']))
        flips = [i for i, (a, b) in enumerate(zip(got['predictions'], entry['check_predictions'], strict=True))
                 if a != b]
        stride = entry['check_stride']
        print(f'{repo.name}: {got["images"]:,} test images (every {stride}) top-1 {got["top1"]:.2f}, {len(flips)} '
              f'prediction(s) differ from the record (at most {MAX_FLIPS})', flush=True)
        if len(flips) > MAX_FLIPS:
            problems.append(f'{repo.name}: {len(flips)} of {got["images"]:,} test images (every {stride}) are '
                            'classified otherwise than recorded (test images '
                            f'{", ".join(str(i * stride) for i in flips[:10])})')
        low, high = plausible_whole_split_top1(got['top1'], got['images'], entry['images'])
        if not low <= entry['top1'] <= high:
            problems.append(f'{repo.name}: {got["images"]:,} of its test images score top-1 {got["top1"]:.2f}, which '
                            f'puts the whole split between {low:.2f} and {high:.2f}; its card and record say '
                            f'{entry["top1"]:.2f}: they were not measured on these weights')
        checked[repo.name] = dict(got, flips=flips)
    if problems:
        raise RepositoryError(f'{"; ".join(problems)}. {fix}')
    return checked
