// Turns the integer arguments that esper_fast/ops/_native.py passes into a SelectArgs.
// Pointers travel as Python ints (tensor.data_ptr()), 0 meaning "absent".
#pragma once

#include <cstdint>

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

}  // namespace esper_fast
