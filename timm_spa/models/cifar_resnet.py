"""CIFAR-style ResNets with SPA, non-local, global-context or SE attention, registered in timm.

The paper's backbone: timm's ResNet blocks behind a 3x3 stride-1 stem with no max-pool, so a 32x32
image reaches stage 4 at 4x4. One attention block is appended to the `nn.Sequential` of every stage
in `attn_stages` (after its last residual block), which keeps stock ResNet state-dict keys, feature
taps, `forward_intermediates`, gradient checkpointing and `group_matcher` unchanged.
"""
import difflib
import inspect
from typing import Any, Dict, Optional, Sequence, Tuple, Type, Union

from safetensors import SafetensorError
from timm.layers import get_attn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from .. import paper
from ..layers import SalientPositionsAttention
from .datasets import DATASET_CFGS
from .published import DEFAULT_TAG, RELEASED, check_pretrained_available, hub_repo_id, raise_download_error

__all__ = ['CifarResNet', 'MODEL_NAMES', 'PRETRAINED_TAGS', 'STAGE_ATTN_LAYERS', 'UnknownModelArguments']

# stage-level attention: timm's name (ours for 'spa') and the defaults that give the paper's Table 1 models
STAGE_ATTN_LAYERS: Dict[str, Dict[str, Any]] = {
    'spa': {},
    'nl': dict(rd_ratio=1 / 2),
    'gc': dict(fuse_add=True, fuse_scale=False, rd_ratio=1 / 8),
}
NUM_STAGES = 4



def _check_attn_stages(attn_stages: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    stages = (attn_stages,) if isinstance(attn_stages, int) and not isinstance(attn_stages, bool) else attn_stages
    allowed = f'a non-empty set of distinct stage numbers from 1 to {NUM_STAGES}, e.g. (3,) or (1, 2)'
    try:
        stages = tuple(stages)
    except TypeError:
        raise ValueError(f'attn_stages must be {allowed}; got {attn_stages!r}.') from None
    valid = all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= NUM_STAGES for s in stages)
    if not stages or not valid or len(set(stages)) != len(stages):
        raise ValueError(f'attn_stages must be {allowed}; got {attn_stages!r}.')
    return tuple(sorted(stages))


def attn_layer_class(name: str) -> Type[nn.Module]:
    """The stage attention class: ours for 'spa', timm's `get_attn` for the names timm knows."""
    return SalientPositionsAttention if name == 'spa' else get_attn(name)


