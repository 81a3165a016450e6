"""A Hub repository folder: what `hub export` writes, `hub push` uploads, `hub serve` serves and
`releases/<org>/<arch>.<tag>/` holds. This module owns its layout and the checks that its parts
belong together, so that a published number always belongs to the published weights.
"""
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from timm.models._hub import save_config_for_hf  # not re-exported by timm.models, unlike save_for_hf

from timm_spa.models import MODEL_NAMES, PRETRAINED_TAGS, hub_repo_id
from train.checkpoint import CheckpointError, weights_metadata
from train.run_dir import CURVES, REPO_CONFIG, REPO_WEIGHTS, RESULTS, Results, RunDir, RunError, comparable

WEIGHTS = REPO_WEIGHTS
CONFIG = REPO_CONFIG
CARD = 'README.md'
SEEDS = 'seeds.json'  # with `hub export --seeds`: the spread over the seeds of the run's recipe, on the card too
REPO_FILES = (WEIGHTS, CONFIG, CARD, RESULTS, CURVES, SEEDS)  # what `hub export` writes (seeds.json if asked)
# what a push adds: the releases this one replaced, oldest first (`[]` for a first release). Export never
# writes it, so `hub export --overwrite` refuses a published folder instead of replacing it behind push's back
HISTORY = 'history.json'
PUBLISHED_FILES = (*REPO_FILES, HISTORY)
CHECK_IMAGES = 1000  # at most this many test images in CI's fixed subset of a release's test split, every k-th
# what timm 1.0.31's save_config_for_hf adds to model_args: transformers' TimmWrapper passes num_classes beside
# model_args, and fails on the repeat (`hub export` leaves them out)
TIMM_RECORDED_ARGS = ('num_classes', 'in_chans', 'global_pool')


class RepositoryError(ValueError):
    """A repository folder, or a repository id, that cannot be published as it is."""


@dataclass
class Repository:
    folder: Path
    results: Results
    config: Dict[str, Any]

    @property
    def name(self) -> str:
        """`arch.tag` of the weights (the tag is the data set for runs off the pretrained tags)."""
        return self.results.hub_name

    def files(self) -> List[Path]:
        """What is published: the files export writes and the release history, never a symbolic link (it would
        publish whatever it points to, anywhere on the machine)."""
        found = [self.folder / name for name in PUBLISHED_FILES if (self.folder / name).is_file()]
        linked = [path.name for path in found if path.is_symlink()]
        if linked:
            raise RepositoryError(f'{self.folder} holds {", ".join(linked)} as symbolic links: a push publishes files, '
                                  'never what a link points to. Put the files themselves there.')
        return found

    def left_out(self) -> List[str]:
        """Everything else in the folder (its git metadata aside), which no push publishes: said, not copied."""
        kept = {self.folder / name for name in PUBLISHED_FILES}
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob('*')
                      if (p.is_file() or p.is_symlink()) and p not in kept
                      and '.git' not in p.relative_to(self.folder).parts)


def check_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise RepositoryError(f'invalid --repo-id {repo_id!r}: {e}') from None
    if repo_id.count('/') != 1:
        raise RepositoryError(
            f"invalid --repo-id {repo_id!r}: use ORG/NAME, e.g. {hub_repo_id('resnet18_spa.cifar10')}.")
    return repo_id


def tagged_name(repo_id: str) -> Optional[str]:
    """`arch.tag` when the repository's name claims one of our pretrained tags, else None."""
    name = repo_id.split('/', 1)[-1]
    arch, _, tag = name.partition('.')
    return name if arch in MODEL_NAMES and tag in PRETRAINED_TAGS else None


def read_repository(folder: Path, allow_repeated_args: bool = False) -> Repository:
    """The folder's results and config, after checking that they and the weights belong together.

    `allow_repeated_args`: for a folder whose config is about to be written anew (`hub export` of a repository, the
    destination a push replaces), the arguments timm 1.0.31 repeats in model_args are let through (and left out
    of the comparison with the weights' architecture)."""
    folder = Path(folder)
    missing = [name for name in (WEIGHTS, CONFIG, RESULTS) if not (folder / name).is_file()]
    if missing:
        raise RepositoryError(f'{folder} is not an exported repository (no {", ".join(missing)}); run '
                              '`python -m hub export RUN_DIR --output FOLDER` first.')
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RepositoryError(f'{folder / CONFIG} is not valid JSON ({e}).') from None
    try:
        results = RunDir(folder).read_results()
        meta = weights_metadata(folder / WEIGHTS)
    except (RunError, CheckpointError) as e:
        raise RepositoryError(str(e)) from None
    arch = results.model_args
    if meta.get('run_id') != results.run_id:
        raise RepositoryError(f'{folder / WEIGHTS} (run {meta.get("run_id")}) and {RESULTS} (run {results.run_id}) '
                              'come from different runs: export the run again.')
    kwargs = config.get('model_args', {})
    if not isinstance(kwargs, dict):
        raise RepositoryError(f'{folder / CONFIG}: model_args must be a JSON object of model arguments, not '
                              f'{type(kwargs).__name__}; export it again.')
    repeated = [k for k in TIMM_RECORDED_ARGS if k in kwargs and k not in arch['model_kwargs']]
    if allow_repeated_args:
        kwargs = {k: v for k, v in kwargs.items() if k not in repeated}
    elif repeated:
        raise RepositoryError(f'{folder / CONFIG} repeats {", ".join(repeated)} in model_args (timm 1.0.31 writes them '
                              "there): transformers' pipeline and AutoModel cannot load it. Write it anew with "
                              f'`python -m hub export {folder} --output NEW_FOLDER`.')
    built = dict(model=config.get('architecture'), num_classes=config.get('num_classes'), model_kwargs=kwargs)
    if comparable(built) != comparable(arch):
        raise RepositoryError(f'{folder / CONFIG} builds {built}, but the weights were trained as {arch}: '
                              'export the run again.')
    return Repository(folder, results, config)


