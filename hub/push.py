"""Publish an exported folder: to the Hugging Face Hub, or into a releases folder (the project's `releases/`,
or one of a site's own, which `python -m hub serve DIR` serves over the Hub's API).

`--releases DIR` writes the folder to `DIR/ORG/NAME` in one step, one push of a name at a time
(`hub.release_slot`); a new `arch.tag` of the project's organisation in the project's own releases/ folder gets
the line to add to the library's `RELEASED` (what `timm.list_pretrained()` lists). Every way checks the folder
first: its files belong together, and a repository named `arch.tag` holds exactly that.

A published name keeps its weights: a releases destination that already publishes other weights is refused
unless `--replace`, which keeps the replaced release (run id, numbers, weights hash) in the repository's
`history.json` and on its card. Pushing what is already there changes nothing.
"""
import filecmp
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Union

from huggingface_hub import HfApi, get_token

from timm_spa.models import HF_HUB_ORG
from timm_spa.models.published import RELEASED
from train.checkpoint import current_umask, file_sha256
from train.lineage import totals

from .card import with_history, with_remeasured
from .export import machine_paths
from .release_slot import ReleaseSlot
from .releases import check_against_remeasured, needs_remeasure, remeasured_entry
from .repository import (
    CARD,
    HISTORY,
    RESULTS,
    WEIGHTS,
    Repository,
    RepositoryError,
    check_config,
    check_matches_tag,
    check_repo_id,
    read_history,
    read_repository,
    tagged_name,
)

# the project's own releases/ folder (in a source checkout): the one whose names the library's RELEASED lists
PROJECT_RELEASES = Path(__file__).resolve().parents[1] / 'releases'


def _refuse_nesting(folder: Path, place: Path, flag: str) -> None:
    a, b = folder.resolve(), place.resolve()
    if a.is_relative_to(b) or b.is_relative_to(a):
        raise RepositoryError(f'{folder} and {flag} {place} overlap: replacing the destination would delete the '
                              f'files being published. Keep the exported folder outside {place}.')


def _entry(repo: Repository, weights_sha256: str) -> dict:
    """What the history keeps of a release that was replaced: which run, its numbers, which bytes, and the epochs
    behind them (a staged release's stages together, as the release table counts them)."""
    r = repo.results
    return dict(run_id=r.run_id, test_top1=r.test_top1, test_top5=r.test_top5, val_top1=r.val_top1,
                epochs=totals(r)[0],
                hardware=r.hardware, precision=r.precision['train'], git_commit=r.git_commit,
                weights_sha256=weights_sha256, replaced_on=time.strftime('%Y-%m-%d'))


def _published(target: Path, repo_id: str, replace: bool) -> Optional[Repository]:
    """The repository already at the destination, or None; a destination push cannot read is never replaced
    silently."""
    if not target.exists() or not any(p.name != '.git' for p in target.iterdir()):
        return None
    try:
        return read_repository(target, allow_repeated_args=True)  # what it publishes is replaced, not served
    except RepositoryError as e:
        if replace:
            return None
        raise RepositoryError(f'{target} already holds something that is not a readable repository ({e}); '
                              f'nothing was changed. Check it, then pass --replace to replace it as {repo_id}.') \
            from None


def planned_files(repo: Repository, target: Path, repo_id: str, replace: bool) -> Dict[str, Union[Path, str]]:
    """What the destination holds after the push: the folder's files, the history of what it replaced and,
    on the card, that history.

    The weights behind a published name never change by accident: a destination holding other weights is
    refused unless `replace`, which adds the replaced release (run id, numbers, weights hash) to the history.
    """
    files: Dict[str, Union[Path, str]] = {str(p.relative_to(repo.folder)): p for p in repo.files()}
    files.pop(HISTORY, None)
    old = _published(target, repo_id, replace)
    history = read_history(target) if old is not None else []
    old_sha256 = file_sha256(old.folder / WEIGHTS) if old is not None else None
    if old is not None and old_sha256 != file_sha256(repo.folder / WEIGHTS):
        if not replace:
            o, n = old.results, repo.results
            raise RepositoryError(
                f'{target} already publishes other weights as {repo_id} (run {o.run_id}, test top-1 '
                f'{o.test_top1:.2f}); {repo.folder} holds run {n.run_id}, test top-1 {n.test_top1:.2f}. Nothing was '
                'changed: a published name keeps its weights. Pass --replace to replace them on purpose (the old '
                'release is kept in its history), or push under another name.')
        history = history + [_entry(old, old_sha256)]
    files[HISTORY] = json.dumps(history, indent=2) + '\n'
    if CARD in files:  # a record of these very weights (a new card for them) stays on the card
        files[CARD] = with_remeasured(with_history(Path(files[CARD]).read_text(), history),
                                      remeasured_entry(target.parents[1], repo_id, repo))
    return files


