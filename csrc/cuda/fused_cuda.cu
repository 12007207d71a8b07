// CUDA kernels of the fused per-token ops (contract and references: python/reward_forcing/fused.py;
// CPU twins: csrc/cpu/fused_cpu.cpp, which also defines the schemas). One thread block per row of
// D channels: the row's statistics by a block reduction in the accumulation type (float32; float64
// for float64 rows), then one write of the output; the per-frame vectors (shift, scale, gate) are
// read once per row. Memory traffic: LayerNorm+modulate and RMSNorm read a row twice (the second
// read mostly from L2) and write it once; the gated residual reads x and y once.
#include "cuda/common.cuh"

#include <torch/library.h>

namespace reward_forcing {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct RowParams {
  const void* __restrict__ x;      // [rows, D]
  const void* __restrict__ y;      // [rows, D] (gated residual) or nullptr
  const void* __restrict__ p0;     // shift / gate / RMSNorm weight (accumulation type)
  const void* __restrict__ p1;     // scale or nullptr
  void* __restrict__ out;          // [rows, D]
  int64_t rows, D;
  int64_t L, F;                    // tokens per sample and frames: row r -> (r / L, (r % L) / (L / F))
  double eps;
};

template <typename A>
__device__ __forceinline__ A block_sum(A v, A* shared) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // shared may still be read by the previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < kThreads / 32 ? shared[lane] : A(0);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ int64_t frame_row(const RowParams& p, int64_t r) {
  return (r / p.L) * p.F + (r % p.L) / (p.L / p.F);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) layernorm_modulate_kernel(const RowParams p) {
  using A = acc_t<T>;
  __shared__ A shared[kThreads / 32];
  const int64_t r = blockIdx.x;
  const T* __restrict__ x = static_cast<const T*>(p.x) + r * p.D;
  const A* __restrict__ shift = static_cast<const A*>(p.p0) + frame_row(p, r) * p.D;
  const A* __restrict__ scale = static_cast<const A*>(p.p1) + frame_row(p, r) * p.D;
  T* __restrict__ out = static_cast<T*>(p.out) + r * p.D;
  A s = 0;
  for (int64_t i = threadIdx.x; i < p.D; i += kThreads) s += static_cast<A>(x[i]);
  const A mean = block_sum(s, shared) / static_cast<A>(p.D);
  A v = 0;
  for (int64_t i = threadIdx.x; i < p.D; i += kThreads) {
    const A d = static_cast<A>(x[i]) - mean;
    v += d * d;
  }
  const A var = block_sum(v, shared) / static_cast<A>(p.D);
  const A inv = A(1) / sqrt(var + static_cast<A>(p.eps));
  for (int64_t i = threadIdx.x; i < p.D; i += kThreads)
    out[i] = cast_to<T>((static_cast<A>(x[i]) - mean) * inv * (A(1) + scale[i]) + shift[i]);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gated_residual_kernel(const RowParams p) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x;
  const T* __restrict__ x = static_cast<const T*>(p.x) + r * p.D;
  const T* __restrict__ y = static_cast<const T*>(p.y) + r * p.D;
  const A* __restrict__ gate = static_cast<const A*>(p.p0) + frame_row(p, r) * p.D;
  T* __restrict__ out = static_cast<T*>(p.out) + r * p.D;
  for (int64_t i = threadIdx.x; i < p.D; i += kThreads)
    out[i] = cast_to<T>(static_cast<A>(x[i]) + static_cast<A>(y[i]) * gate[i]);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(const RowParams p) {
  using A = acc_t<T>;
  __shared__ A shared[kThreads / 32];
  const int64_t r = blockIdx.x;
  const T* __restrict__ x = static_cast<const T*>(p.x) + r * p.D;
  const A* __restrict__ w = static_cast<const A*>(p.p0);
  T* __restrict__ out = static_cast<T*>(p.out) + r * p.D;
  A s = 0;
  for (int64_t i = threadIdx.x; i < p.D; i += kThreads) {
    const A v = static_cast<A>(x[i]);
    s += v * v;
  }
  const A inv = A(1) / sqrt(block_sum(s, shared) / static_cast<A>(p.D) + static_cast<A>(p.eps));
  for (int64_t i = threadIdx.x; i < p.D; i += kThreads)
    out[i] = cast_to<T>(static_cast<A>(x[i]) * inv * w[i]);
}

at::ScalarType acc_scalar(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK_VALUE(x.dim() == 3 && x.size(2) > 0, name, " must be [B, L, D] with D > 0, got ",
                    x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), name, " must be floating point, got ",
                   x.scalar_type());
}

int64_t check_frames(const at::Tensor& p, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(p.device() == x.device(), name, " must be on ", x.device());
  TORCH_CHECK_VALUE(p.dim() == 3 && p.size(0) == x.size(0) && p.size(2) == x.size(2), name,
                    " must be [B, F, D] = [", x.size(0), ", F, ", x.size(2), "], got ", p.sizes());
  TORCH_CHECK_TYPE(p.scalar_type() == acc_scalar(x.scalar_type()), name, " must be ",
                   acc_scalar(x.scalar_type()), " for ", x.scalar_type(), " rows, got ",
                   p.scalar_type());
  TORCH_CHECK_VALUE(p.is_contiguous(), name, " must be contiguous");
  const int64_t f = p.size(1);
  TORCH_CHECK_VALUE(f > 0 && x.size(1) % f == 0, name, ": ", x.size(1),
                    " tokens are not a multiple of ", f, " frames");
  return f;
}

