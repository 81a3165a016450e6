"""Checkpoints that survive a kill, and loading that refuses what it cannot trust.

Training state goes to `last.pth.tar` through a temporary file and `os.replace`, so a run killed at
any moment leaves either the previous or the new checkpoint, never half of one. Everything in it is
a tensor, a number, a string or a container of those, so it loads with `weights_only=True`. Model
weights on their own are safetensors.
"""
import os
import random
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

LAST = 'last.pth.tar'
BEST = 'model_best.safetensors'


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or made for another model."""


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then move it into place in one step."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    write(tmp)
    os.replace(tmp, path)


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(), 'python': random.getstate(),
        'numpy': [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
    np.random.set_state((state['numpy'][0], np.array(state['numpy'][1], dtype=np.uint32), *state['numpy'][2:]))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_training_state(path: Union[str, Path], state: Dict[str, Any]) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_training_state(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise CheckpointError(f'no checkpoint at {path}: --resume takes a run directory or its {LAST}.')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign pickles
        raise CheckpointError(f'cannot read checkpoint {path} ({type(e).__name__}: {e}). It is corrupt, '
                              'truncated, or not a timm-spa training checkpoint.') from e
    if not isinstance(state, dict) or 'model' not in state or 'arch' not in state:
        raise CheckpointError(f'{path} is not a timm-spa training checkpoint (no model/arch entries).')
    return state


def save_weights(path: Union[str, Path], model: nn.Module, metadata: Optional[Dict[str, str]] = None) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata=metadata))


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Weights from a safetensors file, or a PyTorch checkpoint loaded with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist.')
    if path.suffix == '.safetensors':
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f'cannot read {path} as safetensors ({e}); the file is corrupt or truncated.') from e
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f'cannot read checkpoint {path} ({type(e).__name__}: {e}). Only safetensors '
                              'and PyTorch files of plain tensors load (weights_only=True).') from e
    for key in ('model', 'state_dict', 'model_ema'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise CheckpointError(f'{path} holds no state dict (looked for model, state_dict or plain tensors).')


def load_weights(model: nn.Module, path: Union[str, Path], model_name: str = 'the model') -> None:
    """Load weights strictly; a foreign checkpoint is named with its missing and unexpected keys."""
    state = read_state_dict(path)
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = '; '.join(part for part in (
            f'missing {missing[:4]}' + (f' and {len(missing) - 4} more' if len(missing) > 4 else '') if missing else '',
            f'unexpected {unexpected[:4]}' + (f' and {len(unexpected) - 4} more' if len(unexpected) > 4 else '')
            if unexpected else '',
            f'shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:3]]}' if wrong else '',
        ) if part)
        raise CheckpointError(
            f'checkpoint {path} does not match {model_name}: {detail}. Build the model with the same --model, '
            '--num-classes and --model-kwargs it was trained with.')
    model.load_state_dict(state)
