"""Every supported data set layout, the held-out validation split, and bad data."""
import contextlib
import io
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import (
    TINY_IMAGENET,
    _images,
    without_worker_death_reports,
    write_cifar,
    write_image_folders,
    write_tiny_imagenet,
)

from timm_spa.models.datasets import TINY_IMAGENET_CLASSES
from train.data import DataError, ShardSampler, TransformedSamples, build_loader, build_transforms, load_dataset


@pytest.mark.parametrize('dataset,classes', [('cifar10', 10), ('cifar100', 100)])
def test_official_cifar_format(tmp_path, dataset, classes):
    write_cifar(tmp_path, dataset, n_train=50, n_test=20)
    splits = load_dataset(dataset, str(tmp_path), val_size=10)
    assert splits.num_classes == classes and splits.tag == dataset
    assert splits.label == ('CIFAR-10' if dataset == 'cifar10' else 'CIFAR-100')
    assert [note.split(':')[0] for note in splits.notes] == ['A partial copy']  # 50 / 20 images, not 50,000
    assert len(splits.train) == 50 and len(splits.test) == 20
    expected, labels = _images(50, seed=1, classes=classes)
    image, label = splits.train.load(7)
    assert np.array_equal(np.asarray(image), expected[7]) and label == labels[7]
    # --data-dir may also name the extracted folder itself
    inner = tmp_path / ('cifar-10-batches-py' if dataset == 'cifar10' else 'cifar-100-python')
    assert len(load_dataset(dataset, str(inner), val_size=10).test) == 20


def test_cifar_pickles_may_not_run_code(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / 'cifar-10-batches-py' / 'test_batch', 'wb') as f:
        pickle.dump({b'data': __import__('os').getcwd}, f)  # a global that a plain unpickler would resolve
    with pytest.raises(DataError, match='test_batch is not a readable CIFAR python batch file'):
        load_dataset('cifar10', str(tmp_path), val_size=10)


@pytest.mark.parametrize('as_tar', [False, True])
def test_image_folders_and_tars(tmp_path, as_tar):
    write_image_folders(tmp_path, classes=4, n_train=24, n_test=8, as_tar=as_tar)
    splits = load_dataset('folder', str(tmp_path), val_size=4)
    assert splits.class_names == ['class0', 'class1', 'class2', 'class3']
    assert len(splits.train) == 24 and len(splits.test) == 8 and splits.tag is None
    expected, labels = _images(24, 16, 3, 4)
    for index in (0, 5, 23):
        image, label = splits.train.load(index)
        name = splits.train.name_fn(index)
        written = int(name.rsplit('/', 1)[1].split('.')[0])  # the files are named by their index
        assert name.startswith(str(tmp_path / ('train.tar' if as_tar else 'train')))
        assert label == labels[written] and f'class{label}/' in name
        assert np.array_equal(np.asarray(image), expected[written])  # png is lossless


@pytest.mark.parametrize('as_tar', [False, True])
def test_sixteen_bit_greyscale_is_scaled_to_eight_bits(tmp_path, as_tar):
    """A 16-bit greyscale PNG (Pillow's I;16) decodes to the same picture in 8 bits, round(v * 255 / 65535) in every
    channel; Pillow's convert('RGB') alone would clip it to 255 nearly everywhere."""
    from PIL import Image
    write_image_folders(tmp_path, classes=2, n_train=4, n_test=2, as_tar=False)
    wide = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    Image.fromarray(wide).save(tmp_path / 'train' / 'class0' / '9999.png')
    if as_tar:
        import tarfile
        for split in ('train', 'test'):
            with tarfile.open(tmp_path / f'{split}.tar', 'w') as tar:
                for path in sorted((tmp_path / split).rglob('*.png')):
                    tar.add(path, arcname=str(path.relative_to(tmp_path / split)))
            (tmp_path / split).rename(tmp_path / f'{split}-files')
    splits = load_dataset('folder', str(tmp_path), val_size=1)
    index = next(i for i in range(len(splits.train)) if splits.train.name_fn(i).endswith('9999.png'))
    image = np.asarray(splits.train.load(index)[0])
    expected = np.floor(wide.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    assert image.shape == (16, 16, 3) and all(np.array_equal(image[..., c], expected) for c in range(3))


def test_link_members_of_a_tar_are_named_in_a_note(tmp_path):
    """timm's tar reader reads regular members only; a symbolic and a hard link to images are left out, and the
    data set's notes (printed at the start of a run, recorded in its results) say how many."""
    import tarfile
    write_image_folders(tmp_path, classes=2, n_train=6, n_test=4, as_tar=True)
    with tarfile.open(tmp_path / 'train.tar') as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tmp_path / 'train.tar', 'w') as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
        for kind, name in ((tarfile.SYMTYPE, 'class0/sym.png'), (tarfile.LNKTYPE, 'class1/hard.png')):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, members[0][0].name
            tar.addfile(link)
    splits = load_dataset('folder', str(tmp_path), val_size=1)
    assert len(splits.train) == 6
    assert splits.notes == ['train.tar: 2 image member(s) that are links (symbolic or hard, e.g. class0/sym.png) '
                            'were not read.']


