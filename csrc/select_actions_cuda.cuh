// The CUDA kernel of the fused whole-action ops, written once for select_actions (ActionArgs) and
// select_actions_v2 (ActionArgsV2): eight lanes per row, one per head. The heads chosen before the op
// (head_before_op: v1 the op and the five op-independent heads, v2 the op alone) run first, then the
// op is broadcast by a shuffle and the other lanes choose their heads given it (select_head_row /
// write_head, the same per-row code as the CPU loop).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "select_actions.h"

namespace esper_fast {

constexpr int kActionThreads = 128;

template <typename Args>
__global__ void __launch_bounds__(kActionThreads) select_actions_kernel(Args a) {
  const ActionArgs& base = base_args(a);
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kActionThreads + threadIdx.x;
  const int64_t row = t / kNumHeads;
  const int h = static_cast<int>(t % kNumHeads);
  const bool live = row < base.n;
  const bool needs_key = !base.deterministic && base.key != nullptr;
  const uint64_t key = needs_key ? static_cast<uint64_t>(*base.key) : 0u;
  const bool first = head_before_op(a, h);
  RowResult r{0, 0.0f, 0.0f, 0.0f, 0.0f};
  if (live && first) r = select_head_row(a, row, h, -1, key);
  const int lane = threadIdx.x & 31;
  const int op =
      __shfl_sync(0xffffffffu, static_cast<int>(r.action), (lane & ~(kNumHeads - 1)) | kOpHead);
  if (live && !first) r = select_head_row(a, row, h, op, key);
  if (live) write_head(a, row, h, r);
}

// Enqueues the kernel on `stream_ptr` (a cudaStream_t); returns an error string or null.
template <typename Args>
const char* launch_select_actions(const Args& a, void* stream_ptr) {
  const int64_t n = base_args(a).n;
  if (n == 0) return nullptr;
  const int64_t blocks = (n * kNumHeads + kActionThreads - 1) / kActionThreads;
  select_actions_kernel<Args><<<static_cast<unsigned>(blocks), kActionThreads, 0,
                                static_cast<cudaStream_t>(stream_ptr)>>>(a);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace esper_fast
