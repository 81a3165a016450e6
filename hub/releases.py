"""The released weights: every repository folder under releases/ORG/NAME, checked, and the table of them.

The folders are exactly what `python -m hub push --releases releases/` copied there (and what a push to
the Hub uploads); `timm_spa/models/published.json` records which `arch.tag` names they are.
"""
from pathlib import Path
from typing import List

import timm

from timm_spa import paper
from train.lineage import describe, totals

from .repository import Repository, RepositoryError, read_history, read_repository


def released_repositories(releases: Path) -> List[Repository]:
    """Every repository folder RELEASES/ORG/NAME, each checked: its files belong together and its
    config.json builds the model."""
    releases = Path(releases)
    if not releases.is_dir():
        raise RepositoryError(f'{releases} is not a folder; give the releases folder (releases/ORG/NAME/...).')
    folders = sorted(p for p in releases.glob('*/*') if p.is_dir() and not p.name.startswith('.'))
    if not folders:
        raise RepositoryError(f'{releases} holds no repositories: expected ORG/NAME folders with model.safetensors, '
                              'config.json and results.json (what `python -m hub export` writes).')
    repos = []
    for folder in folders:
        repo = read_repository(folder)
        read_history(folder)
        try:
            timm.create_model(f'local-dir:{folder}')
        except Exception as e:  # any failure to build is this folder's problem, named as such
            raise RepositoryError(f'{folder / "config.json"} does not build a model ({type(e).__name__}: {e}).') \
                from None
        repos.append(repo)
    return repos


def release_table(repos: List[Repository]) -> str:
    """The README's table of released weights, every number read from the release folders."""
    lines = ['| model | tag | params | test top-1 | test top-5 | val top-1 | epochs | wall time | lineage | '
             'hardware, precision | paper top-1 |', '|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|']
    for repo in repos:
        r = repo.results
        ref = paper.TOP1.get(r.model, {}).get(r.tag) if r.tag else None
        epochs, seconds = totals(r)  # everything behind the weights, their ancestors included
        lines.append(
            f'| `{r.model}` | `{r.hub_tag}` | {r.param_count / 1e6:.2f}M | {r.test_top1:.2f} | '
            f'{r.test_top5:.2f} | {r.val_top1:.2f} | {epochs} | {seconds / 3600:.2f} h | {describe(r)} | '
            f"{r.hardware}, {r.precision['train']} | {f'{ref:.2f}' if ref is not None else '-'} |")
    return '\n'.join(lines)
