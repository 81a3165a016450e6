"""`python -m hub serve` under load: N clients at once, each downloading every file of every release with
`hf_hub_download` into a fresh cache (what users get, bound by the client's own work) or with a plain HTTP GET
(what the server sends), on loopback.

    python -m benchmarks.hub_load [--releases releases/] [--clients 1 32] [--client hf http] [--output-json PATH]

One row per client count, each against a server started for it (so that its memory at start is its own): the
bytes and seconds of the downloads (from the first client's first request to the last one's last byte; each
client's interpreter start-up excluded), total and per-client MB/s, errors, files whose SHA-256 differs from the
release's, and the server's resident memory at start, at its peak and after the clients left (and, apart, while
`hub serve` checks the releases with torch and timm before it turns into the lean server). Nothing else
should run meanwhile (pause training with SIGSTOP).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

MAX_CLIENTS = 64
CLIENT = r'''
import hashlib, http.client, json, os, sys, time
from huggingface_hub import hf_hub_download
expected, kind, report = json.loads(sys.argv[1]), sys.argv[2], dict(bytes=0, errors=[], mismatches=[])

def hashed(chunks):
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()

def received(repo_id, name):  # the bytes as they arrive, hashed: the server's rate, no cache to write
    connection = http.client.HTTPConnection(os.environ['HF_ENDPOINT'].split('//')[1], timeout=300)
    connection.request('GET', f'/{repo_id}/resolve/main/{name}')
    response = connection.getresponse()
    if response.status != 200:
        raise OSError(f'HTTP {response.status}')
    try:
        return hashed(iter(lambda: response.read(1 << 20), b''))
    finally:
        connection.close()

def read_back(path):
    with open(path, 'rb') as f:
        return hashed(iter(lambda: f.read(1 << 20), b''))

sys.stdin.readline()  # start together
report['start'] = time.time()
done = {}
for key in expected:
    repo_id, name = key.split('::')
    try:
        done[key] = received(repo_id, name) if kind == 'http' else hf_hub_download(repo_id, name)
    except Exception as e:
        report['errors'].append(f'{key}: {type(e).__name__}: {e}')
report['end'] = time.time()
for key, value in done.items():
    report['bytes'] += expected[key][1]
    if (value if kind == 'http' else read_back(value)) != expected[key][0]:
        report['mismatches'].append(key)
print(json.dumps(report))
'''
CLIENTS = {'hf': 'hf_hub_download into a fresh cache, then read back and hashed',
           'http': 'a plain HTTP GET of each file, hashed as it arrives'}


def _rss_mib(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


class _Sampler(threading.Thread):
    """The server's resident memory every 20 ms, its peak kept."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self) -> None:
        while self.running:
            try:
                self.peak = max(self.peak, _rss_mib(self.pid))
            except OSError:  # between exec's steps, or gone
                pass
            time.sleep(0.02)


def expected_files(releases: Path) -> Dict[str, list]:
    """`ORG/NAME::FILE` -> [SHA-256, size] of every file the server publishes."""
    from hub.releases import released_repositories
    from hub.serve import by_layout
    from train.checkpoint import file_sha256
    return {f'{repo_id}::{path.relative_to(repo.folder)}': [file_sha256(path), path.stat().st_size]
            for repo_id, repo in by_layout(released_repositories(releases)).items() for path in repo.files()}


