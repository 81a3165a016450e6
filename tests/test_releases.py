"""The released weights in releases/: served as a Hub, loaded with pretrained=True, and their numbers measured again.

Every release folder is checked (its files belong together, its config builds), served with `hub serve`,
loaded through `timm.create_model(..., pretrained=True)` (and torch.hub) in a fresh interpreter, and
compared with the folder's own file. releases/remeasured.json must hold a whole-split re-measurement of
exactly these weights that agrees with each card (`python -m hub remeasure`, run before a release lands),
and the 1,000 test images CI re-measures (every 10th) must be classified as that record says. Where a
release's data set is absent (../shared/data/cifar10-jpeg in a user's own clone; Tiny-ImageNet outside
~/data/tiny-imagenet-200 or $TIMM_SPA_TINYIMAGENET) that check is skipped, saying so.
"""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from conftest import ROOT, TINY_IMAGENET
from safetensors.torch import load_file

from hub.card import with_history, with_remeasured
from hub.export import export_run
from hub.releases import (
    check_remeasured,
    front_table,
    plausible_whole_split_top1,
    read_remeasured,
    release_table,
    released_repositories,
)
from hub.repository import read_history
from hub.serve import HubServer, by_layout
from timm_spa.models import HF_HUB_ORG, MODEL_NAMES, PRETRAINED_TAGS, PretrainedWeightsUnavailable, published_names
from train.lineage import totals
from train.sweep import seed_spread
from train.train import training_recipe

RELEASES = ROOT / 'releases'
# where each data set of the releases is; a copy that is absent skips its check, saying so
DATA = {'cifar10': ROOT.parent / 'shared' / 'data' / 'cifar10-jpeg', 'tinyimagenet': TINY_IMAGENET}
# what each data set's releases were measured on (a copy, named as such on the card)
DATA_LABELS = {'cifar10': 'CIFAR-10 (JPEG q75 copy)',
               'tinyimagenet': 'Tiny-ImageNet-200 (GitHub copy of the CS231n archive)'}

LOAD = """
import json, sys, torch, timm
names = json.loads(sys.argv[1])
inputs = torch.load(sys.argv[2], weights_only=True)  # a batch per image size
out = {}
for name in names:
    model = timm.create_model(name, pretrained=True).eval()
    with torch.no_grad():  # each at the input size its pretrained config states
        out[name] = model(inputs[model.pretrained_cfg['input_size'][-1]]).tolist()
hub = torch.hub.load(sys.argv[4], names[0].split('.')[0], source='local', pretrained=True,
                     pretrained_cfg=names[0].split('.')[1]).eval()
with torch.no_grad():
    out['torch.hub'] = hub(inputs[hub.pretrained_cfg['input_size'][-1]]).tolist()
json.dump(out, open(sys.argv[3], 'w'))
"""


@pytest.fixture(scope='module')
def releases():
    return released_repositories(RELEASES) if RELEASES.is_dir() else []


@pytest.fixture(scope='module')
def released(releases):
    if not releases:
        pytest.skip('releases/ holds no release yet')
    return releases


def test_released_in_code_is_exactly_the_release_folders(releases):
    """The library's RELEASED (code) names exactly the folders of releases/; timm lists exactly those."""
    released = sorted(r.folder.name for r in releases)
    assert all(r.folder.parent.name == HF_HUB_ORG for r in releases)
    assert sorted(published_names()) == released, 'a release folder and RELEASED in timm_spa/models/published.py differ'
    assert sorted(n for n in timm.list_pretrained() if n.split('.')[0] in MODEL_NAMES) == released
    # timm's own vit_pe_spatial_* match '*_spa*' too: ours are the resnet*_spa names
    assert timm.list_pretrained('resnet*_spa*') == [n for n in released if '_spa.' in n]
    unreleased = next(f'{m}.{t}' for m in MODEL_NAMES for t in PRETRAINED_TAGS if f'{m}.{t}' not in released)
    with pytest.raises(PretrainedWeightsUnavailable, match=unreleased.replace('.', '\\.')):
        timm.create_model(unreleased, pretrained=True)


def test_release_folders_hold_exactly_what_push_uploads(released):
    for repo in released:
        held = sorted(p.name for p in repo.folder.iterdir() if p.name != 'seeds.json')  # seeds.json where measured
        assert held == ['README.md', 'config.json', 'curves.png', 'history.json', 'model.safetensors',
                        'results.json'], repo.folder
        assert ('## Seeds' in (repo.folder / 'README.md').read_text()) == (repo.folder / 'seeds.json').is_file()
        history = read_history(repo.folder)  # a replaced release is on the card too
        assert ('## Release history' in (repo.folder / 'README.md').read_text()) == bool(history)
        assert all(h['run_id'] != repo.results.run_id for h in history)
        assert repo.results.dataset.label == DATA_LABELS[repo.results.tag] == DATA_LABELS[repo.results.dataset.name]
        weights = load_file(repo.folder / 'model.safetensors')
        assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
        card = (repo.folder / 'README.md').read_text()
        assert f'{repo.results.test_top1:.2f}' in card and 'single training run' in card
    # a data set's releases share one recipe, budget and seed, or the table says which rows share which
    table = release_table(released)
    for dataset in {r.results.tag for r in released}:
        recipes = {json.dumps(training_recipe(r.results), sort_keys=True) for r in released if r.results.tag == dataset}
        assert len(recipes) == 1 or f'The `{dataset}` releases come from {len(recipes)} recipes' in table, dataset


