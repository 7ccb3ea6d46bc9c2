// CPU backend of the schema-v2 fused whole-action selection (select_actions_v2.h) over all rows.
#include "select_actions_v2.h"

namespace esper_fast {

int64_t select_actions_v2_cpu(const ActionArgsV2& a) {
  const bool needs_key = !a.base.deterministic && a.base.key != nullptr;
  const uint64_t key = needs_key ? static_cast<uint64_t>(*a.base.key) : 0u;
  int64_t bad = 0;
  if (a.base.n < 2048) {
    for (int64_t row = 0; row < a.base.n; ++row) bad += select_action_row(a, row, key);
    return bad;
  }
#pragma omp parallel for schedule(static) reduction(+ : bad)
  for (int64_t row = 0; row < a.base.n; ++row) bad += select_action_row(a, row, key);
  return bad;
}

}  // namespace esper_fast
