"""Data sets, the held-out validation split, CIFAR-style transforms and loaders.

Every data set is read into `Samples` (an indexable list of PIL images with labels and a name per
item, for error messages) and split three ways: `train` minus a fixed held-out `val` part (chosen by
`--val-split-seed`, independent of the training seed) and the data set's own `test` split. The
best checkpoint is chosen on `val`; `test` is touched once, at the end.
"""
import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.readers.img_extensions import get_img_extensions
from timm.data.readers.reader_image_folder import ReaderImageFolder
from timm.data.readers.reader_image_in_tar import ReaderImageInTar
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import transforms

from timm_spa.models.datasets import DATASET_CFGS, TINY_IMAGENET_CLASSES

from .decode_cache import decoded, fingerprint

DATASETS = ('cifar10', 'cifar100', 'tinyimagenet', 'folder', 'digits')
CIFAR_URLS = {
    'cifar10': 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz',
    'cifar100': 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz',
}
TINY_IMAGENET_URL = 'http://cs231n.stanford.edu/tiny-imagenet-200.zip'
KNOWN_SIZES = {'cifar10': (50000, 10000), 'cifar100': (50000, 10000), 'tinyimagenet': (100000, 10000)}
# images held out of train to choose the checkpoint, by default; an image folder holds out a tenth of its train split
VAL_SIZES = {'cifar10': 5000, 'cifar100': 5000, 'tinyimagenet': 10000, 'digits': 180}
TAR_BLOCK = 512


class DataError(ValueError):
    """A data set that is missing, malformed or inconsistent with the run's arguments."""


@dataclass
class Samples:
    """Images addressable by index: `load(i)` gives (PIL RGB image, label); `name(i)` says where it came from."""
    load_fn: Callable[[int], Tuple[Image.Image, int]]
    name_fn: Callable[[int], str]
    labels: List[int]
    read_bytes: Optional[Callable[[int], bytes]] = None  # the encoded file of image i, where images are files
    pixels: Optional[np.ndarray] = None  # every image decoded (arrays, train.decode_cache): nothing left to check
    digest: Optional[str] = None  # `fingerprint()`, where it was computed already (train.decode_cache)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Tuple[Image.Image, int]:
        try:
            return self.load_fn(index)
        except (OSError, ValueError, tarfile.TarError, Image.DecompressionBombError) as e:
            raise DataError(f'cannot read image {self.name_fn(index)}: {e}. Replace or remove that file.') from e

    def fingerprint(self) -> str:
        """SHA-256 over every image (its encoded file, or its pixels) and label, in order: which data this is,
        wherever it lies. A copy with one file changed, or two classes swapped, has another."""
        def pixel_bytes(index: int) -> bytes:
            image = self.pixels[index] if self.pixels is not None else np.asarray(self.load(index)[0])
            return np.ascontiguousarray(image).tobytes()

        if self.digest is None:
            self.digest = fingerprint(self.read_bytes or pixel_bytes, self.labels)
        return self.digest

    def check_readable(self, indices: Optional[Sequence[int]] = None) -> None:
        """Decode every image once, so that a corrupt file stops the run before epoch 0, not after it."""
        if self.pixels is not None:
            return  # decoded into the cache already
        for index in range(len(self)) if indices is None else indices:
            image, _ = self.load(index)
            try:
                image.load()
            except (OSError, ValueError) as e:
                raise DataError(f'cannot read image {self.name_fn(index)}: {e}. Replace or remove that file.') \
                    from e


