// Compiled CPU kernels for the short recurrences of longseq (issue 17, part 2), forward and backward:
//   - lti_*:  the diagonal linear recurrence x_t = dA x_{t-1} + dB u_t, y_t = f Re(C x_t) of S4D and MEGA's EMA
//             (complex modes as interleaved (re, im) pairs, f = 2; real modes, f = 1), with a mask;
//   - ssd_*:  Mamba-2's scalar-decay recurrence S_t = exp(dt'_t A) S_{t-1} + dt'_t x_t B_t^T, y_t = S_t C_t + D x_t,
//             gated by silu(z), dt' = softplus(dt + dt_bias) or dt + dt_bias;
//   - conv_*: the causal depthwise short convolution of the causal_conv1d package's layout, with a state, a mask
//             (masked tokens are skipped, as if removed), a dilation and an optional silu;
//   - *_step: fused single-token updates of whole layers (S4D / EMA, Mamba-2) for decoding.
// The Python side (longseq/kernels/recurrence.py) holds the autograd Functions and the argument checks; the bindings
// (at the end) resolve lazily conjugated or negated views and refuse tensors off the CPU.
//
// Threading: OpenMP over (batch x channel) or (batch x head) with torch's thread count; every output element is
// computed by one thread in a fixed order, and sums over the batch (parameter gradients) are taken afterwards in
// a fixed order, so results do not depend on the thread count. Small problems run on one thread: a parallel region
// costs more than a decode step.
//
// Backward: states are not stored by the forward. Each (batch, channel) task first runs the forward again keeping
// only the state at the start of every segment of kSegment tokens, then walks the segments backwards, recomputing
// each segment's states from its checkpoint: memory O(T / kSegment + kSegment) states per thread, compute about
// twice a forward, and nothing of size T x state ever allocated.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vector.h"

namespace {

constexpr int64_t kSegment = 64;          // tokens between two checkpoints of the backward recomputation
constexpr int64_t kParallelWork = 16384;  // below this many multiply-adds a call runs on one thread

int threads_for(int64_t work) { return work >= kParallelWork ? at::get_num_threads() : 1; }

template <typename T>
inline T silu(T v) { return v / (T(1) + std::exp(-v)); }

template <typename T>
inline T silu_grad(T v) {  // d silu / dv, as torch's silu_backward
  const T s = T(1) / (T(1) + std::exp(-v));
  return s * (T(1) + v * (T(1) - s));
}

template <typename T>
inline T softplus(T v) { return v > T(20) ? v : std::log1p(std::exp(v)); }  // torch's default threshold

template <typename T>
inline T softplus_grad(T v) {
  if (v > T(20)) return T(1);
  const T e = std::exp(v);
  return e / (e + T(1));
}

template <typename T>
inline T gelu(T v) { return v * T(0.5) * (T(1) + std::erf(v * T(M_SQRT1_2))); }  // torch's exact (erf) GELU

// The vector helpers shared with the other kernels (vector.h): one 64-byte register's lanes, sums in fixed orders.
using longseq::dot;
using longseq::lane_sum;
using longseq::load;
using longseq::matvec;
using longseq::Vec;

// Shape checks: the Python side passes checked arguments; these keep a wrong call from reading out of bounds.
void expect(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(t.sizes() == shape, "longseq recurrence kernel: ", name, " has shape ", t.sizes(), ", expected ", shape);
}

void expect(const c10::optional<at::Tensor>& t, at::IntArrayRef shape, const char* name) {
  if (t.has_value()) expect(*t, shape, name);
}

void expect_mask(const c10::optional<at::Tensor>& mask, at::IntArrayRef shape) {
  if (!mask.has_value()) return;
  TORCH_CHECK(mask->scalar_type() == at::kBool, "longseq recurrence kernel: mask must be bool");
  expect(*mask, shape, "mask");
}

const bool* mask_ptr(const c10::optional<at::Tensor>& mask) {
  return mask.has_value() ? mask->data_ptr<bool>() : nullptr;
}

// ------------------------------------------------------------------------------------------ diagonal LTI scan

// The data of x0, dA, dB, C or a state as T*: contiguous, complex tensors as interleaved (re, im) pairs. `hold`
// keeps a copy alive when one was needed (no ATen call otherwise: a decode step makes many).
template <typename T>
T* reals(const at::Tensor& t, at::Tensor& hold) {
  hold = t.is_contiguous() ? t : t.contiguous();
  return reinterpret_cast<T*>(hold.data_ptr());
}

// Strides of u: (B, H, T) and mask: (B, T); states (B, H, W) and parameters (H, W) are contiguous, W = 2M (complex)
// or M (real).
struct LTIShape {
  int64_t batch, heads, length, modes;
  bool cplx;  // complex modes (interleaved pairs)
  int64_t su_b, su_h, su_t, sm_b, sm_t;
};

// The pair shuffles of complex arithmetic on interleaved (re, im) lanes.
template <typename V>
inline V real_parts(V v) {  // [re0, re0, re1, re1, ...]
  if constexpr (sizeof(v[0]) == 4)
    return __builtin_shufflevector(v, v, 0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14);
  else
    return __builtin_shufflevector(v, v, 0, 0, 2, 2, 4, 4, 6, 6);
}
template <typename V>
inline V imag_parts(V v) {  // [im0, im0, im1, im1, ...]
  if constexpr (sizeof(v[0]) == 4)
    return __builtin_shufflevector(v, v, 1, 1, 3, 3, 5, 5, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15);
  else
    return __builtin_shufflevector(v, v, 1, 1, 3, 3, 5, 5, 7, 7);
}
template <typename V>
inline V swap_pairs(V v) {  // [im0, re0, im1, re1, ...]
  if constexpr (sizeof(v[0]) == 4)
    return __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  else
    return __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
}

// One token for one (b, h): out = dA x + dB u (out may be x); returns f Re(C out). Complex modes are computed over
// their interleaved (re, im) pairs in vectors of L lanes, the last vector zero-padded: per mode re' = (a_re x_re -
// a_im x_im) + b_re u, im' = (a_re x_im + a_im x_re) + b_im u. The readout sums c_re re' + c_im (-im') lane-wise over
// the full vectors, the lanes by halves, then the last modes in order. The update is written as vector operations
// only: a scalar loop over the last modes was vectorised by GCC 12 with fused multiply-add-subtract instructions
// (vfmaddsub) despite -ffp-contract=off, in some inlining contexts only, so that its last bits (and whether the
// state and the readout were rounded alike) changed whenever the code around it did.
template <typename T, bool CPLX>
inline T lti_token(const T* x, T* out, const T* a, const T* b, const T* c, T u, int64_t modes) {
  if (!CPLX) {
    for (int64_t m = 0; m < modes; ++m) out[m] = a[m] * x[m] + b[m] * u;
    return dot(c, out, modes);
  }
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::lanes;
  static constexpr T kSigns[16] = {1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1};
  const V sign = load(kSigns), us = u - V{};  // (1, -1, ...); u in every lane (u - 0 is u, -0 included)
  auto update = [&](V va, V vx, V vb) {
    return (real_parts(va) * vx + imag_parts(va) * swap_pairs(vx) * -sign) + vb * us;
  };
  V acc = {};
  int64_t k = 0;  // the next real lane
  for (; k + L <= 2 * modes; k += L) {
    const V n = update(load(a + k), load(x + k), load(b + k));
    std::memcpy(out + k, &n, sizeof(V));
    acc += load(c + k) * (n * sign);
  }
  // The last modes (fewer than one vector) one pair at a time, as two-lane vectors with the same operations.
  typedef T P __attribute__((vector_size(2 * sizeof(T))));
  const int64_t rest = 2 * modes - k;
  T tail[L];  // the last modes' (re', -im')
  for (int64_t j = 0; j < rest; j += 2) {
    P pa, px, pb;
    std::memcpy(&pa, a + k + j, sizeof(P));
    std::memcpy(&px, x + k + j, sizeof(P));
    std::memcpy(&pb, b + k + j, sizeof(P));
    const P psign = {1, -1}, pu = u - P{};
    const P n = (P{pa[0], pa[0]} * px + P{pa[1], pa[1]} * P{px[1], px[0]} * -psign) + pb * pu;
    std::memcpy(out + k + j, &n, sizeof(P));
    const P w = n * psign;
    std::memcpy(tail + j, &w, sizeof(P));
  }
  return T(2) * (lane_sum<T>(acc) + dot(c + k, tail, rest));
}

template <typename T, bool CPLX>
void lti_forward(const LTIShape& s, const T* u, const bool* mask, const T* x0, const T* dA, const T* dB,
                 const T* C, T* y, T* xT) {
  const int64_t width = CPLX ? 2 * s.modes : s.modes;
  const int64_t tasks = s.batch * s.heads;
  const int nt = threads_for(tasks * s.length * width);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t bi = task / s.heads, h = task % s.heads;
    T* x = xT + task * width;
    std::copy(x0 + task * width, x0 + (task + 1) * width, x);
    const T *a = dA + h * width, *b = dB + h * width, *c = C + h * width;
    for (int64_t t = 0; t < s.length; ++t) {
      const bool valid = !mask || mask[bi * s.sm_b + t * s.sm_t];
      const T ut = u[bi * s.su_b + h * s.su_h + t * s.su_t];
      y[task * s.length + t] = valid ? lti_token<T, CPLX>(x, x, a, b, c, ut, s.modes) : T(0);
    }
  }
}

