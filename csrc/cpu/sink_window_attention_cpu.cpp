// CPU twin of sink_window_attention: a chunk's queries over the filled sink slots, the window's
// ring slots (read in place: at most two contiguous runs of the ring) and the chunk itself; scores
// per run, one softmax over all of them, no K/V concatenation.
#include "streaming_cache.h"

#include <vector>

namespace reward_forcing {

namespace {

// Softmax attention of q [B, H, L, D] (rotated, pre-scaled, accumulation dtype) over key/value
// runs [B, Lk_i, H, D] that stay where they are: one score block per run, one softmax over all.
at::Tensor attend_runs(const at::Tensor& q,
                       const std::vector<std::pair<at::Tensor, at::Tensor>>& runs) {
  const auto acc = q.scalar_type();
  std::vector<at::Tensor> scores;
  for (const auto& [keys, values] : runs) scores.push_back(at::matmul(q, keys.to(acc).permute({0, 2, 3, 1})));
  const auto p = at::cat(scores, -1).softmax(-1);  // [B, H, L, sum Lk_i]
  at::Tensor out;
  int64_t offset = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& values = runs[i].second;
    const auto part = at::matmul(p.narrow(-1, offset, values.size(1)), values.to(acc).transpose(1, 2));
    out = out.defined() ? out.add_(part) : part;
    offset += values.size(1);
  }
  return out;
}

}  // namespace

at::Tensor sink_window_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& k_cache, const at::Tensor& v_cache,
                                     const at::Tensor& state, int64_t frame_tokens,
                                     int64_t sink_frames, int64_t window_frames, double scale,
                                     const std::optional<at::Tensor>& rope_freqs,
                                     const std::optional<at::Tensor>& rope_spatial) {
  const auto g = check_chunk(q, k, v, k_cache, v_cache, state, frame_tokens, sink_frames,
                             window_frames, rope_freqs, rope_spatial);
  const int64_t T = frame_tokens, S = sink_frames, W = window_frames, R = g.ring_frames;
  const auto acc = accum_type(q.scalar_type());
  const int64_t n = read_counter(state, g);

  at::Tensor qr = q.to(acc), kr = k.to(acc);
  if (rope_freqs) {
    auto [c, s] = rope_cos_sin(*rope_freqs, *rope_spatial, n, g.chunk_frames, acc);
    qr = rope_rotate(q, c, s, false, acc);
    kr = rope_rotate(k, c, s, false, acc);
  }
  std::vector<std::pair<at::Tensor, at::Tensor>> runs;
  const int64_t filled = std::min(n, S);
  if (filled > 0) runs.emplace_back(k_cache.narrow(1, 0, filled * T), v_cache.narrow(1, 0, filled * T));
  const int64_t first = std::max(S, n - W), n_window = n - first;  // window frames [first, n)
  if (n_window > 0) {
    const int64_t a = (first - S) % R;
    const int64_t run1 = std::min(n_window, R - a);
    for (auto [slot, count] : {std::pair{a, run1}, std::pair{int64_t{0}, n_window - run1}}) {
      if (count == 0) continue;
      runs.emplace_back(k_cache.narrow(1, (S + slot) * T, count * T),
                        v_cache.narrow(1, (S + slot) * T, count * T));
    }
  }
  runs.emplace_back(kr, v);
  const auto out = attend_runs((qr * scale).transpose(1, 2), runs);
  return out.transpose(1, 2).to(q.scalar_type()).contiguous();
}

}  // namespace reward_forcing
