"""esper's own PPOAgent on esper_fast's patched network: build, rollout, update, save/load, export.

    python smoke.py            (esper importable, esper_fast importable)

Synthetic inputs (random observations, esper-shaped masks); no env. Exits non-zero on any failure.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

import esper_fast


def main() -> int:
    patch = esper_fast.patch_esper()
    print(
        f"patched: layout {patch.layout}; rebound {patch.patched}; wrapped {patch.wrapped}; "
        f"call-time importers {patch.resolved_at_call}"
    )
    from esper.leyline import HEAD_NAMES
    from esper.leyline.slot_config import SlotConfig
    from esper.simic.agent import PPOAgent
    from esper.tamiyo.networks import FactoredRecurrentActorCritic
    from esper.tamiyo.policy.factory import create_policy
    from esper.tamiyo.policy.features import get_feature_size

    torch.manual_seed(0)
    slot_config = SlotConfig.default()
    state_dim = get_feature_size(slot_config)
    n_envs, steps = 2, 6
    policy = create_policy(
        policy_type="lstm",
        state_dim=state_dim,
        slot_config=slot_config,
        device="cpu",
        compile_mode="off",
        lstm_hidden_dim=64,
    )
    net = policy.network
    assert type(net) is patch.cls and isinstance(net, patch.original) and isinstance(net, FactoredRecurrentActorCritic)
    agent = PPOAgent(
        policy=policy,
        slot_config=slot_config,
        device="cpu",
        num_envs=n_envs,
        max_steps_per_env=steps,
        chunk_length=steps,
    )
    sizes = {h: net.head_sizes[h] for h in HEAD_NAMES}
    hidden = policy.initial_hidden(n_envs)
    t0 = time.perf_counter()
    for env in range(n_envs):
        agent.buffer.start_episode(env)
    for t in range(steps):
        obs = torch.randn(n_envs, state_dim)
        bp = torch.randint(-1, 13, (n_envs, slot_config.num_slots))
        masks = {h: torch.rand(n_envs, n) < 0.7 for h, n in sizes.items()}
        for m in masks.values():
            m[:, 0] = True
        masks["style"][:, 2] = True  # esper's env masks always allow SIGMOID_ADD (compute_action_masks)
        result = policy.get_action(obs, bp, masks, hidden=hidden, deterministic=False)
        assert torch.equal(result.action["op"], result.action["op"])
        for env in range(n_envs):
            done = t == steps - 1
            agent.buffer.add(
                env,
                obs[env],
                bp[env],
                *(
                    int(result.action[h][env])
                    for h in ("slot", "blueprint", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "op")
                ),
                *(
                    result.log_prob[h][env]
                    for h in ("slot", "blueprint", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "op")
                ),
                result.value[env],
                float(torch.randn(())),
                done,
                *(
                    masks[h][env]
                    for h in ("slot", "blueprint", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "op")
                ),
                hidden[0][:, env : env + 1].clone(),
                hidden[1][:, env : env + 1].clone(),
                truncated=done,
                bootstrap_value=0.0,
            )
        hidden = result.hidden
    for env in range(n_envs):
        agent.buffer.end_episode(env)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    metrics = agent.update()
    changed = sum(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    print(
        f"rollout {n_envs}x{steps} + update in {time.perf_counter() - t0:.2f} s; "
        f"policy_loss {metrics.get('policy_loss')}, value_loss {metrics.get('value_loss')}, "
        f"approx_kl {metrics.get('approx_kl')}; {changed}/{len(before)} tensors changed"
    )
    assert changed > 0, "update changed no parameter"

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent.pt"
        agent.save(path)
        loaded = PPOAgent.load(path, device="cpu")
        assert type(loaded.policy.network) is patch.cls
        for k, v in net.state_dict().items():
            assert torch.equal(v, loaded.policy.network.state_dict()[k]), k
        print("PPOAgent.save -> PPOAgent.load (patched): weights identical")

        from esper_fast.integrations.esper_checkpoint import to_esper_checkpoint
        from esper_fast.ppo.checkpoint import load_policy

        ours, _, config, ckpt = load_policy(path)
        for k, v in net.state_dict().items():
            assert torch.equal(v, ours.state_dict()[k]), k
        print(
            f"esper checkpoint -> esper_fast load_policy: weights identical; mapped config lstm_hidden_dim "
            f"{config.lstm_hidden_dim}, ignored {sorted(ckpt['esper_import']['ignored'])}"
        )
        exported = Path(tmp) / "exported.pt"
        torch.save(to_esper_checkpoint(ckpt), exported)
        again = PPOAgent.load(exported, device="cpu")
        for k, v in net.state_dict().items():
            assert torch.equal(v, again.policy.network.state_dict()[k]), k
        print("esper_fast export -> esper PPOAgent.load: weights identical")
        from esper_fast.integrations.esper_checkpoint import export_esper_checkpoint
        from esper_fast.ppo import Trainer, make_config

        run = Trainer(
            make_config("smoke", feature_dim=512, lstm_hidden_dim=32, total_timesteps=600, eval_episodes=0),
            Path(tmp) / "run",
            tensorboard=False,
            log=lambda m: None,
        )
        run.train()
        trained = PPOAgent.load(export_esper_checkpoint(Path(tmp) / "run", log=lambda m: None), device="cpu")
        for k, v in run.policy.state_dict().items():
            assert torch.equal(v, trained.policy.network.state_dict()[k]), k
        print(
            f"esper_fast training run ({run.train_steps} update(s)) -> export-esper -> esper PPOAgent.load: "
            f"weights identical, train_steps {trained.train_steps}"
        )
        esper_fast.unpatch_esper()
        from esper.tamiyo import networks

        assert networks.FactoredRecurrentActorCritic is patch.original
        print("unpatch_esper: esper's class restored")
        own = networks.FactoredRecurrentActorCritic(
            state_dim=state_dim, num_slots=slot_config.num_slots, lstm_hidden_dim=64
        )
        own.load_state_dict(torch.load(exported, weights_only=True)["network_state_dict"], strict=True)
        print(
            "esper_fast export -> esper's own (unpatched) FactoredRecurrentActorCritic: load_state_dict(strict=True) ok"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