template <typename T, bool CPLX>
void lti_backward(const LTIShape& s, const T* gy, const T* gxT, const T* u, const bool* mask, const T* x0,
                  const T* dA, const T* dB, const T* C, T* gu, T* gx0, T* gA_part, T* gB_part, T* gC_part) {
  const int64_t width = CPLX ? 2 * s.modes : s.modes;
  const T f = CPLX ? T(2) : T(1);
  const int64_t tasks = s.batch * s.heads;
  const int64_t segments = (s.length + kSegment - 1) / kSegment;
  const int nt = threads_for(3 * tasks * s.length * width);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    std::vector<T> checkpoints(segments * width), states((kSegment + 1) * width), x(width);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t bi = task / s.heads, h = task % s.heads;
      const T *a = dA + h * width, *b = dB + h * width, *c = C + h * width;
      auto valid = [&](int64_t t) { return !mask || mask[bi * s.sm_b + t * s.sm_t]; };
      auto input = [&](int64_t t) { return u[bi * s.su_b + h * s.su_h + t * s.su_t]; };
      std::copy(x0 + task * width, x0 + (task + 1) * width, x.begin());
      for (int64_t t = 0; t < s.length; ++t) {
        if (t % kSegment == 0) std::copy(x.begin(), x.end(), checkpoints.begin() + (t / kSegment) * width);
        if (valid(t)) lti_token<T, CPLX>(x.data(), x.data(), a, b, c, input(t), s.modes);
      }
      T* g = gx0 + task * width;  // the adjoint of the state, carried backwards; ends as the initial state's gradient
      std::copy(gxT + task * width, gxT + (task + 1) * width, g);
      T *gA = gA_part + task * width, *gB = gB_part + task * width, *gC = gC_part + task * width;
      std::fill(gA, gA + width, T(0));
      std::fill(gB, gB + width, T(0));
      std::fill(gC, gC + width, T(0));
      for (int64_t seg = segments - 1; seg >= 0; --seg) {
        const int64_t start = seg * kSegment, end = std::min(s.length, start + kSegment);
        std::copy(checkpoints.begin() + seg * width, checkpoints.begin() + (seg + 1) * width, states.begin());
        for (int64_t t = start; t < end; ++t) {  // states[t - start + 1] = the state after token t
          T* next = states.data() + (t - start + 1) * width;
          if (valid(t))
            lti_token<T, CPLX>(next - width, next, a, b, c, input(t), s.modes);
          else
            std::copy(next - width, next, next);
        }
        for (int64_t t = end - 1; t >= start; --t) {
          const int64_t at_t = task * s.length + t;
          if (!valid(t)) {  // the state passed through unchanged: so does its adjoint
            gu[at_t] = 0;
            continue;
          }
          const T gyt = f * gy[at_t], ut = input(t);
          const T *now = states.data() + (t - start + 1) * width, *prev = now - width;
          T gut = 0;
          if (CPLX) {
            for (int64_t m = 0; m < s.modes; ++m) {
              const int64_t r = 2 * m, i = 2 * m + 1;
              // y = f Re(c x): dL/dx += f gy conj(c), dL/dc += f gy conj(x)
              const T gr = g[r] + gyt * c[r], gi = g[i] - gyt * c[i];
              gC[r] += gyt * now[r];
              gC[i] -= gyt * now[i];
              // x = a x_prev + b u: dL/du = Re(conj(b) g), dL/da = conj(x_prev) g, dL/db = u g,
              // dL/dx_prev = conj(a) g
              gut += b[r] * gr + b[i] * gi;
              gA[r] += prev[r] * gr + prev[i] * gi;
              gA[i] += prev[r] * gi - prev[i] * gr;
              gB[r] += ut * gr;
              gB[i] += ut * gi;
              g[r] = a[r] * gr + a[i] * gi;
              g[i] = a[r] * gi - a[i] * gr;
            }
          } else {
            for (int64_t m = 0; m < s.modes; ++m) {
              const T gm = g[m] + gyt * c[m];
              gC[m] += gyt * now[m];
              gut += b[m] * gm;
              gA[m] += prev[m] * gm;
              gB[m] += ut * gm;
              g[m] = a[m] * gm;
            }
          }
          gu[at_t] = gut;
        }
      }
    }
  }
}

// out[o, i] = sum over k of in[o, k, i], k in increasing order: in: (outer, mid, inner) contiguous.
template <typename T>
void sum_middle(const T* in, T* out, int64_t outer, int64_t mid, int64_t inner) {
  const int nt = threads_for(outer * mid * inner);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t o = 0; o < outer * inner; ++o) {
    const T* src = in + (o / inner) * mid * inner + o % inner;
    T acc = 0;
    for (int64_t k = 0; k < mid; ++k) acc += src[k * inner];
    out[o] = acc;
  }
}

// Sums part: (B, rest) over the batch in a fixed order into out: (rest).
template <typename T>
void sum_batch(const T* part, T* out, int64_t batch, int64_t rest) { sum_middle(part, out, 1, batch, rest); }

// u: (B, H, T) real (float32/64) or (B, H) for one token; x0: (B, H, M) and dA, dB, C: (H, M), complex (of u's
// precision) or real; mask: bool (B, T) or (B,). Sizes checked here too, so that no call reads out of bounds.
// With `pairs`, x0: (B, H, M, 2) and dA, dB, C: (H, M, 2) may instead be the real views of complex ones, of u's dtype
// (the same interleaved pairs: a decode step then needs no view of the state as complex and back).
LTIShape check_lti(const at::Tensor& u, const at::Tensor& x0, const at::Tensor& dA, const at::Tensor& dB,
                   const at::Tensor& C, const c10::optional<at::Tensor>& mask, bool pairs = false) {
  const bool view = pairs && x0.dim() == 4;
  TORCH_CHECK((u.dim() == 3 || u.dim() == 2) && x0.dim() == (view ? 4 : 3), "longseq recurrence kernel: u must be "
              "(B, H, T) or (B, H), x0 (B, H, M)", pairs ? " or (B, H, M, 2)" : "");
  const bool one = u.dim() == 2;
  const int64_t batch = u.size(0), heads = u.size(1), length = one ? 1 : u.size(2), modes = x0.size(2);
  if (view) {
    expect(x0, {batch, heads, modes, 2}, "x0");
    expect(dA, {heads, modes, 2}, "dA");
    expect(dB, {heads, modes, 2}, "dB");
    expect(C, {heads, modes, 2}, "C");
  } else {
    expect(x0, {batch, heads, modes}, "x0");
    expect(dA, {heads, modes}, "dA");
    expect(dB, {heads, modes}, "dB");
    expect(C, {heads, modes}, "C");
  }
  TORCH_CHECK(dA.scalar_type() == x0.scalar_type() && dB.scalar_type() == x0.scalar_type() &&
              C.scalar_type() == x0.scalar_type() && at::toRealValueType(x0.scalar_type()) == u.scalar_type(),
              "longseq recurrence kernel: x0, dA, dB, C must share one dtype, u its real counterpart");
  LTIShape s{batch, heads, length, modes, view || x0.is_complex(), u.stride(0), u.stride(1), one ? 0 : u.stride(2),
             0, 0};
  if (one) {
    expect_mask(mask, {batch});
  } else {
    expect_mask(mask, {batch, length});
  }
  if (mask.has_value()) {
    s.sm_b = mask->stride(0);
    s.sm_t = one ? 0 : mask->stride(1);
  }
  return s;
}

// Returns y: (B, H, T) and the final state (B, H, M) (x0's dtype).
std::vector<at::Tensor> lti_scan_forward(const at::Tensor& u, const at::Tensor& x0, const at::Tensor& dA,
                                         const at::Tensor& dB, const at::Tensor& C,
                                         const c10::optional<at::Tensor>& mask) {
  const LTIShape s = check_lti(u, x0, dA, dB, C, mask);
  const bool cplx = x0.is_complex();
  auto y = at::empty({s.batch, s.heads, s.length}, u.options());
  auto xT = at::empty({s.batch, s.heads, s.modes}, x0.options());
  at::Tensor h0, h1, h2, h3, h4;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "lti_scan_forward", [&] {
    auto run = cplx ? lti_forward<scalar_t, true> : lti_forward<scalar_t, false>;
    run(s, u.data_ptr<scalar_t>(), mask_ptr(mask), reals<scalar_t>(x0, h0), reals<scalar_t>(dA, h1),
        reals<scalar_t>(dB, h2), reals<scalar_t>(C, h3), y.data_ptr<scalar_t>(), reals<scalar_t>(xT, h4));
  });
  return {y, xT};
}

