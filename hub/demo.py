"""The main job's last step: export a run, publish it into a local mirror, serve the mirror, reload the
model with `pretrained=True` over HTTP and check that it scores what its model card says.

    python -m hub.demo RUN_DIR
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

from .export import default_repo_id, export_run, read_results
from .mirror import MirrorServer
from .push import publish


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('run_dir')
    args = parser.parse_args(argv)
    run = Path(args.run_dir)
    results = read_results(run)
    repo_id = default_repo_id(results)
    folder = export_run(str(run), str(run / 'hub-repo'), repo_id, overwrite=True)
    mirror = run / 'hub-mirror'
    record = run / 'published.json'  # the demo's own record, not the package's
    env = dict(os.environ, HF_HOME=str(run / 'hf-cache'), HF_HUB_DISABLE_TELEMETRY='1',
               TIMM_SPA_PUBLISHED_RECORD=str(record))
    publish(str(folder), repo_id, mirror=str(mirror), record=record)
    trained = results['args']
    with MirrorServer(mirror, run / 'olah') as server:
        # a fresh interpreter: huggingface_hub reads HF_ENDPOINT and HF_HOME when it is imported
        command = [sys.executable, '-m', 'train.validate', '--model', f'hf-hub:{repo_id}', '--pretrained',
                   '--dataset', trained['dataset'], '--split', 'test', '--output-json', str(run / 'reloaded.json'),
                   '--val-size', str(results['dataset']['val_images']), '--val-split-seed',
                   str(trained['val_split_seed'])]
        for flag, key in (('--data-dir', 'data_dir'), ('--img-size', 'img_size')):
            if trained.get(key):
                command += [flag, str(trained[key])]
        subprocess.run(command, env=dict(env, HF_ENDPOINT=server.endpoint), check=True,
                       cwd=Path(__file__).resolve().parent.parent)
    report = json.loads((run / 'reloaded.json').read_text())
    card = json.loads((folder / 'results.json').read_text())
    print(f"\n| {repo_id} | test top-1 | test top-5 |\n|---|---:|---:|\n"
          f"| model card (results.json) | {card['test_top1']:.2f} | {card['test_top5']:.2f} |\n"
          f"| reloaded with pretrained=True from {server.endpoint} | {report['top1']:.2f} | {report['top5']:.2f} |")
    if (report['top1'], report['top5']) != (card['test_top1'], card['test_top5']):
        sys.exit('error: the reloaded model does not reproduce the model card.')
    print(f'equal. Hub repository folder: {folder}; mirror: {mirror}')
    return report


if __name__ == '__main__':
    main()