def _same(files: Dict[str, Union[Path, str]], target: Path) -> bool:
    """Whether `target` (its git metadata aside) holds exactly `files`."""
    held = {str(p.relative_to(target)) for p in target.rglob('*') if p.is_file() and '.git' not in
            p.relative_to(target).parts}
    if held != set(files):
        return False
    for name, source in files.items():
        dest = target / name
        if isinstance(source, Path):
            if not filecmp.cmp(source, dest, shallow=False):
                return False
        elif dest.read_text() != source:
            return False
    return True


def _write(files: Dict[str, Union[Path, str]], target: Path) -> None:
    """Lay `files` out under `target`, copies."""
    for name, source in files.items():
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not isinstance(source, Path):
            dest.write_text(source)
            continue
        shutil.copy2(source, dest)


def push_to_releases(repo: Repository, repo_id: str, releases: Path, replace: bool = False) -> bool:
    """Write the folder to RELEASES/ORG/NAME in one step, holding the name for the whole check-and-write (see
    `ReleaseSlot`); False when it already held exactly that."""
    target = releases / repo_id
    if target.resolve() == repo.folder.resolve():
        return False  # already in place
    _refuse_nesting(repo.folder, target, '--releases')
    if target.is_symlink():  # replacing it would swap the link for a folder and leave what it pointed to
        raise RepositoryError(f'{target} is a symbolic link (to {os.readlink(target)}); a release is a folder of its '
                              'own. Replace the link with the folder it points to, then push again.')
    slot = ReleaseSlot(target)
    with slot.lock() as recovered:
        for line in recovered:
            print(f'note: {line}', file=sys.stderr)
        files = planned_files(repo, target, repo_id, replace)
        if target.is_dir() and _same(files, target):
            return False
        staging = slot.staging()
        try:
            _write(files, staging)
            os.chmod(staging, 0o777 & ~current_umask())
            slot.install(staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return True


def push_to_hub(repo: Repository, repo_id: str, private: bool = False) -> str:
    token = get_token()
    if not token:
        raise RepositoryError('no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again '
                              '(or use --releases DIR for a releases folder that `python -m hub serve DIR` serves).')
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(repo.folder), repo_id=repo_id, repo_type='model',
                               allow_patterns=[str(p.relative_to(repo.folder)) for p in repo.files()],
                               commit_message='Upload from timm-spa')
    return commit.commit_url


def publish(folder: str, repo_id: Optional[str] = None, *, dry_run: bool = False, private: bool = False,
            releases: Optional[str] = None, replace: bool = False) -> dict:
    """Check the folder, then upload it (or with `dry_run`, list what would be uploaded).

    `repo_id` defaults to the `hf_hub_id` its config was exported for. `replace` lets a releases destination
    that publishes other weights under the name take these.
    """
    repo = read_repository(Path(folder))
    repo_id = check_repo_id(repo_id or repo.config.get('pretrained_cfg', {}).get('hf_hub_id') or '')
    check_matches_tag(repo, repo_id)
    check_config(repo)
    left_out = repo.left_out()
    if left_out:
        print(f'note: not published (a push publishes the files hub export writes, and history.json): '
              f'{", ".join(left_out[:8])}{" ..." if len(left_out) > 8 else ""}', file=sys.stderr)
    named = machine_paths(repo.results.to_dict())
    if named:
        raise RepositoryError(f'{repo.folder / RESULTS} names paths of the machine that trained it '
                              f'({", ".join(named)}): write it anew with `python -m hub export {folder} --output '
                              'NEW_FOLDER` (the same weights and numbers, those paths named from ~ or the checkout), '
                              'then push that.')
    destination = str(Path(releases) / repo_id) if releases else f'https://huggingface.co/{repo_id}'
    project = releases is not None and Path(releases).resolve() == PROJECT_RELEASES
    name = tagged_name(repo_id) if project and repo_id.split('/')[0] == HF_HUB_ORG else None
    new_name = name if name not in RELEASED else None
    summary = dict(repo_id=repo_id, destination=destination, new_name=new_name,
                   files=[str(p.relative_to(repo.folder)) for p in repo.files()])
    if dry_run:
        print(f'would upload to {destination}:')
        for path in repo.files():
            print(f'  {path.relative_to(repo.folder)}  ({path.stat().st_size:,} bytes)')
        return summary
    if releases:
        check_against_remeasured(Path(releases), repo_id, repo)
        changed = push_to_releases(repo, repo_id, Path(releases), replace)
    else:
        changed = True
        summary['commit_url'] = push_to_hub(repo, repo_id, private)
    summary['changed'] = changed
    if not changed:
        print(f'{destination} already holds exactly this; nothing to publish.')
        return summary
    print(f'published {repo_id} to {destination}')
    if new_name:
        print(f"next: add '{new_name}' to RELEASED in timm_spa/models/published.py, so that timm lists it and "
              "pretrained=True loads it (tests/test_releases.py holds RELEASED equal to releases/'s folders)")
    if releases and needs_remeasure(Path(releases), repo_id, repo):
        print(f'next: python -m hub remeasure {releases} --data {repo.results.dataset.name}=DIR (the whole test '
              'split, recorded; CI refuses a release without it)')
    return summary
