"""One published name in a releases folder, RELEASES/ORG/NAME: written by one push at a time, in one step, and
never lost to a kill.

A push holds the name's lock (`.NAME.lock` beside the folder, an flock the kernel drops when the process dies)
for its whole check-and-write, so two pushes of one name cannot both pass the check against the same old
weights. It writes the new folder as `.NAME.staging-PID-*`, then swaps it in with two renames, the old folder
parked as `.NAME.replaced` in between. A process killed at any point leaves either the old release or the new
one in place, or, between the renames, the parked one: whoever takes the lock next (a push, `hub serve`,
`hub table`, `hub remeasure`) puts it back, and removes staging folders whose process is gone.
"""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List

from filelock import FileLock, Timeout

from .repository import RepositoryError


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True  # it exists (PermissionError: it exists, under another user)


class ReleaseSlot:
    """RELEASES/ORG/NAME and the hidden files a push keeps beside it."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.parked = self.target.with_name(f'.{self.target.name}.replaced')
        self._lock_path = self.target.with_name(f'.{self.target.name}.lock')
        self._staging_prefix = f'.{self.target.name}.staging-'

    @contextlib.contextmanager
    def lock(self) -> Iterator[List[str]]:
        """Own the name, after recovering what a killed push left (yields what was done); another push of it is
        refused, not queued (it would check against weights about to be replaced)."""
        self.target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self._lock_path, blocking=False)
        try:
            lock.acquire()
        except Timeout:
            raise RepositoryError(f'another push of {self.target} is running: wait for it to end, then push again '
                                  '(it may replace what you are about to push against).') from None
        try:
            yield self.recover()
        finally:
            lock.release()

    def recover(self) -> List[str]:
        """Under the lock: put back a release parked by a push killed between its two renames (or drop the parked
        one when the new release is in place), and remove staging folders whose process is gone."""
        done = []
        if self.parked.exists():
            if self.target.exists():
                shutil.rmtree(self.parked)
                done.append(f'removed {self.parked} (a finished replacement had not removed it)')
            else:
                os.replace(self.parked, self.target)
                done.append(f'put back {self.target}: a push replacing it was stopped half-way')
        for staging in self.target.parent.glob(f'{self._staging_prefix}*'):
            pid = staging.name[len(self._staging_prefix):].split('-', 1)[0]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(staging, ignore_errors=True)
                done.append(f'removed {staging} (left by a push that was stopped)')
        return done

    def staging(self) -> Path:
        """A new empty folder to write the release into (named by this process, so a later push can clear it)."""
        return Path(tempfile.mkdtemp(prefix=f'{self._staging_prefix}{os.getpid()}-', dir=self.target.parent))

    def install(self, staging: Path) -> None:
        """Put `staging` in place of the release, in two renames; `recover` finishes a swap stopped between them."""
        if self.target.exists():
            os.replace(self.target, self.parked)
            os.replace(staging, self.target)
            shutil.rmtree(self.parked)
        else:
            os.replace(staging, self.target)


def recover_releases(releases: Path) -> List[str]:
    """What killed pushes left under RELEASES/ORG/, recovered for every name whose lock is free (a name being
    pushed right now is left to its push); returns what was done."""
    leftovers = set()
    for path in Path(releases).glob('*/.*'):
        hidden = path.name[1:]
        if hidden.endswith('.replaced'):
            leftovers.add(path.parent / hidden[:-len('.replaced')])
        elif '.staging-' in hidden:
            leftovers.add(path.parent / hidden.split('.staging-', 1)[0])
    done: List[str] = []
    for target in sorted(leftovers):
        with contextlib.suppress(RepositoryError), ReleaseSlot(target).lock() as recovered:
            done += recovered
    return done
