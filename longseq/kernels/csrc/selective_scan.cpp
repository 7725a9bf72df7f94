// Mamba-1's selective scan on CPU: forward, backward and the one-token update (longseq/ops/selective_scan.py has
// the recurrence; longseq/kernels/selective_scan.py the layouts and the autograd Function).
//
// Per batch row b, channel d (group g = d / (D / G)) and state index n, with dt already biased and softplus'd:
//     h_t[n] = exp(dt_t A[d, n]) h_{t-1}[n] + dt_t u_t B_t[n]
//     y_t    = (sum_n C_t[n] h_t[n] + D[d] u_t) * silu(z_t)          (D and z optional)
// u, dt, z, y and their gradients: (B, D, L) with any strides (a Mamba block hands over (B, L, D) tensors seen as
// (B, D, L): no copy). B and C: time-major per group, (B, G, L, N), contiguous, so that one step's N values are
// contiguous; A: (D, N); D: (D,); states (B, D, N); all of one dtype (float32 or float64), computed in it.
//
// Vectorized over channels: a tile is up to V channels of one group (V = one 64-byte vector), held as (step, lane)
// and (n, lane) arrays, so that every operation of the recurrence is one vector over the tile's channels and a
// channel's sum over n is a vertical sum. exp dominates: one per (t, d, n) forward, one more backward.
//
// Forward: each thread takes a fixed range of tiles and walks time in blocks of kTimeBlock steps, all its tiles
// through one block before the next, so that the block's B and C rows stay in cache for all of them.
//
// Backward: the forward keeps the state at the start of every chunk of K steps (B D N L/K numbers). A work item is
// a block of tiles of one (b, g); it walks the chunks in reverse, and for each tile recomputes the chunk's states
// and decays from the checkpoint (K x N x V numbers: cache-sized, where keeping all L states would not be), then
// runs the reverse-time recurrence over them. dB and dC sum over channels: lane by lane over the block's tiles,
// then over the lanes once per chunk, then over the blocks.
//
// Threads: OpenMP, as many threads as torch uses. Every output element is computed by one thread in a fixed
// order, and the sums across work items (dB and dC over blocks, dA and dD over the batch) run afterwards in a
// fixed order too: the blocks depend on the shapes only, so results do not depend on the thread count.

#include <omp.h>
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "vector.h"