@dataclass
class DataSplits:
    train: Samples
    train_indices: List[int]
    val_indices: List[int]
    test: Samples
    class_names: List[str]
    label: str  # how the data set must be named next to any number measured on it
    tag: Optional[str]  # the pretrained tag this data set corresponds to (cifar10, cifar100, tinyimagenet)
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    image_size: int  # the default input size of models trained on it
    native_size: Optional[int]  # the size its images come in (None: varies), resized to the input size
    hflip: bool = True
    notes: List[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """Which data this is, wherever it lies: SHA-256 over both splits' `Samples.fingerprint`."""
        return hashlib.sha256(f'{self.train.fingerprint()}\n{self.test.fingerprint()}'.encode()).hexdigest()

    def split(self, name: str) -> Tuple[Samples, List[int]]:
        """The images of split 'train' (minus the held-out part), 'val' (held out of train) or 'test'."""
        return {'train': (self.train, self.train_indices), 'val': (self.train, self.val_indices),
                'test': (self.test, list(range(len(self.test))))}[name]


def _array_samples(images: np.ndarray, labels: Sequence[int], prefix: str) -> Samples:
    return Samples(
        load_fn=lambda i: (Image.fromarray(images[i]).convert('RGB'), int(labels[i])),
        name_fn=lambda i: f'{prefix}[{i}]', labels=[int(v) for v in labels], pixels=images)


class _ArrayUnpickler(pickle.Unpickler):
    """The CIFAR python pickles hold dicts of bytes, lists and numpy arrays; refuse anything else."""
    ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
               ('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', 'scalar'),
               ('numpy._core.multiarray', 'scalar')}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a CIFAR batch file')
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, 'rb') as f:
            return _ArrayUnpickler(f, encoding='bytes').load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        raise DataError(
            f'{path} is not a readable CIFAR python batch file ({e}); re-extract the official archive.') from e


def _cifar_batches_dir(root: Path, dataset: str) -> Optional[Path]:
    name = 'cifar-10-batches-py' if dataset == 'cifar10' else 'cifar-100-python'
    for candidate in (root / name, root):
        meta = 'batches.meta' if dataset == 'cifar10' else 'meta'
        if (candidate / meta).is_file():
            return candidate
    return None