def test_cifar_from_image_files_carries_the_caveat(tmp_path):
    write_image_folders(tmp_path, classes=10, n_train=30, n_test=10, as_tar=True)
    splits = load_dataset('cifar10', str(tmp_path), val_size=5)
    assert 'not the official binary batches' in splits.label and splits.notes
    assert load_dataset('cifar10', str(tmp_path), val_size=5, label='CIFAR-10 (JPEG q75 copy)').label \
        == 'CIFAR-10 (JPEG q75 copy)'


def test_tiny_imagenet_archive_layout(tmp_path):
    write_tiny_imagenet(tmp_path, classes=3, per_class=6, val=6)
    splits = load_dataset('tinyimagenet', str(tmp_path), val_size=3)
    assert splits.num_classes == 3 and splits.image_size == 64 and splits.tag == 'tinyimagenet'
    assert len(splits.train) == 18 and len(splits.test) == 6
    assert [splits.test.load(i)[1] for i in range(6)] == [0, 1, 2, 0, 1, 2]  # from val_annotations.txt
    assert splits.test.name_fn(4).endswith('val/images/val_4.JPEG')


def test_tiny_imagenet_image_in_two_splits_is_refused(tmp_path):
    """A test image that is a train image (a link, or a copy under the same path twice) would be tested on after
    training on it: refused, naming both entries."""
    root = write_tiny_imagenet(tmp_path)
    folder = root / 'tiny-imagenet-200'
    train_image = next((folder / 'train').rglob('*.JPEG'))
    (folder / 'val' / 'images' / 'val_0.JPEG').unlink()
    (folder / 'val' / 'images' / 'val_0.JPEG').symlink_to(train_image)
    with pytest.raises(DataError, match=r'val_0.JPEG \(also .*train.*\) is listed twice across train/ and '
                                        r'val_annotations.txt'):
        load_dataset('tinyimagenet', str(root), 3)


@pytest.mark.skipif(not (TINY_IMAGENET / 'wnids.txt').is_file(),
                    reason=f'no Tiny-ImageNet-200 at {TINY_IMAGENET} (build it with '
                           '../shared/tools/tiny-imagenet-200.sh, or set TIMM_SPA_TINYIMAGENET)')
def test_tiny_imagenet_loader_on_the_real_archive():
    """The official layout as built from the CS231n archive: counts, label order, the val split as test."""
    splits = load_dataset('tinyimagenet', str(TINY_IMAGENET.parent))
    wnids = (TINY_IMAGENET / 'wnids.txt').read_text().split()
    words = dict(line.split('\t', 1) for line in (TINY_IMAGENET / 'words.txt').read_text().splitlines())
    assert list(TINY_IMAGENET_CLASSES) == [(w, words[w]) for w in wnids] and len(wnids) == 200  # the package's copy
    assert splits.class_names == [words[w].split(',')[0] for w in wnids]  # wnids.txt order is label order
    assert splits.class_names == list(timm.create_model('resnet18_spa.tinyimagenet').pretrained_cfg['label_names'])
    assert (len(splits.train), len(splits.test)) == (100000, 10000) and not splits.notes
    assert (len(splits.train_indices), len(splits.val_indices)) == (90000, 10000)
    assert sorted(Counter(splits.train.labels).values()) == [500] * 200
    assert sorted(Counter(splits.test.labels).values()) == [50] * 200
    annotations = (TINY_IMAGENET / 'val' / 'val_annotations.txt').read_text().splitlines()
    for line in annotations[:5] + annotations[-5:]:  # every test label is the annotation's class
        name, wnid = line.split('\t')[:2]
        i = int(name[len('val_'):-len('.JPEG')])
        assert splits.test.name_fn(i).endswith(f'val/images/{name}')
        assert splits.test.labels[i] == wnids.index(wnid)
    image, label = splits.test.load(0)
    assert image.size == (64, 64) and image.mode == 'RGB' and wnids[label] == annotations[0].split('\t')[1]


