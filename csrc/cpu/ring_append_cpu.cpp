// CPU twin of ring_append: append a chunk's frames to the streaming cache with the rules of
// docs/design.md §2 on the storage of §3 (see streaming_cache.h). Same structure as the CUDA kernel:
// one pass in which each (batch, token-in-frame, head) row walks the chunk's frames in order —
// write the rotated key to its ring slot, evict the frame that leaves the window (un-rotate, EMA
// into its sink slot) — then refreshes its rows of the sink's rotated copy. A row only touches its
// own (b, t, h) positions, so rows run in parallel with no hazards.
#include "streaming_cache.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

namespace reward_forcing {

namespace {

struct RingAppendParams {
  int64_t B, T, H, D, S, W, R, c, n;
  double alpha;
  bool rope;
};

// cos/sin [frames, T, D/2] for frames at positions pos0, pos0+1, ... (identity without RoPE).
template <typename acc_t>
at::Tensor rope_table(const std::optional<at::Tensor>& freqs, const std::optional<at::Tensor>& spatial,
                      int64_t pos0, int64_t frames, int64_t T, int64_t half) {
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  if (!freqs || frames <= 0) return at::empty({2, std::max<int64_t>(frames, 0) * T * half}, at::dtype(acc));
  auto [c, s] = rope_cos_sin(*freqs, *spatial, pos0, frames, acc);
  return at::stack({c.reshape(-1), s.reshape(-1)}).contiguous();
}

template <typename acc_t>
inline void rotate_row(const acc_t* x, acc_t* out, const acc_t* cs, int64_t table_size,
                       int64_t half, bool inverse) {
  const acc_t* cos = cs;
  const acc_t* sin = cs + table_size;
  for (int64_t i = 0; i < half; ++i) {
    const acc_t s = inverse ? -sin[i] : sin[i];
    const acc_t x0 = x[2 * i], x1 = x[2 * i + 1];
    out[2 * i] = x0 * cos[i] - x1 * s;
    out[2 * i + 1] = x0 * s + x1 * cos[i];
  }
}

template <typename scalar_t, typename sink_t>
void ring_append_rows(const RingAppendParams& p, scalar_t* kc, scalar_t* vc, sink_t* sk, sink_t* sv,
                      const scalar_t* k, const scalar_t* v, const at::Tensor& cs_new,
                      const at::Tensor& cs_evict, const at::Tensor& cs_sink) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = p.T, H = p.H, D = p.D, S = p.S, W = p.W, R = p.R, half = D / 2;
  const int64_t cache_tokens = (S + R) * T;
  const acc_t alpha = static_cast<acc_t>(p.alpha), beta = static_cast<acc_t>(1.0 - p.alpha);
  const int64_t n1 = p.n + p.c, filled = std::min(n1, S);
  const acc_t* new_tab = cs_new.data_ptr<acc_t>();
  const acc_t* evict_tab = cs_evict.data_ptr<acc_t>();
  const acc_t* sink_tab = cs_sink.data_ptr<acc_t>();
  const int64_t new_size = cs_new.size(1), evict_size = cs_evict.size(1), sink_size = cs_sink.size(1);

  at::parallel_for(0, p.B * T * H, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> a(D), r(D);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / (T * H), t = (row / H) % T, h = row % H;
      auto at_cache = [&](int64_t slot) { return ((b * cache_tokens + slot * T + t) * H + h) * D; };
      auto at_sink = [&](int64_t slot) { return ((b * S * T + slot * T + t) * H + h) * D; };
      for (int64_t i = 0; i < p.c; ++i) {
        const int64_t f = p.n + i;
        const int64_t src = ((b * p.c * T + i * T + t) * H + h) * D;
        if (f < S) {  // the first S frames of the stream become the sink, in order
          for (int64_t d = 0; d < D; ++d) {
            sk[at_sink(f) + d] = static_cast<sink_t>(k[src + d]);
            sv[at_sink(f) + d] = static_cast<sink_t>(v[src + d]);
          }
          continue;
        }
        const int64_t dst = at_cache(S + (f - S) % R);
        for (int64_t d = 0; d < D; ++d) a[d] = static_cast<acc_t>(k[src + d]);
        if (p.rope) rotate_row(a.data(), r.data(), new_tab + (i * T + t) * half, new_size, half, false);
        const acc_t* rotated = p.rope ? r.data() : a.data();
        for (int64_t d = 0; d < D; ++d) {
          kc[dst + d] = static_cast<scalar_t>(rotated[d]);
          vc[dst + d] = v[src + d];
        }
        const int64_t e = f - W;  // the window now holds W + 1 frames: the oldest one leaves
        if (e < S || S == 0) continue;
        const int64_t from = at_cache(S + (e - S) % R), to = at_sink((e - S) % S);
        for (int64_t d = 0; d < D; ++d) a[d] = static_cast<acc_t>(kc[from + d]);
        if (p.rope) rotate_row(a.data(), r.data(), evict_tab + (i * T + t) * half, evict_size, half, true);
        const acc_t* plain = p.rope ? r.data() : a.data();
        for (int64_t d = 0; d < D; ++d) {
          sk[to + d] = static_cast<sink_t>(alpha * static_cast<acc_t>(sk[to + d]) + beta * plain[d]);
          sv[to + d] = static_cast<sink_t>(alpha * static_cast<acc_t>(sv[to + d]) +
                                           beta * static_cast<acc_t>(vc[from + d]));
        }
      }
      for (int64_t j = 0; j < filled; ++j) {  // the sink's rotated compute-dtype copy
        const int64_t from = at_sink(j), dst = at_cache(j);
        for (int64_t d = 0; d < D; ++d) a[d] = static_cast<acc_t>(sk[from + d]);
        if (p.rope) rotate_row(a.data(), r.data(), sink_tab + (j * T + t) * half, sink_size, half, false);
        const acc_t* rotated = p.rope ? r.data() : a.data();
        for (int64_t d = 0; d < D; ++d) {
          kc[dst + d] = static_cast<scalar_t>(rotated[d]);
          vc[dst + d] = static_cast<scalar_t>(sv[from + d]);
        }
      }
    }
  });
}

}  // namespace

