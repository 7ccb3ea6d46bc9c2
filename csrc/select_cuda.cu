// CUDA backend of select_op (and cuda_device_count). Each row is owned by LANES consecutive lanes
// of a warp (LANES = the row width padded to a power of two, at most 32); each lane holds EPT
// elements, interleaved so that consecutive lanes read consecutive columns (coalesced). The per-row math is select_row.h's:
// PickState / SumState observed per element, combined across the row's lanes with shuffles.
#include <cuda_runtime.h>

#include <cstdint>

#include "select_args.h"
#include "select_row.h"

namespace esper_fast {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ PickState shfl_xor(const PickState& p, int off) {
  const unsigned full = 0xffffffffu;
  PickState r;
  r.m = __shfl_xor_sync(full, p.m, off);
  r.best_score = __shfl_xor_sync(full, p.best_score, off);
  r.best_l = __shfl_xor_sync(full, p.best_l, off);
  r.best_q = __shfl_xor_sync(full, p.best_q, off);
  r.best = __shfl_xor_sync(full, p.best, off);
  r.count = __shfl_xor_sync(full, p.count, off);
  r.bad = __shfl_xor_sync(full, p.bad, off);
  return r;
}

__device__ __forceinline__ SumState shfl_xor(const SumState& s, int off) {
  const unsigned full = 0xffffffffu;
  return SumState{__shfl_xor_sync(full, s.s, off), __shfl_xor_sync(full, s.sl, off),
                  __shfl_xor_sync(full, s.sq, off)};
}

// Each lane group owns RPT rows (loads for all of them are issued before any reduction, so more
// bytes are in flight per thread), LANES lanes per row, EPT elements per lane.
template <int LANES, int EPT, int RPT>
__global__ void __launch_bounds__(kThreads) select_kernel(SelectArgs a) {
  constexpr int kRowsPerWarp = 32 / LANES;
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int64_t first_row = warp * kRowsPerWarp * RPT + lane / LANES;
  const int sub = lane % LANES;
  const uint64_t key =
      (!a.deterministic && a.noise == nullptr) ? static_cast<uint64_t>(*a.key) : 0u;

  float lv[RPT][EPT], qv[RPT][EPT];
  bool valid[RPT][EPT];
#pragma unroll
  for (int r = 0; r < RPT; ++r) {  // phase 1: loads
    const int64_t row = first_row + r * kRowsPerWarp;
    const bool live = row < a.n;
    const void* lrow =
        live ? offset_row(a.logits, a.logits_stride, dtype_size(a.logits_dtype), row) : nullptr;
    const void* qrow =
        live ? offset_row(a.q, a.q_stride, dtype_size(a.q_dtype), row) : nullptr;
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
      const int j = e * LANES + sub;
      valid[r][e] = live && j < a.a && (a.mask == nullptr || a.mask[row * a.mask_stride + j]);
      lv[r][e] = valid[r][e] ? load_float(lrow, a.logits_dtype, j) : 0.0f;
      qv[r][e] = (valid[r][e] && qrow != nullptr) ? load_float(qrow, a.q_dtype, j) : 0.0f;
    }
  }
#pragma unroll
  for (int r = 0; r < RPT; ++r) {  // phase 2: choose, reduce across the row's lanes, write
    const int64_t row = first_row + r * kRowsPerWarp;
    PickState p = pick_init();
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
      if (!valid[r][e]) continue;
      const int j = e * LANES + sub;
      float score = lv[r][e];
      if (!a.deterministic) {
        score += a.noise != nullptr
                     ? a.noise[row * a.noise_stride + j]
                     : gumbel(philox_uniform(key, row, static_cast<uint32_t>(j), 0u));
      }
      pick_observe(p, j, lv[r][e], qv[r][e], score);
    }
#pragma unroll
    for (int off = LANES / 2; off > 0; off >>= 1) p = pick_combine(p, shfl_xor(p, off));
    SumState s = sum_init();
    if (p.count > 0 && !p.bad) {
#pragma unroll
      for (int e = 0; e < EPT; ++e) {
        if (valid[r][e]) sum_observe(s, lv[r][e], qv[r][e], p.m);
      }
    }
#pragma unroll
    for (int off = LANES / 2; off > 0; off >>= 1) s = sum_combine(s, shfl_xor(s, off));
    if (row < a.n && sub == 0) {
      const RowResult res = finalize_row(p, s);
      a.out_op[row] = res.action;
      a.out_log_prob[row] = res.log_prob;
      a.out_entropy[row] = res.entropy;
      a.out_q_op[row] = res.q_sel;
      a.out_value[row] = res.value;
    }
  }
}

template <int LANES, int EPT>
cudaError_t launch(const SelectArgs& a, cudaStream_t stream) {
  constexpr int kRpt = EPT == 1 ? 4 : (EPT == 2 ? 2 : 1);
  constexpr int kRowsPerBlock = (kThreads / 32) * (32 / LANES) * kRpt;
  const int64_t blocks = (a.n + kRowsPerBlock - 1) / kRowsPerBlock;
  select_kernel<LANES, EPT, kRpt><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

// Largest row width the CUDA kernel takes (32 lanes x 32 elements).
constexpr int kMaxCudaActions = 1024;

const char* select_op_cuda(const SelectArgs& a, void* stream_ptr) {
  if (a.n == 0) return nullptr;
  if (a.a < 1 || a.a > kMaxCudaActions) return "cuda select_op supports 1 <= A <= 1024";
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t err;
  const int a_pad = a.a <= 1 ? 1 : 1 << (32 - __builtin_clz(static_cast<unsigned>(a.a - 1)));
  switch (a_pad) {
    case 1: err = launch<1, 1>(a, stream); break;
    case 2: err = launch<2, 1>(a, stream); break;
    case 4: err = launch<4, 1>(a, stream); break;
    case 8: err = launch<8, 1>(a, stream); break;
    case 16: err = launch<16, 1>(a, stream); break;
    case 32: err = launch<32, 1>(a, stream); break;
    case 64: err = launch<32, 2>(a, stream); break;
    case 128: err = launch<32, 4>(a, stream); break;
    case 256: err = launch<32, 8>(a, stream); break;
    case 512: err = launch<32, 16>(a, stream); break;
    default: err = launch<32, 32>(a, stream); break;
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

int cuda_device_count() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

}  // namespace esper_fast
