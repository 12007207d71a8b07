// Small device helpers shared by the CUDA kernels of reward_forcing (sm_90a first, any sm_80+ GPU).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda/counter_guard.cuh"

namespace reward_forcing::cuda {

// Accumulation type of a storage type: float64 for float64, float32 otherwise (the CPU twins'
// accum_type).
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

// Conversions that round exactly like ATen's CPU copy_: to half/bfloat16 through float.
template <typename To, typename From>
__host__ __device__ __forceinline__ To cast_to(From x) {
  if constexpr (std::is_same_v<To, c10::BFloat16> || std::is_same_v<To, c10::Half>) {
    return To(static_cast<float>(x));
  } else {
    return static_cast<To>(x);
  }
}

// Loads / stores N consecutive elements. kVec: one (or several) 4/8/16-byte accesses, the pointer
// must be aligned to sizeof(T) * N (or 16 when that is larger); otherwise element by element.
template <typename T, int N, bool kVec>
__device__ __forceinline__ void load_n(const T* p, T (&out)[N]) {
  constexpr int kBytes = static_cast<int>(sizeof(T)) * N;
  if constexpr (kVec && kBytes % 16 == 0) {
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) {
      const uint4 r = reinterpret_cast<const uint4*>(p)[i];
      memcpy(reinterpret_cast<char*>(out) + 16 * i, &r, 16);
    }
  } else if constexpr (kVec && kBytes == 8) {
    const uint2 r = *reinterpret_cast<const uint2*>(p);
    memcpy(out, &r, 8);
  } else if constexpr (kVec && kBytes == 4) {
    const uint32_t r = *reinterpret_cast<const uint32_t*>(p);
    memcpy(out, &r, 4);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = p[i];
  }
}

template <typename T, int N, bool kVec>
__device__ __forceinline__ void store_n(T* p, const T (&in)[N]) {
  constexpr int kBytes = static_cast<int>(sizeof(T)) * N;
  if constexpr (kVec && kBytes % 16 == 0) {
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) {
      uint4 r;
      memcpy(&r, reinterpret_cast<const char*>(in) + 16 * i, 16);
      reinterpret_cast<uint4*>(p)[i] = r;
    }
  } else if constexpr (kVec && kBytes == 8) {
    uint2 r;
    memcpy(&r, in, 8);
    *reinterpret_cast<uint2*>(p) = r;
  } else if constexpr (kVec && kBytes == 4) {
    uint32_t r;
    memcpy(&r, in, 4);
    *reinterpret_cast<uint32_t*>(p) = r;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) p[i] = in[i];
  }
}

// cos/sin of a RoPE angle computed in float64 (pos * freq + spatial). For float accumulation the
// angle is reduced to [-pi, pi] in float64 and the hardware sin/cos (abs. error ~4e-7) finishes;
// float64 accumulation uses the float64 library sincos (the CPU twins' accuracy).
template <typename A>
__device__ __forceinline__ void rope_sincos(double angle, A& c, A& s) {
  if constexpr (std::is_same_v<A, double>) {
    sincos(angle, &s, &c);
  } else {
    const double k = rint(angle * 0.15915494309189535);  // 1 / (2 pi)
    double r = fma(-k, 6.283185307179586, angle);        // 2 pi, high part
    r = fma(-k, 2.4492935982947064e-16, r);               // 2 pi, low part
    __sincosf(static_cast<float>(r), &s, &c);
  }
}

inline bool aligned_to(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Calls f(T{}) with T the C++ type of a floating dtype (float, double, c10::Half, c10::BFloat16).
template <typename F>
void dispatch_float(at::ScalarType t, const char* what, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kHalf: f(c10::Half{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    default: TORCH_CHECK_TYPE(false, what, ": unsupported dtype ", t);
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace reward_forcing::cuda
