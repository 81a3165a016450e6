"""Register timm-spa's models with timm whenever timm is imported, without `import timm_spa`.

Run at interpreter start-up by `timm_spa_autoregister.pth` (installed at the root of site-packages).
It only puts a finder on `sys.meta_path`: no torch, no timm, nothing else is imported until the
program itself imports timm; then `timm_spa.models` is imported right after timm's own code ran, so
`timm.create_model("resnet18_spa")`, `hf-hub:` loads, transformers' TimmWrapper and timm's own scripts
find the models.

Libraries look timm up before importing it (`importlib.util.find_spec("timm")` in transformers',
accelerate's and lightning's availability checks): each lookup gets a spec whose loader registers the
models when it executes timm, so a lookup that never imports changes nothing; the finder stays on
`sys.meta_path`, for timm imported again after its modules were deleted. Where timm was imported before
the hook could be installed (another start-up file imported it), the models are registered at once.
Set TIMM_SPA_NO_AUTOREGISTER=1 to turn it off.
"""
import os
import sys

DISABLE_ENV = 'TIMM_SPA_NO_AUTOREGISTER'


def register() -> None:
    try:
        import timm

        import timm_spa.models  # noqa: F401  registers the models
        models = sys.modules.get('timm_spa.models.cifar_resnet')
        # timm imported anew (its modules deleted), ours still cached: the new registry gets them from the module
        # that registers them, run again; never while that module is itself being imported (it imported timm, and
        # registers when it goes on)
        if models is not None and not timm.is_model('resnet18_spa') and \
                not getattr(models.__spec__, '_initializing', False):
            import importlib
            importlib.reload(models)
    except Exception as e:  # a broken plugin must not break timm itself
        import warnings
        warnings.warn(f'timm-spa could not register its models with timm: {e!r} (set {DISABLE_ENV}=1 to stop '
                      'trying)', RuntimeWarning, stacklevel=2)


class TimmImportHook:
    """Finds nothing itself; wraps the loader of every spec found for `timm` so that executing timm registers
    our models after it, each time timm is executed (a program that deletes timm's modules and imports it again
    gets a new, empty registry)."""

    def __init__(self):
        self._finding = False

    def find_spec(self, name, path=None, target=None):
        if name != 'timm' or self._finding:
            return None
        from importlib.util import find_spec
        self._finding = True  # the real finders answer the lookup below, not this one
        try:
            spec = find_spec('timm')
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module') or \
                getattr(spec.loader.exec_module, 'registers_timm_spa', False):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)  # a failed import raises here, and the next attempt is wrapped again
            register()

        exec_then_register.registers_timm_spa = True
        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    if os.environ.get(DISABLE_ENV, '').strip().lower() not in ('', '0', 'false', 'no'):
        return
    if 'timm' in sys.modules:  # imported before this start-up file ran: torch is loaded already, so this is cheap
        register()
    elif not any(isinstance(f, TimmImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, TimmImportHook())
