"""Publish an exported folder: to the Hugging Face Hub, as a git repository into a local mirror, or into
the project's `releases/` folder.

A local mirror (`--mirror PATH`) is laid out as `PATH/models/ORG/NAME`, branch `main`: what olah
serves over the Hub's HTTP API, for air-gapped sites and for this project's tests. `--releases DIR`
copies the folder to `DIR/ORG/NAME` and, for the project's organisation, adds `arch.tag` to the
record of released weights in the source tree (`timm_spa/models/published.json`). Every way checks
the folder first: its files belong together, and a repository named `arch.tag` holds exactly that.
"""
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from huggingface_hub import HfApi, get_token

from timm_spa.models import HF_HUB_ORG
from timm_spa.models.published import record_published

from .repository import Repository, RepositoryError, check_matches_tag, check_repo_id, read_repository, tagged_name


def _git(cwd: Path, *args: str) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME='timm-spa', GIT_AUTHOR_EMAIL='timm-spa@localhost',
               GIT_COMMITTER_NAME='timm-spa', GIT_COMMITTER_EMAIL='timm-spa@localhost')
    subprocess.run(['git', *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)


def _refuse_nesting(folder: Path, place: Path, flag: str) -> None:
    a, b = folder.resolve(), place.resolve()
    if a.is_relative_to(b) or b.is_relative_to(a):
        raise RepositoryError(f'{folder} and {flag} {place} overlap: replacing the destination would delete the '
                              f'files being published. Keep the exported folder outside {place}.')


def push_to_mirror(repo: Repository, repo_id: str, mirror: Path) -> Path:
    """Commit the folder's files as the new state of branch `main` of PATH/models/ORG/NAME."""
    target = mirror / 'models' / repo_id
    _refuse_nesting(repo.folder, target, '--mirror')
    if not (target / '.git').is_dir():
        target.mkdir(parents=True, exist_ok=True)
        _git(target, 'init', '-q', '-b', 'main')
    for entry in target.iterdir():  # the new commit holds exactly the exported files
        if entry.name != '.git':
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for path in repo.files():
        dest = target / path.relative_to(repo.folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    _git(target, 'add', '-A')
    _git(target, 'commit', '-q', '--allow-empty', '-m', f'Upload {repo_id} from timm-spa')
    return target


def push_to_releases(repo: Repository, repo_id: str, releases: Path) -> Path:
    """Copy the folder to RELEASES/ORG/NAME (replacing an earlier release of that name)."""
    target = releases / repo_id
    if target.resolve() == repo.folder.resolve():
        return target  # already in place
    _refuse_nesting(repo.folder, target, '--releases')
    staging = target.with_name(f'.{target.name}.tmp')
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in repo.files():
        shutil.copy2(path, staging / path.relative_to(repo.folder))
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target


def push_to_hub(repo: Repository, repo_id: str, private: bool = False) -> str:
    token = get_token()
    if not token:
        raise RepositoryError('no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again '
                              '(or use --mirror PATH for a local mirror).')
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(repo.folder), repo_id=repo_id, repo_type='model',
                               commit_message='Upload from timm-spa')
    return commit.commit_url


def publish(folder: str, repo_id: Optional[str] = None, dry_run: bool = False, mirror: Optional[str] = None,
            private: bool = False, releases: Optional[str] = None, record: Optional[Path] = None) -> dict:
    """Check the folder, then upload it (or with `dry_run`, list what would be uploaded).

    `repo_id` defaults to the `hf_hub_id` its config was exported for. `record` overrides the
    released-weights record that `releases` updates (default: the one the library reads).
    """
    repo = read_repository(Path(folder))
    repo_id = check_repo_id(repo_id or repo.config.get('pretrained_cfg', {}).get('hf_hub_id') or '')
    check_matches_tag(repo, repo_id)
    if mirror and releases:
        raise RepositoryError('give --mirror or --releases, not both.')
    destination = str(Path(mirror) / 'models' / repo_id) if mirror else str(Path(releases) / repo_id) if releases \
        else f'https://huggingface.co/{repo_id}'
    name = tagged_name(repo_id) if releases and repo_id.split('/')[0] == HF_HUB_ORG else None
    summary = dict(repo_id=repo_id, destination=destination, records=name,
                   files=[str(p.relative_to(repo.folder)) for p in repo.files()])
    if dry_run:
        print(f'would upload to {destination}:')
        for path in repo.files():
            print(f'  {path.relative_to(repo.folder)}  ({path.stat().st_size:,} bytes)')
        if name:
            print(f'would record {name} as released')
        return summary
    if mirror:
        push_to_mirror(repo, repo_id, Path(mirror))
    elif releases:
        push_to_releases(repo, repo_id, Path(releases))
        if name:
            summary['record'] = str(record_published(name, record))
    else:
        summary['commit_url'] = push_to_hub(repo, repo_id, private)
    print(f'published {repo_id} to {destination}' + (f'; recorded {name} in {summary["record"]}' if name else ''))
    return summary
