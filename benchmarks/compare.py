"""Compare two versions of the package on every ratio, in one run.

``python -m benchmarks.compare`` compares ``main`` with the working tree;
``python -m benchmarks.compare REV_A REV_B`` two revisions (``.`` is the
working tree; ``REV+mypyc`` is that revision's compiled build, made with its
setup.py, so ``python -m benchmarks.compare . .+mypyc`` weighs the compiled
build against the pure-Python one). Each side's ``gate_middleware`` (with its adapters) is copied
into a temporary folder; the measuring code is this tree's, the same for
both. The sides then take turns, ``--rounds`` times, each turn a fresh
process measuring every case with its own floor or bare baseline, so a noisy
neighbour slows both sides alike and the ratios, not the microseconds, are
compared. It prints, per measure, each side's median ratio and B / A.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.timing import interleaved

ROOT = Path(__file__).resolve().parent.parent


COMPILED_SUFFIX = "+mypyc"


def export(revision: str, into: Path) -> Path:
    """``gate_middleware`` of ``revision`` (``.``: the working tree), importable from ``into``.

    ``REV+mypyc``: compiled in place there by the revision's own setup.py.
    """
    compiled = revision.endswith(COMPILED_SUFFIX)
    revision = revision.removesuffix(COMPILED_SUFFIX)
    if revision == ".":
        _copy(ROOT, into, compiled)
        return into
    tree = into / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), revision],
        check=True,
    )
    try:
        _copy(tree, into, compiled)
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True
        )
    return into


def _copy(tree: Path, into: Path, compiled: bool) -> None:
    # Sources only: a compiled build of the working tree must not leak in.
    ignore = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__")
    package = into / "gate_middleware"
    shutil.copytree(tree / "gate_middleware", package, ignore=ignore)
    shutil.copytree(tree / "integrations", package / "integrations", ignore=ignore)
    if not compiled:
        return
    if not (tree / "setup.py").exists():
        raise SystemExit(f"{tree}: this revision has no compiled build (no setup.py)")
    shutil.copy(tree / "setup.py", into / "setup.py")
    shutil.copy(tree / "pyproject.toml", into / "pyproject.toml")  # mypy's settings
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=into,
        env={**os.environ, "GATE_MIDDLEWARE_MYPYC": "1"},
        check=True,
        capture_output=True,
    )


def measure(quick: bool) -> dict[str, float]:
    """One turn: every measure as a ratio to its baseline in this process."""
    from opentelemetry.metrics import NoOpMeterProvider

    from benchmarks import gate_bench, requests_bench

    number, repeat = (1_000, 5) if quick else (5_000, 9)
    gate = gate_bench.make_gate(auto_rollback_enabled=False)
    micro = interleaved(
        {
            "floor": gate_bench.floor,
            "route": gate_bench.route_case(gate),
            "record": gate_bench.record_case(gate_bench.make_gate(auto_rollback_enabled=False)),
        },
        number,
        repeat,
    )
    floor = micro["floor"].median
    health = {size: median for size, median, *_ in gate_bench.health_rows(quick=True)}
    from gate_middleware.integrations.flask import GateExtension
    from gate_middleware.integrations.starlette import GateMiddleware

    # The README's in-process table: returning visitors (no Set-Cookie).
    starlette = requests_bench.starlette_cases(shared=False)
    # Every request a new visitor: a signed cookie minted and set each time.
    minting = requests_bench.starlette_app()
    minting.add_middleware(
        GateMiddleware, gate=requests_bench.gate(NoOpMeterProvider()), secret="s" * 32
    )
    starlette["new visitors"] = requests_bench.asgi_case(minting)
    requests = interleaved(starlette, number // 5, repeat)
    bare = requests["Starlette, bare"].median
    gate_api = requests["+ gate middleware, metrics API only"].median - bare
    gate_sdk = requests["+ gate middleware, OpenTelemetry SDK"].median - bare
    otel = requests["+ OpenTelemetry ASGI instrumentation, SDK"].median - bare
    flask_bare = requests_bench.flask_app()
    flask_gate = requests_bench.flask_app()
    GateExtension(
        gate=requests_bench.gate(NoOpMeterProvider()), meter_provider=NoOpMeterProvider()
    ).init_app(flask_gate)
    flask = interleaved(
        {
            "bare": requests_bench.wsgi_case(flask_bare),
            "gate": requests_bench.wsgi_case(flask_gate),
        },
        number // 10,
        repeat,
    )
    flask_base = flask["bare"].median
    return {
        "route_request / sha256 floor": micro["route"].median / floor,
        "record_request_outcome / sha256 floor": micro["record"].median / floor,
        "monitor_canary_health µs after 10^3": health["1,000"] * 1e6,
        "monitor_canary_health µs after 10^5": health["100,000"] * 1e6,
        "Starlette bare request µs": bare * 1e6,
        "Starlette: gate overhead µs (metrics API)": gate_api * 1e6,
        "Starlette: gate overhead / bare": gate_api / bare,
        "Starlette: gate+SDK / OTel ASGI overhead": gate_sdk / otel,
        "Starlette, new visitors: overhead / bare": (requests["new visitors"].median - bare) / bare,
        "Flask: gate overhead / bare": (flask["gate"].median - flask_base) / flask_base,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("a", nargs="?", default="main", help="revision A (default main)")
    parser.add_argument("b", nargs="?", default=".", help="revision B (default: working tree)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import gate_middleware

        expected = os.environ["GATE_COMPARE_COMPILED"] == "1"
        if getattr(gate_middleware, "COMPILED", False) != expected:
            print(f"{gate_middleware.__file__}: compiled is not {expected}", file=sys.stderr)
            return 1
        print(json.dumps(measure(args.quick)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        sides = {}
        revisions = {"A": args.a, "B": args.b}
        for name, revision in revisions.items():
            folder = Path(tmp) / name
            folder.mkdir()
            sides[name] = export(revision, folder)
        turns: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        for round_number in range(args.rounds):
            for name, folder in sides.items():
                env = {
                    **os.environ,
                    "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}",
                    "GATE_COMPARE_COMPILED": str(int(revisions[name].endswith(COMPILED_SUFFIX))),
                }
                command = [sys.executable, "-m", "benchmarks.compare", "--worker"]
                if args.quick:
                    command.append("--quick")
                done = subprocess.run(
                    command, env=env, cwd=tmp, capture_output=True, text=True, check=False
                )
                if done.returncode != 0:
                    print(f"side {name} ({getattr(args, name.lower())}) failed:\n{done.stderr}")
                    return 1
                turns[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_number + 1} of {args.rounds} done", file=sys.stderr)
    print(f"A = {args.a}, B = {args.b} ({args.rounds} rounds, medians)\n")
    print(f"  {'measure':<44} {'A':>9} {'B':>9} {'B / A':>7}")
    for measure_name in turns["A"][0]:
        a = statistics.median(turn[measure_name] for turn in turns["A"])
        b = statistics.median(turn[measure_name] for turn in turns["B"])
        print(f"  {measure_name:<44} {a:>9.2f} {b:>9.2f} {b / a:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
