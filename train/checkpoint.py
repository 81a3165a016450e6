"""Checkpoints that survive a kill, and loading that refuses what it cannot trust.

Training state goes to `last.pth.tar` through a temporary file and `os.replace`, so a run killed at
any moment leaves either the previous or the new checkpoint, never half of one. Its keys are timm's
(`CheckpointSaver`): the model under `state_dict`, the EMA under `state_dict_ema`, so
`timm.models.load_checkpoint(model, path, use_ema=True)` and timm's `validate.py --use-ema` read it.
Everything in it is a tensor, a number, a string or a container of those: it loads with
`weights_only=True`. Model weights on their own are safetensors, refused when not finite.
"""
import contextlib
import errno
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from huggingface_hub.utils.sha import sha_fileobj
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from timm.models import load_state_dict
from torch import nn

from timm_spa.models.published import load_error_reason

CHECKPOINT_VERSION = 2  # timm's own `version` key (its CheckpointSaver writes 2), the one format key


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or made for another model; or one that cannot be written."""


def current_umask() -> int:
    """The process umask (reading it means setting it; it is set straight back): written files and folders get
    the ordinary permissions, not the private ones of mkdtemp or of safetensors' writer."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then move it into place in one step, readable as
    any file the user creates (safetensors writes 0600: a shared run folder's weights would be unreadable).

    A failed write (full disk, read-only folder) removes the temporary file, leaves the previous
    `path` as it was, and says what happened.
    """
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        with contextlib.suppress(OSError):  # on a read-only disk this fails too: the first error is the one to say
            tmp.unlink(missing_ok=True)
        code = getattr(e, 'errno', None)
        folder = path.parent if path.parent.exists() else Path('.')
        if code == errno.ENOSPC or (isinstance(e, RuntimeError) and shutil.disk_usage(folder).free < 64 << 20):
            raise CheckpointError(f'disk full while writing {path}; {path.name} is unchanged. Free some space (or '
                                  'choose another --output) and resume.') from e
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise CheckpointError(f'cannot write {path}: {e.strerror}. Choose an --output you can write to.') from e
        raise


def save_training_state(path: Union[str, Path], state: Dict[str, Any]) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(dict(state, version=CHECKPOINT_VERSION), tmp))


def load_training_state(path: Union[str, Path]) -> Dict[str, Any]:
    """A training checkpoint of this project, or `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'no checkpoint at {path}.')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f'cannot read checkpoint {path}: {load_error_reason(e, path)}') from None
    if not isinstance(state, dict) or state.get('version') != CHECKPOINT_VERSION or 'model_args' not in state:
        raise CheckpointError(f'{path} is not a timm-spa training checkpoint (version {CHECKPOINT_VERSION}).')
    return state


def file_sha256(path: Union[str, Path]) -> str:
    """SHA-256 of a file's bytes, hex (huggingface_hub's chunked hasher)."""
    with open(path, 'rb') as f:
        return sha_fileobj(f).hex()


def weights_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state dict as safetensors stores it: detached, contiguous tensors."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def non_finite_tensors(state: Dict[str, torch.Tensor]) -> List[str]:
    """The names of the floating-point tensors that hold NaN or infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def save_weights(path: Union[str, Path], model: nn.Module, metadata: Optional[Dict[str, str]] = None) -> None:
    """The model's weights as safetensors with `metadata`; weights that are not finite are refused."""
    state = weights_state(model)
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(f'refusing to save {path}: {len(bad)} tensors hold NaN or infinity (first: {bad[0]}).')
    atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata=metadata))


def weights_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """The metadata a safetensors file was saved with (run id, epoch, architecture)."""
    try:
        with safe_open(str(path), framework='pt') as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f'cannot read {path} as safetensors ({e}); the file is corrupt or truncated.') from e


def read_state_dict(path: Union[str, Path], use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Weights through timm's `load_state_dict` (safetensors, or PyTorch with `weights_only=True`;
    timm's checkpoint keys; `module.`/`_orig_mod.` prefixes removed), with errors that name the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist.')
    if use_ema and not _has_ema(path):  # timm's load_state_dict would quietly give the raw weights
        raise CheckpointError(f'--use-ema: {path} holds no EMA weights (a weights file, or a run trained without '
                              '--model-ema); drop --use-ema to evaluate the weights it holds.')
    try:
        state = load_state_dict(str(path), use_ema=use_ema, weights_only=True)
    except SafetensorError as e:
        raise CheckpointError(f'cannot read {path} as safetensors ({e}); the file is corrupt or truncated.') from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f'cannot read checkpoint {path}: {load_error_reason(e, path)}') from None
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f'{path} holds no state dict of tensors (looked for state_dict, state_dict_ema, '
                              'model, or plain tensors).')
    return state


def load_weights(model: nn.Module, path: Union[str, Path], model_name: str = 'the model',
                 use_ema: bool = False) -> None:
    """Load weights strictly; a foreign checkpoint is named with its missing and unexpected keys."""
    state = read_state_dict(path, use_ema)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = '; '.join(part for part in (
            _few('missing', missing), _few('unexpected', unexpected),
            f'shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:3]]}' if wrong else '',
        ) if part)
        raise CheckpointError(
            f'checkpoint {path} does not match {model_name}: {detail}. Build the model with the same --model, '
            '--num-classes and --model-kwargs it was trained with.')
    model.load_state_dict(state)


def _has_ema(path: Path) -> bool:
    """Whether a checkpoint holds EMA weights under one of the keys timm's `load_state_dict` reads them from."""
    if path.suffix == '.safetensors':
        return False
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError):
        return True  # unreadable: load_state_dict says why
    return isinstance(state, dict) and any(state.get(key) is not None for key in ('state_dict_ema', 'model_ema'))


def _few(what: str, keys: list) -> str:
    if not keys:
        return ''
    return f'{what} {keys[:4]}' + (f' and {len(keys) - 4} more' if len(keys) > 4 else '')
