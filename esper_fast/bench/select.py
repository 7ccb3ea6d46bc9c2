"""bench_select: select_op on every backend vs eager torch, in one run.

Main table, per N x A x dtype x mode (argmax / sample): median µs per call of

* ``eager``     - the plain eager-torch composition a user would write (masked_fill, log_softmax,
  Gumbel-max with ``torch.rand``, gather, entropy, sum pi * Q): the baseline of the speed-ups;
* ``reference`` - esper_fast's torch reference (``select_op_reference``; sampled mode with
  ``torch.rand`` Gumbel noise, so it pays for its random numbers like eager);
* each native backend (``<b>_us``, ``<b>_vs_eager``, ``<b>_speedup`` = vs the reference);
  on CPU also the scalar kernel (``cpu_scalar_us``: the pre-SIMD path, same call) and the call on
  2 OpenMP threads (``cpu_2t_us``, n * A >= 2^18 only, parallel threshold forced to 0);
* ``<b>_GBps``: bytes / time, bytes = logits + q + mask read once, op + 4 floats written once
  (sampled mode reads no noise), next to ``copy_GBps``: a single-thread memcpy (CPU: torch copy with
  one thread) of the same byte count measured in the same run, counted as read + write.

Call overhead table: select_op / select_actions per call at N = 0 and N = 64, the kernel alone on the
same tensors (the cpu module's timing entries) and overhead = call time - kernel time, all measured
in the same run, per mode; at N = 64 also the eager composition and select_op's speed-up over it.
Threads table (CPU): one thread vs two with the parallel threshold at 0, to place the crossover.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from esper_fast.bench.common import CaseProgress, default_out_dir, machine_info, median_us, write_results
from esper_fast.ops import available_backends, select_op
from esper_fast.ops.threads import cpu_threads
from esper_fast.reference import select_op_reference

GPU_NS = (64, 1024, 16384, 262144, 4194304)
CPU_NS = (64, 1024, 65536, 262144, 4194304)
AS = (6, 16, 64)
BIG = 1 << 21  # rows from which only A = 6 is run (eager at 4M x 64 would take minutes)


def _inputs(n, a, dtype, device):
    g = torch.Generator(device).manual_seed(0)
    logits = torch.randn(n, a, device=device, generator=g).to(dtype)
    q = torch.randn(n, a, device=device, generator=g).to(dtype)
    mask = torch.rand(n, a, device=device, generator=g) < 0.7
    mask[:, 0] = True
    return logits, q, mask


def eager_select(logits, q, mask, deterministic):
    """The eager composition: masked log-softmax, Gumbel-max with torch.rand, gathers, entropy, E[Q]."""
    lf, qf = logits.float(), q.float()
    masked = lf.masked_fill(~mask, float("-inf"))
    logp = torch.log_softmax(masked, dim=-1)
    if deterministic:
        op = masked.argmax(-1)
    else:
        op = (masked - torch.log(-torch.log(torch.rand_like(lf)))).argmax(-1)
    p = logp.exp()
    log_prob = logp.gather(-1, op[:, None]).squeeze(-1)
    entropy = -(p * logp.masked_fill(~mask, 0.0)).sum(-1)
    q_op = qf.gather(-1, op[:, None]).squeeze(-1)
    value = (p * qf).sum(-1)
    return op, log_prob, entropy, q_op, value


def _reference(logits, q, mask, deterministic):
    noise = None if deterministic else -torch.log(-torch.log(torch.rand_like(logits, dtype=torch.float32)))
    return select_op_reference(logits, q, mask, deterministic=deterministic, noise=noise)


def _copy_gbps(nbytes: int, device: torch.device, timing: dict) -> float:
    src = torch.empty(max(nbytes // 4, 1), dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src), device, **timing)
    return 2 * src.numel() * 4 / us / 1e3  # read + write


def _timing(n: int, a: int) -> dict:
    big = n * a >= 1 << 22
    return dict(warmup=1 if big else 5, repeats=5 if big else 9, min_time_s=0.0 if big else 0.01)


def _cpu_module():
    from esper_fast.ops.backends import _cpu_module as load

    return load()[0]


def run(device: torch.device, ns, as_, dtypes, budget_s: float = 1e9) -> list[dict]:
    rows, start = [], time.time()
    backends = [b for b in available_backends(device) if b != "torch"]
    progress = CaseProgress("bench_select", len(ns) * len(as_) * len(dtypes) * 2)
    C = _cpu_module() if device.type == "cpu" and "cpu" in backends else None
    for n in ns:
        for a in as_:
            if n >= BIG and a != 6:
                continue
            for dtype in dtypes:
                logits, q, mask = _inputs(n, a, dtype, device)
                esize = logits.element_size()
                nbytes = n * a * (2 * esize + 1) + n * (8 + 16)
                t = _timing(n, a)
                copy = _copy_gbps(nbytes, device, t)
                for det in (True, False):
                    row = dict(
                        N=n,
                        A=a,
                        dtype=str(dtype).replace("torch.", ""),
                        mode="argmax" if det else "sample",
                        copy_GBps=copy,
                    )
                    row["eager_us"] = median_us(lambda: eager_select(logits, q, mask, det), device, **t)
                    row["reference_us"] = median_us(lambda: _reference(logits, q, mask, det), device, **t)
                    for b in backends:
                        us = median_us(
                            lambda: select_op(logits, q, mask, deterministic=det, backend=b, validate=False),
                            device,
                            **t,
                        )
                        row[f"{b}_us"] = us
                        row[f"{b}_vs_eager"] = row["eager_us"] / us
                        row[f"{b}_speedup"] = row["reference_us"] / us
                        row[f"{b}_GBps"] = nbytes / us / 1e3
                        row[f"{b}_of_copy"] = row[f"{b}_GBps"] / copy
                    if C is not None:
                        default = C.cpu_kernel()
                        C.set_cpu_kernel("scalar")
                        row["cpu_scalar_us"] = median_us(
                            lambda: select_op(logits, q, mask, deterministic=det, backend="cpu", validate=False),
                            device,
                            **t,
                        )
                        C.set_cpu_kernel(default)
                        if n * a >= 1 << 18:  # two threads, whatever the default threshold
                            with cpu_threads(2, runtime="native", parallel_threshold=0):
                                row["cpu_2t_us"] = median_us(
                                    lambda: select_op(
                                        logits, q, mask, deterministic=det, backend="cpu", validate=False
                                    ),
                                    device,
                                    **t,
                                )
                            row["cpu_2t_scaling"] = row["cpu_us"] / row["cpu_2t_us"]
                    rows.append(row)
                    progress(row)
                if time.time() - start > budget_s:
                    print(f"bench_select: time budget {budget_s}s reached, stopping early", flush=True)
                    return rows
    return rows


def call_overhead(device: torch.device) -> list[dict]:
    """Per-call cost of the Python + binding path, measured in one run: the whole call (``*_us``), the
    kernel alone on the same tensors (``*_kernel_us``: the cpu module's timing entries, no Python, no
    allocation) and their difference (``*_overhead_us``); N = 0 (no rows) and N = 64 (with the eager
    composition and the speed-up over it for scale). CUDA: the call times only."""
    from esper_fast.constants import HEAD_NAMES, get_action_head_sizes
    from esper_fast.ops._native import action_fields, op_fields, prepare_actions, prepare_op
    from esper_fast.ops.actions import empty_action_outputs, select_actions
    from esper_fast.ops.select import draw_key, empty_selection

    timing = dict(warmup=50, repeats=15, min_time_s=0.02)
    out = []
    for n in (0, 64):
        logits, q, mask = _inputs(n, 6, torch.float32, device)
        sizes = get_action_head_sizes(3)
        heads = {h: torch.randn(n, k, device=device) for h, k in sizes.items()}
        masks = {h: torch.ones(n, k, dtype=torch.bool, device=device) for h, k in sizes.items()}
        qa = torch.randn(n, sizes["op"], device=device)
        for det in (True, False):
            row = dict(N=n, mode="argmax" if det else "sample")
            row["select_op_us"] = median_us(
                lambda: select_op(logits, q, mask, deterministic=det, validate=False), device, **timing
            )
            row["select_actions_us"] = median_us(
                lambda: select_actions(heads, masks, qa, deterministic=det), device, **timing
            )
            if device.type == "cpu" and _cpu_module() is not None:
                C = _cpu_module()
                key = None if det else draw_key(device)
                reps = 2000
                # the tensors behind the pointers stay referenced while the kernels run
                op_in, op_out = prepare_op(logits, q, mask, None), empty_selection(n, device)
                op_f = op_fields(op_in, key, det, op_out)
                row["select_op_kernel_us"] = min(C.kernel_ns_select_op(reps, **op_f) for _ in range(5)) / 1e3
                act_in, act_out = prepare_actions(heads, masks, None, qa, None), empty_action_outputs(n, device)
                act_f = action_fields(act_in, key, det, act_out)
                row["select_actions_kernel_us"] = min(C.kernel_ns_select_actions(reps, **act_f) for _ in range(5)) / 1e3
                row["select_op_overhead_us"] = row["select_op_us"] - row["select_op_kernel_us"]
                row["select_actions_overhead_us"] = row["select_actions_us"] - row["select_actions_kernel_us"]
                row["draw_key_us"] = median_us(lambda: draw_key(device), device, **timing)
            if n > 0:
                row["eager_us"] = median_us(lambda: eager_select(logits, q, mask, det), device, **timing)
                row["select_op_vs_eager"] = row["eager_us"] / row["select_op_us"]
            out.append(row)
            print(row, flush=True)
    _ = HEAD_NAMES
    return out


def threads_table(ns=(4096, 16384, 65536, 262144, 1048576, 4194304)) -> list[dict]:
    """CPU: one thread vs two (parallel threshold forced to 0), argmax and sample, A = 6."""
    device = torch.device("cpu")
    out = []
    for n in ns:
        logits, q, mask = _inputs(n, 6, torch.float32, device)
        t = _timing(n, 6)
        for det in (True, False):
            row = dict(N=n, A=6, mode="argmax" if det else "sample")
            for threads in (1, 2):
                with cpu_threads(threads, runtime="native", parallel_threshold=0):
                    row[f"t{threads}_us"] = median_us(
                        lambda: select_op(logits, q, mask, deterministic=det, backend="cpu", validate=False),
                        device,
                        **t,
                    )
            row["scaling"] = row["t1_us"] / row["t2_us"]
            out.append(row)
            print(row, flush=True)
    return out


def merge_runs(paths: list[Path], out: Path, name: str) -> Path:
    """Per-cell medians of several bench_select JSON runs (same rows) into ``<out>/<name>.json/.md``."""
    import json
    import statistics

    from esper_fast.bench.common import markdown_table

    runs = [json.loads(Path(p).read_text()) for p in paths]

    def merge(tables: list[list[dict]]) -> list[dict]:
        merged = []
        for cells in zip(*tables):
            row = {}
            for k, v in cells[0].items():
                vals = [c.get(k) for c in cells]
                row[k] = statistics.median(vals) if isinstance(v, float) and None not in vals else v
            merged.append(row)
        return merged

    first = runs[0]
    rows = merge([r["rows"] for r in runs])
    for r in rows:  # ratios of the medians (consistent with the µs columns shown)
        for b in first.get("backends", []):
            if f"{b}_us" in r:
                r[f"{b}_vs_eager"] = r["eager_us"] / r[f"{b}_us"]
                r[f"{b}_speedup"] = r["reference_us"] / r[f"{b}_us"]
                r[f"{b}_of_copy"] = r[f"{b}_GBps"] / r["copy_GBps"]
        if "cpu_2t_us" in r:
            r["cpu_2t_scaling"] = r["cpu_us"] / r["cpu_2t_us"]
    overhead, threads = merge([r["overhead"] for r in runs]), merge([r["threads"] for r in runs])
    for r in threads:
        r["scaling"] = r["t1_us"] / r["t2_us"]
    notes = (
        first["notes"]
        + f" Medians over {len(runs)} runs of the whole benchmark (git "
        + ", ".join(sorted({r["machine"]["git_sha"] for r in runs}))
        + ")."
    )
    cols = list(dict.fromkeys(k for r in rows for k in r))
    path = write_results(name, first["machine"], rows, cols, out, notes=notes)
    data = json.loads(path.read_text())
    data.update(
        backends=first.get("backends", []), overhead=overhead, threads=threads, runs=[r["machine"] for r in runs]
    )
    path.write_text(json.dumps(data, indent=1))
    md = out / f"{name}.md"
    extra = "\n## Call overhead (call time, kernel time, overhead = call - kernel; N = 0 and 64)\n\n"
    extra += markdown_table(overhead, list(overhead[0].keys()) if overhead else [])
    if threads:
        extra += "\n\n## Threads (cpu backend, parallel threshold forced to 0)\n\n"
        extra += markdown_table(threads, ["N", "A", "mode", "t1_us", "t2_us", "scaling"])
    md.write_text(md.read_text() + extra + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench_select", description=__doc__)
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="only merge these runs' JSON files (per-cell medians) into --out/--name",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    p.add_argument("--budget-s", type=float, default=1e9, help="stop after this many seconds")
    p.add_argument("--out", default=None, help="output folder (default: $OUT when set, else ./bench-results)")
    p.add_argument("--name", default=None, help="result file name (default bench_select_<cpu|gpu>)")
    p.add_argument("--note", default="", help="appended to the notes (e.g. the machine's load)")
    args = p.parse_args(argv)
    if args.merge:
        out = Path(args.out) if args.out else default_out_dir()
        print(merge_runs([Path(m) for m in args.merge], out, args.name or "bench_select_cpu"))
        return
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if not on_gpu:
        torch.set_num_threads(1)  # one thread for torch; the cpu backend's own threads: set below
        C = _cpu_module()
        if C is not None:
            C.set_num_threads(1)
    ns = (64, 1024) if args.quick else (GPU_NS if on_gpu else CPU_NS)
    dtypes = (torch.float32, torch.bfloat16) if on_gpu else (torch.float32,)
    rows = run(device, ns, (6, 64) if args.quick else AS, dtypes, args.budget_s)
    overhead = call_overhead(device)
    threads = [] if on_gpu or args.quick or _cpu_module() is None else threads_table()
    backends = [b for b in available_backends(device) if b != "torch"]
    cols = ["N", "A", "dtype", "mode", "eager_us", "reference_us"]
    cols += [f"{b}_{k}" for b in backends for k in ("us", "vs_eager", "speedup", "GBps", "of_copy")]
    cols += ["copy_GBps"] + ([] if on_gpu else ["cpu_scalar_us", "cpu_2t_us", "cpu_2t_scaling"])
    out = Path(args.out) if args.out else default_out_dir()
    name = args.name or f"bench_select_{'gpu' if on_gpu else 'cpu'}"
    notes = (
        "median µs per call (back-to-back calls between syncs); vs_eager = eager_us / backend_us; "
        "speedup = reference_us / backend_us; of_copy = backend GB/s / copy GB/s; validate=False; "
        f"torch threads {torch.get_num_threads()}, cpu backend threads 1 unless a column says 2t. " + args.note
    )
    from esper_fast.bench.common import markdown_table

    info = machine_info(device)
    path = write_results(name, info, rows, cols, out, notes=notes)
    import json

    data = json.loads(path.read_text())
    data.update(backends=backends, overhead=overhead, threads=threads)
    path.write_text(json.dumps(data, indent=1))
    md = out / f"{name}.md"
    extra = "\n## Call overhead (call time, kernel time, overhead = call - kernel; N = 0 and 64)\n\n"
    extra += markdown_table(overhead, list(overhead[0].keys()) if overhead else [])
    if threads:
        extra += "\n\n## Threads (cpu backend, parallel threshold forced to 0)\n\n"
        extra += markdown_table(threads, ["N", "A", "mode", "t1_us", "t2_us", "scaling"])
    md.write_text(md.read_text() + extra + "\n")
    print(f"wrote {out / name}.json / .md / .png")


if __name__ == "__main__":
    main()
