# Lab (FineTune issue 14): the Qwen3-1.7B decode step's GEMV chain (28 layers x qkv 4096x2048, o 2048x2048,
# gate/up 12288x2048, down 2048x6144, then the LM head 151936x2048; bf16 weights, M = 1) as 113 launches replayed from a
# CUDA graph (`plain`, decode.cu's per-column arithmetic: a warp a column, the weight batch loaded before the input is
# staged in shared memory) against one persistent kernel (`persist`) whose blocks stay resident and meet at a grid
# barrier between stages; each warp loads its first column's weight batch of the next stage before it waits at the
# barrier (weights never depend on the stage before). Same arithmetic per column: the last stage's bits must agree.
import cupy as cp, numpy as np, json, sys

SRC = r'''
typedef unsigned long long u64;
struct Stage { const uint4* w; const uint4* x; unsigned short* y; int N; int chunks; };
__device__ __forceinline__ void unpack8(uint4 v, float* f){
  unsigned int w[4]={v.x,v.y,v.z,v.w};
#pragma unroll
  for(int i=0;i<4;i++){ f[2*i]=__uint_as_float(w[i]<<16); f[2*i+1]=__uint_as_float(w[i]&0xffff0000u);} }
__device__ __forceinline__ float warp_sum(float s){
#pragma unroll
  for(int o=16;o>0;o>>=1) s+=__shfl_xor_sync(0xffffffffu,s,o); return s;}
__device__ __forceinline__ unsigned short bf16(float f){ unsigned u=__float_as_uint(f); return (unsigned short)((u+0x7fffu+((u>>16)&1u))>>16); }
#define U 8
__device__ __forceinline__ void ldb(uint4 (&w)[U], const uint4* row, int q0, int chunks, int lane){
#pragma unroll
  for(int u=0;u<U;u++){ int q=q0+u*32+lane; w[u]= q<chunks ? __ldcs(row+q) : make_uint4(0,0,0,0);} }
__device__ __forceinline__ void fmab(float& acc, const uint4 (&w)[U], const uint4* xs, int q0, int chunks, int lane){
#pragma unroll
  for(int u=0;u<U;u++){ int q=q0+u*32+lane; if(q>=chunks) continue; float wv[8], av[8]; unpack8(w[u],wv); unpack8(xs[q],av);
    float s=0.f;
#pragma unroll
    for(int j=0;j<8;j++) s+=wv[j]*av[j]; acc+=s; } }
// A column whose first batch is in w already; single buffer (the next batch loaded after the arithmetic).
__device__ __forceinline__ float column(uint4 (&w)[U], const uint4* row, const uint4* xs, int chunks, int lane){
  float acc=0.f;
  for(int q0=0;q0<chunks;q0+=32*U){ if(q0>0) ldb(w,row,q0,chunks,lane); fmab(acc,w,xs,q0,chunks,lane); }
  return warp_sum(acc); }

extern "C" __global__ void plain(const Stage* st, int s){
  extern __shared__ uint4 xs[];
  Stage S=st[s];
  int warp=threadIdx.x>>5, lane=threadIdx.x&31, n=blockIdx.x*(blockDim.x>>5)+warp;
  const uint4* row=S.w+(size_t)(n<S.N?n:0)*S.chunks; uint4 w[U]; ldb(w,row,0,S.chunks,lane);
  for(int i=threadIdx.x;i<S.chunks;i+=blockDim.x) xs[i]=S.x[i];
  __syncthreads(); if(n>=S.N) return;
  float v=column(w,row,xs,S.chunks,lane); if(lane==0) S.y[n]=bf16(v); }

// bar[0]: arrivals (never reset; launch `epoch` waits for epoch*nst*gridDim.x + s*gridDim.x before stage s), bar[1]: timeouts.
extern "C" __global__ void persist(const Stage* st, int nst, unsigned* bar, unsigned epoch, int pf){
  extern __shared__ uint4 xs[];
  int W=blockDim.x>>5, warp=threadIdx.x>>5, lane=threadIdx.x&31, gw=blockIdx.x*W+warp, GW=gridDim.x*W;
  unsigned base=epoch*(unsigned)nst*gridDim.x;
  for(int s=0;s<nst;s++){
    Stage S=st[s];
    uint4 w[U]; int n=gw;
    if(n<S.N) ldb(w,S.w+(size_t)n*S.chunks,0,S.chunks,lane);
    if(s>0){
      if(pf && n+GW<S.N){ const char* r=(const char*)(S.w+(size_t)(n+GW)*S.chunks); for(int b=lane*128;b<S.chunks*16;b+=32*128) asm volatile("prefetch.global.L2 [%0];"::"l"(r+b)); }
      if(threadIdx.x==0){
        unsigned want=base+(unsigned)s*gridDim.x; long long spins=0;
        while(*(volatile unsigned*)bar<want){ if(++spins>(1ll<<22)){ atomicAdd(bar+1,1u); break; } }
        __threadfence();
      }
      __syncthreads();
    }
    for(int i=threadIdx.x;i<S.chunks;i+=blockDim.x) xs[i]=__ldcg(S.x+i);
    __syncthreads();
    for(;n<S.N;n+=GW){
      const uint4* row=S.w+(size_t)n*S.chunks;
      float v=column(w,row,xs,S.chunks,lane);
      if(n+GW<S.N) ldb(w,S.w+(size_t)(n+GW)*S.chunks,0,S.chunks,lane);
      if(lane==0) S.y[n]=bf16(v);
    }
    __syncthreads();
    if(threadIdx.x==0){ __threadfence(); atomicAdd(bar,1u); }
  }
}
'''

