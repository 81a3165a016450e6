"""Where pretrained weights live, and which of them exist.

`published.json` beside this file is the single record of the `arch.tag` names whose weights have
been pushed to the Hub (the hub tooling appends to it when it publishes). Pretrained configs get an
`hf_hub_id` only for those names, so `timm.list_pretrained()` never lists weights that do not exist,
and `pretrained=True` for any other name fails with a message instead of a bare 404.
"""
import json
from pathlib import Path
from typing import Any, List, Optional

__all__ = [
    'HF_HUB_ORG', 'PUBLISHED_RECORD', 'PretrainedWeightsUnavailable', 'check_pretrained_available',
    'hub_repo_id', 'is_published', 'published_names',
]

HF_HUB_ORG = 'timm-spa'  # the Hugging Face Hub organisation that holds every published checkpoint
PUBLISHED_RECORD = Path(__file__).with_name('published.json')
DEFAULT_TAG = 'cifar10'


class PretrainedWeightsUnavailable(RuntimeError):
    """`pretrained=True` for a model/tag whose weights have not been published."""


def hub_repo_id(name: str) -> str:
    """Hub repository of `arch.tag`, e.g. 'timm-spa/resnet18_spa.cifar10'."""
    return f'{HF_HUB_ORG}/{name}'


def published_names() -> List[str]:
    """The `arch.tag` names with published weights, as recorded in `published.json`."""
    return list(json.loads(PUBLISHED_RECORD.read_text()))


def is_published(name: str) -> bool:
    return name in published_names()


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
