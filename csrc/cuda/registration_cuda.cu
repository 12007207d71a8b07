// CUDA registrations of the reward_forcing ops (schemas: csrc/registration.cpp). Autograd of
// sink_window_attention is registered in Python (ops.py) for every device.
#include <torch/library.h>

#include "cuda/ops_cuda.h"

TORCH_LIBRARY_IMPL(reward_forcing, CUDA, m) {
  m.impl("ring_append", &reward_forcing::ring_append_cuda);
  m.impl("sink_window_attention", &reward_forcing::sink_window_attention_cuda);
  m.impl("stage_chunk", &reward_forcing::stage_chunk_cuda);
}
