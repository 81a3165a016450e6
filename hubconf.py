"""torch.hub entry points: every model timm-spa registers in timm, generated from timm's registry.

    model = torch.hub.load('<owner>/timm-spa', 'resnet18_spa', pretrained=True)
    model = torch.hub.load('<owner>/timm-spa', 'resnet18_spa', num_classes=100, attn_stages=(2,))
    torch.hub.list('<owner>/timm-spa')

Each entry point is `timm.create_model(name, pretrained=..., **kwargs)`: the same arguments, tags
(`torch.hub.load(..., 'resnet18_spa', pretrained=True, pretrained_cfg='cifar100')`) and weights.
"""
import timm
from timm.models import model_entrypoint

import timm_spa  # noqa: F401  registers the models (torch.hub puts this repository first on sys.path)

dependencies = ['torch', 'torchvision', 'timm', 'huggingface_hub', 'safetensors']


def _entry_point(name: str):
    def create(pretrained: bool = False, **kwargs):
        return timm.create_model(name, pretrained=pretrained, **kwargs)

    create.__name__ = create.__qualname__ = name
    create.__doc__ = model_entrypoint(name).__doc__
    return create


globals().update({name: _entry_point(name) for name in timm.list_models()
                  if model_entrypoint(name).__module__.startswith('timm_spa.')})
