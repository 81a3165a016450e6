from .cifar_resnet import PRETRAINED_TAGS, STAGE_ATTN_LAYERS, CifarResNet
from .published import HF_HUB_ORG, PretrainedWeightsUnavailable, hub_repo_id, published_names

__all__ = [
    'CifarResNet', 'HF_HUB_ORG', 'PRETRAINED_TAGS', 'PretrainedWeightsUnavailable', 'STAGE_ATTN_LAYERS',
    'hub_repo_id', 'published_names',
]
