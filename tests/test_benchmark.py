"""The cost benchmark runs end to end in its tiny configuration and reports every row."""
import hashlib
import json

import pytest
import torch
from conftest import ROOT

from benchmarks import attention_cost, train_throughput
from timm_spa.layers import attention_kernel


def test_cost_page_shows_the_measured_tables():
    """docs/cost.md's tables are the last full run's, as the benchmark wrote them (no number typed by hand)."""
    results = ROOT / 'benchmarks' / 'results'
    assert {'attention_cost_cpu.md', 'attention_cost_cuda.md'} <= {md.name for md in results.glob('*.md')}
    for md in sorted(results.glob('attention_cost_*.md')):
        saved = json.loads(md.with_suffix('.json').read_text())
        assert md.read_text().strip() == attention_cost.markdown_tables(saved).strip(), md
        assert md.read_text().strip() in (ROOT / 'docs' / 'cost.md').read_text(), f'paste {md.name} into docs/cost.md'
        if saved.get('scaling'):  # the plot is of the scaling table; a run without it has none
            assert md.with_suffix('.png').stat().st_size > 0
    for md in sorted(results.glob('train_throughput_*.md')):
        context = md.read_text().split('\n', 1)[0]
        saved = json.loads(md.with_suffix('.json').read_text())
        assert md.read_text().strip() == train_throughput.table(saved['rows'], context), md
        assert md.read_text().strip() in (ROOT / 'docs' / 'cost.md').read_text(), f'paste {md.name} into docs/cost.md'


def test_auto_kernel_rule_agrees_with_every_committed_measurement():
    """On each device type measured (two CPUs, one GPU), attn_impl='auto' picks at every row a kernel within 40%
    of the faster one's time ('never fused' is 4x off at C' 512, n 4 on CPU; 'always fused' 2x at C' = n = 256).
    Rows near n = C' / 4 flip between runs of one machine, so the bound is not tighter."""
    measured = [json.loads(path.read_text()) for path in sorted((ROOT / 'benchmarks' / 'results').glob('*.json'))]
    measured = [report for report in measured if report.get('kernels')]
    assert {report['meta']['device'] for report in measured} == {'cpu', 'cuda'} and len(measured) >= 3
    for report in measured:
        for row in report['kernels']:
            chosen = attention_kernel(row['positions'], row['channels'], 'auto', report['meta']['device'])
            fastest = min(row['fused_ms'], row['materialised_ms'])
            assert row[f'{chosen}_ms'] <= 1.4 * fastest, (report['meta']['device_name'], row)


def test_peak_memory_is_measured_from_allocations():
    def allocate():
        a = torch.ones(1 << 20, dtype=torch.uint8)  # 1 MiB live
        b = torch.ones(2 << 20, dtype=torch.uint8)  # + 2 MiB at the peak
        del a, b
    peak = attention_cost.peak_extra_bytes(allocate, torch.device('cpu'))
    assert 3 << 20 <= peak < 4 << 20


def test_times_are_medians_of_interleaved_rounds(monkeypatch):
    """Every candidate runs `warmup` untimed calls, then one timed call per round, in turn; the median of the
    timed calls is reported. A fake clock that each call advances by a known amount checks exactly that."""
    clock, calls = [0.0], []
    durations = {'a': iter([9.0, 9.0, 3.0, 1.0, 2.0]), 'b': iter([9.0, 9.0, 10.0, 30.0, 20.0])}

    def fn(name):
        calls.append(name)
        clock[0] += next(durations[name])

    monkeypatch.setattr(attention_cost.time, 'perf_counter', lambda: clock[0])
    times = attention_cost.median_times({'a': lambda: fn('a'), 'b': lambda: fn('b')}, repeats=3, warmup=2,
                                        device=torch.device('cpu'))
    assert times == {'a': 2.0, 'b': 20.0}
    assert calls == ['a', 'b'] * 5


