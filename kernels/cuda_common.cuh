// Device and launch helpers shared by every CUDA kernel file (*.cu only).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace wsc {
namespace cuda_common {

// V elements moved as one 16-byte (V*sizeof(T) bytes) memory transaction.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};
template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) { return *reinterpret_cast<const Pack<T, V>*>(p); }
template <int V, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& x) { *reinterpret_cast<Pack<T, V>*>(p) = x; }

// Grid-stride loop bounds.
__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Throws with the CUDA error string so the binding reports which launch failed.
inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

inline int64_t sm_count() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return sms > 0 ? sms : 1;
}

// Enough blocks of `threads` to fill the GPU several times over (at least one); grid-stride
// loops cover the rest.
inline int grid_blocks(int64_t work_items, int threads) {
  const int64_t cap = sm_count() * 32;
  const int64_t needed = (work_items + threads - 1) / threads;
  return static_cast<int>(needed < 1 ? 1 : (needed < cap ? needed : cap));
}

// Stream-ordered scratch from cudaMallocAsync, released on the same stream when this object dies
// (also on errors); `op` names the caller in the allocation error.
class StreamScratch {
 public:
  StreamScratch(size_t bytes, cudaStream_t stream, const char* op) : stream_(stream) {
    if (bytes == 0) return;
    const cudaError_t err = cudaMallocAsync(&base_, bytes, stream);
    if (err != cudaSuccess) {
      cudaGetLastError();
      base_ = nullptr;
      throw std::runtime_error(std::string(op) + " (CUDA): cudaMallocAsync of " + std::to_string(bytes) +
                               " bytes of scratch failed: " + cudaGetErrorString(err));
    }
  }
  ~StreamScratch() {
    if (base_) cudaFreeAsync(base_, stream_);
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  template <typename U>
  U* at(size_t offset) const { return reinterpret_cast<U*>(static_cast<unsigned char*>(base_) + offset); }

 private:
  void* base_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace cuda_common
}  // namespace wsc
