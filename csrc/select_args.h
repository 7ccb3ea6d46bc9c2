// Arguments of one select_op launch: raw pointers and sizes only (no libtorch), shared by the CPU
// and CUDA entry points and their pybind11 bindings.
#pragma once

#include <cstdint>

namespace esper_fast {

struct SelectArgs {
  const void* logits;     // [N, A] with row stride `logits_stride` (elements), unit column stride
  int logits_dtype;       // DType code (select_row.h)
  int64_t logits_stride;
  const void* q;          // [N, A] or null
  int q_dtype;
  int64_t q_stride;
  const uint8_t* mask;    // [N, A] bool (1 = valid) or null = all valid
  int64_t mask_stride;
  const float* noise;     // [N, A] explicit Gumbel noise or null
  int64_t noise_stride;
  const int64_t* key;     // one int64 Philox key (used when !deterministic and noise == null)
  int64_t n;              // rows
  int a;                  // actions per row
  bool deterministic;
  int64_t* out_op;        // [N] int64 (-1 on a bad row)
  float* out_log_prob;    // [N] float32 (NaN on a bad row, as the three below)
  float* out_entropy;     // [N]
  float* out_q_op;        // [N]
  float* out_value;       // [N]
};

// CPU: runs the rows (OpenMP over rows for large inputs); returns the number of bad rows.
int64_t select_op_cpu(const SelectArgs& args);

// CUDA: enqueues the kernel on `stream` (a cudaStream_t); returns a CUDA error string or null.
const char* select_op_cuda(const SelectArgs& args, void* stream);

// CUDA devices visible to this module's runtime (0 when there is no driver or GPU).
int cuda_device_count();

}  // namespace esper_fast
