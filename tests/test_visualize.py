"""Capturing attention internals, and the pictures made from them."""
import json
import re

import numpy as np
import pytest
import timm
import torch
from conftest import ROOT, activate_attention, slow_at_depth_50, write_image_folders
from PIL import Image

from timm_spa.capture import attention_blocks, capture_attention, position_to_image
from timm_spa.layers import SalientPositionsAttention, select_salient_positions
from visualize.__main__ import main as visualize_main
from visualize.__main__ import parse_args, request
from visualize.figure import draw_attention
from visualize.render import figure, top_columns


def visualize(args):
    return draw_attention(request(args))


def _refused(capsys, argv, code=1):
    with pytest.raises(SystemExit) as exit_info:
        visualize_main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    return err


@pytest.mark.parametrize('name', ['resnet18_spa', 'resnet18_nl', 'resnet18_gc', 'resnet50_spa'])
def test_capture_does_not_change_outputs(name):
    model = activate_attention(timm.create_model(name, attn_stages=(2, 3))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        with capture_attention(model) as captures:
            captured = model(x)
        after = model(x)  # hooks are gone afterwards
    assert torch.equal(plain, captured) and torch.equal(plain, after)
    expected = ['layer2.2', 'layer3.2'] if '18' in name else ['layer2.4', 'layer3.6']  # after each stage's last block
    assert [c.name for c in captures] == expected


@pytest.mark.parametrize('stage', [1, 2, 3, 4])
def test_salient_positions_are_the_selection_and_map_to_image_pixels(stage):
    model = activate_attention(timm.create_model('resnet18_spa', attn_stages=(stage,), attn_kwargs=dict(k=3))).eval()
    block = getattr(model, f'layer{stage}')[-1]
    inputs = []
    handle = block.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), capture_attention(model) as captures:
        model(x)
    handle.remove()
    (capture,) = captures
    with torch.no_grad():
        _, indices, saliency = select_salient_positions(block.qv(inputs[0])[:, :block.rd_channels], 3)
    assert sorted(capture.arrays['indices'][0].tolist()) == sorted(indices[0].tolist())
    H, W = capture.feature_size
    assert (H, W) == (32 >> (stage - 1), 32 >> (stage - 1))
    stride = model.feature_info[stage]['reduction']
    assert capture.stride((32, 32)) == (stride, stride)
    pixels = capture.salient_pixels((32, 32))
    for b in range(2):
        for slot, flat in enumerate(capture.arrays['indices'][b]):
            row, col = divmod(int(flat), W)
            assert tuple(capture.arrays['positions'][b, slot]) == (row, col)
            assert tuple(pixels[b, slot]) == ((row + 0.5) * stride, (col + 0.5) * stride)
    np.testing.assert_allclose(capture.arrays['saliency'], saliency.reshape(2, H, W).numpy(), rtol=1e-6)
    assert capture.arrays['affinity'].shape == (2, block.rd_channels, block.rd_channels)


def _rebuilt_output(block, kind, x, arrays):
    """The block's output from the captured attention and the block's own layers, as each paper defines it."""
    B, C, H, W = x.shape
    if kind == 'spa':  # X + BN(W (A V))
        value = block.qv(x)[:, block.rd_channels:].flatten(2)
        mixed = torch.bmm(torch.from_numpy(arrays['affinity']), value).reshape(B, -1, H, W)
        return x + block.norm(block.proj(mixed))
    if kind == 'nl':  # X + BN(Wz (A g(X)))
        g = block.g(x).flatten(2).transpose(1, 2)
        mixed = torch.bmm(torch.from_numpy(arrays['affinity']), g).transpose(1, 2).reshape(B, -1, H, W)
        return x + block.norm(block.z(mixed))
    context = (x * torch.from_numpy(arrays['mask']).unsqueeze(1)).sum(dim=(2, 3), keepdim=True)  # GC
    return x + block.mlp_add(context)


