"""The SQLite store's footprint: ``python -m benchmarks.sqlite_store [--quick]``.

- **File size after 10⁶ and 10⁷ outcomes** (10⁵ and 10⁶ with ``--quick``):
  one window store on a real file, 1,000 outcomes per second of a simulated
  clock (a 60 s window), flushed every 0.25 simulated seconds as the
  background thread does; the database and its WAL after each size, and the
  window's rows. Flat is the target: expired slices and earlier steps are
  deleted at each flush.
- **Writes per second of traffic**: the transactions one process makes in
  5 real seconds at 100 and at 2,000 outcomes per second (its background
  thread writes at most 4 a second, whatever the traffic).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from gate_middleware.stores.sqlite import SqliteWindowStore, _Database

RATE_PER_SECOND = 1_000
FLUSH_SECONDS = 0.25


def file_bytes(path: Path) -> int:
    return sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))


def footprint(sizes: list[int]) -> list[str]:
    lines = ["| outcomes | file + WAL (KiB) | window rows |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gate.db"
        now = [1_000_000.0]
        database = _Database(path)
        store = SqliteWindowStore(database, "footprint", 60.0, clock=lambda: now[0])
        per_flush = int(RATE_PER_SECOND * FLUSH_SECONDS)
        done = 0
        for size in sizes:
            while done < size:
                for i in range(per_flush):
                    variant = "canary" if i % 10 == 0 else "stable"
                    store.record(variant, i % 97 != 0, True, 0.002 + (i % 50) / 1000, 0.0, i)
                done += per_flush
                now[0] += FLUSH_SECONDS
                store.flush()
            with database.locked() as db:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                rows = db.execute("SELECT COUNT(*) FROM gate_window").fetchone()[0]
            lines.append(f"| {size:,} | {file_bytes(path) / 1024:.0f} | {rows} |")
        store.close()
        database.close()
    return lines


def writes_per_second(rate: int, seconds: float = 5.0) -> float:
    """Write transactions per second that one process's window store commits."""
    with tempfile.TemporaryDirectory() as directory:
        database = _Database(Path(directory) / "gate.db")
        store = SqliteWindowStore(database, "writes", 60.0)
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < seconds:
            store.record("canary", True, True, 0.005, 0.0, sent)
            sent += 1
            time.sleep(max(0.0, started + sent / rate - time.monotonic()))
        store.close()
        database.close()
        return store.transactions / seconds


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sqlite_store")
    parser.add_argument("--quick", action="store_true", help="10^5 and 10^6 outcomes")
    args = parser.parse_args()
    sizes = [10**5, 10**6] if args.quick else [10**6, 10**7]
    print("\n".join(footprint(sizes)))
    print()
    for rate in (100, 2_000):
        print(f"- {rate:,} outcomes/s: {writes_per_second(rate):.1f} write transactions per second")


if __name__ == "__main__":
    main()