def _read_cifar_split(folder: Path, dataset: str, train: bool) -> Tuple[np.ndarray, List[int]]:
    if dataset == 'cifar10':
        files = [f'data_batch_{i}' for i in range(1, 6)] if train else ['test_batch']
        key = b'labels'
    else:
        files, key = ['train' if train else 'test'], b'fine_labels'
    images, labels = [], []
    for name in files:
        if not (folder / name).is_file():
            raise DataError(f'{folder / name} is missing: the official {dataset} archive has {", ".join(files)}.')
        batch = _unpickle(folder / name)
        try:
            images.append(np.asarray(batch[b'data'], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels += [int(v) for v in batch[key]]
        except (KeyError, ValueError) as e:
            raise DataError(f'{folder / name} is not an official {dataset} batch (missing or malformed {e}).') from e
    return np.concatenate(images), labels


def _official_cifar(root: Path, dataset: str) -> Tuple[Samples, Samples, List[str]]:
    folder = _cifar_batches_dir(root, dataset)
    meta_file = folder / ('batches.meta' if dataset == 'cifar10' else 'meta')
    key = b'label_names' if dataset == 'cifar10' else b'fine_label_names'
    meta = _unpickle(meta_file)
    if not isinstance(meta, dict) or not isinstance(meta.get(key), list):
        raise DataError(f'{meta_file} has no {key.decode()} list: it is not the official {meta_file.name} of '
                        f'{dataset}. Re-extract the official archive.')
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]
    train_x, train_y = _read_cifar_split(folder, dataset, train=True)
    test_x, test_y = _read_cifar_split(folder, dataset, train=False)
    return (_array_samples(train_x, train_y, f'{folder}/train'), _array_samples(test_x, test_y, f'{folder}/test'),
            names)


def check_tar_complete(path: Path) -> List[str]:
    """Refuse a tar file that is truncated or corrupt: `tarfile` stops quietly at a cut-off header, and
    timm's reader would then list only the images before it. Returns the image members that are links (symbolic
    or hard), which timm's reader leaves out."""
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f'{path} is truncated or corrupt: it is not a readable tar file ({e}). Copy it again.') \
            from None
    for member in members:  # a member outside the archive's own tree would become a class of its own
        parts = PurePosixPath(member.name).parts
        if member.name.startswith('/') or '..' in parts:
            raise DataError(f'{path} holds the member {member.name!r}, a path outside the archive: refusing it '
                            'rather than reading it as a class. Rebuild the tar with relative names '
                            '(tar -cf train.tar -C SPLIT_DIR .).')
    end = max((m.offset_data + -(-m.size // TAR_BLOCK) * TAR_BLOCK for m in members), default=0)
    with open(path, 'rb') as f:
        f.seek(end)
        marker = f.read(2 * TAR_BLOCK)  # every tar ends with two zero blocks after its last member
    if marker != bytes(2 * TAR_BLOCK):
        raise DataError(f'{path} is truncated or corrupt: it ends after {len(members)} members without the end of '
                        f'the archive ({path.stat().st_size:,} bytes). Copy it again.')
    return [m.name for m in members if (m.issym() or m.islnk()) and m.name.lower().endswith(get_img_extensions())]


class _TarMembers:
    """The members of one tar file, read through a handle that each process opens for itself.

    A handle opened in the main process (the readability check opens one) and inherited by forked
    loader workers shares one file offset between them: their reads interleave and return garbage.
    """

    def __init__(self, path: Path, members: List[tarfile.TarInfo]):
        self.path, self.members = path, members
        self._handle, self._pid = None, None

    def read(self, index: int) -> bytes:
        if self._pid != os.getpid():
            self._handle, self._pid = tarfile.open(self.path), os.getpid()
        return self._handle.extractfile(self.members[index]).read()


def _file_samples(path: Path, class_names: Optional[List[str]] = None) -> Tuple[Samples, List[str], List[str]]:
    """Images in one sub-folder per class, in a folder or a .tar file (timm's readers list them), the class names,
    and notes on what was left out."""
    notes = []
    if path.is_file() and path.suffix == '.tar':
        links = check_tar_complete(path)
        if links:  # timm's reader reads regular members only: the image count changes, so say it
            notes.append(f'{path.name}: {len(links)} image member(s) that are links (symbolic or hard, e.g. '
                         f'{links[0]}) were not read.')
        reader = ReaderImageInTar(str(path))
        class_to_idx, labels = reader.class_name_to_idx, [int(t) for t in reader.targets]
        read = _TarMembers(path, [member for member, _, _ in reader.samples]).read
    else:
        reader = ReaderImageFolder(str(path))
        class_to_idx, labels = reader.class_to_idx, [int(t) for _, t in reader.samples]

        def read(index: int) -> bytes:
            with reader[index][0] as f:
                return f.read()
    found = sorted(class_to_idx, key=class_to_idx.get)
    if not found or len(reader) == 0:
        raise DataError(f'{path} holds no images in class sub-folders (expected <class>/<image>.jpg|png).')
    if path.is_dir():  # timm's reader drops a class folder without images; a class must not vanish silently
        empty = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith('.')
                       and d.name not in class_to_idx)
        if empty:
            raise DataError(f'{path} has class folders without images: {", ".join(empty[:5])}'
                            f'{" ..." if len(empty) > 5 else ""}. Add their images or remove the folders.')
    if len(found) < 2:
        raise DataError(f'{path} holds one class ({found[0]}): a classifier needs at least 2 class sub-folders, '
                        'and every test number would be 100%. Add the other classes.')
    if class_names is not None and found != class_names:
        raise DataError(f'{path} has classes {found[:5]}... but the train split has {class_names[:5]}...: '
                        'both splits need the same class sub-folders.')

    return _encoded_samples(read, lambda i: f'{path}:{reader.filename(i)}', labels), found, notes


def decode_rgb(data: bytes) -> Image.Image:
    """An encoded image as 8-bit RGB. 16-bit greyscale (PNG's I;16 modes) is scaled to 8 bits: Pillow's
    `convert('RGB')` clips it at 255, which turns nearly every pixel white."""
    image = Image.open(io.BytesIO(data))
    if image.mode.startswith('I;16'):
        wide = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode='L')
    return image.convert('RGB')


def _encoded_samples(read: Callable[[int], bytes], name_fn: Callable[[int], str], labels: List[int]) -> Samples:
    """Images stored encoded (files, tar members): decoded when loaded, their bytes what the decode cache hashes."""
    return Samples(lambda i: (decode_rgb(read(i)), labels[i]), name_fn, labels, read_bytes=read)


def _split_path(root: Path, split: str) -> Optional[Path]:
    for candidate in (root / f'{split}.tar', root / split):
        if candidate.exists():
            return candidate
    return None


def _image_file_splits(root: Path) -> Optional[Tuple[Samples, Samples, List[str], List[str]]]:
    train, test = _split_path(root, 'train'), _split_path(root, 'test') or _split_path(root, 'val')
    if train is None or test is None:
        return None
    train_samples, names, train_notes = _file_samples(train)
    test_samples, _, test_notes = _file_samples(test, names)
    return train_samples, test_samples, names, train_notes + test_notes


def _tiny_imagenet(root: Path) -> Tuple[Samples, Samples, List[str]]:
    folder = root / 'tiny-imagenet-200' if (root / 'tiny-imagenet-200').is_dir() else root
    wnids_file = folder / 'wnids.txt'
    annotations = folder / 'val' / 'val_annotations.txt'
    if not wnids_file.is_file() or not annotations.is_file() or not (folder / 'train').is_dir():
        raise DataError(
            f'{root} is not the Tiny-ImageNet archive layout: expected wnids.txt, train/<wnid>/images/*.JPEG, '
            f'val/images/*.JPEG and val/val_annotations.txt (from {TINY_IMAGENET_URL}, unzipped).')
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    repeated = sorted({w for w in wnids if wnids.count(w) > 1})
    if repeated:  # one class would be empty and the other's images counted twice, across train and validation
        raise DataError(f'{wnids_file} names {", ".join(repeated[:3])} more than once: each class must be listed '
                        'once. Restore the file from the archive.')
    names = wnids
    if sorted(wnids) == sorted(wnid for wnid, _ in TINY_IMAGENET_CLASSES):  # the real archive, in any order:
        wnids = [wnid for wnid, _ in TINY_IMAGENET_CLASSES]  # the archive's label order, which releases use
        names = list(DATASET_CFGS['tinyimagenet']['label_names'])
    index = {w: i for i, w in enumerate(wnids)}
    train_files, train_labels, empty = [], [], []
    for wnid in wnids:
        files = sorted((folder / 'train' / wnid / 'images').glob('*.JPEG'))
        if not files:
            empty.append(wnid)
        train_files += files
        train_labels += [index[wnid]] * len(files)
    if empty:  # a half-extracted archive: a class would silently have nothing to learn from
        raise DataError(f'{folder}: {len(empty)} of the {len(wnids)} classes in wnids.txt have no train images '
                        f'(first: train/{empty[0]}/images/): the archive is not fully extracted. Unzip it again.')
    val_files, val_labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        parts = line.split('\t')
        if not line.strip():
            continue
        if len(parts) < 2:  # skipping it would shrink the test split without a word
            raise DataError(f'{annotations}, line {number}: {line.strip()!r} names no class (expected FILE<TAB>WNID'
                            '<TAB>box). Restore the file from the archive.')
        if parts[1] not in index:
            raise DataError(f'{annotations}: {parts[0]} has class {parts[1]}, which is not in wnids.txt.')
        val_files.append(folder / 'val' / 'images' / parts[0])
        val_labels.append(index[parts[1]])
    in_two = _listed_twice(train_files, val_files)
    if in_two:
        raise DataError(f'{folder}: {in_two} is listed twice across train/ and val_annotations.txt: an image in '
                        'two places would be counted twice, or tested on after training on it. Restore the archive.')
    missing = [f for f in val_files if not f.is_file()]
    if missing:
        raise DataError(f'{folder / "val" / "images"} lacks {len(missing)} of the {len(val_files)} images '
                        f'val_annotations.txt lists (first: {missing[0].name}): the archive is not fully extracted. '
                        'Unzip it again.')

    def samples(files, labels):
        return _encoded_samples(lambda i: files[i].read_bytes(), lambda i: str(files[i]), labels)

    # the official val split (labelled) is our test split; its test split has no labels
    return samples(train_files, train_labels), samples(val_files, val_labels), names


def _listed_twice(*splits: List[Path]) -> Optional[str]:
    """The first image file that two entries name (within a split or across splits, links resolved), if any."""
    seen: Dict[str, Path] = {}
    for files in splits:
        for path in files:
            real = os.path.realpath(path)
            if real in seen:
                return str(path) if seen[real] == path else f'{path} (also {seen[real]})'
            seen[real] = path
    return None


def _digits() -> Tuple[Samples, Samples, List[str]]:
    """scikit-learn's 8x8 handwritten digits (ships inside the package): trains offline anywhere."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    order = np.random.default_rng(0).permutation(len(images))  # a fixed test split, whatever the seeds
    test, train = order[:360], order[360:]
    return (_array_samples(images[train], digits.target[train], 'sklearn-digits/train'),
            _array_samples(images[test], digits.target[test], 'sklearn-digits/test'),
            [str(d) for d in range(10)])


def _missing(dataset: str, root: Optional[Path]) -> DataError:
    where = f'--data-dir {root}' if root else 'no --data-dir given'
    if dataset in CIFAR_URLS:
        return DataError(
            f'{dataset} not found ({where}). Expected the extracted official archive '
            f"({'cifar-10-batches-py' if dataset == 'cifar10' else 'cifar-100-python'}/ with its batch files, "
            f'from {CIFAR_URLS[dataset]}), or train/ and test/ (or train.tar and test.tar) with one sub-folder '
            'per class. With a network, add --download.')
    return DataError(f'{dataset} not found ({where}): expected train/ and test/ (or train.tar and test.tar) '
                     'with one sub-folder per class.')


def load_dataset(
        dataset: str, data_dir: Optional[str], val_size: Optional[int] = None, val_split_seed: int = 0,
        download: bool = False, label: Optional[str] = None, decode_cache: Optional[str] = None,
        log: Callable[[str], None] = print) -> DataSplits:
    """Read a data set and split off the validation set. Raises `DataError` with the fix in its message.

    `decode_cache`: a folder where image files are decoded once and read back as arrays (`train.decode_cache`).
    """
    if dataset not in DATASETS:
        raise DataError(f'unknown --dataset {dataset!r}; choose one of {", ".join(DATASETS)}.')
    root = Path(data_dir).expanduser() if data_dir else None
    notes = []
    if dataset == 'digits':
        train, test, names = _digits()
        name, tag, size, native, hflip = 'scikit-learn digits (8x8 images)', None, 32, 8, False
    elif dataset == 'tinyimagenet':
        if root is None or not root.exists():
            raise DataError(f'Tiny-ImageNet not found ({root}); download {TINY_IMAGENET_URL}, unzip it, and pass '
                            'the folder (or its tiny-imagenet-200/ parent) as --data-dir.')
        train, test, names = _tiny_imagenet(root)
        name, tag, hflip = 'Tiny-ImageNet (official val split as test)', 'tinyimagenet', True
        size = native = DATASET_CFGS[tag]['input_size'][-1]
    elif dataset in CIFAR_URLS:
        if root is None:
            raise _missing(dataset, root)
        if download and _cifar_batches_dir(root, dataset) is None:
            from torchvision import datasets as tv_datasets
            getattr(tv_datasets, dataset.upper())(str(root), download=True)
        pretty = 'CIFAR-10' if dataset == 'cifar10' else 'CIFAR-100'
        if _cifar_batches_dir(root, dataset) is not None:
            train, test, names = _official_cifar(root, dataset)
            name = pretty
        else:
            found = _image_file_splits(root) if root.exists() else None
            if found is None:
                raise _missing(dataset, root)
            train, test, names, file_notes = found
            notes += file_notes
            name = f'{pretty} (image-file copy at {root.name}/, not the official binary batches)'
            notes.append('Images were read from image files, not the official binary batches: '
                         'numbers are not the same measurement as on the official test batch.')
        tag, hflip = dataset, True
        size = native = DATASET_CFGS[tag]['input_size'][-1]
        expected = DATASET_CFGS[tag]['num_classes']
        if len(names) != expected:
            raise DataError(f'{root} has {len(names)} classes, but {pretty} has {expected}.')
    else:  # folder
        found = _image_file_splits(root) if root is not None and root.exists() else None
        if found is None:
            raise _missing(dataset, root)
        train, test, names, file_notes = found
        notes += file_notes
        name, tag, size, native, hflip = f'image folder {root.name}', None, 32, None, True

    expected = KNOWN_SIZES.get(dataset)
    if expected and (len(train), len(test)) != expected:
        notes.append(f'A partial copy: {len(train):,} train and {len(test):,} test images, where {name.split(" (")[0]} '
                     f'has {expected[0]:,} and {expected[1]:,}. Numbers from it are not comparable to full-data-set '
                     'numbers.')
    if val_size is None:
        val_size = VAL_SIZES.get(dataset, max(1, len(train) // 10))
    if not 0 < val_size < len(train):
        raise DataError(f'--val-size {val_size} must be between 1 and {len(train) - 1} (the train split has '
                        f'{len(train)} images).')
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(val_split_seed)).tolist()
    val_indices, train_indices = sorted(order[:val_size]), sorted(order[val_size:])
    cfg = DATASET_CFGS.get(tag, {})
    mean, std = cfg.get('mean', IMAGENET_DEFAULT_MEAN), cfg.get('std', IMAGENET_DEFAULT_STD)
    if decode_cache:
        train, test = (decoded(samples, Path(decode_cache).expanduser(), log) for samples in (train, test))
    return DataSplits(
        train=train, train_indices=train_indices, val_indices=val_indices, test=test, class_names=names,
        label=label or name, tag=tag, mean=tuple(mean), std=tuple(std), image_size=size, native_size=native,
        hflip=hflip, notes=notes)


class TransformedSamples(Dataset):
    def __init__(self, samples: Samples, indices: Optional[List[int]], transform: Callable):
        self.samples, self.transform = samples, transform
        self.indices = list(range(len(samples))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.samples.load(self.indices[i])
        return self.transform(image), label


AUGMENT_EXAMPLES = "rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w3 (AugMix), original or v0 (AutoAugment)"


def timm_augmentation(image_size: int, mean: Sequence[float], std: Sequence[float], aa: Optional[str] = None,
                      reprob: float = 0.0, remode: str = 'pixel', recount: int = 1) -> Tuple[Callable, Callable]:
    """timm's training pipeline after its crop and flip, as `create_transform(..., separate=True)` builds it: the
    `--aa` policy (RandAugment, AugMix, AutoAugment; no colour jitter), then to-tensor, normalisation and random
    erasing (`--reprob`) on the normalised tensor."""
    _, augment, final = create_transform(
        image_size, is_training=True, auto_augment=aa, color_jitter=None, interpolation='random', mean=tuple(mean),
        std=tuple(std), re_prob=reprob, re_mode=remode, re_count=recount, separate=True)
    return augment, final


def build_transforms(splits: DataSplits, image_size: int, train: bool, aa: Optional[str] = None,
                     reprob: float = 0.0, remode: str = 'pixel', recount: int = 1) -> Callable:
    """The paper's recipe: pad-4 random crop and horizontal flip for training, nothing else; timm's `--aa` policy
    and random erasing (`--reprob`) add to it. The pad-4 crop is the one step timm has no transform for (its
    training crop is a random-resized one)."""
    steps = []
    if splits.native_size != image_size:
        steps.append(transforms.Resize((image_size, image_size)))
    if not train:
        return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(splits.mean, splits.std)])
    steps.append(transforms.RandomCrop(image_size, padding=4))
    if splits.hflip:
        steps.append(transforms.RandomHorizontalFlip())
    augment, final = timm_augmentation(image_size, splits.mean, splits.std, aa, reprob, remode, recount)
    return transforms.Compose([*steps, *augment.transforms, *final.transforms])


class ShardSampler(Sampler):
    """Every index exactly once across ranks (rank r takes r, r + world, ...): no padding, no duplicates."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class HoldingLoader(DataLoader):
    """A DataLoader that holds on to its latest iterator. Freed while an error rises (the loop that drew from
    it unwinds), an iterator tears its workers down there and then, and torch's tear-down waits forever for a
    lock a killed worker may hold (its done-event's). Held here, it lives as long as the loader, and a command
    that ends on a dead worker exits without tearing either down (`train.cli.exit_now`)."""

    def __iter__(self):
        self.latest_iterator = super().__iter__()
        return self.latest_iterator


def build_loader(
        dataset: Dataset, batch_size: int, train: bool, workers: int, seed: int,
        rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    drop_last = train and len(dataset) >= batch_size * world_size  # a tiny data set still gets one batch
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                     drop_last=drop_last)
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
    return HoldingLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=pin_memory, persistent_workers=False)