void ring_append_cpu(at::Tensor k_cache, at::Tensor v_cache, at::Tensor sink_k, at::Tensor sink_v,
                     at::Tensor state, const at::Tensor& k, const at::Tensor& v,
                     int64_t frame_tokens, int64_t sink_frames, int64_t window_frames,
                     double alpha, const std::optional<at::Tensor>& rope_freqs,
                     const std::optional<at::Tensor>& rope_spatial) {
  const auto g = check_cache(k_cache, v_cache, state, k, frame_tokens, sink_frames, window_frames);
  check_rope(rope_freqs, rope_spatial, g);
  TORCH_CHECK_VALUE(k.sizes() == v.sizes() && v.scalar_type() == k.scalar_type(),
                    "k and v shapes or dtypes differ");
  TORCH_CHECK_VALUE(alpha >= 0.0 && alpha <= 1.0, "alpha must be in [0, 1], got ", alpha);
  TORCH_CHECK_VALUE(sink_k.dim() == 4 && sink_k.size(0) == g.batch &&
                        sink_k.size(1) == sink_frames * frame_tokens && sink_k.size(2) == g.heads &&
                        sink_k.size(3) == g.head_dim && sink_k.sizes() == sink_v.sizes(),
                    "sink_k/sink_v must be [B, S*T, H, D]");
  TORCH_CHECK_TYPE(sink_k.scalar_type() == sink_v.scalar_type() && sink_k.is_floating_point(),
                   "sink_k and sink_v must share one floating dtype");
  TORCH_CHECK_VALUE(sink_k.is_contiguous() && sink_v.is_contiguous(), "the sink must be contiguous");
  TORCH_CHECK_VALUE(sink_k.device() == k_cache.device() && sink_v.device() == k_cache.device() &&
                        v.device() == k_cache.device(),
                    "the sink and v must be on the cache's device");

  RingAppendParams p{g.batch, frame_tokens, g.heads, g.head_dim, sink_frames, window_frames,
                     g.ring_frames, g.chunk_frames, read_counter(state, g), alpha,
                     rope_freqs.has_value()};
  const auto kin = k.contiguous(), vin = v.contiguous();
  const int64_t n1 = p.n + p.c, filled = std::min(n1, p.S);
  const int64_t p0 = n1 - std::clamp<int64_t>(n1 - p.S, 0, p.W);
  const int64_t half = p.D / 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k_cache.scalar_type(), "ring_append_cpu", [&] {
    using cache_t = scalar_t;
    using acc_t = at::opmath_type<cache_t>;
    const auto cs_new = rope_table<acc_t>(rope_freqs, rope_spatial, p.n, p.c, p.T, half);
    const auto cs_evict = rope_table<acc_t>(rope_freqs, rope_spatial, p.n - p.W, p.c, p.T, half);
    const auto cs_sink = rope_table<acc_t>(rope_freqs, rope_spatial, p0 - filled, filled, p.T, half);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, sink_k.scalar_type(), "ring_append_cpu_sink", [&] {
      ring_append_rows<cache_t, scalar_t>(
          p, k_cache.data_ptr<cache_t>(), v_cache.data_ptr<cache_t>(), sink_k.data_ptr<scalar_t>(),
          sink_v.data_ptr<scalar_t>(), kin.data_ptr<cache_t>(), vin.data_ptr<cache_t>(), cs_new,
          cs_evict, cs_sink);
    });
  });
  state.add_(p.c);
}

}  // namespace reward_forcing
