"""Benchmarks that compare against the reference in the same run (``esper-fast bench``).

* ``select``     - select_op per backend vs the eager torch reference (µs, speed-up, GB/s on GPU).
* ``get_action`` - FactoredPolicy vs ReferencePolicy vs legacy (eager, CUDA graph, compiled on GPU).
* ``train``      - trainer env-steps/s with FactoredPolicy vs ReferencePolicy.

Each writes ``<name>_<cpu|gpu>.json`` and ``.md`` (device name, versions, git SHA) into ``--out``
(default ``$OUT`` or ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["main"]

_COMMANDS = {"select": "esper_fast.bench.select", "get_action": "esper_fast.bench.get_action",
             "train": "esper_fast.bench.train"}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """``esper-fast bench {select,get_action,train,all} [options]`` (options go to the benchmark)."""
    p = argparse.ArgumentParser(prog="esper-fast bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("which", choices=[*_COMMANDS, "all"], help="benchmark to run")
    args, rest = p.parse_known_args(argv)
    names = list(_COMMANDS) if args.which == "all" else [args.which]
    for name in names:
        print(f"== bench {name}", flush=True)
        importlib.import_module(_COMMANDS[name]).main(rest)
