from .spa import (
    ATTN_IMPLS,
    SalientPositions,
    SalientPositionsAttention,
    attention_kernel,
    channel_affinity,
    channel_attention,
    resolve_num_positions,
    select_salient_positions,
)

__all__ = [
    'ATTN_IMPLS', 'SalientPositions', 'SalientPositionsAttention', 'attention_kernel', 'channel_affinity',
    'channel_attention', 'resolve_num_positions', 'select_salient_positions',
]
