"""Where pretrained weights live, and which of them exist.

`RELEASED` names the `arch.tag` names whose weights are published (the folders of the project's `releases/`,
which a test holds equal to it), as timm's own model files name their `hf_hub_id`s: in code, so importing the
library reads no file that publishing changes. Pretrained configs get an `hf_hub_id` only for those names, so
`timm.list_pretrained()` never lists weights that do not exist, and `pretrained=True` for any other name fails
with a message instead of a bare 404. `python -m hub push --releases releases/` of a new name says to add it here.
"""
from pathlib import Path
from typing import Any, List, Optional

__all__ = [
    'HF_HUB_ORG', 'RELEASED', 'PretrainedWeightsUnavailable', 'WeightsDownloadError',
    'check_pretrained_available', 'load_error_reason', 'raise_download_error', 'hub_repo_id', 'published_names',
]

HF_HUB_ORG = 'timm-spa'  # the Hugging Face Hub organisation that holds every published checkpoint
DEFAULT_TAG = 'cifar10'
RELEASED = (
    'resnet18_cifar.cifar10',
    'resnet18_gc.cifar10',
    'resnet18_nl.cifar10',
    'resnet18_spa.cifar10',
    'resnet18_spa.tinyimagenet',
)


class PretrainedWeightsUnavailable(RuntimeError):
    """`pretrained=True` for a model/tag whose weights have not been published."""


class WeightsDownloadError(RuntimeError):
    """Published weights that could not be fetched from the Hub or its cache, or arrived corrupt."""


def hub_repo_id(name: str) -> str:
    """Hub repository of `arch.tag`, e.g. 'timm-spa/resnet18_spa.cifar10'."""
    return f'{HF_HUB_ORG}/{name}'


def published_names() -> List[str]:
    """The `arch.tag` names with published weights."""
    return list(RELEASED)


def check_pretrained_available(variant: str, pretrained_cfg: Any = None, overlay: Optional[dict] = None) -> None:
    """Raise `PretrainedWeightsUnavailable` unless `variant` with this tag has weights to load.

    A config that is not a tag (loaded from `hf-hub:`/`local-dir:`) or an overlay naming its own
    weights (`file`, `url`, `hf_hub_id`, `state_dict`) brings its weights along and always passes.
    """
    if overlay and any(overlay.get(key) for key in ('file', 'url', 'hf_hub_id', 'state_dict')):
        return
    if pretrained_cfg is not None and not isinstance(pretrained_cfg, str):
        return
    name = f'{variant}.{pretrained_cfg or DEFAULT_TAG}'
    published = published_names()
    if name in published:
        return
    raise PretrainedWeightsUnavailable(
        f"No pretrained weights are published for '{name}'. "
        f"Published: {', '.join(published) if published else 'none yet'}. "
        'Use pretrained=False, one of the published names, or your own checkpoint '
        "(timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file='model.safetensors'))).")


def load_error_reason(error: Exception, path: Optional[Path] = None) -> str:
    """Why a weights file (at `path`, where known) did not load, in one line, without torch's advice to turn safe
    loading off."""
    text = str(error)
    if path is not None and _is_json(Path(path)):  # torch reads it as a pickle and says 'Python objects'
        return ('it is a JSON file (a config.json?), not weights: give the model.safetensors beside it, or the folder '
                'that holds both.')
    if 'weights_only' in text:
        return ('it holds Python objects other than tensors and plain containers, which are not loaded '
                '(weights_only=True: loading them could run code). Only safetensors files and PyTorch files of plain '
                'tensors load; convert it where you trust it, e.g. to safetensors.')
    first = text.strip().splitlines()[0] if text.strip() else 'unreadable'
    return f'{type(error).__name__}: {first}. The file is corrupt, truncated, or not a weights file.'


def _is_json(path: Path) -> bool:
    try:
        with open(path, 'rb') as f:
            return f.read(64).lstrip()[:1] in (b'{', b'[')
    except OSError:
        return False


def raise_download_error(variant: str, pretrained_cfg: Any, error: Exception, overlay: Optional[dict] = None) -> None:
    """Re-raise a failure to fetch or read pretrained weights with what to do about it."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from safetensors import SafetensorError

    file = (overlay or {}).get('file')
    if file:  # a local file named by the user: neither the network nor the cache is involved
        if not Path(file).is_file():
            raise WeightsDownloadError(
                f'pretrained_cfg_overlay file {file} does not exist: give the path of a .safetensors file (or a '
                f"PyTorch file of plain tensors) holding {variant}'s weights.") from error
        if str(error).startswith('Error(s) in loading state_dict'):
            details = '; '.join(line.strip() for line in str(error).splitlines()[1:3])
            raise WeightsDownloadError(
                f'pretrained_cfg_overlay file {file} holds the weights of another architecture or class count, not '
                f'{variant} as created here ({details[:400]}). Create the model the weights were trained as (its '
                'name, num_classes and model arguments), or give that model\'s weights.') from error
        if _is_json(Path(file)):
            raise WeightsDownloadError(
                f'pretrained_cfg_overlay file {file} is a JSON file (a config.json?), not weights: give the '
                'model.safetensors beside it, or load the folder with timm.create_model("local-dir:FOLDER").') \
                from error
        raise WeightsDownloadError(f'pretrained_cfg_overlay file {file} could not be read as weights: '
                                   f'{load_error_reason(error)}') from error
    tag = pretrained_cfg if isinstance(pretrained_cfg, str) else None
    name = f'{variant}.{tag or DEFAULT_TAG}' if not isinstance(pretrained_cfg, dict) else variant
    if isinstance(error, SafetensorError) or 'safetensors' in type(error).__module__:
        raise WeightsDownloadError(
            f'the weights downloaded for {name} are corrupt ({error}). Delete them from the Hugging Face cache '
            f'({constants.HF_HUB_CACHE}; `hf cache delete`) and load again.') from error
    if isinstance(error, (HfHubHTTPError, LocalEntryNotFoundError, OSError)):
        raise WeightsDownloadError(
            f'could not fetch the weights of {name} from {constants.ENDPOINT} ({type(error).__name__}: {error}). '
            'Check the network or HF_ENDPOINT (a local Hub such as `python -m hub serve`); offline, set '
            "HF_HUB_OFFLINE=1 to use the Hugging Face cache (filled by an earlier download), or load a file with "
            "pretrained_cfg_overlay=dict(file='model.safetensors').") from error
    raise error