@pytest.mark.slow
def test_tiny_run_has_every_row(tmp_path):
    report = attention_cost.main(['--tiny', '--output', str(tmp_path)])
    saved = json.loads((tmp_path / 'attention_cost_cpu_tiny.json').read_text())
    assert saved['block'] == json.loads(json.dumps(report['block']))
    assert (tmp_path / 'attention_cost_cpu_tiny.png').stat().st_size > 0
    assert '### Block' in (tmp_path / 'attention_cost_cpu_tiny.md').read_text()

    block = {(r['channels'], r['height'], r['block']): r for r in saved['block']}
    assert set(block) == {(c, h, b) for c, h, _ in attention_cost.BLOCK_SHAPES for b in attention_cost.BLOCKS}
    for row in block.values():
        assert row['time_ms'] > 0 and row['peak_extra_mib'] > 0
    for c, h, _ in attention_cost.BLOCK_SHAPES:  # each ratio is the quotient of the rows measured beside it
        spa, naive, nl = block[(c, h, 'spa')], block[(c, h, 'spa_naive')], block[(c, h, 'nl')]
        assert spa['time_vs_spa_naive'] == pytest.approx(spa['time_ms'] / naive['time_ms'])
        assert spa['time_vs_nl'] == pytest.approx(spa['time_ms'] / nl['time_ms'])
        assert spa['memory_vs_nl'] == pytest.approx(spa['peak_extra_mib'] / nl['peak_extra_mib'])
    table = (tmp_path / 'attention_cost_cpu_tiny.md').read_text()
    assert all(f"| {r['channels']}x{r['height']}x{r['width']} | {r['block']} | {r['time_ms']:.2f} |" in table
               for r in saved['block'])

    scaling = {(r['height'], r['block']) for r in saved['scaling']}
    assert scaling == {(s, b) for s in (8, 16, 32) for b in ('spa', 'nl')}

    models = {(r['model'], r['size']) for r in saved['models']}
    assert models == {(m, s) for m in attention_cost.MODELS for s in attention_cost.MODEL_SIZES}
    rates = {(r['model'], r['size']): r for r in saved['models']}
    for (model, size), row in rates.items():
        base = rates[(model.split('_')[0] + '_cifar', size)]
        assert row['train_time_vs_baseline'] == pytest.approx(base['train_img_s'] / row['train_img_s'])
        assert row['infer_time_vs_baseline'] == pytest.approx(base['infer_img_s'] / row['infer_img_s'])
    assert saved['meta']['torch'] == torch.__version__

    kernels = {(r['channels'], r['positions']): r for r in saved['kernels']}
    assert set(kernels) == {(c, n) for c in attention_cost.KERNEL_CHANNELS for n in attention_cost.KERNEL_POSITIONS
                            if n <= c}
    for (channels, positions), row in kernels.items():
        assert row['materialised_ms'] > 0 and row['fused_ms'] > 0
        assert row['materialised_peak_extra_mib'] > 0 and row['fused_peak_extra_mib'] > 0
        assert row['layer_uses'] == ('fused' if 4 * positions < channels else 'materialised')
    assert "### SPA's attention kernels" in (tmp_path / 'attention_cost_cpu_tiny.md').read_text()


# the released block's constructor and attribute names (likyoo/SPANet, SPANet.py), the paper's computation written
# here: CI never holds the authors' file, which `--released` reads at run time
STAND_IN = """
import torch
from torch import nn


class SPANet(nn.Module):
    def __init__(self, in_channels, inter_channels=None, sub_sample=False, adaptive=False, k=8):
        super().__init__()
        self.k = k
        self.g = nn.Conv2d(in_channels, inter_channels, 1)
        self.theta = nn.Conv2d(in_channels, inter_channels, 1)
        self.W = nn.Sequential(nn.Conv2d(inter_channels, in_channels, 1), nn.BatchNorm2d(in_channels))

    def forward(self, x):
        q = self.theta(x).flatten(2)
        idx = q.pow(2).sum(1).topk(self.k, dim=-1).indices
        keys = q.gather(2, idx[:, None].expand(-1, q.shape[1], -1))
        attn = torch.softmax(keys @ keys.transpose(1, 2) * SCALE, dim=-1)
        return x + self.W((attn @ self.g(x).flatten(2)).view(x.shape[0], -1, *x.shape[2:]))
"""


def test_released_table_times_the_authors_block_beside_ours(tmp_path):
    path = tmp_path / 'SPANet.py'
    path.write_text(STAND_IN.replace('SCALE', '1.0'))
    report = attention_cost.main(['--tiny', '--tables', 'released', '--released', str(path), '--output', str(tmp_path)])
    assert '--released SPANet.py ' in report['meta']['command']  # no machine's path in a committed report
    assert report['meta']['released_sha256'] == hashlib.sha256(path.read_bytes()).hexdigest()
    rows = {(r['channels'], r['height'], r['block']): r for r in report['released']}
    kinds = ('spa', 'spa_naive', 'spa_released')
    assert set(rows) == {(c, h, kind) for c, h, _ in attention_cost.RESNET18_SHAPES for kind in kinds}
    for c, h, _ in attention_cost.RESNET18_SHAPES:
        ours, theirs = rows[(c, h, 'spa')], rows[(c, h, 'spa_released')]
        assert ours['time_vs_spa_released'] == pytest.approx(ours['time_ms'] / theirs['time_ms'])
    table = (tmp_path / 'attention_cost_cpu_released_tiny.md').read_text()
    assert table.startswith("### Our block against the authors' released block")
    assert f"| 512x4x4 | {rows[(512, 4, 'spa')]['time_ms']:.2f} |" in table
    assert not list(tmp_path.glob('attention_cost_cpu_tiny.*'))  # a partial run never writes a full run's files
    profiled = rows[(512, 4, 'spa_released')]['profile_ms']  # both blocks by operation, below the times
    assert "### Where the time goes" in table and 'profile_ms' not in rows[(512, 4, 'spa_naive')]
    assert f"| 512x4x4 | authors' | {profiled['1x1 convolutions']:.2f} |" in table