def test_tiny_imagenet_labels_follow_the_archive_whatever_the_wnids_order(tmp_path):
    """Released weights number the classes in the archive's wnids.txt order: a copy listing the same 200 classes
    in another order gets the same labels (and readable names); any other class list keeps its own order."""
    canonical = [wnid for wnid, _ in TINY_IMAGENET_CLASSES]
    shuffled = list(reversed(canonical))
    write_tiny_imagenet(tmp_path, wnids=shuffled, per_class=1, val=2)
    splits = load_dataset('tinyimagenet', str(tmp_path), val_size=20)
    for i in range(len(splits.train)):
        wnid = Path(splits.train.name_fn(i)).parent.parent.name
        assert splits.train.labels[i] == canonical.index(wnid)
    assert splits.class_names[0] == 'Egyptian cat' == TINY_IMAGENET_CLASSES[0][1]
    other = write_tiny_imagenet(tmp_path / 'other', classes=3)
    assert load_dataset('tinyimagenet', str(other), val_size=3).class_names == ['n00000000', 'n00000001', 'n00000002']


def test_digits_ship_with_the_package():
    splits = load_dataset('digits', None)
    assert splits.num_classes == 10 and len(splits.test) == 360 and len(splits.val_indices) == 180
    assert not splits.hflip  # mirrored digits are other digits


def test_validation_split_is_held_out_and_fixed(tmp_path):
    write_cifar(tmp_path, n_train=50)
    a = load_dataset('cifar10', str(tmp_path), val_size=10, val_split_seed=0)
    b = load_dataset('cifar10', str(tmp_path), val_size=10, val_split_seed=0)
    c = load_dataset('cifar10', str(tmp_path), val_size=10, val_split_seed=1)
    assert a.val_indices == b.val_indices != c.val_indices
    assert not set(a.val_indices) & set(a.train_indices)
    assert sorted(a.val_indices + a.train_indices) == list(range(50))


def test_default_validation_size_for_cifar(tmp_path):
    write_cifar(tmp_path, n_train=50)
    with pytest.raises(DataError, match='--val-size 5000 must be between 1 and 49'):
        load_dataset('cifar10', str(tmp_path))


def test_eval_sharding_counts_every_image_once():
    for world in (1, 2, 3):
        seen = sorted(i for rank in range(world) for i in ShardSampler(10, rank, world))
        assert seen == list(range(10))


def test_cifar_augmentation_is_pad_crop_and_flip(tmp_path):
    write_cifar(tmp_path, n_train=50)
    splits = load_dataset('cifar10', str(tmp_path), val_size=10)
    names = [type(t).__name__ for t in build_transforms(splits, 32, train=True).transforms]
    assert names == ['RandomCrop', 'RandomHorizontalFlip', 'MaybeToTensor', 'Normalize']
    assert build_transforms(splits, 32, train=True).transforms[0].padding == 4
    assert [type(t).__name__ for t in build_transforms(splits, 32, train=False).transforms] == ['ToTensor', 'Normalize']
    loader = build_loader(TransformedSamples(splits.test, None, build_transforms(splits, 32, False)), 8, False, 0, 0)
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 32, 32)


