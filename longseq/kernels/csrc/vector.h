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

// A linear layer for a few rows of input (decoding): out[b * ldo + r] = dot(W + r n, x + b ldx, n) (+ bias[r]) for
// r < rows, b < batch; W: (rows, n) contiguous. Each output is exactly that dot(), so results depend neither on the
// thread count nor on the batch. Rows go in fixed blocks over torch's threads, two at a time, every batch row
// against each pair while the pair is in cache: each weight is read once per call. Where one token's weights
// outgrow a core's L2 (Mamba's in_proj at d_model 256 is 1 MiB), two threads hold half of them each in their own.
// For one row of input this beats a BLAS GEMM call, which runs a matrix-vector product on one thread.
template <typename T>
void linear_rows(const T* W, const T* bias, int64_t rows, int64_t n, const T* x, int64_t ldx, int64_t batch, T* out,
                 int64_t ldo) {
  constexpr int64_t L = Vec<T>::lanes, kBlock = 64;
  const int64_t blocks = (rows + kBlock - 1) / kBlock;
  const int threads = rows * n * batch >= (int64_t(1) << 16) ? at::get_num_threads() : 1;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t end = std::min(rows, (block + 1) * kBlock);
    int64_t r = block * kBlock;
    for (; r + 2 <= end; r += 2) {
      const T *w0 = W + r * n, *w1 = w0 + n;
      for (int64_t b = 0; b < batch; ++b) {
        const T* xb = x + b * ldx;
        typename Vec<T>::type a0 = {}, a1 = {};
        int64_t k = 0;
        for (; k + L <= n; k += L) {
          const auto xv = load(xb + k);
          a0 += load(w0 + k) * xv;
          a1 += load(w1 + k) * xv;
        }
        T s0 = lane_sum<T>(a0), s1 = lane_sum<T>(a1);
        for (; k < n; ++k) {
          s0 += w0[k] * xb[k];
          s1 += w1[k] * xb[k];
        }
        out[b * ldo + r] = bias ? s0 + bias[r] : s0;
        out[b * ldo + r + 1] = bias ? s1 + bias[r + 1] : s1;
      }
    }
    for (; r < end; ++r)
      for (int64_t b = 0; b < batch; ++b) {
        const T s = dot(W + r * n, x + b * ldx, n);
        out[b * ldo + r] = bias ? s + bias[r] : s;
      }
  }
}

}  // namespace longseq
