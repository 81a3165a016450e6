"""How every command of the project ends on a user's mistake: one line naming the fix, no traceback.

Exit status 2 for a usage error (a bad flag or value, as argparse does), 1 for anything else the
user can fix (missing or corrupt data, a run that cannot be resumed or published, a diverged run),
128 + the signal's number for Ctrl-C (130), and for SIGTERM (143) and SIGHUP (129) where a command turns
them into `Interrupted` (with what to do next, where the command knows it). `--debug` shows the traceback
instead.
"""
import argparse
import contextlib
import difflib
import errno
import os
import re
import signal
import sys
import threading
import traceback
from typing import Any, Callable, Iterator, List, NoReturn, Optional, Sequence, Type

import timm
import torch
from timm.utils import ParseKwargs


class UsageError(ValueError):
    """A flag, or a combination of flags, that cannot work; exit status 2."""


class ModelKwargs(ParseKwargs):
    """timm's KEY=VALUE parser for --model-kwargs; a pair without `=` is a usage error naming it, not a traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        for value in values:
            if value and ('=' not in value or value.startswith('=')):
                raise argparse.ArgumentError(self, f'{value!r} is not KEY=VALUE; write e.g. attn_stages="(1,)" '
                                                   '"attn_kwargs={\'k\': 8}"')
        super().__call__(parser, namespace, values, option_string)

    @staticmethod
    def words(kwargs: dict) -> List[str]:
        """The KEY=VALUE words this action reads back as `kwargs` (each value by its repr, which timm's parser
        evaluates as a literal)."""
        return [f'{k}={v!r}' for k, v in kwargs.items()]


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int >= `minimum` (a count of steps, repeats, runs, workers, pixels), or argparse's
    one-line error naming the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a whole number') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'{value} must be at least {minimum}')
        return value
    return parse


positive_int = int_at_least(1)


def did_you_mean(word: str, known: Sequence[str], otherwise: str = '', n: int = 2) -> str:
    """' Did you mean A or B?' for the names in `known` closest to a mistyped `word`, else `otherwise`."""
    close = difflib.get_close_matches(word, list(known), n=n, cutoff=0.6)
    return f" Did you mean {' or '.join(close)}?" if close else otherwise


def add_debug_flag(parser) -> None:
    parser.add_argument('--debug', action='store_true', help='show the traceback of an error')


class Interrupted(KeyboardInterrupt):
    """A stop asked for from outside (Ctrl-C, SIGTERM, SIGHUP), raised where the main thread was."""

    def __init__(self, message: str = 'interrupted', signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def interrupt_on_termination() -> Iterator[None]:
    """SIGTERM (kill, timeout, systemd, a scheduler's pre-emption) and SIGHUP (a closed terminal) raise
    `Interrupted` as Ctrl-C raises KeyboardInterrupt, so the command can say how to go on. A signal ignored
    on entry (SIGHUP under nohup) stays ignored; outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _frame):
        raise Interrupted(f'interrupted ({signal.Signals(signum).name})', signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_cli(prog: str, body: Callable[[], Any], debug: bool = False,
            errors: Sequence[Type[BaseException]] = ()) -> Any:
    """Run `body`; turn `UsageError` (exit 2), `ValueError` and `errors` (exit 1) and Ctrl-C or another
    `Interrupted` (128 + its signal) into one message. A loader worker that died ends the process at once
    after its message (see `exit_now`)."""
    try:
        return body()
    except KeyboardInterrupt as e:
        if debug:
            raise
        print(f'{prog}: {e.args[0] if e.args else "interrupted"}', file=sys.stderr)
        raise SystemExit(128 + getattr(e, 'signum', signal.SIGINT)) from None
    except UsageError as e:
        if debug:
            raise
        print(f'{prog}: error: {e}', file=sys.stderr)
        raise SystemExit(2) from None
    except (ValueError, *errors) as e:
        if debug:
            raise
        print(f'{prog}: error: {message(e)}', file=sys.stderr)
        raise SystemExit(1) from None
    except BrokenPipeError:  # the reader left (`| head`): quiet, as shell tools are (Python's own recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        raise SystemExit(128 + signal.SIGPIPE) from None
    except (WorkerDied, RuntimeError, ConnectionError, EOFError) as e:
        ignore_worker_deaths()
        said = str(e) if isinstance(e, WorkerDied) else worker_died(e)
        if said is None or debug:
            raise
        print(f'{prog}: error: {said}.', file=sys.stderr)
        exit_now(1)
    except OSError as e:  # a full or read-only disk, a missing folder: the path and the fix, not a traceback
        if debug:
            raise
        print(f'{prog}: error: {os_error(e)}', file=sys.stderr)
        raise SystemExit(1) from None


def os_error(error: OSError) -> str:
    """An OSError in one line: what failed on which path, and what to do."""
    where = f' ({error.filename})' if error.filename else ''
    fix = {errno.ENOSPC: 'free some space there, or choose another folder',
           errno.EROFS: 'that disk is read-only: choose a folder you can write to',
           errno.EACCES: 'choose a folder you can write to', errno.EPERM: 'choose a folder you can write to',
           errno.ENOENT: 'check the path'}.get(error.errno, 'check the path and the disk')
    return f'{error.strerror or error}{where}: {fix}.'


# torch's words for a DataLoader worker that a signal ended ("is killed by signal: Killed.") or that vanished
_WORKER_DIED = re.compile(r'DataLoader worker \(pids?(\(s\))? [\d, ]+\) '
                          r'(is killed by signal|exited unexpectedly(?! with))')
_DATA_LOADER = os.path.join('torch', 'utils', 'data', '')


def worker_died(error: BaseException) -> Optional[str]:
    """For an error that says a data loader worker died (the kernel's out-of-memory killer, a stray kill): what
    happened, why, and what needs less memory; None for any other error.

    torch says it as a RuntimeError, or the batch the worker was handing over breaks (ConnectionResetError,
    EOFError). Call `ignore_worker_deaths()` first: until then torch's SIGCHLD handler raises again for the
    same worker wherever the main thread is, in the middle of this too.
    """
    if isinstance(error, RuntimeError) and _WORKER_DIED.match(str(error)):
        said = str(error).strip().rstrip('.')
    elif isinstance(error, (ConnectionError, EOFError)) and any(
            _DATA_LOADER in frame.f_code.co_filename for frame, _ in traceback.walk_tb(error.__traceback__)):
        said = f'a DataLoader worker stopped while it handed over a batch ({type(error).__name__}: {error})'
    else:
        return None
    return (f'{said}: the system ends a worker when memory runs out (see `dmesg`) and fewer --workers or a '
            'smaller --batch-size need less')


class WorkerDied(Exception):
    """A DataLoader worker died; the message says so (`worker_died`) and what to do next. `run_cli` ends the
    process on it with `exit_now`."""


def exit_now(status: int) -> NoReturn:
    """End the process without tearing down the interpreter: torch's clean-up of a loader whose worker was
    killed waits for a lock the dead worker may hold (its done-event's), forever. What the command had to
    finish, its `finally` blocks and `with` exits, ran while the error rose; live workers see their parent
    gone and quit (torch's watchdog)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def ignore_worker_deaths() -> None:
    """Switch off torch's SIGCHLD handler (it raises in the main thread for every later signal once a loader
    worker died): for a command that is about to end on an error. A SIGCHLD still pending runs that handler
    before the switch, and it raises there: then switch again."""
    if threading.current_thread() is not threading.main_thread():
        return
    while True:
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            return
        except RuntimeError as e:
            if not _WORKER_DIED.match(str(e)):
                raise


def message(error: BaseException) -> str:
    """The error's own message; for one re-raised from a DataLoader worker, the original's last line
    rather than 'Caught DataError in DataLoader worker process 1' and a traceback."""
    text = str(error)
    if text.startswith('Caught ') and 'Original Traceback' in text:
        last = text.strip().splitlines()[-1]  # "train.data.DataError: cannot read image ..."
        text = last.split(': ', 1)[1] if ': ' in last else last
    return text


def check_device(device: str) -> None:
    """A device torch knows and this machine has."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device torch knows; use 'cpu' or 'cuda' (or 'cuda:N').") \
            from None
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise UsageError(f'--device {device}: torch sees no CUDA device on this machine; use --device cpu.')


