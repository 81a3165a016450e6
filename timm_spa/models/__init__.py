from .cifar_resnet import MODEL_NAMES, PRETRAINED_TAGS, STAGE_ATTN_LAYERS, CifarResNet, UnknownModelArguments
from .published import HF_HUB_ORG, PretrainedWeightsUnavailable, WeightsDownloadError, hub_repo_id, published_names

__all__ = [
    'HF_HUB_ORG', 'MODEL_NAMES', 'PRETRAINED_TAGS', 'STAGE_ATTN_LAYERS', 'CifarResNet',
    'PretrainedWeightsUnavailable', 'UnknownModelArguments', 'WeightsDownloadError', 'hub_repo_id', 'published_names',
]
