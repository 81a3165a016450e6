"""Decode a file-based data set once: every image into one uint8 array file, memory-mapped by later runs.

An epoch of Tiny-ImageNet decodes 100,000 JPEGs, and every start decodes them all once more to find a corrupt
file before epoch 0. With `--decode-cache DIR` the first run decodes each image once into
`DIR/decoded-KEY.npy` ((N, H, W, 3) uint8, written to a temporary name and renamed when complete); later runs,
every rank and every loader worker read pixels from it. KEY is the SHA-256 of every image file's bytes with
its label, in order, so a changed, added or removed file (or another split) gets another file, never stale
pixels. The SHA-256 of the pixels goes beside it (`decoded-KEY.npy.sha256`) and is checked once each time a run
opens the array: an array changed after it was written (the same shape, other pixels) is decoded again, with a
note, so the key of the files vouches for the pixels trained on. A file that does not read back as the array it
should be is rebuilt; a data set whose images differ in size, or a disk too full to hold the array, is read from
its files as before (with a note).
"""
import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from filelock import FileLock
from PIL import Image

CACHE_FORMAT = 1  # part of the key: a new layout never reads an old file


class DecodeCacheError(ValueError):
    """The cache folder cannot be written."""


def fingerprint(read_bytes: Callable[[int], bytes], labels) -> str:
    """SHA-256 over every image's encoded bytes and label, in order."""
    digest = hashlib.sha256(f'timm-spa decoded images v{CACHE_FORMAT}\n'.encode())
    for index, label in enumerate(labels):
        digest.update(hashlib.sha256(read_bytes(index)).digest())
        digest.update(int(label).to_bytes(8, 'little', signed=True))
    return digest.hexdigest()


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + '.sha256')


def _pixels_digest(array: np.ndarray) -> str:
    """SHA-256 of the array's pixels, read in chunks of about 64 MiB."""
    digest, flat = hashlib.sha256(), array.reshape(-1)
    for start in range(0, flat.size, 1 << 26):
        digest.update(flat[start:start + (1 << 26)])
    return digest.hexdigest()


def _open(path: Path, count: int, log: Callable[[str], None], verify: bool = True) -> Optional[np.ndarray]:
    """The array in `path` if it is a complete (count, H, W, 3) uint8 array whose pixels are the ones its digest
    file recorded (with `verify`), else None."""
    try:
        array = np.load(path, mmap_mode='r')
    except (OSError, ValueError):
        return None
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[0] != count or array.shape[3] != 3:
        return None
    if verify:
        try:
            recorded = _digest_path(path).read_text().strip()
        except OSError:
            recorded = None
        if recorded != _pixels_digest(array):
            log(f'note: the decode cache {path} does not hold the pixels its digest recorded ('
                + ('changed after it was written' if recorded else 'no digest beside it') + '); decoding again.')
            return None
    return array


def _build(samples, path: Path, log: Callable[[str], None]) -> Optional[np.ndarray]:
    """Decode every image into `path` (via a temporary file); None where the images differ in size or the disk
    cannot hold them.

    Written with plain file writes, never through a memory map: a full disk under a mapped array is a SIGBUS
    that kills the process with no word, where a write raises OSError. The free space is checked first, so a
    disk that cannot hold the array is not filled by a partial one."""
    first = np.asarray(samples.load(0)[0])
    shape = (len(samples), *first.shape)
    header = {'descr': np.lib.format.dtype_to_descr(np.dtype(np.uint8)), 'fortran_order': False, 'shape': shape}
    need = int(np.prod(shape)) + (1 << 20)  # the pixels, and room for the header and the file system's own
    free = shutil.disk_usage(path.parent).free
    if free < need:
        log(f'note: the decode cache {path} needs {need / 2**20:,.0f} MiB and {path.parent} has {free / 2**20:,.0f} '
            'MiB free; reading the image files instead. Free space there or choose another --decode-cache folder.')
        return None
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    digest_tmp = _digest_path(tmp)
    digest = hashlib.sha256()
    try:
        with open(tmp, 'wb') as f:
            np.lib.format.write_array_header_1_0(f, header)
            for index in range(len(samples)):
                pixels = np.asarray(samples.load(index)[0])  # a corrupt file raises DataError naming it
                if pixels.shape != first.shape:
                    log(f'note: {samples.name_fn(index)} is {pixels.shape[1]}x{pixels.shape[0]}, '
                        f'{samples.name_fn(0)} {first.shape[1]}x{first.shape[0]}: images of different sizes are '
                        'read from their files, not cached.')
                    return None
                data = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
                digest.update(data)
                f.write(data)
        digest_tmp.write_text(digest.hexdigest() + '\n')
        # the digest first: killed between the two, an older array meets a newer digest and is decoded again
        os.replace(digest_tmp, _digest_path(path))
        os.replace(tmp, path)
    except OSError as e:  # the disk filled up meanwhile, most likely: training still works, from the files
        log(f'note: could not write the decode cache {path} ({e}); reading the image files instead. Free space '
            'there or choose another --decode-cache folder.')
        return None
    finally:
        tmp.unlink(missing_ok=True)
        digest_tmp.unlink(missing_ok=True)
    return _open(path, len(samples), log, verify=False)


def decoded(samples, cache_dir: Path, log: Callable[[str], None] = print):
    """`samples` with its pixels read from the decode cache in `cache_dir` (built on first use); the samples
    themselves where they have no files to fingerprint (array-backed data) or cannot be cached."""
    if samples.read_bytes is None or len(samples) == 0:
        return samples
    digest = samples.fingerprint()
    path = cache_dir / f'decoded-{digest[:40]}.npy'
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + '.lock')
        lock.acquire()  # two runs (or ranks) on one data set: one decodes, the other waits
    except OSError as e:
        raise DecodeCacheError(f'--decode-cache {cache_dir}: cannot write there ({e.strerror or e}). Choose a '
                               'folder you can write, or drop --decode-cache.') from None
    try:
        array = _open(path, len(samples), log)
        if array is None:
            for stale in cache_dir.glob(f'.{path.name}.*.tmp*'):  # left by a killed build: we hold the lock
                stale.unlink(missing_ok=True)
            log(f'decoding {len(samples):,} images once into {path}')
            array = _build(samples, path, log)
    finally:
        lock.release()
    if array is None:
        return samples
    labels = samples.labels
    return type(samples)(lambda i: (Image.fromarray(array[i]), labels[i]), samples.name_fn, labels,
                         read_bytes=samples.read_bytes, pixels=array, digest=digest)