class CifarResNet(ResNet):
    """timm ResNet with a CIFAR stem (3x3 conv, stride 1, no max-pool) and optional stage attention.

    Args:
        block: residual block class (BasicBlock or Bottleneck).
        layers: residual blocks per stage.
        attn_layer: stage attention, one of `STAGE_ATTN_LAYERS` ('spa', 'nl', 'gc'), or None.
        attn_stages: stages (1-4) that get an attention block after their last residual block;
            default (3,), the paper's Table 1 placement.
        attn_kwargs: arguments for the attention layer, over the defaults in `STAGE_ATTN_LAYERS`.
        **kwargs: passed to timm's `ResNet` (num_classes, in_chans, block_args, drop rates, ...).
    """

    def __init__(
            self,
            block: Union[Type[BasicBlock], Type[Bottleneck]],
            layers: Sequence[int],
            num_classes: int = 10,
            in_chans: int = 3,
            attn_layer: Optional[str] = None,
            attn_stages: Optional[Union[int, Sequence[int]]] = None,
            attn_kwargs: Optional[Dict[str, Any]] = None,
            **kwargs,
    ):
        if attn_layer is not None and attn_layer not in STAGE_ATTN_LAYERS:
            raise ValueError(
                f'attn_layer must be one of {sorted(STAGE_ATTN_LAYERS)} or None; got {attn_layer!r}.')
        if attn_layer is None and (attn_stages is not None or attn_kwargs):
            raise ValueError(
                'attn_stages and attn_kwargs need an attention layer: pass attn_layer='
                f'{sorted(STAGE_ATTN_LAYERS)} or use one of the *_spa, *_nl, *_gc models.')
        attn_stages = _check_attn_stages(3 if attn_stages is None else attn_stages) if attn_layer else ()
        for key in ('stem_type', 'stem_width', 'replace_stem_pool'):
            if key in kwargs:
                raise ValueError(f'{key} is not supported: these models always use the CIFAR stem.')
        dd = {'device': kwargs.get('device'), 'dtype': kwargs.get('dtype')}
        super().__init__(block, layers, num_classes=num_classes, in_chans=in_chans, **kwargs)

        # CIFAR stem: 3x3 stride-1 conv, no max-pool; every feature map is 4x larger than on ImageNet
        self.conv1 = nn.Conv2d(in_chans, self.bn1.num_features, 3, stride=1, padding=1, bias=False, **dd)
        nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
        self.maxpool = nn.Identity()
        self.feature_info[0]['reduction'] = 1
        for info in self.feature_info[1:]:
            info['reduction'] //= 4

        self.attn_layer = attn_layer
        self.attn_stages = attn_stages
        if attn_layer is not None:
            attn_cls = attn_layer_class(attn_layer)
            attn_kwargs = {**STAGE_ATTN_LAYERS[attn_layer], **(attn_kwargs or {})}
            for stage in attn_stages:
                # after ResNet.__init__, so init_weights does not overwrite the block's own init
                channels = self.feature_info[stage]['num_chs']
                getattr(self, f'layer{stage}').append(attn_cls(channels, **attn_kwargs, **dd))

    def init_weights(self, zero_init_last: bool = True) -> None:
        """timm's initialisation, then each stage attention block's own `reset_parameters`.

        timm's pass re-initialises every conv it finds, the attention blocks' included, and leaves their
        norms as they are: called again on a trained model, a block would no longer start as the identity.
        """
        super().init_weights(zero_init_last=zero_init_last)
        attn_classes = tuple(attn_layer_class(name) for name in STAGE_ATTN_LAYERS)
        for module in self.modules():
            if isinstance(module, attn_classes):
                module.reset_parameters()


PRETRAINED_TAGS = tuple(DATASET_CFGS)


def _cfg(name: str, tag: str, **kwargs) -> Dict[str, Any]:
    """Pretrained config of `name.tag`; `hf_hub_id` only where weights are published (`RELEASED`)."""
    return {
        'hf_hub_id': hub_repo_id(f'{name}.{tag}') if f'{name}.{tag}' in RELEASED else None,
        **DATASET_CFGS[tag],
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'fixed_input_size': False,
        'first_conv': 'conv1', 'classifier': 'fc', 'license': 'apache-2.0',
        'paper_name': paper.TITLE,
        **kwargs,
    }


MODEL_NAMES = (
    'resnet18_cifar', 'resnet50_cifar', 'resnet18_se', 'resnet50_se', 'resnet18_gc', 'resnet50_gc',
    'resnet18_nl', 'resnet50_nl', 'resnet18_spa', 'resnet50_spa',
)

default_cfgs = generate_default_cfgs({
    # the cifar10 tag stays the default ('*') whichever tags have weights: num_classes=10 unless asked
    f'{name}.{tag}{"*" if tag == DEFAULT_TAG else ""}': _cfg(name, tag)
    for name in MODEL_NAMES for tag in PRETRAINED_TAGS
})

_RESNET18 = dict(block=BasicBlock, layers=(2, 2, 2, 2))
_RESNET50 = dict(block=Bottleneck, layers=(3, 4, 6, 3))
_SE = dict(block_args=dict(attn_layer='se'))


# what timm's builder takes from the keyword arguments besides its own parameters and the model's
_BUILDER_KWARGS = ('pruned', 'features_only', 'out_indices', 'feature_cls')


