// The device-side counter guard. The kernels read the frame counter n from `state` on the device
// (no host synchronisation; CUDA-graph capturable), so the launchers cannot check it before the
// launch: a kernel that reads an n outside [0, kMaxFrames - c] writes nothing and sets a flag,
// one int of pinned host memory mapped into the device address space. Every launcher calls
// raise_if_bad_counter() first, so the error is raised by the next op call on the host (no
// synchronisation, no __trap: a trap would poison the whole CUDA context).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "frame_limits.h"

namespace reward_forcing::cuda {

int* bad_counter_flag();      // the device address of the flag (allocated on first use)
void raise_if_bad_counter();  // ValueError (and the flag cleared) when a kernel set it

// In every thread of a kernel that reads n, before any access: false (and the flag set) when n is
// out of range for a c-frame chunk; the kernel then returns without writing.
__device__ __forceinline__ bool counter_ok(int64_t n, int64_t c, int* flag) {
  if (n >= 0 && n <= kMaxFrames - c) return true;
  *reinterpret_cast<volatile int*>(flag) = 1;
  return false;
}

}  // namespace reward_forcing::cuda
