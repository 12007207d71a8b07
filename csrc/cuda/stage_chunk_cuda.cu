// CUDA stage_chunk: one memory pass that rotates a chunk's q and k at its frame positions (n read
// on the device), writes the rotated keys and the values into the chunk's free ring slots and
// returns the rotated q — everything the dense SDPA call over the whole buffer needs (docs/design.md §3).
// One block per (chunk token, batch): the block computes that token's cos/sin once (float64 angle)
// into shared memory, then its threads stream the H*D channels in vectors of V elements.
// Semantics: the CPU twin csrc/cpu/stage_chunk_cpu.cpp.
#include "cuda/common.cuh"
#include "cuda/ops_cuda.h"

namespace reward_forcing {
namespace cuda {
namespace {

struct StageParams {
  const int64_t* state;
  int* bad_counter;       // bad_counter_flag()
  const double* freqs;    // [D/2] or null (no RoPE)
  const double* spatial;  // [T, D/2]
  const void *q, *k, *v;  // [B, Lq, H, D] contiguous
  void *q_out, *k_cache, *v_cache;
  int64_t H, D, T, Lq, S, R, cache_rows;
};

template <typename T, int V, bool kVec>
__global__ void __launch_bounds__(128) stage_chunk_kernel(const StageParams p) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* cs = reinterpret_cast<A*>(smem_raw);  // (cos, sin) per channel pair
  const int64_t row = blockIdx.x, b = blockIdx.y, half = p.D / 2;
  const int64_t n = *p.state;
  if (!counter_ok(n, p.Lq / p.T, p.bad_counter)) return;  // the whole block: write nothing
  const int64_t f = n + row / p.T;  // the frame this token belongs to
  if (p.freqs != nullptr) {
    const double* sp = p.spatial + (row % p.T) * half;
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
      A c, s;
      rope_sincos<A>(__dadd_rn(__dmul_rn(static_cast<double>(f), p.freqs[i]), sp[i]), c, s);
      cs[2 * i] = c;
      cs[2 * i + 1] = s;
    }
    __syncthreads();
  }
  const bool to_ring = f >= p.S;  // sink frames are not in the ring
  const int64_t slot = to_ring ? p.S + (f - p.S) % p.R : 0;
  const int64_t HD = p.H * p.D;
  const int64_t src = (b * p.Lq + row) * HD;
  const int64_t dst = (b * p.cache_rows + slot * p.T + row % p.T) * HD;
  for (int64_t e = threadIdx.x * V; e < HD; e += blockDim.x * V) {
    T q[V], k[V], v[V];
    load_n<T, V, kVec>(static_cast<const T*>(p.q) + src + e, q);
    load_n<T, V, kVec>(static_cast<const T*>(p.k) + src + e, k);
    if constexpr (V % 2 == 0) {  // V even and D % V == 0: pairs never straddle a head
      if (p.freqs != nullptr) {
        const A* c = cs + (e % p.D);
#pragma unroll
        for (int j = 0; j < V; j += 2) {
          const A cj = c[j], sj = c[j + 1];
          const A q0 = static_cast<A>(q[j]), q1 = static_cast<A>(q[j + 1]);
          const A k0 = static_cast<A>(k[j]), k1 = static_cast<A>(k[j + 1]);
          q[j] = cast_to<T>(q0 * cj - q1 * sj);
          q[j + 1] = cast_to<T>(q0 * sj + q1 * cj);
          k[j] = cast_to<T>(k0 * cj - k1 * sj);
          k[j + 1] = cast_to<T>(k0 * sj + k1 * cj);
        }
      }
    }
    store_n<T, V, kVec>(static_cast<T*>(p.q_out) + src + e, q);
    if (to_ring) {
      load_n<T, V, kVec>(static_cast<const T*>(p.v) + src + e, v);
      store_n<T, V, kVec>(static_cast<T*>(p.k_cache) + dst + e, k);
      store_n<T, V, kVec>(static_cast<T*>(p.v_cache) + dst + e, v);
    }
  }
}

template <typename T, int V, bool kVec>
void launch(const StageParams& p, int64_t B, cudaStream_t stream) {
  const size_t smem = p.freqs != nullptr ? p.D * sizeof(acc_t<T>) : 0;
  stage_chunk_kernel<T, V, kVec><<<dim3(p.Lq, B), 128, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace cuda

at::Tensor stage_chunk_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& state,
                            int64_t frame_tokens, int64_t sink_frames, int64_t window_frames,
                            const std::optional<at::Tensor>& rope_freqs,
                            const std::optional<at::Tensor>& rope_spatial) {
  cuda::raise_if_bad_counter();
  const auto g = check_chunk(q, k, v, k_cache, v_cache, state, frame_tokens, sink_frames,
                             window_frames, rope_freqs, rope_spatial);
  TORCH_CHECK_VALUE(q.size(1) <= INT32_MAX && g.batch <= 65535, "chunk too large for the launch grid");
  const c10::cuda::CUDAGuard guard(q.device());
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  std::optional<at::Tensor> freqs, spatial;
  if (rope_freqs) {
    freqs = rope_freqs->to(q.device()).contiguous();
    spatial = rope_spatial->to(q.device()).contiguous();
  }
  auto q_out = at::empty_like(qc);
  cuda::StageParams p{state.data_ptr<int64_t>(), cuda::bad_counter_flag(),
                      freqs ? freqs->data_ptr<double>() : nullptr,
                      spatial ? spatial->data_ptr<double>() : nullptr,
                      qc.data_ptr(), kc.data_ptr(), vc.data_ptr(),
                      q_out.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                      g.heads, g.head_dim, frame_tokens, q.size(1), sink_frames, g.ring_frames,
                      k_cache.size(1)};
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  cuda::dispatch_float(q.scalar_type(), "stage_chunk", [&](auto tag) {
    using T = decltype(tag);
    const bool aligned = cuda::aligned_to(p.q, 16) && cuda::aligned_to(p.k, 16) &&
                         cuda::aligned_to(p.v, 16) && cuda::aligned_to(p.q_out, 16) &&
                         cuda::aligned_to(p.k_cache, 16) && cuda::aligned_to(p.v_cache, 16);
    if (g.head_dim % 8 == 0 && aligned) {
      cuda::launch<T, 8, true>(p, g.batch, stream);
    } else if (g.head_dim % 2 == 0) {
      cuda::launch<T, 2, false>(p, g.batch, stream);
    } else {
      cuda::launch<T, 1, false>(p, g.batch, stream);  // odd D: no RoPE (check_rope)
    }
  });
  return q_out;
}

}  // namespace reward_forcing