def _strings(value):
    """Every string in a parsed JSON value."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_release_folders_are_what_export_writes_today_and_name_no_machine_path(released, tmp_path):
    """Each release's config, card and record are what `hub export` writes for it now around the same weights (a
    card gone stale since, or a record naming where its run lay on the training machine, fails here; `hub export
    FOLDER` then `hub push` mends it without a new release), and nothing published is an absolute path."""
    remeasured = read_remeasured(RELEASES)
    for repo in released:
        record = json.loads((repo.folder / 'results.json').read_text())
        assert not [s for s in _strings(record) if os.path.isabs(s)], repo.folder
        fresh = export_run(str(repo.folder), str(tmp_path / repo.folder.name))
        for name in ('config.json', 'results.json', 'model.safetensors', 'curves.png'):
            assert (fresh / name).read_bytes() == (repo.folder / name).read_bytes(), (repo.folder, name)
        card = with_remeasured(with_history((fresh / 'README.md').read_text(), read_history(repo.folder)),
                               remeasured[f'{repo.folder.parent.name}/{repo.folder.name}'])
        assert card == (repo.folder / 'README.md').read_text(), repo.folder
        if (repo.folder / 'seeds.json').is_file():  # the spread over seeds is what the committed records give
            seeds = json.loads((repo.folder / 'seeds.json').read_text())
            assert seed_spread(ROOT / seeds.pop('records'), repo.results) == seeds, repo.folder


def test_committed_records_of_released_runs_are_the_releases_records(released):
    """docs/runs keeps the records behind the README's run comparisons; where one is a released run's, it is that
    release's results.json byte for byte, so a comparison never shows numbers its release no longer has."""
    by_run = {repo.results.run_id: repo.folder for repo in released}
    records = {path: json.loads(path.read_text())['run_id'] for path in (ROOT / 'docs' / 'runs').rglob('results.json')}
    matched = {path: by_run[run_id] for path, run_id in records.items() if run_id in by_run}
    assert matched, 'no record in docs/runs is of a released run'
    for path, folder in matched.items():
        assert path.read_bytes() == (folder / 'results.json').read_bytes(), (path, folder)


def test_release_tables_are_generated_from_the_releases(releases):
    """The README's short table and docs/releases.md's full one: `python -m hub table releases/ [--short]`."""
    assert front_table(releases) in (ROOT / 'README.md').read_text()
    assert release_table(releases) in (ROOT / 'docs' / 'releases.md').read_text()


