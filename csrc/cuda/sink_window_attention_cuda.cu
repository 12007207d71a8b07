// CUDA sink_window_attention: a chunk's queries over the filled sink slots, the window (read in
// place from its ring slots) and the chunk itself, with the chunk's RoPE applied in the kernels.
//
//   1. rope prologue (only with RoPE tables): per chunk token, cos/sin of pos * freqs + spatial
//      (float64 math, n read on the device) into a [c*T, D/2] table in the accumulation type, and
//      the chunk's keys rotated once into a [B, c*T, H, D] scratch (every query tile reads them;
//      rotating them inside each of the ~37 query tiles per head would re-read the table 37 times);
//   2. attention: bf16/fp16 with head dim 64/128 on the tensor-core kernel (swa_mma.cuh: q rotated
//      in registers, keys gathered tile by tile from the buffer, online softmax, fp32 accumulate);
//      every other case (fp32, fp64, other head dims, unaligned pointers) on a simple warp-per-query
//      kernel that accumulates in float32 (float64 for float64).
// n is read from `state` on the device in both kernels: no host synchronisation, so the op can be
// captured in a CUDA graph. Semantics: the CPU twin csrc/cpu/sink_window_attention_cpu.cpp.
//
// Environment knobs (benchmarking, read per call): RF_SWA_KERNEL=generic forces the simple kernel;
// RF_SWA_TILE=8x16 (8 warps x 16 query rows, Q in registers) or 4x16 (64-query tiles) replaces the
// default 4x32 (4 warps x 32 rows, FlashAttention-2's layout) for head dim 128.
#include <cstdlib>
#include <cstring>

#include "cuda/common.cuh"
#include "cuda/ops_cuda.h"
#include "cuda/sink_window_attention.cuh"

namespace reward_forcing {
namespace cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(128)
    swa_rope_prologue_kernel(const int64_t* __restrict__ state, const double* __restrict__ freqs,
                             const double* __restrict__ spatial, const T* __restrict__ k,
                             T* __restrict__ k_rot, acc_t<T>* __restrict__ cs, int64_t B,
                             int64_t H, int64_t D, int64_t T_tok, int64_t Lq) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* scs = reinterpret_cast<A*>(smem_raw);  // [D/2, 2]
  const int64_t row = blockIdx.x;           // chunk token: frame row / T, token row % T
  const int64_t half = D / 2;
  // any n gives in-bounds scratch writes here; the attention kernels check it (counter_ok)
  const double pos = static_cast<double>(*state + row / T_tok);
  const double* sp = spatial + (row % T_tok) * half;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    double s, c;
    sincos(__dadd_rn(__dmul_rn(pos, freqs[i]), sp[i]), &s, &c);
    const A ca = static_cast<A>(c), sa = static_cast<A>(s);
    scs[2 * i] = ca;
    scs[2 * i + 1] = sa;
    cs[row * D + 2 * i] = ca;
    cs[row * D + 2 * i + 1] = sa;
  }
  __syncthreads();
  const int64_t per_row = B * H * half;
  for (int64_t idx = threadIdx.x; idx < per_row; idx += blockDim.x) {
    const int64_t i = idx % half, bh = idx / half;
    const int64_t h = bh % H, b = bh / H;
    const int64_t off = ((b * Lq + row) * H + h) * D + 2 * i;
    const A x0 = static_cast<A>(k[off]), x1 = static_cast<A>(k[off + 1]);
    const A c = scs[2 * i], s = scs[2 * i + 1];
    k_rot[off] = cast_to<T>(x0 * c - x1 * s);
    k_rot[off + 1] = cast_to<T>(x0 * s + x1 * c);
  }
}

__device__ __forceinline__ float exp_acc(float x) { return __expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }

