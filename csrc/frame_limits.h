// Limits shared by the host checks and the CUDA kernels (no ATen: the kernels' headers include it).
#pragma once
#include <cstdint>

namespace reward_forcing {

// The largest frame counter the ops accept (n + c at most): frame positions stay exact in the
// float64 RoPE angles, and n + c, n - W, (f - S) mod R never overflow int64. A counter outside
// [0, kMaxFrames - c] is invalid input (a corrupted or tampered state), never pointer math.
constexpr int64_t kMaxFrames = int64_t{1} << 52;

}  // namespace reward_forcing
