// CUDA ring_append: appends a chunk's frames to the streaming cache (docs/design.md §2-§3), one pass.
//
// Same semantics as the CPU twin (csrc/cpu/ring_append_cpu.cpp), frame by frame: frame f = n + i
// with f < S is copied into sink slot f; otherwise its key is rotated at f and written with its
// value to ring slot S + (f - S) mod R, and the frame e = f - W that leaves the window (e >= S,
// S > 0) is read back from its slot, its key un-rotated, and EMA'd into sink slot (e - S) mod S in
// the accumulation type (float32; float64 for a float64 cache), stored in the sink dtype. Then the
// sink's rotated copy in slots [0, s_f) is refreshed. Finally state += c (a stream-ordered device op).
//
// One thread owns a vector of VEC channels of one (batch, token-in-frame, head) and walks the
// chunk's frames in order exactly like the CPU loop. Every tensor position a thread touches has
// its own (b, t, h, channels), so the threads never share an address and the frame order inside
// a thread (e.g. W < c, where a frame written by this chunk is evicted by it) is program order.
// n is read from `state` on the device: no host synchronisation, CUDA-graph capturable.
#include "cuda/common.cuh"
#include "cuda/ops_cuda.h"

namespace reward_forcing {
namespace cuda {
namespace {

struct RingAppendParams {
  void* __restrict__ k_cache;
  void* __restrict__ v_cache;
  void* __restrict__ sink_k;
  void* __restrict__ sink_v;
  const void* __restrict__ k;
  const void* __restrict__ v;
  const int64_t* __restrict__ state;
  int* bad_counter;                    // bad_counter_flag()
  const double* __restrict__ freqs;    // [D/2] or nullptr (no RoPE)
  const double* __restrict__ spatial;  // [T, D/2]
  int64_t B, T, H, D, S, W, R, C;
  int64_t cache_rows;  // (S + R) * T
  double alpha;
};

template <typename CT, typename ST, int VEC, bool kVec>
__global__ void __launch_bounds__(256) ring_append_kernel(const RingAppendParams p) {
  using A = acc_t<CT>;
  constexpr int NP = VEC >= 2 ? VEC / 2 : 1;  // channel pairs per thread (RoPE needs VEC even)
  const int64_t nvec = p.D / VEC;
  const int64_t total = p.B * p.T * p.H * nvec;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t n = *p.state;
  if (!counter_ok(n, p.C, p.bad_counter)) return;  // write nothing; the next launch raises
  int64_t r = idx;
  const int64_t dv = r % nvec;
  r /= nvec;
  const int64_t h = r % p.H;
  r /= p.H;
  const int64_t t = r % p.T;
  const int64_t b = r / p.T;
  const int64_t d0 = dv * VEC;
  const int64_t HD = p.H * p.D;
  const int64_t inner = h * p.D + d0;

  CT* __restrict__ kc = static_cast<CT*>(p.k_cache);
  CT* __restrict__ vc = static_cast<CT*>(p.v_cache);
  ST* __restrict__ sk = static_cast<ST*>(p.sink_k);
  ST* __restrict__ sv = static_cast<ST*>(p.sink_v);
  const CT* __restrict__ kin = static_cast<const CT*>(p.k);
  const CT* __restrict__ vin = static_cast<const CT*>(p.v);
  auto cache_off = [&](int64_t slot) { return (b * p.cache_rows + slot * p.T + t) * HD + inner; };
  auto sink_off = [&](int64_t slot) { return (b * p.S * p.T + slot * p.T + t) * HD + inner; };
  auto in_off = [&](int64_t i) { return (b * p.C * p.T + i * p.T + t) * HD + inner; };

  const bool rope = p.freqs != nullptr;
  double fr[NP], sp[NP];
  if constexpr (VEC >= 2) {
    if (rope) {
#pragma unroll
      for (int k = 0; k < NP; ++k) {
        fr[k] = p.freqs[d0 / 2 + k];
        sp[k] = p.spatial[t * (p.D / 2) + d0 / 2 + k];
      }
    }
  }
  // Rotates x (accumulation type) in place by the angles of time index pos (inverse: minus them).
  auto rotate = [&](A (&x)[VEC], int64_t pos, bool inverse) {
    if constexpr (VEC >= 2) {
      if (!rope) return;
#pragma unroll
      for (int k = 0; k < NP; ++k) {
        A c, s;
        rope_sincos<A>(static_cast<double>(pos) * fr[k] + sp[k], c, s);
        if (inverse) s = -s;
        const A x0 = x[2 * k], x1 = x[2 * k + 1];
        x[2 * k] = x0 * c - x1 * s;
        x[2 * k + 1] = x0 * s + x1 * c;
      }
    }
  };

  const A a_old = static_cast<A>(p.alpha), a_new = static_cast<A>(1.0 - p.alpha);
  for (int64_t i = 0; i < p.C; ++i) {
    const int64_t f = n + i;
    CT kx[VEC], vx[VEC];
    load_n<CT, VEC, kVec>(kin + in_off(i), kx);
    load_n<CT, VEC, kVec>(vin + in_off(i), vx);
    if (f < p.S) {  // the first S frames of the stream become the sink, in order
      ST ks[VEC], vs[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        ks[e] = cast_to<ST>(kx[e]);
        vs[e] = cast_to<ST>(vx[e]);
      }
      store_n<ST, VEC, kVec>(sk + sink_off(f), ks);
      store_n<ST, VEC, kVec>(sv + sink_off(f), vs);
      continue;
    }
    const int64_t slot = p.S + (f - p.S) % p.R;
    {
      A x[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) x[e] = static_cast<A>(kx[e]);
      rotate(x, f, false);
#pragma unroll
      for (int e = 0; e < VEC; ++e) kx[e] = cast_to<CT>(x[e]);
    }
    store_n<CT, VEC, kVec>(kc + cache_off(slot), kx);
    store_n<CT, VEC, kVec>(vc + cache_off(slot), vx);
    const int64_t e = f - p.W;  // the window now holds W + 1 frames: the oldest one leaves
    if (e < p.S || p.S == 0) continue;
    const int64_t eslot = p.S + (e - p.S) % p.R, j = (e - p.S) % p.S;
    CT ke[VEC], ve[VEC];
    load_n<CT, VEC, kVec>(kc + cache_off(eslot), ke);
    load_n<CT, VEC, kVec>(vc + cache_off(eslot), ve);
    ST ks[VEC], vs[VEC];
    load_n<ST, VEC, kVec>(sk + sink_off(j), ks);
    load_n<ST, VEC, kVec>(sv + sink_off(j), vs);
    A x[VEC];
#pragma unroll
    for (int q = 0; q < VEC; ++q) x[q] = static_cast<A>(ke[q]);
    rotate(x, e, true);
#pragma unroll
    for (int q = 0; q < VEC; ++q) {
      ks[q] = cast_to<ST>(static_cast<A>(ks[q]) * a_old + x[q] * a_new);
      vs[q] = cast_to<ST>(static_cast<A>(vs[q]) * a_old + static_cast<A>(ve[q]) * a_new);
    }
    store_n<ST, VEC, kVec>(sk + sink_off(j), ks);
    store_n<ST, VEC, kVec>(sv + sink_off(j), vs);
  }

  // Refresh the sink's rotated compute-dtype copy at positions p0 - s_f + j.
  const int64_t n1 = n + p.C;
  const int64_t filled = n1 < p.S ? n1 : p.S;
  int64_t n_window = n1 - p.S;
  n_window = n_window < 0 ? 0 : (n_window > p.W ? p.W : n_window);
  const int64_t p0 = n1 - n_window;
  for (int64_t j = 0; j < filled; ++j) {
    ST ks[VEC], vs[VEC];
    load_n<ST, VEC, kVec>(sk + sink_off(j), ks);
    load_n<ST, VEC, kVec>(sv + sink_off(j), vs);
    A x[VEC];
    CT ko[VEC], vo[VEC];
#pragma unroll
    for (int q = 0; q < VEC; ++q) x[q] = static_cast<A>(ks[q]);
    rotate(x, p0 - filled + j, false);
#pragma unroll
    for (int q = 0; q < VEC; ++q) {
      ko[q] = cast_to<CT>(x[q]);
      vo[q] = cast_to<CT>(static_cast<A>(vs[q]));
    }
    store_n<CT, VEC, kVec>(kc + cache_off(j), ko);
    store_n<CT, VEC, kVec>(vc + cache_off(j), vo);
  }
}

template <typename CT, typename ST, int VEC, bool kVec>
void launch(const RingAppendParams& p, cudaStream_t stream) {
  const int64_t total = p.B * p.T * p.H * (p.D / VEC);
  constexpr int kThreads = 256;
  const int64_t blocks = ceil_div(total, kThreads);
  TORCH_CHECK(blocks < (int64_t{1} << 31), "ring_append: problem too large for one launch");
  ring_append_kernel<CT, ST, VEC, kVec><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace cuda

void ring_append_cuda(at::Tensor k_cache, at::Tensor v_cache, at::Tensor sink_k, at::Tensor sink_v,
                      at::Tensor state, const at::Tensor& k, const at::Tensor& v,
                      int64_t frame_tokens, int64_t sink_frames, int64_t window_frames,
                      double alpha, const std::optional<at::Tensor>& rope_freqs,
                      const std::optional<at::Tensor>& rope_spatial) {
  using namespace cuda;
  raise_if_bad_counter();
  const auto g = check_cache(k_cache, v_cache, state, k, frame_tokens, sink_frames, window_frames);
  check_rope(rope_freqs, rope_spatial, g);
  TORCH_CHECK_VALUE(k.sizes() == v.sizes(), "k and v shapes differ");
  TORCH_CHECK_TYPE(v.scalar_type() == k.scalar_type(), "k and v dtypes differ");
  TORCH_CHECK_VALUE(alpha >= 0.0 && alpha <= 1.0, "alpha must be in [0, 1], got ", alpha);
  TORCH_CHECK_VALUE(sink_k.dim() == 4 && sink_k.size(0) == g.batch &&
                        sink_k.size(1) == sink_frames * frame_tokens &&
                        sink_k.size(2) == g.heads && sink_k.size(3) == g.head_dim &&
                        sink_k.sizes() == sink_v.sizes(),
                    "sink_k/sink_v must be [B, S*T, H, D] = [", g.batch, ", ",
                    sink_frames * frame_tokens, ", ", g.heads, ", ", g.head_dim, "], got ",
                    sink_k.sizes(), " and ", sink_v.sizes());
  TORCH_CHECK_TYPE(sink_k.scalar_type() == sink_v.scalar_type() &&
                       at::isFloatingType(sink_k.scalar_type()),
                   "sink_k and sink_v must have one floating dtype");
  TORCH_CHECK_VALUE(k_cache.is_cuda() && sink_k.device() == k_cache.device() &&
                        sink_v.device() == k_cache.device() && v.device() == k_cache.device(),
                    "ring_append (CUDA): all tensors must be on the cache's CUDA device");
  TORCH_CHECK_VALUE(sink_k.is_contiguous() && sink_v.is_contiguous(),
                    "ring_append (CUDA): sink_k and sink_v must be contiguous");
  const c10::cuda::CUDAGuard guard(k_cache.device());

  const auto kc = k.contiguous(), vc = v.contiguous();
  at::Tensor freqs, spatial;
  if (rope_freqs) {
    freqs = rope_freqs->to(k_cache.device()).contiguous();
    spatial = rope_spatial->to(k_cache.device()).contiguous();
  }
  RingAppendParams p;
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.sink_k = sink_k.data_ptr();
  p.sink_v = sink_v.data_ptr();
  p.k = kc.data_ptr();
  p.v = vc.data_ptr();
  p.state = state.data_ptr<int64_t>();
  p.bad_counter = bad_counter_flag();
  p.freqs = rope_freqs ? freqs.data_ptr<double>() : nullptr;
  p.spatial = rope_freqs ? spatial.data_ptr<double>() : nullptr;
  p.B = g.batch;
  p.T = g.frame_tokens;
  p.H = g.heads;
  p.D = g.head_dim;
  p.S = g.sink_frames;
  p.W = g.window_frames;
  p.R = g.ring_frames;
  p.C = g.chunk_frames;
  p.cache_rows = k_cache.size(1);
  p.alpha = alpha;

  if (p.B * p.T * p.H * p.D > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    dispatch_float(k_cache.scalar_type(), "ring_append cache", [&](auto ct) {
      using CT = decltype(ct);
      dispatch_float(sink_k.scalar_type(), "ring_append sink", [&](auto st) {
        using ST = decltype(st);
        constexpr int kVecC = 16 / sizeof(CT);  // 16-byte accesses to the cache and the chunk
        const bool vec_ok = p.D % kVecC == 0 &&
                            aligned_to(p.k_cache, 16) && aligned_to(p.v_cache, 16) &&
                            aligned_to(p.k, 16) && aligned_to(p.v, 16) &&
                            aligned_to(p.sink_k, std::min<size_t>(16, kVecC * sizeof(ST))) &&
                            aligned_to(p.sink_v, std::min<size_t>(16, kVecC * sizeof(ST)));
        if (vec_ok) {
          launch<CT, ST, kVecC, true>(p, stream);
        } else if (p.D % 2 == 0) {
          launch<CT, ST, 2, false>(p, stream);
        } else {  // odd head dim: no RoPE possible (check_rope)
          launch<CT, ST, 1, false>(p, stream);
        }
      });
    });
  }
  state.add_(g.chunk_frames);
}

}  // namespace reward_forcing