namespace {

// ---------------------------------------------------------------------------------------------------------------
// exp that the compiler vectorizes. libm's exp is not vectorized without -ffast-math, and one exp per (t, d, n)
// is most of the scan's work. Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2, a Taylor polynomial for e^r
// (about one ulp), then the exponent bits of 2^k. exp(0) is exactly 1, so dt = 0 is an exact no-op on the state.
// Below the smallest normal result it returns 0 (no denormals); above e^88 (float) or e^709 (double) it saturates
// there (only silu of z < -88 gets near, where the result is ~0 either way).

template <typename T>
struct ExpConstants;

template <>
struct ExpConstants<float> {
  using Int = int32_t;
  static constexpr float lo = -87.33654f, hi = 88.0f;  // hi: k stays <= 127
  static constexpr float log2e = 1.44269504088896341f, round = 12582912.0f;  // 1.5 * 2^23: rounds to an integer
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  static constexpr int degree = 7, mantissa = 23, bias = 127;
};

template <>
struct ExpConstants<double> {
  using Int = int64_t;
  static constexpr double lo = -708.3964185322641, hi = 709.0;  // hi: k stays <= 1023
  static constexpr double log2e = 1.4426950408889634074, round = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  static constexpr int degree = 13, mantissa = 52, bias = 1023;
};

// 1/0!, 1/1!, ..., 1/degree!: the Taylor coefficients of e^r, computed at compile time.
template <typename T, int Degree>
constexpr std::array<T, Degree + 1> inverse_factorials() {
  std::array<T, Degree + 1> c{};
  c[0] = T(1);
  for (int i = 1; i <= Degree; ++i) c[i] = c[i - 1] / T(i);
  return c;
}

template <typename T>
inline T fast_exp(T x) {
  using K = ExpConstants<T>;
  using Int = typename K::Int;
  static constexpr auto coef = inverse_factorials<T, K::degree>();
  const bool underflow = x < K::lo;
  x = x > K::hi ? K::hi : (underflow ? K::lo : x);
  const T k = (x * K::log2e + K::round) - K::round;  // round(x log2(e)), exact while |x log2(e)| < 2^22
  const T r = (x - k * K::ln2_hi) - k * K::ln2_lo;    // k ln2_hi is exact: ln2_hi has few significant bits
  T p = coef[K::degree];  // Horner: 1 + r (1 + r (1/2 + r (1/6 + ...))); p(0) = 1 exactly
  for (int i = K::degree - 1; i >= 0; --i) p = p * r + coef[i];
  const Int bits = (static_cast<Int>(k) + K::bias) << K::mantissa;  // 2^k
  T scale;
  std::memcpy(&scale, &bits, sizeof(T));
  return underflow ? T(0) : p * scale;
}

// softplus(v) = log(1 + e^v) with torch's threshold (v itself above 20), in a form the compiler vectorizes:
// max(v, 0) + log1p(e^-|v|), log1p(t) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...) with s = t / (2 + t) <= 1/3
// (terms to s^13 for float, s^33 for double: the rest is under an ulp).
template <typename T>
inline T fast_softplus(T v) {
  constexpr int terms = sizeof(T) == 4 ? 7 : 17;
  const T t = fast_exp(v < T(0) ? v : -v);
  const T s = t / (T(2) + t), s2 = s * s;
  T p = T(1) / T(2 * terms - 1);
  for (int k = terms - 2; k >= 0; --k) p = p * s2 + T(1) / T(2 * k + 1);
  const T r = (v > T(0) ? v : T(0)) + T(2) * s * p;
  return v > T(20) ? v : r;
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}

// ---------------------------------------------------------------------------------------------------------------
// Layouts

struct Sizes {
  int64_t batch, channels, length, state, groups, per_group;
};

// The sizes, after checking the layouts the Python side promises (u: (B, D, L), A: (D, N), Bt: (B, G, L, N)).
Sizes sizes_of(const at::Tensor& u, const at::Tensor& A, const at::Tensor& Bt) {
  TORCH_CHECK(u.dim() == 3 && A.dim() == 2 && Bt.dim() == 4, "selective_scan kernel: expected u (B, D, L), ",
              "A (D, N), Bt (B, G, L, N), got ", u.sizes(), ", ", A.sizes(), ", ", Bt.sizes());
  const int64_t groups = Bt.size(1);
  TORCH_CHECK(A.size(0) == u.size(1) && Bt.size(0) == u.size(0) && Bt.size(2) == u.size(2) &&
                  Bt.size(3) == A.size(1) && groups >= 1 && u.size(1) % groups == 0,
              "selective_scan kernel: inconsistent sizes u ", u.sizes(), ", A ", A.sizes(), ", Bt ", Bt.sizes());
  return {u.size(0), u.size(1), u.size(2), A.size(1), groups, u.size(1) / groups};
}

int64_t num_chunks(int64_t length, int64_t chunk) { return (length + chunk - 1) / chunk; }

// A (B, D, L) tensor with its strides.
template <typename T>
struct Seq {
  T* data;
  int64_t sb, sd, sl;
  T* row(int64_t b, int64_t d) const { return data + b * sb + d * sd; }
};

template <typename T>
Seq<T> seq(const at::Tensor& t) {
  return {t.data_ptr<std::remove_const_t<T>>(), t.stride(0), t.stride(1), t.stride(2)};
}

template <typename T>
Seq<const T> seq_or_empty(const std::optional<at::Tensor>& t) {
  return t.has_value() ? seq<const T>(*t) : Seq<const T>{nullptr, 0, 0, 0};
}

template <typename T>
const T* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

std::vector<at::Tensor> present(std::initializer_list<std::optional<at::Tensor>> optional) {
  std::vector<at::Tensor> out;
  for (const auto& t : optional)
    if (t.has_value()) out.push_back(*t);
  return out;
}

// Every tensor on the CPU and of one dtype; the ``dense`` ones contiguous (the others are read through strides).
void check_inputs(const std::vector<at::Tensor>& strided, const std::vector<at::Tensor>& dense) {
  const auto dtype = strided.front().scalar_type();
  for (const auto* group : {&strided, &dense})
    for (const auto& t : *group) {
      TORCH_CHECK(t.device().is_cpu(), "selective_scan kernel: tensors must be on the CPU, got ", t.device());
      TORCH_CHECK(t.scalar_type() == dtype, "selective_scan kernel: all tensors must be ", dtype, ", got ",
                  t.scalar_type());
    }
  for (const auto& t : dense) TORCH_CHECK(t.is_contiguous(), "selective_scan kernel: expected a contiguous tensor");
}

// ---------------------------------------------------------------------------------------------------------------
// Tiles

template <typename T>
constexpr int kLanes = 64 / sizeof(T);

// Channels [d0, d0 + width) of batch row b, within one group, width <= V. Lanes past width are padding: zero
// inputs, zero A, zero state, so they stay zero (exp(0) = 1 times 0) and are never written out.
struct Tile {
  int64_t b, d0, width;
};

int64_t tiles_per_group(const Sizes& s, int lanes) { return (s.per_group + lanes - 1) / lanes; }

// The tiles in a fixed order: batch row, then group, then channel.
Tile tile_at(const Sizes& s, int lanes, int64_t index) {
  const int64_t per_group = tiles_per_group(s, lanes), per_row = s.groups * per_group;
  const int64_t g = index % per_row / per_group, d0 = g * s.per_group + index % per_group * lanes;
  return {index / per_row, d0, std::min<int64_t>(lanes, (g + 1) * s.per_group - d0)};
}

// x[b, d0 + v, t0 + i] -> tile[i * V + v] for i < steps; zero in the padding lanes. Channels-last (a Mamba
// block's layout): one contiguous vector per step; else a transpose, element by element.
template <typename T>
void gather_steps(const Seq<const T>& x, const Tile& k, int64_t t0, int64_t steps, T* tile) {
  constexpr int V = kLanes<T>;
  if (x.sd == 1 && k.width == V) {
    const T* first = x.row(k.b, k.d0) + t0 * x.sl;
    for (int64_t i = 0; i < steps; ++i) std::copy(first + i * x.sl, first + i * x.sl + V, tile + i * V);
    return;
  }
  for (int64_t v = 0; v < V; ++v) {
    if (v >= k.width) {
      for (int64_t i = 0; i < steps; ++i) tile[i * V + v] = T(0);
      continue;
    }
    const T* row = x.row(k.b, k.d0 + v) + t0 * x.sl;
    for (int64_t i = 0; i < steps; ++i) tile[i * V + v] = row[i * x.sl];
  }
}

// tile[i * V + v] -> x[b, d0 + v, t0 + i] for the tile's channels.
template <typename T>
void scatter_steps(const T* tile, const Tile& k, int64_t t0, int64_t steps, const Seq<T>& x) {
  constexpr int V = kLanes<T>;
  if (x.sd == 1 && k.width == V) {
    T* first = x.row(k.b, k.d0) + t0 * x.sl;
    for (int64_t i = 0; i < steps; ++i) std::copy(tile + i * V, tile + (i + 1) * V, first + i * x.sl);
    return;
  }
  for (int64_t v = 0; v < k.width; ++v) {
    T* row = x.row(k.b, k.d0 + v) + t0 * x.sl;
    for (int64_t i = 0; i < steps; ++i) row[i * x.sl] = tile[i * V + v];
  }
}

// Rows of N numbers, one per channel, ``stride`` apart (states (B, D, N), checkpoints (B, D, chunks, N), A) ->
// tile[n * V + v]; zero in the padding lanes (and everywhere when rows is null).
template <typename T>
void gather_rows(const T* rows, int64_t stride, int64_t width, int64_t N, T* tile) {
  constexpr int V = kLanes<T>;
  std::fill(tile, tile + N * V, T(0));
  if (rows)
    for (int64_t v = 0; v < width; ++v)
      for (int64_t n = 0; n < N; ++n) tile[n * V + v] = rows[v * stride + n];
}

template <typename T>
void scatter_rows(const T* tile, int64_t width, int64_t N, T* rows, int64_t stride) {
  constexpr int V = kLanes<T>;
  for (int64_t v = 0; v < width; ++v)
    for (int64_t n = 0; n < N; ++n) rows[v * stride + n] = tile[n * V + v];
}

// One step of a tile: for every n, next_n = exp(dt A_n) prev_n + (dt u) B[n] (``next`` may be ``prev``: in
// place), the decays exp(dt A_n) into ``decay`` when KeepDecay, and acc = sum_n C[n] next_n, per lane.
template <bool KeepDecay, typename T>
inline void tile_step(int64_t N, const T* __restrict__ dt, const T* __restrict__ u, const T* __restrict__ A,
                      const T* prev, const T* __restrict__ B, const T* __restrict__ C, T* next, T* decay, T* acc) {
  constexpr int V = kLanes<T>;
  T du[V], sum[V];  // sum: a local, so that it stays in a register across n (acc may be memory)
#pragma omp simd
  for (int v = 0; v < V; ++v) {
    du[v] = dt[v] * u[v];
    sum[v] = T(0);
  }
  for (int64_t n = 0; n < N; ++n) {
    const T bn = B[n], cn = C[n];
    const T* An = A + n * V;
    const T* pn = prev + n * V;
    T* hn = next + n * V;
#pragma omp simd
    for (int v = 0; v < V; ++v) {
      const T a = fast_exp(dt[v] * An[v]);
      const T h = a * pn[v] + du[v] * bn;
      if constexpr (KeepDecay) decay[n * V + v] = a;
      hn[v] = h;
      sum[v] += cn * h;
    }
  }
  std::copy(sum, sum + V, acc);
}

// Skip and gate over a tile step: out = (acc + D u) * silu(z), z null: no gate.
template <typename T>
inline void skip_and_gate(const T* acc, const T* skip, const T* u, const T* z, T* out) {
  constexpr int V = kLanes<T>;
#pragma omp simd
  for (int v = 0; v < V; ++v) {
    const T pre = acc[v] + skip[v] * u[v];
    out[v] = z ? pre * (z[v] * sigmoid(z[v])) : pre;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Forward

constexpr int64_t kTimeTile = 16;    // steps per transposed block of u, dt, z and y
constexpr int64_t kTimeBlock = 256;  // steps that all of a thread's tiles go through before the next ones

template <typename T>
struct ForwardArgs {
  Sizes s;
  Seq<const T> u, dt, z;
  Seq<T> y;
  const T *A, *Bt, *Ct, *Dv, *h0;
  T *last, *ckpt;  // ckpt: nullptr when no checkpoints are kept
  int64_t chunk;
};

// A tile with what it carries from block to block: its state and A (n, lane), and D per lane.
template <typename T>
struct ForwardTile {
  Tile k;
  std::vector<T> h, A;
  std::array<T, kLanes<T>> skip{};
};

template <typename T>
ForwardTile<T> forward_tile(const ForwardArgs<T>& a, const Tile& k) {
  const Sizes& s = a.s;
  const int64_t N = s.state;
  ForwardTile<T> f{k, std::vector<T>(N * kLanes<T>), std::vector<T>(N * kLanes<T>)};
  gather_rows(a.h0 ? a.h0 + (k.b * s.channels + k.d0) * N : nullptr, N, k.width, N, f.h.data());
  gather_rows(a.A + k.d0 * N, N, k.width, N, f.A.data());
  for (int64_t v = 0; v < k.width; ++v) f.skip[v] = a.Dv ? a.Dv[k.d0 + v] : T(0);
  return f;
}

// Scratch of one thread: u, dt, z and y of one time tile, (step, lane).
template <typename T>
struct StepsScratch {
  std::vector<T> u, dt, z, y;
  StepsScratch() : u(kTimeTile * kLanes<T>), dt(kTimeTile * kLanes<T>), z(kTimeTile * kLanes<T>),
                   y(kTimeTile * kLanes<T>) {}
};

// Steps [t_begin, t_end) of one tile.
template <typename T>
void forward_steps(const ForwardArgs<T>& a, ForwardTile<T>& f, int64_t t_begin, int64_t t_end,
                   StepsScratch<T>& w) {
  constexpr int V = kLanes<T>;
  const Sizes& s = a.s;
  const int64_t L = s.length, N = s.state, chunks = num_chunks(L, a.chunk);
  const Tile& k = f.k;
  const int64_t group_row = (k.b * s.groups + k.d0 / s.per_group) * L * N;
  T acc[V];
  for (int64_t t0 = t_begin; t0 < t_end; t0 += kTimeTile) {
    const int64_t steps = std::min(kTimeTile, t_end - t0);
    gather_steps(a.u, k, t0, steps, w.u.data());
    gather_steps(a.dt, k, t0, steps, w.dt.data());
    if (a.z.data) gather_steps(a.z, k, t0, steps, w.z.data());
    for (int64_t i = 0; i < steps; ++i) {
      const int64_t t = t0 + i;
      if (a.ckpt && t % a.chunk == 0)
        scatter_rows(f.h.data(), k.width, N, a.ckpt + ((k.b * s.channels + k.d0) * chunks + t / a.chunk) * N,
                     chunks * N);
      tile_step<false>(N, w.dt.data() + i * V, w.u.data() + i * V, f.A.data(), f.h.data(),
                       a.Bt + group_row + t * N, a.Ct + group_row + t * N, f.h.data(), static_cast<T*>(nullptr),
                       acc);
      skip_and_gate(acc, f.skip.data(), w.u.data() + i * V, a.z.data ? w.z.data() + i * V : nullptr,
                    w.y.data() + i * V);
    }
    scatter_steps(w.y.data(), k, t0, steps, a.y);
  }
}

template <typename T>
void forward_impl(const ForwardArgs<T>& a) {
  const Sizes& s = a.s;
  const int64_t items = s.batch * s.groups * tiles_per_group(s, kLanes<T>);
  // A short sequence is a few microseconds of work: waking threads would cost more than it saves.
  const bool parallel = s.batch * s.channels * s.length * s.state >= (1 << 16);
#pragma omp parallel num_threads(at::get_num_threads()) if (parallel)
  {
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    std::vector<ForwardTile<T>> tiles;
    for (int64_t i = items * id / threads; i < items * (id + 1) / threads; ++i)
      tiles.push_back(forward_tile(a, tile_at(s, kLanes<T>, i)));
    StepsScratch<T> w;
    for (int64_t t0 = 0; t0 < s.length; t0 += kTimeBlock)
      for (auto& f : tiles) forward_steps(a, f, t0, std::min(s.length, t0 + kTimeBlock), w);
    for (const auto& f : tiles)
      scatter_rows(f.h.data(), f.k.width, s.state, a.last + (f.k.b * s.channels + f.k.d0) * s.state, s.state);
  }
}

// u, dt, z: (B, D, L), any strides; A: (D, N); Bt, Ct: (B, G, L, N); D: (D,); h0: (B, D, N) -> y: (B, D, L) (u's
// layout when u is dense), the last state (B, D, N), and when keep_checkpoints the state at the start of every
// chunk of ``chunk`` steps, (B, D, ceil(L / chunk), N) (else an empty tensor).
std::vector<at::Tensor> scan_forward(const at::Tensor& u, const at::Tensor& dt, const at::Tensor& A,
                                     const at::Tensor& Bt, const at::Tensor& Ct, const std::optional<at::Tensor>& Dv,
                                     const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& h0,
                                     int64_t chunk, bool keep_checkpoints) {
  TORCH_CHECK(chunk >= 1, "selective_scan kernel: chunk must be >= 1, got ", chunk);
  std::vector<at::Tensor> strided{u, dt}, dense{A, Bt, Ct};
  if (z.has_value()) strided.push_back(*z);
  for (const auto& t : present({Dv, h0})) dense.push_back(t);
  check_inputs(strided, dense);
  const Sizes s = sizes_of(u, A, Bt);
  auto y = at::empty_like(u);
  auto last = at::empty({s.batch, s.channels, s.state}, u.options());
  auto ckpt = keep_checkpoints ? at::empty({s.batch, s.channels, num_chunks(s.length, chunk), s.state}, u.options())
                               : at::empty({0}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_forward", [&] {
    using T = scalar_t;
    forward_impl<T>({s, seq<const T>(u), seq<const T>(dt), seq_or_empty<T>(z), seq<T>(y), A.data_ptr<T>(),
                     Bt.data_ptr<T>(), Ct.data_ptr<T>(), data_or_null<T>(Dv), data_or_null<T>(h0),
                     last.data_ptr<T>(), keep_checkpoints ? ckpt.data_ptr<T>() : nullptr, chunk});
  });
  return {y, last, ckpt};
}

// ---------------------------------------------------------------------------------------------------------------
// One token

// Vectorized over n, one channel after the other: the state's rows are used as stored, where tiles would transpose
// them, which per token costs more than the arithmetic. Then the skip and the gate, vectorized over channels.
// x, dt, y: (B, D) contiguous; B and C rows of (G, N) at bc_stride per batch row; z rows at z_stride.
template <typename T>
void update_impl(const T* state, const T* x, const T* dt, const T* A, const T* Bg, const T* Cg, int64_t bc_stride,
                 const T* Dv, const T* z, int64_t z_stride, int64_t batch, int64_t channels, int64_t N,
                 int64_t groups, T* y, T* out) {
  const int64_t items = batch * channels, per_group = channels / groups;
  const bool parallel = items * N >= (1 << 16);  // one token is little work: threads only when there is enough
#pragma omp parallel num_threads(at::get_num_threads()) if (parallel)
  {
    // A fixed range of (b, d) per thread, walked with counters: no division per channel.
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t first = items * id / threads, end = items * (id + 1) / threads;
    int64_t b = first / channels, d = first % channels;
    for (int64_t item = first; item < end; ++item, d = d + 1 == channels ? 0 : d + 1, b += d == 0) {
      const int64_t row = b * bc_stride + (groups == 1 ? 0 : d / per_group) * N;
      const T step = dt[item], du = step * x[item];
      const T* __restrict__ Ar = A + d * N;
      const T* __restrict__ h = state + item * N;
      const T* __restrict__ Bn = Bg + row;
      const T* __restrict__ Cn = Cg + row;
      T* __restrict__ hn = out + item * N;
      if (N == 16) {  // Mamba's default: a loop of known length, unrolled into whole vectors with no remainder
#pragma omp simd
        for (int64_t n = 0; n < 16; ++n) hn[n] = fast_exp(step * Ar[n]) * h[n] + du * Bn[n];
      } else {
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) hn[n] = fast_exp(step * Ar[n]) * h[n] + du * Bn[n];
      }
      y[item] = longseq::dot(Cn, hn, N);  // hn is in L1: a second pass costs less than a simd reduction's epilogue
    }
    for (int64_t b0 = first - first % channels; b0 < end; b0 += channels) {
      const int64_t lo = std::max(first, b0), hi = std::min(end, b0 + channels);
      const T* zb = z ? z + (b0 / channels) * z_stride - b0 : nullptr;  // zb[item]: this row's z
#pragma omp simd
      for (int64_t item = lo; item < hi; ++item) {
        const T pre = y[item] + (Dv ? Dv[item - b0] * x[item] : T(0));
        y[item] = zb ? pre * (zb[item] * sigmoid(zb[item])) : pre;
      }
    }
  }
}

// state: (B, D, N), x, dt, z: (B, D), A: (D, N), B, C: (B, N) or (B, G, N), D: (D,) (z and D optional), of any
// float dtypes, cast here to ``dtype`` (per token, casts and views cost less here than in Python) -> y: (B, D),
// the new state (B, D, N), both new tensors in ``dtype``.
std::vector<at::Tensor> state_update(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                                     const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                     const std::optional<at::Tensor>& Dv, const std::optional<at::Tensor>& z,
                                     at::ScalarType dtype) {
  const auto dense = [&](const at::Tensor& t) { return t.to(dtype).contiguous(); };
  const auto s = dense(state), x_ = dense(x), dt_ = dense(dt), A_ = dense(A), B_ = dense(B), C_ = dense(C);
  const auto D_ = Dv.has_value() ? dense(*Dv) : at::Tensor(), z_ = z.has_value() ? dense(*z) : at::Tensor();
  TORCH_CHECK(s.dim() == 3 && x_.dim() == 2 && A_.dim() == 2 && (B_.dim() == 2 || B_.dim() == 3),
              "selective_state_update kernel: unexpected shapes");
  const int64_t batch = x_.size(0), channels = x_.size(1), N = A_.size(1), groups = B_.dim() == 3 ? B_.size(1) : 1;
  TORCH_CHECK(channels % groups == 0 && s.size(2) == N && B_.size(-1) == N,
              "selective_state_update kernel: inconsistent sizes");
  auto y = at::empty_like(x_);
  auto out = at::empty_like(s);
  AT_DISPATCH_FLOATING_TYPES(x_.scalar_type(), "selective_state_update", [&] {
    using T = scalar_t;
    update_impl<T>(s.data_ptr<T>(), x_.data_ptr<T>(), dt_.data_ptr<T>(), A_.data_ptr<T>(), B_.data_ptr<T>(),
                   C_.data_ptr<T>(), groups * N, Dv.has_value() ? D_.data_ptr<T>() : nullptr,
                   z.has_value() ? z_.data_ptr<T>() : nullptr, channels, batch, channels, N, groups,
                   y.data_ptr<T>(), out.data_ptr<T>());
  });
  return {y, out};
}

// Mamba's whole token update for decoding, projections included, one call per token (the Python composition costs
// more in dispatch than in arithmetic at this size): for each batch row,
//     x | z = in_proj(u);  x = silu(conv(window, x));  dt | B | C = x_proj(x);  delta = softplus(dt_proj(dt))
//     h = exp(delta A) h + delta x B;  y = out_proj((C . h + D x) silu(z))
// A masked row keeps both states (conv output 0 and delta 0, as the composition) and outputs 0. The projections are
// vector.h's linear_rows: one token's weights are read once, over torch's threads (a BLAS GEMM with one row runs on
// one thread, and at d_model 256 the weights are most of a step's time). u: (B, d_model); window: (B, E, W-1);
// state: (B, E, N); in_w: (2E, d_model), conv_w: (E, W), xproj_w: (R + 2N, E), dtproj_w: (E, R), A: (E, N), D, conv_b,
// dtproj_b: (E,), out_w: (d_model, E); mask: bool (B,). Returns y: (B, d_model), the new window and the new state
// (new tensors: the arguments are not modified); None unless every tensor is on the CPU in one dtype, float32 or
// float64 (the caller then runs its composition).
template <typename T>
void conv_step(const T* xz, const T* window, const T* w, const T* bias, const bool* mask, int64_t batch,
               int64_t channels, int64_t width, T* xc, T* new_window) {
  const int64_t K = width - 1;
  for (int64_t b = 0; b < batch; ++b) {
    const bool valid = !mask || mask[b];
    T* out = xc + b * channels;
    for (int64_t e = 0; e < channels; ++e) {
      const T* win = window + (b * channels + e) * K;
      const T* we = w + e * width;
      const T input = xz[b * 2 * channels + e];
      T sum = bias ? bias[e] : T(0);
      for (int64_t i = 0; i < K; ++i) sum += we[i] * win[i];
      out[e] = sum + we[K] * input;
      T* nw = new_window + (b * channels + e) * K;
      if (valid && K > 0) {
        std::copy(win + 1, win + K, nw);
        nw[K - 1] = input;
      } else {
        std::copy(win, win + K, nw);
      }
    }
    if (!valid) {  // a masked token is skipped: output 0
      std::fill(out, out + channels, T(0));
      continue;
    }
#pragma omp simd
    for (int64_t e = 0; e < channels; ++e) out[e] = out[e] / (T(1) + fast_exp(-out[e]));  // silu, vectorized
  }
}

// delta: (B, E) <- softplus(delta), 0 on a masked row (a masked token has no step).
template <typename T>
void softplus_rows(T* delta, const bool* mask, int64_t batch, int64_t E) {
  for (int64_t b = 0; b < batch; ++b) {
    T* row = delta + b * E;
    if (mask && !mask[b]) {
      std::fill(row, row + E, T(0));
      continue;
    }
#pragma omp simd
    for (int64_t e = 0; e < E; ++e) row[e] = fast_softplus(row[e]);
  }
}

std::optional<std::vector<at::Tensor>> block_step(const at::Tensor& u, const at::Tensor& window, const at::Tensor& state,
                                   const at::Tensor& in_w, const std::optional<at::Tensor>& in_b,
                                   const at::Tensor& conv_w, const std::optional<at::Tensor>& conv_b,
                                   const at::Tensor& xproj_w, const at::Tensor& dtproj_w, const at::Tensor& dtproj_b,
                                   const at::Tensor& A, const std::optional<at::Tensor>& Dv, const at::Tensor& out_w,
                                   const std::optional<at::Tensor>& out_b, const std::optional<at::Tensor>& mask) {
  // Anything but one float dtype on the CPU is the caller's plain path (None), not an error.
  const auto dtype = u.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return std::nullopt;
  for (const auto& t : {window, state, in_w, conv_w, xproj_w, dtproj_w, dtproj_b, A, out_w})
    if (!t.device().is_cpu() || t.scalar_type() != dtype) return std::nullopt;
  for (const auto& t : present({in_b, conv_b, Dv, out_b}))
    if (!t.device().is_cpu() || t.scalar_type() != dtype) return std::nullopt;
  if (!u.device().is_cpu() || (mask.has_value() && !mask->device().is_cpu())) return std::nullopt;
  TORCH_CHECK(u.dim() == 2 && window.dim() == 3 && state.dim() == 3 && in_w.dim() == 2 && conv_w.dim() == 2 &&
                  xproj_w.dim() == 2 && dtproj_w.dim() == 2 && A.dim() == 2 && out_w.dim() == 2,
              "mamba block_step kernel: unexpected dimensions");
  const int64_t batch = u.size(0), E = A.size(0), N = A.size(1), R = dtproj_w.size(1), W = conv_w.size(1);
  TORCH_CHECK(u.dim() == 2 && in_w.size(0) == 2 * E && conv_w.size(0) == E && window.sizes() ==
                  at::IntArrayRef({batch, E, W - 1}) && state.sizes() == at::IntArrayRef({batch, E, N}) &&
                  xproj_w.sizes() == at::IntArrayRef({R + 2 * N, E}) && dtproj_w.size(0) == E && out_w.size(1) == E,
              "mamba block_step kernel: inconsistent shapes");
  TORCH_CHECK(!mask.has_value() || (mask->scalar_type() == at::kBool && mask->sizes() == at::IntArrayRef({batch})),
              "mamba block_step kernel: mask must be bool (B,)");
  const auto vector_of = [](const std::optional<at::Tensor>& t, int64_t n) {
    return !t.has_value() || t->sizes() == at::IntArrayRef({n});
  };
  TORCH_CHECK(u.size(1) == in_w.size(1) && vector_of(in_b, 2 * E) && vector_of(conv_b, E) && vector_of(Dv, E) &&
                  vector_of(dtproj_b, E) && vector_of(out_b, out_w.size(0)),
              "mamba block_step kernel: inconsistent shapes");
  // The tensors read through pointers, dense (no copy when they already are: the usual case).
  const auto window_c = window.contiguous(), state_c = state.contiguous(), conv_w_c = conv_w.contiguous(),
             A_c = A.contiguous();
  const auto dense = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
  };
  const auto conv_b_c = dense(conv_b), D_c = dense(Dv), mask_c = dense(mask);
  const bool* m = mask_c.has_value() ? mask_c->data_ptr<bool>() : nullptr;
  const auto in_w_c = in_w.contiguous(), xproj_w_c = xproj_w.contiguous(), dtproj_w_c = dtproj_w.contiguous(),
             out_w_c = out_w.contiguous(), u_c = u.contiguous();
  const auto in_b_c = dense(in_b), out_b_c = dense(out_b);
  const auto dtproj_b_c = dtproj_b.contiguous();
  const int64_t d_model = u.size(1), d_out = out_w.size(0);
  // One scratch allocation per token: x | z (2E), x after the conv (E), dt | B | C (R + 2N), delta (E), y (E).
  const int64_t row = 5 * E + R + 2 * N;
  auto scratch = at::empty({batch, row}, u.options());
  auto out = at::empty({batch, d_out}, u.options());
  auto new_window = at::empty_like(window_c);
  auto new_state = at::empty_like(state_c);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mamba_block_step", [&] {
    using T = scalar_t;
    using longseq::linear_rows;
    T* const xz_p = scratch.data_ptr<T>();
    T *const xc_p = xz_p + batch * 2 * E, *const dbc_p = xc_p + batch * E, *const dl = dbc_p + batch * (R + 2 * N),
             *const y_p = dl + batch * E;
    linear_rows<T>(in_w_c.data_ptr<T>(), data_or_null<T>(in_b_c), 2 * E, d_model, u_c.data_ptr<T>(), d_model, batch,
                   xz_p, 2 * E);
    conv_step<T>(xz_p, window_c.data_ptr<T>(), conv_w_c.data_ptr<T>(), data_or_null<T>(conv_b_c), m, batch, E, W,
                 xc_p, new_window.data_ptr<T>());
    linear_rows<T>(xproj_w_c.data_ptr<T>(), nullptr, R + 2 * N, E, xc_p, E, batch, dbc_p, R + 2 * N);
    linear_rows<T>(dtproj_w_c.data_ptr<T>(), dtproj_b_c.data_ptr<T>(), E, R, dbc_p, R + 2 * N, batch, dl, E);
    softplus_rows<T>(dl, m, batch, E);
    update_impl<T>(state_c.data_ptr<T>(), xc_p, dl, A_c.data_ptr<T>(), dbc_p + R, dbc_p + R + N, R + 2 * N,
                   data_or_null<T>(D_c), xz_p + E, 2 * E, batch, E, N, 1, y_p, new_state.data_ptr<T>());
    T* out_p = out.data_ptr<T>();
    linear_rows<T>(out_w_c.data_ptr<T>(), data_or_null<T>(out_b_c), d_out, E, y_p, E, batch, out_p, d_out);
    if (m)
      for (int64_t b = 0; b < batch; ++b)
        if (!m[b]) std::fill(out_p + b * d_out, out_p + (b + 1) * d_out, T(0));
  });
  return std::vector<at::Tensor>{out, new_window, new_state};
}

