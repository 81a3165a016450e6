"""Serve release folders over the Hugging Face Hub's HTTP API, on loopback: `python -m hub serve releases/`.

Written here because no well-kept package serves plain folders as Hub repositories: olah (which this replaced)
serves git mirrors, read each weights file whole per request (7 MB/s, 1.5 GB resident under 32 clients) and
answered `model_info`, `paths-info` and the commit list wrongly. This server answers the calls huggingface_hub,
timm and transformers make: file downloads (`resolve`, HEAD and GET, byte ranges, the Hub's ETag and LFS
headers), `model_info` / `repo_info` / `repo_exists`, `list_models`, `list_repo_tree`, `get_paths_info`,
`list_repo_refs` and `list_repo_commits`, and answers anything else with the Hub's error headers.

`python -m hub serve` checks the releases (which needs torch and timm), then replaces its own process with
this module's lean server (exec: same process id, signals and output; none of torch's memory), which only opens,
hashes and sends files. Each repository is served as it was when the server started: its files are opened,
hashed and held open, and sent from those descriptors with sendfile (no copy through Python, memory flat however
many clients). A release replaced meanwhile (`hub push --replace` installs a new folder) keeps being served as it
was; a file rewritten in place is refused with the Hub's EntryNotFound, which says so. A repository's commit id
names its content: the same files, the same id.
"""
import datetime
import hashlib
import http.server
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Tuple

from huggingface_hub import metadata_load
from safetensors import safe_open

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LFS_SIZE = 10 * 1024 * 1024  # the Hub stores files from this size, and binary files, in LFS
BINARY_SNIFF = 8000  # bytes git reads to decide whether a file is binary (a NUL byte among them)
MAIN = 'main'
MAIN_REFS = (MAIN, 'refs/heads/main')
CARD = 'README.md'  # the Hub's model card file (hub.repository names it too; importing it would import torch)
CHECKOUT = Path(__file__).resolve().parents[1]


class ServeError(ValueError):
    """The server cannot start as asked."""


class Served(Protocol):
    """What is served of a repository folder: `hub.repository.Repository` is one."""
    folder: Path

    def files(self) -> List[Path]: ...


@dataclass
class _Folder:
    folder: Path
    names: List[str]

    def files(self) -> List[Path]:
        return [self.folder / name for name in self.names]


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def _iso(timestamp_ns: int) -> str:
    when = datetime.datetime.fromtimestamp(timestamp_ns / 1e9, tz=datetime.timezone.utc)
    return when.strftime('%Y-%m-%dT%H:%M:%S.000Z')


@dataclass
class _ServedFile:
    """One file, open for the server's lifetime, with what the Hub says of it."""
    path: str
    handle: object  # an open binary file: sendfile reads it at explicit offsets, so threads share it
    size: int
    mtime_ns: int
    blob_id: str  # the git blob id (of the LFS pointer for an LFS file), as the Hub's tree lists it
    sha256: Optional[str]  # set for an LFS file: its ETag

    @classmethod
    def open(cls, folder: Path, path: str) -> '_ServedFile':
        handle = open(folder / path, 'rb')
        stat = os.fstat(handle.fileno())
        digest, blob, head = hashlib.sha256(), hashlib.sha1(b'blob %d\0' % stat.st_size), b''
        while chunk := handle.read(1 << 20):
            head = head or chunk[:BINARY_SNIFF]
            digest.update(chunk)
            blob.update(chunk)
        sha256 = None
        if stat.st_size >= LFS_SIZE or b'\0' in head:
            sha256 = digest.hexdigest()
            blob_id = _git_blob_id(cls._pointer(sha256, stat.st_size))
        else:
            blob_id = blob.hexdigest()
        return cls(path, handle, stat.st_size, stat.st_mtime_ns, blob_id, sha256)

    @staticmethod
    def _pointer(sha256: str, size: int) -> bytes:
        return f'version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n'.encode()

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id

    def changed(self) -> bool:
        stat = os.fstat(self.handle.fileno())
        return (stat.st_size, stat.st_mtime_ns) != (self.size, self.mtime_ns)

    def entry(self) -> dict:
        """The file as the Hub's tree and paths-info list it."""
        entry = dict(type='file', oid=self.blob_id, size=self.size, path=self.path)
        if self.sha256:
            entry['lfs'] = dict(oid=self.sha256, size=self.size,
                                pointerSize=len(self._pointer(self.sha256, self.size)))
        return entry