@pytest.mark.parametrize('name', ['resnet18_spa', 'resnet18_nl', 'resnet18_gc', 'resnet50_spa'])
def test_captured_attention_is_what_the_forward_used(name):
    """Rebuilding each block's output from what was captured gives the output the block computed: if timm (or
    we) change a block's forward, the hooks read the wrong tensors and this fails."""
    model = activate_attention(timm.create_model(name, attn_stages=(2, 4))).eval()
    seen = {}
    handles = [block.register_forward_hook(lambda m, i, o, name=block_name: seen.__setitem__(name, (i[0], o)))
               for block_name, block, _ in attention_blocks(model)]
    with torch.no_grad(), capture_attention(model) as captures:
        model(torch.randn(2, 3, 32, 32))
        for capture, (_, block, kind) in zip(captures, attention_blocks(model), strict=True):
            x, out = seen[capture.name]
            torch.testing.assert_close(_rebuilt_output(block, kind, x, capture.arrays), out, rtol=1e-4, atol=1e-4)
    for handle in handles:
        handle.remove()


def test_position_to_image_for_non_square_strides():
    assert position_to_image(np.array([[0, 0], [2, 5]]), (4.0, 2.5)).tolist() == [[2.0, 1.25], [10.0, 13.75]]


def test_nl_and_gc_arrays_match_their_definitions():
    model = activate_attention(timm.create_model('resnet18_nl', attn_stages=(4,))).eval()
    with torch.no_grad(), capture_attention(model) as captures:
        model(torch.randn(1, 3, 32, 32))
    affinity = captures[0].arrays['affinity']
    assert affinity.shape == (1, 16, 16)
    np.testing.assert_allclose(affinity.sum(-1), 1.0, rtol=1e-5)
    model = activate_attention(timm.create_model('resnet18_gc')).eval()
    with torch.no_grad(), capture_attention(model) as captures:
        model(torch.randn(1, 3, 32, 32))
    mask = captures[0].arrays['mask']
    assert mask.shape == (1, 8, 8) and mask.sum() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize('name,stages', [slow_at_depth_50(name, stages) for name, stages in [
    ('resnet18_spa', '(1,)'), ('resnet18_spa', '(2, 4)'), ('resnet18_nl', '(3,)'), ('resnet50_nl', '(4,)'),
    ('resnet18_gc', '(1, 3)'), ('resnet50_gc', '(3,)'), ('resnet50_spa', '(3,)')]])
def test_cli_on_a_data_set_split(tmp_path, name, stages):
    data = write_image_folders(tmp_path / 'data', classes=4, n_train=16, n_test=8)
    out = tmp_path / 'fig.png'
    result = visualize(parse_args(['--model', name, '--model-kwargs', f'attn_stages={stages}', '--dataset',
                                   'folder', '--data-dir', str(data), '--val-size', '4', '--num-images', '3',
                                   '--output', str(out)]))
    assert out.stat().st_size > 0
    saved = np.load(out.with_suffix('.npz'))
    assert saved['images'].shape == (3, 32, 32, 3) and saved['probabilities'].shape == (3, 4)
    assert set(saved['labels'].tolist()) <= {0, 1, 2, 3}
    for capture in result['captures']:
        for key, value in capture.arrays.items():
            np.testing.assert_array_equal(saved[f'{capture.name}/{key}'], value)


def test_cli_on_image_files_with_queries(tmp_path):
    files = []
    for i in range(2):
        path = tmp_path / f'img{i}.png'
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    out = tmp_path / 'nl.png'
    result = visualize(parse_args(['--model', 'resnet18_nl', '--images', *files, '--query', '0,0', '--query', '7,7',
                                   '--output', str(out)]))
    assert result['queries'] == [(0, 0), (7, 7)] and result['labels'] == [None, None]
    assert out.is_file() and result['images'].shape == (2, 32, 32, 3)


