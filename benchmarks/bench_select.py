"""Thin wrapper: `python benchmarks/bench_select.py [options]` = `esper-fast bench select [options]`."""

from esper_fast.bench import main

if __name__ == "__main__":
    import sys

    main(["select", *sys.argv[1:]])