// Gradients of lti_scan_forward: (gu, gx0, gdA, gdB, gC) from gy: (B, H, T) and gxT: (B, H, M), complex gradients in
// PyTorch's convention (dL/dRe + i dL/dIm).
std::vector<at::Tensor> lti_scan_backward(const at::Tensor& gy, const at::Tensor& gxT, const at::Tensor& u,
                                          const at::Tensor& x0, const at::Tensor& dA, const at::Tensor& dB,
                                          const at::Tensor& C, const c10::optional<at::Tensor>& mask) {
  const LTIShape s = check_lti(u, x0, dA, dB, C, mask);
  expect(gy, u.sizes(), "gy");
  expect(gxT, x0.sizes(), "gxT");
  const bool cplx = x0.is_complex();
  const int64_t width = cplx ? 2 * s.modes : s.modes;
  auto gyc = gy.contiguous();
  auto gu = at::empty({s.batch, s.heads, s.length}, u.options());
  auto gx0 = at::empty({s.batch, s.heads, s.modes}, x0.options());
  auto parts = at::empty({3, s.batch, s.heads, width}, u.options());
  auto grads = at::empty({3, s.heads, s.modes}, x0.options());
  at::Tensor h0, h1, h2, h3, h4, h5, h6;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "lti_scan_backward", [&] {
    auto run = cplx ? lti_backward<scalar_t, true> : lti_backward<scalar_t, false>;
    scalar_t* p = parts.data_ptr<scalar_t>();
    scalar_t* g = reals<scalar_t>(grads, h6);
    const int64_t part = s.batch * s.heads * width;
    run(s, gyc.data_ptr<scalar_t>(), reals<scalar_t>(gxT.to(x0.scalar_type()), h0), u.data_ptr<scalar_t>(),
        mask_ptr(mask), reals<scalar_t>(x0, h1), reals<scalar_t>(dA, h2), reals<scalar_t>(dB, h3),
        reals<scalar_t>(C, h4), gu.data_ptr<scalar_t>(), reals<scalar_t>(gx0, h5), p, p + part, p + 2 * part);
    for (int64_t k = 0; k < 3; ++k) sum_batch(p + k * part, g + k * s.heads * width, s.batch, s.heads * width);
  });
  return {gu, gx0, grads[0], grads[1], grads[2]};
}

// ------------------------------------------------------------------------------------------ SSD (Mamba-2) scan

// x, z: (B, L, H, P), dt: (B, L, H), Bm, Cm: (B, L, G, N), any strides; A, dt_bias: (H,), D: (H,) or (H, P),
// states (B, H, P, N): contiguous. d_mode: 0 no D, 1 D per head, 2 D per head and channel.
template <typename T>
struct SSDArgs {
  int64_t batch, length, heads, hdim, groups, nstate;
  const T *x, *dt, *A, *Bm, *Cm, *D, *z, *bias, *S0;
  int64_t sx[4], sdt[3], sB[4], sC[4], sz[4];
  int d_mode;
  bool softplus;
};

// The per-token quantities of one (b, h) at token t, gathered into contiguous buffers.
template <typename T>
struct SSDToken {
  std::vector<T> x, z, B, C;
  T v, dtp, a;  // dt + dt_bias, dt', exp(dt' A)
  SSDToken(int64_t p, int64_t n) : x(p), z(p), B(n), C(n), v(0), dtp(0), a(0) {}

  void load(const SSDArgs<T>& g, int64_t bi, int64_t t, int64_t h) {
    const int64_t grp = h / (g.heads / g.groups);
    const T* xp = g.x + bi * g.sx[0] + t * g.sx[1] + h * g.sx[2];
    for (int64_t p = 0; p < g.hdim; ++p) x[p] = xp[p * g.sx[3]];
    if (g.z) {
      const T* zp = g.z + bi * g.sz[0] + t * g.sz[1] + h * g.sz[2];
      for (int64_t p = 0; p < g.hdim; ++p) z[p] = zp[p * g.sz[3]];
    }
    const T* bp = g.Bm + bi * g.sB[0] + t * g.sB[1] + grp * g.sB[2];
    const T* cp = g.Cm + bi * g.sC[0] + t * g.sC[1] + grp * g.sC[2];
    for (int64_t n = 0; n < g.nstate; ++n) {
      B[n] = bp[n * g.sB[3]];
      C[n] = cp[n * g.sC[3]];
    }
    v = g.dt[bi * g.sdt[0] + t * g.sdt[1] + h * g.sdt[2]] + (g.bias ? g.bias[h] : T(0));
    dtp = g.softplus ? softplus(v) : v;
    a = std::exp(dtp * g.A[h]);
  }
};

template <typename T>
inline T ssd_d(const SSDArgs<T>& g, int64_t h, int64_t p) {
  return g.d_mode == 0 ? T(0) : g.d_mode == 1 ? g.D[h] : g.D[h * g.hdim + p];
}

// S <- a S + (dt' x) B^T for one token; S: (P, N) contiguous.
template <typename T>
inline void ssd_advance(T* S, const SSDToken<T>& k, int64_t P, int64_t N) {
  for (int64_t p = 0; p < P; ++p) {
    const T xs = k.dtp * k.x[p];
    T* row = S + p * N;
    for (int64_t n = 0; n < N; ++n) row[n] = k.a * row[n] + xs * k.B[n];
  }
}

template <typename T>
void ssd_forward(const SSDArgs<T>& g, T* y, T* S_final) {
  const int64_t P = g.hdim, N = g.nstate, tasks = g.batch * g.heads;
  const int nt = threads_for(tasks * g.length * P * N);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t bi = task / g.heads, h = task % g.heads;
    T* S = S_final + task * P * N;
    if (g.S0) std::copy(g.S0 + task * P * N, g.S0 + (task + 1) * P * N, S);
    else std::fill(S, S + P * N, T(0));
    SSDToken<T> k(P, N);
    for (int64_t t = 0; t < g.length; ++t) {
      k.load(g, bi, t, h);
      ssd_advance(S, k, P, N);
      T* out = y + ((bi * g.length + t) * g.heads + h) * P;
      for (int64_t p = 0; p < P; ++p) {
        const T o = dot(S + p * N, k.C.data(), N) + ssd_d(g, h, p) * k.x[p];
        out[p] = g.z ? o * silu(k.z[p]) : o;
      }
    }
  }
}

// Per (b, h) gradients; parameter and shared-B/C gradients go to per-task parts, summed afterwards.
template <typename T>
void ssd_backward(const SSDArgs<T>& g, const T* gy, const T* gS, T* gx, T* gdt, T* gz, T* gS0, T* gBh, T* gCh,
                  T* gA_part, T* gbias_part, T* gD_part) {
  const int64_t P = g.hdim, N = g.nstate, PN = P * N, tasks = g.batch * g.heads;
  const int64_t segments = (g.length + kSegment - 1) / kSegment;
  const int nt = threads_for(3 * tasks * g.length * PN);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t bi = task / g.heads, h = task % g.heads;
    SSDToken<T> k(P, N);
    std::vector<T> checkpoints(segments * PN), states((kSegment + 1) * PN), gyc(P), GB(P);
    std::vector<T> S(PN, T(0));
    if (g.S0) std::copy(g.S0 + task * PN, g.S0 + (task + 1) * PN, S.begin());
    for (int64_t t = 0; t < g.length; ++t) {
      if (t % kSegment == 0) std::copy(S.begin(), S.end(), checkpoints.begin() + (t / kSegment) * PN);
      k.load(g, bi, t, h);
      ssd_advance(S.data(), k, P, N);
    }
    T* G = gS0 + task * PN;  // the state's adjoint, carried backwards
    std::copy(gS + task * PN, gS + (task + 1) * PN, G);
    T gA = 0, gbias = 0;
    T* gD = gD_part + task * P;
    std::fill(gD, gD + P, T(0));
    for (int64_t seg = segments - 1; seg >= 0; --seg) {
      const int64_t start = seg * kSegment, end = std::min(g.length, start + kSegment);
      std::copy(checkpoints.begin() + seg * PN, checkpoints.begin() + (seg + 1) * PN, states.begin());
      for (int64_t t = start; t < end; ++t) {
        T* next = states.data() + (t - start + 1) * PN;
        std::copy(next - PN, next, next);
        k.load(g, bi, t, h);
        ssd_advance(next, k, P, N);
      }
      for (int64_t t = end - 1; t >= start; --t) {
        k.load(g, bi, t, h);
        const T *now = states.data() + (t - start + 1) * PN, *prev = now - PN;
        const int64_t row = (bi * g.length + t) * g.heads + h;  // index of (b, t, h)
        const T* gyt = gy + row * P;
        T* gxt = gx + row * P;
        for (int64_t p = 0; p < P; ++p) {
          const T dp = ssd_d(g, h, p);
          if (g.z) {
            const T o = dot(now + p * N, k.C.data(), N) + dp * k.x[p];
            gz[row * P + p] = gyt[p] * o * silu_grad(k.z[p]);
            gyc[p] = gyt[p] * silu(k.z[p]);
          } else {
            gyc[p] = gyt[p];
          }
          gD[p] += gyc[p] * k.x[p];
          gxt[p] = dp * gyc[p];
        }
        // y = S C: dL/dC += S^T gyc, dL/dS += gyc C^T
        T* gCt = gCh + row * N;
        std::fill(gCt, gCt + N, T(0));
        for (int64_t p = 0; p < P; ++p) {
          const T* srow = now + p * N;
          T* grow = G + p * N;
          const T gp = gyc[p];
          for (int64_t n = 0; n < N; ++n) gCt[n] += srow[n] * gp;
          for (int64_t n = 0; n < N; ++n) grow[n] += gp * k.C[n];
        }
        // S = a S_prev + dt' x B^T
        T ga = 0;
        T* gBt = gBh + row * N;
        std::fill(gBt, gBt + N, T(0));
        for (int64_t p = 0; p < P; ++p) {
          const T* grow = G + p * N;
          const T xp = k.x[p];
          ga += dot(grow, prev + p * N, N);
          for (int64_t n = 0; n < N; ++n) gBt[n] += grow[n] * xp;
          GB[p] = dot(grow, k.B.data(), N);
        }
        T gdtp = 0;
        for (int64_t p = 0; p < P; ++p) {
          gdtp += k.x[p] * GB[p];
          gxt[p] += k.dtp * GB[p];
        }
        for (int64_t n = 0; n < N; ++n) gBt[n] *= k.dtp;
        gdtp += ga * k.a * g.A[h];
        gA += ga * k.a * k.dtp;
        for (int64_t q = 0; q < PN; ++q) G[q] *= k.a;
        const T gv = g.softplus ? gdtp * softplus_grad(k.v) : gdtp;
        gdt[row] = gv;
        gbias += gv;
      }
    }
    gA_part[task] = gA;
    gbias_part[task] = gbias;
  }
}

