"""Print the model table: exact parameter counts (10 classes) beside the paper's Table 1.

    python -m timm_spa.param_table
"""
from typing import Any, Dict, List

import timm

from .models.cifar_resnet import MODEL_NAMES, CifarResNet
from .paper import PARAMS_M


def _attention(model: CifarResNet) -> str:
    if model.attn_layer is not None:
        block = getattr(model, f'layer{model.attn_stages[0]}')[-1]
        where = ', '.join(f'stage {s}' for s in model.attn_stages)
        return f'{type(block).__name__} after {where}'
    se = getattr(model.layer1[0], 'se', None)
    return f'{type(se).__name__} in every block' if se is not None else 'none'


def parameter_rows() -> List[Dict[str, Any]]:
    """One row per registered model, built with num_classes=10 on the meta device (no memory)."""
    rows = []
    for name in MODEL_NAMES:
        model = timm.create_model(name, num_classes=10, device='meta')
        rows.append(dict(
            model=name, params=sum(p.numel() for p in model.parameters()),
            paper_params_m=PARAMS_M[name], attention=_attention(model)))
    return rows


def main() -> None:
    print('| model | params (ours, exact) | paper Table 1 | attention |')
    print('|---|---:|---:|---|')
    for row in parameter_rows():
        print(f"| `{row['model']}` | {row['params']:,} | {row['paper_params_m']:.3f}M | {row['attention']} |")


if __name__ == '__main__':
    main()
