"""Serve Hub repositories over the Hub's HTTP API with olah, on loopback.

`MirrorServer` serves a mirror laid out as PATH/models/ORG/NAME (git repositories, branch `main`).
`python -m hub serve releases/` turns every released repository folder (releases/ORG/NAME) into such
a mirror, checks each one first (`hub.releases`), serves it and prints the HF_ENDPOINT to use.
"""
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from .push import push_to_mirror
from .releases import released_repositories
from .repository import Repository, RepositoryError

CONFIG = """[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{repos}"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
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


class MirrorServer:
    """`with MirrorServer(mirrors, workdir) as server:` serves PATH/models/ORG/NAME at server.endpoint."""

    def __init__(self, mirrors: Path, workdir: Path, start_timeout: float = 60.0, port: Optional[int] = None):
        self.mirrors, self.workdir, self.start_timeout = Path(mirrors).resolve(), Path(workdir), start_timeout
        if port:
            check_port_free(port)
        self.port = port or free_port()
        self.endpoint = f'http://127.0.0.1:{self.port}'
        self.proc = None

    def __enter__(self) -> 'MirrorServer':
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir.resolve() / 'olah.toml'
        config.write_text(CONFIG.format(port=self.port, repos=self.workdir.resolve() / 'repos', mirrors=self.mirrors))
        cli = Path(sys.executable).with_name('olah-cli')
        if not cli.is_file():
            raise ServerError(f'olah-cli not found beside {sys.executable}: pip install "timm-spa[hub]".')
        self.proc = subprocess.Popen([str(cli), '-c', str(config)], cwd=self.workdir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + self.start_timeout
        while time.time() < deadline:
            try:
                socket.create_connection(('127.0.0.1', self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.__exit__()
        raise ServerError(f'olah did not start on port {self.port} (config {config}); run `{cli} -c {config}` '
                          'to see why.')

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def build_mirror(repos: List[Repository], mirror: Path) -> Path:
    """An olah mirror holding each repository under its ORG/NAME."""
    for repo in repos:
        push_to_mirror(repo, f'{repo.folder.parent.name}/{repo.folder.name}', mirror)
    return mirror


def serve(releases: str, port: Optional[int] = None, workdir: Optional[str] = None) -> None:
    """Serve every repository under `releases` until interrupted."""
    repos = released_repositories(Path(releases))
    if port:
        check_port_free(port)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix='timm-spa-serve-'))
    try:
        mirror = build_mirror(repos, work / 'mirror')
        with MirrorServer(mirror, work / 'olah', port=port) as server:
            print(f'serving {len(repos)} repositories from {releases}:', flush=True)
            for repo in repos:
                print(f'  {repo.folder.parent.name}/{repo.folder.name}', flush=True)
            print(f'\nexport HF_ENDPOINT={server.endpoint}\n(Ctrl-C stops the server)', flush=True)
            try:
                while server.proc.poll() is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                print('stopped', flush=True)
            else:
                raise ServerError(f'olah exited with status {server.proc.returncode}.')
    finally:
        if not workdir:
            shutil.rmtree(work, ignore_errors=True)