@dataclass
class _ServedRepository:
    repo_id: str
    files: Dict[str, _ServedFile]
    card: dict = field(default_factory=dict)
    commit: str = ''
    modified: str = ''
    safetensors: Optional[dict] = None

    @classmethod
    def open(cls, repo_id: str, repo: Served) -> '_ServedRepository':
        paths = sorted(str(p.relative_to(repo.folder)) for p in repo.files())
        files = {path: _ServedFile.open(repo.folder, path) for path in paths}
        listing = ''.join(f'{path} {f.blob_id}\n' for path, f in files.items())
        served = cls(repo_id, files, commit=hashlib.sha1(f'{repo_id}\n{listing}'.encode()).hexdigest(),
                     modified=_iso(max(f.mtime_ns for f in files.values())))
        if CARD in files:
            served.card = metadata_load(repo.folder / CARD) or {}
        counts: Dict[str, int] = {}
        for path in paths:
            if path.endswith('.safetensors'):
                with safe_open(repo.folder / path, 'numpy') as weights:
                    for key in weights.keys():
                        tensor = weights.get_slice(key)
                        counts[tensor.get_dtype()] = counts.get(tensor.get_dtype(), 0) + math.prod(tensor.get_shape())
        if counts:
            served.safetensors = dict(parameters=counts, total=sum(counts.values()))
        return served

    def close(self) -> None:
        for f in self.files.values():
            f.handle.close()

    def info(self) -> dict:
        """`model_info`'s answer: what the Hub says of a public model repository."""
        org, name = self.repo_id.split('/')
        return {
            '_id': self.commit[:24], 'id': self.repo_id, 'modelId': self.repo_id, 'author': org, 'sha': self.commit,
            'lastModified': self.modified, 'createdAt': self.modified, 'private': False, 'gated': False,
            'disabled': False, 'downloads': 0, 'likes': 0, 'tags': self.card.get('tags', []),
            'library_name': self.card.get('library_name'), 'pipeline_tag': self.card.get('pipeline_tag'),
            'cardData': self.card, 'safetensors': self.safetensors,
            'usedStorage': sum(f.size for f in self.files.values()),
            'siblings': [dict(rfilename=f.path, size=f.size, blobId=f.blob_id,
                              **({'lfs': dict(sha256=f.sha256, size=f.size,
                                              pointerSize=f.entry()['lfs']['pointerSize'])} if f.sha256 else {}))
                         for f in self.files.values()],
        }

    def last_commit(self) -> dict:
        return dict(id=self.commit, title=f'Serve {self.repo_id}', date=self.modified)

    def commit_entry(self) -> dict:
        return dict(self.last_commit(), message='', authors=[dict(user=self.repo_id.split('/')[0])])

    def entries(self, paths: List[str], expand: bool) -> List[dict]:
        """The files among `paths` as the Hub's tree and paths-info list them (a release folder holds no folders)."""
        listed = [self.files[path].entry() for path in paths if path in self.files]
        if expand:
            for entry in listed:
                entry['lastCommit'] = self.last_commit()
        return listed


class _NotFound(Exception):
    def __init__(self, code: Optional[str], message: str, commit: Optional[str] = None, status: int = 404):
        super().__init__(message)
        self.code, self.message, self.commit, self.status = code, message, commit, status


