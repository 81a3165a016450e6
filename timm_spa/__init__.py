"""Salient Positions Attention (SPANet) for timm: the SPA layer and CIFAR-style ResNets."""
from . import models  # noqa: F401  registers the models in timm's registry
from .layers import SalientPositionsAttention, select_salient_positions

__version__ = '0.3.0'
__all__ = ['SalientPositionsAttention', 'select_salient_positions', '__version__']
