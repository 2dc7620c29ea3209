# Exploration: M=1 bf16 GEMV variants for the down_proj shape (N=4096, K=14336) and friends. CuPy + NVRTC.
import cupy as cp, numpy as np, sys, json

SRC = r'''
#include <cuda_bf16.h>
__device__ __forceinline__ void unpack8(uint4 v, float* f){
  unsigned int w[4]={v.x,v.y,v.z,v.w};
#pragma unroll
  for(int i=0;i<4;i++){ f[2*i]=__uint_as_float(w[i]<<16); f[2*i+1]=__uint_as_float(w[i]&0xffff0000u);} }
__device__ __forceinline__ float warp_sum(float s){
#pragma unroll
  for(int o=16;o>0;o>>=1) s+=__shfl_xor_sync(0xffffffffu,s,o); return s;}
#define U 8
__device__ __forceinline__ void ld8(uint4 (&w)[U], const uint4* row, int q0, int end, int lane){
#pragma unroll
  for(int u=0;u<U;u++){ int q=q0+u*32+lane; w[u]= q<end ? __ldcs(row+q) : make_uint4(0,0,0,0);} }
__device__ __forceinline__ void fma8(float& acc, const uint4 (&w)[U], const uint4* a, int q0, int end, int lane){
#pragma unroll
  for(int u=0;u<U;u++){ int q=q0+u*32+lane; if(q>=end) continue; float wv[8], av[8]; unpack8(w[u],wv); unpack8(a[q],av);
    float s=0.f;
#pragma unroll
    for(int j=0;j<8;j++) s+=wv[j]*av[j]; acc+=s; } }

// v0: one warp a column, double-buffered, a from global (today's gemv_residual, M=1, C=1)
extern "C" __global__ void v0(float* y, const uint4* a, const uint4* b, int N, int chunks){
  int warp=threadIdx.x>>5, lane=threadIdx.x&31, n=blockIdx.x*(blockDim.x>>5)+warp; if(n>=N) return;
  const uint4* row=b+(size_t)n*chunks; uint4 w[U], nx[U]; ld8(w,row,0,chunks,lane); float acc=0.f;
  for(int q0=0;q0<chunks;q0+=32*U){ bool more=q0+32*U<chunks; if(more) ld8(nx,row,q0+32*U,chunks,lane); fma8(acc,w,a,q0,chunks,lane);
    if(more){
#pragma unroll
      for(int u=0;u<U;u++) w[u]=nx[u];} }
  float s=warp_sum(acc); if(lane==0) y[n]=s; }

// v1: v0 with a staged in shared memory
extern "C" __global__ void v1(float* y, const uint4* a, const uint4* b, int N, int chunks){
  extern __shared__ uint4 as[];
  int warp=threadIdx.x>>5, lane=threadIdx.x&31, n=blockIdx.x*(blockDim.x>>5)+warp;
  const uint4* row=b+(size_t)(n<N?n:0)*chunks; uint4 w[U], nx[U]; ld8(w,row,0,chunks,lane);
  for(int i=threadIdx.x;i<chunks;i+=blockDim.x) as[i]=a[i];
  __syncthreads(); if(n>=N) return; float acc=0.f;
  for(int q0=0;q0<chunks;q0+=32*U){ bool more=q0+32*U<chunks; if(more) ld8(nx,row,q0+32*U,chunks,lane); fma8(acc,w,as,q0,chunks,lane);
    if(more){
#pragma unroll
      for(int u=0;u<U;u++) w[u]=nx[u];} }
  float s=warp_sum(acc); if(lane==0) y[n]=s; }

// v2: split-K. S warps a column, segments of segc chunks (segment s = [s*segc, min((s+1)*segc, chunks))), each
// double-buffered within; partials in order by the column's first warp. blockDim = W warps, W/S columns a block.
extern "C" __global__ void v2(float* y, const uint4* a, const uint4* b, int N, int chunks, int S, int segc){
  __shared__ float part[32];
  int W=blockDim.x>>5, warp=threadIdx.x>>5, lane=threadIdx.x&31, cpb=W/S;
  int cl=warp/S, seg=warp-cl*S, n=blockIdx.x*cpb+cl;
  bool live = cl<cpb && n<N;
  float acc=0.f;
  if(live){
    const uint4* row=b+(size_t)n*chunks; int q_beg=seg*segc, q_end=min(q_beg+segc,chunks);
    uint4 w[U], nx[U]; ld8(w,row,q_beg,q_end,lane);
    for(int q0=q_beg;q0<q_end;q0+=32*U){ bool more=q0+32*U<q_end; if(more) ld8(nx,row,q0+32*U,q_end,lane); fma8(acc,w,a,q0,q_end,lane);
      if(more){
#pragma unroll
        for(int u=0;u<U;u++) w[u]=nx[u];} }
  }
  float s=warp_sum(acc); if(lane==0) part[warp]=s; __syncthreads();
  if(live && seg==0 && lane==0){ float t=part[warp]; for(int k=1;k<S;k++) t+=part[warp+k]; y[n]=t; } }


// v4: smem a, single buffer (load after fma), UU loads a lane a batch
template<int UU> __device__ void v4b(float* y, const uint4* a, const uint4* b, int N, int chunks){
  extern __shared__ uint4 as[];
  int warp=threadIdx.x>>5, lane=threadIdx.x&31, n=blockIdx.x*(blockDim.x>>5)+warp;
  const uint4* row=b+(size_t)(n<N?n:0)*chunks; uint4 w[UU];
#pragma unroll
  for(int u=0;u<UU;u++){ int q=u*32+lane; w[u]= q<chunks ? __ldcs(row+q) : make_uint4(0,0,0,0);}
  for(int i=threadIdx.x;i<chunks;i+=blockDim.x) as[i]=a[i];
  __syncthreads(); if(n>=N) return; float acc=0.f;
  for(int q0=0;q0<chunks;q0+=32*UU){
    if(q0>0){
#pragma unroll
      for(int u=0;u<UU;u++){ int q=q0+u*32+lane; w[u]= q<chunks ? __ldcs(row+q) : make_uint4(0,0,0,0);} }
#pragma unroll
    for(int u=0;u<UU;u++){ int q=q0+u*32+lane; if(q>=chunks) continue; float wv[8], av[8]; unpack8(w[u],wv); unpack8(as[q],av);
      float s=0.f;
#pragma unroll
      for(int j=0;j<8;j++) s+=wv[j]*av[j]; acc+=s; } }
  float s=warp_sum(acc); if(lane==0) y[n]=s; }
extern "C" __global__ void v4_8(float* y, const uint4* a, const uint4* b, int N, int chunks){ v4b<8>(y,a,b,N,chunks); }
extern "C" __global__ void v4_16(float* y, const uint4* a, const uint4* b, int N, int chunks){ v4b<16>(y,a,b,N,chunks); }
// v5: v2 with a in shared memory
extern "C" __global__ void v5(float* y, const uint4* a, const uint4* b, int N, int chunks, int S, int segc){
  extern __shared__ uint4 as[];
  __shared__ float part[32];
  int W=blockDim.x>>5, warp=threadIdx.x>>5, lane=threadIdx.x&31, cpb=W/S;
  int cl=warp/S, seg=warp-cl*S, n=blockIdx.x*cpb+cl;
  bool live = cl<cpb && n<N;
  float acc=0.f;
  const uint4* row=b+(size_t)(live?n:0)*chunks; int q_beg=seg*segc, q_end=min(q_beg+segc,chunks);
  uint4 w[U], nx[U]; ld8(w,row,q_beg,live?q_end:0,lane);
  for(int i=threadIdx.x;i<chunks;i+=blockDim.x) as[i]=a[i];
  __syncthreads();
  if(live){
    for(int q0=q_beg;q0<q_end;q0+=32*U){ bool more=q0+32*U<q_end; if(more) ld8(nx,row,q0+32*U,q_end,lane); fma8(acc,w,as,q0,q_end,lane);
      if(more){
#pragma unroll
        for(int u=0;u<U;u++) w[u]=nx[u];} }
  }
  float s=warp_sum(acc); if(lane==0) part[warp]=s; __syncthreads();
  if(live && seg==0 && lane==0){ float t=part[warp]; for(int k=1;k<S;k++) t+=part[warp+k]; y[n]=t; } }

// v3: pure read: every thread sums its grid-stride share of b (what the chip streams with nothing else)
extern "C" __global__ void v3(float* y, const uint4* b, long long total){
  long long i=blockIdx.x*(long long)blockDim.x+threadIdx.x, st=(long long)gridDim.x*blockDim.x; float acc=0.f;
  for(;i+3*st<total;i+=4*st){ uint4 v0=__ldcs(b+i), v1=__ldcs(b+i+st), v2=__ldcs(b+i+2*st), v3=__ldcs(b+i+3*st);
    acc+=__uint_as_float(v0.x)+__uint_as_float(v1.y)+__uint_as_float(v2.z)+__uint_as_float(v3.w);}
  for(;i<total;i+=st) acc+=__uint_as_float(b[i].x);
  if(acc==12345.f) y[0]=acc; }
'''
mod = cp.RawModule(code=SRC, options=('-std=c++17', '--gpu-architecture=sm_90'))
k0, k1, k2, k3, k48, k416, k5 = (mod.get_function(n) for n in ('v0', 'v1', 'v2', 'v3', 'v4_8', 'v4_16', 'v5'))
for k in (k1, k48, k416, k5): k.max_dynamic_shared_size_bytes = 64 * 1024

