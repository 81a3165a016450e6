"""The bad-input table: what a careless user types, the one line they get back, and what is kept.

Every probe runs the command's real entry point on small data written here. It must end with the
expected exit status (2: a usage error, 1: anything else the user can fix), print the expected
fragment in one line without a traceback, and lose nothing. docs/reliability.md is this table:
`python tests/test_bad_input.py` prints it, and a test checks that the page has it.
"""
import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Tuple, Union
from unittest import mock

import pytest
import torch
from conftest import ROOT, without_worker_death_reports, write_image_folders
from conftest import TINY_TRAIN as TINY


@dataclass
class Probe:
    name: str
    given: str  # what the user typed or did
    expect: str  # a fragment of the one-line answer
    kept: str  # what must survive
    code: Union[int, str]  # the exit status of a command, or the exception a library call raises
    run: Callable
    slow: bool = False  # serves or exports for real: skipped by the fast loop (`-m "not slow"`)


PROBES: List[Probe] = []


def probe(given: str, expect: str, kept: str = '-', code: Union[int, str] = 1, name: str = '', slow: bool = False):
    def register(fn):
        PROBES.append(Probe(name or fn.__name__, given, expect, kept, code, fn, slow))
        return fn
    return register


def call(main, argv) -> Tuple[int, str]:
    """A CLI's exit status and what it printed to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, err.getvalue()


def raised(fn: Callable, *args, **kwargs) -> Tuple[Union[int, str], str]:
    """What a library call raises: its exception's class name and message, or (0, '') when it does not."""
    try:
        fn(*args, **kwargs)
    except Exception as e:
        return type(e).__name__, str(e)
    return 0, ''


class Workspace:
    """Small data and one finished tiny run, shared by the probes (each probe copies what it may damage)."""

    def __init__(self, root: Path):
        from train import train as train_script
        self.root = root
        self.data = write_image_folders(root / 'data')
        self.run = root / 'run'
        assert call(train_script.main, TINY + ['--data-dir', str(self.data), '--output', str(self.run),
                                               '--epochs', '1'])[0] == 0

    def copy_run(self, name: str) -> Path:
        return Path(shutil.copytree(self.run, self.root / name))

    def copy_data(self, name: str) -> Path:
        return Path(shutil.copytree(self.data, self.root / name))

    def train(self, *argv) -> Tuple[int, str]:
        from train import train as train_script
        return call(train_script.main, [*TINY, '--data-dir', str(self.data), *argv])

    def releases(self, name: str) -> Path:
        """A releases folder holding the tiny run, published as timm-spa/resnet18_spa.folder."""
        from hub.__main__ import main as hub_main
        releases = self.root / name
        repo = self.root / f'{name}-export'
        assert call(hub_main, ['export', str(self.run), '--output', str(repo)])[0] == 0
        assert call(hub_main, ['push', str(repo), '--releases', str(releases)])[0] == 0
        return releases


def cifar_export(ws: 'Workspace', name: str, *train_args: str) -> Path:
    """A tiny resnet18_spa trained on CIFAR-10's official layout (10 classes, 32x32), exported: what may be
    published under the `resnet18_spa.cifar10` tag."""
    from conftest import write_cifar

    from hub.__main__ import main as hub_main
    from train import train as train_script
    data = ws.root / 'cifar-data'
    if not data.exists():
        write_cifar(data, 'cifar10', n_train=40, n_test=20)
    run, repo = ws.root / f'{name}-run', ws.root / f'{name}-export'
    assert call(train_script.main, [*TINY, '--dataset', 'cifar10', '--img-size', '32', '--data-dir', str(data),
                                    '--output', str(run), '--epochs', '1', *train_args])[0] == 0
    assert call(hub_main, ['export', str(run), '--output', str(repo)])[0] == 0
    return repo


def dead_pid() -> int:
    """The pid of a process that has ended: what a SIGKILLed push leaves in its staging folder's name."""
    child = subprocess.Popen(['true'])
    child.wait()
    return child.pid