// One warp per query row; 4 rows per block. q (rotated) and the output accumulator live in
// shared memory, lane-strided over the head dim.
template <typename T>
__global__ void __launch_bounds__(128) swa_fwd_generic_kernel(const SwaParams p) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 4 + warp;
  if (row >= p.Lq) return;
  const int64_t h = blockIdx.y, b = blockIdx.z, D = p.D, HD = p.H * p.D;
  A* sq = reinterpret_cast<A*>(smem_raw) + warp * 2 * D;
  A* so = sq + D;
  const int64_t n = *p.state;
  if (!counter_ok(n, p.Lq / p.T, p.bad_counter)) return;  // read and write nothing
  const KeyMap km = make_key_map(n, p.S, p.W, p.R, p.T, p.Lq);
  const T* qrow = static_cast<const T*>(p.q) + (b * p.Lq + row) * HD + h * D;
  if (p.rope_cs != nullptr) {
    const A* cs = static_cast<const A*>(p.rope_cs) + row * D;
    for (int64_t i = lane; i < D / 2; i += 32) {
      const A c = cs[2 * i], s = cs[2 * i + 1];
      const A x0 = static_cast<A>(qrow[2 * i]), x1 = static_cast<A>(qrow[2 * i + 1]);
      sq[2 * i] = x0 * c - x1 * s;
      sq[2 * i + 1] = x0 * s + x1 * c;
    }
  } else {
    for (int64_t d = lane; d < D; d += 32) sq[d] = static_cast<A>(qrow[d]);
  }
  for (int64_t d = lane; d < D; d += 32) so[d] = A(0);
  __syncwarp();

  const T* kc = static_cast<const T*>(p.k_cache) + b * p.cache_rows * HD + h * D;
  const T* vc = static_cast<const T*>(p.v_cache) + b * p.cache_rows * HD + h * D;
  const T* kx = static_cast<const T*>(p.k_chunk) + b * p.Lq * HD + h * D;
  const T* vx = static_cast<const T*>(p.v_chunk) + b * p.Lq * HD + h * D;
  const A scale = static_cast<A>(p.scale);
  A m = -INFINITY, l = A(0);
  for (int64_t j = 0; j < km.Lk; ++j) {
    const T* kr;
    const T* vr;
    if (j < km.e2) {
      const int64_t r = j < km.e0 ? j : (j < km.e1 ? j + km.d1 : j + km.d2);
      kr = kc + r * HD;
      vr = vc + r * HD;
    } else {
      kr = kx + (j - km.e2) * HD;
      vr = vx + (j - km.e2) * HD;
    }
    A part = A(0);
    for (int64_t d = lane; d < D; d += 32) part += sq[d] * static_cast<A>(kr[d]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
    const A s = part * scale;
    const A m_new = s > m ? s : m;
    const A corr = exp_acc(m - m_new), e = exp_acc(s - m_new);
    l = l * corr + e;
    for (int64_t d = lane; d < D; d += 32) so[d] = so[d] * corr + e * static_cast<A>(vr[d]);
    m = m_new;
  }
  T* orow = static_cast<T*>(p.out) + (b * p.Lq + row) * HD + h * D;
  for (int64_t d = lane; d < D; d += 32) orow[d] = cast_to<T>(so[d] / l);
}

bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

}  // namespace
}  // namespace cuda

