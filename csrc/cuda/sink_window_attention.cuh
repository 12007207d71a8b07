// Shared pieces of the CUDA sink_window_attention: the params struct and the logical key map
// (sink slots, window ring runs, the chunk) computed from n on the device.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/counter_guard.cuh"

namespace reward_forcing::cuda {

struct SwaParams {
  const void* q;        // [B, Lq, H, D] un-rotated queries
  const void* k_chunk;  // [B, Lq, H, D] the chunk's keys, already rotated (or un-rotated without RoPE)
  const void* v_chunk;  // [B, Lq, H, D]
  const void* k_cache;  // [B, cache_rows, H, D]
  const void* v_cache;
  void* out;               // [B, Lq, H, D]
  const int64_t* state;    // n on the device
  int* bad_counter;        // bad_counter_flag()
  const void* rope_cs;     // [Lq, D/2, 2] (cos, sin) in the accumulation type, or nullptr
  int64_t B, H, D, T, S, W, R;
  int64_t cache_rows;      // (S + R) * T
  int64_t Lq;              // c * T
  float scale_log2;        // softmax scale * log2(e) (fast path)
  double scale;            // softmax scale (generic path)
};

// The keys a chunk sees, in logical order j: sink slot rows [0, e0); the window's first ring run
// [e0, e1) and second run [e1, e2) (the ring wraps at most once); then the chunk [e2, Lk).
// Cache row of a context key j: j (sink), j + d1 (run 1), j + d2 (run 2).
struct KeyMap {
  int64_t e0, e1, e2, Lk, d1, d2;
};

__host__ __device__ inline KeyMap make_key_map(int64_t n, int64_t S, int64_t W, int64_t R,
                                               int64_t T, int64_t Lq) {
  const int64_t s_f = n < S ? n : S;
  const int64_t first = S > n - W ? S : n - W;  // window = frames [first, n)
  const int64_t n_w = n - first > 0 ? n - first : 0;
  const int64_t a = n_w > 0 ? (first - S) % R : 0;  // ring index of the oldest window frame
  const int64_t run1 = n_w < R - a ? n_w : R - a;
  const int64_t run2 = n_w - run1;
  KeyMap m;
  m.e0 = s_f * T;
  m.e1 = m.e0 + run1 * T;
  m.e2 = m.e1 + run2 * T;
  m.Lk = m.e2 + Lq;
  m.d1 = (S + a - s_f) * T;
  m.d2 = (S - s_f - run1) * T;
  return m;
}

// Launchers of the tensor-core path (bf16 / fp16, head dim 64 or 128), one translation unit per
// dtype. `config` (head dim 128): 0 = 4 warps x 32 query rows (default), 1 = 8 warps x 16 rows,
// 2 = 4 warps x 16 rows (see swa_mma.cuh).
void launch_swa_mma_bf16(const SwaParams& p, int config, cudaStream_t stream);
void launch_swa_mma_fp16(const SwaParams& p, int config, cudaStream_t stream);

}  // namespace reward_forcing::cuda
