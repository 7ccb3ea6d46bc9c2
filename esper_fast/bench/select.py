"""bench_select: select_op on every backend vs the eager torch reference, in one run.

Rows: N x A x dtype x mode (deterministic / sampled) x backend -> median µs per call, speed-up over
the reference, and on GPU the achieved GB/s next to a device-to-device copy measured in the same
run (bytes = logits + q + mask read once, op + 4 floats written once; sampled mode reads no noise).
The reference in sampled mode draws its Gumbel noise with ``torch.rand`` (the eager-torch way), so
both sides pay for their random numbers.
"""

from __future__ import annotations

import argparse
import time

import torch

from esper_fast import available_backends, select_op
from esper_fast.bench.common import CaseProgress, default_out_dir, machine_info, median_us, write_results
from esper_fast.reference import select_op_reference

GPU_NS = (64, 1024, 16384, 262144, 4194304)
CPU_NS = (64, 1024, 65536, 262144)
AS = (6, 16, 64)


def _inputs(n, a, dtype, device):
    g = torch.Generator(device).manual_seed(0)
    logits = torch.randn(n, a, device=device, generator=g).to(dtype)
    q = torch.randn(n, a, device=device, generator=g).to(dtype)
    mask = torch.rand(n, a, device=device, generator=g) < 0.7
    mask[:, 0] = True
    return logits, q, mask


def _reference(logits, q, mask, deterministic):
    noise = None if deterministic else -torch.log(-torch.log(torch.rand_like(logits, dtype=torch.float32)))
    return select_op_reference(logits, q, mask, deterministic=deterministic, noise=noise)


def _copy_gbps(nbytes: int, device: torch.device) -> float:
    src = torch.empty(max(nbytes // 4, 1), dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src), device, repeats=9, min_time_s=0.01)
    return 2 * src.numel() * 4 / us / 1e3  # read + write


def run(device: torch.device, ns, as_, dtypes, budget_s: float = 1e9) -> list[dict]:
    rows, start = [], time.time()
    backends = [b for b in available_backends(device) if b != "torch"]
    progress = CaseProgress("bench_select", len(ns) * len(as_) * len(dtypes) * 2)
    for n in ns:
        for a in as_:
            for dtype in dtypes:
                logits, q, mask = _inputs(n, a, dtype, device)
                esize = logits.element_size()
                nbytes = n * a * (2 * esize + 1) + n * (8 + 16)
                copy = _copy_gbps(nbytes, device) if device.type == "cuda" else None
                for det in (True, False):
                    ref_us = median_us(lambda: _reference(logits, q, mask, det), device, repeats=7, min_time_s=0.01)
                    row = dict(N=n, A=a, dtype=str(dtype).replace("torch.", ""), mode="argmax" if det else "sample",
                               reference_us=ref_us, copy_GBps=copy)  # fmt: skip
                    for b in backends:
                        us = median_us(lambda: select_op(logits, q, mask, deterministic=det, backend=b, validate=False),
                                       device, repeats=9, min_time_s=0.01)  # fmt: skip
                        row[f"{b}_us"] = us
                        row[f"{b}_speedup"] = ref_us / us
                        if device.type == "cuda":
                            row[f"{b}_GBps"] = nbytes / us / 1e3
                    rows.append(row)
                    progress(row)
                if time.time() - start > budget_s:
                    print(f"bench_select: time budget {budget_s}s reached, stopping early", flush=True)
                    return rows
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench_select", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    p.add_argument("--budget-s", type=float, default=1e9, help="stop after this many seconds")
    p.add_argument("--out", default=None, help="output folder (default: $OUT when set, else ./bench-results)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    ns = (64, 1024) if args.quick else (GPU_NS if on_gpu else CPU_NS)
    dtypes = (torch.float32, torch.bfloat16) if on_gpu else (torch.float32,)
    rows = run(device, ns, (6, 64) if args.quick else AS, dtypes, args.budget_s)
    backends = [b for b in available_backends(device) if b != "torch"]
    cols = ["N", "A", "dtype", "mode", "reference_us"] + [f"{b}_{k}" for b in backends for k in ("us", "speedup")]
    if on_gpu:
        cols += ["copy_GBps"] + [f"{b}_GBps" for b in backends]
    from pathlib import Path

    out = Path(args.out) if args.out else default_out_dir()
    name = f"bench_select_{'gpu' if on_gpu else 'cpu'}"
    write_results(name, machine_info(device), rows, cols, out,
                  notes="median µs per call (back-to-back calls between syncs); speedup = reference_us / backend_us; validate=False")  # fmt: skip
    print(f"wrote {out / name}.json / .md / .png")


if __name__ == "__main__":
    main()