at::Tensor sink_window_attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& k_cache,
                                      const at::Tensor& v_cache, const at::Tensor& state,
                                      int64_t frame_tokens, int64_t sink_frames,
                                      int64_t window_frames, double scale,
                                      const std::optional<at::Tensor>& rope_freqs,
                                      const std::optional<at::Tensor>& rope_spatial) {
  using namespace cuda;
  raise_if_bad_counter();
  const auto g = check_chunk(q, k, v, k_cache, v_cache, state, frame_tokens, sink_frames,
                             window_frames, rope_freqs, rope_spatial);
  TORCH_CHECK_VALUE(q.is_cuda() && k.device() == q.device() && v.device() == q.device(),
                    "sink_window_attention (CUDA): q, k, v and the cache must be on one CUDA device");
  TORCH_CHECK_VALUE(g.heads <= 65535 && g.batch <= 65535,
                    "sink_window_attention (CUDA): at most 65535 heads and batch entries");
  TORCH_CHECK_VALUE(q.size(1) < INT32_MAX, "sink_window_attention (CUDA): chunk too large");
  const c10::cuda::CUDAGuard guard(q.device());
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  auto out = at::empty(qc.sizes(), qc.options());
  if (out.numel() == 0) return out;

  const auto dtype = q.scalar_type();
  const int64_t T = g.frame_tokens, D = g.head_dim, Lq = g.chunk_frames * T;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SwaParams p;
  p.q = qc.data_ptr();
  p.k_chunk = kc.data_ptr();
  p.v_chunk = vc.data_ptr();
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.out = out.data_ptr();
  p.state = state.data_ptr<int64_t>();
  p.bad_counter = bad_counter_flag();
  p.rope_cs = nullptr;
  p.B = g.batch;
  p.H = g.heads;
  p.D = D;
  p.T = T;
  p.S = g.sink_frames;
  p.W = g.window_frames;
  p.R = g.ring_frames;
  p.cache_rows = k_cache.size(1);
  p.Lq = Lq;
  p.scale = scale;
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);

  at::Tensor cs, k_rot;
  if (rope_freqs) {
    const auto freqs = rope_freqs->to(q.device()).contiguous();
    const auto spatial = rope_spatial->to(q.device()).contiguous();
    cs = at::empty({Lq, D / 2, 2}, qc.options().dtype(accum_type(dtype)));
    k_rot = at::empty_like(kc);
    dispatch_float(dtype, "sink_window_attention", [&](auto tag) {
      using T_ = decltype(tag);
      const size_t smem = static_cast<size_t>(D) * sizeof(acc_t<T_>);
      TORCH_CHECK_VALUE(smem <= 48 * 1024, "head dim ", D, " too large");
      swa_rope_prologue_kernel<T_><<<static_cast<unsigned>(Lq), 128, smem, stream>>>(
          state.data_ptr<int64_t>(), freqs.data_ptr<double>(), spatial.data_ptr<double>(),
          static_cast<const T_*>(kc.data_ptr()), static_cast<T_*>(k_rot.data_ptr()),
          static_cast<acc_t<T_>*>(cs.data_ptr()), g.batch, g.heads, D, T, Lq);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    p.k_chunk = k_rot.data_ptr();
    p.rope_cs = cs.data_ptr();
  }

  const bool half_type = dtype == at::kBFloat16 || dtype == at::kHalf;
  const bool aligned = aligned_to(p.q, 16) && aligned_to(p.k_chunk, 16) &&
                       aligned_to(p.v_chunk, 16) && aligned_to(p.k_cache, 16) &&
                       aligned_to(p.v_cache, 16) && aligned_to(p.out, 16);
  const int64_t limit = int64_t{1} << 30;  // the tensor-core kernel's 32-bit offsets
  const bool fits32 = (p.cache_rows + Lq) * g.heads * D < limit;
  if (half_type && (D == 64 || D == 128) && aligned && fits32 &&
      !env_is("RF_SWA_KERNEL", "generic")) {
    const int config = env_is("RF_SWA_TILE", "8x16") ? 1 : (env_is("RF_SWA_TILE", "4x16") ? 2 : 0);
    if (dtype == at::kBFloat16) {
      launch_swa_mma_bf16(p, config, stream);
    } else {
      launch_swa_mma_fp16(p, config, stream);
    }
    return out;
  }
  dispatch_float(dtype, "sink_window_attention", [&](auto tag) {
    using T_ = decltype(tag);
    const size_t smem = 4 * 2 * static_cast<size_t>(D) * sizeof(acc_t<T_>);
    auto kernel = swa_fwd_generic_kernel<T_>;
    if (smem > 48 * 1024) {
      TORCH_CHECK_VALUE(smem <= 200 * 1024, "head dim ", D, " too large for the generic kernel");
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    }
    const dim3 grid(static_cast<unsigned>(ceil_div(Lq, 4)), static_cast<unsigned>(g.heads),
                    static_cast<unsigned>(g.batch));
    kernel<<<grid, 128, smem, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace reward_forcing
