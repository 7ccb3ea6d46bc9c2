"""esper HEAD's own PPOAgent.save()/load() against esper_fast's HEAD-format import/export (unpatched esper).

    python head_checkpoint.py OUT_DIR     (esper HEAD and esper_fast importable; run by check_esper_head.sh)

1. an esper-fast ``--preset esper-head`` run (tiny, feature_dim 512) -> ``export-esper`` -> esper HEAD's
   ``PPOAgent.load()``: same weights, value normaliser, train_steps;
2. that agent's ``save()`` -> esper_fast ``load_policy``: same weights (FactoredPolicyV2, state_dim 114);
3. an agent on esper HEAD's default network (state_dim 116) -> ``save()`` -> esper_fast ``load_checkpoint``
   refuses it naming the observation; ``load_esper_head_network`` rebuilds it (state_dim 116) with equal weights.
Exits non-zero on any failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def _same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def main(out: Path) -> int:
    from esper.leyline.slot_config import SlotConfig
    from esper.simic.agent import PPOAgent
    from esper.tamiyo.policy.factory import create_policy

    from esper_fast.cli import main as cli
    from esper_fast.integrations.esper_checkpoint import load_esper_head_network
    from esper_fast.ppo import CheckpointError, Trainer, load_policy, make_config

    failures = 0

    def report(name: str, ok: bool, detail: str = "") -> None:
        nonlocal failures
        failures += not ok
        print(f"{name}: {'OK' if ok else 'FAIL'} {detail}")

    out.mkdir(parents=True, exist_ok=True)
    config = make_config(
        "esper-head",
        num_envs=2,
        episode_length=8,
        total_timesteps=16,
        feature_dim=512,
        lstm_hidden_dim=64,
        eval_episodes=0,
    )
    trainer = Trainer(config, out / "run", tensorboard=False, log=lambda m: None)
    trainer.train(handle_signals=False)
    export = out / "exported_head.pt"
    cli(["export-esper", str(out / "run"), "-o", str(export)])
    agent = PPOAgent.load(export, device="cpu")
    vn = agent.value_normalizer.state_dict()
    report(
        "1 export -> esper HEAD PPOAgent.load",
        _same(trainer.policy.state_dict(), agent.policy.network.state_dict())
        and torch.equal(vn["var"].cpu(), trainer.value_normalizer.var.cpu())
        and agent.train_steps == 1,
        f"(network {type(agent.policy.network).__name__}, state_dim {agent.policy.network.state_dim}, "
        f"train_steps {agent.train_steps}, value normaliser var {float(vn['var']):.4g})",
    )
    resaved = out / "head_resaved.pt"
    agent.save(resaved)
    policy, *_ = load_policy(resaved)
    report(
        "2 esper HEAD save -> esper_fast load_policy",
        _same(trainer.policy.state_dict(), policy.state_dict()),
        f"({type(policy).__name__}, state_dim {policy.state_dim})",
    )
    cfg = SlotConfig.default()
    head_default = PPOAgent(
        create_policy(policy_type="lstm", slot_config=cfg, device="cpu", lstm_hidden_dim=64),
        slot_config=cfg,
        device="cpu",
    )
    native = out / "head_native.pt"
    head_default.save(native)
    try:
        load_policy(native)
        refused = "not refused"
    except CheckpointError as exc:
        refused = str(exc)
    net = load_esper_head_network(native)
    report(
        "3 esper HEAD default agent (state_dim 116)",
        "state_dim 116" in refused
        and _same(head_default.policy.network.state_dict(), net.state_dict())
        and net.state_dim == 116,
        f"(load_policy: {refused[:90]}...; load_esper_head_network: state_dim {net.state_dim}, equal weights)",
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/esper_head_checkpoint_check")))
