// The CPU SIMD kernels of select_op and select_actions: W rows per vector step.
//
// Compiled three times by setup.py, each with its own -m flags and EF_SIMD_NS / EF_SIMD_WIDTH:
//   simd_avx512 (W = 16, -march=x86-64-v4), simd_avx2 (W = 8, -march=x86-64-v3),
//   simd_generic (W = 4, baseline ISA; also the build on non-x86 CPUs).
// select_cpu.cpp picks one at run time from the CPU's features (cpu_kernel). Every helper here has
// internal linkage or lives in EF_SIMD_NS, and the shared headers' functions are always_inline (EF_HD),
// so no ISA-specific code is ever shared between builds.
//
// Per block of W rows and per head: each column j is fetched for all lanes (a hardware gather of
// 4-byte words for full blocks that are not the last one, an exact-size scalar load otherwise, so
// nothing is read past the inputs), converted to fp32 bit-exactly (select_row.h's conversions), and
// stored as one lane vector in a small scratch (L1-resident); then the two passes of select_row.h
// run on lanes: pass 1 (validity count, non-finite flag, max, first argmax of logit + Gumbel), pass 2
// (sum e, sum e*d, sum e*q with e = exp(d), d = l - m), finalize. Columns are visited in the same
// order as the scalar code, so the sums round the same way; exp/log are simd.h's polynomials.
#include <cstdint>
#include <cstring>

#ifndef EF_SIMD_NS
#define EF_SIMD_NS simd_generic
#define EF_SIMD_WIDTH 4
#define EF_SIMD_NAME "generic"
#endif

#include "philox_simd.h"
#include "select_actions.h"
#include "select_args.h"
#include "select_cpu_simd.h"
#include "select_row.h"
#include "simd.h"

