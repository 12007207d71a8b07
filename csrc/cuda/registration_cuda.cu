// CUDA registrations of the reward_forcing ops (schemas: csrc/registration.cpp). Autograd of
// sink_window_attention is registered in Python (ops.py) for every device.
#include <torch/library.h>

#include <mutex>

#include "cuda/common.cuh"
#include "cuda/ops_cuda.h"

namespace reward_forcing::cuda {
namespace {
volatile int* g_flag_host = nullptr;
int* g_flag_device = nullptr;
std::once_flag g_flag_once;
}  // namespace

int* bad_counter_flag() {
  std::call_once(g_flag_once, [] {
    int* host = nullptr;
    // portable: one allocation mapped into every device's context (unified addressing)
    C10_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host), sizeof(int),
                                 cudaHostAllocMapped | cudaHostAllocPortable));
    *host = 0;
    C10_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&g_flag_device), host, 0));
    g_flag_host = host;
  });
  return g_flag_device;
}

void raise_if_bad_counter() {
  bad_counter_flag();
  if (*g_flag_host != 0) {
    *g_flag_host = 0;
    TORCH_CHECK_VALUE(false, "a reward_forcing CUDA op read a frame counter (state) outside [0, "
                      "2^52 - c] on the device: a corrupted or foreign cache state; that op "
                      "wrote nothing");
  }
}
}  // namespace reward_forcing::cuda

TORCH_LIBRARY_IMPL(reward_forcing, CUDA, m) {
  m.impl("ring_append", &reward_forcing::ring_append_cuda);
  m.impl("sink_window_attention", &reward_forcing::sink_window_attention_cuda);
  m.impl("stage_chunk", &reward_forcing::stage_chunk_cuda);
}
