// CPU backend of score_actions: the per-row math of score_row.h over all rows, forward and backward.
#include <cstdint>

#include "score_row.h"

namespace esper_fast {

namespace {

// Below this many elements the OpenMP fork/join costs more than it saves.
constexpr int64_t kScoreParallelElements = 1 << 15;

template <typename Acc, bool kBackward>
void run_rows(const ScoreArgs& a) {
  if (a.num_threads <= 1 || a.n * a.a_total < kScoreParallelElements) {
    for (int64_t row = 0; row < a.n; ++row) {
      if (kBackward) score_backward_row<Acc>(a, row); else score_forward_row<Acc>(a, row);
    }
    return;
  }
#pragma omp parallel for schedule(static) num_threads(a.num_threads)
  for (int64_t row = 0; row < a.n; ++row) {
    if (kBackward) score_backward_row<Acc>(a, row); else score_forward_row<Acc>(a, row);
  }
}

}  // namespace

void score_forward_cpu(const ScoreArgs& a) {
  if (a.logits_dtype == kFloat64) run_rows<double, false>(a); else run_rows<float, false>(a);
}

void score_backward_cpu(const ScoreArgs& a) {
  if (a.logits_dtype == kFloat64) run_rows<double, true>(a); else run_rows<float, true>(a);
}

}  // namespace esper_fast