def test_model_without_attention_blocks(tmp_path, capsys):
    Image.new('RGB', (32, 32)).save(tmp_path / 'a.png')
    err = _refused(capsys, ['--model', 'resnet18_cifar', '--images', str(tmp_path / 'a.png'),
                            '--output', str(tmp_path / 'x.png')])
    assert re.search(r'has no SPA, non-local or global-context block.*resnet18_spa', err)


def test_unreadable_image_is_named(tmp_path, capsys):
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'not an image')
    err = _refused(capsys, ['--model', 'resnet18_spa', '--images', str(bad), '--output', str(tmp_path / 'x.png')])
    assert re.search(r'cannot read image .*broken\.png', err)


def test_query_outside_the_feature_map(tmp_path, capsys):
    Image.new('RGB', (32, 32)).save(tmp_path / 'a.png')
    err = _refused(capsys, ['--model', 'resnet18_nl', '--images', str(tmp_path / 'a.png'), '--query', '8,2',
                            '--output', str(tmp_path / 'x.png')])
    assert 'query position (8, 2) is outside the 8x8 feature map of block layer3.2' in err
    err = _refused(capsys, ['--model', 'resnet18_nl', '--images', str(tmp_path / 'a.png'), '--query', '8',
                            '--output', str(tmp_path / 'x.png')], code=2)
    assert "--query '8' must be ROW,COL" in err


def test_number_of_images_must_be_positive(tmp_path, capsys):
    Image.new('RGB', (32, 32)).save(tmp_path / 'a.png')
    err = _refused(capsys, ['--model', 'resnet18_spa', '--dataset', 'digits', '--num-images', '0',
                            '--output', str(tmp_path / 'x.png')], code=2)
    assert '--num-images: 0 must be at least 1' in err


def test_run_directory_gives_model_weights_and_data(tiny_run, tmp_path):
    result = visualize(parse_args(['--run', str(tiny_run), '--num-images', '2', '--output', str(tmp_path / 'f.png')]))
    assert result['images'].shape == (2, 16, 16, 3) and len(result['class_names']) == 4
    assert all(label in range(4) for label in result['labels'])


def test_spa_block_type_is_captured_for_any_subclass():
    class LoggedSPA(SalientPositionsAttention):  # what a user's own variant of the block looks like
        pass
    assert [k for _, _, k in attention_blocks(LoggedSPA(8))] == ['spa']


def test_affinity_panels_show_the_columns_that_carry_the_attention():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 64))
    logits[:, [5, 9]] += 4  # two columns every row attends to
    matrix = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    top, share = top_columns(matrix, count=8)
    means = matrix.mean(axis=0)
    assert set(top[:2]) == {5, 9} and list(top) == sorted(range(64), key=lambda c: -means[c])[:8]
    assert share == pytest.approx(sum(means[c] for c in top) / means.sum())


@pytest.mark.slow
def test_figure_title_panel_titles_and_colour_bars_do_not_overlap(tmp_path):
    """The demo's ten images: with tight_layout the figure title ran into the first row's panel titles."""
    images = sorted(str(p) for p in (ROOT / 'docs' / 'demo-images').glob('*.png'))
    result = visualize(parse_args(['--model', 'resnet18_spa', '--images', *images, '--output',
                                   str(tmp_path / 'f.png')]))
    fig = figure(result)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(images) == 10 and boxes and not any(title.overlaps(box) for box in boxes)
    panels_and_bars = [ax.get_window_extent(renderer) for ax in fig.axes]
    assert len(panels_and_bars) == 10 * 3 + 10  # image, saliency, affinity per row, and a colour bar per affinity
    assert not any(a.overlaps(b) for i, a in enumerate(panels_and_bars) for b in panels_and_bars[i + 1:])