// ---------------------------------------------------------------------------------------------------------------
// Backward

constexpr int64_t kTargetItems = 16;  // backward work items wanted over the batch: enough for 16 threads

// Blocks of tiles per group, from the shapes only (not the thread count): at least kTargetItems items in all where
// there are enough tiles; more tiles per block spread the sum over lanes of dB and dC over more of them.
int64_t blocks_per_group(const Sizes& s, int lanes) {
  const int64_t wanted = (kTargetItems + s.batch * s.groups - 1) / (s.batch * s.groups);
  return std::max<int64_t>(1, std::min<int64_t>(tiles_per_group(s, lanes), wanted));
}

template <typename T>
struct BackwardArgs {
  Sizes s;
  Seq<const T> u, dt, z, dy;
  Seq<T> du, ddt, dz;
  const T *A, *Bt, *Ct, *Dv, *ckpt, *dlast;
  T *dh0, *dA_rows, *dD_rows, *dB_blocks, *dC_blocks;
  int64_t chunk, blocks;
};

// A tile with what it carries from chunk to chunk: A, the gradient w.r.t. the state (dh) and dA's sum (n, lane);
// D and dD's sum per lane.
template <typename T>
struct BackwardTile {
  Tile k;
  std::vector<T> A, dh, dA;
  std::array<T, kLanes<T>> skip{}, dD{};
};