def test_operation_profile_puts_each_operation_in_its_group():
    x, weight = torch.randn(2, 8, 6, 6), torch.randn(8, 8, 1, 1)
    a, b = torch.randn(4, 16, 16), torch.randn(4, 16, 16)
    only_conv = attention_cost.operation_profile(lambda: torch.nn.functional.conv2d(x, weight))
    assert only_conv['1x1 convolutions'] > 0
    assert only_conv['matrix products'] == only_conv['softmax'] == only_conv['batch norm'] == 0
    mixed = attention_cost.operation_profile(lambda: (
        torch.bmm(a, b), a.softmax(-1), torch.nn.functional.batch_norm(x, None, None, training=True), x.cos()))
    assert mixed['1x1 convolutions'] == 0
    assert all(mixed[group] > 0 for group in ('matrix products', 'softmax', 'batch norm', 'other'))


def test_released_table_refuses_a_block_that_computes_something_else(tmp_path):
    path = tmp_path / 'SPANet.py'
    path.write_text(STAND_IN.replace('SCALE', '0.5'))  # another logit scale: not the same function
    with pytest.raises(AssertionError, match='Tensor-likes are not close'):
        attention_cost.main(['--tiny', '--tables', 'released', '--released', str(path), '--output', str(tmp_path)])

@pytest.mark.parametrize('content,says', [
    (None, 'not a file; give the SPANet.py of git clone https://github.com/likyoo/SPANet'),
    ('import torch\nclass Other(torch.nn.Module): pass\n', 'defines no SPANet module; give the SPANet.py'),
    ('def broken(:\n', 'the file does not run (SyntaxError'),
    ('import not_a_module_anywhere\n', 'the file does not run (ModuleNotFoundError'),
])
def test_released_table_refuses_a_wrong_file_before_measuring_anything(tmp_path, capsys, content, says):
    path = tmp_path / 'given' / 'SPANet.py'
    if content is not None:
        path.parent.mkdir()
        path.write_text(content)
    output = tmp_path / 'out'
    with pytest.raises(SystemExit) as exit_info:
        attention_cost.main(['--tiny', '--released', str(path), '--output', str(output)])
    assert says in f'{exit_info.value.code} {capsys.readouterr().err}'
    assert not output.exists()


def test_released_table_alone_needs_the_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        attention_cost.main(['--tiny', '--tables', 'released', '--output', str(tmp_path / 'out')])
    assert '--tables released needs --released PATH' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_naive_baseline_computes_the_same_function():
    # the benchmark asserts this per shape; here both of our block's attention kernels are covered
    for channels, size in ((16, 8), (64, 4), (128, 4)):  # n > C folded, C / 4 <= n <= C materialised, n < C / 4 fused
        spa = attention_cost.make_block('spa', channels).eval()
        naive = attention_cost.make_block('spa_naive', channels, spa=spa).eval()
        x = torch.randn(2, channels, size, size)
        with torch.no_grad():
            torch.testing.assert_close(spa(x), naive(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_throughput_runs_the_real_pipeline(folder_data, tmp_path):
    rows = train_throughput.main(['--dataset', 'folder', '--data-dir', str(folder_data), '--models',
                                  'resnet18_cifar', 'resnet18_spa', '-b', '4', '--steps', '2', '--warmup', '1',
                                  '-j', '0', '--aa', 'rand-m9-mstd0.5', '--reprob', '0.25',
                                  '--output-json', str(tmp_path / 'rates.json')])
    assert [r['model'] for r in rows] == ['resnet18_cifar', 'resnet18_spa']
    assert all(r['img_s'] > 0 and 0 <= r['data_share'] < 1 for r in rows)
    assert json.loads((tmp_path / 'rates.json').read_text())['rows'] == rows
    assert ', --aa rand-m9-mstd0.5, --reprob 0.25, batch 4,' in (tmp_path / 'rates.md').read_text().split('\n')[0]


@pytest.mark.slow
def test_train_throughput_compares_speed_settings_side_by_side(folder_data, tmp_path, capsys):
    """Memory format and torch.compile, each setting a row of one table, which is also written as .md."""
    from train.precision import cpu_flags, describe_flags
    settings = ['contiguous', 'channels-last+compiled']  # one compiles: both flags' code paths, half the time
    rows = train_throughput.main(['--dataset', 'folder', '--data-dir', str(folder_data), '--models', 'test_resnet',
                                  '--settings', *settings, 'contiguous', '-b', '4', '--steps', '1', '--warmup', '1',
                                  '-j', '0', '--output-json', str(tmp_path / 'rates.json')])
    assert [r['setting'] for r in rows] == settings  # a setting given twice is measured once
    table = (tmp_path / 'rates.md').read_text().strip()
    assert table in capsys.readouterr().out
    lines = table.splitlines()
    assert describe_flags(cpu_flags()) in lines[0] and len(lines) == 4 + len(settings)
    assert lines[4].startswith('| test_resnet | contiguous |') and ' | 1.000x | ' in lines[4]
    ratio = float(lines[5].split(' | ')[3].rstrip('x'))
    assert ratio == pytest.approx(rows[0]['img_s'] / rows[1]['img_s'], abs=1e-3)
    with pytest.raises(SystemExit):
        train_throughput.parse_args(['--output-json', str(tmp_path / 'rates.md')])
