// CPU twin of ring_append: append a chunk's frames to the streaming cache, frame by frame, with
// the rules of DESIGN §2 on the storage of DESIGN §3 (see streaming_cache.h).
#include "streaming_cache.h"

namespace reward_forcing {

namespace {
at::Tensor frame(const at::Tensor& x, int64_t slot, int64_t T) { return x.narrow(1, slot * T, T); }
}  // namespace

void ring_append_cpu(at::Tensor k_cache, at::Tensor v_cache, at::Tensor sink_k, at::Tensor sink_v,
                     at::Tensor state, const at::Tensor& k, const at::Tensor& v,
                     int64_t frame_tokens, int64_t sink_frames, int64_t window_frames,
                     double alpha, const std::optional<at::Tensor>& rope_freqs,
                     const std::optional<at::Tensor>& rope_spatial) {
  const auto g = check_cache(k_cache, v_cache, state, k, frame_tokens, sink_frames, window_frames);
  check_rope(rope_freqs, rope_spatial, g);
  TORCH_CHECK_VALUE(k.sizes() == v.sizes(), "k and v shapes differ");
  TORCH_CHECK_VALUE(alpha >= 0.0 && alpha <= 1.0, "alpha must be in [0, 1], got ", alpha);
  TORCH_CHECK_VALUE(sink_k.dim() == 4 && sink_k.size(1) == sink_frames * frame_tokens &&
                        sink_k.sizes() == sink_v.sizes(),
                    "sink_k/sink_v must be [B, S*T, H, D]");
  const int64_t T = frame_tokens, S = sink_frames, W = window_frames, R = g.ring_frames;
  const auto acc = accum_type(k_cache.scalar_type());
  const bool rope = rope_freqs.has_value();
  auto rotate = [&](const at::Tensor& x, int64_t pos, bool inverse) {
    if (!rope) return x.to(acc);
    auto [c, s] = rope_cos_sin(*rope_freqs, *rope_spatial, pos, 1, acc);
    return rope_rotate(x, c, s, inverse, acc);
  };

  const int64_t n = state.item<int64_t>();
  for (int64_t i = 0; i < g.chunk_frames; ++i) {
    const int64_t f = n + i;
    const auto kf = frame(k, i, T), vf = frame(v, i, T);
    if (f < S) {  // the first S frames of the stream become the sink, in order
      frame(sink_k, f, T).copy_(kf);
      frame(sink_v, f, T).copy_(vf);
      continue;
    }
    const int64_t slot = S + (f - S) % R;
    frame(k_cache, slot, T).copy_(rotate(kf, f, false));
    frame(v_cache, slot, T).copy_(vf);
    const int64_t e = f - W;  // the window now holds W + 1 frames: the oldest one leaves
    if (e < S || S == 0) continue;
    const int64_t eslot = S + (e - S) % R, j = (e - S) % S;  // e is the (e-S)-th evicted frame
    const auto ke = rotate(frame(k_cache, eslot, T), e, true);
    const auto ve = frame(v_cache, eslot, T).to(acc);
    auto sk = frame(sink_k, j, T), sv = frame(sink_v, j, T);
    sk.copy_(sk.to(acc) * alpha + ke * (1.0 - alpha));
    sv.copy_(sv.to(acc) * alpha + ve * (1.0 - alpha));
  }

  // Refresh the sink's rotated compute-dtype copy at positions p0 - s_f + j.
  const int64_t n1 = n + g.chunk_frames;
  const int64_t filled = std::min(n1, S);
  const int64_t n_window = std::clamp<int64_t>(n1 - S, 0, W);
  const int64_t p0 = n1 - n_window;
  if (filled > 0) {
    const auto sk = sink_k.narrow(1, 0, filled * T);
    at::Tensor rotated = sk.to(acc);
    if (rope) {
      auto [c, s] = rope_cos_sin(*rope_freqs, *rope_spatial, p0 - filled, filled, acc);
      rotated = rope_rotate(sk, c, s, false, acc);
    }
    k_cache.narrow(1, 0, filled * T).copy_(rotated);
    v_cache.narrow(1, 0, filled * T).copy_(sink_v.narrow(1, 0, filled * T));
  }
  state.add_(g.chunk_frames);
}

}  // namespace reward_forcing
