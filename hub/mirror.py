"""Serve a local Hub mirror over the Hub's HTTP API with olah, on loopback."""
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class MirrorServer:
    """`with MirrorServer(mirrors, workdir) as server:` serves PATH/models/ORG/NAME at server.endpoint."""

    def __init__(self, mirrors: Path, workdir: Path, start_timeout: float = 60.0):
        self.mirrors, self.workdir, self.start_timeout = Path(mirrors).resolve(), Path(workdir), start_timeout
        self.port = free_port()
        self.endpoint = f'http://127.0.0.1:{self.port}'
        self.proc = None

    def __enter__(self) -> 'MirrorServer':
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir.resolve() / 'olah.toml'
        config.write_text(CONFIG.format(port=self.port, repos=self.workdir.resolve() / 'repos', mirrors=self.mirrors))
        cli = Path(sys.executable).with_name('olah-cli')
        if not cli.is_file():
            raise RuntimeError(f'olah-cli not found beside {sys.executable}: pip install "timm-spa[hub]".')
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
        raise RuntimeError(f'olah did not start on port {self.port} (config {config}).')

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