def load_row(releases: Path, clients: int, kind: str, expected: Dict[str, list], timeout: float) -> dict:
    server = subprocess.Popen([sys.executable, '-m', 'hub', 'serve', str(releases)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    checking = _Sampler(server.pid)  # the releases' check, before the process turns into the lean server
    checking.start()
    endpoint = None
    for line in server.stdout:
        if line.startswith('export HF_ENDPOINT='):
            endpoint = line.split('=', 1)[1].strip()
            break
    if endpoint is None:
        raise RuntimeError(f'hub serve {releases} exited with {server.wait()} before serving')
    checking.running = False
    start_rss = _rss_mib(server.pid)
    sampler = _Sampler(server.pid)
    sampler.start()
    with tempfile.TemporaryDirectory(prefix='hub-load-') as root:
        procs = []
        for i in range(clients):
            env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=f'{root}/client{i}', HF_HUB_DISABLE_TELEMETRY='1',
                       HF_HUB_DISABLE_PROGRESS_BARS='1')
            env.pop('HF_HUB_OFFLINE', None)
            procs.append(subprocess.Popen([sys.executable, '-c', CLIENT, json.dumps(expected), kind], env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        time.sleep(0.5 + 0.3 * clients)  # their imports, before the clock starts
        for proc in procs:
            proc.stdin.write('go\n')
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            lines = out.strip().splitlines()
            reports.append(json.loads(lines[-1]) if proc.returncode == 0 and lines else
                           dict(bytes=0, errors=[f'client exited {proc.returncode}: {err.strip()[-300:]}'],
                                mismatches=[], start=float('nan'), end=float('nan')))
    time.sleep(1.0)
    sampler.running = False
    end_rss = _rss_mib(server.pid)
    server.terminate()
    server.wait(timeout=30)
    done = [r for r in reports if r['bytes']]
    wall = max(r['end'] for r in done) - min(r['start'] for r in done) if done else float('nan')
    total = sum(r['bytes'] for r in reports)
    per_client = [r['bytes'] / 1e6 / (r['end'] - r['start']) for r in done]
    return dict(client=kind, clients=clients, files=len(expected) * clients, megabytes=total / 1e6, seconds=wall,
                total_mb_s=total / 1e6 / wall, client_mb_s_median=statistics.median(per_client) if per_client else 0,
                errors=sum(len(r['errors']) for r in reports), mismatches=sum(len(r['mismatches']) for r in reports),
                rss_check_peak_mib=checking.peak, rss_start_mib=start_rss, rss_peak_mib=max(sampler.peak, start_rss),
                rss_end_mib=end_rss,
                first_errors=[e for r in reports for e in r['errors']][:3])


def table(rows: List[dict]) -> str:
    lines = ['| client | clients | files | MB | seconds | total MB/s | per client MB/s (median) | errors '
             '| SHA-256 mismatches | server RSS MiB: start / peak / after | RSS MiB while checking |',
             '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|']
    for r in rows:
        lines.append(f"| {r['client']} | {r['clients']} | {r['files']} | {r['megabytes']:.0f} | {r['seconds']:.2f} | "
                     f"{r['total_mb_s']:.0f} | {r['client_mb_s_median']:.0f} | {r['errors']} | {r['mismatches']} | "
                     f"{r['rss_start_mib']:.0f} / {r['rss_peak_mib']:.0f} / {r['rss_end_mib']:.0f} | "
                     f"{r['rss_check_peak_mib']:.0f} |")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--releases', default=str(Path(__file__).resolve().parents[1] / 'releases'))
    parser.add_argument('--clients', type=int, nargs='+', default=[1, 32])
    parser.add_argument('--client', choices=sorted(CLIENTS), nargs='+', default=['hf', 'http'],
                        help='; '.join(f'{k}: {v}' for k, v in CLIENTS.items()))
    parser.add_argument('--timeout', type=float, default=600, help='seconds a client may take (default 600)')
    parser.add_argument('--output-json', default=None)
    args = parser.parse_args(argv)
    bad = [n for n in args.clients if not 1 <= n <= MAX_CLIENTS]
    if bad:
        parser.error(f'--clients {bad[0]}: give 1 to {MAX_CLIENTS} clients')
    expected = expected_files(Path(args.releases))
    rows = [load_row(Path(args.releases), n, kind, expected, args.timeout) for kind in args.client
            for n in args.clients]
    print(table(rows))
    for row in rows:
        for error in row['first_errors']:
            print(f"{row['client']}, {row['clients']} clients: {error}")
    if args.output_json:
        import torch

        from train.report import hardware
        Path(args.output_json).write_text(json.dumps(dict(rows=rows, hardware=hardware(torch.device('cpu'), 1)),
                                                     indent=2) + '\n')
    return rows


if __name__ == '__main__':
    main()
