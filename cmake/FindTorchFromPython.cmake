# Find the Torch that is installed in the Python we build for (never another one: the extension
# must load into exactly that torch, docs/design.md §3 "Build").
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import torch, sys; print(torch.utils.cmake_prefix_path); print(torch.__version__); print(int(torch.version.cuda is not None)); print(torch._C._GLIBCXX_USE_CXX11_ABI)"
  OUTPUT_VARIABLE _rf_torch_info
  RESULT_VARIABLE _rf_torch_rc
  ERROR_VARIABLE _rf_torch_err
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _rf_torch_rc EQUAL 0)
  message(FATAL_ERROR
    "reward_forcing: could not import torch from ${Python_EXECUTABLE}.\n"
    "Install torch first and build without isolation:\n"
    "  pip install torch==<version> && pip install --no-build-isolation .\n${_rf_torch_err}")
endif()
string(REPLACE "\n" ";" _rf_torch_info "${_rf_torch_info}")
list(GET _rf_torch_info 0 _rf_torch_prefix)
list(GET _rf_torch_info 1 RF_TORCH_VERSION)
list(GET _rf_torch_info 2 RF_TORCH_HAS_CUDA)
list(APPEND CMAKE_PREFIX_PATH "${_rf_torch_prefix}")

if(RF_TORCH_HAS_CUDA AND NOT DEFINED RF_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(RF_CUDA ON)
  else()
    set(RF_CUDA OFF)
  endif()
endif()
if(NOT RF_TORCH_HAS_CUDA AND RF_CUDA)
  message(FATAL_ERROR "reward_forcing: -DRF_CUDA=ON but torch ${RF_TORCH_VERSION} has no CUDA")
endif()
if(RF_CUDA)
  if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT DEFINED TORCH_CUDA_ARCH_LIST)
    set(ENV{TORCH_CUDA_ARCH_LIST} "9.0a")   # Torch's CMake reads the arch list from here
  endif()
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 20)
endif()

find_package(Torch REQUIRED)
# libtorch_python carries the pybind11 type casters for at::Tensor.
find_library(RF_TORCH_PYTHON_LIBRARY torch_python PATHS "${TORCH_INSTALL_PREFIX}/lib" REQUIRED)
message(STATUS "reward_forcing: torch ${RF_TORCH_VERSION}, CUDA build: ${RF_CUDA}")
