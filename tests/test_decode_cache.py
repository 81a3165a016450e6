"""--decode-cache: every image decoded once into an array file, read back instead of the image files."""
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import train_tiny, write_image_folders, write_tiny_imagenet

from train import decode_cache
from train import train as train_script
from train.data import DataError, load_dataset


def _pixels(samples):
    return [np.asarray(samples.load(i)[0]) for i in range(len(samples))]


@pytest.mark.parametrize('layout', ['tinyimagenet', 'folder', 'tar'])
def test_cached_pixels_and_labels_are_the_files(tmp_path, layout):
    if layout == 'tinyimagenet':
        args = ('tinyimagenet', str(write_tiny_imagenet(tmp_path / 'data')), 4)
    else:
        args = ('folder', str(write_image_folders(tmp_path / 'data', as_tar=layout == 'tar')), 8)
    plain = load_dataset(*args)
    cached = load_dataset(*args, decode_cache=str(tmp_path / 'cache'), log=lambda _: None)
    for split in ('train', 'test'):
        a, b = getattr(plain, split), getattr(cached, split)
        assert b.pixels is not None and a.pixels is None and b.labels == a.labels
        assert b.name_fn(0) == a.name_fn(0)
        for x, y in zip(_pixels(a), _pixels(b), strict=True):
            np.testing.assert_array_equal(x, y)
    assert len(list((tmp_path / 'cache').glob('decoded-*.npy'))) == 2  # train and test
    assert not list((tmp_path / 'cache').glob('.*.tmp'))


def test_a_second_run_reads_the_array_and_decodes_nothing(tmp_path, monkeypatch):
    data = write_tiny_imagenet(tmp_path / 'data')
    cache = tmp_path / 'cache'
    load_dataset('tinyimagenet', str(data), 4, decode_cache=str(cache), log=lambda _: None)
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob('*.npy')}

    def no_decoding(*_args, **_kwargs):
        raise AssertionError('an image file was decoded')

    monkeypatch.setattr('train.data.Image.open', no_decoding)
    lines = []
    splits = load_dataset('tinyimagenet', str(data), 4, decode_cache=str(cache), log=lines.append)
    splits.train.check_readable()  # nothing left to check: the cache holds every decoded image
    assert splits.train.load(3)[0].size == (64, 64) and not lines
    assert {p: p.stat().st_mtime_ns for p in cache.glob('*.npy')} == stamps


def test_a_changed_file_gets_a_new_array_and_a_truncated_one_is_rebuilt(tmp_path):
    data = write_tiny_imagenet(tmp_path / 'data')
    cache = tmp_path / 'cache'
    first = load_dataset('tinyimagenet', str(data), 4, decode_cache=str(cache), log=lambda _: None)
    before = set(cache.glob('*.npy'))
    image = next((data / 'tiny-imagenet-200' / 'val' / 'images').glob('*.JPEG'))
    from PIL import Image
    Image.new('RGB', (64, 64), (255, 0, 0)).save(image, format='JPEG')
    second = load_dataset('tinyimagenet', str(data), 4, decode_cache=str(cache), log=lambda _: None)
    after = set(cache.glob('*.npy'))
    assert len(after - before) == 1  # the test split's key changed; the train split's array is reused
    index = [second.test.name_fn(i) for i in range(len(second.test))].index(str(image))
    assert tuple(second.test.pixels[index, 0, 0]) != tuple(first.test.pixels[index, 0, 0])
    assert tuple(np.asarray(second.test.load(index)[0])[0, 0]) == tuple(np.asarray(Image.open(image))[0, 0])

    newest = max(after - before, key=os.path.getmtime)
    cut = newest.read_bytes()[:200]
    newest.unlink()  # a new file: the arrays mapped above keep the old one (truncating it in place would not)
    newest.write_bytes(cut)  # truncated, as a copy cut short
    lines = []
    third = load_dataset('tinyimagenet', str(data), 4, decode_cache=str(cache), log=lines.append)
    assert any('decoding' in line for line in lines)
    np.testing.assert_array_equal(third.test.pixels, second.test.pixels)


def test_pixels_changed_in_place_are_decoded_again_with_a_note(tmp_path):
    """The array rewritten in place with the same shape (pixels inverted), or found without its digest (an earlier
    version's, or one whose digest was deleted): the next run says so and decodes the files again, and trains on
    their pixels."""
    data = write_image_folders(tmp_path / 'data')
    cache = tmp_path / 'cache'
    first = load_dataset('folder', str(data), 8, decode_cache=str(cache), log=lambda _: None)
    expected = np.array(first.train.pixels)
    array = next(p for p in cache.glob('decoded-*.npy') if np.load(p, mmap_mode='r').shape[0] == len(first.train))
    assert _digest_file(array).read_text().strip() == hashlib.sha256(expected.tobytes()).hexdigest()
    for tamper, said in ((_invert, 'changed after it was written'), (_drop_digest, 'no digest beside it')):
        tamper(array)
        lines = []
        again = load_dataset('folder', str(data), 8, decode_cache=str(cache), log=lines.append)
        assert any(str(array) in line and said in line for line in lines), lines
        np.testing.assert_array_equal(again.train.pixels, expected)
        np.testing.assert_array_equal(np.asarray(again.train.load(0)[0]), expected[0])


