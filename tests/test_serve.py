"""`python -m hub serve`'s server answers the Hub API calls huggingface_hub makes, as the Hub does: checked through
huggingface_hub itself in a fresh interpreter against the project's releases/, every answer compared with the
files as recomputed here (sizes, SHA-256, git blob ids, parameter counts)."""
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from safetensors import safe_open

from hub.releases import released_repositories
from hub.repository import read_repository
from hub.serve import HubServer, ServeError, by_layout

REPO_ID = 'timm-spa/resnet18_spa.cifar10'
CLIENT = r'''
import json, sys
from huggingface_hub import (HfApi, HfFileSystem, ModelCard, get_safetensors_metadata, hf_hub_download,
                             snapshot_download)
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
repo, api, fs, out = sys.argv[1], HfApi(), HfFileSystem(), {}
info = api.model_info(repo, files_metadata=True)
out['info'] = dict(sha=info.sha, pipeline_tag=info.pipeline_tag, library_name=info.library_name, tags=info.tags,
                   safetensors_total=info.safetensors.total,
                   siblings={s.rfilename: [s.size, s.blob_id, s.lfs.sha256 if s.lfs else None] for s in info.siblings})
out['repo_exists'] = [api.repo_exists(repo), api.repo_exists('timm-spa/no-such-model')]
out['file_exists'] = [api.file_exists(repo, 'config.json'), api.file_exists(repo, 'no-such-file.json')]
out['list_models'] = [m.id for m in api.list_models(author='timm-spa')]
out['list_models_other'] = [m.id for m in api.list_models(author='someone-else')]
out['list_models_search'] = [m.id for m in api.list_models(search='tinyimagenet')]
refs = api.list_repo_refs(repo)
out['refs'] = [(b.name, b.target_commit) for b in refs.branches]
out['commits'] = [c.commit_id for c in api.list_repo_commits(repo)]
out['tree'] = {f.path: [f.size, f.blob_id] for f in api.list_repo_tree(repo, expand=True)}
out['paths_info'] = sorted(f.path for f in api.get_paths_info(repo, ['config.json', 'model.safetensors', 'nope']))
out['safetensors_metadata'] = get_safetensors_metadata(repo).parameter_count
out['fs_ls'] = sorted(fs.ls(repo, detail=False))
with fs.open(f'{repo}/model.safetensors', 'rb', block_size=4096) as f:
    f.seek(1000)
    out['fs_range'] = f.read(64).hex()
out['card_pipeline_tag'] = ModelCard.load(repo).data.pipeline_tag
out['download'] = hf_hub_download(repo, 'model.safetensors')
out['download_at_sha'] = hf_hub_download(repo, 'config.json', revision=info.sha)
out['snapshot'] = snapshot_download(repo)
for name, call in [('revision', lambda: hf_hub_download(repo, 'config.json', revision='v0')),
                   ('entry', lambda: hf_hub_download(repo, 'no-such-file.json')),
                   ('repo', lambda: api.model_info('timm-spa/no-such-model'))]:
    try:
        call()
        out[name] = None
    except (RevisionNotFoundError, EntryNotFoundError, RepositoryNotFoundError) as e:
        out[name] = [type(e).__name__, str(e)]
print(json.dumps(out))
'''


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def _client(endpoint: str, tmp_path: Path) -> dict:
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / 'hf'), HF_HUB_DISABLE_TELEMETRY='1')
    env.pop('HF_HUB_OFFLINE', None)
    done = subprocess.run([sys.executable, '-c', CLIENT, REPO_ID], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope='module')
def releases():
    return by_layout(released_repositories(ROOT / 'releases'))