def digest(root: Path) -> dict:
    """Every file under `root` (a file or a folder) with its sha256: what must not change."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob('*') if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@contextlib.contextmanager
def unchanged(*roots: Path):
    """Assert that nothing under `roots` was added, removed or changed by the block."""
    before = [digest(root) for root in roots]
    yield
    assert [digest(root) for root in roots] == before, 'a protected file changed'


# a training flag out of its range: refused before anything is read
for _name, _flag, _value, _shown, _rule in (('epochs_zero', '--epochs', '0', '--epochs', 'an int >= 1'),
                                           ('batch_zero', '-b', '0', '--batch-size', 'an int >= 1'),
                                           ('negative_lr', '--lr', '-0.1', '--lr', 'a number > 0'),
                                           ('image_size_zero', '--img-size', '0', '--img-size', 'an int >= 1')):
    probe(f'`python -m train {_flag} {_value}`', f'{_shown} {_value} is not allowed: it must be {_rule}', code=2,
          name=_name)(lambda ws, flag=_flag, value=_value: ws.train(flag, value, '--output', str(ws.root / 'x')))


@probe('`python -m train --min-lr 0.5 --lr 0.01 --sched poly --decay-rate 1`', '--min-lr 0.5 is above --lr 0.01: the '
       'schedule would raise the learning rate as it decays', code=2)
def min_lr_above_lr(ws):
    return ws.train('--min-lr', '0.5', '--lr', '0.01', '--sched', 'poly', '--decay-rate', '1', '--output',
                    str(ws.root / 'x'))


@probe('`python -m train --device cuda` on a machine without a GPU', 'torch sees no CUDA device on this machine; '
       'use --device cpu', code=2)
def cuda_without_gpu(ws):
    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU')
    return ws.train('--device', 'cuda', '--output', str(ws.root / 'x'))


@probe('`python -m train --model resnet18_sap` (a typo)', 'no such model in timm or timm-spa. Did you mean '
       'resnet18_spa', code=2)
def unknown_model(ws):
    return ws.train('--model', 'resnet18_sap', '--output', str(ws.root / 'x'))



@probe('`python -m train --torchcompile inductr` (a typo)', '--torchcompile inductr: torch.compile has no such '
       'backend. Did you mean inductor', code=2)
def torchcompile_typo(ws):
    return ws.train('--torchcompile', 'inductr', '--output', str(ws.root / 'x'))


@probe('`python -m train --torchcompile` (or `--resume` of a run that had it) on a machine without a C++ compiler',
       'inductor builds CPU kernels with a C++ compiler and finds none; install g++ (or point CXX at one), or drop '
       '--torchcompile', code=2)
def torchcompile_without_compiler(ws):
    from torch._inductor import config

    from train import train as train_script
    run = ws.copy_run('compiled')
    state = torch.load(run / 'last.pth.tar', weights_only=True)
    torch.save(dict(state, args=dict(state['args'], torchcompile='inductor')), run / 'last.pth.tar')
    with mock.patch.object(config.cpp, 'cxx', (None, str(ws.root / 'no-such-g++'))):
        assert 'finds none' in ws.train('--torchcompile', '--output', str(ws.root / 'x'))[1]
        with unchanged(run):
            return call(train_script.main, ['--resume', str(run)])

@probe('`python -m train --model-kwargs atn_stages="(1,)"` (a typo)', "resnet18_spa takes no argument 'atn_stages' "
       '(did you mean attn_stages?). Check the argument names', code=2)
def model_kwargs_typo(ws):
    code, err = ws.train('--model-kwargs', 'atn_stages=(1,)', '--output', str(ws.root / 'x'))
    assert 'config.json' not in err.split('Check the argument names')[0]
    return code, err


@probe('`python -m train --output RUN` where RUN holds a finished run', 'already holds a run', 'the run', code=2)
def output_holds_a_run(ws):
    run = ws.copy_run('holds')
    before = (run / 'results.json').read_text()
    code, err = ws.train('--output', str(run), '--epochs', '1')
    assert (run / 'results.json').read_text() == before
    return code, err


@probe('`python -m train --output RUN --overwrite`, and the new run dies in its first epoch',
       'training diverged', "no file of the old run: its results can never be paired with the new weights")
def overwrite_then_die(ws):
    run = ws.copy_run('overwritten')
    code, err = ws.train('--output', str(run), '--epochs', '2', '--overwrite', '--lr', '1e12')
    assert not (run / 'results.json').exists() and not (run / 'model_best.safetensors').exists()
    return code, err


@probe('`python -m train --resume RUN --epochs 400 --val-split-seed 3`', '--resume RUN continues that run with its '
       'own arguments, and these differ: --epochs 400 (the run has 1); --val-split-seed 3 (the run has 0)', 'the run',
       code=2)
def resume_with_other_recipe(ws):
    run = ws.copy_run('resumed')
    code, err = ws.train('--resume', str(run), '--epochs', '400', '--val-split-seed', '3')
    return code, err.replace(str(run), 'RUN')


def _with_recovery(ws, name: str, world_size: int) -> Path:
    """A copy of the run with a recovery checkpoint inside its next epoch, as `--recovery-interval` writes."""
    run = ws.copy_run(name)
    state = torch.load(run / 'last.pth.tar', weights_only=True)
    tally = dict(tally=dict(steps=2), rng=None)
    torch.save(dict(state, epoch=state['epoch'] + 1, recovery=dict(
        step=2, world_size=world_size, ranks=[tally] * world_size, epoch_s=1.0, stopped_s=0.0)),
        run / 'recovery.pth.tar')
    return run


@probe('`python -m train --resume RUN` (one process) where torchrun with 2 processes wrote `recovery.pth.tar`',
       'by 2 process(es), and this is 1: the rest of that epoch is divided among the processes that began it. '
       'Resume with as many processes', 'both checkpoints')
def recovery_of_another_world_size(ws):
    run = _with_recovery(ws, 'recovery-2-ranks', 2)
    with unchanged(run):
        return ws.train('--resume', str(run))


@probe('`python -m train --resume RUN` where `recovery.pth.tar` was cut short', 'Delete it to resume from '
       'last.pth.tar (the end of epoch 0)', 'both checkpoints')
def truncated_recovery(ws):
    run = _with_recovery(ws, 'recovery-cut', 1)
    recovery = run / 'recovery.pth.tar'
    recovery.write_bytes(recovery.read_bytes()[:5000])
    with unchanged(run):
        return ws.train('--resume', str(run))


@probe('`python -m train --lr 1e12` (diverges)', 'training diverged, so the run stops here. Kept the last good state',
       'the last finite checkpoint; no results, no NaN weights')
def diverged(ws):
    return ws.train('--output', str(ws.root / 'diverged'), '--epochs', '2', '--lr', '1e12')


@probe('a `train.tar` cut short', 'train.tar is truncated or corrupt', code=1)
def truncated_tar(ws):
    data = ws.root / 'tars'
    write_image_folders(data, as_tar=True)
    tar = data / 'train.tar'
    tar.write_bytes(tar.read_bytes()[:int(tar.stat().st_size * 0.9)])
    return ws.train('--data-dir', str(data), '--output', str(ws.root / 'x'))


@probe('a corrupt image in the test split', 'cannot read image', 'nothing trained: found before epoch 0')
def corrupt_test_image(ws):
    data = ws.copy_data('corrupt')
    bad = sorted((data / 'test').rglob('*.png'))[-1]
    bad.write_bytes(bad.read_bytes()[:60])
    out = ws.root / 'corrupt-run'
    code, err = ws.train('--data-dir', str(data), '--output', str(out), '--workers', '2')
    assert bad.name in err and not (out / 'last.pth.tar').exists()
    return code, err


@probe('an image over Pillow\'s decompression-bomb limit in the train split (a 20000x20000 JPEG; here the limit is '
       'lowered to 100 pixels)', 'exceeds limit', 'nothing trained: found before epoch 0')
def decompression_bomb_image(ws):
    from PIL import Image
    data = ws.copy_data('bomb')
    big = sorted((data / 'train').rglob('*.png'))[0]
    Image.new('RGB', (11, 11)).save(big)  # 121 pixels: over twice the lowered limit, so Pillow raises
    out = ws.root / 'bomb-run'
    with mock.patch.object(Image, 'MAX_IMAGE_PIXELS', 50):
        code, err = ws.train('--data-dir', str(data), '--output', str(out))
    assert big.name in err and 'DecompressionBombError' not in err and not (out / 'last.pth.tar').exists(), err
    return code, err


@probe('`--output` on a path that cannot be created', 'cannot create the run directory', code=1)
def output_not_writable(ws):
    blocker = ws.root / 'a-file'
    blocker.write_text('x')
    return ws.train('--output', str(blocker / 'run'))


@probe('a full disk while a checkpoint is written', 'disk full while writing', 'the previous checkpoint; the '
       'orphaned .tmp is removed', code='CheckpointError')
def disk_full(ws):
    from train.checkpoint import save_training_state
    path = ws.root / 'full' / 'last.pth.tar'
    path.parent.mkdir()
    save_training_state(path, {'epoch': 0})

    def no_space(obj, f, *args, **kwargs):
        Path(f).write_bytes(b'partial')
        raise OSError(errno.ENOSPC, 'No space left on device')

    with mock.patch.object(torch, 'save', no_space):
        code, err = raised(save_training_state, path, {'epoch': 1})
    assert torch.load(path, weights_only=True)['epoch'] == 0 and not path.with_name('last.pth.tar.tmp').exists()
    return code, err


@probe('`python -m train.validate --run RUN` with an incomplete results.json', 'is incomplete (missing test_top1)',
       'the run')
def validate_incomplete_run(ws):
    from train import validate
    run = ws.copy_run('incomplete')
    results = json.loads((run / 'results.json').read_text())
    del results['test_top1']
    (run / 'results.json').write_text(json.dumps(results))
    return call(validate.main, ['--run', str(run)])


@probe('a checkpoint that is a pickle of arbitrary objects', 'which are not loaded (weights_only=True', code=1)
def unsafe_pickle(ws):
    from train import validate
    evil = ws.root / 'evil.pth'
    with open(evil, 'wb') as f:
        pickle.dump({'state_dict': Probe}, f)  # a class: what weights_only refuses to import
    code, err = call(validate.main, ['--model', 'resnet18_spa', '--checkpoint', str(evil), '--dataset', 'folder',
                                     '--data-dir', str(ws.data), '--img-size', '16', '--val-size', '8'])
    assert 'weights_only=False' not in err
    return code, err


@probe("`timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file='missing.safetensors'))`",
       'pretrained_cfg_overlay file missing.safetensors does not exist', code='WeightsDownloadError')
def overlay_file_missing(ws):
    import timm
    code, err = raised(timm.create_model, 'resnet18_spa', pretrained=True,
                       pretrained_cfg_overlay=dict(file='missing.safetensors'))
    assert 'HF_ENDPOINT' not in err and 'cache' not in err
    return code, err


@probe("the same with a truncated weights file", 'could not be read as weights', code='WeightsDownloadError')
def overlay_file_corrupt(ws):
    import timm
    cut = ws.root / 'cut.safetensors'
    cut.write_bytes((ws.run / 'model_best.safetensors').read_bytes()[:5000])
    code, err = raised(timm.create_model, 'resnet18_spa', pretrained=True, num_classes=4,
                       pretrained_cfg_overlay=dict(file=str(cut)))
    assert 'HF_ENDPOINT' not in err and 'weights_only=False' not in err
    return code, err


@probe('`SalientPositionsAttention(256, scale=float("inf"))`', 'scale must be a finite number > 0', code='ValueError')
def infinite_scale(ws):
    from timm_spa.layers import SalientPositionsAttention
    return raised(SalientPositionsAttention, 256, scale=float('inf'))


@probe('`python -m hub export RUN --output RUN --overwrite` (or the folder holding RUN)',
       'exporting there would overwrite or delete the run', 'the run and every run beside it')
def export_into_the_run(ws):
    from hub.__main__ import main as hub_main
    parent = ws.root / 'runs'
    run = Path(shutil.copytree(ws.run, parent / 'r1'))
    before = sorted(parent.rglob('*'))
    for output in (run, parent):
        code, err = call(hub_main, ['export', str(run), '--output', str(output), '--overwrite'])
        assert code == 1 and sorted(parent.rglob('*')) == before
    return code, err


@probe('`python -m hub export RUN` where results.json was edited to another architecture',
       'but the weights were saved for', 'the run')
def export_edited_results(ws):
    from hub.__main__ import main as hub_main
    run = ws.copy_run('edited')
    results = json.loads((run / 'results.json').read_text())
    results['model_args']['model_kwargs'] = {'attn_kwargs': {'k': 8}}
    (run / 'results.json').write_text(json.dumps(results))
    return call(hub_main, ['export', str(run), '--output', str(ws.root / 'edited-repo')])


@probe('`python -m hub push REPO --repo-id timm-spa/resnet18_spa.cifar10` for a model of another data set',
       'cannot be published as timm-spa/resnet18_spa.cifar10: it holds dataset', 'the record of released weights')
def push_under_another_tag(ws):
    from hub.__main__ import main as hub_main
    repo = ws.root / 'repo'
    assert call(hub_main, ['export', str(ws.run), '--output', str(repo)])[0] == 0
    return call(hub_main, ['push', str(repo), '--repo-id', 'timm-spa/resnet18_spa.cifar10', '--releases',
                           str(ws.root / 'releases')])


@probe('`python -m hub export RUN --output DIR --seeds FOLDER` where FOLDER holds the records of other seeds but '
       "not RUN's own (or no such folder)", 'holds no finished run', 'the run; no folder is written', code=2)
def export_seeds_without_the_run(ws):
    from hub.__main__ import main as hub_main
    seeds = ws.root / 'seeds-elsewhere'
    (seeds / 'other').mkdir(parents=True)
    record = json.loads((ws.run / 'results.json').read_text())
    (seeds / 'other' / 'results.json').write_text(json.dumps(dict(record, run_id='f' * 32, seed=7)))
    missing = call(hub_main, ['export', str(ws.run), '--output', str(ws.root / 'seeded'), '--seeds',
                              str(ws.root / 'no-such-folder')])
    assert missing[0] == 2 and 'no such folder' in missing[1], missing
    with unchanged(ws.run):
        done = call(hub_main, ['export', str(ws.run), '--output', str(ws.root / 'seeded'), '--seeds', str(seeds)])
    assert not (ws.root / 'seeded').exists()
    return done


@probe('`python -m hub remeasure releases/ --data cifar10` (no folder)', "--data 'cifar10': give NAME=DIR", code=2)
def remeasure_data_without_folder(ws):
    from hub.__main__ import main as hub_main
    return call(hub_main, ['remeasure', str(ws.root / 'releases'), '--data', 'cifar10'])


@probe('`python -m hub push REPO --releases DIR` where config.json swaps two label names and sets mean and std to '
       '0.5 (or gives input_size [3, 0, 0] or [3, 100000, 100000], or 9 label names for 10 classes)',
       'is not the config its results give (label_names, pretrained_cfg.label_names, pretrained_cfg.mean, '
       'pretrained_cfg.std differ): users would get other labels or preprocessing than were measured',
       'the releases folder', code=1)
def push_of_an_edited_config(ws):
    from hub.__main__ import main as hub_main
    repo = cifar_export(ws, 'edited-config')
    releases = ws.root / 'edited-config-releases'
    releases.mkdir()
    exported = json.loads((repo / 'config.json').read_text())

    def push_with(edit) -> Tuple[int, str]:
        config = json.loads(json.dumps(exported))
        edit(config)
        (repo / 'config.json').write_text(json.dumps(config, indent=2))
        with unchanged(releases):
            return call(hub_main, ['push', str(repo), '--releases', str(releases)])

    def sizes(side):
        return lambda c: c['pretrained_cfg'].update(input_size=[3, side, side])

    for edit, said in ((sizes(0), 'pretrained_cfg.input_size'), (sizes(100000), 'pretrained_cfg.input_size'),
                       (lambda c: c.update(label_names=c['label_names'][:9]), 'label_names')):
        code, err = push_with(edit)
        assert code == 1 and f'({said} differ)' in err, err

    def swap_and_flatten(config):
        for names in (config['label_names'], config['pretrained_cfg']['label_names']):
            names[0], names[1] = names[1], names[0]
        config['pretrained_cfg'].update(mean=[0.5] * 3, std=[0.5] * 3)
    return push_with(swap_and_flatten)


@probe('`python -m hub push REPO --releases DIR` where REPO also holds `.env` (HF_TOKEN=...), a symbolic link '
       '`notes.txt -> /etc/hostname` and `sub/y.bin`', 'note: not published (a push publishes the files hub export '
       'writes, and history.json): .env, notes.txt, sub/y.bin', 'REPO; only the exported files and history.json '
       'published', code=0)
def push_of_a_folder_with_other_files(ws):
    from hub.__main__ import main as hub_main
    repo = cifar_export(ws, 'other-files')
    (repo / '.env').write_text('HF_TOKEN=hf_not_a_real_token\n')
    (repo / 'notes.txt').symlink_to('/etc/hostname')
    (repo / 'sub').mkdir()
    (repo / 'sub' / 'y.bin').write_bytes(b'\0' * 16)
    releases = ws.root / 'other-files-releases'
    with unchanged(repo):
        code, err = call(hub_main, ['push', str(repo), '--releases', str(releases)])
    published = sorted(p.name for p in (releases / 'timm-spa' / 'resnet18_spa.cifar10').rglob('*'))
    assert published == ['README.md', 'config.json', 'curves.png', 'history.json', 'model.safetensors',
                         'results.json'], published
    return code, err


@probe('`python -m hub push REPO --releases DIR` where REPO\'s README.md is a symbolic link', 'holds README.md as '
       'symbolic links: a push publishes files, never what a link points to', 'REPO; nothing published', code=1)
def push_of_a_symlinked_card(ws):
    from hub.__main__ import main as hub_main
    repo = cifar_export(ws, 'linked-card')
    card = repo / 'README.md'
    (ws.root / 'card-elsewhere.md').write_text(card.read_text())
    card.unlink()
    card.symlink_to(ws.root / 'card-elsewhere.md')
    releases = ws.root / 'linked-card-releases'
    code, err = call(hub_main, ['push', str(repo), '--releases', str(releases)])
    assert not releases.exists()
    return code, err


@probe('`python -m hub serve`, `table` or `remeasure --check` on a releases folder whose config.json was edited in '
       'place', 'is not the config its results give', 'the release', code=1)
def released_config_edited_in_place(ws):
    from hub.__main__ import main as hub_main
    releases = ws.releases('edited-in-place')
    config = releases / 'timm-spa' / 'resnet18_spa.folder' / 'config.json'
    edited = json.loads(config.read_text())
    edited['pretrained_cfg']['mean'] = [0.5, 0.5, 0.5]
    config.write_text(json.dumps(edited, indent=2))
    with unchanged(releases):
        code, err = call(hub_main, ['table', str(releases)])
        assert code == 1 and 'pretrained_cfg.mean' in err, err
        return call(hub_main, ['remeasure', str(releases), '--check', '--data', f'folder={ws.data}'])


@probe("`python -m hub export RELEASE --output NEW` of a copy whose results.json says test top-1 + 2, then `hub push "
       "NEW --releases DIR` (no --replace: the same weights)", 'measured these very weights at',
       'the release, its card and remeasured.json', code=1)
def push_of_edited_numbers(ws):
    from hub.__main__ import main as hub_main
    releases = ws.releases('edited-numbers')
    done = call(hub_main, ['remeasure', str(releases), '--data', f'folder={ws.data}'])
    assert done[0] == 0, done
    copy = Path(shutil.copytree(releases / 'timm-spa' / 'resnet18_spa.folder', ws.root / 'edited-numbers-copy'))
    results = json.loads((copy / 'results.json').read_text())
    (copy / 'results.json').write_text(json.dumps(dict(results, test_top1=results['test_top1'] + 2), indent=2))
    exported = ws.root / 'edited-numbers-new'
    done = call(hub_main, ['export', str(copy), '--output', str(exported)])
    assert done[0] == 0, done
    with unchanged(releases):
        return call(hub_main, ['push', str(exported), '--releases', str(releases)])


@probe('`python -m hub remeasure releases/ --data folder=DIR` where a card says other numbers than its weights give',
       'do not measure what their cards say', 'releases/remeasured.json')
def remeasure_edited_card(ws):
    from hub.__main__ import main as hub_main
    releases = ws.releases('remeasure-edited')
    argv = ['remeasure', str(releases), '--data', f'folder={ws.data}']
    assert call(hub_main, argv)[0] == 0
    results = releases / 'timm-spa' / 'resnet18_spa.folder' / 'results.json'
    edited = json.loads(results.read_text())
    results.write_text(json.dumps(dict(edited, test_top1=edited['test_top1'] + 1)))
    with unchanged(releases / 'remeasured.json'):
        return call(hub_main, argv)


@probe('`releases/remeasured.json` edited to fields of the wrong type (`"10000"`, `"87.32"`, `null`, '
       '`check_stride: 0`), then `python -m hub remeasure releases/ --check`', 'is not a re-measurement record',
       'releases/remeasured.json', code=1)
def remeasured_record_of_wrong_types(ws):
    from hub.__main__ import main as hub_main
    releases = ws.releases('typed-record')
    argv = ['remeasure', str(releases), '--data', f'folder={ws.data}']
    assert call(hub_main, argv)[0] == 0
    path = releases / 'remeasured.json'
    good = json.loads(path.read_text())
    entry = good['timm-spa/resnet18_spa.folder']
    for key, value in (('images', str(entry['images'])), ('top1', str(entry['top1'])), ('top5', None),
                       ('check_stride', 0)):
        path.write_text(json.dumps({'timm-spa/resnet18_spa.folder': dict(entry, **{key: value})}))
        with unchanged(path):
            code, err = call(hub_main, [*argv, '--check'])
        assert code == 1 and 'is not a re-measurement record' in err and 'Traceback' not in err, (key, err)
    return code, err


@probe('`python -m hub push R/ORG/NAME/inner --releases R`', 'overlap: replacing the destination would delete the '
       'files being published', 'the exported folder')
def push_folder_inside_destination(ws):
    from hub.__main__ import main as hub_main
    releases = ws.root / 'overlap-releases'
    repo = releases / 'someone' / 'resnet18_spa.folder' / 'inner'
    assert call(hub_main, ['export', str(ws.run), '--output', str(repo), '--repo-id', 'someone/resnet18_spa.folder'
                           ])[0] == 0
    code, err = call(hub_main, ['push', str(repo), '--releases', str(releases)])
    assert (repo / 'model.safetensors').is_file()
    return code, err


@probe('`python -m visualize --num-images 0`', '--num-images: 0 must be at least 1', code=2)
def no_images(ws):
    from visualize.__main__ import main as visualize_main
    return call(visualize_main, ['--model', 'resnet18_spa', '--dataset', 'folder', '--data-dir', str(ws.data),
                                 '--num-images', '0', '--output', str(ws.root / 'fig.png')])


@probe('`bash scripts/setup.sh` on a disk with less than 6 GiB free', 'the venv needs about 6144 MiB (torch and '
       'its CUDA libraries), but only 100 MiB is free', 'the disk: pip never starts')
def setup_on_a_full_disk(ws):
    project = ws.root / 'setup-full-disk'
    (project / 'scripts').mkdir(parents=True)
    shutil.copy(ROOT / 'scripts' / 'setup.sh', project / 'scripts')
    fake_bin = project / 'bin'
    fake_bin.mkdir()
    df = fake_bin / 'df'  # 100 MiB available, in `df -Pk`'s format
    df.write_text('#!/bin/sh\necho "Filesystem 1024-blocks Used Available Capacity Mounted on"\n'
                  'echo "/dev/vda 1048576 946176 102400 91% /"\n')
    df.chmod(0o755)
    env = {**os.environ, 'PATH': f'{fake_bin}{os.pathsep}{os.environ["PATH"]}'}
    done = subprocess.run(['bash', str(project / 'scripts' / 'setup.sh')], env=env, capture_output=True, text=True)
    assert not (project / '.venv').exists()
    return done.returncode, done.stderr


@probe('`python -m train --output releases/ORG/NAME` (a published release), with or without `--overwrite`',
       'is a Hub repository', 'the release, byte for byte', code=1)
def train_into_a_release(ws):
    release = ws.releases('train-into') / 'timm-spa' / 'resnet18_spa.folder'
    with unchanged(release):
        code, err = ws.train('--output', str(release / 'inside'), '--overwrite')
        assert code == 1 and 'lies inside a Hub repository' in err, err
        for extra in (('--overwrite',), ()):
            code, err = ws.train('--output', str(release), *extra)
            assert 'never a run directory' in err, err
    return code, err


@probe('a second `python -m train --output RUN` while a first one trains there', 'is in use by process',
       "the first run's files", code=1)
def two_trainings_one_folder(ws):
    from train.run_dir import RunDir
    run = ws.root / 'busy'
    with RunDir(run).lock():  # the first process, as far as the second can tell
        (run / 'args.json').write_text('{"model": "resnet18_spa"}')
        with unchanged(run):
            code, err = ws.train('--output', str(run), '--epochs', '1')
    assert str(os.getpid()) in err
    return code, err


@probe('`python -m hub push REPO --releases DIR` for a name DIR already publishes with other weights',
       'already publishes other weights as timm-spa/resnet18_spa.folder (run', 'the release; `--replace` replaces '
       'it on purpose, keeping the old one in history.json and on the card', code=1, slow=True)
def push_over_a_release(ws):
    from hub.__main__ import main as hub_main
    releases = ws.releases('push-over')
    other_run = ws.root / 'other-run'
    assert ws.train('--output', str(other_run), '--epochs', '1', '--seed', '7')[0] == 0
    other = ws.root / 'other-export'
    assert call(hub_main, ['export', str(other_run), '--output', str(other)])[0] == 0
    with unchanged(releases):
        code, err = call(hub_main, ['push', str(other), '--releases', str(releases)])
    first = json.loads((releases / 'timm-spa' / 'resnet18_spa.folder' / 'results.json').read_text())['run_id']
    second = json.loads((other / 'results.json').read_text())['run_id']
    assert first in err and second in err and 'test top-1' in err
    return code, err


@probe('a release copied with its card, `results.json` and `remeasured.json` entry all edited to one made-up top-1, '
       'then `python -m hub remeasure DIR --check`', 'they were not measured on these weights', 'the release and '
       'its record')
def forged_release_passes_no_check(ws):
    from hub.__main__ import main as hub_main
    from hub.card import with_remeasured
    releases = ws.releases('forged')
    assert call(hub_main, ['remeasure', str(releases), '--data', f'folder={ws.data}'])[0] == 0
    folder = releases / 'timm-spa' / 'resnet18_spa.folder'
    results, record = json.loads((folder / 'results.json').read_text()), json.loads(
        (releases / 'remeasured.json').read_text())
    forged = 99.0 if results['test_top1'] < 90 else 50.0
    record['timm-spa/resnet18_spa.folder']['top1'] = forged
    card = (folder / 'README.md').read_text().replace(f"{results['test_top1']:.2f}", f'{forged:.2f}')
    (folder / "README.md").write_text(with_remeasured(card, record["timm-spa/resnet18_spa.folder"]))  # thorough
    (folder / 'results.json').write_text(json.dumps(dict(results, test_top1=forged)))
    (releases / 'remeasured.json').write_text(json.dumps(record))
    with unchanged(releases):
        return call(hub_main, ['remeasure', str(releases), '--check', '--data', f'folder={ws.data}'])


@probe("`python -m hub push REPO --releases releases/` of a tag the library does not list yet (not in RELEASED)",
       "next: add 'resnet18_spa.cifar10' to RELEASED in timm_spa/models/published.py", 'the library (a push edits no '
       'source: it names the line to add)', code=0)
def push_of_a_new_tag_names_the_line_to_add(ws):
    import hub.push
    from hub.__main__ import main as hub_main
    repo = cifar_export(ws, 'new-tag')
    project = ws.root / 'project-releases'  # stands in for the checkout's releases/
    out = io.StringIO()
    with mock.patch.object(hub.push, 'PROJECT_RELEASES', project.resolve()), \
            mock.patch.object(hub.push, 'RELEASED', ()), unchanged(ROOT / 'timm_spa'), contextlib.redirect_stdout(out):
        hub_main(['push', str(repo), '--releases', str(project)])  # the line it prints is the answer, on stdout
    assert (project / 'timm-spa' / 'resnet18_spa.cifar10' / 'model.safetensors').is_file()
    return 0, out.getvalue()


@probe('two `python -m hub push --releases DIR` of one name at once (the second while the first holds the name)',
       'another push of', 'the release the first push is writing', code=1)
def two_pushes_of_one_name(ws):
    from hub.__main__ import main as hub_main
    from hub.release_slot import ReleaseSlot
    releases = ws.releases('raced')
    other = cifar_export(ws, 'raced-other', '--seed', '7')
    with ReleaseSlot(releases / 'timm-spa' / 'resnet18_spa.folder').lock(), unchanged(releases):
        # the first push holds the name, between its check and its write
        return call(hub_main, ['push', str(other), '--releases', str(releases), '--repo-id',
                               'timm-spa/resnet18_spa.folder', '--replace'])


@probe('`python -m hub push REPO --releases DIR` stopped by SIGTERM while it writes', 'interrupted (SIGTERM)',
       'the release as it was; no staging folder left', code=143)
def push_stopped_by_sigterm(ws):
    import signal as signals

    from hub import push as push_module
    from hub.__main__ import main as hub_main
    releases = ws.releases('terminated')
    other = cifar_export(ws, 'terminated-other', '--seed', '7')
    write = push_module._write

    def write_then_killed(files, target):
        write(files, target)
        os.kill(os.getpid(), signals.SIGTERM)  # what `kill` does half-way through the push

    with mock.patch.object(push_module, '_write', write_then_killed), unchanged(releases):
        code, err = call(hub_main, ['push', str(other), '--releases', str(releases), '--repo-id',
                                    'timm-spa/resnet18_spa.folder', '--replace'])
    assert not list((releases / 'timm-spa').glob('.*.staging-*'))
    return code, err


@probe('a staging folder (`.NAME.staging-PID-*`) left by a SIGKILLed push, then `hub push` or `hub serve`',
       'left by a push that was stopped', 'every release; the staging folder is removed', code=0)
def staging_left_by_sigkill(ws):
    from hub.__main__ import main as hub_main
    from hub.releases import released_repositories
    releases = ws.releases('killed')
    org = releases / 'timm-spa'
    leftover = org / f'.resnet18_spa.folder.staging-{dead_pid()}-x'
    shutil.copytree(org / 'resnet18_spa.folder', leftover)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        released_repositories(releases)  # what serve, table and remeasure read first
    assert not leftover.exists() and 'left by a push that was stopped' in err.getvalue()
    shutil.copytree(org / 'resnet18_spa.folder', leftover)
    with unchanged(org / 'resnet18_spa.folder'):
        code, err = call(hub_main, ['push', str(ws.root / 'killed-export'), '--releases', str(releases)])
    assert not leftover.exists()
    return code, err


@probe('`python -m hub push --replace` SIGKILLed between its two renames, then a plain push of other weights',
       'already publishes other weights', 'the replaced release and its history: put back, not lost', code=1)
def replace_killed_between_renames(ws):
    from hub.__main__ import main as hub_main
    from hub.release_slot import ReleaseSlot
    releases = ws.releases('half-replaced')
    slot = ReleaseSlot(releases / 'timm-spa' / 'resnet18_spa.folder')
    before = digest(slot.target)
    os.replace(slot.target, slot.parked)  # the first rename done, the second not
    (slot.target.parent / f'.{slot.target.name}.staging-{dead_pid()}-x').mkdir()
    other = cifar_export(ws, 'half-other', '--seed', '7')
    code, err = call(hub_main, ['push', str(other), '--releases', str(releases), '--repo-id',
                                'timm-spa/resnet18_spa.folder'])
    assert digest(slot.target) == before and not slot.parked.exists()
    return code, err


@probe('`python -m hub push REPO --releases DIR` of weights trained with `--model-kwargs "attn_kwargs={\'k\': 8}"` '
       'under the tag `resnet18_spa.cifar10`', 'it holds model arguments', 'the record and releases folder')
def push_other_architecture_under_tag(ws):
    from hub.__main__ import main as hub_main
    repo = cifar_export(ws, 'k8', '--model-kwargs', "attn_kwargs={'k': 8}")
    releases = ws.root / 'k8-releases'
    releases.mkdir()
    with unchanged(releases):
        return call(hub_main, ['push', str(repo), '--releases', str(releases), '--repo-id',
                               'timm-spa/resnet18_spa.cifar10'])


@probe('`python -m train.sweep custom --output S` on one data set, then again into S on another',
       'holds a sweep on --dataset folder (sweep.json); a sweep on --dataset cifar10 there would put two data sets',
       'the first sweep and its report', code=2)
def sweep_mixing_data_sets(ws):
    from conftest import write_cifar

    from train import sweep
    out = ws.root / 'mixed-sweep'
    assert call(sweep.main, ['custom', '--models', 'resnet18_cifar', '--output', str(out), '--data-dir',
                             str(ws.data), '--epochs', '1', *TINY[:-2]])[0] == 0
    cifar = write_cifar(ws.root / 'sweep-cifar', 'cifar10', n_train=40, n_test=20)
    with unchanged(out):
        code, err = call(sweep.main, ['custom', '--models', 'resnet18_cifar', '--output', str(out), '--dataset',
                                      'cifar10', '--data-dir', str(cifar), '--epochs', '1', *TINY[2:-2]])
    stray = out / 'stray' / 'seed42'
    shutil.copytree(ws.run, stray)  # a run of another data set moved in by hand: the report refuses to mix them
    results = json.loads((stray / 'results.json').read_text())
    results['dataset']['label'] = 'CIFAR-10'
    (stray / 'results.json').write_text(json.dumps(results))
    report_code, report_err = call(sweep.main, ['report', str(out)])
    assert report_code == 2 and 'holds runs on 2 data sets' in report_err, report_err
    return code, err


@probe('`python -m train --resume RUN --data-dir COPY` (or `train.validate --run RUN --data-dir COPY`) where COPY '
       'has the same counts and classes but two test classes swapped', 'the data set is not the one the run was '
       'trained on (its images and labels (fingerprint', "the run's results.json", code=1)
def resume_on_a_copy_with_swapped_classes(ws):
    from train import validate as validate_script
    run = ws.copy_run('swapped-run')
    copy = ws.copy_data('swapped-data')
    a, b = copy / 'test' / 'class0', copy / 'test' / 'class1'
    a.rename(copy / 'test' / 'tmp')
    b.rename(a)
    (copy / 'test' / 'tmp').rename(b)
    with unchanged(run):
        code, err = call(validate_script.main, ['--run', str(run), '--data-dir', str(copy)])
        assert code == 1 and 'was trained and tested on other images or labels' in err, err
        state = torch.load(run / 'last.pth.tar', weights_only=True)
        assert os.path.isabs(state['args']['data_dir'])  # recorded absolute: found from any folder
        return ws.train('--resume', str(run), '--data-dir', str(copy))


@probe('`python -m train --opt adamx` or `--sched cosin` (typos), on a data set that takes minutes to read',
       '--opt adamx: timm has no such optimizer. Did you mean adamax', code=2)
def optimizer_and_schedule_typos(ws):
    never = ws.root / 'never-read'  # refused before the data set is looked at: it does not even exist
    code, err = ws.train('--sched', 'cosin', '--data-dir', str(never), '--output', str(ws.root / 'x'))
    assert code == 2 and "--sched cosin: Unknown scheduler 'cosin'. Did you mean cosine?" in err, err
    return ws.train('--opt', 'adamx', '--data-dir', str(never), '--output', str(ws.root / 'x'))


@probe('`python -m hub push REPO --releases DIR --replace` where DIR/ORG/NAME is a symbolic link to a folder',
       'is a symbolic link (to', 'the link and the folder it points to', code=1)
def push_over_a_symlinked_release(ws):
    from hub.__main__ import main as hub_main
    releases = ws.releases('linked')
    org = releases / 'timm-spa'
    (org / 'resnet18_spa.folder').rename(ws.root / 'linked-elsewhere')
    (org / 'resnet18_spa.folder').symlink_to(ws.root / 'linked-elsewhere')
    with unchanged(ws.root / 'linked-elsewhere'):
        code, err = call(hub_main, ['push', str(cifar_export(ws, 'linked-other', '--seed', '7')), '--releases',
                                    str(releases), '--repo-id', 'timm-spa/resnet18_spa.folder', '--replace'])
    assert (org / 'resnet18_spa.folder').is_symlink()
    return code, err


@probe('`python -m train --initial-checkpoint REPO/config.json` (the config, not the weights)', 'it is a JSON file '
       '(a config.json?), not weights: give the model.safetensors beside it', code=1)
def initial_checkpoint_is_a_config(ws):
    from hub.__main__ import main as hub_main
    repo = ws.root / 'config-export'
    assert call(hub_main, ['export', str(ws.run), '--output', str(repo)])[0] == 0
    return ws.train('--initial-checkpoint', str(repo / 'config.json'), '--epochs', '1', '--output',
                    str(ws.root / 'x'))


@probe('`python -m train.validate --checkpoint RUN/last.pth.tar --use-ema` on a run trained without `--model-ema`',
       '--use-ema: ', code=1)
def use_ema_without_ema(ws):
    from train import validate as validate_script
    return call(validate_script.main, ['--model', 'resnet18_spa', '--dataset', 'folder', '--data-dir', str(ws.data),
                                       '--checkpoint', str(ws.run / 'last.pth.tar'), '--use-ema'])


@probe("`python -m hub export RUN --output '~/x'` (a quoted tilde)", '', 'no folder named `~` is made', code=0)
def export_to_a_quoted_tilde(ws):
    from hub.__main__ import main as hub_main
    with mock.patch.dict(os.environ, HOME=str(ws.root / 'home')):
        code, err = call(hub_main, ['export', str(ws.run), '--output', '~/exported'])
    assert (ws.root / 'home' / 'exported' / 'config.json').is_file() and not Path('~').exists()
    return code, err


@probe('`python -m train.validate ... --output-json NO/SUCH/DIR/x.json` (or a full or read-only disk)',
       'No such file or directory (', code=1)
def validate_output_to_a_missing_folder(ws):
    from train import validate as validate_script
    return call(validate_script.main, ['--model', 'resnet18_spa', '--dataset', 'folder', '--data-dir', str(ws.data),
                                       '--checkpoint', str(ws.run / 'model_best.safetensors'), '--output-json',
                                       str(ws.root / 'no' / 'such' / 'x.json')])


@probe('`python -m train.validate --output-json RUN/results.json` or `train.compare --output RUN/curves.png` (a '
       "run's own file)", 'writing there would replace its own results.json', 'the run', code=1)
def report_over_a_runs_own_file(ws):
    from train import compare as compare_script
    from train import validate as validate_script
    run = ws.copy_run('own-files')
    with unchanged(run):
        code, err = call(compare_script.main, [str(run), '--output', str(run / 'curves.png')])
        assert code == 1 and 'writing there would replace its own curves.png' in err, err
        return call(validate_script.main, ['--run', str(run), '--output-json', str(run / 'results.json')])


@probe('`python -m train.compare RUN --target 92` where summary.csv is edited, cut short or holds only its header',
       'is not a summary.csv of this project', 'the run', code=1)
def compare_on_a_broken_summary(ws):
    from train import compare as compare_script
    run = ws.copy_run('broken-summary')
    header = (run / 'summary.csv').read_text().splitlines()[0]
    (run / 'summary.csv').write_text(header + '\n')
    with unchanged(run):
        code, err = call(compare_script.main, [str(run), '--target', '92'])
        assert code == 2 and 'holds no finished epoch yet' in err, err
    (run / 'summary.csv').write_text(header + '\n0,0.1\n')
    with unchanged(run):
        return call(compare_script.main, [str(run), '--target', '92'])


@probe('`python -m train.compare RUN RUN` (or RUN and a copy of it)', 'is the same run as', 'the run', code=2)
def compare_one_run_twice(ws):
    from train import compare as compare_script
    copy = ws.copy_run('compared-twice')
    with unchanged(ws.run, copy):
        code, err = call(compare_script.main, [str(ws.run), str(ws.run)])
        assert code == 2 and 'is the same run as' in err, err
        return call(compare_script.main, [str(ws.run), str(copy)])


@probe('`python -m train --output RUN` where RUN holds only the args.json of a run killed before its first save',
       'of a run that stopped before it saved a step, so there is nothing to resume: pass --overwrite', 'args.json',
       code=2)
def output_holding_only_args(ws):
    run = ws.root / 'only-args'
    run.mkdir()
    shutil.copy(ws.run / 'args.json', run / 'args.json')
    with unchanged(run / 'args.json'):
        return ws.train('--output', str(run), '--epochs', '1')


@probe('`python -m benchmarks.train_throughput --steps 0` (or steps beyond the data, a model typo; '
       '`attention_cost --repeats 0`, `--scaling-sizes 0`; `startup_time --runs 0`)', '--steps: 0 must be at least 1',
       code=2)
def benchmark_counts_of_zero(ws):
    from benchmarks import attention_cost, startup_time, train_throughput
    for main, argv, said in (
            (train_throughput.main, ['--dataset', 'folder', '--data-dir', str(ws.data), '--steps', '100', '-b', '8'],
             'need 816 train images; image folder data has 44'),
            (train_throughput.main, ['--models', 'resnet18_sap'], 'Did you mean resnet18_spa'),
            (attention_cost.main, ['--repeats', '0'], '--repeats: 0 must be at least 1'),
            (attention_cost.main, ['--scaling-sizes', '0'], '--scaling-sizes: 0 must be at least 1'),
            (startup_time.main, ['--runs', '0'], '--runs 0: give 1 or more start-ups to time')):
        code, err = call(main, argv)
        assert code in (1, 2) and said in err and 'Traceback' not in err, (argv, err)
    return call(train_throughput.main, ['--steps', '0'])


@probe('`python -m train.sweep report DIR` on an empty or unrelated folder, or one holding its own report.md',
       'is not a sweep folder', "the folder's files", code=2)
def sweep_report_foreign_folder(ws):
    from train import sweep
    mine = ws.root / 'my-notes'
    mine.mkdir()
    (mine / 'report.md').write_text('my own report\n')
    shutil.copytree(ws.run, mine / 'a-run')
    with unchanged(mine):
        code, err = call(sweep.main, ['report', str(mine)])
    assert code == 2 and 'report.md, which python -m train.sweep report did not write' in err, err
    empty = ws.root / 'empty-folder'
    empty.mkdir()
    code, err = call(sweep.main, ['report', str(empty)])
    assert not any(empty.iterdir())
    return code, err


@probe('`python -m train.sweep report SWEEP` where one run\'s results.json is corrupt', 'is not valid JSON',
       'the other runs, reported; the bad file named in report.md', code=0)
def sweep_report_corrupt_results(ws):
    from train import sweep
    folder = ws.root / 'corrupt-sweep'
    shutil.copytree(ws.run, folder / 'resnet18_spa' / 'seed42')
    shutil.copytree(ws.run, folder / 'resnet18_spa' / 'seed43')
    bad = folder / 'resnet18_spa' / 'seed43' / 'results.json'
    bad.write_text(bad.read_text()[:100])
    code, err = call(sweep.main, ['report', str(folder)])
    assert str(bad.parent) in (folder / 'report.md').read_text()
    return code, err


@probe('`python -m train.sweep report DIR` where DIR mixes runs of two recipes (another `--epochs`)',
       'holds runs of 2 recipes (they differ in --epochs)', "the folder's files; no report written", code=2)
def sweep_report_mixed_recipes(ws):
    from train import sweep
    folder = ws.root / 'mixed-recipes'
    shutil.copytree(ws.run, folder / 'long')
    shorter = json.loads((ws.run / 'results.json').read_text())
    (folder / 'short').mkdir()
    (folder / 'short' / 'results.json').write_text(json.dumps(dict(
        shorter, run_id='short', seed=7, epochs=shorter['epochs'] + 1,
        args=dict(shorter['args'], seed=7, epochs=shorter['epochs'] + 1))))
    with unchanged(folder):
        code, err = call(sweep.main, ['report', str(folder)])
    return code, err


@probe('`python -m train --model-kwargs attn_stages` (no `=`)', "'attn_stages' is not KEY=VALUE", code=2)
def model_kwargs_without_value(ws):
    return ws.train('--model-kwargs', 'attn_stages', '--output', str(ws.root / 'x'))


@probe("`python -m train --aa rnd-m9` (a typo in timm's augmentation policy)",
       "is not one of timm's augmentation policies", code=2)
def augmentation_policy_typo(ws):
    return ws.train('--aa', 'rnd-m9', '--output', str(ws.root / 'x'))


@probe('a CIFAR-10 `batches.meta` without `label_names`', 'has no label_names list: it is not the official '
       'batches.meta', code=1)
def cifar_meta_without_names(ws):
    from conftest import write_cifar
    data = write_cifar(ws.root / 'cifar-no-names')
    meta = data / 'cifar-10-batches-py' / 'batches.meta'
    meta.write_bytes(pickle.dumps({b'num_cases_per_batch': 10000}))
    return ws.train('--dataset', 'cifar10', '--data-dir', str(data), '--img-size', '32', '--output',
                    str(ws.root / 'x'))


@probe('a folder data set with an empty class folder, or with one class', 'has class folders without images: '
       'class3', code=1)
def empty_class_folder(ws):
    data = ws.copy_data('one-empty-class')
    for path in (data / 'train' / 'class3').iterdir():
        path.unlink()
    one = ws.copy_data('one-class')
    for split in ('train', 'test'):
        for folder in (one / split).iterdir():
            if folder.name != 'class0':
                shutil.rmtree(folder)
    code, err = ws.train('--data-dir', str(one), '--output', str(ws.root / 'x'))
    assert code == 1 and 'holds one class (class0): a classifier needs at least 2' in err, err
    return ws.train('--data-dir', str(data), '--output', str(ws.root / 'x'))


@probe('a tar data set with a member named `../x.png` or `/abs/x.png`', "a path outside the archive: refusing it",
       code=1)
def tar_member_outside(ws):
    import tarfile
    image = (ws.data / 'train' / 'class0' / '0000.png').read_bytes()
    for name in ('/abs/0000.png', '../escape/0000.png'):  # the last one's answer goes into the table
        data = ws.root / f'evil-tar-{len(name)}'
        write_image_folders(data, as_tar=True)
        with tarfile.open(data / 'train.tar', 'a') as tar:
            info = tarfile.TarInfo(name)  # addfile keeps the name as given; add() would strip a leading /
            info.size = len(image)
            tar.addfile(info, io.BytesIO(image))
        with unchanged(data):
            code, err = ws.train('--data-dir', str(data), '--output', str(ws.root / 'x'))
        assert code == 1 and repr(name) in err, err
    return code, err


@probe('Ctrl-C while the final test split is evaluated', 'interrupted: `python -m train --resume',
       'the run, resumable from last.pth.tar', code=130)
def ctrl_c_in_final_test(ws):
    from train import train as train_script
    real, calls = train_script.evaluate, []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the validation pass of epoch 0, then the test split
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    run = ws.root / 'interrupted'
    with mock.patch.object(train_script, 'evaluate', evaluate):
        code, err = ws.train('--output', str(run), '--epochs', '1')
    assert (run / 'last.pth.tar').is_file() and not (run / 'results.json').exists()
    assert ws.train('--resume', str(run))[0] == 0 and (run / 'results.json').is_file()
    return code, err


@probe('a training batch of one 4x4 image (`--img-size 4 -b 1`)', 'reaches a 1x1 feature map, where BatchNorm sees '
       'one value per channel', code=1)
def one_pixel_batch_of_one(ws):
    return ws.train('--img-size', '4', '-b', '1', '--output', str(ws.root / 'tiny-batch'), '--epochs', '1')


@probe('`python -m visualize --output DIR` for an existing folder', 'is a folder: give the PNG file to write',
       code=2)
def visualize_output_folder(ws):
    from visualize.__main__ import main as visualize_main
    folder = ws.root / 'figures'
    folder.mkdir()
    with unchanged(folder):
        code, err = call(visualize_main, ['--model', 'resnet18_spa', '--dataset', 'folder', '--data-dir',
                                          str(ws.data), '--output', str(folder)])
    assert not folder.with_suffix('.png').exists()
    return code, err


@probe("`pretrained_cfg_overlay=dict(file=...)` with another architecture's weights, or a config.json",
       'holds the weights of another architecture or class count', code='WeightsDownloadError')
def overlay_other_architecture(ws):
    import timm
    code, err = raised(timm.create_model, 'resnet18_gc', pretrained=True, num_classes=4,
                       pretrained_cfg_overlay=dict(file=str(ws.run / 'model_best.safetensors'), num_classes=4))
    assert 'Missing key(s)' in err, err
    config = ws.releases('overlay') / 'timm-spa' / 'resnet18_spa.folder' / 'config.json'
    json_code, json_err = raised(timm.create_model, 'resnet18_spa', pretrained=True, num_classes=4,
                                 pretrained_cfg_overlay=dict(file=str(config)))
    assert json_code == 'WeightsDownloadError' and 'is a JSON file (a config.json?), not weights' in json_err
    assert 'pickle' not in json_err
    return code, err


@probe('`hf-hub:timm-spa/does-not-exist` through `python -m hub serve` (or a path that climbs out with `..`, '
       '`..%2f..%2fetc%2fpasswd`: 404, EntryNotFound)', 'does-not-exist is not served here; this '
       'server serves timm-spa/resnet18_spa.folder', code='RepositoryNotFoundError', slow=True)
def hub_serve_unknown_repository(ws):
    from huggingface_hub import hf_hub_download

    from hub.releases import released_repositories
    from hub.serve import HubServer, by_layout
    with HubServer(by_layout(released_repositories(ws.releases('served')))) as server:
        code, err = raised(hf_hub_download, 'timm-spa/does-not-exist', 'config.json', endpoint=server.endpoint,
                           cache_dir=str(ws.root / 'hf-cache'))
        assert '401 Client Error' not in err and 'Invalid credentials' not in err
        assert raised(hf_hub_download, 'timm-spa/resnet18_spa.folder', 'config.json', endpoint=server.endpoint,
                      cache_dir=str(ws.root / 'hf-cache')) == (0, '')
        # a file the served repository lacks is the Hub's EntryNotFound (transformers asks for optional files)
        missing = raised(hf_hub_download, 'timm-spa/resnet18_spa.folder', 'processor_config.json',
                         endpoint=server.endpoint, cache_dir=str(ws.root / 'hf-cache'))
        assert missing[0] == 'RemoteEntryNotFoundError', missing
        # a path that climbs out of the repository: 404, the Hub's EntryNotFound, nothing of the machine's files
        for path in ('/timm-spa/resnet18_spa.folder/resolve/main/..%2f..%2f..%2fetc%2fpasswd',
                     '/timm-spa/resnet18_spa.folder/resolve/main/../../../etc/passwd', '/..%2f..%2fetc%2fpasswd'):
            status, headers, body = _http_get(server.endpoint + path)
            assert (status, headers.get('X-Error-Code')) == (404, 'EntryNotFound') and b'root:' not in body, \
                (path, status, body)
    return code, err


@probe('a served release whose model.safetensors is rewritten in place while `python -m hub serve` runs',
       'was rewritten in place since the server started (it is no longer the file served under its hash); restart '
       'hub serve', 'the new file (never served under '
       "the old file's hash)", code='RemoteEntryNotFoundError', slow=True)
def hub_serve_file_rewritten_in_place(ws):
    from huggingface_hub import hf_hub_download

    from hub.releases import released_repositories
    from hub.serve import HubServer, by_layout
    releases = ws.releases('served-rewritten')
    weights = releases / 'timm-spa' / 'resnet18_spa.folder' / 'model.safetensors'
    with HubServer(by_layout(released_repositories(releases))) as server:
        with open(weights, 'r+b') as f:
            f.seek(100)
            f.write(b'\xff' * 8)
        return raised(hf_hub_download, 'timm-spa/resnet18_spa.folder', 'model.safetensors', endpoint=server.endpoint,
                      cache_dir=str(ws.root / 'hf-cache-rewritten'))


def _http_get(url: str):
    """Status, headers and body of a GET sent exactly as written (no client normalises the path)."""
    import http.client
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request('GET', url[len(f'{parts.scheme}://{parts.netloc}'):])
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@probe("a config.json whose `model_args` were edited into an argument timm-spa does not take (`attn_kwarg`)",
       "resnet18_spa takes no argument 'attn_kwarg' (did you mean attn_kwargs?)", kept='the folder',
       code='UnknownModelArguments')
def config_with_edited_model_args(ws):
    import timm
    folder = ws.root / 'edited-config'
    from hub.__main__ import main as hub_main
    assert call(hub_main, ['export', str(ws.run), '--output', str(folder)])[0] == 0
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps(dict(config, model_args={'attn_kwarg': {'k': 4}})))
    with unchanged(folder):
        return raised(timm.create_model, f'local-dir:{folder}', pretrained=True)


@probe('`--dataset tinyimagenet` whose wnids.txt names a class twice (or whose val_annotations.txt has a line '
       'with no class)', 'names n00000001 more than once: each class must be listed once', 'the archive', code=1)
def tiny_imagenet_repeated_class(ws):
    from conftest import write_tiny_imagenet
    root = write_tiny_imagenet(ws.root / 'tiny-repeated', wnids=['n00000000', 'n00000001', 'n00000002'])
    folder = root / 'tiny-imagenet-200'
    annotations = folder / 'val' / 'val_annotations.txt'
    with annotations.open('a') as f:
        f.write('val_0.JPEG\n')
    with unchanged(root):
        code, err = ws.train('--dataset', 'tinyimagenet', '--data-dir', str(root), '--val-size', '3', '--output',
                             str(ws.root / 'x'))
    assert code == 1 and "line 7: 'val_0.JPEG' names no class" in err, err
    annotations.write_text(''.join(annotations.read_text().splitlines(True)[:-1]))
    (folder / 'wnids.txt').write_text('n00000000\nn00000001\nn00000001\nn00000002\n')
    with unchanged(root):
        return ws.train('--dataset', 'tinyimagenet', '--data-dir', str(root), '--val-size', '3', '--output',
                        str(ws.root / 'x'))


@probe('`--dataset tinyimagenet` pointed at a half-extracted archive', 'have no train images (first: '
       'train/n00000002/images/): the archive is not fully extracted', code=1)
def tiny_imagenet_half_extracted(ws):
    from conftest import write_tiny_imagenet
    root = write_tiny_imagenet(ws.root / 'tiny-half')
    folder = root / 'tiny-imagenet-200'
    (folder / 'val' / 'images' / 'val_5.JPEG').unlink()
    code, err = ws.train('--dataset', 'tinyimagenet', '--data-dir', str(root), '--val-size', '3', '--output',
                         str(ws.root / 'x'))
    assert code == 1 and 'lacks 1 of the 6 images val_annotations.txt lists (first: val_5.JPEG)' in err, err
    shutil.rmtree(folder / 'train' / 'n00000002')
    return ws.train('--dataset', 'tinyimagenet', '--data-dir', str(root), '--val-size', '3', '--output',
                    str(ws.root / 'x'))


@probe('`python -m hub serve releases/` stopped with SIGTERM (as kill, timeout, systemd and docker stop it)',
       'stopping (SIGTERM)', 'the releases; nothing written', code=0, slow=True)
def hub_serve_sigterm(ws):
    import signal
    releases = ws.releases('serve-sigterm')
    tmp = ws.root / 'serve-tmp'
    tmp.mkdir()
    with unchanged(releases):
        proc = subprocess.Popen([sys.executable, '-m', 'hub', 'serve', str(releases)], cwd=ROOT,
                                env={**os.environ, 'TMPDIR': str(tmp), 'PYTHONUNBUFFERED': '1'},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith('export HF_ENDPOINT='):
                break
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert not any(tmp.iterdir())
    return proc.returncode, ''.join(lines) + out



@probe('a data loader worker killed mid-epoch (by the kernel when memory runs out, or a stray `kill`)',
       'the system ends a worker when memory runs out (see `dmesg`) and fewer --workers or a smaller --batch-size '
       'need less; `python -m train --resume RUN` continues it from last.pth.tar', 'the run, resumable', slow=True)
def loader_worker_killed(ws):
    import signal
    run = ws.root / 'worker-killed'
    proc = subprocess.Popen([sys.executable, '-m', 'train', *TINY, '--data-dir', str(ws.data), '--epochs', '2',
                             '-b', '4', '--workers', '1', '--log-interval', '1', '--output', str(run)], cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1'), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith('epoch 1 step 2/'):
            workers = Path(f'/proc/{proc.pid}/task/{proc.pid}/children').read_text().split()
            assert len(workers) == 1, workers
            os.kill(int(workers[0]), signal.SIGKILL)
    err = without_worker_death_reports(proc.stderr.read())
    # in words that depend on how it was noticed: torch's 'DataLoader worker (pid N) is killed by signal: Killed'
    # or '... exited unexpectedly', or the batch being handed over breaks; one line in all
    assert err.startswith(('python -m train: error: DataLoader worker (pid', 'python -m train: error: a DataLoader '
                           'worker stopped while it handed over a batch')), err
    assert len(err.strip().splitlines()) == 1, err
    code = proc.wait(timeout=60)
    from train import train as train_script
    resumed = call(train_script.main, ['--resume', str(run)])
    assert resumed[0] == 0 and (run / 'results.json').is_file(), resumed
    return code, err.replace(str(run), 'RUN')

@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp('bad-input'))


@pytest.mark.parametrize('case', [pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.slow else [])
                                  for p in PROBES])
def test_bad_input_gets_one_clear_line(workspace, case):
    code, err = case.run(workspace)
    assert code == case.code, err
    assert case.expect in err, err
    assert 'Traceback' not in err


def render_table() -> str:
    lines = ['| input | answer (fragment) | exit status | kept |', '|---|---|---|---|']
    for p in PROBES:
        status = p.code if isinstance(p.code, int) else f'raises `{p.code}`'
        lines.append(f'| {p.given} | {p.expect} | {status} | {p.kept} |')
    return '\n'.join(lines)


def test_reliability_page_is_this_table():
    page = (ROOT / 'docs' / 'reliability.md').read_text()
    assert render_table() in page, 'regenerate it: python tests/test_bad_input.py'


def test_the_suite_keeps_no_files_of_passing_tests(tmp_path):
    """The suite writes checkpoints and data sets under pytest's temporary folder. Kept for pytest's default three
    runs they came to 63 GB here and filled the disk under a training run; the project's configuration keeps only
    what failed tests wrote."""
    (tmp_path / 'test_probe.py').write_text('def test_writes(tmp_path):\n    (tmp_path / "x").write_bytes(b"x")\n')
    base = tmp_path / 'base'
    done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-c',
                           str(ROOT / 'pyproject.toml'), '--rootdir', str(tmp_path), '--basetemp', str(base),
                           str(tmp_path / 'test_probe.py')], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not list(base.rglob('x'))


if __name__ == '__main__':
    print(render_table())
