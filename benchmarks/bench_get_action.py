"""Thin wrapper: `python benchmarks/bench_get_action.py [options]` = `esper-fast bench get_action [options]`."""

from esper_fast.bench import main

if __name__ == "__main__":
    import sys

    main(["get_action", *sys.argv[1:]])
