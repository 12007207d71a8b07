// CPU twin of stage_chunk: rotate a chunk's q and k at its frame positions n, n+1, ..., write the
// rotated keys and the values into the chunk's ring slots (frames >= S), return the rotated q.
#include "streaming_cache.h"

namespace reward_forcing {

at::Tensor stage_chunk_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& state,
                           int64_t frame_tokens, int64_t sink_frames, int64_t window_frames,
                           const std::optional<at::Tensor>& rope_freqs,
                           const std::optional<at::Tensor>& rope_spatial) {
  const auto g = check_chunk(q, k, v, k_cache, v_cache, state, frame_tokens, sink_frames,
                             window_frames, rope_freqs, rope_spatial);
  const int64_t T = frame_tokens, S = sink_frames, R = g.ring_frames;
  const int64_t n = read_counter(state, g);
  at::Tensor qr = q.contiguous(), kr = k;
  if (rope_freqs) {
    const auto acc = accum_type(q.scalar_type());
    auto [c, s] = rope_cos_sin(*rope_freqs, *rope_spatial, n, g.chunk_frames, acc);
    qr = rope_rotate(q, c, s, false, acc).to(q.scalar_type());
    kr = rope_rotate(k, c, s, false, acc);
  }
  for (int64_t i = 0; i < g.chunk_frames; ++i) {
    const int64_t f = n + i;
    if (f < S) continue;  // a sink frame: not in the ring
    const int64_t slot = S + (f - S) % R;
    k_cache.narrow(1, slot * T, T).copy_(kr.narrow(1, i * T, T));
    v_cache.narrow(1, slot * T, T).copy_(v.narrow(1, i * T, T));
  }
  return qr;
}

}  // namespace reward_forcing