def test_timm_augmentation_and_random_erasing_add_to_the_training_transform(tmp_path):
    write_cifar(tmp_path, n_train=50)
    splits = load_dataset('cifar10', str(tmp_path), val_size=10)
    train_tf = build_transforms(splits, 32, True, aa='rand-m9-mstd0.5-inc1', reprob=1.0, remode='const')
    names = [type(t).__name__ for t in train_tf.transforms]
    assert names == ['RandomCrop', 'RandomHorizontalFlip', 'RandAugment', 'MaybeToTensor', 'Normalize', 'RandomErasing']
    augment = train_tf.transforms[2]
    assert augment.num_layers == 2 and all(op.magnitude == 9 for op in augment.ops)  # timm's parse of the string
    assert augment.ops[0].hparams['translate_const'] == int(32 * 0.45)
    assert augment.ops[0].hparams['img_mean'] == tuple(round(255 * m) for m in splits.mean)
    # const erasing leaves exactly zero in one box of the normalised image, nowhere without it
    image, _ = splits.train.load(0)
    erased = train_tf(image)
    zero = (erased == 0).all(0)
    rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
    assert zero.sum() > 0 and zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    assert [type(t).__name__ for t in build_transforms(splits, 32, False, aa='v0', reprob=1.0).transforms] == \
        ['ToTensor', 'Normalize']  # evaluation is never augmented
    augmix = build_transforms(splits, 32, True, aa='augmix-m5-w3').transforms[2]
    assert type(augmix).__name__ == 'AugMixAugment'  # as timm's train.py sets it: relative translations up to 30%
    assert [op.hparams['translate_pct'] for op in augmix.ops if op.name == 'TranslateXRel'] == [0.3]
    assert type(build_transforms(splits, 32, True, aa='original').transforms[2]).__name__ == 'AutoAugment'


def test_every_augmentation_op_applies_at_its_strongest_level(tmp_path):
    """A policy's op that fails on one draw in thousands ends a long run mid-epoch: apply each op for sure, at the
    magnitude that gives its extreme argument (RandAugment at m10, AutoAugment's sub-policies as written)."""
    write_cifar(tmp_path, n_train=20)
    splits = load_dataset('cifar10', str(tmp_path), val_size=5)
    image, _ = splits.train.load(0)
    ops = []
    for policy in ('rand-m10-inc1', 'rand-m10', 'rand-m0-inc1'):
        ops += build_transforms(splits, 32, True, aa=policy).transforms[2].ops
    for policy in ('v0', 'original', 'v0r', 'originalr'):
        ops += [op for sub_policy in build_transforms(splits, 32, True, aa=policy).transforms[2].policy
                for op in sub_policy]
    for op in ops:
        op.prob, op.magnitude_std = 1.0, 0.0
        out = op(image)
        assert out.size == image.size and out.mode == image.mode, op.name


@pytest.mark.parametrize('dataset,match', [
    ('cifar10', r'cifar-10-batches-py.*cifar-10-python\.tar\.gz.*--download'),
    ('cifar100', r'cifar-100-python'),
    ('tinyimagenet', r'tiny-imagenet-200\.zip'),
    ('folder', r'train/ and test/ \(or train\.tar and test\.tar\)'),
])
def test_missing_data_explains_the_layout(tmp_path, dataset, match):
    with pytest.raises(DataError, match=match):
        load_dataset(dataset, str(tmp_path / 'nowhere'))


def test_corrupt_image_is_named(tmp_path):
    write_image_folders(tmp_path, classes=2, n_train=8, n_test=4)
    bad = sorted((tmp_path / 'train' / 'class1').glob('*.png'))[0]
    bad.write_bytes(b'not a png')
    splits = load_dataset('folder', str(tmp_path), val_size=2)
    index = next(i for i in range(len(splits.train)) if splits.train.name_fn(i).endswith(bad.name))
    with pytest.raises(DataError, match=rf'cannot read image .*{bad.name}'):
        splits.train.load(index)


def test_cifar_folder_with_wrong_class_count(tmp_path):
    write_image_folders(tmp_path, classes=4, n_train=8, n_test=4)
    with pytest.raises(DataError, match='has 4 classes, but CIFAR-10 has 10'):
        load_dataset('cifar10', str(tmp_path), val_size=2)


