"""Writes bucket_vectors.csv: the routing formula's published test vectors.

Computed here straight from the documented formula with hashlib, not with
gate_middleware, so the test compares the package against the contract:

    digest = sha256(f"{name}:{session_id}".encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100000

Run once; the CSV is checked in and must never change.
"""

import csv
import hashlib
import random
from pathlib import Path

rng = random.Random(20261129)
names = ["default", "checkout-v2", "search:ranking", "ünïcode-rollout", "a"]
alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
rows = []
for i in range(10_000):
    name = names[i % len(names)]
    kind = i % 4
    if kind == 0:
        session = "".join(rng.choice(alphabet) for _ in range(22))  # token_urlsafe(16) shape
    elif kind == 1:
        session = f"user-{rng.randrange(10**9)}"
    elif kind == 2:
        session = "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(160, 0x2FFF)]))
            for _ in range(rng.randrange(0, 12))
        )
    else:
        session = str(i)
    digest = hashlib.sha256(f"{name}:{session}".encode()).digest()
    rows.append((name, session, int.from_bytes(digest[:8], "big") % 100000))

with open(Path(__file__).with_name("bucket_vectors.csv"), "w", newline="", encoding="utf-8") as fh:
    writer = csv.writer(fh)
    writer.writerow(["rollout", "session_id", "bucket"])
    writer.writerows(rows)
