// Tensor-core forward of sink_window_attention (bf16 / fp16 in, fp32 accumulate, online softmax),
// head dim 64 or 128, mma.sync m16n8k16 + ldmatrix + cp.async double buffering (FlashAttention-2
// style). Included by one translation unit per dtype (sink_window_attention_{bf16,fp16}.cu).
//
// A CTA holds kBM = 16 * kWarps queries of one (batch, head); each warp owns 16 query rows whose Q
// fragments stay in registers (rotated there by the chunk's RoPE, cos/sin from the prologue's
// table). The CTA walks the logical key sequence (sink slots, window ring runs, the chunk: see
// KeyMap) in tiles of 64 keys that it gathers row by row straight from the cache buffer and the
// chunk's k/v with 16-byte cp.async (no gather copy, no torch.cat); rows past the last key are
// zero-filled and their scores masked. Shared-memory rows are XOR-swizzled in 16-byte chunks so
// that cp.async writes and ldmatrix reads are free of bank conflicts.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cmath>
#include <cstring>

#include <c10/cuda/CUDAException.h>

#include "cuda/sink_window_attention.cuh"

namespace reward_forcing::cuda::mma {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;  // 0: zero-fill the 16 bytes, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <typename E>
struct Ops;

template <>
struct Ops<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
    uint32_t r;
    memcpy(&r, &v, 4);
    return r;
  }
  static __device__ __forceinline__ float2 unpack(uint32_t x) {
    __nv_bfloat162 v;
    memcpy(&v, &x, 4);
    return __bfloat1622float2(v);
  }
  // c += a * b, a: 16x16 (row), b: 16x8 (col), c: 16x8 fp32.
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct Ops<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, 4);
    return r;
  }
  static __device__ __forceinline__ float2 unpack(uint32_t x) {
    __half2 v;
    memcpy(&v, &x, 4);
    return __half22float2(v);
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Element offset of 16-byte chunk `ch` of row `r` in a [rows, kD] shared-memory tile.
template <int kD>
__device__ __forceinline__ int swz(int r, int ch) {
  return r * kD + ((ch ^ (r & 7)) << 3);
}

constexpr int kBlockN = 64;

template <int kD, int kRows, typename E>
constexpr size_t smem_bytes() {
  return static_cast<size_t>(kRows + 4 * kBlockN) * kD * sizeof(E);
}

// kWarps warps, each owning kMT consecutive 16-row m-tiles: a CTA holds kBM = 16 * kMT * kWarps
// queries. kMT = 1 keeps the warp's Q fragments in registers; kMT = 2 (FlashAttention-2's layout
// for head dim 128) re-reads them from shared memory per tile and uses every K/V fragment twice.
template <typename E, int kD, int kWarps, int kMT>
__global__ void __launch_bounds__(kWarps * 32) swa_fwd_mma_kernel(const SwaParams p) {
  static_assert(kD == 64 || kD == 128, "head dim 64 or 128");
  static_assert(kMT == 1 || kMT == 2, "one or two m-tiles per warp");
  constexpr int kBM = 16 * kMT * kWarps;
  constexpr int kBN = kBlockN;
  constexpr int kThreads = 32 * kWarps;
  constexpr int kChunks = kD / 8;  // 16-byte chunks per row
  constexpr int kKS = kD / 16;     // k-steps of Q K^T over the head dim
  constexpr int kNT = kBN / 8;     // 8-key n-tiles of S
  constexpr int kDT = kD / 8;      // 8-channel n-tiles of O
  static_assert((kBM * kChunks) % kThreads == 0 && (kBN * kChunks) % kThreads == 0, "tiling");
  using O = Ops<E>;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  E* sQ = reinterpret_cast<E*>(smem_raw);  // [kBM, kD]; reused to stage the output
  E* sK = sQ + kBM * kD;                   // [2][kBN, kD]
  E* sV = sK + 2 * kBN * kD;               // [2][kBN, kD]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wrow = warp * 16 * kMT;  // the warp's first query row in the tile
  // 32-bit row and element offsets inside one (batch, head) (the launcher checks that they fit).
  const int m0 = static_cast<int>(blockIdx.x) * kBM;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int HD = static_cast<int>(p.H) * kD;
  const int Lq = static_cast<int>(p.Lq);
  const int64_t n = *p.state;
  if (!counter_ok(n, p.Lq / p.T, p.bad_counter)) return;  // the whole block: touch nothing
  const KeyMap km64 = make_key_map(n, p.S, p.W, p.R, p.T, p.Lq);
  const int e0 = static_cast<int>(km64.e0), e1 = static_cast<int>(km64.e1);
  const int e2 = static_cast<int>(km64.e2), Lk = static_cast<int>(km64.Lk);
  const int d1 = static_cast<int>(km64.d1), d2 = static_cast<int>(km64.d2);
  const int64_t HD64 = p.H * kD;
  const E* q_bh = static_cast<const E*>(p.q) + b * p.Lq * HD64 + h * kD;
  const E* kc_bh = static_cast<const E*>(p.k_cache) + b * p.cache_rows * HD64 + h * kD;
  const E* vc_bh = static_cast<const E*>(p.v_cache) + b * p.cache_rows * HD64 + h * kD;
  const E* kx_bh = static_cast<const E*>(p.k_chunk) + b * p.Lq * HD64 + h * kD;
  const E* vx_bh = static_cast<const E*>(p.v_chunk) + b * p.Lq * HD64 + h * kD;
  E* o_bh = static_cast<E*>(p.out) + b * p.Lq * HD64 + h * kD;

  // Q tile (rows past the chunk are zero-filled and never stored).
#pragma unroll
  for (int i = 0; i < kBM * kChunks / kThreads; ++i) {
    const int c = tid + i * kThreads;
    const int r = c / kChunks, ch = c % kChunks;
    const int row = m0 + r;
    const bool ok = row < Lq;
    cp_async_16(smem_u32(sQ + swz<kD>(r, ch)), q_bh + (ok ? row : 0) * HD + ch * 8, ok);
  }
  // K/V tile `tile` (logical keys [64 tile, 64 tile + 64)) into stage `stage`.
  auto load_kv = [&](int tile, int stage) {
    const int j0 = tile * kBN;
    E* sk = sK + stage * kBN * kD;
    E* sv = sV + stage * kBN * kD;
#pragma unroll
    for (int i = 0; i < kBN * kChunks / kThreads; ++i) {
      const int c = tid + i * kThreads;
      const int r = c / kChunks, ch = c % kChunks;
      const int j = j0 + r;
      const E* ks;
      const E* vs;
      if (j < e2) {  // cached context: sink slots, then the window's ring runs
        const int off = (j < e0 ? j : (j < e1 ? j + d1 : j + d2)) * HD + ch * 8;
        ks = kc_bh + off;
        vs = vc_bh + off;
      } else {  // the chunk itself
        const int off = (j < Lk ? j - e2 : 0) * HD + ch * 8;
        ks = kx_bh + off;
        vs = vx_bh + off;
      }
      const bool ok = j < Lk;
      cp_async_16(smem_u32(sk + swz<kD>(r, ch)), ks, ok);
      cp_async_16(smem_u32(sv + swz<kD>(r, ch)), vs, ok);
    }
  };

  const int n_tiles = (Lk + kBN - 1) / kBN;
  load_kv(0, 0);
  cp_async_commit();
  cp_async_wait_all();
  if (p.rope_cs != nullptr) {
    // The chunk's RoPE on q, in shared memory, before the barrier: each thread rotates the
    // 16-byte chunks (4 channel pairs) it copied itself, visible to it after its own wait.
    const float* cs = static_cast<const float*>(p.rope_cs);  // [Lq, D/2, (cos, sin)]
#pragma unroll
    for (int i = 0; i < kBM * kChunks / kThreads; ++i) {
      const int c = tid + i * kThreads;
      const int r = c / kChunks, ch = c % kChunks;
      const int row = m0 + r;
      if (row < Lq) {
        uint4* ptr = reinterpret_cast<uint4*>(sQ + swz<kD>(r, ch));
        uint4 x = *ptr;
        const float4* t4 = reinterpret_cast<const float4*>(cs + static_cast<int64_t>(row) * kD + ch * 8);
        const float4 t01 = t4[0], t23 = t4[1];
        auto rot = [](uint32_t v, float c_, float s_) {
          const float2 f = O::unpack(v);
          return O::pack(f.x * c_ - f.y * s_, f.x * s_ + f.y * c_);
        };
        x.x = rot(x.x, t01.x, t01.y);
        x.y = rot(x.y, t01.z, t01.w);
        x.z = rot(x.z, t23.x, t23.y);
        x.w = rot(x.w, t23.z, t23.w);
        *ptr = x;
      }
    }
  }
  __syncthreads();

  // Q fragments (A operand, m16 x k16 per k-step): ldmatrix matrices 0..3 = rows 0-7 / 8-15 of an
  // m-tile, channels 0-7 / 8-15 of the k-step.
  auto load_q = [&](uint32_t (&a)[4], int mt, int ks) {
    const int r = wrow + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
    ldmatrix_x4(a, smem_u32(sQ + swz<kD>(r, 2 * ks + (lane >> 4))));
  };
  uint32_t qf[kMT == 1 ? kKS : 1][4];
  if constexpr (kMT == 1) {
#pragma unroll
    for (int ks = 0; ks < kKS; ++ks) load_q(qf[ks], 0, ks);
  }

  float o[kMT][kDT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int i = 0; i < kDT; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
  float row_max[kMT][2], row_sum[kMT][2];  // rows lane/4 and lane/4 + 8 of each m-tile; raw scores
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;  // this thread's partial sums
  }
  const float scale_log2 = p.scale_log2;

  for (int it = 0; it < n_tiles; ++it) {
    if (it > 0) {
      cp_async_wait_all();
      __syncthreads();  // tile `it` visible; every warp is done with stage (it + 1) & 1
    }
    if (it + 1 < n_tiles) {
      load_kv(it + 1, (it + 1) & 1);
      cp_async_commit();
    }
    const E* sk = sK + (it & 1) * kBN * kD;
    const E* sv = sV + (it & 1) * kBN * kD;

    // S = Q K^T (B operand: ldmatrix matrices = keys 0-7 / 8-15 x channels 0-7 / 8-15).
    float s[kMT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int i = 0; i < kNT; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
    // (kMT = 2: no unrolling over k-steps, which keeps the register peak under 255)
#pragma unroll(kMT == 1 ? kKS : 1)
    for (int ks = 0; ks < kKS; ++ks) {
      uint32_t qa[kMT][4];
      if constexpr (kMT == 1) {
#pragma unroll
        for (int e = 0; e < 4; ++e) qa[0][e] = qf[ks][e];
      } else {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) load_q(qa[mt], mt, ks);
      }
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t kb[4];
        const int r = np * 16 + (lane >> 4) * 8 + (lane & 7);
        ldmatrix_x4(kb, smem_u32(sk + swz<kD>(r, 2 * ks + ((lane >> 3) & 1))));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          O::mma(s[mt][2 * np], qa[mt], kb[0], kb[1]);
          O::mma(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    // Online softmax (exp2 with the scale folded in); the ragged last tile masks keys >= Lk.
    const int j0 = it * kBN;
    const bool ragged = j0 + kBN > Lk;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      float mx[2] = {row_max[mt][0], row_max[mt][1]};
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (ragged && j0 + nt * 8 + 2 * (lane & 3) + (e & 1) >= Lk) s[mt][nt][e] = -INFINITY;
          mx[e >> 1] = fmaxf(mx[e >> 1], s[mt][nt][e]);
        }
      }
      float corr[2], neg_m[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        corr[i] = exp2f((row_max[mt][i] - mx[i]) * scale_log2);  // 0 on the first tile
        row_max[mt][i] = mx[i];
        neg_m[i] = -mx[i] * scale_log2;
      }
      float rs[2] = {0.f, 0.f};
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pe = exp2f(fmaf(s[mt][nt][e], scale_log2, neg_m[e >> 1]));
          s[mt][nt][e] = pe;
          rs[e >> 1] += pe;
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) row_sum[mt][i] = row_sum[mt][i] * corr[i] + rs[i];
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        o[mt][dt][0] *= corr[0];
        o[mt][dt][1] *= corr[0];
        o[mt][dt][2] *= corr[1];
        o[mt][dt][3] *= corr[1];
      }
    }

    // O += P V: P (fp32 accumulators of two 8-key n-tiles) becomes the A operand of a k16 step;
    // V through ldmatrix.trans (matrices = keys 0-7 / 8-15 x channels 0-7 / 8-15 of a d-pair).
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      uint32_t pa[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        pa[mt][0] = O::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = O::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = O::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = O::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kD / 16; ++dp) {
        uint32_t vb[4];
        const int r = kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
        ldmatrix_x4_trans(vb, smem_u32(sv + swz<kD>(r, 2 * dp + (lane >> 4))));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          O::mma(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
          O::mma(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
  }

  // Epilogue: full row sums, normalise, stage the warp's rows in sQ (only this warp ever read
  // them), then coalesced 16-byte stores.
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    float inv[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float l = row_sum[mt][i];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[i] = 1.f / l;
    }
    const int r0 = wrow + mt * 16 + (lane >> 2);
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      const uint32_t lo = O::pack(o[mt][dt][0] * inv[0], o[mt][dt][1] * inv[0]);
      const uint32_t hi = O::pack(o[mt][dt][2] * inv[1], o[mt][dt][3] * inv[1]);
      *reinterpret_cast<uint32_t*>(sQ + swz<kD>(r0, dt) + 2 * (lane & 3)) = lo;
      *reinterpret_cast<uint32_t*>(sQ + swz<kD>(r0 + 8, dt) + 2 * (lane & 3)) = hi;
    }
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kBM * kChunks / kThreads; ++i) {
    const int c = tid + i * kThreads;
    const int r = c / kChunks, ch = c % kChunks;
    const int row = m0 + r;
    if (row < Lq) {
      *reinterpret_cast<uint4*>(o_bh + row * HD + ch * 8) =
          *reinterpret_cast<const uint4*>(sQ + swz<kD>(r, ch));
    }
  }
}

