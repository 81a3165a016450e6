"""python -m hub export RUN_DIR --output DIR
| push DIR [--repo-id ORG/NAME] [--releases DIR] [--replace]
| serve RELEASES_DIR [--port N] | table RELEASES_DIR | remeasure RELEASES_DIR --data NAME=DIR [--check]"""
import argparse
from pathlib import Path
from typing import List, Optional

from train.cli import UsageError, add_debug_flag, interrupt_on_termination, run_cli

from .export import export_run
from .push import publish
from .releases import (
    check_remeasured,
    front_table,
    parse_data_dirs,
    release_table,
    released_repositories,
    remeasure,
)
from .serve import serve

PROG = 'python -m hub'


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    add_debug_flag(parser)
    commands = parser.add_subparsers(dest='command', required=True)
    export = commands.add_parser('export', help='turn a finished training run into a Hub repository folder')
    export.add_argument('run_dir')
    export.add_argument('--output', required=True, help='the repository folder to write (outside the run)')
    export.add_argument('--repo-id', default=None, help='ORG/NAME it will live at (default: the project org)')
    export.add_argument('--overwrite', action='store_true', help='replace an exported repository at --output')
    export.add_argument('--seeds', default=None, metavar='FOLDER',
                        help="run records of this run's recipe with other seeds (and its baseline's): their spread "
                             'goes on the card and into seeds.json')
    push = commands.add_parser('push', help='upload an exported folder to the Hub or into a releases folder')
    push.add_argument('folder')
    push.add_argument('--repo-id', default=None, help='ORG/NAME (default: the id it was exported for)')
    push.add_argument('--dry-run', action='store_true', help='list what would be uploaded, upload nothing')
    push.add_argument('--releases', default=None,
                      help="copy into DIR/ORG/NAME (a new name in the project's releases/: add it to RELEASED)")
    push.add_argument('--replace', action='store_true',
                      help='let --releases replace the weights published under this name (the replaced '
                           'release is kept in its history.json and on its card)')
    push.add_argument('--private', action='store_true')
    serve_cmd = commands.add_parser('serve', help='serve every repository of a releases folder over the Hub API')
    serve_cmd.add_argument('releases', help='a folder of ORG/NAME repositories, e.g. releases/')
    serve_cmd.add_argument('--port', type=int, default=None, help='default: a free port')
    table = commands.add_parser('table', help='print the table of the released weights (docs/releases.md)')
    table.add_argument('releases')
    table.add_argument('--short', action='store_true', help="the README's short table, each row linking its card")
    measure = commands.add_parser(
        'remeasure', help='measure every release on its whole test split and record it in RELEASES_DIR/remeasured.json'
                          '; with --check, measure the fixed subset CI checks and compare it with that record')
    measure.add_argument('releases')
    measure.add_argument('--data', action='append', default=[], metavar='NAME=DIR',
                         help='where a data set of the releases is, e.g. cifar10=../shared/data/cifar10-jpeg '
                              '(repeat for each data set)')
    measure.add_argument('--check', action='store_true',
                         help="CI's check: only the recorded subset (every k-th test image), compared with the "
                              'record (left unchanged)')
    args = parser.parse_args(argv)

    def body():
        if args.command == 'export':
            out = export_run(args.run_dir, args.output, args.repo_id, args.overwrite, seeds=args.seeds)
            print(f'exported {args.run_dir} to {out}')
            return out
        if args.command == 'push':
            if args.replace and not args.releases:
                raise UsageError('--replace applies to --releases; a Hub repository keeps every earlier '
                                 'commit in its own history. Drop --replace.')
            return publish(args.folder, args.repo_id, dry_run=args.dry_run, private=args.private,
                           releases=args.releases, replace=args.replace)
        if args.command == 'remeasure':
            data_dirs = parse_data_dirs(args.data)
            return (check_remeasured if args.check else remeasure)(Path(args.releases), data_dirs)
        if args.command == 'table':
            text = (front_table if args.short else release_table)(released_repositories(Path(args.releases)))
            print(text)
            return text
        if args.port is not None and not 1 <= args.port <= 65535:
            raise UsageError(f'--port {args.port} is not a TCP port (1-65535); leave it out for a free one.')
        return serve(args.releases, args.port)

    if args.command == 'serve':  # it stops on every signal itself, and says so
        return run_cli(PROG, body, args.debug)
    with interrupt_on_termination():  # SIGTERM and SIGHUP end a push as Ctrl-C does: its staging folder removed
        return run_cli(PROG, body, args.debug)


if __name__ == '__main__':
    main()
