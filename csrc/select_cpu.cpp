// CPU backend of select_op: the per-row math of select_row.h over all rows.
#include <cstdint>

#include "select_args.h"
#include "select_row.h"

namespace esper_fast {

namespace {

template <typename T>
const T* row_ptr(const T* base, int dtype, int64_t stride, int64_t row) {
  if (base == nullptr) return nullptr;
  return reinterpret_cast<const T*>(reinterpret_cast<const char*>(base) +
                                    row * stride * dtype_size(dtype));
}

int64_t run_row(const SelectArgs& a, uint64_t key, int64_t row) {
  const RowResult r = select_row(
      row_ptr<void>(a.logits, a.logits_dtype, a.logits_stride, row), a.logits_dtype,
      row_ptr<void>(a.q, a.q_dtype, a.q_stride, row), a.q_dtype,
      a.mask != nullptr ? a.mask + row * a.mask_stride : nullptr, nullptr, -1,
      a.noise != nullptr ? a.noise + row * a.noise_stride : nullptr, a.a, a.deterministic, key,
      row, 0u);
  a.out_op[row] = r.action;
  a.out_log_prob[row] = r.log_prob;
  a.out_entropy[row] = r.entropy;
  a.out_q_op[row] = r.q_sel;
  a.out_value[row] = r.value;
  return r.action < 0 ? 1 : 0;
}

// Below this many elements the OpenMP fork/join costs more than it saves.
constexpr int64_t kParallelElements = 1 << 15;

}  // namespace

int64_t select_op_cpu(const SelectArgs& a) {
  const uint64_t key =
      (a.key != nullptr) ? static_cast<uint64_t>(*a.key) : 0u;  // read once, host memory
  int64_t bad = 0;
  if (a.n * a.a < kParallelElements) {
    for (int64_t row = 0; row < a.n; ++row) bad += run_row(a, key, row);
    return bad;
  }
#pragma omp parallel for schedule(static) reduction(+ : bad)
  for (int64_t row = 0; row < a.n; ++row) bad += run_row(a, key, row);
  return bad;
}

}  // namespace esper_fast

#include "select_actions.h"

namespace esper_fast {

int64_t select_actions_cpu(const ActionArgs& a) {
  const bool needs_key = !a.deterministic && a.key != nullptr;
  const uint64_t key = needs_key ? static_cast<uint64_t>(*a.key) : 0u;
  int64_t bad = 0;
  if (a.n < 2048) {
    for (int64_t row = 0; row < a.n; ++row) bad += select_action_row(a, row, key);
    return bad;
  }
#pragma omp parallel for schedule(static) reduction(+ : bad)
  for (int64_t row = 0; row < a.n; ++row) bad += select_action_row(a, row, key);
  return bad;
}

}  // namespace esper_fast