template <typename T>
SSDArgs<T> ssd_args(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                    const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias,
                    bool softplus, const at::Tensor& S0) {
  SSDArgs<T> g{};
  g.batch = x.size(0);
  g.length = x.size(1);
  g.heads = x.size(2);
  g.hdim = x.size(3);
  g.groups = Bm.size(2);
  g.nstate = Bm.size(3);
  g.x = x.data_ptr<T>();
  g.dt = dt.data_ptr<T>();
  g.A = A.data_ptr<T>();
  g.Bm = Bm.data_ptr<T>();
  g.Cm = Cm.data_ptr<T>();
  g.D = D.defined() ? D.data_ptr<T>() : nullptr;
  g.d_mode = !D.defined() ? 0 : D.dim() == 1 ? 1 : 2;
  g.z = z.defined() ? z.data_ptr<T>() : nullptr;
  g.bias = bias.defined() ? bias.data_ptr<T>() : nullptr;
  g.S0 = S0.defined() ? S0.data_ptr<T>() : nullptr;
  g.softplus = softplus;
  for (int i = 0; i < 4; ++i) {
    g.sx[i] = x.stride(i);
    g.sB[i] = Bm.stride(i);
    g.sC[i] = Cm.stride(i);
    g.sz[i] = z.defined() ? z.stride(i) : 0;
  }
  for (int i = 0; i < 3; ++i) g.sdt[i] = dt.stride(i);
  return g;
}

at::Tensor contiguous_or_undefined(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

at::Tensor or_undefined(const c10::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

void check_ssd(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
               const at::Tensor& Cm, const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
               const c10::optional<at::Tensor>& dt_bias, const c10::optional<at::Tensor>& S0) {
  TORCH_CHECK(x.dim() == 4 && Bm.dim() == 4, "longseq recurrence kernel: x and B must be 4-d");
  const int64_t b = x.size(0), l = x.size(1), h = x.size(2), p = x.size(3), g = Bm.size(2), n = Bm.size(3);
  TORCH_CHECK(g > 0 && h % g == 0, "longseq recurrence kernel: groups ", g, " do not divide heads ", h);
  expect(dt, {b, l, h}, "dt");
  expect(A, {h}, "A");
  expect(Bm, {b, l, g, n}, "B");
  expect(Cm, {b, l, g, n}, "C");
  TORCH_CHECK(!D.has_value() || D->numel() == h || D->numel() == h * p,
              "longseq recurrence kernel: D must be (H,) or (H, P)");
  expect(z, x.sizes(), "z");
  expect(dt_bias, {h}, "dt_bias");
  expect(S0, {b, h, p, n}, "initial state");
}

// x: (B, L, H, P), dt: (B, L, H), A: (H,), Bm, Cm: (B, L, G, N), D: (H,) or (H, P), z: (B, L, H, P), dt_bias: (H,),
// S0: (B, H, P, N), one dtype. Returns y: (B, L, H, P) and the final state (B, H, P, N).
std::vector<at::Tensor> ssd_scan_forward(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                         const at::Tensor& Bm, const at::Tensor& Cm,
                                         const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                                         const c10::optional<at::Tensor>& dt_bias, bool softplus,
                                         const c10::optional<at::Tensor>& S0) {
  check_ssd(x, dt, A, Bm, Cm, D, z, dt_bias, S0);
  auto Ac = A.contiguous(), Dc = contiguous_or_undefined(D), biasc = contiguous_or_undefined(dt_bias);
  auto S0c = contiguous_or_undefined(S0), zt = or_undefined(z);
  auto y = at::empty({x.size(0), x.size(1), x.size(2), x.size(3)}, x.options());
  auto S = at::empty({x.size(0), x.size(2), x.size(3), Bm.size(3)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssd_scan_forward", [&] {
    auto g = ssd_args<scalar_t>(x, dt, Ac, Bm, Cm, Dc, zt, biasc, softplus, S0c);
    ssd_forward(g, y.data_ptr<scalar_t>(), S.data_ptr<scalar_t>());
  });
  return {y, S};
}

// Gradients of ssd_scan_forward from gy: (B, L, H, P) and gS: (B, H, P, N): (gx, gdt, gA, gB, gC, gD, gz, gdt_bias,
// gS0); an argument that was not given gets an undefined gradient.
std::vector<at::Tensor> ssd_scan_backward(const at::Tensor& gy, const at::Tensor& gS, const at::Tensor& x,
                                          const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                                          const at::Tensor& Cm, const c10::optional<at::Tensor>& D,
                                          const c10::optional<at::Tensor>& z,
                                          const c10::optional<at::Tensor>& dt_bias, bool softplus,
                                          const c10::optional<at::Tensor>& S0) {
  check_ssd(x, dt, A, Bm, Cm, D, z, dt_bias, S0);
  expect(gy, x.sizes(), "gy");
  expect(gS, {x.size(0), x.size(2), x.size(3), Bm.size(3)}, "gS");
  auto Ac = A.contiguous(), Dc = contiguous_or_undefined(D), biasc = contiguous_or_undefined(dt_bias);
  auto S0c = contiguous_or_undefined(S0), zt = or_undefined(z);
  auto gyc = gy.contiguous(), gSc = gS.contiguous();
  const int64_t batch = x.size(0), length = x.size(1), heads = x.size(2), P = x.size(3);
  const int64_t groups = Bm.size(2), N = Bm.size(3), ratio = heads / groups;
  auto gx = at::empty({batch, length, heads, P}, x.options());
  auto gdt = at::empty({batch, length, heads}, x.options());
  auto gz = zt.defined() ? at::empty({batch, length, heads, P}, x.options()) : at::Tensor();
  auto gS0 = at::empty({batch, heads, P, N}, x.options());
  auto gBh = at::empty({batch, length, heads, N}, x.options()), gCh = at::empty_like(gBh);
  auto gA_part = at::empty({batch, heads}, x.options()), gbias_part = at::empty_like(gA_part);
  auto gD_part = at::empty({batch, heads, P}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssd_scan_backward", [&] {
    auto g = ssd_args<scalar_t>(x, dt, Ac, Bm, Cm, Dc, zt, biasc, softplus, S0c);
    ssd_backward(g, gyc.data_ptr<scalar_t>(), gSc.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                 gdt.data_ptr<scalar_t>(), zt.defined() ? gz.data_ptr<scalar_t>() : nullptr,
                 gS0.data_ptr<scalar_t>(), gBh.data_ptr<scalar_t>(), gCh.data_ptr<scalar_t>(),
                 gA_part.data_ptr<scalar_t>(), gbias_part.data_ptr<scalar_t>(), gD_part.data_ptr<scalar_t>());
  });
  // Shared B, C: summed over the heads of a group in head order; parameters: over the batch in batch order.
  auto gB = ratio == 1 ? gBh : at::empty({batch, length, groups, N}, x.options());
  auto gC = ratio == 1 ? gCh : at::empty_like(gB);
  auto gA = at::empty({heads}, x.options());
  auto gbias = biasc.defined() ? at::empty({heads}, x.options()) : at::Tensor();
  auto gD = Dc.defined() ? at::empty(Dc.sizes(), x.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssd_scan_backward_sums", [&] {
    if (ratio > 1) {
      sum_middle(gBh.data_ptr<scalar_t>(), gB.data_ptr<scalar_t>(), batch * length * groups, ratio, N);
      sum_middle(gCh.data_ptr<scalar_t>(), gC.data_ptr<scalar_t>(), batch * length * groups, ratio, N);
    }
    sum_batch(gA_part.data_ptr<scalar_t>(), gA.data_ptr<scalar_t>(), batch, heads);
    if (biasc.defined()) sum_batch(gbias_part.data_ptr<scalar_t>(), gbias.data_ptr<scalar_t>(), batch, heads);
    if (Dc.defined()) {
      auto per_channel = at::empty({heads, P}, x.options());
      sum_batch(gD_part.data_ptr<scalar_t>(), per_channel.data_ptr<scalar_t>(), batch, heads * P);
      if (Dc.dim() == 1) sum_middle(per_channel.data_ptr<scalar_t>(), gD.data_ptr<scalar_t>(), heads, P, int64_t(1));
      else gD.copy_(per_channel);
    }
  });
  return {gx, gdt, gA, gB, gC, gD, gz, gbias, S0c.defined() ? gS0 : at::Tensor()};
}

