"""Whether this process is one of a server's several workers: the signs a
gate that keeps its state in memory can read, to say that each process
decides alone.

- ``WEB_CONCURRENCY`` above 1 (uvicorn and gunicorn take their worker count
  from it);
- the parent process is a uvicorn, gunicorn or hypercorn started with more
  than one worker (``--workers N``, ``-w N``; read from ``/proc`` where there
  is one);
- a WSGI server that says so per request (``wsgi.multiprocess``), and a fork
  after the gate was built: the gate notes these itself.

Each sign is a reason in words, for the log line and the admin API's answer.
"""

from __future__ import annotations

import os

_SERVERS = ("uvicorn", "gunicorn", "hypercorn")


def _worker_count(command: list[str]) -> int:
    """The worker count a server's command line asks for (1 when it names none)."""
    count = 1
    for index, part in enumerate(command):
        value = ""
        if part in ("-w", "--workers") and index + 1 < len(command):
            value = command[index + 1]
        elif part.startswith("--workers="):
            value = part.split("=", 1)[1]
        elif part.startswith("-w") and part[2:].isdigit():
            value = part[2:]
        if value.isdigit():
            count = int(value)
    return count


def _parent_command() -> list[str]:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as file:
            raw = file.read(8192)
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def several_workers() -> str | None:
    """Why this process is one of several workers, or ``None`` when no sign says so."""
    concurrency = os.environ.get("WEB_CONCURRENCY", "").strip()
    if concurrency.isdigit() and int(concurrency) > 1:
        return f"WEB_CONCURRENCY={concurrency}: the server runs {concurrency} worker processes"
    parent = _parent_command()
    server = next(
        (name for name in _SERVERS for part in parent[:3] if name in os.path.basename(part)), None
    )
    if server is not None:
        workers = _worker_count(parent)
        if workers > 1:
            return f"the parent process is {server} with {workers} workers"
    return None


__all__ = ["several_workers"]
