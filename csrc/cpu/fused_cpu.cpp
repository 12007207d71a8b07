// CPU twins of the fused per-token ops of a Wan block (python/reward_forcing/fused.py holds the
// contract and the pure-PyTorch references). One pass over each row of D channels, accumulating
// in float (double for double inputs), rows split across threads:
//   layernorm_modulate(x, shift, scale, eps) = LN(x) * (1 + scale[f]) + shift[f]
//   gated_residual(x, y, gate)               = x + y * gate[f]
//   qk_rmsnorm(q, k, wq, wk, eps)            = (RMSNorm(q) * wq, RMSNorm(k) * wk)
// x, y, q, k: [B, L, D] contiguous, any float dtype; shift, scale, gate: [B, F, D] in the
// accumulation dtype with L % F == 0 (row l of sample b uses frame l / (L / F)); wq, wk: [D].
// Outputs have x's (q's) dtype. Schemas are defined here (a fragment of the reward_forcing
// library) so that this family stays in one file.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

namespace reward_forcing {
namespace {

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(x.dim() == 3, name, " must be [B, L, D], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), name, " must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(2) > 0, name, " has no channels");
}

// Per-frame [B, F, D] vectors for rows x [B, L, D]; returns F.
int64_t check_frames(const at::Tensor& p, const at::Tensor& x, const char* name) {
  TORCH_CHECK(p.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(p.dim() == 3 && p.size(0) == x.size(0) && p.size(2) == x.size(2), name,
              " must be [B, F, D] = [", x.size(0), ", F, ", x.size(2), "], got ", p.sizes());
  TORCH_CHECK(p.scalar_type() == acc_type(x.scalar_type()), name, " must be ",
              acc_type(x.scalar_type()), " for ", x.scalar_type(), " rows, got ", p.scalar_type());
  TORCH_CHECK(p.is_contiguous(), name, " must be contiguous");
  const int64_t f = p.size(1);
  TORCH_CHECK(f > 0 && x.size(1) % f == 0, name, ": ", x.size(1), " tokens are not a multiple of ",
              f, " frames");
  return f;
}

template <typename scalar_t, typename acc_t>
void layernorm_modulate_kernel(const scalar_t* x, const acc_t* shift, const acc_t* scale,
                               scalar_t* out, int64_t B, int64_t L, int64_t D, int64_t F,
                               double eps) {
  const int64_t per_frame = L / F;
  at::parallel_for(0, B * L, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / L, f = (r % L) / per_frame;
      const scalar_t* row = x + r * D;
      acc_t mean = 0;
      for (int64_t i = 0; i < D; ++i) mean += static_cast<acc_t>(row[i]);
      mean /= D;
      acc_t var = 0;
      for (int64_t i = 0; i < D; ++i) {
        const acc_t d = static_cast<acc_t>(row[i]) - mean;
        var += d * d;
      }
      var /= D;
      const acc_t inv = acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
      const acc_t* sh = shift + (b * F + f) * D;
      const acc_t* sc = scale + (b * F + f) * D;
      scalar_t* o = out + r * D;
      for (int64_t i = 0; i < D; ++i) {
        const acc_t n = (static_cast<acc_t>(row[i]) - mean) * inv;
        o[i] = static_cast<scalar_t>(n * (acc_t(1) + sc[i]) + sh[i]);
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void gated_residual_kernel(const scalar_t* x, const scalar_t* y, const acc_t* gate, scalar_t* out,
                           int64_t B, int64_t L, int64_t D, int64_t F) {
  const int64_t per_frame = L / F;
  at::parallel_for(0, B * L, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / L, f = (r % L) / per_frame;
      const acc_t* g = gate + (b * F + f) * D;
      for (int64_t i = 0; i < D; ++i)
        out[r * D + i] = static_cast<scalar_t>(static_cast<acc_t>(x[r * D + i]) +
                                               static_cast<acc_t>(y[r * D + i]) * g[i]);
    }
  });
}

template <typename scalar_t, typename acc_t>
void rmsnorm_kernel(const scalar_t* x, const acc_t* w, scalar_t* out, int64_t rows, int64_t D,
                    double eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = x + r * D;
      acc_t ms = 0;
      for (int64_t i = 0; i < D; ++i) {
        const acc_t v = static_cast<acc_t>(row[i]);
        ms += v * v;
      }
      const acc_t inv = acc_t(1) / std::sqrt(ms / D + static_cast<acc_t>(eps));
      for (int64_t i = 0; i < D; ++i)
        out[r * D + i] = static_cast<scalar_t>(static_cast<acc_t>(row[i]) * inv * w[i]);
    }
  });
}

}  // namespace

