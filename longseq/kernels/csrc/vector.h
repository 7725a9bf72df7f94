// Vector helpers shared by longseq's CPU kernels: GCC/Clang vector extensions of one 64-byte register (one AVX-512
// register; two AVX2 or four SSE ones where the CPU has less), and sums in fixed orders, so that results depend
// neither on the thread count nor on the data's alignment.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace longseq {

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(64)));
  static constexpr int64_t lanes = 64 / sizeof(T);
};

template <typename T>
inline typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The sum of a vector's lanes by halves (a fixed tree: log2(lanes) dependent additions, not lanes): lane l of the
// lower half plus lane l of the upper half, down to one lane, in registers (shuffles; a lane-by-lane loop goes
// through the stack and costs more than a decode step's arithmetic).
template <typename V, std::size_t... I>
inline auto add_halves(V v, std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, I...) + __builtin_shufflevector(v, v, (I + sizeof...(I))...);
}

template <typename V>
inline auto halves_sum(V v) {
  typedef std::remove_reference_t<decltype(v[0])> T;
  constexpr std::size_t n = sizeof(V) / sizeof(T);
  if constexpr (n == 1)
    return v[0];
  else
    return halves_sum(add_halves(v, std::make_index_sequence<n / 2>{}));
}

template <typename T>
inline T lane_sum(typename Vec<T>::type v) {
  return halves_sum(v);
}

// sum_k a[k] b[k] in a fixed order: lane l sums the terms k = l mod lanes, the lanes are added by halves, the tail
// last. (A plain running sum chains every addition on the previous one, and the compiler may not reorder it.)
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  constexpr int64_t L = Vec<T>::lanes;
  typename Vec<T>::type acc = {};
  int64_t k = 0;
  for (; k + L <= n; k += L) acc += load(a + k) * load(b + k);
  T sum = lane_sum<T>(acc);
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

// out[r] = dot(W + r n, h, n) for r < rows (W: (rows, n) contiguous), four rows at a time so that their
// accumulations overlap; each row's result is exactly its dot().
template <typename T>
void matvec(const T* W, const T* h, int64_t rows, int64_t n, T* out) {
  constexpr int64_t L = Vec<T>::lanes, R = 4;
  int64_t r = 0;
  for (; r + R <= rows; r += R) {
    typename Vec<T>::type acc[R] = {};
    int64_t k = 0;
    for (; k + L <= n; k += L) {
      const auto hv = load(h + k);
      for (int64_t i = 0; i < R; ++i) acc[i] += load(W + (r + i) * n + k) * hv;
    }
    for (int64_t i = 0; i < R; ++i) {
      T sum = lane_sum<T>(acc[i]);
      for (int64_t kk = k; kk < n; ++kk) sum += W[(r + i) * n + kk] * h[kk];
      out[r + i] = sum;
    }
  }
  for (; r < rows; ++r) out[r] = dot(W + r * n, h, n);
}

// A linear layer for a few rows of input (decoding): out[b * ldo + r] = matvec's dot of W's row r and x + b ldx
// (+ bias[r]) for r < rows, b < batch; W: (rows, n) contiguous. Each output is exactly that dot, so results depend
// neither on the thread count nor on the batch. Fixed blocks of rows go over torch's threads, every batch row against
// a block while it is in cache: each weight is read from memory once per call. Where one token's weights outgrow a
// core's L2 (Mamba's in_proj at d_model 256 is 1 MiB), two threads hold half of them each in their own. For one row
// of input this beats a BLAS GEMM call, which runs a matrix-vector product on one thread.
template <typename T>
void linear_rows(const T* W, const T* bias, int64_t rows, int64_t n, const T* x, int64_t ldx, int64_t batch, T* out,
                 int64_t ldo) {
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (rows + kBlock - 1) / kBlock;
  const int threads = rows * n * batch >= (int64_t(1) << 16) ? at::get_num_threads() : 1;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t r0 = block * kBlock, count = std::min(kBlock, rows - r0);
    for (int64_t b = 0; b < batch; ++b) {
      T* o = out + b * ldo + r0;
      matvec(W + r0 * n, x + b * ldx, count, n, o);
      if (bias)
        for (int64_t i = 0; i < count; ++i) o[i] += bias[r0 + i];
    }
  }
}

}  // namespace longseq