template <template <typename> class Kernel>
void launch(const RowParams& p, at::ScalarType dtype, const char* what) {
  if (p.rows == 0) return;
  TORCH_CHECK_VALUE(p.rows < (int64_t(1) << 31), what, ": too many rows (", p.rows, ")");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float(dtype, what, [&](auto t) {
    using T = decltype(t);
    Kernel<T>::run(p, stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define RF_ROW_KERNEL(NAME)                                                          \
  template <typename T>                                                              \
  struct NAME##_launcher {                                                           \
    static void run(const RowParams& p, cudaStream_t s) {                            \
      NAME##_kernel<T><<<static_cast<unsigned>(p.rows), kThreads, 0, s>>>(p);        \
    }                                                                                \
  };
RF_ROW_KERNEL(layernorm_modulate)
RF_ROW_KERNEL(gated_residual)
RF_ROW_KERNEL(rmsnorm)
#undef RF_ROW_KERNEL

RowParams row_params(const at::Tensor& x, int64_t frames) {
  RowParams p{};
  p.rows = x.size(0) * x.size(1);
  p.D = x.size(2);
  p.L = x.size(1);
  p.F = frames;
  return p;
}

}  // namespace

at::Tensor layernorm_modulate_cuda(const at::Tensor& x_in, const at::Tensor& shift,
                                   const at::Tensor& scale, double eps) {
  check_rows(x_in, "x");
  const int64_t F = check_frames(shift, x_in, "shift");
  TORCH_CHECK_VALUE(check_frames(scale, x_in, "scale") == F, "shift and scale frame counts differ");
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  RowParams p = row_params(x, F);
  p.x = x.data_ptr();
  p.p0 = shift.data_ptr();
  p.p1 = scale.data_ptr();
  p.out = out.data_ptr();
  p.eps = eps;
  launch<layernorm_modulate_launcher>(p, x.scalar_type(), "layernorm_modulate");
  return out;
}

at::Tensor gated_residual_cuda(const at::Tensor& x_in, const at::Tensor& y_in,
                               const at::Tensor& gate) {
  check_rows(x_in, "x");
  check_rows(y_in, "y");
  TORCH_CHECK_VALUE(x_in.sizes() == y_in.sizes() && x_in.device() == y_in.device(), "x ",
                    x_in.sizes(), " and y ", y_in.sizes(), " differ in shape or device");
  TORCH_CHECK_TYPE(x_in.scalar_type() == y_in.scalar_type(), "x and y dtypes differ");
  const int64_t F = check_frames(gate, x_in, "gate");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  at::Tensor out = at::empty_like(x);
  RowParams p = row_params(x, F);
  p.x = x.data_ptr();
  p.y = y.data_ptr();
  p.p0 = gate.data_ptr();
  p.out = out.data_ptr();
  launch<gated_residual_launcher>(p, x.scalar_type(), "gated_residual");
  return out;
}

std::tuple<at::Tensor, at::Tensor> qk_rmsnorm_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                   const at::Tensor& wq_in,
                                                   const at::Tensor& wk_in, double eps) {
  check_rows(q_in, "q");
  check_rows(k_in, "k");
  TORCH_CHECK_VALUE(q_in.sizes() == k_in.sizes() && q_in.device() == k_in.device(),
                    "q and k must have one shape and device");
  TORCH_CHECK_TYPE(q_in.scalar_type() == k_in.scalar_type(), "q and k dtypes differ");
  const int64_t D = q_in.size(2);
  for (const auto* w : {&wq_in, &wk_in}) {
    TORCH_CHECK_VALUE(w->device() == q_in.device() && w->dim() == 1 && w->size(0) == D,
                      "norm weights must be [", D, "] on ", q_in.device(), ", got ", w->sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(w->scalar_type()), "norm weights must be floating point");
  }
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const auto acc = acc_scalar(q_in.scalar_type());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous();
  const at::Tensor wq = wq_in.to(acc).contiguous(), wk = wk_in.to(acc).contiguous();
  at::Tensor qo = at::empty_like(q), ko = at::empty_like(k);
  for (int i = 0; i < 2; ++i) {
    RowParams p = row_params(q, 1);
    p.x = (i == 0 ? q : k).data_ptr();
    p.p0 = (i == 0 ? wq : wk).data_ptr();
    p.out = (i == 0 ? qo : ko).data_ptr();
    p.eps = eps;
    launch<rmsnorm_launcher>(p, q.scalar_type(), "qk_rmsnorm");
  }
  return {qo, ko};
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(reward_forcing, CUDA, m) {
  m.impl("layernorm_modulate", &cuda::layernorm_modulate_cuda);
  m.impl("gated_residual", &cuda::gated_residual_cuda);
  m.impl("qk_rmsnorm", &cuda::qk_rmsnorm_cuda);
}

}  // namespace reward_forcing