// Scratch of one thread: a chunk's states and decays (step, n, lane); u, dt, z, the output's gradient, then the
// gradients dz, du and ddt (step, lane); the chunk's lane-wise sums for dB and dC (step, n, lane); the state at
// the chunk's start (n, lane).
template <typename T>
struct ChunkScratch {
  std::vector<T> h, decay, u, dt, z, dy, gy, du, ddt, dB, dC, start;
  ChunkScratch(int64_t K, int64_t N)
      : h(K * N * kLanes<T>), decay(K * N * kLanes<T>), u(K * kLanes<T>), dt(K * kLanes<T>), z(K * kLanes<T>),
        dy(K * kLanes<T>), gy(K * kLanes<T>), du(K * kLanes<T>), ddt(K * kLanes<T>), dB(K * N * kLanes<T>),
        dC(K * N * kLanes<T>), start(N * kLanes<T>) {}
};

// Chunk c of one tile: the gradients du, ddt, dz of its steps; dh, dA and dD carried on; dB and dC lane-wise
// into the scratch, written by the block's first tile (First) and added to by the others.
template <bool First, typename T>
void backward_chunk(const BackwardArgs<T>& a, BackwardTile<T>& k, int64_t c, ChunkScratch<T>& w) {
  constexpr int V = kLanes<T>;
  const Sizes& s = a.s;
  const int64_t L = s.length, N = s.state, chunks = num_chunks(L, a.chunk);
  const int64_t t0 = c * a.chunk, len = std::min(L, t0 + a.chunk) - t0;
  const Tile& id = k.k;
  const int64_t group_row = (id.b * s.groups + id.d0 / s.per_group) * L * N;
  const T* Br = a.Bt + group_row + t0 * N;
  const T* Cr = a.Ct + group_row + t0 * N;
  T* __restrict__ hs = w.h.data();
  T* __restrict__ decays = w.decay.data();
  T* __restrict__ gy = w.gy.data();
  gather_steps(a.u, id, t0, len, w.u.data());
  gather_steps(a.dt, id, t0, len, w.dt.data());
  gather_steps(a.dy, id, t0, len, w.dy.data());
  if (a.z.data) gather_steps(a.z, id, t0, len, w.z.data());
  gather_rows(a.ckpt + ((id.b * s.channels + id.d0) * chunks + c) * N, chunks * N, id.width, N, w.start.data());
  // 1. The chunk's states and decays again, from its checkpoint, with the forward's operations (the same values);
  //    the scan's own outputs (before skip and gate) into gy.
  for (int64_t i = 0; i < len; ++i)
    tile_step<true>(N, w.dt.data() + i * V, w.u.data() + i * V, k.A.data(),
                    i > 0 ? hs + (i - 1) * N * V : w.start.data(), Br + i * N, Cr + i * N, hs + i * N * V,
                    decays + i * N * V, gy + i * V);
  // 2. Through the skip and the gate: dz, and the gradient of the scan's own output (in place of it in gy).
  for (int64_t i = 0; i < len; ++i) {
    const T* u = w.u.data() + i * V;
    const T* dy = w.dy.data() + i * V;
    const T* z = w.z.data() + i * V;
    T* g = gy + i * V;
    T* dz = w.z.data() + i * V;  // dz in place of z
    if (a.z.data) {
#pragma omp simd
      for (int v = 0; v < V; ++v) {
        const T zv = z[v], sg = sigmoid(zv), pre = g[v] + k.skip[v] * u[v];
        g[v] = dy[v] * (zv * sg);
        dz[v] = dy[v] * pre * (sg * (T(1) + zv * (T(1) - sg)));
      }
    } else {
      std::copy(dy, dy + V, g);
    }
  }
  // 3. Reverse time over the chunk.
  for (int64_t i = len - 1; i >= 0; --i) {
    const T* u = w.u.data() + i * V;
    const T* dt = w.dt.data() + i * V;
    const T* g = gy + i * V;
    const T* hp = i > 0 ? hs + (i - 1) * N * V : w.start.data();
    const T* Bn = Br + i * N;
    const T* Cn = Cr + i * N;
    T du[V], sum_b[V] = {}, sum_a[V] = {};
#pragma omp simd
    for (int v = 0; v < V; ++v) du[v] = dt[v] * u[v];
    for (int64_t n = 0; n < N; ++n) {
      const T bn = Bn[n], cn = Cn[n];
      const T* hn = hs + (i * N + n) * V;
      const T* an = decays + (i * N + n) * V;
      const T* pn = hp + n * V;
      const T* An = k.A.data() + n * V;
      T* dhn = k.dh.data() + n * V;
      T* dAn = k.dA.data() + n * V;
      T* dBn = w.dB.data() + (i * N + n) * V;
      T* dCn = w.dC.data() + (i * N + n) * V;
#pragma omp simd
      for (int v = 0; v < V; ++v) {
        const T gh = dhn[v] + g[v] * cn;  // d loss / d h_t
        dCn[v] = First ? g[v] * hn[v] : dCn[v] + g[v] * hn[v];
        dBn[v] = First ? du[v] * gh : dBn[v] + du[v] * gh;
        sum_b[v] += bn * gh;
        const T x = gh * pn[v] * an[v];  // d loss / d (dt A_n) through the decay
        sum_a[v] += x * An[v];
        dAn[v] += x * dt[v];
        dhn[v] = gh * an[v];
      }
    }
    T* dui = w.du.data() + i * V;
    T* ddti = w.ddt.data() + i * V;
#pragma omp simd
    for (int v = 0; v < V; ++v) {
      dui[v] = g[v] * k.skip[v] + dt[v] * sum_b[v];
      ddti[v] = u[v] * sum_b[v] + sum_a[v];
      k.dD[v] += g[v] * u[v];
    }
  }
  scatter_steps(w.du.data(), id, t0, len, a.du);
  scatter_steps(w.ddt.data(), id, t0, len, a.ddt);
  if (a.z.data) scatter_steps(w.z.data(), id, t0, len, a.dz);
}

