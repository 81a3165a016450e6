"""Draw captured attention internals as one PNG, a row per image (headless matplotlib)."""
from pathlib import Path
from typing import List, Tuple

import numpy as np

MARKER_COLOURS = ('red', 'cyan', 'yellow', 'lime')


def default_queries(size: Tuple[int, int]) -> List[Tuple[int, int]]:
    """Four spread query cells of an H x W map (its quarter points), as in the paper's Fig. 1."""
    H, W = size
    cells = [(H // 4, W // 4), (H // 4, 3 * W // 4), (3 * H // 4, W // 4), (3 * H // 4, 3 * W // 4)]
    return list(dict.fromkeys(cells))


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2D map to size x size, for overlays."""
    rows = (np.arange(size) * grid.shape[0] // size).clip(0, grid.shape[0] - 1)
    cols = (np.arange(size) * grid.shape[1] // size).clip(0, grid.shape[1] - 1)
    return grid[rows][:, cols]


def panels(result: dict, index: int) -> List[dict]:
    """The panels of one image's row: what to draw, in order."""
    image = result['images'][index]
    size = image.shape[:2]
    out = [dict(kind='image', title='input', image=image, markers=[])]
    for number, block in enumerate(c for c in result['captures'] if c.kind == 'spa'):
        colour = MARKER_COLOURS[number % len(MARKER_COLOURS)]
        out[0]['markers'].append((block.salient_pixels(size)[index], block.stride(size), colour, block.name))
        out.append(dict(kind='overlay', title=f'{block.name} saliency', image=image,
                        heat=block.arrays['saliency'][index]))
        out.append(dict(kind='matrix', title=f"{block.name} C'xC' affinity", matrix=block.arrays['affinity'][index]))
    for block in (c for c in result['captures'] if c.kind == 'nl'):
        H, W = block.feature_size
        for row, col in result['queries'] or default_queries((H, W)):
            heat = block.arrays['affinity'][index][row * W + col].reshape(H, W)
            stride = block.stride(size)
            box = (col * stride[1], row * stride[0], stride[1], stride[0])
            out.append(dict(kind='overlay', title=f'{block.name} query ({row},{col})', image=image, heat=heat,
                            box=box))
        out.append(dict(kind='matrix', title=f'{block.name} nxn affinity', matrix=block.arrays['affinity'][index]))
    for block in (c for c in result['captures'] if c.kind == 'gc'):
        out.append(dict(kind='overlay', title=f'{block.name} context mask', image=image,
                        heat=block.arrays['mask'][index]))
    return out


def caption(result: dict, index: int) -> str:
    names = result['class_names']
    predicted = int(result['predictions'][index])
    text = f"pred {names[predicted]} ({result['probabilities'][index]:.2f})"
    label = result['labels'][index]
    if label is not None:
        text += f" - {'right' if predicted == label else 'wrong'}, label {names[label]}"
    return text


def render(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = [panels(result, i) for i in range(len(result['images']))]
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.3 * cols, 2.5 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, ax in enumerate(axes[i]):
            ax.axis('off')
            if j >= len(row):
                continue
            panel = row[j]
            if panel['kind'] == 'matrix':
                ax.imshow(panel['matrix'], cmap='viridis', interpolation='nearest')
            else:
                ax.imshow(panel['image'], interpolation='nearest')
            if panel['kind'] == 'overlay':
                size = panel['image'].shape[0]
                ax.imshow(_upsample(panel['heat'], size), cmap='jet', alpha=0.5, interpolation='nearest')
                if 'box' in panel:
                    x, y, w, h = panel['box']
                    ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor='red', linewidth=1.5))
            for points, (sy, sx), colour, name in panel.get('markers', []):
                for y, x in points:  # the whole feature-map cell around each salient position's centre
                    ax.add_patch(Rectangle((x - sx / 2 - 0.5, y - sy / 2 - 0.5), sx, sy, fill=False,
                                           edgecolor=colour, linewidth=1.8))
                ax.plot([], [], 's', markerfacecolor='none', markeredgecolor=colour, label=f'{name} salient')
            if panel.get('markers'):
                ax.legend(loc='lower left', fontsize=6, framealpha=0.6)
            title = panel['title'] if j else f"{caption(result, i)}\n{panel['title']}"
            ax.set_title(title, fontsize=7)
    fig.suptitle(f"{result['model']}: what the attention blocks see", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
