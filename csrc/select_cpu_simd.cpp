// The CPU SIMD kernels of select_op and select_actions: W rows per vector step.
//
// Compiled three times by setup.py, each with its own -m flags and EF_SIMD_NS / EF_SIMD_WIDTH:
//   simd_avx512 (W = 16, -march=x86-64-v4), simd_avx2 (W = 8, -march=x86-64-v3),
//   simd_generic (W = 4, baseline ISA; also the build on non-x86 CPUs).
// cpu_dispatch.cpp picks one at run time from the CPU's features (cpu_kernel). Every helper here has
// internal linkage or lives in EF_SIMD_NS, and the shared headers' functions are always_inline (EF_HD),
// so no ISA-specific code is ever shared between builds.
//
// Per block of W rows and per head: the rows are transposed (scalar exact-size loads, converted to
// fp32 bit-exactly with select_row.h's conversions; measured faster than AVX-512 gathers on the
// AMD EPYC this was tuned on) into a small column-major scratch (L1-resident); then the two passes of select_row.h
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

// Scratch of one block, column-major: column j of a head is the lane vector at [j * W].
struct Block {
  float* L;    // logits
  float* Q;    // q (the op head / select_op only)
  int32_t* M;  // validity, -1 = valid, 0 = not (lanes >= nrows are 0)
  float* G;    // explicit noise
  int32_t* M2; // slot_by_op row of each lane's op
};