// ------------------------------------------------------------------------------------------ causal short conv

// x: (B, Dc, L) any strides; weight (Dc, W), bias (Dc,), state (B, Dc, K), K = (W-1)·dilation: contiguous.
template <typename T>
struct ConvArgs {
  int64_t batch, channels, length, width, dilation, keep;
  const T *x, *wT, *bias, *state;  // wT: the weight transposed, (W, Dc), so taps are contiguous over channels
  int64_t sx[3];
};

constexpr int64_t kChannelBlock = 64;  // channels one task handles (vectorised across channels when they are dense)

// positions[b][j] = the j-th valid token of row b; count[b] = how many.
void valid_positions(const bool* mask, int64_t sm_b, int64_t sm_t, int64_t batch, int64_t length,
                     std::vector<int64_t>& positions, std::vector<int64_t>& count) {
  positions.assign(batch * length, 0);
  count.assign(batch, 0);
  for (int64_t bi = 0; bi < batch; ++bi) {
    int64_t n = 0;
    for (int64_t t = 0; t < length; ++t)
      if (!mask || mask[bi * sm_b + t * sm_t]) positions[bi * length + n++] = t;
    count[bi] = n;
  }
}

// out[d] = src[d * stride] for d < n; the unit stride (channels-last inputs, ShortConv's) as its own loop, which the
// compiler vectorises.
template <typename T>
inline void gather(const T* src, int64_t stride, int64_t n, T* out) {
  if (stride == 1) {
    for (int64_t d = 0; d < n; ++d) out[d] = src[d];
  } else {
    for (int64_t d = 0; d < n; ++d) out[d] = src[d * stride];
  }
}

template <typename T>
inline void scatter(const T* values, int64_t n, T* dst, int64_t stride) {
  if (stride == 1) {
    for (int64_t d = 0; d < n; ++d) dst[d] = values[d];
  } else {
    for (int64_t d = 0; d < n; ++d) dst[d * stride] = values[d];
  }
}

// The k-th entry of [state, valid x] of row bi for channels [d0, d0 + dn), into out.
template <typename T>
inline void conv_window_entry(const ConvArgs<T>& a, const int64_t* pos, int64_t bi, int64_t d0, int64_t dn,
                              int64_t k, T* out) {
  if (k >= a.keep) {
    gather(a.x + bi * a.sx[0] + pos[k - a.keep] * a.sx[2] + d0 * a.sx[1], a.sx[1], dn, out);
  } else if (a.state) {
    gather(a.state + (bi * a.channels + d0) * a.keep + k, a.keep, dn, out);
  } else {
    std::fill(out, out + dn, T(0));
  }
}

// The pre-activation of output j (the j-th valid token) for channels [d0, d0 + dn), into s; entry: scratch.
template <typename T>
inline void conv_preactivation(const ConvArgs<T>& a, const int64_t* pos, int64_t bi, int64_t d0, int64_t dn,
                               int64_t j, T* s, T* entry) {
  for (int64_t d = 0; d < dn; ++d) s[d] = T(0);
  for (int64_t i = 0; i < a.width; ++i) {
    conv_window_entry(a, pos, bi, d0, dn, j + i * a.dilation, entry);
    const T* w = a.wT + i * a.channels + d0;
    for (int64_t d = 0; d < dn; ++d) s[d] += w[d] * entry[d];
  }
  if (a.bias)
    for (int64_t d = 0; d < dn; ++d) s[d] += a.bias[d0 + d];
}

template <typename T>
void conv_forward(const ConvArgs<T>& a, const std::vector<int64_t>& positions, const std::vector<int64_t>& count,
                  T* y, const int64_t* sy, T* final_state) {
  const int64_t blocks = (a.channels + kChannelBlock - 1) / kChannelBlock, tasks = a.batch * blocks;
  const int nt = threads_for(a.batch * a.channels * a.length * a.width);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t bi = task / blocks, d0 = (task % blocks) * kChannelBlock;
    const int64_t dn = std::min(kChannelBlock, a.channels - d0), n = count[bi];
    const int64_t* pos = positions.data() + bi * a.length;
    T s[kChannelBlock], entry[kChannelBlock];
    const T zeros[kChannelBlock] = {};
    if (n < a.length)  // zeros where masked; valid outputs overwrite theirs below
      for (int64_t t = 0; t < a.length; ++t) scatter(zeros, dn, y + bi * sy[0] + t * sy[2] + d0 * sy[1], sy[1]);
    for (int64_t j = 0; j < n; ++j) {
      conv_preactivation(a, pos, bi, d0, dn, j, s, entry);
      scatter(s, dn, y + bi * sy[0] + pos[j] * sy[2] + d0 * sy[1], sy[1]);
    }
    for (int64_t k = 0; k < a.keep; ++k) {  // the last K entries of [state, valid x]
      conv_window_entry(a, pos, bi, d0, dn, n + k, entry);
      scatter(entry, dn, final_state + (bi * a.channels + d0) * a.keep + k, a.keep);
    }
  }
}

// The backward of the linear convolution (the activation's backward is applied to gy beforehand).
template <typename T>
void conv_backward(const ConvArgs<T>& a, const std::vector<int64_t>& positions, const std::vector<int64_t>& count,
                   const T* gy, const int64_t* sgy, const T* gfinal, T* gx, const int64_t* sgx, T* gstate,
                   T* gw_part, T* gb_part) {
  const int64_t blocks = (a.channels + kChannelBlock - 1) / kChannelBlock, tasks = a.batch * blocks;
  const int nt = threads_for(2 * a.batch * a.channels * a.length * a.width);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t bi = task / blocks, d0 = (task % blocks) * kChannelBlock;
    const int64_t dn = std::min(kChannelBlock, a.channels - d0), n = count[bi];
    const int64_t* pos = positions.data() + bi * a.length;
    std::vector<T> gs(n * dn);  // dL/d(output) of each valid output, gathered
    T entry[kChannelBlock], acc[kChannelBlock];
    T* gw = gw_part + bi * a.width * a.channels;  // (B, W, Dc)
    T* gb = gb_part + bi * a.channels;
    for (int64_t i = 0; i < a.width; ++i) std::fill(gw + i * a.channels + d0, gw + i * a.channels + d0 + dn, T(0));
    std::fill(gb + d0, gb + d0 + dn, T(0));
    for (int64_t j = 0; j < n; ++j) {
      T* g = gs.data() + j * dn;
      gather(gy + bi * sgy[0] + pos[j] * sgy[2] + d0 * sgy[1], sgy[1], dn, g);
      for (int64_t d = 0; d < dn; ++d) gb[d0 + d] += g[d];
      for (int64_t i = 0; i < a.width; ++i) {
        conv_window_entry(a, pos, bi, d0, dn, j + i * a.dilation, entry);
        T* gwi = gw + i * a.channels + d0;
        for (int64_t d = 0; d < dn; ++d) gwi[d] += g[d] * entry[d];
      }
    }
    const T zeros[kChannelBlock] = {};
    if (n < a.length)  // masked positions get zero gradient
      for (int64_t t = 0; t < a.length; ++t) scatter(zeros, dn, gx + bi * sgx[0] + t * sgx[2] + d0 * sgx[1], sgx[1]);
    for (int64_t k = 0; k < a.keep + n; ++k) {  // entry k of [state, valid x] feeds outputs j = k - i·dilation
      for (int64_t d = 0; d < dn; ++d) acc[d] = T(0);
      for (int64_t i = 0; i < a.width; ++i) {
        const int64_t j = k - i * a.dilation;
        if (j < 0 || j >= n) continue;
        const T *w = a.wT + i * a.channels + d0, *g = gs.data() + j * dn;
        for (int64_t d = 0; d < dn; ++d) acc[d] += w[d] * g[d];
      }
      if (k >= n) {  // entry k is also entry k - n of the final state
        gather(gfinal + (bi * a.channels + d0) * a.keep + k - n, a.keep, dn, entry);
        for (int64_t d = 0; d < dn; ++d) acc[d] += entry[d];
      }
      if (k < a.keep) {
        scatter(acc, dn, gstate + (bi * a.channels + d0) * a.keep + k, a.keep);
      } else {
        scatter(acc, dn, gx + bi * sgx[0] + pos[k - a.keep] * sgx[2] + d0 * sgx[1], sgx[1]);
      }
    }
  }
}

