"""Holds an SQLite database locked from another process (not a test module).

``python store_locker.py DB`` takes ``BEGIN EXCLUSIVE`` on DB, prints ``locked``, holds the
lock until a line arrives on stdin (or stdin closes), then commits, prints ``released`` and
exits. Tests wait on these lines, never on sleeps.
"""

from __future__ import annotations

import sqlite3
import sys


def main(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    conn.close()
    print("released", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
