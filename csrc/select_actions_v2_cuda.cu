// CUDA backend of the schema-v2 fused whole-action selection (select_actions_v2.h). Eight lanes per
// row, one per head: the op lane chooses the op, a shuffle broadcasts it, then the seven other lanes
// apply the op-dependent canonicalisation and choose their heads (select_head_row_v2, shared with the
// CPU loop).
#include <cuda_runtime.h>

#include "select_actions_v2.h"

namespace esper_fast {

namespace {

constexpr int kActionThreadsV2 = 128;

__global__ void __launch_bounds__(kActionThreadsV2) select_actions_v2_kernel(ActionArgsV2 a) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kActionThreadsV2 + threadIdx.x;
  const int64_t row = t / kNumHeads;
  const int h = static_cast<int>(t % kNumHeads);
  const bool live = row < a.base.n;
  const bool needs_key = !a.base.deterministic && a.base.key != nullptr;
  const uint64_t key = needs_key ? static_cast<uint64_t>(*a.base.key) : 0u;
  RowResult r{0, 0.0f, 0.0f, 0.0f, 0.0f};
  if (live && h == kOpHead) r = select_head_row_v2(a, row, h, -1, key);
  const int lane = threadIdx.x & 31;
  const int op =
      __shfl_sync(0xffffffffu, static_cast<int>(r.action), (lane & ~(kNumHeads - 1)) | kOpHead);
  if (live && h != kOpHead) r = select_head_row_v2(a, row, h, op, key);
  if (live) write_head_v2(a, row, h, r);
}

}  // namespace

const char* select_actions_v2_cuda(const ActionArgsV2& a, void* stream_ptr) {
  if (a.base.n == 0) return nullptr;
  const int64_t blocks = (a.base.n * kNumHeads + kActionThreadsV2 - 1) / kActionThreadsV2;
  select_actions_v2_kernel<<<static_cast<unsigned>(blocks), kActionThreadsV2, 0,
                             static_cast<cudaStream_t>(stream_ptr)>>>(a);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace esper_fast
