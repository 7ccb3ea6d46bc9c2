"""Benchmarks that compare against the reference in the same run (``esper-fast bench``).

* ``select``     - select_op per backend vs the eager torch reference (µs, speed-up, GB/s on GPU).
* ``get_action`` - FactoredPolicy vs ReferencePolicy vs legacy (eager, CUDA graph, compiled on GPU).
* ``train``      - trainer env-steps/s with FactoredPolicy vs ReferencePolicy.

Each prints one progress line per case (done/total, elapsed, ETA) and writes ``<name>_<cpu|gpu>``
``.json`` / ``.md`` / ``.png`` (device name, versions, git SHA) into ``--out`` (default ``$OUT`` when
set, else ``./bench-results/``); ``--update-results`` writes into the checkout's committed
``benchmarks/results/`` instead.

``esper-fast bench NAME -h`` shows a benchmark's own options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main"]

_COMMANDS = {
    "select": "esper_fast.bench.select",
    "get_action": "esper_fast.bench.get_action",
    "train": "esper_fast.bench.train",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esper-fast bench",
        description=__doc__,
        add_help=False,
        usage="esper-fast bench {select,get_action,train,all} [--out DIR | --update-results] "
        "[options of the benchmark]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("which", choices=[*_COMMANDS, "all"], help="benchmark to run")
    p.add_argument("--out", help="output folder (default: $OUT when set, else ./bench-results)")
    p.add_argument(
        "--update-results",
        action="store_true",
        help="write into the checkout's benchmarks/results/ (the committed results)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``esper-fast bench {select,get_action,train,all} [options]`` (other options go to the benchmark)."""
    from esper_fast.bench.common import committed_results_dir

    argv = sys.argv[1:] if argv is None else list(argv)
    p = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        p.print_help()
        return 0 if argv else 2
    args, rest = p.parse_known_args(argv)
    if args.out and args.update_results:
        p.error("--out and --update-results: choose one")
    out = args.out
    if args.update_results:
        try:
            out = str(committed_results_dir())
        except FileNotFoundError as exc:
            p.error(str(exc))
    if out is not None:
        rest = [*rest, "--out", out]
    names = list(_COMMANDS) if args.which == "all" else [args.which]
    for name in names:
        print(f"== bench {name}", flush=True)
        importlib.import_module(_COMMANDS[name]).main(rest)
    return 0