template <typename T>
void backward_impl(const BackwardArgs<T>& a) {
  constexpr int V = kLanes<T>;
  const Sizes& s = a.s;
  const int64_t L = s.length, N = s.state, chunks = num_chunks(L, a.chunk), blocks = a.blocks;
  const int64_t per_group = tiles_per_group(s, V), items = s.batch * s.groups * blocks;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    ChunkScratch<T> w(std::min(a.chunk, L), N);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t bg = item / blocks, blk = item % blocks;  // bg = b * G + g
      std::vector<BackwardTile<T>> tiles;
      for (int64_t j = blk * per_group / blocks; j < (blk + 1) * per_group / blocks; ++j) {
        const Tile id = tile_at(s, V, bg * per_group + j);
        BackwardTile<T> k{id, std::vector<T>(N * V), std::vector<T>(N * V), std::vector<T>(N * V, T(0))};
        gather_rows(a.A + id.d0 * N, N, id.width, N, k.A.data());
        gather_rows(a.dlast ? a.dlast + (id.b * s.channels + id.d0) * N : nullptr, N, id.width, N, k.dh.data());
        for (int64_t v = 0; v < id.width; ++v) k.skip[v] = a.Dv ? a.Dv[id.d0 + v] : T(0);
        tiles.push_back(std::move(k));
      }
      T* dBb = a.dB_blocks + (bg * blocks + blk) * L * N;
      T* dCb = a.dC_blocks + (bg * blocks + blk) * L * N;
      for (int64_t c = chunks - 1; c >= 0; --c) {
        const int64_t t0 = c * a.chunk, len = std::min(L, t0 + a.chunk) - t0;
        backward_chunk<true>(a, tiles.front(), c, w);
        for (size_t j = 1; j < tiles.size(); ++j) backward_chunk<false>(a, tiles[j], c, w);
        for (int64_t e = 0; e < len * N; ++e) {  // the sums over the lanes (a vector reduction: fixed order)
          const T* pb = w.dB.data() + e * V;
          const T* pc = w.dC.data() + e * V;
          T sb = T(0), sc = T(0);
#pragma omp simd reduction(+ : sb, sc)
          for (int v = 0; v < V; ++v) {
            sb += pb[v];
            sc += pc[v];
          }
          dBb[t0 * N + e] = sb;
          dCb[t0 * N + e] = sc;
        }
      }
      for (const auto& k : tiles) {
        const int64_t row = k.k.b * s.channels + k.k.d0;
        scatter_rows(k.dh.data(), k.k.width, N, a.dh0 + row * N, N);
        scatter_rows(k.dA.data(), k.k.width, N, a.dA_rows + row * N, N);
        for (int64_t v = 0; v < k.k.width; ++v) a.dD_rows[row + v] = k.dD[v];
      }
    }
  }
}

