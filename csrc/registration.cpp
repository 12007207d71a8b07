// Op schemas (the contract shared by the CPU and CUDA implementations; documented in
// python/reward_forcing/ops.py), CPU registrations and the thin pybind11 module.
#include <torch/extension.h>

#include "ops.h"

TORCH_LIBRARY(reward_forcing, m) {
  m.def(
      "ring_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor(c!) sink_k, Tensor(d!) sink_v, "
      "Tensor(e!) state, Tensor k, Tensor v, int frame_tokens, int sink_frames, "
      "int window_frames, float alpha, Tensor? rope_freqs, Tensor? rope_spatial) -> ()");
  m.def(
      "sink_window_attention(Tensor q, Tensor k, Tensor v, Tensor k_cache, Tensor v_cache, "
      "Tensor state, int frame_tokens, int sink_frames, int window_frames, float scale, "
      "Tensor? rope_freqs, Tensor? rope_spatial) -> Tensor");
  m.def(
      "stage_chunk(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, "
      "Tensor state, int frame_tokens, int sink_frames, int window_frames, Tensor? rope_freqs, "
      "Tensor? rope_spatial) -> Tensor");
}

TORCH_LIBRARY_IMPL(reward_forcing, CPU, m) {
  m.impl("ring_append", &reward_forcing::ring_append_cpu);
  m.impl("sink_window_attention", &reward_forcing::sink_window_attention_cpu);
  m.impl("stage_chunk", &reward_forcing::stage_chunk_cpu);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "reward_forcing C++/CUDA ops (registered under torch.ops.reward_forcing)";
  m.attr("torch_version") = RF_TORCH_VERSION;
#ifdef RF_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
