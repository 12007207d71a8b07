// fp16 instantiations of the tensor-core sink_window_attention (kernel in swa_mma.cuh); a
// translation unit of its own so that the dtypes compile in parallel.
#include "cuda/swa_mma.cuh"

namespace reward_forcing::cuda {
void launch_swa_mma_fp16(const SwaParams& p, int config, cudaStream_t stream) {
  mma::launch_dtype<__half>(p, config, stream);
}
}  // namespace reward_forcing::cuda
