# CUDA options: RF_CUDA is decided in FindTorchFromPython (on when torch has CUDA and nvcc is
# found; -DRF_CUDA=ON/OFF forces it). Architectures come from TORCH_CUDA_ARCH_LIST (default 9.0a;
# Torch's CMake ignores CMAKE_CUDA_ARCHITECTURES). CUTLASS/CuTe headers come from the
# nvidia-cutlass wheel.
option(RF_CUDA "Build the CUDA kernels" OFF)
if(RF_CUDA)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source', 'include'))"
    OUTPUT_VARIABLE CUTLASS_INCLUDE_DIR
    RESULT_VARIABLE _rf_cutlass_rc
    OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(NOT _rf_cutlass_rc EQUAL 0 OR NOT EXISTS "${CUTLASS_INCLUDE_DIR}/cute/tensor.hpp")
    message(WARNING "reward_forcing: nvidia-cutlass not found (pip install nvidia-cutlass); CuTe headers unavailable")
    set(CUTLASS_INCLUDE_DIR "")
  endif()
  message(STATUS "reward_forcing: CUDA arch list $ENV{TORCH_CUDA_ARCH_LIST}; CUTLASS ${CUTLASS_INCLUDE_DIR}")
endif()
