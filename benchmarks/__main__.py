"""Run every benchmark module (``python -m benchmarks [name ...]``).

Each module runs in a process of its own: objects a benchmark leaves behind (an SDK's
providers, big result lists) would otherwise make the garbage collector slower for the next
one, and its figures would depend on which benchmarks ran before it.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import benchmarks


def main(argv: list[str]) -> int:
    names = sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    chosen = [n for n in names if not argv or any(a in n for a in argv)]
    failed = []
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=False)
        if done.returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
