"""How much what each released attention block computes depends on the image, over a whole test split.

    python -m visualize.block_stats releases/ --data cifar10=../shared/data/cifar10-jpeg [--output-json PATH]

For every release with attention blocks, its blocks' attention (SPA's C' x C' channel affinity A, non-local's
n x n position affinity, global context's mask over positions; `timm_spa.capture`) and their output:
- between-image share: of the variance of the attention's entries over all images and entries, the part that is
  variance of each entry across images (the rest is how the mean matrix's entries differ from each other). 0 means
  every image gets the same attention (a fixed mixing); 1 means the mean matrix is flat and all structure is
  per image.
- residual ratio: ||block(x) - x|| / ||x|| per image, averaged: how much the block changes its input.
`--table JSON` prints the table of a saved result (docs/attention-maps.md holds it). Each release's rows name
the SHA-256 of the weights they were measured on; `--output-json` of an earlier result keeps the rows of releases
not measured now (no `--data` for them) while their weights are unchanged.
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from timm_spa.capture import attention_blocks, capture_attention

ATTENTION_ARRAY = {'spa': 'affinity', 'nl': 'affinity', 'gc': 'mask'}


class EntryMoments:
    """Running per-entry sums over images, in float64: enough for the between-image share without keeping the
    arrays (SPA's 256 x 256 affinity over 10,000 images is 2.6 GB)."""

    def __init__(self):
        self.count, self.total, self.squares = 0, None, None

    def add(self, arrays: np.ndarray) -> None:
        flat = arrays.reshape(len(arrays), -1).astype(np.float64)
        if self.total is None:
            self.total, self.squares = np.zeros(flat.shape[1]), np.zeros(flat.shape[1])
        self.count += len(flat)
        self.total += flat.sum(axis=0)
        self.squares += (flat * flat).sum(axis=0)

    def between_image_share(self) -> float:
        mean = self.total / self.count
        between = (self.squares / self.count - mean * mean).sum()  # sum over entries of the variance across images
        grand = mean.mean()
        overall = (self.squares / self.count).sum() - 2 * grand * mean.sum() + len(mean) * grand * grand
        return float(between / overall)


def block_stats(model: torch.nn.Module, batches) -> List[dict]:
    """One row per attention block of `model` over `batches` of (images, labels)."""
    blocks = attention_blocks(model)
    moments = {name: EntryMoments() for name, _, _ in blocks}
    ratios: Dict[str, List[float]] = {name: [] for name, _, _ in blocks}

    def residual(name):
        def hook(_module, inputs, output):
            x = inputs[0].flatten(1).float()
            ratios[name].extend(((output.flatten(1).float() - x).norm(dim=1) / x.norm(dim=1)).tolist())
        return hook

    handles = [module.register_forward_hook(residual(name)) for name, module, _ in blocks]
    try:
        model.eval()
        with torch.no_grad():
            for images, _ in batches:
                with capture_attention(model) as captures:
                    model(images)
                for capture in captures:
                    moments[capture.name].add(capture.arrays[ATTENTION_ARRAY[capture.kind]])
    finally:
        for handle in handles:
            handle.remove()
    return [dict(block=name, kind=kind, entries=len(moments[name].total), images=moments[name].count,
                 between_image_share=moments[name].between_image_share(),
                 residual_ratio=float(np.mean(ratios[name]))) for name, _, kind in blocks]


def table(result: Dict[str, List[dict]]) -> str:
    lines = ['| release | block | attention | entries | images | between-image share | residual ratio |',
             '|---|---|---|---:|---:|---:|---:|']
    for release, rows in result.items():
        for r in rows:
            what = {'spa': "C' x C' channel affinity", 'nl': 'n x n position affinity', 'gc': 'mask over positions'}
            lines.append(f"| {release} | `{r['block']}` ({r['kind']}) | {what[r['kind']]} | {r['entries']:,} | "
                         f"{r['images']:,} | {r['between_image_share']:.3f} | {r['residual_ratio']:.3f} |")
    return '\n'.join(lines)


def _is_result(value) -> bool:
    """Whether a parsed JSON value is what `--output-json` writes: release name -> rows naming their block."""
    return isinstance(value, dict) and all(
        isinstance(rows, list) and all(isinstance(row, dict) and 'block' in row for row in rows)
        for rows in value.values())


def measure_releases(releases: Path, data_dirs: Dict[str, str], earlier: Optional[Dict[str, List[dict]]] = None
                     ) -> Dict[str, List[dict]]:
    """Each release with attention blocks whose data is in `data_dirs`, its rows tagged with its weights' SHA-256;
    a release not measured now keeps its `earlier` rows while they are of the weights it holds."""
    import timm

    from hub.releases import DecodedTestImages, released_repositories
    from hub.repository import WEIGHTS
    from train.checkpoint import file_sha256
    test_images, result = DecodedTestImages(data_dirs), {}
    for repo in released_repositories(releases):
        sha256 = file_sha256(repo.folder / WEIGHTS)
        if repo.results.dataset.name not in data_dirs:
            kept = (earlier or {}).get(repo.name)
            if kept and all(row.get('weights_sha256') == sha256 for row in kept):
                result[repo.name] = kept
            elif kept:
                print(f'{repo.name}: its earlier rows are of other weights and are dropped (no --data '
                      f'{repo.results.dataset.name}=DIR to measure these)', flush=True)
            continue
        model = timm.create_model(f'local-dir:{repo.folder}', pretrained=True)
        if not attention_blocks(model):
            continue
        result[repo.name] = [dict(row, weights_sha256=sha256) for row in block_stats(model, test_images.batches(repo))]
        print(table({repo.name: result[repo.name]}).splitlines()[-1], flush=True)
    return result


def main(argv: Optional[List[str]] = None) -> Dict[str, List[dict]]:
    from hub.releases import parse_data_dirs
    from train.checkpoint import atomic_write
    from train.cli import run_cli
    parser = argparse.ArgumentParser(prog='python -m visualize.block_stats', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('releases', nargs='?', default=None)
    parser.add_argument('--data', action='append', default=[], metavar='NAME=DIR')
    parser.add_argument('--output-json', default=None)
    parser.add_argument('--table', default=None, metavar='JSON', help='print the table of a saved result')
    args = parser.parse_args(argv)

    def body():
        if args.table:
            result = json.loads(Path(args.table).read_text())
        else:
            if not args.releases:
                parser.error('give the releases folder (or --table JSON)')
            output = Path(args.output_json) if args.output_json else None
            try:
                earlier = json.loads(output.read_text()) if output is not None and output.is_file() else None
            except ValueError:
                earlier = []  # not JSON: refused below like any other file this command did not write
            if earlier is not None and not _is_result(earlier):
                raise ValueError(f'--output-json {output} is not an earlier result of this command; move it away '
                                 '(nothing was measured or written).')
            result = measure_releases(Path(args.releases), parse_data_dirs(args.data), earlier)
            if output is not None:
                atomic_write(output, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + '\n'))
        print(table(result))
        return result

    return run_cli('python -m visualize.block_stats', body)


if __name__ == '__main__':
    main()