def _digest_file(array: Path) -> Path:
    return array.with_name(array.name + '.sha256')


def _invert(array: Path) -> None:
    pixels = np.load(array, mmap_mode='r+')
    pixels[:] = 255 - pixels
    pixels.flush()


def _drop_digest(array: Path) -> None:
    _digest_file(array).unlink()


def test_a_corrupt_image_is_named(tmp_path):
    data = write_tiny_imagenet(tmp_path / 'data')
    bad = next((data / 'tiny-imagenet-200' / 'train').rglob('*.JPEG'))
    good = bad.read_bytes()
    bad.write_bytes(good[:40])
    with pytest.raises(DataError, match=f'cannot read image {bad}'):
        load_dataset('tinyimagenet', str(data), 4, decode_cache=str(tmp_path / 'cache'), log=lambda _: None)
    assert not list((tmp_path / 'cache').glob('*.npy')) and not list((tmp_path / 'cache').glob('.*.tmp'))
    bad.write_bytes(good)


@contextlib.contextmanager
def _small_disk(path: Path, size: str = '3m'):
    """A real file system of `size` (tmpfs), or a skip saying why the machine does not allow one."""
    path.mkdir()
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f'cannot mount a {size} tmpfs here to fill a real disk ({done.stderr.strip() or "not root"})')
    try:
        yield path
    finally:
        subprocess.run(['umount', '--lazy', str(path)], check=True)  # lazy: a test's arrays may still be mapped


def test_a_full_disk_falls_back_to_the_files_and_leaves_nothing(tmp_path, monkeypatch):
    """On a real 3 MiB file system: an array of 3.6 MiB is not started (the free space is checked first), and one
    whose disk fills while it is written (the check told otherwise) ends in a note, not a SIGBUS; no partial file
    stays either way, and the run reads the train images from their files."""
    data = write_tiny_imagenet(tmp_path / 'data', classes=3, per_class=100)  # 300 x 64 x 64 x 3 bytes
    with _small_disk(tmp_path / 'small') as cache:
        for lying in (False, True):
            if lying:  # what a disk shared with another writer looks like: room at the check, none later
                monkeypatch.setattr(decode_cache.shutil, 'disk_usage', lambda _: shutil._ntuple_diskusage(
                    1 << 40, 0, 1 << 40))
            lines = []
            splits = load_dataset('tinyimagenet', str(data), 4, decode_cache=str(cache), log=lines.append)
            assert splits.train.pixels is None and len(splits.train) == 300
            said = 'could not write the decode cache' if lying else 'MiB free; reading the image files instead'
            assert any(said in line for line in lines), lines
            assert not list(cache.glob('.*.tmp'))  # no partial array; the small test split's may be complete


def test_images_of_different_sizes_are_read_from_their_files(tmp_path):
    data = write_image_folders(tmp_path / 'data')
    from PIL import Image
    odd = next(Path(data, 'test').rglob('*.png'))
    Image.new('RGB', (20, 16)).save(odd)
    lines = []
    splits = load_dataset('folder', str(data), 8, decode_cache=str(tmp_path / 'cache'), log=lines.append)
    assert splits.train.pixels is not None and splits.test.pixels is None
    assert any('different sizes' in line for line in lines)


@pytest.mark.slow
def test_training_with_the_cache_learns_from_the_same_pixels(folder_data, tmp_path):
    run = train_tiny(folder_data, tmp_path / 'run', '--epochs', '1', '--decode-cache', str(tmp_path / 'cache'))
    assert len(list((tmp_path / 'cache').glob('decoded-*.npy'))) == 2
    plain = train_tiny(folder_data, tmp_path / 'plain', '--epochs', '1')
    first, second = (json.loads((r / 'results.json').read_text()) for r in (run, plain))
    assert first['test_loss'] == second['test_loss'] and first['val_top1'] == second['val_top1']  # same pixels
    assert 'decode_cache' in train_script.RESUME_SAFE  # where the cache lies may change when a run resumes


def test_an_unwritable_cache_folder_is_named_and_a_killed_build_leaves_nothing_behind(tmp_path):
    data = write_tiny_imagenet(tmp_path / 'data')
    blocker = tmp_path / 'a-file'
    blocker.write_text('not a folder')
    with pytest.raises(decode_cache.DecodeCacheError, match=f'--decode-cache {blocker}/cache: cannot write there'):
        load_dataset('tinyimagenet', str(data), 4, decode_cache=str(blocker / 'cache'), log=lambda _: None)
    cache = tmp_path / 'cache'
    load_dataset('tinyimagenet', str(data), 4, decode_cache=str(cache), log=lambda _: None)
    for array in cache.glob('decoded-*.npy'):  # as if a build had been killed (SIGKILL) before its rename
        stale = cache / f'.{array.name}.4242.tmp'
        stale.write_bytes(b'partial')
        array.unlink()
    load_dataset('tinyimagenet', str(data), 4, decode_cache=str(cache), log=lambda _: None)
    assert len(list(cache.glob('decoded-*.npy'))) == 2 and not list(cache.glob('.*.tmp'))