namespace esper_fast {
namespace EF_SIMD_NS {
namespace {

constexpr int W = EF_SIMD_WIDTH;
typedef V<W>::f vf;
typedef V<W>::i vi;
typedef V<W>::u vu;
typedef V<W>::l vl;

// Where one block's columns come from: lane k reads base + k * stride + extra[k] + j * esize.
struct Src {
  const char* base;  // row0's first element
  int64_t stride;    // bytes between rows
  vi extra;          // per-lane byte offset (slot_by_op: op * n_slots), else 0
  int esize;         // bytes per element
};

// Raw element bits of column j for every lane (zero-extended; lanes >= nrows read 0).
EF_SI vu fetch(const Src& s, int j, int nrows, bool gather) {
  const int64_t jo = static_cast<int64_t>(j) * s.esize;
  if (gather) return gather32<W>(s.base + jo, iota<W>() * static_cast<int32_t>(s.stride) + s.extra);
  vu r = {};
  for (int k = 0; k < nrows; ++k) {
    uint32_t x = 0;
    std::memcpy(&x, s.base + k * s.stride + s.extra[k] + jo, s.esize);
    r[k] = x;
  }
  return r;
}

// Bit-exact fp32 value of raw float32 / bfloat16 / float16 bits (as to_float in select_row.h).
EF_SI vf to_f32(vu raw, int dtype) {
  if (dtype == kFloat32) return (vf)raw;
  if (dtype == kBFloat16) return (vf)((raw & 0xffffu) << 16);
  const vu h = raw & 0xffffu;
  const vu sign = (h & 0x8000u) << 16;
  const vu ex = (h >> 10) & 0x1fu;
  const vu mant = h & 0x3ffu;
  vf sub = __builtin_convertvector((vi)mant, vf) * 5.9604644775390625e-08f;
  sub = (sign != 0u) ? -sub : sub;
  const vf normal = (vf)(sign | ((ex + 112u) << 23) | (mant << 13));
  const vf infnan = (vf)(sign | 0x7f800000u | (mant << 13));
  return (ex == 0u) ? sub : ((ex == 31u) ? infnan : normal);
}

// Whether a block of rows [row0, row0 + W) may use gathers (4-byte reads at each element): only
// when a later, non-overlapping row follows (so no read passes the end of any input) and the lane
// offsets fit in int32.
EF_SI bool can_gather(int64_t row0, int64_t n, int64_t stride_bytes, int a, int esize) {
  return W > 4 && row0 + W < n && stride_bytes >= static_cast<int64_t>(a) * esize &&
         stride_bytes * W + static_cast<int64_t>(a) * esize + 64 < (int64_t{1} << 31);
}

// One head's inputs for a block, as lane vectors in scratch: L logits, Q q (or null), M mask (-1
// valid), G noise (or null). Lanes >= nrows are invalid.
struct Block {
  float* L;
  float* Q;
  int32_t* M;
  float* G;
};

EF_SI Block block_in(float* scratch, int a) {
  return Block{scratch, scratch + a * W, reinterpret_cast<int32_t*>(scratch + 2 * a * W),
               scratch + 3 * a * W};
}

struct HeadIn {
  const void* logits;
  int logits_dtype;
  int64_t logits_stride;  // elements
  const void* q;
  int q_dtype;
  int64_t q_stride;
  const uint8_t* mask;
  int64_t mask_stride;  // bytes
  const float* noise;
  int64_t noise_stride;  // elements
  int a;
};

EF_SI const char* row_addr(const void* base, int64_t row, int64_t stride_bytes) {
  return static_cast<const char*>(base) + row * stride_bytes;
}

// Fetches one head's columns for rows [row0, row0 + nrows) into b.
EF_SI void load_head(const HeadIn& h, int64_t row0, int nrows, int64_t n, Block& b) {
  const vi zero = {};
  const vi live = iota<W>() < nrows;
  const int le = dtype_size(h.logits_dtype);
  const Src ls{row_addr(h.logits, row0, h.logits_stride * le), h.logits_stride * le, zero, le};
  const bool gl = can_gather(row0, n, ls.stride, h.a, le);
  for (int j = 0; j < h.a; ++j) vstore(b.L + j * W, to_f32(fetch(ls, j, nrows, gl), h.logits_dtype));
  if (h.q != nullptr) {
    const int qe = dtype_size(h.q_dtype);
    const Src qs{row_addr(h.q, row0, h.q_stride * qe), h.q_stride * qe, zero, qe};
    const bool gq = can_gather(row0, n, qs.stride, h.a, qe);
    for (int j = 0; j < h.a; ++j) vstore(b.Q + j * W, to_f32(fetch(qs, j, nrows, gq), h.q_dtype));
  }
  if (h.mask != nullptr) {
    const Src ms{row_addr(h.mask, row0, h.mask_stride), h.mask_stride, zero, 1};
    const bool gm = can_gather(row0, n, ms.stride, h.a, 1);
    for (int j = 0; j < h.a; ++j)
      vstore(b.M + j * W, live & (vi)((fetch(ms, j, nrows, gm) & 0xffu) != 0u));
  } else {
    for (int j = 0; j < h.a; ++j) vstore(b.M + j * W, live);
  }
  if (h.noise != nullptr) {
    const Src gs{row_addr(h.noise, row0, h.noise_stride * 4), h.noise_stride * 4, zero, 4};
    const bool gg = can_gather(row0, n, gs.stride, h.a, 4);
    for (int j = 0; j < h.a; ++j) vstore(b.G + j * W, (vf)fetch(gs, j, nrows, gg));
  }
}

struct HeadOut {
  vi action;
  vf log_prob, entropy, q_sel, value;
};

// select_row (select_row.h) on W rows: the two passes and finalize, on lanes.
EF_SI HeadOut head_block(const Block& b, int a, bool has_q, bool has_noise, bool deterministic,
                         uint64_t key, vu row_lo, vu row_hi, uint32_t stream) {
  const float inf = __builtin_inff();
  vf m = splat<vf>(-inf), best_score = splat<vf>(-inf), best_l = {}, best_q = {};
  vi best = splat<vi>(-1), count = {}, bad = {};
  for (int j = 0; j < a; ++j) {
    const vf l = vload<vf>(b.L + j * W);
    const vi v = vload<vi>(b.M + j * W);
    const vf qv = has_q ? vload<vf>(b.Q + j * W) : vf{};
    vf score = l;
    if (!deterministic) {
      score += has_noise ? vload<vf>(b.G + j * W)
                         : gumbel_lanes<W>(philox_uniform_lanes<W>(key, row_lo, row_hi,
                                                                   static_cast<uint32_t>(j), stream));
    }
    count -= v;
    bad |= v & ~finite<W>(l);
    m = (v & (l > m)) ? l : m;
    const vi take = v & ((best < 0) | (score > best_score));
    best = take ? splat<vi>(j) : best;
    best_score = take ? score : best_score;
    best_l = take ? l : best_l;
    best_q = take ? qv : best_q;
  }
  vf s = {}, sl = {}, sq = {};
  for (int j = 0; j < a; ++j) {
    const vi v = vload<vi>(b.M + j * W);
    const vf d = v ? vload<vf>(b.L + j * W) - m : vf{};
    const vf e = v ? vexp<W>(d) : vf{};
    s += e;
    sl += e * d;
    if (has_q) sq += e * (v ? vload<vf>(b.Q + j * W) : vf{});
  }
  const vi ok = (count > 0) & ~bad;
  const vf one = splat<vf>(1.0f);
  const vf ss = ok ? s : one;  // keep log's argument in its domain on bad lanes
  const vf log_s = vlog<W>(ss);
  const vf nan = splat<vf>(__builtin_nanf(""));
  HeadOut r;
  r.action = ok ? best : splat<vi>(-1);
  r.log_prob = ok ? (best_l - m) - log_s : nan;
  r.entropy = ok ? log_s - sl / ss : nan;
  r.q_sel = ok ? best_q : nan;
  r.value = ok ? sq / ss : nan;
  return r;
}

EF_SI void store_f(float* dst, vf v, int nrows) {
  if (nrows == W) {
    vstore(dst, v);
    return;
  }
  for (int k = 0; k < nrows; ++k) dst[k] = v[k];
}

EF_SI void store_l(int64_t* dst, vi v, int nrows) {
  if (nrows == W) {
    vstore(dst, __builtin_convertvector(v, vl));
    return;
  }
  for (int k = 0; k < nrows; ++k) dst[k] = v[k];
}

EF_SI int64_t count_bad(vi action, int nrows) {
  int64_t bad = 0;
  for (int k = 0; k < nrows; ++k) bad += action[k] < 0;
  return bad;
}

int64_t select_rows(const SelectArgs& a, uint64_t key, int64_t begin, int64_t end, float* scratch) {
  const HeadIn h{a.logits, a.logits_dtype, a.logits_stride, a.q,    a.q_dtype,     a.q_stride,
                 a.mask,   a.mask_stride,  a.noise,         a.noise_stride, a.a};
  Block b = block_in(scratch, a.a);
  int64_t bad = 0;
  for (int64_t row0 = begin; row0 < end; row0 += W) {
    const int nrows = static_cast<int>(end - row0 < W ? end - row0 : W);
    load_head(h, row0, nrows, a.n, b);
    vu lo, hi;
    row_words<W>(row0, lo, hi);
    const HeadOut r = head_block(b, a.a, a.q != nullptr, a.noise != nullptr, a.deterministic, key,
                                 lo, hi, 0u);
    store_l(a.out_op + row0, r.action, nrows);
    store_f(a.out_log_prob + row0, r.log_prob, nrows);
    store_f(a.out_entropy + row0, r.entropy, nrows);
    store_f(a.out_q_op + row0, r.q_sel, nrows);
    store_f(a.out_value + row0, r.value, nrows);
    bad += count_bad(r.action, nrows);
  }
  return bad;
}

EF_SI void write_head_block(const ActionArgs& a, int64_t row0, int nrows, int h, const HeadOut& r) {
  const int64_t n = a.n;
  if (h == kOpHead) {
    store_f(a.out_f + 16 * n + row0, r.q_sel, nrows);
    store_f(a.out_f + 17 * n + row0, r.value, nrows);
  }
  store_l(a.out_actions + h * n + row0, r.action, nrows);
  store_f(a.out_f + h * n + row0, r.log_prob, nrows);
  store_f(a.out_f + (kNumHeads + h) * n + row0, r.entropy, nrows);
}

// The op-dependent rules (select_actions.h) on the block's mask lanes: style forced by the op
// (style_forced), slot restricted by slot_by_op[row, op, :] where the op is valid.
EF_SI void apply_op_rules(const ActionArgs& a, int h, int64_t row0, int nrows, vi op, Block& b) {
  const int size = a.size[h];
  const vi all = splat<vi>(-1);
  if (h == kStyleHead) {
    vi forced;
    for (int k = 0; k < W; ++k) forced[k] = style_forced(op[k]);
    for (int j = 0; j < size; ++j)
      vstore(b.M + j * W, entry_valid<vi, vi>(vload<vi>(b.M + j * W), all, forced, j));
  } else if (h == kSlotHead && a.slot_by_op != nullptr) {
    const vi has_op = op >= 0;
    const vi opc = has_op ? op : vi{};
    const Src s{row_addr(a.slot_by_op, row0, a.slot_by_op_stride), a.slot_by_op_stride,
                opc * size, 1};
    const int64_t extent = static_cast<int64_t>(a.size[kOpHead]) * size;
    const bool g = can_gather(row0, a.n, s.stride, static_cast<int>(extent), 1);
    for (int j = 0; j < size; ++j) {
      const vi m2 = ~has_op | (vi)((fetch(s, j, nrows, g) & 0xffu) != 0u);
      vstore(b.M + j * W, entry_valid<vi, vi>(vload<vi>(b.M + j * W), m2, all, j));
    }
  }
}

int64_t action_rows(const ActionArgs& a, uint64_t key, int64_t begin, int64_t end, float* scratch) {
  int max_a = 1;
  for (int h = 0; h < kNumHeads; ++h) max_a = a.size[h] > max_a ? a.size[h] : max_a;
  Block b = block_in(scratch, max_a);
  int64_t bad = 0;
  for (int64_t row0 = begin; row0 < end; row0 += W) {
    const int nrows = static_cast<int>(end - row0 < W ? end - row0 : W);
    vu lo, hi;
    row_words<W>(row0, lo, hi);
    vi any_bad = {};
    vi op = {};
    for (int k = -1; k < kNumHeads - 1; ++k) {
      const int h = k < 0 ? kOpHead : head_after_op(k);
      const bool is_op = h == kOpHead;
      const HeadIn in{a.logits[h],   a.logits_dtype[h], a.logits_stride[h], is_op ? a.q : nullptr,
                      a.q_dtype,     a.q_stride,        a.mask[h],         a.mask_stride[h],
                      a.noise[h],    a.noise_stride[h], a.size[h]};
      load_head(in, row0, nrows, a.n, b);
      if (head_needs_op(h)) apply_op_rules(a, h, row0, nrows, op, b);
      const HeadOut r = head_block(b, a.size[h], is_op, a.noise[h] != nullptr, a.deterministic,
                                   key, lo, hi, static_cast<uint32_t>(h + 1));
      if (is_op) op = r.action;
      any_bad |= r.action < 0;
      write_head_block(a, row0, nrows, h, r);
    }
    for (int k = 0; k < nrows; ++k) bad += any_bad[k] != 0;
  }
  return bad;
}

void math(int what, const float* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += W) {
    vf x = {};
    const int64_t c = n - i < W ? n - i : W;
    for (int64_t k = 0; k < c; ++k) x[k] = in[i + k];
    const vf y = what == 0 ? vexp<W>(x) : (what == 1 ? vlog<W>(x) : gumbel_lanes<W>(x));
    for (int64_t k = 0; k < c; ++k) out[i + k] = y[k];
  }
}

void philox(uint64_t key, int64_t row0, int64_t n, uint32_t col, uint32_t stream, float* out) {
  for (int64_t i = 0; i < n; i += W) {
    vu lo, hi;
    row_words<W>(row0 + i, lo, hi);
    const vf u = philox_uniform_lanes<W>(key, lo, hi, col, stream);
    const int64_t c = n - i < W ? n - i : W;
    for (int64_t k = 0; k < c; ++k) out[i + k] = u[k];
  }
}

}  // namespace

extern const SimdKernel kKernel{EF_SIMD_NAME, W, select_rows, action_rows, math, philox};

}  // namespace EF_SIMD_NS
}  // namespace esper_fast