def test_table_into_a_closed_pipe_is_quiet(released):
    """`python -m hub table releases/ | head -1`: the reader leaving early is no error worth a traceback."""
    done = subprocess.run(['bash', '-c', 'set -o pipefail; "$0" -m hub table releases/ | true', sys.executable],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.stderr == '' and done.returncode == 141


def test_table_marks_each_rows_recipe_while_a_new_recipe_replaces_an_old_one(released):
    """Releasing v2 model by model leaves a data set with two recipes for a while: the table then says which row
    has which, and how they differ in what was trained (not where the data lay)."""
    cifar = next(r for r in released if r.folder.name == 'resnet18_cifar.cifar10')
    base = dict(cifar.results.args, epochs=15, sched='cosine')  # an old recipe, whichever the release has

    def trained_with(repo, **changes):
        args = dict(base, model=repo.results.model, **changes)
        return dataclasses.replace(repo, results=dataclasses.replace(repo.results, args=args))

    one = [trained_with(r) if r.results.tag == 'cifar10' else r for r in released]
    assert '| recipe |' not in release_table(one)  # one recipe per data set: no column
    v2 = {'resnet18_spa.cifar10': dict(epochs=30, sched='poly', data_dir='/elsewhere', workers=9)}
    table = release_table([trained_with(r, **v2[r.folder.name]) if r.folder.name in v2 else r for r in one])
    spa = next(r for r in released if r.folder.name == 'resnet18_spa.cifar10')
    rows = {line.split(' | ')[0] + ' ' + line.split(' | ')[1]: line for line in table.splitlines()
            if line.startswith('| `')}
    assert f' | {spa.results.epochs} | B | ' in rows['| `resnet18_spa` `cifar10`']  # the run's own epochs
    assert f' | {cifar.results.epochs} | A | ' in rows['| `resnet18_cifar` `cifar10`']
    tin = next(r for r in released if r.folder.name == 'resnet18_spa.tinyimagenet')
    assert f' | {totals(tin.results)[0]} | C | ' in rows['| `resnet18_spa` `tinyimagenet`']  # a letter of its own
    note = next(line for line in table.splitlines() if line.startswith('The `cifar10` releases come from 2 recipes'))
    assert "`epochs` 30 (A: 15)" in note and "`sched` 'poly' (A: 'cosine')" in note
    assert 'data_dir' not in note and 'workers' not in note
    assert 'tinyimagenet` releases come from' not in table


def test_table_gives_the_release_each_row_replaced(released, tmp_path):
    """A release that replaced an earlier one shows that one's test top-1 and epochs (the latest of its history)
    beside its own; a table where no release replaced another has no such column."""
    def moved(repo, history, state):
        folder = tmp_path / state / repo.folder.name
        folder.mkdir(parents=True)
        if history:
            (folder / 'history.json').write_text(json.dumps(history))
        return dataclasses.replace(repo, folder=folder)

    assert 'replaced release' not in release_table([moved(r, [], 'none') for r in released])
    older = [dict(run_id='a' * 32, test_top1=80.004, epochs=5), dict(run_id='b' * 32, test_top1=87.045, epochs=15)]
    table = release_table([moved(r, older if r is released[0] else [], 'first') for r in released])
    rows = [line for line in table.splitlines() if line.startswith('| `')]
    columns = table.splitlines()[0].split(' | ')
    cells = [row.split(' | ')[columns.index('replaced release, test top-1')] for row in rows]
    assert cells == [f'{87.045:.2f} (15 epochs)'] + ['-'] * (len(released) - 1)
    assert {len(row.split(' | ')) for row in rows} == {len(columns)}  # every row has every column


@pytest.mark.slow
def test_served_release_loads_with_pretrained_true(released, tmp_path):
    names = [r.folder.name for r in released]
    sizes = {r.results.dataset.image_size for r in released}
    inputs = {s: torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(s)) for s in sizes}
    torch.save(inputs, tmp_path / 'x.pt')
    (tmp_path / 'load.py').write_text(LOAD)
    env = dict(os.environ, HF_HOME=str(tmp_path / 'hf'), HF_HUB_DISABLE_TELEMETRY='1')
    env.pop('HF_HUB_OFFLINE', None)
    with HubServer(by_layout(released)) as server:
        done = subprocess.run([sys.executable, str(tmp_path / 'load.py'), json.dumps(names), str(tmp_path / 'x.pt'),
                               str(tmp_path / 'out.json'), str(ROOT)], env=dict(env, HF_ENDPOINT=server.endpoint),
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    outputs = json.loads((tmp_path / 'out.json').read_text())
    for repo in released:  # the folder's own config (local-dir:): its arguments must be the tag's, none
        model = timm.create_model(f'local-dir:{repo.folder}')
        model.load_state_dict(load_file(repo.folder / 'model.safetensors'))
        with torch.no_grad():
            expected = model.eval()(inputs[repo.results.dataset.image_size])
        assert torch.equal(torch.tensor(outputs[repo.folder.name]), expected), repo.folder.name
        if repo.folder.name == names[0]:
            assert torch.equal(torch.tensor(outputs['torch.hub']), expected)


def test_whole_split_bound_holds_for_honest_subsets_and_refuses_a_made_up_card():
    """`plausible_whole_split_top1` against 20,000 random 1,000-image subsets of a 10,000-image split with 8,732
    right answers: the honest whole-split top-1 always lies inside; the forged 99.01 of a 86.60 subset does not."""
    right = np.zeros(10_000, dtype=bool)
    right[:8_732] = True
    rng = np.random.default_rng(0)
    for _ in range(20_000):
        low, high = plausible_whole_split_top1(100 * right[rng.choice(10_000, 1_000, replace=False)].mean(), 1_000,
                                               10_000)
        assert low <= 87.32 <= high
    low, high = plausible_whole_split_top1(86.60, 1_000, 10_000)
    assert not low <= 99.01 <= high and high - low < 11
    assert plausible_whole_split_top1(25.0, 16, 16) == (25.0, 25.0)  # the whole split measured: no slack


def test_every_release_was_measured_again_on_its_whole_test_split(released):
    """releases/remeasured.json holds a whole-split re-measurement of exactly the released weights, agreeing
    with each card, and nothing else; no data needed."""
    check_remeasured(RELEASES, {})
    record = read_remeasured(RELEASES)
    assert sorted(record) == sorted(f'{r.folder.parent.name}/{r.folder.name}' for r in released)
    for entry in record.values():
        assert entry['images'] == 10000 and len(entry['check_predictions']) == 1000 and entry['check_stride'] == 10


@pytest.mark.slow
@pytest.mark.parametrize('dataset', sorted(DATA))
def test_release_predictions_hold_on_the_fixed_subset(released, dataset, capsys):
    """`python -m hub remeasure releases/ --check`: the test images CI checks are classified as recorded."""
    if not any(r.results.dataset.name == dataset for r in released):
        pytest.skip(f'no {dataset} release yet')
    if not DATA[dataset].is_dir():
        pytest.skip(f'{DATA[dataset]} is not here: its releases are checked where that copy of {dataset} is')
    checked = check_remeasured(RELEASES, {dataset: str(DATA[dataset])})
    assert sorted(checked) == sorted(r.name for r in released if r.results.dataset.name == dataset)
    assert all(len(c['predictions']) == 1000 for c in checked.values())