@pytest.mark.parametrize('cut', ['mid-data', 'mid-header', 'end-marker'])
def test_truncated_tar_is_refused_with_its_name(tmp_path, cut):
    """A tar cut short (inside a member, inside a header, or before its end marker) is named, never read as a
    smaller data set; tarfile alone stops quietly at a cut-off header."""
    import tarfile
    write_image_folders(tmp_path, classes=4, n_train=40, n_test=8, as_tar=True)
    tar = tmp_path / 'train.tar'
    with tarfile.open(tar) as f:
        last = f.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    keep = {'mid-data': last.offset_data + last.size // 2, 'mid-header': last.offset + 100, 'end-marker': end + 512}
    tar.write_bytes(tar.read_bytes()[:keep[cut]])
    with pytest.raises(DataError, match=r'train\.tar is truncated or corrupt'):
        load_dataset('folder', str(tmp_path), val_size=4)


def test_complete_tar_without_padding_is_accepted(tmp_path):
    write_image_folders(tmp_path, classes=2, n_train=8, n_test=4, as_tar=True)
    splits = load_dataset('folder', str(tmp_path), val_size=2)
    assert len(splits.train) == 8


def test_partial_copy_of_a_known_data_set_says_so(tmp_path):
    write_cifar(tmp_path, n_train=50, n_test=20)
    splits = load_dataset('cifar10', str(tmp_path), val_size=10)
    assert any('A partial copy: 50 train and 20 test images, where CIFAR-10 has 50,000 and 10,000' in note
               for note in splits.notes)


def test_corrupt_image_is_found_before_training(tmp_path):
    write_image_folders(tmp_path, classes=2, n_train=8, n_test=4)
    bad = sorted((tmp_path / 'test' / 'class1').glob('*.png'))[0]
    bad.write_bytes(bad.read_bytes()[:60])  # a valid header, then nothing: only decoding finds it
    splits = load_dataset('folder', str(tmp_path), val_size=2)
    splits.train.check_readable()
    with pytest.raises(DataError, match=rf'cannot read image .*{bad.name}'):
        splits.test.check_readable()


def test_error_from_a_loader_worker_is_one_line(tmp_path):
    from train.cli import message
    write_image_folders(tmp_path, classes=2, n_train=8, n_test=4)
    splits = load_dataset('folder', str(tmp_path), val_size=2)
    bad = sorted((tmp_path / 'train' / 'class0').glob('*.png'))[0]
    bad.write_bytes(b'garbage')
    loader = build_loader(TransformedSamples(splits.train, None, build_transforms(splits, 16, False)), 4, False, 1, 0)
    with pytest.raises(DataError) as error:
        list(loader)
    assert 'DataLoader worker' in str(error.value)  # what torch re-raises ...
    text = message(error.value)  # ... and what the user is shown
    assert text.startswith('cannot read image ') and bad.name in text and '\n' not in text



def test_a_killed_loader_worker_is_one_line_from_every_command():
    """A worker the kernel's OOM killer (here SIGKILL) ends: torch's words, why and what needs less memory, exit 1;
    any other RuntimeError is left alone (a bug keeps its traceback). In a process of its own: torch's SIGCHLD
    handler stays installed after a loader dies, where pytest-xdist's worker must not get it."""
    import re
    import subprocess
    import sys

    from train.cli import run_cli
    script = (
        'import os, signal, torch\n'
        'from train.cli import run_cli\n'
        'def body():\n'
        '    batches = iter(torch.utils.data.DataLoader(list(range(64)), batch_size=1, num_workers=1))\n'
        '    next(batches)\n'
        '    os.kill(batches._workers[0].pid, signal.SIGKILL)\n'
        '    list(batches)\n'
        "run_cli('python -m train.validate', body)\n")
    done = subprocess.run([sys.executable, '-c', script], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and re.fullmatch(
        r'python -m train\.validate: error: (DataLoader worker \(pid(\(s\))? \d+\) (is killed by signal: Killed|'
        r'exited unexpectedly)|a DataLoader worker stopped while it handed over a batch \((ConnectionResetError|'
        r'EOFError)[^)]*\)): the system ends a worker when memory runs out \(see `dmesg`\) and fewer --workers or '
        r'a smaller --batch-size need less\.\n', without_worker_death_reports(done.stderr)), done.stderr
    with pytest.raises(RuntimeError, match='a bug'):
        run_cli('python -m train.validate', lambda: (_ for _ in ()).throw(RuntimeError('a bug')))


def test_a_worker_death_signalled_while_its_handler_is_switched_off_is_not_a_traceback(monkeypatch):
    """torch's SIGCHLD handler raises wherever the main thread is when the signal comes: also inside the call that
    switches it off, before the switch. A Python handler runs at the start of such a call, so that is simulated."""
    import signal

    from train import cli
    calls = []

    def signal_arriving_first(signum, handler):
        calls.append((signum, handler))
        if len(calls) == 1:
            raise RuntimeError('DataLoader worker (pid 4242) is killed by signal: Killed. ')
        return signal.SIG_DFL

    monkeypatch.setattr(cli.signal, 'signal', signal_arriving_first)
    cli.ignore_worker_deaths()
    assert calls == [(signal.SIGCHLD, signal.SIG_DFL)] * 2
    monkeypatch.setattr(cli.signal, 'signal', lambda *_: (_ for _ in ()).throw(RuntimeError('a bug')))
    with pytest.raises(RuntimeError, match='a bug'):
        cli.ignore_worker_deaths()


def test_a_dead_worker_ends_the_command_though_its_loader_cannot_be_torn_down(tmp_path):
    """A worker killed while it holds its loader's done-event lock (it takes it for every batch) leaves torch's
    tear-down of the iterator waiting for that lock forever. Simulated: the worker takes the lock and keeps it
    (it stays alive, stuck), then the command meets a dead worker's error. Drawn through a generator (as tqdm
    draws), the iterator would be torn down while the error rises (`HoldingLoader` keeps it), else when the
    interpreter ends (`exit_now` skips that)."""
    import signal
    import subprocess
    import sys
    pid_file = tmp_path / 'worker.pid'
    script = (
        'import os, sys, torch\n'
        'from train.cli import run_cli\n'
        'from train.data import build_loader\n'
        'class TakesTheLock(torch.utils.data.Dataset):\n'
        '    def __len__(self):\n'
        '        return 64\n'
        '    def __getitem__(self, i):\n'
        '        if i == 8:\n'
        f'            open({str(pid_file)!r}, "w").write(str(os.getpid()))\n'
        '            frame = sys._getframe()\n'
        '            while frame.f_code.co_name != "_worker_loop":\n'
        '                frame = frame.f_back\n'
        '            frame.f_locals["done_event"]._cond.acquire()\n'
        '        return torch.zeros(1)\n'
        'def body():\n'
        '    loader = build_loader(TakesTheLock(), 4, False, workers=1, seed=0)\n'
        '    for step, _ in enumerate(batch for batch in loader):\n'
        '        if step == 2:\n'
        '            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed.")\n'
        "run_cli('python -m train.validate', body)\n")
    err = tmp_path / 'stderr'
    try:
        with err.open('w') as to_err:  # a file, not a pipe: the stuck worker holds what it inherited open
            done = subprocess.run([sys.executable, '-c', script], cwd=Path(__file__).resolve().parent.parent,
                                  stdout=subprocess.DEVNULL, stderr=to_err, timeout=90)
    finally:
        if pid_file.is_file():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the stuck worker
    assert done.returncode == 1 and err.read_text() == (
        'python -m train.validate: error: DataLoader worker (pid 4242) is killed by signal: Killed: the system ends '
        'a worker when memory runs out (see `dmesg`) and fewer --workers or a smaller --batch-size need less.\n')


@pytest.mark.slow
def test_tar_reads_stay_correct_in_loader_workers_after_the_check(tmp_path):
    """The readability check reads the tar in the main process; forked loader workers must not share its
    file handle (one offset for all: concurrent reads return garbage)."""
    write_image_folders(tmp_path, classes=4, n_train=400, n_test=8, size=32, as_tar=True)
    splits = load_dataset('folder', str(tmp_path), val_size=4)
    splits.train.check_readable()
    transform = build_transforms(splits, 32, False)
    expected = torch.stack([transform(splits.train.load(i)[0]) for i in range(len(splits.train))])
    for _ in range(2):
        loader = build_loader(TransformedSamples(splits.train, None, transform), 16, False, workers=2, seed=0)
        got = torch.cat([images for images, _ in loader])
        assert torch.equal(got, expected)

