"""esper HEAD's default network vs ``esper_fast.FactoredPolicyV2()`` (unpatched esper; run by check_esper_head.sh).

    python head_state_dict.py      (esper HEAD and esper_fast importable)

Builds esper's ``LSTMPolicyBundle()`` with its defaults (state_dim = get_feature_size(SlotConfig.default()))
and ``FactoredPolicyV2()`` with its defaults, each after ``torch.manual_seed(0)``, for 3 and 5 slots;
checks state_dim, the key order, shapes, dtypes, equal weights from the same seed, and ``strict=True``
loads both ways. Exits non-zero on any difference.
"""

from __future__ import annotations

import sys

import torch


def main() -> int:
    from esper.leyline.slot_config import SlotConfig
    from esper.tamiyo.policy.lstm_bundle import LSTMPolicyBundle

    from esper_fast import FactoredPolicyV2

    failures = 0
    for num_slots in (3, 5):
        cfg = SlotConfig.default() if num_slots == 3 else SlotConfig(tuple(f"r0c{i}" for i in range(num_slots)))
        torch.manual_seed(0)
        esper_net = LSTMPolicyBundle(slot_config=cfg).network
        torch.manual_seed(0)
        ours = FactoredPolicyV2(slot_config=cfg)
        esd, osd = esper_net.state_dict(), ours.state_dict()
        same_keys = list(esd) == list(osd)
        same_layout = same_keys and all(esd[k].shape == osd[k].shape and esd[k].dtype == osd[k].dtype for k in esd)
        same_values = same_layout and all(torch.equal(esd[k], osd[k]) for k in esd)
        try:
            FactoredPolicyV2(slot_config=cfg).load_state_dict(esd, strict=True)
            LSTMPolicyBundle(slot_config=cfg).network.load_state_dict(osd, strict=True)
            loads = True
        except RuntimeError as exc:
            loads = False
            print(f"  load failed: {str(exc)[:300]}")
        ok = (esper_net.state_dim == ours.state_dim) and same_layout and same_values and loads
        failures += not ok
        print(
            f"{num_slots} slots: esper state_dim {esper_net.state_dim}, FactoredPolicyV2() state_dim {ours.state_dim}; "
            f"{len(esd)} keys, same order {same_keys}, same shapes/dtypes {same_layout}, equal weights from "
            f"seed 0 {same_values}, strict load both ways {loads} -> {'OK' if ok else 'FAIL'}"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
