"""python -m hub export RUN_DIR --output DIR | python -m hub push DIR --repo-id ORG/NAME [--mirror PATH]"""
import argparse
import sys
from typing import List, Optional

from train.checkpoint import CheckpointError

from .export import ExportError, export_run
from .push import publish


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m hub', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)
    export = commands.add_parser('export', help='turn a finished training run into a Hub repository folder')
    export.add_argument('run_dir')
    export.add_argument('--output', required=True, help='the repository folder to write')
    export.add_argument('--repo-id', default=None, help='ORG/NAME it will live at (default: the project org)')
    export.add_argument('--overwrite', action='store_true')
    push = commands.add_parser('push', help='upload an exported folder to the Hub or a local mirror')
    push.add_argument('folder')
    push.add_argument('--repo-id', required=True)
    push.add_argument('--dry-run', action='store_true', help='list what would be uploaded, upload nothing')
    push.add_argument('--mirror', default=None, help='commit into PATH/models/ORG/NAME (olah layout) instead')
    push.add_argument('--private', action='store_true')
    args = parser.parse_args(argv)
    try:
        if args.command == 'export':
            out = export_run(args.run_dir, args.output, args.repo_id, args.overwrite)
            print(f'exported {args.run_dir} to {out}')
        else:
            publish(args.folder, args.repo_id, args.dry_run, args.mirror, args.private)
    except (ExportError, CheckpointError) as e:
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    main()