def bench(fn, reps=200):
    for _ in range(5): fn(0)
    cp.cuda.Device().synchronize()
    ts = []
    for r in range(reps // 10):
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record()
        for i in range(10): fn(r * 10 + i)
        e1.record(); e1.synchronize()
        ts.append(cp.cuda.get_elapsed_time(e0, e1) / 10)
    return float(np.median(ts))

def shape(N, K, nbuf):
    rng = cp.random.default_rng(1)
    bs = [(rng.standard_normal((N, K), dtype=cp.float32) * 0.02).astype(cp.float32) for _ in range(nbuf)]
    # bf16 bits by truncation of float32 (enough for timing and for the value check below)
    bb = [cp.ascontiguousarray((x.view(cp.uint32) >> 16).astype(cp.uint16)) for x in bs]
    a32 = rng.standard_normal(K, dtype=cp.float32)
    ab = cp.ascontiguousarray((a32.view(cp.uint32) >> 16).astype(cp.uint16))
    aref = (ab.astype(cp.uint32) << 16).view(cp.float32)
    ref = ((bb[0].astype(cp.uint32) << 16).view(cp.float32) @ aref)
    return bb, ab, ref

out = {}
for (N, K) in [(4096, 14336), (2048, 6144), (28672, 4096), (6144, 4096), (4096, 4096), (4096, 2048), (151936, 2048)]:
    nbuf = max(1, min(8, int(np.ceil(200e6 / (N * K * 2)))))
    bb, ab, ref = shape(N, K, nbuf)
    chunks = K // 8
    y = cp.zeros(N, cp.float32)
    byts = N * K * 2
    res = {}
    def chk(name):
        err = float(cp.linalg.norm(y - ref) / cp.linalg.norm(ref)); y.fill(cp.nan); return err
    def run(name, k, W, args, smem=0, g=None):
        g = g or (N + W - 1) // W
        t = bench(lambda r: k((g,), (32 * W,), (y, ab, bb[r % nbuf]) + args, shared_mem=smem)); k((g,), (32 * W,), (y, ab, bb[0]) + args, shared_mem=smem)
        res[name] = (t, chk(name))
    base = (np.int32(N), np.int32(chunks))
    for W in (4, 8, 16):
        run(f'v0 W{W}', k0, W, base)
        run(f'v1 W{W}', k1, W, base, chunks * 16)
        run(f'v4u8 W{W}', k48, W, base, chunks * 16)
        run(f'v4u16 W{W}', k416, W, base, chunks * 16)
    for S in (2, 4, 7):
        segc = ((chunks + S - 1) // S + 31) // 32 * 32
        if S * segc < chunks or (S - 1) * segc >= chunks or segc < 128: continue
        for W in (8, 16):
            if W % S and W < S: continue
            cpb = W // S
            run(f'v5 S{S} even{segc} W{W}', k5, W, base + (np.int32(S), np.int32(segc)), chunks * 16, (N + cpb - 1) // cpb)
    total = N * chunks
    for g in (132 * 4, 132 * 8, 132 * 16):
        t = bench(lambda r: k3((g,), (256,), (y, bb[r % nbuf], np.int64(total))))
        res[f'v3 read g{g}'] = (t, 0.0)
    print(f'== N={N} K={K} ({byts/1e6:.1f} MB, {nbuf} buffers)')
    for k, (t, e) in sorted(res.items(), key=lambda kv: kv[1][0]):
        print(f'  {k:24s} {t*1000:8.2f} us  {byts/t/1e6:7.0f} GB/s  rel {e:.1e}')
    out[f'{N}x{K}'] = {k: [t, e] for k, (t, e) in res.items()}
    del bb
    cp.get_default_memory_pool().free_all_blocks()
json.dump(out, open(sys.argv[1] if len(sys.argv) > 1 else '/tmp/gemv_lab.json', 'w'), indent=1)
