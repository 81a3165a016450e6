"""Which precision autocast runs in, by what the hardware computes natively.

On CPU, bfloat16 autocast pays only where the CPU has bfloat16 arithmetic (AVX-512-BF16 or AMX on
x86): there it is about twice float32. Elsewhere oneDNN emulates it, about 16x slower than float32,
so `--amp` trains in float32 there and says so once. An explicit `--amp-dtype` is still honoured,
with the same warning. On CUDA, `--amp` means float16 (with a grad scaler) as in timm.
"""
import platform
from contextlib import contextmanager, nullcontext
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16}


def cpu_flags() -> Dict[str, bool]:
    """The CPU capabilities that decide bfloat16's speed, as torch detects them (no /proc parsing).

    `avx512_kernels` is False where torch was told to use at most AVX2 kernels (ATEN_CPU_CAPABILITY=avx2),
    which makes an AVX-512 CPU compute like an AVX2-only one.
    """
    if platform.machine().lower() not in ('x86_64', 'amd64', 'i386', 'i686'):
        return {'mkldnn_bf16': bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}
    return {'avx2': torch.cpu._is_avx2_supported(), 'avx512': torch.cpu._is_avx512_supported(),
            'avx512_bf16': torch.cpu._is_avx512_bf16_supported(), 'amx': torch.cpu._is_amx_tile_supported(),
            'avx512_kernels': torch.backends.cpu.get_cpu_capability().startswith('AVX512')}


def native_cpu_bfloat16(flags: Optional[Dict[str, bool]] = None) -> bool:
    """True where the CPU computes bfloat16 in hardware: AVX-512-BF16 or AMX on x86 (with torch's AVX-512
    kernels enabled), oneDNN's check elsewhere."""
    flags = cpu_flags() if flags is None else flags
    if 'mkldnn_bf16' in flags:
        return bool(flags['mkldnn_bf16'])
    return bool((flags.get('avx512_bf16') or flags.get('amx')) and flags.get('avx512_kernels'))


def describe_flags(flags: Dict[str, bool]) -> str:
    return ', '.join(f'{name} {"yes" if value else "no"}' for name, value in flags.items())


def cpu_capability(flags: Optional[Dict[str, bool]] = None) -> str:
    """The best vector arithmetic torch uses on this CPU, in a word or two: what a CPU's model name does not
    say (an AMD EPYC may have AVX-512-BF16 or only AVX2) and what decides its training speed."""
    flags = cpu_flags() if flags is None else flags
    if 'mkldnn_bf16' in flags:
        return 'native bfloat16' if flags['mkldnn_bf16'] else 'no native bfloat16'
    if flags.get('avx512') and not flags.get('avx512_kernels'):
        return 'AVX2 kernels (AVX-512 switched off)'
    for key, name in (('amx', 'AMX'), ('avx512_bf16', 'AVX-512-BF16'), ('avx512', 'AVX-512'), ('avx2', 'AVX2 only')):
        if flags.get(key):
            return name
    return 'no AVX2'


def resolve_amp_dtype(amp: bool, amp_dtype: Optional[str], device: torch.device) -> Tuple[Optional[str], Optional[str]]:
    """The autocast dtype to use (None: float32) and a warning to show once, or None.

    `amp` asks for mixed precision where it helps; `amp_dtype` names the dtype and forces it.
    """
    if device.type == 'cuda':
        return (amp_dtype or ('float16' if amp else None)), None
    if amp_dtype is None and not amp:
        return None, None
    flags = cpu_flags()
    if native_cpu_bfloat16(flags):
        return amp_dtype or 'bfloat16', None
    what = f'this CPU has no native bfloat16 ({describe_flags(flags)}): autocast is emulated there, about 16x ' \
           'slower than float32'
    if amp_dtype is None:
        return None, f'{what}, so --amp trains in float32. Pass --amp-dtype bfloat16 to force it anyway.'
    return amp_dtype, f'{what}; running in {amp_dtype} because --amp-dtype {amp_dtype} asks for it.'


def describe_precision(amp_dtype: Optional[str]) -> str:
    return f'{amp_dtype} autocast' if amp_dtype else 'float32'


def precision_record(per_epoch: List[str], device: torch.device) -> Dict[str, Any]:
    """What a run's results say about precision: training (each change in order, e.g. after a resume on
    another CPU), the float32 test evaluation, and the CPU capabilities the choice was made on."""
    return dict(train=' then '.join(dict.fromkeys(per_epoch)), test='float32',
                cpu_flags=cpu_flags() if device.type == 'cpu' else None)


def autocast_context(device: torch.device, amp_dtype: Optional[str]):
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp_dtype]) if amp_dtype else nullcontext()


@contextmanager
def strict_float32() -> Iterator[None]:
    """float32 that is float32 on CUDA too: cuDNN convolutions run in TF32 by default (10-bit mantissa,
    ~1e-3 relative error), so a number reported "in float32" is computed with TF32 switched off here.
    No effect on CPU; the previous settings come back on exit."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def eval_precision(device: torch.device, amp_dtype: Optional[str]):
    """The context an evaluation runs in: autocast to `amp_dtype`, or strict float32 (None)."""
    return autocast_context(device, amp_dtype) if amp_dtype else strict_float32()