// out[o, i] = sum_p in[o, p, i] over a contiguous (outer, parts, rest) buffer, p in order; parallel over pieces of
// (o, i), vectorized over i.
template <typename T>
void sum_parts(const T* in, T* out, int64_t outer, int64_t parts, int64_t rest) {
  constexpr int64_t kPiece = 4096;
  const int64_t pieces = (rest + kPiece - 1) / kPiece;
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t job = 0; job < outer * pieces; ++job) {
    const int64_t o = job / pieces, r0 = job % pieces * kPiece, r1 = std::min(rest, r0 + kPiece);
    T* __restrict__ dst = out + o * rest;
    std::copy(in + o * parts * rest + r0, in + o * parts * rest + r1, dst + r0);
    for (int64_t p = 1; p < parts; ++p) {
      const T* __restrict__ src = in + (o * parts + p) * rest;
#pragma omp simd
      for (int64_t r = r0; r < r1; ++r) dst[r] += src[r];
    }
  }
}

// The forward's inputs plus ckpt (from scan_forward with keep_checkpoints), dy: (B, D, L), any strides, and
// dlast: (B, D, N) (None: zero) -> du, ddt, dA, dBt, dCt, dD, dz, dh0 (dD and dz empty when D and z were not
// given).
std::vector<at::Tensor> scan_backward(const at::Tensor& u, const at::Tensor& dt, const at::Tensor& A,
                                      const at::Tensor& Bt, const at::Tensor& Ct, const std::optional<at::Tensor>& Dv,
                                      const std::optional<at::Tensor>& z, const at::Tensor& ckpt,
                                      const at::Tensor& dy, const std::optional<at::Tensor>& dlast, int64_t chunk) {
  TORCH_CHECK(chunk >= 1, "selective_scan kernel: chunk must be >= 1, got ", chunk);
  std::vector<at::Tensor> strided{u, dt, dy}, dense{A, Bt, Ct, ckpt};
  if (z.has_value()) strided.push_back(*z);
  for (const auto& t : present({Dv, dlast})) dense.push_back(t);
  check_inputs(strided, dense);
  const Sizes s = sizes_of(u, A, Bt);
  TORCH_CHECK(ckpt.dim() == 4 && ckpt.size(2) == num_chunks(s.length, chunk),
              "selective_scan kernel: checkpoints do not match chunk ", chunk);
  const int64_t blocks = blocks_per_group(s, u.scalar_type() == at::kDouble ? kLanes<double> : kLanes<float>);
  const auto opts = u.options();
  auto du = at::empty_like(u), ddt = at::empty_like(u), dh0 = at::empty({s.batch, s.channels, s.state}, opts);
  auto dz = z.has_value() ? at::empty_like(*z) : at::empty({0}, opts);
  auto dA_rows = at::empty({s.batch, s.channels, s.state}, opts), dD_rows = at::empty({s.batch, s.channels}, opts);
  auto dB_blocks = at::empty({s.batch, s.groups, blocks, s.length, s.state}, opts);
  auto dC_blocks = at::empty({s.batch, s.groups, blocks, s.length, s.state}, opts);
  auto dBt = blocks == 1 ? dB_blocks.view_as(Bt) : at::empty_like(Bt);
  auto dCt = blocks == 1 ? dC_blocks.view_as(Ct) : at::empty_like(Ct);
  auto dA = at::empty_like(A);
  auto dD = Dv.has_value() ? at::empty_like(*Dv) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_backward", [&] {
    using T = scalar_t;
    backward_impl<T>({s, seq<const T>(u), seq<const T>(dt), seq_or_empty<T>(z), seq<const T>(dy), seq<T>(du),
                      seq<T>(ddt), z.has_value() ? seq<T>(dz) : Seq<T>{nullptr, 0, 0, 0}, A.data_ptr<T>(),
                      Bt.data_ptr<T>(), Ct.data_ptr<T>(), data_or_null<T>(Dv), ckpt.data_ptr<T>(),
                      data_or_null<T>(dlast), dh0.data_ptr<T>(), dA_rows.data_ptr<T>(), dD_rows.data_ptr<T>(),
                      dB_blocks.data_ptr<T>(), dC_blocks.data_ptr<T>(), chunk, blocks});
    if (blocks > 1) {
      sum_parts<T>(dB_blocks.data_ptr<T>(), dBt.data_ptr<T>(), s.batch * s.groups, blocks, s.length * s.state);
      sum_parts<T>(dC_blocks.data_ptr<T>(), dCt.data_ptr<T>(), s.batch * s.groups, blocks, s.length * s.state);
    }
    sum_parts<T>(dA_rows.data_ptr<T>(), dA.data_ptr<T>(), 1, s.batch, s.channels * s.state);
    if (Dv.has_value()) sum_parts<T>(dD_rows.data_ptr<T>(), dD.data_ptr<T>(), 1, s.batch, s.channels);
  });
  return {du, ddt, dA, dBt, dCt, dD, dz, dh0};
}

// ---------------------------------------------------------------------------------------------------------------
// The exp alone, elementwise (for its accuracy test)

template <typename T>
void exp_impl(const T* in, T* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = fast_exp(in[i]);
}

at::Tensor exp_(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "selective_scan kernel: exp needs a contiguous CPU tensor");
  auto out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "selective_scan_exp",
                             [&] { exp_impl<scalar_t>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), x.numel()); });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_forward", &scan_forward, "selective scan forward");
  m.def("scan_backward", &scan_backward, "selective scan backward");
  m.def("state_update", &state_update, "one token of decoding");
  m.def("block_step", &block_step, "one token of a whole Mamba block (decoding)");
  m.def("exp", &exp_, "the kernels' exp, elementwise");
}