// A tensor shaped like x: (B, Dc, L), channels-last in memory when x is (as ShortConv's transposed views are).
at::Tensor like_conv_input(const at::Tensor& x) {
  if (x.stride(1) < x.stride(2)) return at::empty({x.size(0), x.size(2), x.size(1)}, x.options()).transpose(1, 2);
  return at::empty({x.size(0), x.size(1), x.size(2)}, x.options());
}

template <typename T>
ConvArgs<T> conv_args(const at::Tensor& x, const at::Tensor& wT, const at::Tensor& bias, const at::Tensor& state,
                      int64_t dilation) {
  ConvArgs<T> a{};
  a.batch = x.size(0);
  a.channels = x.size(1);
  a.length = x.size(2);
  a.width = wT.size(0);
  a.dilation = dilation;
  a.keep = (a.width - 1) * dilation;
  a.x = x.data_ptr<T>();
  a.wT = wT.data_ptr<T>();
  a.bias = bias.defined() ? bias.data_ptr<T>() : nullptr;
  a.state = state.defined() ? state.data_ptr<T>() : nullptr;
  for (int i = 0; i < 3; ++i) a.sx[i] = x.stride(i);
  return a;
}

void check_conv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                const c10::optional<at::Tensor>& state, const c10::optional<at::Tensor>& mask, int64_t dilation) {
  TORCH_CHECK(x.dim() == 3 && weight.dim() == 2 && weight.size(0) == x.size(1) && weight.size(1) >= 1 &&
              dilation >= 1, "longseq recurrence kernel: x must be (B, D, L), weight (D, W), dilation >= 1");
  expect(bias, {x.size(1)}, "bias");
  expect(state, {x.size(0), x.size(1), (weight.size(1) - 1) * dilation}, "state");
  expect_mask(mask, {x.size(0), x.size(2)});
}

// The linear convolution (no activation) of x into y (shaped as like_conv_input(x)) and the final state.
void conv_linear(const at::Tensor& x, const at::Tensor& wT, const at::Tensor& bias, const at::Tensor& state,
                 const std::vector<int64_t>& positions, const std::vector<int64_t>& count, int64_t dilation,
                 at::Tensor& y, at::Tensor& final_state) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_forward", [&] {
    auto a = conv_args<scalar_t>(x, wT, bias, state, dilation);
    const int64_t sy[3] = {y.stride(0), y.stride(1), y.stride(2)};
    conv_forward(a, positions, count, y.data_ptr<scalar_t>(), sy, final_state.data_ptr<scalar_t>());
  });
}

void mask_positions(const c10::optional<at::Tensor>& mask, int64_t batch, int64_t length,
                    std::vector<int64_t>& positions, std::vector<int64_t>& count) {
  valid_positions(mask_ptr(mask), mask ? mask->stride(0) : 0, mask ? mask->stride(1) : 0, batch, length, positions,
                  count);
}

// x: (B, Dc, L), weight: (Dc, W), bias: (Dc,), state: (B, Dc, K), mask: bool (B, L). Returns y: (B, Dc, L) (zero
// where masked) and the final state (B, Dc, K): the last K entries of [state, valid x]. The silu runs as ATen's
// (vectorised: a scalar exp per element would cost more than the convolution itself).
std::vector<at::Tensor> conv_forward_op(const at::Tensor& x, const at::Tensor& weight,
                                        const c10::optional<at::Tensor>& bias,
                                        const c10::optional<at::Tensor>& state,
                                        const c10::optional<at::Tensor>& mask, bool silu, int64_t dilation) {
  check_conv(x, weight, bias, state, mask, dilation);
  auto wT = weight.t().contiguous(), biasc = contiguous_or_undefined(bias), statec = contiguous_or_undefined(state);
  auto y = like_conv_input(x);
  auto final_state = at::empty({x.size(0), x.size(1), (weight.size(1) - 1) * dilation}, x.options());
  std::vector<int64_t> positions, count;
  mask_positions(mask, x.size(0), x.size(2), positions, count);
  conv_linear(x, wT, biasc, statec, positions, count, dilation, y, final_state);
  if (silu) at::silu_(y);  // silu(0) = 0 where masked
  return {y, final_state};
}

// Gradients of conv_forward_op from gy: (B, Dc, L) and gfinal: (B, Dc, K): (gx, gweight, gbias, gstate). With the
// silu, the pre-activations are recomputed and gy goes through ATen's silu_backward first.
std::vector<at::Tensor> conv_backward_op(const at::Tensor& gy, const at::Tensor& gfinal, const at::Tensor& x,
                                         const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                         const c10::optional<at::Tensor>& state,
                                         const c10::optional<at::Tensor>& mask, bool silu, int64_t dilation) {
  check_conv(x, weight, bias, state, mask, dilation);
  auto wT = weight.t().contiguous(), biasc = contiguous_or_undefined(bias), statec = contiguous_or_undefined(state);
  auto gfc = gfinal.contiguous();
  const int64_t batch = x.size(0), channels = x.size(1), width = weight.size(1), keep = (width - 1) * dilation;
  expect(gy, x.sizes(), "gy");
  expect(gfinal, {batch, channels, keep}, "gfinal");
  std::vector<int64_t> positions, count;
  mask_positions(mask, batch, x.size(2), positions, count);
  at::Tensor gs = gy;
  if (silu) {
    auto pre = like_conv_input(x), unused = at::empty({batch, channels, keep}, x.options());
    conv_linear(x, wT, biasc, statec, positions, count, dilation, pre, unused);
    gs = like_conv_input(x);  // in x's memory layout, which the kernel walks (gy may be expanded or transposed)
    at::silu_backward_out(gs, gy, pre);
  }
  auto gx = like_conv_input(x);
  auto gstate = at::empty({batch, channels, keep}, x.options());
  auto gw_part = at::empty({batch, width, channels}, x.options()), gb_part = at::empty({batch, channels}, x.options());
  auto gwT = at::empty({width, channels}, x.options()), gb = at::empty({channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_backward", [&] {
    auto a = conv_args<scalar_t>(x, wT, biasc, statec, dilation);
    const int64_t sgs[3] = {gs.stride(0), gs.stride(1), gs.stride(2)};
    const int64_t sgx[3] = {gx.stride(0), gx.stride(1), gx.stride(2)};
    conv_backward(a, positions, count, gs.data_ptr<scalar_t>(), sgs, gfc.data_ptr<scalar_t>(),
                  gx.data_ptr<scalar_t>(), sgx, gstate.data_ptr<scalar_t>(), gw_part.data_ptr<scalar_t>(),
                  gb_part.data_ptr<scalar_t>());
    sum_batch(gw_part.data_ptr<scalar_t>(), gwT.data_ptr<scalar_t>(), batch, width * channels);
    sum_batch(gb_part.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), batch, channels);
  });
  return {gx, gwT.t().contiguous(), biasc.defined() ? gb : at::Tensor(), statec.defined() ? gstate : at::Tensor()};
}

// ------------------------------------------------------------------------------------------ fused decode steps

template <typename T>
inline T sigmoid(T v) { return T(1) / (T(1) + std::exp(-v)); }

// Runs body(task) for task < tasks, on nt threads (static blocks) or, for nt = 1, in a plain loop: a parallel region
// of one thread still costs more than a small decode step's arithmetic.
template <typename F>
void for_tasks(int nt, int64_t tasks, const F& body) {
  if (nt <= 1) {
    for (int64_t task = 0; task < tasks; ++task) body(task);
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t task = 0; task < tasks; ++task) body(task);
}

// One token of an S4-style block (S4D, EMA): x <- dA x + dB u, y = f Re(C x) + D u, then the block's output layer:
// kind 0 none, 1 silu(y), 2 GLU(W GELU(y) + b) with W: (2H, H), b: (2H,) or none. A masked row keeps its state and
// outputs 0. The new state is written to xT as it is computed (only a masked row is copied); GLU outputs are computed
// four at a time, each from its value and gate rows, so that the sigmoids overlap the next rows' loads.
template <typename T, bool CPLX>
void lti_block(const LTIShape& s, const T* x0, const T* u, const bool* mask, const T* dA, const T* dB, const T* C,
               const T* D, int64_t kind, const T* W, const T* bias, T* y, T* xT) {
  const int64_t width = CPLX ? 2 * s.modes : s.modes, heads = s.heads, tasks = s.batch * heads;
  std::vector<T> hidden(kind == 2 ? tasks : 0);  // GELU(.) per row, the linear layer's input
  T* pre = kind == 2 ? hidden.data() : y;
  for_tasks(threads_for(tasks * width), tasks, [&](int64_t task) {
    const int64_t bi = task / heads, h = task % heads;
    const T ut = u[bi * s.su_b + h * s.su_h];
    const T* x = x0 + task * width;
    T* out = xT + task * width;
    T value = 0;
    if (!mask || mask[bi * s.sm_b])
      value = lti_token<T, CPLX>(x, out, dA + h * width, dB + h * width, C + h * width, ut, s.modes);
    else
      std::copy(x, x + width, out);
    const T skip = value + D[h] * ut;
    pre[task] = kind == 1 ? silu(skip) : kind == 2 ? gelu(skip) : skip;
  });
  if (kind == 2) {  // out[k] = (W_k h + b_k) sigmoid(W_{H+k} h + b_{H+k}), each product exactly matvec's dot
    constexpr int64_t kRows = 4;
    const int64_t blocks = (heads + kRows - 1) / kRows;
    for_tasks(threads_for(tasks * 2 * heads), s.batch * blocks, [&](int64_t task) {
      const int64_t bi = task / blocks, k0 = (task % blocks) * kRows, rows = std::min(kRows, heads - k0);
      const T* h = hidden.data() + bi * heads;
      T value[kRows], gate[kRows];
      matvec(W + k0 * heads, h, rows, heads, value);
      matvec(W + (heads + k0) * heads, h, rows, heads, gate);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t k = k0 + i;
        const T gated = gate[i] + (bias ? bias[heads + k] : T(0));
        y[bi * heads + k] = (value[i] + (bias ? bias[k] : T(0))) * sigmoid(gated);
      }
    });
  }
  if (mask)
    for (int64_t bi = 0; bi < s.batch; ++bi)
      if (!mask[bi * s.sm_b]) std::fill(y + bi * heads, y + (bi + 1) * heads, T(0));
}

