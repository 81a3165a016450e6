"""Small data sets written in each official layout, for the training tests."""
import os
import pickle
import re
import tarfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import torch
from PIL import Image

if os.environ.get('PYTEST_XDIST_WORKER'):
    # pytest -n 2 on two cores: one thread per worker (and per process it starts). With two threads each, the
    # workers fought over the cores: on an AVX2-only 2-core EPYC the suite took 22 min instead of 17, and one
    # sweep test 339 s instead of 77.
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    torch.set_num_threads(1)


ROOT = Path(__file__).resolve().parent.parent  # the repository: where commands run, releases/ and README.md lie

# The real Tiny-ImageNet-200 (built by ../shared/tools/tiny-imagenet-200.sh); tests that need it skip where absent
TINY_IMAGENET = Path(os.environ.get('TIMM_SPA_TINYIMAGENET', Path.home() / 'data' / 'tiny-imagenet-200'))


def without_worker_death_reports(stderr: str) -> str:
    """stderr less Python's reports of torch's SIGCHLD handler raising inside a `__del__` as the error rose
    ("Exception ignored in ...", then "RuntimeError: DataLoader worker ... is killed by signal"): the signal
    comes when it comes, and no command can switch the handler off before its error reaches it."""
    return re.sub(r'Exception ignored in: [^\n]*\n(?:(?!Exception ignored in)[^\n]*\n)*?'
                  r'RuntimeError: DataLoader worker \(pid[^\n]*is killed by signal[^\n]*\n', '', stderr)


def slow_at_depth_50(name: str, *values):
    """A test parameter for model `name` (and `values`), marked slow for the depth-50 models: the fast loop
    (`-m "not slow"`) checks the depth-18 model of each attention type, CI all of them."""
    return pytest.param(name, *values, marks=[pytest.mark.slow] if name.startswith('resnet50') else [])


def randomize_norm(norm: torch.nn.Module) -> None:
    """A BatchNorm with weights, bias and running statistics away from their initial values."""
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)


def activate_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Every attention block of `model` made to change its input (the blocks start as the identity, or nearly):
    SPA's and non-local's last BatchNorm randomised, global context's last conv drawn at random."""
    from timm_spa.capture import attention_blocks
    torch.manual_seed(0)
    for _, block, kind in attention_blocks(model):
        if kind in ('spa', 'nl'):
            randomize_norm(block.norm)
        else:
            with torch.no_grad():
                block.mlp_add.fc2.weight.normal_(0, 0.1)
    return model


def _images(n, size=32, seed=0, classes=10):
    """Images whose mean colour encodes the class, so a few epochs can learn something."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = (labels[:, None, None, None] * (200 // classes) + 20).astype(np.float64)
    images = np.clip(base + rng.normal(0, 25, (n, size, size, 3)), 0, 255).astype(np.uint8)
    return images, labels


def write_cifar(root: Path, dataset: str = 'cifar10', n_train: int = 50, n_test: int = 20) -> Path:
    """The official python layout: pickled dicts of uint8 rows (N x 3072, channel-major) and labels."""
    classes = 10 if dataset == 'cifar10' else 100
    folder = root / ('cifar-10-batches-py' if dataset == 'cifar10' else 'cifar-100-python')
    folder.mkdir(parents=True)
    key = b'labels' if dataset == 'cifar10' else b'fine_labels'

    def dump(name, images, labels):
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        with open(folder / name, 'wb') as f:
            pickle.dump({b'data': rows, key: labels.tolist(), b'batch_label': name.encode()}, f)

    train_x, train_y = _images(n_train, seed=1, classes=classes)
    test_x, test_y = _images(n_test, seed=2, classes=classes)
    if dataset == 'cifar10':
        for i, part in enumerate(np.array_split(np.arange(n_train), 5)):
            dump(f'data_batch_{i + 1}', train_x[part], train_y[part])
        dump('test_batch', test_x, test_y)
        with open(folder / 'batches.meta', 'wb') as f:
            pickle.dump({b'label_names': [f'class{i}'.encode() for i in range(10)]}, f)
    else:
        dump('train', train_x, train_y)
        dump('test', test_x, test_y)
        with open(folder / 'meta', 'wb') as f:
            pickle.dump({b'fine_label_names': [f'c{i:03d}'.encode() for i in range(100)]}, f)
    return root


def write_image_folders(root: Path, classes: int = 4, n_train: int = 48, n_test: int = 16, size: int = 16,
                        as_tar: bool = False) -> Path:
    """train/<class>/<n>.png and test/<class>/<n>.png (or train.tar and test.tar holding them)."""
    for split, n, seed in (('train', n_train, 3), ('test', n_test, 4)):
        images, labels = _images(n, size, seed, classes)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / split / f'class{label}' / f'{i:04d}.png'
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
        if as_tar:
            with tarfile.open(root / f'{split}.tar', 'w') as tar:
                for path in sorted((root / split).rglob('*.png')):
                    tar.add(path, arcname=str(path.relative_to(root / split)))
            for path in sorted((root / split).rglob('*.png')):
                path.unlink()
            for folder in sorted((root / split).iterdir()):
                folder.rmdir()
            (root / split).rmdir()
    return root


def write_tiny_imagenet(root: Path, classes: int = 3, per_class: int = 6, val: int = 6,
                        wnids: Optional[List[str]] = None) -> Path:
    """The archive's layout with `classes` made-up WordNet ids (or `wnids`, in that wnids.txt order)."""
    folder = root / 'tiny-imagenet-200'
    wnids = wnids or [f'n{idx:08d}' for idx in range(classes)]
    classes = len(wnids)
    (folder / 'val' / 'images').mkdir(parents=True)
    (folder / 'wnids.txt').write_text('\n'.join(wnids) + '\n')
    images, labels = _images(classes * per_class, 64, 5, classes)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / 'train' / wnids[label] / 'images' / f'{wnids[label]}_{i}.JPEG'
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format='JPEG')
    images, labels = _images(val, 64, 6, classes)
    lines = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(folder / 'val' / 'images' / f'val_{i}.JPEG', format='JPEG')
        lines.append(f'val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63')
    (folder / 'val' / 'val_annotations.txt').write_text('\n'.join(lines) + '\n')
    return root


@pytest.fixture
def folder_data(tmp_path):
    return write_image_folders(tmp_path / 'data')


# the recipe the training tests share: 16x16 images of `write_image_folders`, batch 8, no loader workers
TINY_TRAIN = ['--dataset', 'folder', '--img-size', '16', '-b', '8', '--val-size', '8', '--workers', '0',
              '--lr', '0.05', '--log-interval', '0', '--no-progress', '--model', 'resnet18_spa']


def train_tiny(data: Path, out: Path, *extra: str) -> Path:
    """`python -m train` with the tiny recipe on `data` into `out` (`extra` flags win); returns `out`."""
    from train import train as train_script
    assert train_script.main([*TINY_TRAIN, '--data-dir', str(data), '--output', str(out), *extra]) is not None
    return out


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory) -> Path:
    """One finished 1-epoch resnet18_spa run for the tests that only need a run: read it, copy it to change it."""
    root = tmp_path_factory.mktemp('tiny-run')
    return train_tiny(write_image_folders(root / 'data'), root / 'run', '--epochs', '1')
