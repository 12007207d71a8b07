// CPU twin of sink_window_attention: a chunk's queries over the filled sink slots, the window's
// ring slots (read in place, at most two contiguous runs of the ring) and the chunk itself, with
// an online softmax merged run by run.
#include "streaming_cache.h"

#include <cmath>
#include <vector>

namespace reward_forcing {

namespace {

// Running softmax state over key runs, [B, H, L, *] in the accumulation dtype.
struct OnlineSoftmax {
  at::Tensor q;                // [B, H, L, D], rotated, pre-scaled
  at::Tensor m, l, o;          // row max, row sum, unnormalised output
  void add(const at::Tensor& keys, const at::Tensor& values) {  // [B, Lk, H, D]
    if (keys.size(1) == 0) return;
    const auto acc = q.scalar_type();
    auto s = at::matmul(q, keys.to(acc).permute({0, 2, 3, 1}));  // [B, H, L, Lk]
    auto m_run = std::get<0>(s.max(-1, true));
    auto m_new = m.defined() ? at::maximum(m, m_run) : m_run;
    auto p = (s - m_new).exp_();
    auto o_run = at::matmul(p, values.to(acc).transpose(1, 2));  // [B, H, L, D]
    auto l_run = p.sum(-1, true);
    if (!m.defined()) {
      m = m_new, l = l_run, o = o_run;
      return;
    }
    auto r = (m - m_new).exp_();
    l = l * r + l_run;
    o = o * r + o_run;
    m = m_new;
  }
};

}  // namespace

at::Tensor sink_window_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& k_cache, const at::Tensor& v_cache,
                                     const at::Tensor& state, int64_t frame_tokens,
                                     int64_t sink_frames, int64_t window_frames, double scale,
                                     const std::optional<at::Tensor>& rope_freqs,
                                     const std::optional<at::Tensor>& rope_spatial) {
  const auto g = check_cache(k_cache, v_cache, state, q, frame_tokens, sink_frames, window_frames);
  check_rope(rope_freqs, rope_spatial, g);
  TORCH_CHECK_VALUE(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
                    "q, k and v must have one shape, got ", q.sizes(), ", ", k.sizes(), ", ",
                    v.sizes());
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                   "q, k and v dtypes differ");
  const int64_t T = frame_tokens, S = sink_frames, W = window_frames, R = g.ring_frames;
  const auto acc = accum_type(q.scalar_type());
  const int64_t n = state.item<int64_t>();

  at::Tensor qr = q.to(acc), kr = k.to(acc);
  if (rope_freqs) {
    auto [c, s] = rope_cos_sin(*rope_freqs, *rope_spatial, n, g.chunk_frames, acc);
    qr = rope_rotate(q, c, s, false, acc);
    kr = rope_rotate(k, c, s, false, acc);
  }
  OnlineSoftmax sm{(qr * scale).transpose(1, 2)};

  const int64_t filled = std::min(n, S);
  sm.add(k_cache.narrow(1, 0, filled * T), v_cache.narrow(1, 0, filled * T));
  const int64_t first = std::max(S, n - W), n_window = n - first;  // window frames [first, n)
  if (n_window > 0) {
    const int64_t a = (first - S) % R;
    const int64_t run1 = std::min(n_window, R - a);
    for (auto [slot, count] : {std::pair{a, run1}, std::pair{int64_t{0}, n_window - run1}}) {
      if (count == 0) continue;
      sm.add(k_cache.narrow(1, (S + slot) * T, count * T),
             v_cache.narrow(1, (S + slot) * T, count * T));
    }
  }
  sm.add(kr, v);
  return (sm.o / sm.l).transpose(1, 2).to(q.scalar_type()).contiguous();
}

}  // namespace reward_forcing
