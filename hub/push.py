"""Publish an exported folder: to the Hugging Face Hub, or as a git repository into a local mirror.

A local mirror (`--mirror PATH`) is laid out as `PATH/models/ORG/NAME`, branch `main`: what olah
serves over the Hub's HTTP API, for air-gapped sites and for this project's tests. Publishing under
the project's organisation records the `arch.tag` name as published (timm_spa/models/published.py),
so `timm.create_model("arch.tag", pretrained=True)` finds it.
"""
import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from timm_spa.models import MODEL_NAMES, PRETRAINED_TAGS, hub_repo_id
from timm_spa.models.published import record_published

from .export import ExportError


def check_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ExportError(f'invalid --repo-id {repo_id!r}: {e}') from None
    if repo_id.count('/') != 1:
        raise ExportError(f"invalid --repo-id {repo_id!r}: use ORG/NAME, e.g. {hub_repo_id('resnet18_spa.cifar10')}.")
    return repo_id


def repo_files(folder: Path) -> List[Path]:
    if not (folder / 'model.safetensors').is_file() or not (folder / 'config.json').is_file():
        raise ExportError(f'{folder} is not an exported repository (no model.safetensors and config.json); '
                          'run `python -m hub export RUN_DIR --output FOLDER` first.')
    return sorted(p for p in folder.rglob('*') if p.is_file() and '.git' not in p.parts)


def _git(cwd: Path, *args: str) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME='timm-spa', GIT_AUTHOR_EMAIL='timm-spa@localhost',
               GIT_COMMITTER_NAME='timm-spa', GIT_COMMITTER_EMAIL='timm-spa@localhost')
    subprocess.run(['git', *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)


def push_to_mirror(folder: Path, repo_id: str, mirror: Path) -> Path:
    """Commit the folder's files as the new state of branch `main` of PATH/models/ORG/NAME."""
    target = mirror / 'models' / repo_id
    if not (target / '.git').is_dir():
        target.mkdir(parents=True, exist_ok=True)
        _git(target, 'init', '-q', '-b', 'main')
    for entry in target.iterdir():  # the new commit holds exactly the exported files
        if entry.name != '.git':
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for path in repo_files(folder):
        dest = target / path.relative_to(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    _git(target, 'add', '-A')
    _git(target, 'commit', '-q', '--allow-empty', '-m', f'Upload {repo_id} from timm-spa')
    return target


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    token = get_token()
    if not token:
        raise ExportError('no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again '
                          '(or use --mirror PATH for a local mirror).')
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type='model',
                               commit_message='Upload from timm-spa')
    return commit.commit_url


def published_name(repo_id: str) -> Optional[str]:
    """The `arch.tag` a repository publishes, if it is where the library looks for that name."""
    name = repo_id.split('/', 1)[1]
    arch, _, tag = name.partition('.')
    if arch in MODEL_NAMES and tag in PRETRAINED_TAGS and hub_repo_id(name) == repo_id:
        return name
    return None


def publish(folder: str, repo_id: str, dry_run: bool = False, mirror: Optional[str] = None,
            private: bool = False, record: Optional[Path] = None) -> dict:
    """Upload (or with `dry_run`, list) the folder; `record` overrides the published record's path."""
    folder_path = Path(folder)
    check_repo_id(repo_id)
    files = repo_files(folder_path)
    name = published_name(repo_id)
    destination = str(Path(mirror) / 'models' / repo_id) if mirror else f'https://huggingface.co/{repo_id}'
    summary = dict(repo_id=repo_id, destination=destination, files=[str(p.relative_to(folder_path)) for p in files],
                   records=name)
    if dry_run:
        print(f'would upload to {destination}:')
        for path in files:
            print(f'  {path.relative_to(folder_path)}  ({path.stat().st_size:,} bytes)')
        print(f'would record {name} as published' if name else 'would not change the published record '
              f'(not a {hub_repo_id("ARCH.TAG")} repository)')
        return summary
    if mirror:
        push_to_mirror(folder_path, repo_id, Path(mirror))
    else:
        summary['commit_url'] = push_to_hub(folder_path, repo_id, private)
    if name:
        summary['record'] = str(record_published(name, record))
    print(f'published {repo_id} to {destination}' + (f'; recorded {name} in {summary["record"]}' if name else ''))
    return summary