// x0, dA, dB, C as for lti_scan_forward, or the real views (B, H, M, 2), (H, M, 2) of complex ones; u: (B, H), D:
// (H,), mask: bool (B,), weight: (2H, H) and bias: (2H,) for kind 2. Returns the block's output (B, H) and the new
// state, in x0's layout.
std::vector<at::Tensor> lti_block_step(const at::Tensor& x0, const at::Tensor& u, const at::Tensor& dA,
                                       const at::Tensor& dB, const at::Tensor& C, const at::Tensor& D,
                                       const c10::optional<at::Tensor>& mask, int64_t kind,
                                       const c10::optional<at::Tensor>& weight,
                                       const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(u.dim() == 2 && kind >= 0 && kind <= 2, "longseq recurrence kernel: u must be (B, H), kind 0-2");
  const LTIShape s = check_lti(u, x0, dA, dB, C, mask, /*pairs=*/true);
  expect(D, {s.heads}, "D");
  TORCH_CHECK(kind != 2 || (weight.has_value() && weight->sizes() == at::IntArrayRef({2 * s.heads, s.heads})),
              "longseq recurrence kernel: the GLU output needs weight (2H, H)");
  expect(bias, {2 * s.heads}, "bias");
  TORCH_CHECK(D.scalar_type() == u.scalar_type() && (!weight.has_value() || weight->scalar_type() == u.scalar_type())
              && (!bias.has_value() || bias->scalar_type() == u.scalar_type()),
              "longseq recurrence kernel: D, weight and bias must have u's dtype");
  auto Dc = D.contiguous(), Wc = contiguous_or_undefined(weight), bc = contiguous_or_undefined(bias);
  auto y = at::empty({s.batch, s.heads}, u.options());
  auto xT = at::empty(x0.sizes(), x0.options());
  at::Tensor h0, h1, h2, h3;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "lti_block_step", [&] {
    auto run = s.cplx ? lti_block<scalar_t, true> : lti_block<scalar_t, false>;
    run(s, reals<scalar_t>(x0, h0), u.data_ptr<scalar_t>(), mask_ptr(mask), reals<scalar_t>(dA, h1),
        reals<scalar_t>(dB, h2), reals<scalar_t>(C, h3), Dc.data_ptr<scalar_t>(), kind,
        Wc.defined() ? Wc.data_ptr<scalar_t>() : nullptr, bc.defined() ? bc.data_ptr<scalar_t>() : nullptr,
        y.data_ptr<scalar_t>(), reinterpret_cast<scalar_t*>(xT.data_ptr()));
  });
  return {y, xT};
}

// Mamba-2's token update between its two projections, for each batch row: the short convolution over xBC (with
// silu), dt' = softplus(dt + dt_bias), the SSD update of every head, and the gated RMSNorm rmsnorm(y silu(z)) w per
// group of channels. A masked row keeps both states (conv output 0, dt' = 0) and outputs 0.
// zxbcdt: (B, E + Cd + H) with Cd = E + 2GN, strides (sz_b, sz_c); the conv state (B, Cd, W-1) and the ssm state
// (B, H, P, N) are contiguous copies, updated in place.
template <typename T>
struct SSDBlock {
  int64_t batch, inner, conv_dim, heads, hdim, groups, nstate, width, group_size;
  const T *zxbcdt, *conv_w, *conv_b, *dt_bias, *A, *D, *norm_w;
  int64_t sz_b, sz_c;
  const bool* mask;
  int64_t sm_b;
  int d_mode;
  T eps;
};

// The short convolution's pre-activations xbc: (B, Cd) (0 on a masked row) with the window update, and dt': (B, H).
template <typename T>
void ssd_block_conv(const SSDBlock<T>& g, T* conv_state, T* xbc, T* dtp) {
  const int64_t E = g.inner, Cd = g.conv_dim, H = g.heads, K = g.width - 1;
  for (int64_t bi = 0; bi < g.batch; ++bi) {  // O(Cd W + H) per row
    const T* row = g.zxbcdt + bi * g.sz_b;
    const bool valid = !g.mask || g.mask[bi * g.sm_b];
    for (int64_t c = 0; c < Cd; ++c) {
      T* window = conv_state + (bi * Cd + c) * K;
      const T* w = g.conv_w + c * g.width;
      const T input = row[(E + c) * g.sz_c];
      T sum = 0;
      for (int64_t i = 0; i < K; ++i) sum += w[i] * window[i];
      sum += w[K] * input;
      if (g.conv_b) sum += g.conv_b[c];
      xbc[bi * Cd + c] = valid ? sum : T(0);  // a masked token is skipped by the convolution: output 0
      if (valid && K > 0) {
        std::copy(window + 1, window + K, window);
        window[K - 1] = input;
      }
    }
    for (int64_t h = 0; h < H; ++h) {
      const T v = softplus(row[(E + Cd + h) * g.sz_c] + g.dt_bias[h]);
      dtp[bi * H + h] = valid ? v : v * T(0);
    }
  }
}

// The SSD update of every head from the activated xbc: (B, Cd), then the gated RMSNorm with gate = silu(z): (B, E).
template <typename T>
void ssd_block_update(const SSDBlock<T>& g, const T* xbc, const T* dtp, const T* gate, T* y, T* ssm) {
  const int64_t E = g.inner, Cd = g.conv_dim, H = g.heads, P = g.hdim, N = g.nstate;
  const int nt = threads_for(g.batch * H * P * N / 2);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t task = 0; task < g.batch * H; ++task) {  // one head per task; y holds the gated outputs
    const int64_t bi = task / H, h = task % H, grp = h / (H / g.groups);
    const T* x = xbc + bi * Cd + h * P;
    const T* Bv = xbc + bi * Cd + E + grp * N;
    const T* Cv = xbc + bi * Cd + E + g.groups * N + grp * N;
    const T dt = dtp[task], a = std::exp(dt * g.A[h]);
    T* S = ssm + task * P * N;
    for (int64_t p = 0; p < P; ++p) {
      const T xs = dt * x[p];
      T* srow = S + p * N;
      for (int64_t n = 0; n < N; ++n) srow[n] = a * srow[n] + xs * Bv[n];
      const T d = g.d_mode == 0 ? T(0) : g.d_mode == 1 ? g.D[h] : g.D[h * P + p];
      const int64_t e = bi * E + h * P + p;
      y[e] = (dot(srow, Cv, N) + d * x[p]) * gate[e];
    }
  }
  for (int64_t bi = 0; bi < g.batch; ++bi) {  // the RMSNorm, per group of channels
    T* gated = y + bi * E;
    for (int64_t start = 0; start < E; start += g.group_size) {
      const T mean = dot(gated + start, gated + start, g.group_size) / T(g.group_size);
      const T scale = T(1) / std::sqrt(mean + g.eps);
      for (int64_t e = start; e < start + g.group_size; ++e) gated[e] = gated[e] * scale * g.norm_w[e];
    }
  }
}

