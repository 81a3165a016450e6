"""Register timm-spa's models with timm whenever timm is imported, without `import timm_spa`.

Run at interpreter start-up by `timm_spa_autoregister.pth` (installed at the root of site-packages).
It only puts a one-shot finder on `sys.meta_path`: no torch, no timm, nothing else is imported until
the program itself imports timm; then `timm_spa.models` is imported right after timm, so
`timm.create_model("resnet18_spa")`, `hf-hub:` loads and timm's own scripts find the models.
Set TIMM_SPA_NO_AUTOREGISTER=1 to turn it off.
"""
import os
import sys

DISABLE_ENV = 'TIMM_SPA_NO_AUTOREGISTER'


class TimmImportHook:
    """Finds nothing itself; when `timm` is about to load, wraps its loader to register our models after it."""

    def find_spec(self, name, path=None, target=None):
        if name != 'timm':
            return None
        sys.meta_path.remove(self)  # one shot, and lets the real finders answer below
        from importlib.util import find_spec
        spec = find_spec('timm')
        if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module'):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            try:
                import timm_spa.models  # noqa: F401  registers the models
            except Exception as e:  # a broken plugin must not break timm itself
                import warnings
                warnings.warn(f'timm-spa could not register its models with timm: {e!r} '
                              f'(set {DISABLE_ENV}=1 to stop trying)', RuntimeWarning, stacklevel=2)

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    if os.environ.get(DISABLE_ENV, '').strip().lower() in ('', '0', 'false', 'no') and 'timm' not in sys.modules \
            and not any(isinstance(f, TimmImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, TimmImportHook())
