// Declarations of the CUDA op implementations registered in registration_cuda.cu (schemas in
// csrc/registration.cpp, contract in python/reward_forcing/ops.py).
#pragma once
#include "streaming_cache.h"

namespace reward_forcing {

void ring_append_cuda(at::Tensor k_cache, at::Tensor v_cache, at::Tensor sink_k, at::Tensor sink_v,
                      at::Tensor state, const at::Tensor& k, const at::Tensor& v,
                      int64_t frame_tokens, int64_t sink_frames, int64_t window_frames,
                      double alpha, const std::optional<at::Tensor>& rope_freqs,
                      const std::optional<at::Tensor>& rope_spatial);

at::Tensor sink_window_attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& k_cache,
                                      const at::Tensor& v_cache, const at::Tensor& state,
                                      int64_t frame_tokens, int64_t sink_frames,
                                      int64_t window_frames, double scale,
                                      const std::optional<at::Tensor>& rope_freqs,
                                      const std::optional<at::Tensor>& rope_spatial);

at::Tensor stage_chunk_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& state,
                            int64_t frame_tokens, int64_t sink_frames, int64_t window_frames,
                            const std::optional<at::Tensor>& rope_freqs,
                            const std::optional<at::Tensor>& rope_spatial);

}  // namespace reward_forcing
