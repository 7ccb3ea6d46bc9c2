// Turns the integer arguments that esper_fast/ops/_native.py passes into a SelectArgs.
// Pointers travel as Python ints (tensor.data_ptr()), 0 meaning "absent".
#pragma once

#include <cstdint>

#include <stdexcept>
#include <vector>

#include "select_actions.h"
#include "select_args.h"

namespace esper_fast {

inline SelectArgs make_args(uintptr_t logits, int logits_dtype, int64_t logits_stride, uintptr_t q,
                            int q_dtype, int64_t q_stride, uintptr_t mask, int64_t mask_stride,
                            uintptr_t noise, int64_t noise_stride, uintptr_t key, int64_t n, int a,
                            bool deterministic, uintptr_t out_op, uintptr_t out_log_prob,
                            uintptr_t out_entropy, uintptr_t out_q_op, uintptr_t out_value) {
  return SelectArgs{reinterpret_cast<const void*>(logits),
                    logits_dtype,
                    logits_stride,
                    reinterpret_cast<const void*>(q),
                    q_dtype,
                    q_stride,
                    reinterpret_cast<const uint8_t*>(mask),
                    mask_stride,
                    reinterpret_cast<const float*>(noise),
                    noise_stride,
                    reinterpret_cast<const int64_t*>(key),
                    n,
                    a,
                    deterministic,
                    reinterpret_cast<int64_t*>(out_op),
                    reinterpret_cast<float*>(out_log_prob),
                    reinterpret_cast<float*>(out_entropy),
                    reinterpret_cast<float*>(out_q_op),
                    reinterpret_cast<float*>(out_value)};
}

using Ints = std::vector<int64_t>;

// Per-head vectors (HEAD_NAMES order, 8 entries each) plus shared arguments -> ActionArgs.
inline ActionArgs make_action_args(const Ints& logits, const Ints& logits_dtype,
                                   const Ints& logits_stride, const Ints& mask,
                                   const Ints& mask_stride, const Ints& noise,
                                   const Ints& noise_stride, const Ints& size, uintptr_t q,
                                   int q_dtype, int64_t q_stride, uintptr_t slot_by_op,
                                   int64_t slot_by_op_stride, uintptr_t key, int64_t n,
                                   bool deterministic, uintptr_t out_actions, uintptr_t out_f) {
  for (const Ints* v : {&logits, &logits_dtype, &logits_stride, &mask, &mask_stride, &noise,
                        &noise_stride, &size}) {
    if (v->size() != kNumHeads) throw std::invalid_argument("select_actions: 8 heads expected");
  }
  ActionArgs a{};
  for (int h = 0; h < kNumHeads; ++h) {
    a.logits[h] = reinterpret_cast<const void*>(static_cast<uintptr_t>(logits[h]));
    a.logits_dtype[h] = static_cast<int>(logits_dtype[h]);
    a.logits_stride[h] = logits_stride[h];
    a.mask[h] = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(mask[h]));
    a.mask_stride[h] = mask_stride[h];
    a.noise[h] = reinterpret_cast<const float*>(static_cast<uintptr_t>(noise[h]));
    a.noise_stride[h] = noise_stride[h];
    a.size[h] = static_cast<int>(size[h]);
  }
  a.q = reinterpret_cast<const void*>(q);
  a.q_dtype = q_dtype;
  a.q_stride = q_stride;
  a.slot_by_op = reinterpret_cast<const uint8_t*>(slot_by_op);
  a.slot_by_op_stride = slot_by_op_stride;
  a.key = reinterpret_cast<const int64_t*>(key);
  a.n = n;
  a.deterministic = deterministic;
  a.out_actions = reinterpret_cast<int64_t*>(out_actions);
  a.out_f = reinterpret_cast<float*>(out_f);
  return a;
}

}  // namespace esper_fast
