// Shared geometry and checks of the EMA-Sink streaming cache (docs/design.md §2-§3).
//
// Storage, per layer:
//   k_cache, v_cache : [B, (S + R) * T, H, D]  compute dtype. Frame slot s holds tokens
//                      [s*T, (s+1)*T). Slots [0, S) hold the sink's *rotated* compute-dtype copy,
//                      slots [S, S+R) are the ring (R = W + C). Frame f >= S lives in ring slot
//                      S + (f - S) mod R, its key rotated at its absolute index f.
//   sink_k, sink_v   : [B, S * T, H, D]  float32 (or the sink dtype) running EMA of *un-rotated* keys
//                      and of values.
//   state            : int64 [1] on the cache device: frames appended so far (n).
// Derived from n: sink filled s_f = min(n, S); window = frames [max(S, n - W), n) (n_w of them);
// the sink's copy is rotated to positions p0 - s_f + j with p0 = n - n_w, so that relative
// indices are those of docs/design.md §2 (sink, window oldest first, then the chunk at n, n+1, ...).
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>
#include <optional>

#include "frame_limits.h"

namespace reward_forcing {

struct CacheGeometry {
  int64_t batch, heads, head_dim;
  int64_t frame_tokens;   // T
  int64_t sink_frames;    // S
  int64_t ring_frames;    // R = W + C
  int64_t window_frames;  // W
  int64_t chunk_frames;   // c: frames in this call's q/k/v
  c10::Device device = c10::Device(c10::kCPU);  // the cache's
};

// Validates the cache tensors and one chunk tensor x ([B, c*T, H, D]); returns the geometry.
// Every size is checked against the tensors before any product of sizes is formed, so no
// product overflows (S, W <= the cache's frames; S * T <= the cache's tokens).
CacheGeometry check_cache(const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& state, const at::Tensor& x, int64_t frame_tokens,
                          int64_t sink_frames, int64_t window_frames);
void check_rope(const std::optional<at::Tensor>& freqs, const std::optional<at::Tensor>& spatial,
                const CacheGeometry& g);
// The counter n of `state` (a CPU tensor: the CPU ops read it on the host), checked to lie in
// [0, kMaxFrames - c]; ValueError naming it otherwise. The CUDA ops never read it on the host:
// their kernels check it on the device (cuda/common.cuh, counter_ok).
int64_t read_counter(const at::Tensor& state, const CacheGeometry& g);
// check_cache + check_rope for a chunk's q, k, v (one shape, one dtype).
CacheGeometry check_chunk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& state, int64_t frame_tokens, int64_t sink_frames,
                          int64_t window_frames, const std::optional<at::Tensor>& freqs,
                          const std::optional<at::Tensor>& spatial);

// cos/sin of the RoPE angle pos*freqs[i] + spatial[t, i] (float64 math) for `frames` consecutive
// frames starting at `pos0`; returned as [frames*T, D/2] in dtype `acc`.
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& freqs, const at::Tensor& spatial,
                                               int64_t pos0, int64_t frames, at::ScalarType acc);
// Rotates adjacent channel pairs of x [B, L, H, D] (inverse: by minus the angle); returns dtype acc.
at::Tensor rope_rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                       bool inverse, at::ScalarType acc);

inline at::ScalarType accum_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace reward_forcing