class UnknownModelArguments(TypeError):
    """Arguments that neither the model, timm's ResNet nor timm's builder takes; `what` names them (and the closest
    known names) in one clause."""

    def __init__(self, variant: str, what: str):
        from .. import __version__
        super().__init__(
            f"{variant} {what}: it takes attn_stages, attn_kwargs and timm ResNet's arguments such as drop_rate. From "
            'the model_args of a config.json (hf-hub:, local-dir:, transformers), the file was edited or written for '
            f'another timm-spa version than this one ({__version__}): correct it there, or upgrade timm-spa.')
        self.what = what


def _check_arguments(variant: str, kwargs: Dict[str, Any]) -> None:
    """Refuse, before anything is built, each argument nobody takes: a misspelt name, or one from the model_args of
    a config.json written for another version. Errors raised while building stay as they are."""
    known = {*_BUILDER_KWARGS, *(name for fn in (CifarResNet.__init__, ResNet.__init__, build_model_with_cfg)
                                 for name in inspect.signature(fn).parameters)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        close = [match for name in unknown for match in difflib.get_close_matches(name, sorted(known), n=1)]
        hint = f" (did you mean {' or '.join(close)}?)" if close else ''
        raise UnknownModelArguments(variant, f"takes no argument {', '.join(map(repr, unknown))}{hint}")


def _create(variant: str, pretrained: bool, arch: Dict[str, Any], **kwargs) -> CifarResNet:
    _check_arguments(variant, kwargs)
    if pretrained:
        check_pretrained_available(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    try:
        return build_model_with_cfg(CifarResNet, variant, pretrained, **dict(arch, **kwargs))
    except (OSError, RuntimeError, ValueError, SafetensorError) as e:
        if pretrained:
            raise_download_error(variant, kwargs.get('pretrained_cfg'), e, kwargs.get('pretrained_cfg_overlay'))
        raise


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-18, CIFAR stem, no attention (the paper's baseline)."""
    return _create('resnet18_cifar', pretrained, _RESNET18, **kwargs)


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-50, CIFAR stem, no attention (the paper's baseline)."""
    return _create('resnet50_cifar', pretrained, _RESNET50, **kwargs)


@register_model
def resnet18_se(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-18, CIFAR stem, squeeze-excitation in every block (as timm's seresnet18)."""
    return _create('resnet18_se', pretrained, dict(_RESNET18, **_SE), **kwargs)


@register_model
def resnet50_se(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-50, CIFAR stem, squeeze-excitation in every block (as timm's seresnet50)."""
    return _create('resnet50_se', pretrained, dict(_RESNET50, **_SE), **kwargs)


@register_model
def resnet18_gc(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-18, CIFAR stem, global-context block after stage 3."""
    return _create('resnet18_gc', pretrained, dict(_RESNET18, attn_layer='gc'), **kwargs)


@register_model
def resnet50_gc(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-50, CIFAR stem, global-context block after stage 3."""
    return _create('resnet50_gc', pretrained, dict(_RESNET50, attn_layer='gc'), **kwargs)


@register_model
def resnet18_nl(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-18, CIFAR stem, non-local block (C/2 inner width) after stage 3."""
    return _create('resnet18_nl', pretrained, dict(_RESNET18, attn_layer='nl'), **kwargs)


@register_model
def resnet50_nl(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-50, CIFAR stem, non-local block (C/2 inner width) after stage 3."""
    return _create('resnet50_nl', pretrained, dict(_RESNET50, attn_layer='nl'), **kwargs)


@register_model
def resnet18_spa(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-18, CIFAR stem, Salient Positions Attention (k=2) after stage 3."""
    return _create('resnet18_spa', pretrained, dict(_RESNET18, attn_layer='spa'), **kwargs)


@register_model
def resnet50_spa(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-50, CIFAR stem, Salient Positions Attention (k=2) after stage 3."""
    return _create('resnet50_spa', pretrained, dict(_RESNET50, attn_layer='spa'), **kwargs)