def check_torchcompile(backend: Optional[str], device: str) -> None:
    """A torch.compile backend torch knows and, for inductor on CPU, the C++ compiler it builds kernels with:
    both would otherwise fail at the first training step, after the data set was read, with a traceback."""
    if not backend:
        return
    from torch._dynamo import list_backends
    known = list_backends(exclude_tags=())
    if backend not in known:
        hint = did_you_mean(backend, known, ' torch._dynamo.list_backends() lists them.')
        raise UsageError(f'--torchcompile {backend}: torch.compile has no such backend.{hint}')
    if backend == 'inductor' and torch.device(device).type == 'cpu':
        from torch._inductor import cpp_builder, exc
        try:
            cpp_builder.get_cpp_compiler()
        except exc.InvalidCxxCompiler:
            raise UsageError('--torchcompile: inductor builds CPU kernels with a C++ compiler and finds none; '
                             'install g++ (or point CXX at one), or drop --torchcompile (it changes speed only).') \
                from None


def check_model_name(name: str) -> None:
    """A registered model (hf-hub:/local-dir: names are checked when loaded); close names are suggested."""
    if name.startswith(('hf-hub:', 'local-dir:')):
        return
    arch = name.split('.', 1)[0]
    if timm.is_model(arch):
        return
    hint = did_you_mean(arch, timm.list_models(), " timm.list_models('*_spa') lists ours; timm.list_models() all.", n=3)
    raise UsageError(f'--model {name}: no such model in timm or timm-spa.{hint}')
