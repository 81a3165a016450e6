"""What the auto-registration hook adds to interpreter start-up, in an environment where timm-spa is installed.

    python -m benchmarks.startup_time [--python PATH] [--runs 20]

Reads `python -X importtime -c pass`: the hook module's own import time (the .pth runs it at start-up),
and which heavy modules start-up imported (none of torch, timm, timm_spa may appear).
"""
import argparse
import re
import statistics
import subprocess
import sys
from typing import List, Optional

HOOK = '_timm_spa_autoregister'
HEAVY = ('torch', 'timm', 'timm_spa', 'numpy')


def measure(python: str, runs: int) -> dict:
    times, heavy = [], set()
    for _ in range(runs):
        report = subprocess.run([python, '-X', 'importtime', '-c', 'pass'], capture_output=True, text=True,
                                check=True).stderr
        for line in report.splitlines():
            match = re.match(r'import time:\s+(\d+) \|\s+(\d+) \|\s+(\S+)', line)
            if not match:
                continue
            name = match.group(3)
            if name == HOOK:
                times.append(int(match.group(2)))
            if name.split('.')[0] in HEAVY:
                heavy.add(name)
    return dict(hook_installed=bool(times), hook_us_median=statistics.median(times) if times else None,
                heavy_modules_at_startup=sorted(heavy), runs=runs)


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--python', default=sys.executable)
    parser.add_argument('--runs', type=int, default=20)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f'--runs {args.runs}: give 1 or more start-ups to time')
    result = measure(args.python, args.runs)
    if not result['hook_installed']:
        print(f'{HOOK} is not imported at start-up by {args.python}: is timm-spa installed there (pip install -e .), '
              'and TIMM_SPA_NO_AUTOREGISTER unset?')
    else:
        print(f"{HOOK}: median {result['hook_us_median'] / 1000:.3f} ms over {args.runs} start-ups "
              f"(cumulative import time); heavy modules imported at start-up: "
              f"{result['heavy_modules_at_startup'] or 'none'}")
    return result


if __name__ == '__main__':
    main()