EF_SI Block block_in(float* scratch, int a) {
  return Block{scratch, scratch + a * W, reinterpret_cast<int32_t*>(scratch + 2 * a * W),
               scratch + 3 * a * W, reinterpret_cast<int32_t*>(scratch + 4 * a * W)};
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

// Transposes rows [0, nrows) x columns [0, a) of a row-strided array into dst[j * W + k] with
// conv(element) (exact-size loads: nothing is read outside the input); lanes >= nrows get 0.
template <typename T, typename D, typename Conv>
EF_SI void transpose(const char* base, int64_t stride_bytes, int nrows, int a, D* dst, Conv conv) {
  for (int k = 0; k < nrows; ++k) {
    const T* row = reinterpret_cast<const T*>(base + k * stride_bytes);
    for (int j = 0; j < a; ++j) dst[j * W + k] = conv(row[j]);
  }
  for (int k = nrows; k < W; ++k)
    for (int j = 0; j < a; ++j) dst[j * W + k] = D{};
}

// A float32 / float16 / bfloat16 array transposed to fp32 (bit-exact conversions of select_row.h).
EF_SI void transpose_float(const void* base, int dtype, int64_t stride, int64_t row0, int nrows,
                           int a, float* dst) {
  const int64_t sb = stride * dtype_size(dtype);
  const char* p = static_cast<const char*>(offset_row(base, sb, 1, row0));
  if (dtype == kFloat32)
    transpose<float>(p, sb, nrows, a, dst, [](float v) { return v; });
  else if (dtype == kBFloat16)
    transpose<bf16_bits>(p, sb, nrows, a, dst, [](bf16_bits v) { return to_float(v); });
  else
    transpose<half_bits>(p, sb, nrows, a, dst, [](half_bits v) { return to_float(v); });
}

// ---- the fast path: a full block of contiguous rows, transposed in registers -----------------
// Rows row0 .. row0 + W - 1 of a row-contiguous [n, a] array are W * a consecutive elements, read
// as a vectors R[r] (elements r*W .. r*W + W - 1; whole vectors, all inside the input). Column j,
// lane k is element e = k*a + j: in the pair (R[2q], R[2q+1]) with q = e / 2W, at e % 2W, so each
// column is ceil(a / 2) two-source shuffles (AVX-512: vpermi2d) and blends.
constexpr int kMaxFastA = 16;

struct Perm {
  vi idx[kMaxFastA];   // (k*a + j) % 2W per lane
  vi pair[kMaxFastA];  // (k*a + j) / 2W per lane
};

EF_SI bool fast_ok(int a) { return W >= 8 && a <= kMaxFastA; }

EF_SI void perm_init(Perm& p, int a) {
  for (int j = 0; j < a && j < kMaxFastA; ++j)
    for (int k = 0; k < W; ++k) {
      p.idx[j][k] = (k * a + j) % (2 * W);
      p.pair[j][k] = (k * a + j) / (2 * W);
    }
}

// Columns of the block held in R[0 .. a] (R[a] padding) to dst[j * W].
template <typename D>
EF_SI void transpose_regs(const vu* R, const Perm& p, int a, D* dst) {
  const int pairs = (a + 1) / 2;
  for (int j = 0; j < a; ++j) {
    vu out = {};
    for (int q = 0; q < pairs; ++q) {
      const vu sh = __builtin_shuffle(R[2 * q], R[2 * q + 1], (vu)p.idx[j]);
      out = (p.pair[j] == q) ? sh : out;
    }
    vstore(dst + j * W, out);
  }
}

// Bit-exact fp32 value of raw float16 / bfloat16 bits per lane (as to_float in select_row.h).
EF_SI vu half_to_f32_bits(vu h, int dtype) {
  if (dtype == kBFloat16) return h << 16;
  const vu sign = (h & 0x8000u) << 16;
  const vu ex = (h >> 10) & 0x1fu;
  const vu mant = h & 0x3ffu;
  vf sub = __builtin_convertvector((vi)mant, vf) * 5.9604644775390625e-08f;
  sub = (sign != 0u) ? -sub : sub;
  const vu normal = sign | ((ex + 112u) << 23) | (mant << 13);
  const vu infnan = sign | 0x7f800000u | (mant << 13);
  return (ex == 0u) ? (vu)sub : ((ex == 31u) ? infnan : normal);
}

typedef uint8_t v8 __attribute__((vector_size(W)));
typedef uint16_t v16 __attribute__((vector_size(2 * W)));

// A float array's block, when its rows are contiguous (stride == a): fp32 columns to dst.
EF_SI void fast_float(const void* base, int dtype, int64_t row0, int a, const Perm& p,
                      float* dst) {
  vu R[kMaxFastA + 1];
  if (dtype == kFloat32) {
    const float* src = static_cast<const float*>(base) + row0 * a;
    for (int r = 0; r < a; ++r) R[r] = vload<vu>(src + r * W);
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(base) + row0 * a;
    for (int r = 0; r < a; ++r)
      R[r] = half_to_f32_bits(__builtin_convertvector(vload<v16>(src + r * W), vu), dtype);
  }
  R[a] = vu{};
  transpose_regs(R, p, a, dst);
}

// A bool mask's block (rows contiguous): -1 / 0 int32 columns to dst.
EF_SI void fast_mask(const uint8_t* base, int64_t row0, int a, const Perm& p, int32_t* dst) {
  vu R[kMaxFastA + 1];
  const uint8_t* src = base + row0 * a;
  for (int r = 0; r < a; ++r) R[r] = (vu)(__builtin_convertvector(vload<v8>(src + r * W), vu) != 0u);
  R[a] = vu{};
  transpose_regs(R, p, a, dst);
}

// Fetches one head's columns for rows [row0, row0 + nrows) into b (the register transpose for
// full blocks of contiguous rows when `p` is given, exact-size scalar loads otherwise).
EF_SI void load_head(const HeadIn& h, int64_t row0, int nrows, Block& b, const Perm* p) {
  const bool full = p != nullptr && nrows == W;
  if (full && h.logits_stride == h.a)
    fast_float(h.logits, h.logits_dtype, row0, h.a, *p, b.L);
  else
    transpose_float(h.logits, h.logits_dtype, h.logits_stride, row0, nrows, h.a, b.L);
  if (h.q != nullptr) {
    if (full && h.q_stride == h.a)
      fast_float(h.q, h.q_dtype, row0, h.a, *p, b.Q);
    else
      transpose_float(h.q, h.q_dtype, h.q_stride, row0, nrows, h.a, b.Q);
  }
  if (h.mask != nullptr) {
    if (full && h.mask_stride == h.a)
      fast_mask(h.mask, row0, h.a, *p, b.M);
    else
      transpose<uint8_t>(reinterpret_cast<const char*>(offset_row(h.mask, h.mask_stride, 1, row0)),
                         h.mask_stride, nrows, h.a, b.M,
                         [](uint8_t v) { return v ? int32_t{-1} : int32_t{0}; });
  } else {
    const vi live = iota<W>() < nrows;
    for (int j = 0; j < h.a; ++j) vstore(b.M + j * W, live);
  }
  if (h.noise != nullptr) {
    if (full && h.noise_stride == h.a)
      fast_float(h.noise, kFloat32, row0, h.a, *p, b.G);
    else
      transpose<float>(reinterpret_cast<const char*>(offset_row(h.noise, h.noise_stride, 4, row0)),
                       h.noise_stride * 4, nrows, h.a, b.G, [](float v) { return v; });
  }
}

struct HeadOut {
  vi action;
  vf log_prob, entropy, q_sel, value;
};

// select_row (select_row.h) on W rows: the two passes and finalize, on lanes.
EF_SI HeadOut head_block(const Block& b, int a, bool has_q, bool has_noise, bool deterministic,
                         uint64_t key, vu row_lo, vu row_hi, uint32_t stream) {
  if (!deterministic && !has_noise) {  // all columns' Gumbel noise first: independent, overlaps
    for (int j = 0; j < a; ++j)
      vstore(b.G + j * W, gumbel_lanes<W>(philox_uniform_lanes<W>(key, row_lo, row_hi,
                                                                  static_cast<uint32_t>(j), stream)));
  }
  const float inf = __builtin_inff();
  vf m = splat<vf>(-inf), best_score = splat<vf>(-inf), best_l = {}, best_q = {};
  vi best = splat<vi>(-1), count = {}, bad = {};
  for (int j = 0; j < a; ++j) {
    const vf l = vload<vf>(b.L + j * W);
    const vi v = vload<vi>(b.M + j * W);
    const vf qv = has_q ? vload<vf>(b.Q + j * W) : vf{};
    vf score = l;
    if (!deterministic) score += vload<vf>(b.G + j * W);
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
    sl += e > 0.0f ? e * d : vf{};  // e underflows to 0 where d = -inf (|logits| ~ 3e38): 0, not NaN (sum_observe)
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
  Perm perm;
  const Perm* p = fast_ok(a.a) ? &perm : nullptr;
  if (p != nullptr) perm_init(perm, a.a);
  int64_t bad = 0;
  for (int64_t row0 = begin; row0 < end; row0 += W) {
    const int nrows = static_cast<int>(end - row0 < W ? end - row0 : W);
    load_head(h, row0, nrows, b, p);
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
    store_f(a.out_f + kQOpRow * n + row0, r.q_sel, nrows);
    store_f(a.out_f + kValueRow * n + row0, r.value, nrows);
  }
  store_l(a.out_actions + h * n + row0, r.action, nrows);
  store_f(a.out_f + (kLogProbRow + h) * n + row0, r.log_prob, nrows);
  store_f(a.out_f + (kEntropyRow + h) * n + row0, r.entropy, nrows);
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
    for (int k = 0; k < W; ++k) {
      const uint8_t* row = k < nrows && op[k] >= 0
                               ? a.slot_by_op + (row0 + k) * a.slot_by_op_stride + op[k] * size
                               : nullptr;  // no op: no slot restriction (as select_head_row)
      for (int j = 0; j < size; ++j) b.M2[j * W + k] = row == nullptr || row[j] ? -1 : 0;
    }
    for (int j = 0; j < size; ++j)
      vstore(b.M + j * W,
             entry_valid<vi, vi>(vload<vi>(b.M + j * W), vload<vi>(b.M2 + j * W), all, j));
  }
}

int64_t action_rows(const ActionArgs& a, uint64_t key, int64_t begin, int64_t end, float* scratch) {
  int max_a = 1;
  for (int h = 0; h < kNumHeads; ++h) max_a = a.size[h] > max_a ? a.size[h] : max_a;
  Block b = block_in(scratch, max_a);
  Perm perms[kNumHeads];
  for (int h = 0; h < kNumHeads; ++h)
    if (fast_ok(a.size[h])) perm_init(perms[h], a.size[h]);
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
      load_head(in, row0, nrows, b, fast_ok(a.size[h]) ? &perms[h] : nullptr);
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
