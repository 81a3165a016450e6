"""Draw captured attention internals as one PNG, a row per image (headless matplotlib)."""
from pathlib import Path
from typing import List, Tuple

import numpy as np

from train.report import pyplot

MARKER_COLOURS = ('red', 'cyan', 'yellow', 'lime')
MATRIX_COLUMNS = 32  # an affinity panel shows the columns that receive the most attention, at most this many
MATRIX_FLOOR = 1e-4  # the colour scale's bottom: weights below it are drawn as it (dark)


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


def top_columns(matrix: np.ndarray, count: int = MATRIX_COLUMNS) -> Tuple[np.ndarray, float]:
    """The `count` columns of a row-stochastic affinity that receive the most attention (mean over rows), most
    first, and their share of the whole: a 256 x 256 softmax drawn whole is a dark square at panel size."""
    mass = matrix.mean(axis=0)
    top = np.argsort(-mass, kind='stable')[:count]
    return top, float(mass[top].sum() / mass.sum())


def _matrix_panel(title: str, matrix: np.ndarray) -> dict:
    top, share = top_columns(matrix)
    shown = matrix[:, top]
    # rows grouped by the column they attend to most, strongest first: similar rows (one shared mix) read as
    # one band, rows that differ (attention that depends on the query) as several
    order = np.lexsort((-shown.max(axis=1), shown.argmax(axis=1)))
    return dict(kind='matrix', matrix=shown[order],
                title=f'{title}: top {len(top)} of {matrix.shape[1]} cols\n'
                      f'({share:.0%} of the attention), rows by top col')


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
        out.append(_matrix_panel(f"{block.name} C'xC' A", block.arrays['affinity'][index]))
    for block in (c for c in result['captures'] if c.kind == 'nl'):
        H, W = block.feature_size
        for row, col in result['queries'] or default_queries((H, W)):
            heat = block.arrays['affinity'][index][row * W + col].reshape(H, W)
            stride = block.stride(size)
            box = (col * stride[1], row * stride[0], stride[1], stride[0])
            out.append(dict(kind='overlay', title=f'{block.name} query ({row},{col})', image=image, heat=heat,
                            box=box))
        out.append(_matrix_panel(f'{block.name} nxn A', block.arrays['affinity'][index]))
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


def figure(result: dict):
    """The matplotlib figure: a row per image, its panels left to right, a colour bar beside each matrix."""
    plt = pyplot()
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    rows = [panels(result, i) for i in range(len(result['images']))]
    cols = max(len(r) for r in rows)
    # constrained layout keeps the figure title, the panel titles and the colour bars apart
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.5 * cols, 2.7 * len(rows) + 0.4), squeeze=False,
                             layout='constrained')
    for i, row in enumerate(rows):
        for j, ax in enumerate(axes[i]):
            ax.axis('off')
            if j >= len(row):
                continue
            panel = row[j]
            if panel['kind'] == 'matrix':
                matrix = panel['matrix']
                shown = ax.imshow(np.maximum(matrix, MATRIX_FLOOR), cmap='viridis', interpolation='nearest',
                                  aspect='auto', norm=LogNorm(vmin=MATRIX_FLOOR, vmax=1.0))
                fig.colorbar(shown, ax=ax, fraction=0.08, pad=0.02, extend='min').ax.tick_params(labelsize=5)
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
            ax.set_title(title, fontsize=6.5)
    fig.suptitle(f"{result['model']}: what the attention blocks see", fontsize=9)
    return fig


def render(result: dict, path: Path) -> None:
    fig = figure(result)
    fig.savefig(path, dpi=130)
    pyplot().close(fig)
