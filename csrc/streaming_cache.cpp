#include "streaming_cache.h"

namespace reward_forcing {

CacheGeometry check_cache(const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& state, const at::Tensor& x, int64_t frame_tokens,
                          int64_t sink_frames, int64_t window_frames) {
  TORCH_CHECK_VALUE(frame_tokens > 0, "frame_tokens must be positive, got ", frame_tokens);
  TORCH_CHECK_VALUE(sink_frames >= 0, "sink_frames must be >= 0, got ", sink_frames);
  TORCH_CHECK_VALUE(window_frames >= 0, "window_frames must be >= 0, got ", window_frames);
  TORCH_CHECK_VALUE(k_cache.dim() == 4 && x.dim() == 4,
                    "k_cache and the chunk must be 4-D [B, tokens, H, D]");
  TORCH_CHECK_VALUE(k_cache.sizes() == v_cache.sizes(), "k_cache and v_cache shapes differ: ",
                    k_cache.sizes(), " vs ", v_cache.sizes());
  TORCH_CHECK_TYPE(k_cache.scalar_type() == v_cache.scalar_type() &&
                       x.scalar_type() == k_cache.scalar_type(),
                   "cache and chunk dtypes differ");
  TORCH_CHECK_VALUE(k_cache.is_contiguous() && v_cache.is_contiguous(),
                    "k_cache and v_cache must be contiguous");
  TORCH_CHECK_VALUE(k_cache.size(1) % frame_tokens == 0 && x.size(1) % frame_tokens == 0,
                    "token counts must be multiples of frame_tokens=", frame_tokens);
  TORCH_CHECK_TYPE(state.scalar_type() == at::kLong && state.numel() == 1,
                   "state must be an int64 tensor with one element");
  TORCH_CHECK_VALUE(state.device() == k_cache.device() && x.device() == k_cache.device(),
                    "cache, state and chunk must be on one device");
  const int64_t cache_frames = k_cache.size(1) / frame_tokens;
  TORCH_CHECK_VALUE(sink_frames <= cache_frames && window_frames <= cache_frames,
                    "sink_frames (", sink_frames, ") and window_frames (", window_frames,
                    ") must fit in the cache's ", cache_frames, " frames");
  CacheGeometry g;
  g.batch = k_cache.size(0);
  g.heads = k_cache.size(2);
  g.head_dim = k_cache.size(3);
  g.frame_tokens = frame_tokens;
  g.sink_frames = sink_frames;
  g.ring_frames = cache_frames - sink_frames;
  g.window_frames = window_frames;
  g.chunk_frames = x.size(1) / frame_tokens;
  g.device = k_cache.device();
  TORCH_CHECK_VALUE(x.size(0) == g.batch && x.size(2) == g.heads && x.size(3) == g.head_dim,
                    "chunk shape ", x.sizes(), " does not match the cache ", k_cache.sizes());
  TORCH_CHECK_VALUE(g.chunk_frames >= 1, "the chunk holds no frame");
  TORCH_CHECK_VALUE(g.ring_frames - window_frames >= g.chunk_frames,
                    "the ring holds ", g.ring_frames, " frames, fewer than window_frames (",
                    window_frames, ") + chunk frames (", g.chunk_frames, ")");
  return g;
}

void check_rope(const std::optional<at::Tensor>& freqs, const std::optional<at::Tensor>& spatial,
                const CacheGeometry& g) {
  TORCH_CHECK_VALUE(freqs.has_value() == spatial.has_value(),
                    "rope_freqs and rope_spatial must be given together");
  if (!freqs) return;
  TORCH_CHECK_VALUE(g.head_dim % 2 == 0, "RoPE needs an even head dim, got ", g.head_dim);
  TORCH_CHECK_TYPE(freqs->scalar_type() == at::kDouble && spatial->scalar_type() == at::kDouble,
                   "rope tables must be float64");
  // on the cache's device or the CPU (copied over); not on the meta device: no data to read
  for (const auto* table : {&*freqs, &*spatial}) {
    TORCH_CHECK_VALUE(table->device() == g.device || table->device().is_cpu(),
                      "rope tables must be on the cache's device (", g.device, ") or the CPU, got ",
                      table->device());
  }
  TORCH_CHECK_VALUE(freqs->dim() == 1 && freqs->size(0) == g.head_dim / 2,
                    "rope_freqs must be [D/2]=[", g.head_dim / 2, "], got ", freqs->sizes());
  TORCH_CHECK_VALUE(spatial->dim() == 2 && spatial->size(0) == g.frame_tokens &&
                        spatial->size(1) == g.head_dim / 2,
                    "rope_spatial must be [T, D/2]=[", g.frame_tokens, ", ", g.head_dim / 2,
                    "], got ", spatial->sizes());
}

int64_t read_counter(const at::Tensor& state, const CacheGeometry& g) {
  const int64_t n = state.item<int64_t>();
  TORCH_CHECK_VALUE(n >= 0 && n <= kMaxFrames - g.chunk_frames,
                    "state (the cache's frame counter) must be in [0, 2^52 - ", g.chunk_frames,
                    "] for a ", g.chunk_frames, "-frame chunk, got ", n,
                    ": a corrupted or foreign cache state");
  return n;
}

CacheGeometry check_chunk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& state, int64_t frame_tokens, int64_t sink_frames,
                          int64_t window_frames, const std::optional<at::Tensor>& freqs,
                          const std::optional<at::Tensor>& spatial) {
  const auto g = check_cache(k_cache, v_cache, state, q, frame_tokens, sink_frames, window_frames);
  check_rope(freqs, spatial, g);
  TORCH_CHECK_VALUE(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
                    "q, k and v must have one shape, got ", q.sizes(), ", ", k.sizes(), ", ",
                    v.sizes());
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                   "q, k and v dtypes differ");
  TORCH_CHECK_VALUE(k.device() == q.device() && v.device() == q.device(),
                    "q, k and v must be on one device");
  return g;
}

std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& freqs, const at::Tensor& spatial,
                                               int64_t pos0, int64_t frames, at::ScalarType acc) {
  auto pos = at::arange(pos0, pos0 + frames, freqs.options());          // [F]
  auto ang = pos.view({frames, 1, 1}) * freqs.view({1, 1, -1}) + spatial.unsqueeze(0);
  ang = ang.reshape({-1, freqs.size(0)});                                // [F*T, D/2]
  return {ang.cos().to(acc), ang.sin().to(acc)};
}

at::Tensor rope_rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                       bool inverse, at::ScalarType acc) {
  auto xs = x.to(acc).reshape({x.size(0), x.size(1), x.size(2), x.size(3) / 2, 2});
  auto x0 = xs.select(-1, 0), x1 = xs.select(-1, 1);
  auto c = cos.to(x.device()).view({1, x.size(1), 1, -1});
  auto s = sin.to(x.device()).view({1, x.size(1), 1, -1});
  if (inverse) s = -s;
  return at::stack({x0 * c - x1 * s, x0 * s + x1 * c}, -1).reshape(x.sizes());
}

}  // namespace reward_forcing
