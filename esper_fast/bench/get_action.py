"""bench_get_action: the full policy step, FactoredPolicy vs ReferencePolicy vs the legacy bug.

Variants (same weights, esper's default sizes, all-valid masks, validation off as in training):
``reference`` (ReferencePolicy: esper 0872525b in torch ops), ``legacy`` (97d9ba3f's double draw),
``fused`` (FactoredPolicy eager), and on GPU ``fused_graph`` (get_action captured in a CUDA graph and
replayed) and ``fused_compiled`` (torch.compile(fullgraph=True), default mode; only at the batch sizes
in --compile-batches since each compile takes tens of seconds). Median µs per call.

``--network head`` (or ``both``) also times esper HEAD's network (schema v2, state_dim 116, HEAD's
probability floors as its trainer passes them): ``head_reference`` (esper HEAD's get_action composed
head by head in plain torch, :func:`esper_fast.reference.policy_v2.reference_get_action_v2`) against
``head_fused`` (:class:`esper_fast.FactoredPolicyV2`, one select_actions_v2 launch), side by side at
each batch, same weights; on GPU also ``head_fused_graph`` (CUDA graph replay).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from esper_fast.bench.common import CaseProgress, default_out_dir, machine_info, median_us, write_results
from esper_fast.constants_v2 import OBS_V3_NON_BLUEPRINT_DIM, PROBABILITY_FLOOR_PER_HEAD
from esper_fast.policy import FactoredPolicy
from esper_fast.policy_v2 import FactoredPolicyV2
from esper_fast.ppo.agent import validation_off
from esper_fast.reference.policy_v2 import reference_get_action_v2
from esper_fast.reference_policy import ReferencePolicy

BATCHES = (1, 8, 64, 512, 4096)


def _inputs(policy, batch, device):
    g = torch.Generator(device).manual_seed(0)
    state = torch.randn(batch, policy.state_dim, device=device, generator=g)
    bp = torch.randint(-1, 13, (batch, policy.num_slots), device=device, generator=g)
    masks = {f"{h}_mask": torch.ones(batch, n, dtype=torch.bool, device=device) for h, n in policy.head_sizes.items()}
    hidden = policy.get_initial_hidden(batch, device)
    return state, bp, masks, hidden


def capture_get_action(policy, *args, **kwargs):
    """``policy.get_action(*args, **kwargs)`` captured in a CUDA graph (after three warm-up calls on a
    side stream); returns ``(graph, static_result)``: ``graph.replay()`` refills ``static_result``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            policy.get_action(*args, **kwargs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = policy.get_action(*args, **kwargs)
    return graph, static


def profile_table(policy, batch: int, device: torch.device, calls: int = 10) -> str:
    """torch.profiler table of ``calls`` eager get_action calls (the explanation behind the numbers)."""
    from torch.profiler import ProfilerActivity, profile

    state, bp, masks, hidden = _inputs(policy, batch, device)
    for _ in range(3):
        policy.get_action(state, bp, hidden, **masks)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(calls):
            policy.get_action(state, bp, hidden, **masks)
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=30)


def run(device: torch.device, batches, compile_batches, hidden_dim: int, budget_s: float) -> list[dict]:
    torch.manual_seed(0)
    fused = FactoredPolicy(114, feature_dim=hidden_dim, lstm_hidden_dim=hidden_dim).to(device).eval()
    ref = ReferencePolicy(114, feature_dim=hidden_dim, lstm_hidden_dim=hidden_dim).to(device).eval()
    legacy = ReferencePolicy(114, feature_dim=hidden_dim, lstm_hidden_dim=hidden_dim, legacy=True).to(device).eval()
    ref.load_state_dict(fused.state_dict())
    legacy.load_state_dict(fused.state_dict())
    rows, start = [], time.time()
    progress = CaseProgress("bench_get_action", len(batches))
    with validation_off(FactoredPolicy, ReferencePolicy):
        for batch in batches:
            state, bp, masks, hidden = _inputs(fused, batch, device)
            row = {"batch": batch}
            for name, pol in (("reference", ref), ("legacy", legacy), ("fused", fused)):
                row[f"{name}_us"] = median_us(lambda: pol.get_action(state, bp, hidden, **masks), device, repeats=9)
            if device.type == "cuda":
                graph, _ = capture_get_action(fused, state, bp, hidden, **masks)
                row["fused_graph_us"] = median_us(graph.replay, device)
            rows.append(row)
            progress(row)
            if time.time() - start > budget_s:
                print(f"bench_get_action: time budget {budget_s}s reached, stopping early", flush=True)
                break
        # compiled variants last: each torch.compile takes tens of seconds
        for row in rows:
            if device.type != "cuda" or row["batch"] not in compile_batches or time.time() - start > budget_s:
                continue
            state, bp, masks, hidden = _inputs(fused, row["batch"], device)
            torch._dynamo.reset()
            compiled = torch.compile(fused.get_action, fullgraph=True)
            row["fused_compiled_us"] = median_us(lambda: compiled(state, bp, hidden, **masks), device, warmup=3)
            print(f"batch {row['batch']}: compiled {row['fused_compiled_us']:.1f} us", flush=True)
        for row in rows:
            for k in ("legacy", "fused", "fused_graph", "fused_compiled"):
                if f"{k}_us" in row:
                    row[f"{k}_speedup"] = row["reference_us"] / row[f"{k}_us"]
    return rows