def read_history(folder: Path) -> List[dict]:
    """The releases a published folder replaced, oldest first (empty for a first release)."""
    path = folder / HISTORY
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RepositoryError(f'{path} cannot be read ({e}); restore it from version control.') from None
    if not isinstance(history, list) or not all(isinstance(e, dict) and 'run_id' in e for e in history):
        raise RepositoryError(f'{path} is not a release history (a JSON list of replaced releases); restore it '
                              'from version control.')
    return history


def check_matches_tag(repo: Repository, repo_id: str) -> None:
    """A repository named `arch.tag` must hold that architecture as registered (no model arguments), trained on that
    tag's data set with its class count and input size: `pretrained=True` on the tag will load it as exactly that.
    Other weights go under another name, loaded through `hf-hub:` with their config's arguments."""
    name = tagged_name(repo_id)
    if name is None:
        return
    arch, tag = name.split('.', 1)
    cfg = timm.models.get_pretrained_cfg(name)
    data = repo.results.dataset
    wanted = dict(model=arch, dataset=tag, num_classes=cfg.num_classes, input_size=cfg.input_size[-1])
    held = dict(model=repo.results.model, dataset=data.name, num_classes=repo.results.model_args['num_classes'],
                input_size=data.image_size)
    diffs = [f'{key} {held[key]!r} (the tag needs {wanted[key]!r})' for key in wanted if held[key] != wanted[key]]
    kwargs = repo.results.model_args['model_kwargs']
    if kwargs:  # the tag's name rebuilds the registered architecture: k=8 weights would load into a k=2 model
        diffs.append(f'model arguments {kwargs} (the tag builds {arch} as registered, with none)')
    if repo.results.tag != tag and not diffs:
        diffs.append(f'tag {repo.results.tag!r} (the tag needs {tag!r})')
    if diffs:
        raise RepositoryError(f'{repo.folder} cannot be published as {repo_id}: it holds {"; ".join(diffs)}. '
                              f'`timm.create_model("{name}", pretrained=True)` would load it as {name}; push it '
                              f'under a name that says what it is, e.g. ORG/{repo.name}.')


def write_config(model, path: Path, results: Results, repo_id: str) -> None:
    """timm's config.json for `model`, with `model_args` holding only the arguments the model was built with
    beyond its name and class count, as timm wrote it before 1.0.31: timm 1.0.31's `save_config_for_hf` also
    records num_classes, in_chans and global_pool there, and transformers' TimmWrapper, which passes its
    num_labels as num_classes beside model_args, then fails on the repeated argument."""
    data, size = results.dataset, results.dataset.image_size
    pool = -(-size // model.feature_info[-1]['reduction'])  # the last feature map's side at this input size
    save_config_for_hf(
        model, str(path),
        model_config=dict(
            label_names=data.class_names,
            pretrained_cfg=dict(mean=tuple(data.mean), std=tuple(data.std), input_size=(3, size, size),
                                crop_pct=1.0, pool_size=(pool, pool), hf_hub_id=repo_id,
                                tag=results.hub_tag)))
    config = json.loads(path.read_text())
    config.pop('model_args', None)
    model_args = results.model_args['model_kwargs']
    if model_args:  # before pretrained_cfg, where timm puts it
        config = dict(**{k: v for k, v in config.items() if k != 'pretrained_cfg'}, model_args=model_args,
                      pretrained_cfg=config['pretrained_cfg'])
    path.write_text(json.dumps(config, indent=2))


def config_differences(repo: Repository) -> List[str]:
    """Where the folder's config.json differs from the one export writes from its results: the label names, the
    preprocessing (mean, std, input size, interpolation, crop) and everything else a user's timm, transformers or
    huggingface_hub reads from it. Empty for a config as exported; only `hf_hub_id` may name another repository."""
    arch, results = repo.results.model_args, repo.results
    name = f"{arch['model']}.{results.tag}" if results.tag else arch['model']
    model = timm.create_model(name, num_classes=arch['num_classes'], **arch['model_kwargs'])
    with tempfile.TemporaryDirectory() as tmp:
        write_config(model, Path(tmp) / CONFIG, results, repo.config.get('pretrained_cfg', {}).get('hf_hub_id'))
        expected = json.loads((Path(tmp) / CONFIG).read_text())

    def flat(config: Any, prefix: str = '') -> Dict[str, Any]:
        if not isinstance(config, dict):
            return {prefix: config}
        return {key: value for k, v in config.items() for key, value in flat(v, f'{prefix}{k}.').items()} or \
            {prefix: config}

    have, want = flat(repo.config), flat(expected)
    return sorted(key.rstrip('.') for key in have.keys() | want.keys()
                  if json.dumps(have.get(key)) != json.dumps(want.get(key)))


def check_config(repo: Repository) -> None:
    """Refuse a config.json that is not the one export writes from the folder's results (`config_differences`)."""
    differ = config_differences(repo)
    if differ:
        raise RepositoryError(f'{repo.folder / CONFIG} is not the config its results give ({", ".join(differ[:6])}'
                              f'{" ..." if len(differ) > 6 else ""} differ): users would get other labels or '
                              f'preprocessing than were measured. Write it anew with `python -m hub export '
                              f'{repo.folder} --output NEW_FOLDER` and publish that.')