def main():
    out = sys.argv[1] if len(sys.argv) > 1 else '/tmp/persist_lab.json'
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props['name'].decode() if isinstance(props['name'], bytes) else props['name']
    sms = props['multiProcessorCount']
    peak = 4.8e12 if 'H200' in name else 3.35e12
    mod = cp.RawModule(code=SRC, options=('-std=c++17', '--gpu-architecture=sm_90'))
    kplain, kpersist = mod.get_function('plain'), mod.get_function('persist')
    H, I, Q, KV, L, V = 2048, 6144, 2048, 1024, 28, 151936
    shapes = []
    for _ in range(L): shapes += [(Q + 2 * KV, H), (H, H), (2 * I, H), (H, I)]
    shapes.append((V, H))
    rng = cp.random.default_rng(7)
    def weight(n, k):
        x = rng.standard_normal((n, k), dtype=cp.float32) * float(1.0 / np.sqrt(k))
        return cp.ascontiguousarray((x.view(cp.uint32) >> 16).astype(cp.uint16))
    ws = [weight(n, k) for (n, k) in shapes]
    total = sum(n * k * 2 for n, k in shapes)
    bufs = [cp.zeros(V, cp.uint16) for _ in range(2)]
    x0 = weight(1, H)[0]
    bufs[1][:H] = x0
    rec = np.zeros(len(shapes), dtype=[('w', 'u8'), ('x', 'u8'), ('y', 'u8'), ('N', 'i4'), ('c', 'i4')])
    for s, (n, k) in enumerate(shapes):
        rec[s] = (ws[s].data.ptr, bufs[(s + 1) % 2].data.ptr, bufs[s % 2].data.ptr, n, k // 8)
    st = cp.asarray(rec.view(np.uint8))
    nst = np.int32(len(shapes))
    stream = cp.cuda.Stream(non_blocking=True)
    dev.synchronize()
    res = {'device': name, 'sms': sms, 'bytes': total, 'peak_Bps': peak}

    def reset():
        bufs[1][:H] = x0
    def timeit(step, reps=30):
        with stream:
            for _ in range(3): reset(); step()
            stream.synchronize()
            ts = []
            for _ in range(reps):
                reset()
                e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                e0.record(stream); step(); e1.record(stream); e1.synchronize()
                ts.append(cp.cuda.get_elapsed_time(e0, e1))
        return float(np.median(ts))

    for W in (8, 16):
        kplain.max_dynamic_shared_size_bytes = 48 * 1024
        def launches():
            for s, (n, k) in enumerate(shapes):
                kplain(((n + W - 1) // W,), (32 * W,), (st, np.int32(s)), shared_mem=k * 2, stream=stream)
        with stream:
            stream.begin_capture()
            launches()
            g = stream.end_capture()
        t = timeit(lambda: g.launch(stream))
        ref = bufs[(len(shapes) - 1) % 2].copy()
        res[f'plain graph W{W}'] = t
        print(f'plain graph W{W}: {t:.4f} ms  {total / t / 1e6:.0f} GB/s  {100 * total / (t * 1e-3) / peak:.1f} % of peak', flush=True)
    bar = cp.zeros(2, cp.uint32)
    epoch = [0]
    for W, per_sm, pf in ((8, 1, 0), (8, 2, 0), (8, 3, 0), (16, 1, 0), (16, 2, 0), (32, 1, 0), (8, 2, 1), (16, 1, 1)):
        try:
            fit = cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(kpersist.ptr, 32 * W, I * 2)
        except Exception as e:
            fit = None
        if fit is not None and fit < per_sm:
            print(f'persist W{W} {per_sm}/SM: only {fit} blocks fit an SM; skipped', flush=True); continue
        bar.fill(0); epoch[0] = 0
        dev.synchronize()
        grid = sms * per_sm
        def one():
            kpersist((grid,), (32 * W,), (st, nst, bar, np.uint32(epoch[0]), np.int32(pf)), shared_mem=I * 2, stream=stream)
            epoch[0] += 1
        with stream:
            reset(); one(); stream.synchronize()
        if int(bar[1].get()):
            print(f'persist W{W} {per_sm}/SM pf{pf}: the grid barrier timed out (blocks not co-resident?)', flush=True); continue
        try:
            t = timeit(one)
        except Exception as e:
            print(f'persist W{W} x{per_sm} pf{pf}: {e}', flush=True); continue
        timeouts = int(bar[1].get())
        same = bool(cp.array_equal(bufs[(len(shapes) - 1) % 2], ref))
        res[f'persist W{W} x{per_sm} pf{pf}'] = [t, same, timeouts]
        print(f'persist W{W} {per_sm}/SM pf{pf}: {t:.4f} ms  {total / t / 1e6:.0f} GB/s  {100 * total / (t * 1e-3) / peak:.1f} % of peak  bits {"same" if same else "DIFFER"}  timeouts {timeouts}', flush=True)
    json.dump(res, open(out, 'w'), indent=1)

main()