def run_head(device: torch.device, batches, hidden_dim: int, budget_s: float) -> list[dict]:
    """esper HEAD's network: plain-torch HEAD get_action vs FactoredPolicyV2 (fused), side by side."""
    torch.manual_seed(0)
    fused = FactoredPolicyV2(OBS_V3_NON_BLUEPRINT_DIM, hidden_dim, hidden_dim).to(device).eval()
    floors = dict(PROBABILITY_FLOOR_PER_HEAD)
    rows, start = [], time.time()
    with validation_off(FactoredPolicyV2):
        for batch in batches:
            state, bp, masks, hidden = _inputs(fused, batch, device)
            plain_masks = {k[: -len("_mask")]: m for k, m in masks.items()}
            row = {"batch": batch}
            row["head_reference_us"] = median_us(
                lambda: reference_get_action_v2(fused, state, bp, hidden, plain_masks, probability_floor=floors),
                device,
                repeats=9,
            )
            row["head_fused_us"] = median_us(
                lambda: fused.get_action(state, bp, hidden, **masks, probability_floor=floors), device, repeats=9
            )
            if device.type == "cuda":
                graph, _ = capture_get_action(fused, state, bp, hidden, **masks, probability_floor=floors)
                row["head_fused_graph_us"] = median_us(graph.replay, device)
            for k in ("head_fused", "head_fused_graph"):
                if f"{k}_us" in row:
                    row[f"{k}_speedup"] = row["head_reference_us"] / row[f"{k}_us"]
            rows.append(row)
            print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            if time.time() - start > budget_s:
                print(f"bench_get_action (head): time budget {budget_s}s reached, stopping early", flush=True)
                break
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench_get_action", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--compile-batches", type=int, nargs="*", default=[64])
    p.add_argument("--hidden-dim", type=int, default=512, help="lstm_hidden_dim = feature_dim (esper: 512)")
    p.add_argument("--budget-s", type=float, default=1e9)
    p.add_argument("--out", default=None, help="output folder (default: $OUT when set, else ./bench-results)")
    p.add_argument("--profile-batch", type=int, default=0, help="also write a torch.profiler table at this batch")
    p.add_argument(
        "--network",
        choices=("0872525b", "head", "both"),
        default="0872525b",
        help="which esper network: 0872525b (FactoredPolicy), head (FactoredPolicyV2, schema v2), both",
    )
    args = p.parse_args(argv)
    device = torch.device(args.device)
    out = Path(args.out) if args.out else default_out_dir()
    kind = "gpu" if device.type == "cuda" else "cpu"
    if args.network in ("head", "both"):
        head_rows = run_head(device, args.batches, args.hidden_dim, args.budget_s)
        cols = ["batch", "head_reference_us", "head_fused_us", "head_fused_speedup"]
        if device.type == "cuda":
            cols += ["head_fused_graph_us", "head_fused_graph_speedup"]
        write_results(
            f"bench_get_action_head_{kind}",
            machine_info(device),
            head_rows,
            cols,
            out,
            notes=f"esper HEAD network (schema v2, state_dim 116, H={args.hidden_dim}), all-valid masks, "
            "HEAD's probability floors, validation off, stochastic; median µs per call; "
            "speedup = head_reference_us / variant_us",
        )
        print(f"wrote {out / f'bench_get_action_head_{kind}'}.json / .md / .png")
        if args.network == "head":
            return
    rows = run(device, args.batches, set(args.compile_batches), args.hidden_dim, args.budget_s)
    if args.profile_batch:
        torch.manual_seed(0)
        pol = FactoredPolicy(114, feature_dim=args.hidden_dim, lstm_hidden_dim=args.hidden_dim).to(device).eval()
        with validation_off(FactoredPolicy):
            table = profile_table(pol, args.profile_batch, device)
        kind = "gpu" if device.type == "cuda" else "cpu"
        (out / f"bench_get_action_profile_{kind}.md").write_text(
            f"# FactoredPolicy.get_action profile, batch {args.profile_batch}, 10 eager calls "
            f"({machine_info(device)['device_name']})\n\n```\n{table}\n```\n"
        )
        print(table)
    cols = ["batch", "reference_us", "legacy_us", "fused_us", "fused_speedup"]
    if device.type == "cuda":
        cols += ["fused_graph_us", "fused_graph_speedup", "fused_compiled_us", "fused_compiled_speedup"]
    name = f"bench_get_action_{'gpu' if device.type == 'cuda' else 'cpu'}"
    write_results(
        name,
        machine_info(device),
        rows,
        cols,
        out,
        notes=f"esper default sizes (H={args.hidden_dim}), all-valid masks, validation off, stochastic; "
        "median µs per call; speedup = reference_us / variant_us",
    )
    print(f"wrote {out / name}.json / .md / .png")


if __name__ == "__main__":
    main()
