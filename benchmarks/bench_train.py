"""Thin wrapper: `python benchmarks/bench_train.py [options]` = `esper-fast bench train [options]`."""

from esper_fast.bench import main

if __name__ == "__main__":
    import sys

    main(["train", *sys.argv[1:]])
