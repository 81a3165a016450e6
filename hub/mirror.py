"""Serve Hub repositories over the Hub's HTTP API with olah, on loopback.

`MirrorServer` serves a mirror laid out as PATH/models/ORG/NAME (git repositories, branch `main`).
`python -m hub serve releases/` turns every released repository folder (releases/ORG/NAME) into such
a mirror, checks each one first (`hub.releases`), serves it and prints the HF_ENDPOINT to use.
The mirror's files are hard links to the release files and, where the releases are committed in a git
repository, its git objects are borrowed from there: starting a server copies no weights. SIGINT,
SIGTERM and SIGHUP all stop it the same way (server process and temporary files gone); olah is told
by the kernel to stop if its parent dies, even by SIGKILL.
"""
import contextlib
import ctypes
import http.client
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from .push import sync_git_repository
from .release_slot import process_alive
from .releases import released_repositories
from .repository import Repository, RepositoryError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SERVE_PREFIX = 'timm-spa-serve-'
PID_FILE = 'server.pid'

CONFIG = """[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{repos}"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{public}"
mirror-lfs-netloc = "127.0.0.1:{public}"
mirrors-path = ["{mirrors}"]
[accessibility]
offline = true
[[accessibility.proxy]]
repo = "*"
allow = true
"""


class ServerError(RuntimeError):
    """The local Hub server could not be started or stopped working."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def check_port_free(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(('127.0.0.1', port))
        except OSError:
            raise RepositoryError(f'port {port} on 127.0.0.1 is in use; choose another --port, or leave --port out '
                                  'for a free one.') from None


def served_repositories(mirrors: Path) -> List[str]:
    """ORG/NAME of every git repository in an olah mirror (PATH/models/ORG/NAME)."""
    return sorted(f'{p.parent.parent.name}/{p.parent.name}' for p in Path(mirrors).glob('models/*/*/.git'))


# the Hub API paths that name a model repository: /api/models/ORG/NAME/..., /ORG/NAME/resolve/...
_REPO_PATH = re.compile(r'^/(?:api/models/)?([^/?]+/[^/?]+?)(?:/(?:resolve|revision|tree|info|paths-info)\b|[?]|$)')


class _Gate(http.server.BaseHTTPRequestHandler):
    """In front of olah: a repository the mirror does not hold gets a 404 that says which ones it holds
    (olah answers 401 'make sure you are authenticated', as the Hub does for a private name), and so does a file
    that a served repository does not hold, with the Hub's `EntryNotFound` (olah answers 401 there too, which
    huggingface_hub reads as a missing repository: transformers' AutoImageProcessor, which asks for optional
    files first, then fails), and so does a path that climbs out with `..` (olah answers 500); anything else is
    passed through unchanged, streamed."""
    protocol_version = 'HTTP/1.0'  # one request a connection: the body ends when the connection closes
    upstream: Tuple[str, int] = ('127.0.0.1', 0)
    served: Tuple[str, ...] = ()

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def _forward(self) -> None:
        if '..' in urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).split('/'):
            self._not_found('EntryNotFound', 'a path that climbs with .. names nothing served here')  # olah: a 500
            return
        match = _REPO_PATH.match(self.path)
        repo = match.group(1) if match else None
        if repo is not None and not repo.startswith('api/') and repo not in self.served:
            self._not_found('RepoNotFound', f'{repo} is not served here; this server serves '
                                            f'{", ".join(self.served) or "nothing"}')
            return
        upstream = http.client.HTTPConnection(*self.upstream, timeout=300)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ('connection', 'keep-alive')}
            upstream.request(self.command, self.path, headers=headers)
            response = upstream.getresponse()
            if response.status == 401 and repo is not None and f'{repo}/resolve/' in self.path:
                self._not_found('EntryNotFound', f'{self.path} does not exist in {repo}')
                return
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in ('connection', 'keep-alive', 'transfer-encoding', 'server', 'date'):
                    self.send_header(key, value)
            self.end_headers()
            if self.command != 'HEAD':
                shutil.copyfileobj(response, self.wfile, 1 << 20)
        except (OSError, http.client.HTTPException):
            pass  # the client went away, or olah is stopping
        finally:
            upstream.close()

    def _not_found(self, code: str, message: str) -> None:
        self.send_response(404)
        self.send_header('X-Error-Code', code)
        self.send_header('X-Error-Message', message)
        self.send_header('Content-Length', '0')
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


class MirrorServer:
    """`with MirrorServer(mirrors, workdir) as server:` serves PATH/models/ORG/NAME at server.endpoint.

    olah listens on a private port; `server.endpoint` is a small gate in front of it that names the served
    repositories when a client asks for another one.
    """

    def __init__(self, mirrors: Path, workdir: Path, start_timeout: float = 60.0, port: Optional[int] = None):
        self.mirrors, self.workdir, self.start_timeout = Path(mirrors).resolve(), Path(workdir), start_timeout
        if port:
            check_port_free(port)
        self.port = port or free_port()
        self.endpoint = f'http://127.0.0.1:{self.port}'
        self.proc = None
        self.gate = None

    def __enter__(self) -> 'MirrorServer':
        self.workdir.mkdir(parents=True, exist_ok=True)
        olah_port = free_port()
        config = self.workdir.resolve() / 'olah.toml'
        # olah writes the gate's address into the redirects it sends, so that clients come back through it
        config.write_text(CONFIG.format(port=olah_port, public=self.port, repos=self.workdir.resolve() / 'repos',
                                        mirrors=self.mirrors))
        cli = Path(sys.executable).with_name('olah-cli')
        if not cli.is_file():
            raise ServerError(f'olah-cli not found beside {sys.executable}: pip install "timm-spa[hub]".')
        # its own session: a Ctrl-C in the terminal reaches this process, which then stops olah itself
        self.proc = subprocess.Popen([str(cli), '-c', str(config)], cwd=self.workdir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent, start_new_session=True)
        if not self._wait_for(olah_port):
            self.__exit__()
            raise ServerError(f'olah did not start on port {olah_port} (config {config}); run `{cli} -c {config}` '
                              'to see why.')
        gate = type('Gate', (_Gate,), dict(upstream=('127.0.0.1', olah_port),
                                           served=tuple(served_repositories(self.mirrors))))
        self.gate = http.server.ThreadingHTTPServer(('127.0.0.1', self.port), gate)
        self.gate.daemon_threads = True
        threading.Thread(target=self.gate.serve_forever, daemon=True).start()
        return self

    def _wait_for(self, port: int) -> bool:
        """Whether olah answers on `port` before the start timeout (False at once if it exits)."""
        deadline = time.time() + self.start_timeout
        while time.time() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def __exit__(self, *exc) -> None:
        if self.gate is not None:
            self.gate.shutdown()
            self.gate.server_close()
            self.gate = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _git_objects(folder: Path) -> Optional[Path]:
    """The object store of the git repository `folder` lies in, if any."""
    done = subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-path', 'objects'], cwd=folder,
                          capture_output=True, text=True)
    path = Path(done.stdout.strip()) if done.returncode == 0 else None
    return path if path is not None and path.is_dir() else None


def build_mirror(repos: List[Repository], mirror: Path) -> Path:
    """An olah mirror holding each repository under its ORG/NAME, exactly as its folder holds it: hard links,
    and git objects borrowed from the repository the folders are committed in; unchanged ones stay as they are."""
    for repo in repos:
        files = {str(p.relative_to(repo.folder)): p for p in repo.files()}
        sync_git_repository(files, mirror / 'models' / repo.folder.parent.name / repo.folder.name,
                            f'Serve {repo.folder.parent.name}/{repo.folder.name}', link=True,
                            objects=_git_objects(repo.folder))
    return mirror


class Stop(Exception):
    """A stop signal arrived."""


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise `Stop` here, once; during the clean-up after it they are ignored, so a
    second Ctrl-C cannot leave the server or its files behind."""
    def stop(signum, _frame):
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def remove_stale_workdirs(root: Optional[Path] = None) -> List[Path]:
    """Temporary folders of servers whose process is gone (killed by SIGKILL, say): removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f'{SERVE_PREFIX}*'):
        try:
            pid = int((folder / PID_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        if not process_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def serve(releases: str, port: Optional[int] = None, workdir: Optional[str] = None) -> None:
    """Serve every repository under `releases` until SIGINT, SIGTERM or SIGHUP."""
    repos = released_repositories(Path(releases))
    if port:
        check_port_free(port)
    remove_stale_workdirs()
    with _stop_on_signals():
        work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=SERVE_PREFIX))
        try:
            if not workdir:
                (work / PID_FILE).write_text(str(os.getpid()))
            mirror = build_mirror(repos, work / 'mirror')
            with MirrorServer(mirror, work / 'olah', port=port) as server:
                try:  # from here on the server is up: a signal, even during the prints, stops a serving server
                    print(f'serving {len(repos)} repositories from {releases}:', flush=True)
                    for repo in repos:
                        print(f'  {repo.folder.parent.name}/{repo.folder.name}', flush=True)
                    print(f'\nexport HF_ENDPOINT={server.endpoint}\n(Ctrl-C, SIGTERM or SIGHUP stops the server)',
                          flush=True)
                    while server.proc.poll() is None:
                        time.sleep(0.5)
                except Stop as e:  # SIGINT included: the handler turns it into Stop
                    print(f'stopping ({e})', flush=True)
                else:
                    raise ServerError(f'olah exited with status {server.proc.returncode}.')
        except Stop as e:  # a signal while the mirror was built or the server started
            print(f'stopped ({e}) before serving', flush=True)
        finally:
            if not workdir:
                shutil.rmtree(work, ignore_errors=True)
    print('stopped', flush=True)
