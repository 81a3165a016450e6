"""The main job's last steps (`bash scripts/demo.sh`), offline, on loopback servers:

1. publish the demo's own run: export it, serve it over the Hub's HTTP API (`hub.serve`), reload the
   model with `pretrained=True` in a fresh interpreter and check that it scores exactly what its model card
   says;
2. serve the released weights (`releases/`), load `resnet18_spa` with `pretrained=True` through that
   server, classify the demo images (real CIFAR-10 test images kept in docs/demo-images/) and draw
   what its SPA block attends to.

    python -m hub.demo all RUN_DIR --workdir DIR

Step 2's interpreter starts first and classifies while step 1 runs (two interpreters on two cores: each
pays ~8 s of `import timm` on a slow CPU); its lines are printed after step 1's.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

from timm_spa.models import PretrainedWeightsUnavailable, WeightsDownloadError
from train.cli import add_debug_flag, run_cli
from train.report import CHECKOUT
from train.run_dir import RunDir
from visualize.figure import Request, draw_attention

from .export import default_repo_id, export_run
from .releases import released_repositories
from .repository import read_repository
from .serve import HubServer, by_layout

RELEASES = CHECKOUT / 'releases'
DEMO_IMAGES = CHECKOUT / 'docs' / 'demo-images'
DEMO_MODEL = 'resnet18_spa'


def _env(workdir: Path, endpoint: str) -> dict:
    # a fresh interpreter: huggingface_hub reads HF_ENDPOINT and HF_HOME when it is imported
    env = dict(os.environ, HF_HOME=str(workdir / 'hf-cache'), HF_HUB_DISABLE_TELEMETRY='1', HF_ENDPOINT=endpoint)
    env.pop('HF_HUB_OFFLINE', None)
    return env


def publish_and_reload(run_dir: str, workdir: Path) -> dict:
    """Step 1: the run as a Hub repository, served, reloaded, and its test numbers checked against the card."""
    finished = RunDir(run_dir).read_finished()
    repo_id = default_repo_id(finished.results)
    folder = export_run(run_dir, str(workdir / 'hub-repo'), repo_id, overwrite=True)
    trained, data = finished.results.args, finished.results.dataset
    with HubServer({repo_id: read_repository(folder)}) as server:
        command = [sys.executable, '-m', 'train.validate', '--model', f'hf-hub:{repo_id}', '--pretrained',
                   '--dataset', data.name, '--split', 'test', '--output-json', str(workdir / 'reloaded.json'),
                   '--val-size', str(data.val_images), '--val-split-seed', str(data.val_split_seed),
                   '--img-size', str(data.image_size)]
        if trained.get('data_dir'):
            command += ['--data-dir', str(trained['data_dir'])]
        subprocess.run(command, env=_env(workdir, server.endpoint), check=True, cwd=CHECKOUT)
    report = json.loads((workdir / 'reloaded.json').read_text())
    card = finished.results
    print(f"\n| {repo_id} | test top-1 | test top-5 |\n|---|---:|---:|\n"
          f"| model card (results.json) | {card.test_top1:.2f} | {card.test_top5:.2f} |\n"
          f"| reloaded with pretrained=True from {server.endpoint} | {report['top1']:.2f} | {report['top5']:.2f} |")
    if (report['top1'], report['top5']) != (card.test_top1, card.test_top5):
        sys.exit('error: the reloaded model does not reproduce the model card.')
    print(f'equal. Hub repository folder: {folder}', flush=True)
    return report


def publish_and_release(run_dir: str, workdir: Path) -> None:
    """Both steps: step 2 (the released weights over a local Hub, classifying real CIFAR-10 test images) in a
    child interpreter started first, step 1 (`publish_and_reload`) here meanwhile; the child's lines are
    printed after those of step 1."""
    repos = by_layout(released_repositories(RELEASES))
    images = [str(p) for p in sorted(DEMO_IMAGES.glob('*.png'))]
    command = [sys.executable, '-m', 'hub.demo', 'classify', '--output', str(workdir / 'release-attention.png'),
               *images]
    with HubServer(repos) as server:
        with tempfile.TemporaryFile('w+') as lines:
            child = subprocess.Popen(command, env=_env(workdir, server.endpoint), stdout=lines,
                                     stderr=subprocess.STDOUT, cwd=CHECKOUT, text=True)
            try:
                publish_and_reload(run_dir, workdir)
            except BaseException:
                child.kill()
                child.wait()
                raise
            child.wait()
            lines.seek(0)
            print(f'\nserving {len(repos)} released repositories from {RELEASES} at {server.endpoint}', flush=True)
            print(lines.read(), end='', flush=True)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command)


def classify(images: List[str], output: str) -> List[dict]:
    """Load the released model with pretrained=True (through HF_ENDPOINT), print each image's prediction
    beside its true class (the file name's prefix), and draw the attention figure."""
    model = timm.create_model(DEMO_MODEL, pretrained=True).eval()
    names = model.pretrained_cfg.get('label_names') or [str(i) for i in range(model.num_classes)]
    transform = create_transform(**resolve_model_data_config(model), is_training=False)
    batch = torch.stack([transform(Image.open(path).convert('RGB')) for path in images])
    with torch.no_grad():
        probs = model(batch).softmax(dim=-1)
    rows = []
    print(f"\n`timm.create_model('{DEMO_MODEL}', pretrained=True)` ({model.pretrained_cfg['hf_hub_id']}) on real "
          'CIFAR-10 test images:\n\n| image | true class | predicted | probability | |\n|---|---|---|---:|---|')
    for path, p in zip(images, probs, strict=True):
        truth = Path(path).name.split('_')[0]
        predicted = names[int(p.argmax())]
        rows.append(dict(image=Path(path).name, truth=truth, predicted=predicted, probability=float(p.max())))
        print(f"| {Path(path).name} | {truth} | {predicted} | {float(p.max()):.3f} | "
              f"{'right' if predicted == truth else 'wrong'} |")
    print(f"\n{sum(r['truth'] == r['predicted'] for r in rows)} of {len(rows)} right.", flush=True)
    draw_attention(Request(model=DEMO_MODEL, pretrained=True, images=images, output=output))
    print(f'attention figure: {output}', flush=True)
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m hub.demo', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest='step', required=True)
    step = steps.add_parser('all', help='step 1 (publish the demo run, reload it, check it against its card) '
                                        'and step 2 (serve releases/, classify the demo images) at once')
    step.add_argument('run_dir')
    step.add_argument('--workdir', required=True)
    step = steps.add_parser('classify', help="(run under HF_ENDPOINT) classify images with the released model")
    step.add_argument('images', nargs='+')
    step.add_argument('--output', required=True)
    add_debug_flag(parser)
    args = parser.parse_args(argv)

    def body():
        if args.step == 'all':
            publish_and_release(args.run_dir, Path(args.workdir))
        else:
            classify(args.images, args.output)

    run_cli('python -m hub.demo', body, args.debug,
            (PretrainedWeightsUnavailable, WeightsDownloadError, subprocess.CalledProcessError))


if __name__ == '__main__':
    main()