at::Tensor layernorm_modulate_cpu(const at::Tensor& x_in, const at::Tensor& shift,
                                  const at::Tensor& scale, double eps) {
  check_rows(x_in, "x");
  const int64_t F = check_frames(shift, x_in, "shift");
  TORCH_CHECK(check_frames(scale, x_in, "scale") == F, "shift and scale frame counts differ");
  TORCH_CHECK(eps >= 0, "eps must be >= 0, got ", eps);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "layernorm_modulate",
                                  [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    layernorm_modulate_kernel<scalar_t, acc_t>(x.data_ptr<scalar_t>(), shift.data_ptr<acc_t>(),
                                               scale.data_ptr<acc_t>(), out.data_ptr<scalar_t>(),
                                               B, L, D, F, eps);
  });
  return out;
}

at::Tensor gated_residual_cpu(const at::Tensor& x_in, const at::Tensor& y_in,
                              const at::Tensor& gate) {
  check_rows(x_in, "x");
  check_rows(y_in, "y");
  TORCH_CHECK(x_in.sizes() == y_in.sizes(), "x ", x_in.sizes(), " and y ", y_in.sizes(),
              " differ in shape");
  TORCH_CHECK(x_in.scalar_type() == y_in.scalar_type(), "x (", x_in.scalar_type(), ") and y (",
              y_in.scalar_type(), ") dtypes differ");
  const int64_t F = check_frames(gate, x_in, "gate");
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gated_residual", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    gated_residual_kernel<scalar_t, acc_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                           gate.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), B, L,
                                           D, F);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> qk_rmsnorm_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                  const at::Tensor& wq_in, const at::Tensor& wk_in,
                                                  double eps) {
  check_rows(q_in, "q");
  check_rows(k_in, "k");
  TORCH_CHECK(q_in.sizes() == k_in.sizes() && q_in.scalar_type() == k_in.scalar_type(),
              "q and k must have one shape and dtype, got ", q_in.sizes(), " ", q_in.scalar_type(),
              " and ", k_in.sizes(), " ", k_in.scalar_type());
  const int64_t D = q_in.size(2);
  for (const auto* w : {&wq_in, &wk_in}) {
    TORCH_CHECK(w->device().is_cpu() && w->dim() == 1 && w->size(0) == D,
                "norm weights must be CPU [", D, "], got ", w->sizes());
    TORCH_CHECK(at::isFloatingType(w->scalar_type()), "norm weights must be floating point");
  }
  TORCH_CHECK(eps >= 0, "eps must be >= 0, got ", eps);
  const auto acc = acc_type(q_in.scalar_type());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous();
  const at::Tensor wq = wq_in.to(acc).contiguous(), wk = wk_in.to(acc).contiguous();
  at::Tensor qo = at::empty_like(q), ko = at::empty_like(k);
  const int64_t rows = q.size(0) * q.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "qk_rmsnorm", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    rmsnorm_kernel<scalar_t, acc_t>(q.data_ptr<scalar_t>(), wq.data_ptr<acc_t>(),
                                    qo.data_ptr<scalar_t>(), rows, D, eps);
    rmsnorm_kernel<scalar_t, acc_t>(k.data_ptr<scalar_t>(), wk.data_ptr<acc_t>(),
                                    ko.data_ptr<scalar_t>(), rows, D, eps);
  });
  return {qo, ko};
}

TORCH_LIBRARY_FRAGMENT(reward_forcing, m) {
  m.def("layernorm_modulate(Tensor x, Tensor shift, Tensor scale, float eps) -> Tensor");
  m.def("gated_residual(Tensor x, Tensor y, Tensor gate) -> Tensor");
  m.def("qk_rmsnorm(Tensor q, Tensor k, Tensor wq, Tensor wk, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(reward_forcing, CPU, m) {
  m.impl("layernorm_modulate", &layernorm_modulate_cpu);
  m.impl("gated_residual", &gated_residual_cpu);
  m.impl("qk_rmsnorm", &qk_rmsnorm_cpu);
}

}  // namespace reward_forcing