def test_between_image_share_against_a_hand_computation():
    """Entries (1, 2), (3, 4), (5, 6) over three images: each entry's variance across images 8/3, summed 16/3;
    all six values around their mean 3.5: 17.5/3; share 16/17.5. Fed in two batches."""
    from visualize.block_stats import EntryMoments
    moments = EntryMoments()
    moments.add(np.array([[1.0, 2.0]]))
    moments.add(np.array([[3.0, 4.0], [5.0, 6.0]]))
    assert moments.between_image_share() == pytest.approx(16 / 17.5)
    fixed = EntryMoments()
    fixed.add(np.tile(np.array([[0.1, 0.7, 0.2]]), (5, 1)))  # the same attention for every image
    assert fixed.between_image_share() == pytest.approx(0.0, abs=1e-12)


def test_block_stats_residual_ratio():
    """A fresh resnet18_spa's block is the identity (its last BatchNorm starts at zero): ratio 0; with that
    BatchNorm's weight set to 1 the ratio is positive, and the affinity varies across images."""
    from visualize.block_stats import block_stats
    torch.manual_seed(0)
    model = timm.create_model('resnet18_spa', num_classes=10).eval()
    batches = [(torch.randn(3, 3, 32, 32), None), (torch.randn(2, 3, 32, 32), None)]
    (row,) = block_stats(model, batches)
    assert (row['block'], row['kind'], row['images'], row['entries']) == ('layer3.2', 'spa', 5, 256 * 256)
    assert row['residual_ratio'] == 0.0 and 0 < row['between_image_share'] < 1
    bn = [m for m in model.layer3[2].modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    with torch.no_grad():
        bn.weight.fill_(1.0)
    assert block_stats(model, batches)[0]['residual_ratio'] > 0


def test_attention_maps_page_holds_the_saved_block_stats_of_the_current_releases():
    """The page's table is the saved result's, and that result covers every release with attention blocks, each
    measured on the weights it holds now (a release replaced since fails here: measure it again)."""
    from hub.releases import released_repositories
    from train.checkpoint import file_sha256
    from visualize.block_stats import table
    result = json.loads((ROOT / 'docs' / 'block-stats.json').read_text())
    assert table(result) in (ROOT / 'docs' / 'attention-maps.md').read_text()
    repos = {repo.name: repo for repo in released_repositories(ROOT / 'releases')}
    assert set(result) == {name for name, repo in repos.items() if repo.results.model_args['model'] != 'resnet18_cifar'}
    for name, rows in result.items():
        assert {row['weights_sha256'] for row in rows} == {file_sha256(repos[name].folder / 'model.safetensors')}, name


def test_block_stats_keep_earlier_rows_only_of_unchanged_weights(tmp_path, capsys):
    """Releases not measured now (no --data for them) keep their earlier rows while their weights are the same;
    rows of other weights are dropped, saying so."""
    from visualize.block_stats import main as block_stats_main
    saved = json.loads((ROOT / 'docs' / 'block-stats.json').read_text())
    stale = dict(saved, **{'resnet18_nl.cifar10': [dict(row, weights_sha256='0' * 64)
                                                   for row in saved['resnet18_nl.cifar10']]})
    output = tmp_path / 'stats.json'
    output.write_text(json.dumps(stale))
    block_stats_main([str(ROOT / 'releases'), '--output-json', str(output)])
    kept = json.loads(output.read_text())
    assert kept == {name: rows for name, rows in saved.items() if name != 'resnet18_nl.cifar10'}
    assert 'resnet18_nl.cifar10: its earlier rows are of other weights and are dropped' in capsys.readouterr().out
    for foreign in ('{"cut short": ', '[1, 2]', '{"a": "b"}'):  # cut short, or another program's JSON
        output.write_text(foreign)
        with pytest.raises(SystemExit):
            block_stats_main([str(ROOT / 'releases'), '--output-json', str(output)])
        assert 'is not an earlier result of this command' in capsys.readouterr().err
        assert output.read_text() == foreign