def test_the_hub_api_through_huggingface_hub(releases, tmp_path):
    folder = ROOT / 'releases' / REPO_ID
    with HubServer(releases) as server:
        out = _client(server.endpoint, tmp_path)
    sha = out['info']['sha']
    assert len(sha) == 40 and out['refs'] == [['main', sha]] and out['commits'] == [sha]
    assert out['repo_exists'] == [True, False] and out['file_exists'] == [True, False]
    assert out['list_models'] == sorted(releases) and out['list_models_other'] == []
    assert out['list_models_search'] == ['timm-spa/resnet18_spa.tinyimagenet']
    assert out['info']['pipeline_tag'] == 'image-classification' and out['info']['library_name'] == 'timm'
    assert 'resnet18_spa' in out['info']['tags']
    files = sorted(p.name for p in folder.iterdir())
    for name in files:  # as the Hub lists them: binary files in LFS (their blob id is the pointer's)
        data = (folder / name).read_bytes()
        size, blob_id, sha256 = out['info']['siblings'][name]
        assert size == len(data) and out['tree'][name] == [size, blob_id]
        if name.endswith(('.safetensors', '.png')):
            assert sha256 == hashlib.sha256(data).hexdigest()
            pointer = f'version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n'
            assert blob_id == _blob_id(pointer.encode())
        else:
            assert sha256 is None and blob_id == _blob_id(data)
    assert sorted(out['info']['siblings']) == files and sorted(out['tree']) == files
    with safe_open(folder / 'model.safetensors', 'pt') as weights:
        counts = {}
        for key in weights.keys():
            tensor = weights.get_tensor(key)
            counts[str(tensor.dtype)] = counts.get(str(tensor.dtype), 0) + tensor.numel()
    assert out['info']['safetensors_total'] == sum(counts.values())
    assert sorted(out['safetensors_metadata'].values()) == sorted(counts.values())
    assert out['paths_info'] == ['config.json', 'model.safetensors']
    assert out['fs_ls'] == [f'{REPO_ID}/{name}' for name in files]
    assert out['fs_range'] == (folder / 'model.safetensors').read_bytes()[1000:1064].hex()
    assert out['card_pipeline_tag'] == 'image-classification'
    assert Path(out['download']).read_bytes() == (folder / 'model.safetensors').read_bytes()
    assert f'/snapshots/{sha}/' in out['download'] and f'/snapshots/{sha}/' in out['download_at_sha']
    assert sorted(p.name for p in Path(out['snapshot']).iterdir()) == files
    assert out['revision'][0] == 'RevisionNotFoundError'
    assert out['entry'][0] == 'RemoteEntryNotFoundError' and 'no-such-file.json' in out['entry'][1]
    assert out['repo'][0] == 'RepositoryNotFoundError' and REPO_ID in out['repo'][1]  # names what it serves


def _get(endpoint: str, path: str, headers: dict = None, method: str = 'GET'):
    connection = http.client.HTTPConnection(endpoint.split('//')[1], timeout=30)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response, body


def test_byte_ranges_and_refusals(releases):
    weights = (ROOT / 'releases' / REPO_ID / 'model.safetensors').read_bytes()
    url = f'/{REPO_ID}/resolve/main/model.safetensors'
    with HubServer(releases) as server:
        for asked, expected in [('bytes=10-19', weights[10:20]), ('bytes=-5', weights[-5:]),
                                (f'bytes={len(weights) - 3}-', weights[-3:]),
                                (f'bytes=0-{len(weights) + 100}', weights)]:
            response, body = _get(server.endpoint, url, {'Range': asked})
            assert (response.status, body) == (206, expected), asked
            assert response.getheader('Content-Range').endswith(f'/{len(weights)}')
        response, _ = _get(server.endpoint, url, {'Range': f'bytes={len(weights)}-'})
        assert response.status == 416
        response, body = _get(server.endpoint, url, method='HEAD')
        assert response.status == 200 and body == b'' and int(response.getheader('Content-Length')) == len(weights)
        assert response.getheader('X-Linked-Etag') == f'"{hashlib.sha256(weights).hexdigest()}"'
        for climbing in ('/timm-spa/resnet18_spa.cifar10/resolve/main/..%2f..%2f..%2fetc%2fpasswd',
                         '/timm-spa/../../etc/passwd', '/api/models/timm-spa/..%2F..%2Fetc'):
            response, body = _get(server.endpoint, climbing)
            assert (response.status, response.getheader('X-Error-Code')) == (404, 'EntryNotFound'), climbing
            assert b'root:' not in body
        response, _ = _get(server.endpoint, '/api/spaces/timm-spa/x')
        assert response.status == 404 and 'not a Hub call this server answers' in response.getheader(
            'X-Error-Message')


def test_a_port_taken_after_the_check_is_named_and_leaves_nothing_open(releases):
    """`hub serve` checks the port before it loads torch; one taken meanwhile gets the same line from the server."""
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = HubServer(releases, port=port)
        with pytest.raises(ServeError, match=f'port {port} on 127.0.0.1 is in use'):
            server.__enter__()
    assert server.server is None and server.served == {}


def test_a_release_replaced_or_rewritten_while_served(tmp_path):
    """Replaced by a new folder (as `hub push --replace` installs one): the started server keeps serving what it
    hashed. Rewritten in place: refused with a message, never served under the old hash."""
    releases = tmp_path / 'releases'
    shutil.copytree(ROOT / 'releases' / REPO_ID, releases / REPO_ID)
    folder = releases / REPO_ID
    config = (folder / 'config.json').read_bytes()
    with HubServer({REPO_ID: read_repository(folder)}) as server:
        moved = folder.with_name('old')
        folder.rename(moved)
        shutil.copytree(moved, folder)
        (folder / 'config.json').write_text('{}')
        response, body = _get(server.endpoint, f'/{REPO_ID}/resolve/main/config.json')
        assert (response.status, body) == (200, config)
        with open(moved / 'config.json', 'r+b') as f:  # the served file itself, rewritten in place
            f.write(b'{"x"')
        response, _ = _get(server.endpoint, f'/{REPO_ID}/resolve/main/config.json')
        assert response.status == 404 and 'rewritten in place' in response.getheader('X-Error-Message')