// zxbcdt: (B, E + Cd + H), conv_state: (B, Cd, W-1), ssm: (B, H, P, N), conv_weight: (Cd, W), conv_bias: (Cd,),
// dt_bias, A: (H,), D: (H,) or (H, P), norm_weight: (E,). Returns y: (B, E), the new conv state and ssm state.
std::vector<at::Tensor> ssd_block_step(const at::Tensor& zxbcdt, const at::Tensor& conv_state, const at::Tensor& ssm,
                                       const at::Tensor& conv_weight, const c10::optional<at::Tensor>& conv_bias,
                                       const at::Tensor& dt_bias, const at::Tensor& A,
                                       const c10::optional<at::Tensor>& D, const at::Tensor& norm_weight,
                                       double eps, int64_t group_size, int64_t ngroups,
                                       const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(zxbcdt.dim() == 2 && conv_weight.dim() == 2 && conv_weight.size(1) >= 1 && ssm.dim() == 4 && ngroups > 0,
              "longseq recurrence kernel: zxbcdt (B, .), conv_weight (Cd, W), ssm (B, H, P, N) expected");
  const int64_t b_ = zxbcdt.size(0), e_ = norm_weight.size(0), cd_ = conv_weight.size(0), h_ = dt_bias.size(0);
  const int64_t n_ = ssm.size(3);
  TORCH_CHECK(h_ > 0 && e_ % h_ == 0 && (h_ % ngroups) == 0 && cd_ == e_ + 2 * ngroups * n_ &&
              zxbcdt.size(1) == e_ + cd_ + h_ && group_size > 0 && e_ % group_size == 0,
              "longseq recurrence kernel: inconsistent Mamba-2 block sizes");
  expect(ssm, {b_, h_, e_ / h_, n_}, "ssm state");
  expect(conv_state, {b_, cd_, conv_weight.size(1) - 1}, "conv state");
  expect(conv_bias, {cd_}, "conv bias");
  expect(A, {h_}, "A");
  TORCH_CHECK(!D.has_value() || D->numel() == h_ || D->numel() == e_,
              "longseq recurrence kernel: D must be (H,) or (H, P)");
  expect_mask(mask, {b_});
  auto wc = conv_weight.contiguous(), bc = contiguous_or_undefined(conv_bias), biasc = dt_bias.contiguous();
  auto Ac = A.contiguous(), Dc = contiguous_or_undefined(D), normc = norm_weight.contiguous();
  auto conv_new = conv_state.contiguous().clone(), ssm_new = ssm.contiguous().clone();
  const int64_t batch = zxbcdt.size(0), inner = norm_weight.size(0);
  auto y = at::empty({batch, inner}, zxbcdt.options());
  auto xbc = at::empty({batch, conv_weight.size(0)}, zxbcdt.options()), dtp = at::empty({batch, h_}, zxbcdt.options());
  AT_DISPATCH_FLOATING_TYPES(zxbcdt.scalar_type(), "ssd_block_step", [&] {
    SSDBlock<scalar_t> g{};
    g.batch = batch;
    g.inner = inner;
    g.conv_dim = conv_weight.size(0);
    g.heads = dt_bias.size(0);
    g.hdim = inner / g.heads;
    g.groups = ngroups;
    g.nstate = ssm.size(3);
    g.width = conv_weight.size(1);
    g.group_size = group_size;
    g.zxbcdt = zxbcdt.data_ptr<scalar_t>();
    g.sz_b = zxbcdt.stride(0);
    g.sz_c = zxbcdt.stride(1);
    g.conv_w = wc.data_ptr<scalar_t>();
    g.conv_b = bc.defined() ? bc.data_ptr<scalar_t>() : nullptr;
    g.dt_bias = biasc.data_ptr<scalar_t>();
    g.A = Ac.data_ptr<scalar_t>();
    g.D = Dc.defined() ? Dc.data_ptr<scalar_t>() : nullptr;
    g.d_mode = !Dc.defined() ? 0 : Dc.dim() == 1 ? 1 : 2;
    g.norm_w = normc.data_ptr<scalar_t>();
    g.mask = mask_ptr(mask);
    g.sm_b = mask ? mask->stride(0) : 0;
    g.eps = static_cast<scalar_t>(eps);
    ssd_block_conv(g, conv_new.data_ptr<scalar_t>(), xbc.data_ptr<scalar_t>(), dtp.data_ptr<scalar_t>());
    at::silu_(xbc);  // ATen's vectorised silu: a scalar exp per channel would cost more than the rest of the step
    auto gate = at::silu(zxbcdt.narrow(1, 0, inner)).contiguous();
    ssd_block_update(g, xbc.data_ptr<scalar_t>(), dtp.data_ptr<scalar_t>(), gate.data_ptr<scalar_t>(),
                     y.data_ptr<scalar_t>(), ssm_new.data_ptr<scalar_t>());
  });
  return {y, conv_new, ssm_new};
}

// Mamba-2's whole token update with its two projections (decoding): zxbcdt = in_proj(u), ssd_block_step, then
// out_proj; a masked row outputs 0. The projections are vector.h's linear_rows, as in selective_scan.cpp's Mamba
// block step: each weight is read once per token, fixed row blocks over torch's threads (a BLAS GEMM of one row runs
// on one thread), each output one dot product in a fixed order. u: (B, d_model), in_w: (E + Cd + H, d_model), in_b:
// (E + Cd + H,), out_w: (d_model, E), out_b: (d_model,); the rest as ssd_block_step. Returns y: (B, d_model), the new
// conv state and ssm state.
std::vector<at::Tensor> mamba2_block_step(const at::Tensor& u, const at::Tensor& in_w,
                                          const c10::optional<at::Tensor>& in_b, const at::Tensor& out_w,
                                          const c10::optional<at::Tensor>& out_b, const at::Tensor& conv_state,
                                          const at::Tensor& ssm, const at::Tensor& conv_weight,
                                          const c10::optional<at::Tensor>& conv_bias, const at::Tensor& dt_bias,
                                          const at::Tensor& A, const c10::optional<at::Tensor>& D,
                                          const at::Tensor& norm_weight, double eps, int64_t group_size,
                                          int64_t ngroups, const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(u.dim() == 2 && in_w.dim() == 2 && out_w.dim() == 2 && in_w.size(1) == u.size(1) &&
                  out_w.size(1) == norm_weight.size(0),
              "longseq recurrence kernel: Mamba-2 projections: u (B, d), in_w (., d), out_w (., E) expected");
  expect(in_b, {in_w.size(0)}, "in_proj bias");
  expect(out_b, {out_w.size(0)}, "out_proj bias");
  expect_mask(mask, {u.size(0)});
  const int64_t batch = u.size(0), rows = in_w.size(0), d = u.size(1), d_out = out_w.size(0), E = out_w.size(1);
  auto uc = u.contiguous(), inc = in_w.contiguous(), outc = out_w.contiguous();
  auto inb = contiguous_or_undefined(in_b), outb = contiguous_or_undefined(out_b);
  auto zxbcdt = at::empty({batch, rows}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mamba2_in_proj", [&] {
    longseq::linear_rows<scalar_t>(inc.data_ptr<scalar_t>(), inb.defined() ? inb.data_ptr<scalar_t>() : nullptr,
                                   rows, d, uc.data_ptr<scalar_t>(), d, batch, zxbcdt.data_ptr<scalar_t>(), rows);
  });
  auto parts = ssd_block_step(zxbcdt, conv_state, ssm, conv_weight, conv_bias, dt_bias, A, D, norm_weight, eps,
                              group_size, ngroups, mask);
  const auto y = parts[0].contiguous();
  auto out = at::empty({batch, d_out}, u.options());
  const bool* m = mask_ptr(mask);
  const int64_t sm = mask ? mask->stride(0) : 0;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mamba2_out_proj", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    longseq::linear_rows<scalar_t>(outc.data_ptr<scalar_t>(), outb.defined() ? outb.data_ptr<scalar_t>() : nullptr,
                                   d_out, E, y.data_ptr<scalar_t>(), E, batch, o, d_out);
    for (int64_t bi = 0; bi < batch; ++bi)
      if (m && !m[bi * sm]) std::fill(o + bi * d_out, o + (bi + 1) * d_out, scalar_t(0));
  });
  return {out, parts[1], parts[2]};
}

// ------------------------------------------------------------------------------------------ bindings

// Every tensor argument as the kernels read it: on the CPU, its lazy conjugation or negation (a view's flag that
// data_ptr does not apply) resolved; a no-op for ordinary tensors.
at::Tensor resolved(const at::Tensor& t) {
  TORCH_CHECK(t.is_cpu(), "longseq recurrence kernel: every tensor must be on the CPU, got one on ", t.device());
  return t.is_conj() || t.is_neg() ? t.resolve_conj().resolve_neg() : t;
}

c10::optional<at::Tensor> resolved(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(resolved(*t)) : t;
}

template <typename V>
const V& resolved(const V& v) {  // bool, int64_t, double: as they are
  return v;
}

// The bound function of F: its tensor arguments resolved first.
template <auto F>
struct Resolving;

template <typename R, typename... A, R (*F)(A...)>
struct Resolving<F> {
  static R call(std::decay_t<A>... args) { return F(resolved(args)...); }
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lti_scan_forward", &Resolving<&lti_scan_forward>::call);
  m.def("lti_scan_backward", &Resolving<&lti_scan_backward>::call);
  m.def("ssd_scan_forward", &Resolving<&ssd_scan_forward>::call);
  m.def("ssd_scan_backward", &Resolving<&ssd_scan_backward>::call);
  m.def("conv_forward", &Resolving<&conv_forward_op>::call);
  m.def("conv_backward", &Resolving<&conv_backward_op>::call);
  m.def("lti_block_step", &Resolving<&lti_block_step>::call);
  m.def("ssd_block_step", &Resolving<&ssd_block_step>::call);
  m.def("mamba2_block_step", &Resolving<&mamba2_block_step>::call);
}
