from .spa import SalientPositionsAttention, resolve_num_positions, select_salient_positions

__all__ = ['SalientPositionsAttention', 'resolve_num_positions', 'select_salient_positions']
