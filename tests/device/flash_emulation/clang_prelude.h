// Syntax/type check shim for NVRTC-style self-contained kernels under clang -x cuda -nocudainc.
#define __device__ __attribute__((device))
#define __global__ __attribute__((global))
#define __shared__ __attribute__((shared))
#define __host__ __attribute__((host))
#define __forceinline__ __attribute__((always_inline)) inline
#define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
#define __align__(n) __attribute__((aligned(n)))
#include <__clang_cuda_builtin_vars.h>
struct float2 { float x, y; };
struct uint4 { unsigned x, y, z, w; };
__device__ float2 make_float2(float, float);
__device__ uint4 make_uint4(unsigned, unsigned, unsigned, unsigned);
__device__ float __int_as_float(int);
__device__ float __uint_as_float(unsigned);
__device__ unsigned __float_as_uint(float);
__device__ int __float_as_int(float);
__device__ float __shfl_xor_sync(unsigned, float, int);
__device__ int __shfl_xor_sync(unsigned, int, int);
__device__ float __shfl_sync(unsigned, float, int);
__device__ int __shfl_sync(unsigned, int, int);
__device__ unsigned __ballot_sync(unsigned, int);
__device__ int __any_sync(unsigned, int);
__device__ float fmaf(float, float, float);
__device__ int __ffs(int);
__device__ int __popc(unsigned);
__device__ void __syncthreads();
__device__ void __syncwarp(unsigned = 0xffffffffu);
__device__ float fmaxf(float, float);
__device__ float fminf(float, float);
__device__ float exp2f(float);
__device__ float log2f(float);
__device__ float expf(float);
__device__ float logf(float);
__device__ float tanhf(float);
__device__ float sqrtf(float);
__device__ float rsqrtf(float);
__device__ float fabsf(float);
__device__ int min(int, int);
__device__ int max(int, int);
__device__ long long min(long long, long long);
__device__ long long max(long long, long long);
