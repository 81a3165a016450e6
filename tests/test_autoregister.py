"""The start-up hook (`timm_spa_autoregister.pth`, installed with the package): the models are registered whenever
timm is executed, however it is looked up or imported first, in fresh interpreters of this environment."""
import os
import subprocess
import sys

import pytest
from conftest import ROOT

REGISTERED = "print('resnet18_spa' in timm.list_models(), 'timm_spa' in sys.modules)"


def _python(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != 'TIMM_SPA_NO_AUTOREGISTER'}
    return subprocess.run([sys.executable, '-c', code], env=dict(environ, **env), capture_output=True, text=True,
                          timeout=300, cwd=ROOT / 'tests')


def test_the_hook_is_installed_here_and_imports_nothing_heavy():
    done = _python("import sys; print(sorted(m for m in ('torch', 'timm', 'timm_spa', '_timm_spa_autoregister') "
                   "if m in sys.modules))")
    assert done.stdout.strip() == "['_timm_spa_autoregister']", 'pip install -e . installs the hook: ' + done.stderr


@pytest.mark.parametrize('first', [
    "import importlib.util; importlib.util.find_spec('timm'); import timm",  # transformers' is_timm_available
    "import importlib.util; [importlib.util.find_spec('timm') for _ in range(3)]; import timm",
    "import importlib.util, importlib; importlib.util.find_spec('timm'); timm = importlib.import_module('timm')",
    "timm = __import__('timm')",
    "import importlib.util; importlib.util.find_spec('timm.models'); import timm.models; import timm",
    "from transformers.utils import is_timm_available; assert is_timm_available(); import timm",
    "import timm_spa; import timm",  # the hook runs while timm_spa.models is still being imported
    "import timm_spa.models.cifar_resnet; import timm",
], ids=['find_spec', 'find_spec-3x', 'import_module', '__import__', 'submodule', 'transformers-probe', 'timm_spa-first',
        'cifar_resnet-first'])
def test_models_register_after_probes(first):
    """Registered once, whatever comes first: a second registration is timm's 'Overwriting ... in registry'
    warning, once per model."""
    if 'transformers' in first:
        pytest.importorskip('transformers')
    done = _python(f'import sys; {first}; {REGISTERED}')
    assert done.stdout.split() == ['True', 'True'], done.stderr
    assert 'Overwriting' not in done.stderr, done.stderr


@pytest.mark.parametrize('deleted', ["m.startswith('timm')", "m == 'timm' or m.startswith('timm.')"],
                         ids=['timm-and-timm_spa', 'timm-only'])
def test_timm_imported_again_after_its_modules_were_deleted_registers_again(deleted):
    """A program that deletes timm's modules (and ours, or not) and imports timm again gets a new, empty registry:
    the hook registers the models there too."""
    done = _python('import sys, timm; assert "resnet18_spa" in timm.list_models(); '
                   f'[sys.modules.pop(m) for m in [m for m in sys.modules if {deleted}]]; '
                   'import timm; ' + REGISTERED)
    assert done.stdout.split() == ['True', 'True'], done.stderr


def test_a_probe_alone_imports_nothing():
    done = _python("import importlib.util, sys; assert importlib.util.find_spec('timm') is not None; "
                   "print(sorted(m for m in ('torch', 'timm', 'timm_spa') if m in sys.modules))")
    assert done.stdout.strip() == '[]', done.stderr


def test_timm_imported_before_the_hook_is_installed_registers_at_once():
    """What another start-up file that imports timm first leads to: install() finds timm in sys.modules and
    registers the models right away (torch is loaded by then, so it costs nothing the program did not pay)."""
    done = _python('import os, sys, timm; assert "resnet18_spa" not in timm.list_models(); '
                   'del os.environ["TIMM_SPA_NO_AUTOREGISTER"]; '
                   'import _timm_spa_autoregister as hook; hook.install(); ' + REGISTERED,
                   TIMM_SPA_NO_AUTOREGISTER='1')  # no hook at start-up: timm comes first
    assert done.stdout.split() == ['True', 'True'], done.stderr


def test_opt_out_still_holds():
    done = _python('import sys, timm; ' + REGISTERED, TIMM_SPA_NO_AUTOREGISTER='1')
    assert done.stdout.split() == ['False', 'False'], done.stderr


def test_pth_line_is_silent_when_its_module_is_gone(tmp_path):
    """The .pth stays when `_timm_spa_autoregister.py` is deleted by hand: every Python start must stay silent."""
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'timm_spa_autoregister.pth').write_text((ROOT / 'autoregister' / 'timm_spa_autoregister.pth.in')
                                                    .read_text())
    done = subprocess.run([sys.executable, '-S', '-c', f'import site; site.addsitedir({str(site)!r}); print("ok")'],
                          capture_output=True, text=True, timeout=60)
    assert (done.stdout.strip(), done.stderr) == ('ok', '')