_RANGE = re.compile(r'^bytes=(\d*)-(\d*)$')


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'  # keep-alive: huggingface_hub's client reuses its connections
    timeout = 300  # a client silent this long frees its thread
    repos: Dict[str, _ServedRepository] = {}

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        try:
            split = urllib.parse.urlsplit(self.path)
            segments = [urllib.parse.unquote(s) for s in split.path.split('/')[1:]]
            if any('..' in s.split('/') for s in segments):
                raise _NotFound('EntryNotFound', 'a path that climbs with .. names nothing served here')
            query = urllib.parse.parse_qs(split.query)
            if segments[:2] == ['api', 'models']:
                self._api(segments[2:], query)
            elif len(segments) >= 4 and segments[2] == 'resolve' and self.command in ('GET', 'HEAD'):
                self._resolve(self._repo(segments[:2]), segments[3], '/'.join(segments[4:]))
            else:
                raise _NotFound(None, f'{self.command} {split.path} is not a Hub call this server answers (hub serve '
                                      'serves model repositories: downloads and the model API)')
        except _NotFound as e:
            self._send_error(e)
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away

    def _repo(self, segments: List[str]) -> _ServedRepository:
        repo_id = '/'.join(segments[:2])
        if repo_id not in self.repos:
            raise _NotFound('RepoNotFound', f'{repo_id} is not served here; this server serves '
                                            f'{", ".join(self.repos) or "nothing"}')
        return self.repos[repo_id]

    @staticmethod
    def _check_revision(repo: _ServedRepository, revision: str) -> None:
        if revision not in (*MAIN_REFS, repo.commit):
            raise _NotFound('RevisionNotFound', f'{repo.repo_id} has no revision {revision!r} here: it is served '
                                                f'at {MAIN} ({repo.commit})', repo.commit)

    def _api(self, segments: List[str], query: Dict[str, List[str]]) -> None:
        if not segments:  # list_models
            return self._json([r.info() for r in self.repos.values() if self._listed(r, query)])
        repo = self._repo(segments)
        rest = segments[2:]
        if not rest:
            return self._json(repo.info())
        what = rest[0]
        if what == 'revision' and len(rest) == 2:
            self._check_revision(repo, rest[1])
            return self._json(repo.info())
        if what == 'refs' and len(rest) == 1:
            main = dict(name=MAIN, ref=f'refs/heads/{MAIN}', targetCommit=repo.commit)
            return self._json(dict(branches=[main], converts=[], tags=[], pullRequests=[]))
        if what == 'commits' and len(rest) == 2:
            self._check_revision(repo, rest[1])
            return self._json([repo.commit_entry()])
        if what == 'tree' and len(rest) >= 2:
            self._check_revision(repo, rest[1])
            folder = '/'.join(rest[2:]).strip('/')
            if folder:
                raise _NotFound('EntryNotFound', f'{folder} is not a folder of {repo.repo_id}', repo.commit)
            return self._json(repo.entries(list(repo.files), self._flag(query, 'expand')))
        if what == 'paths-info' and len(rest) == 2 and self.command == 'POST':
            self._check_revision(repo, rest[1])
            form = self._form()
            return self._json(repo.entries([p.strip('/') for p in form.get('paths', [])], self._flag(form, 'expand')))
        raise _NotFound(None, f'{self.command} /api/models/{"/".join(segments)} is not a call this server answers')

    def _form(self) -> Dict[str, List[str]]:
        length = int(self.headers.get('Content-Length') or 0)
        if length > 1 << 20:
            raise _NotFound(None, 'a paths-info request over 1 MB', status=413)
        return urllib.parse.parse_qs(self.rfile.read(length).decode())

    @staticmethod
    def _flag(query: Dict[str, List[str]], name: str) -> bool:
        return (query.get(name) or ['false'])[-1].lower() in ('1', 'true')

    @staticmethod
    def _listed(repo: _ServedRepository, query: Dict[str, List[str]]) -> bool:
        """list_models' filters: author, search (in the id), filter (tags, every one)."""
        author, search = (query.get('author') or [None])[-1], (query.get('search') or [''])[-1]
        return ((author is None or repo.repo_id.split('/')[0] == author)
                and search.lower() in repo.repo_id.lower()
                and all(tag in repo.card.get('tags', []) for tag in query.get('filter', [])))

    def _resolve(self, repo: _ServedRepository, revision: str, path: str) -> None:
        self._check_revision(repo, revision)
        served = repo.files.get(path)
        if served is None:
            raise _NotFound('EntryNotFound', f'{path} does not exist in {repo.repo_id}', repo.commit)
        if served.changed():
            # the Hub's EntryNotFound: clients stop at once and show the message (a 5xx is retried, then read as
            # a network failure); the entry that was hashed is gone
            raise _NotFound('EntryNotFound', f'{repo.repo_id}/{path} was rewritten in place since the server started '
                                             '(it is no longer the file served under its hash); restart hub serve to '
                                             'serve what is there now', repo.commit)
        start, end = 0, served.size
        ranged = self._range(served.size)
        if ranged is not None:
            start, end = ranged
        self.send_response(206 if ranged is not None else 200)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Length', str(end - start))
        self.send_header('Accept-Ranges', 'bytes')
        self.send_header('ETag', f'"{served.etag}"')
        self.send_header('X-Repo-Commit', repo.commit)
        if served.sha256:
            self.send_header('X-Linked-Etag', f'"{served.sha256}"')
            self.send_header('X-Linked-Size', str(served.size))
        if ranged is not None:
            self.send_header('Content-Range', f'bytes {start}-{end - 1}/{served.size}')
        self.end_headers()
        if self.command == 'GET' and end > start:
            self.connection.sendfile(served.handle, start, end - start)

    def _range(self, size: int) -> Optional[Tuple[int, int]]:
        """The one byte range asked for, as [start, end); None for the whole file (also for several ranges, which
        a server may answer whole)."""
        asked = self.headers.get('Range')
        match = _RANGE.match(asked.strip()) if asked else None
        if match is None or match.groups() == ('', ''):
            return None
        first, last = match.groups()
        if first == '':
            start, end = max(size - int(last), 0), size
        else:
            start, end = int(first), min(int(last) + 1, size) if last else size
        if start >= size or start >= end:
            raise _NotFound(None, f'range {asked} is outside the {size} bytes of the file', status=416)
        return start, end

    def _json(self, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json; charset=utf-8')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def _send_error(self, error: _NotFound) -> None:
        body = json.dumps(dict(error=error.message)).encode()
        self.send_response(error.status)
        if error.code:
            self.send_header('X-Error-Code', error.code)
        self.send_header('X-Error-Message', error.message)
        if error.commit:
            self.send_header('X-Repo-Commit', error.commit)
        if self.command == 'POST':  # a body left unread would be read as the next request
            self.send_header('Connection', 'close')
        self.send_header('Content-Type', 'application/json; charset=utf-8')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # dozens of clients connecting at once wait in the backlog, not in SYN retries


class HubServer:
    """`with HubServer({'ORG/NAME': repository, ...}) as server:` serves them at `server.endpoint` (set
    HF_ENDPOINT to it) from a thread of this process."""

    def __init__(self, repos: Dict[str, Served], port: Optional[int] = None):
        self.repos, self.port = repos, port or 0
        self.server: Optional[_Server] = None
        self.served: Dict[str, _ServedRepository] = {}
        self.endpoint: Optional[str] = None  # kept after the server stops: what clients were told

    def __enter__(self) -> 'HubServer':
        try:
            for repo_id, repo in self.repos.items():
                self.served[repo_id] = _ServedRepository.open(repo_id, repo)
            handler = type('Handler', (_Handler,), dict(repos=self.served))
            try:
                self.server = _Server(('127.0.0.1', self.port), handler)
            except OSError as e:
                raise port_in_use(self.port, e) from None
            self.endpoint = f'http://127.0.0.1:{self.server.server_address[1]}'
        except BaseException:
            self.__exit__()
            raise
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for served in self.served.values():
            served.close()
        self.served = {}


def port_in_use(port: int, error: OSError) -> ServeError:
    return ServeError(f'port {port} on 127.0.0.1 is in use ({error.strerror}); choose another --port, or leave '
                      '--port out for a free one.')


def check_port_free(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(('127.0.0.1', port))
        except OSError as e:
            raise port_in_use(port, e) from None


def by_layout(repos: List[Served]) -> Dict[str, Served]:
    """Each repository under ORG/NAME, its folder's place in a releases folder (RELEASES/ORG/NAME)."""
    return {f'{repo.folder.parent.name}/{repo.folder.name}': repo for repo in repos}


class Stop(Exception):
    """A stop signal arrived."""


def _stop(signum, _frame):
    for sig in STOP_SIGNALS:  # once: a second Ctrl-C cannot interrupt the clean-up
        signal.signal(sig, signal.SIG_IGN)
    raise Stop(signal.Signals(signum).name)


def serve(releases: str, port: Optional[int] = None) -> None:
    """Check every repository under `releases`, then serve them from this process, turned into the lean server
    (see the module's docstring), until SIGINT, SIGTERM or SIGHUP."""
    from .releases import released_repositories
    repos = by_layout(released_repositories(Path(releases)))
    if port:
        check_port_free(port)
    listing = {repo_id: [str(repo.folder), [str(p.relative_to(repo.folder)) for p in repo.files()]]
               for repo_id, repo in repos.items()}
    sys.stdout.flush()
    sys.stderr.flush()
    path = os.pathsep.join(p for p in (str(CHECKOUT), os.environ.get('PYTHONPATH')) if p)
    os.execve(sys.executable, [sys.executable, '-m', 'hub.serve', json.dumps(listing), str(port or 0), releases],
              dict(os.environ, PYTHONPATH=path))


def _serve_forever(listing: str, port: int, releases: str) -> None:
    repos = {repo_id: _Folder(Path(folder), names) for repo_id, (folder, names) in json.loads(listing).items()}
    previous = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}
    try:
        with HubServer(repos, port) as server:
            print(f'serving {len(repos)} repositories from {releases}:', flush=True)
            for repo_id in repos:
                print(f'  {repo_id}', flush=True)
            print(f'\nexport HF_ENDPOINT={server.endpoint}\n(Ctrl-C, SIGTERM or SIGHUP stops the server)', flush=True)
            while True:
                signal.pause()
    except Stop as e:
        print(f'stopping ({e})', flush=True)
    except (ServeError, OSError) as e:
        sys.exit(f'python -m hub: error: {e}')
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print('stopped', flush=True)


if __name__ == '__main__':  # what `serve` turns its process into; not a command of its own
    _serve_forever(sys.argv[1], int(sys.argv[2]), sys.argv[3])