template <typename E, int kD, int kWarps, int kMT>
void launch(const SwaParams& p, cudaStream_t stream) {
  constexpr int kBM = 16 * kMT * kWarps;
  constexpr size_t smem = smem_bytes<kD, kBM, E>();
  auto kernel = swa_fwd_mma_kernel<E, kD, kWarps, kMT>;
  static std::atomic<uint64_t> configured{0};  // one bit per device
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = uint64_t{1} << (dev & 63);
  if (!(configured.load() & bit)) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    configured.fetch_or(bit);
  }
  const dim3 grid(static_cast<unsigned>((p.Lq + kBM - 1) / kBM), static_cast<unsigned>(p.H),
                  static_cast<unsigned>(p.B));
  kernel<<<grid, kWarps * 32, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// config: 0 = 4 warps x 32 rows (128-query tiles, default), 1 = 8 warps x 16 rows (128-query
// tiles, Q in registers), 2 = 4 warps x 16 rows (64-query tiles). Head dim 64 always uses 0.
template <typename E>
void launch_dtype(const SwaParams& p, int config, cudaStream_t stream) {
  if (p.D == 128) {
    if (config == 1) {
      launch<E, 128, 8, 1>(p, stream);
    } else if (config == 2) {
      launch<E, 128, 4, 1>(p, stream);
    } else {
      launch<E, 128, 4, 2>(p, stream);
    }
  } else {
    launch<E, 64, 4, 2>(p, stream);
  }
}

}  // namespace reward_forcing::cuda::mma
