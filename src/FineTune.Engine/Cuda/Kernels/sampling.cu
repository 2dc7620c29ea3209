// Sampling on the device: each row's pick with TokenSampling's semantics (FineTune.Engine/Sampling/TokenSampling.cs),
// one int per row back to the host. Per row, one block of SAMPLE_THREADS threads:
//   w = logits (F32 scratch row), repetition penalty on the seen ids (CTRL: l/p if l ≥ 0, l·p if l < 0);
//   greedy: the first index of the largest w;
//   sampling: w = (float)(w / T) in double; the C best (C = top_k, or MAX_CAND when top_k is 0 or larger) found by a
//   radix select on order-preserving keys (NaN lowest, ±0 equal), ties taken by lower id; those C sorted (bitonic,
//   value descending then id ascending); then one thread does the host's arithmetic in the host's order, in double:
//   p_i = exp(w_i − w_0), sums in order, the top-p cut, u·sum walked down the kept list.
// When top_k is 0 or above MAX_CAND the mass outside the candidates (the tail) is summed too; a top-p cut or a draw
// that would land in the tail is left to the host (out = −1), which repeats the pick with the same uniform.
#include "common.cuh"

#define SAMPLE_THREADS 1024
#define MAX_CAND 1024

// Order-preserving key: larger float ⇒ larger key; NaN below everything; −0 and +0 one key (float.CompareTo ties them).
__device__ __forceinline__ unsigned sample_key(float f)
{
    if (f != f) return 0u;
    unsigned b = f == 0.0f ? 0u : __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ double param_double(const int* p)
{
    unsigned long long bits = (unsigned long long)(unsigned)p[0] | ((unsigned long long)(unsigned)p[1] << 32);
    return __longlong_as_double((long long)bits);
}

// a before b in the kept order: larger key, then lower id.
__device__ __forceinline__ bool sample_before(unsigned ka, int ia, unsigned kb, int ib)
{
    return ka > kb || (ka == kb && ia < ib);
}

__device__ __forceinline__ void sample_better(float& v, int& i, float ov, int oi)
{
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
}

// Exclusive prefix sum of v over the block (blockDim.x a multiple of 32); *total gets the block's sum.
__device__ int sample_exclusive_scan(int v, int* total)
{
    __shared__ int sums[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int x = v;
    for (int o = 1; o < 32; o <<= 1)
    {
        int y = __shfl_up_sync(FULL_MASK, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) sums[warp] = x;
    __syncthreads();
    if (warp == 0)
    {
        int s = lane < warps ? sums[lane] : 0;
        for (int o = 1; o < 32; o <<= 1)
        {
            int y = __shfl_up_sync(FULL_MASK, s, o);
            if (lane >= o) s += y;
        }
        sums[lane] = s;
    }
    __syncthreads();
    int before = warp > 0 ? sums[warp - 1] : 0;
    *total = sums[warps - 1];
    __syncthreads();
    return before + x - v;
}

// One block per row. params: SamplingRow.Ints (12) ints per row; scratch: F32 [rows, V].
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows(const void* x, int dt, const int* params, const int* seen, int* out, float* scratch, int V)
{
    __shared__ unsigned hist[256];
    __shared__ unsigned ck[MAX_CAND];
    __shared__ int ci[MAX_CAND];
    __shared__ double probs[MAX_CAND];
    __shared__ double red[SAMPLE_THREADS];
    __shared__ float bv[32];
    __shared__ int bi[32];
    __shared__ int sh_digit, sh_rem;

    int tid = threadIdx.x, nt = blockDim.x, r = blockIdx.x;
    const int* pr = params + (i64)r * 12;
    int do_sample = pr[0], top_k = pr[1], seen_start = pr[2], seen_count = pr[3];
    double temp = param_double(pr + 4), top_p = param_double(pr + 6), pen = param_double(pr + 8), u = param_double(pr + 10);
    float* w = scratch + (i64)r * V;
    i64 base = (i64)r * V;

    for (int i = tid; i < V; i += nt) w[i] = ld(x, base + i, dt);
    __syncthreads();
    if (pen != 1.0)
    {
        for (int j = tid; j < seen_count; j += nt)
        {
            int id = seen[seen_start + j];
            if ((unsigned)id >= (unsigned)V) continue;
            float l = w[id];
            w[id] = l < 0.0f ? (float)((double)l * pen) : (float)((double)l / pen);
        }
        __syncthreads();
    }

    int lane = tid & 31, warp = tid >> 5, warps = nt >> 5;
    if (!do_sample)
    {
        float v = -INFINITY;
        int best = 0x7fffffff;
        for (int i = tid; i < V; i += nt) sample_better(v, best, w[i], i);
        for (int o = 16; o > 0; o >>= 1) sample_better(v, best, __shfl_xor_sync(FULL_MASK, v, o), __shfl_xor_sync(FULL_MASK, best, o));
        if (lane == 0) { bv[warp] = v; bi[warp] = best; }
        __syncthreads();
        if (warp != 0) return;
        v = lane < warps ? bv[lane] : -INFINITY;
        best = lane < warps ? bi[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) sample_better(v, best, __shfl_xor_sync(FULL_MASK, v, o), __shfl_xor_sync(FULL_MASK, best, o));
        if (lane == 0) out[r] = best == 0x7fffffff ? 0 : best;
        return;
    }

    for (int i = tid; i < V; i += nt) w[i] = (float)((double)w[i] / temp);
    __syncthreads();
    int K = top_k > 0 && top_k < V ? top_k : V;
    bool partial = K > MAX_CAND;
    int C = partial ? MAX_CAND : K;

    // Radix select: the key T of the C-th best and how many keys equal to T are kept (the lowest ids).
    unsigned prefix = 0u, mask = 0u;
    int rem = C;
    for (int shift = 24; shift >= 0; shift -= 8)
    {
        for (int i = tid; i < 256; i += nt) hist[i] = 0u;
        __syncthreads();
        for (int i = tid; i < V; i += nt)
        {
            unsigned k = sample_key(w[i]);
            if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0)
        {
            int acc = 0, d = 255;
            for (; d > 0; d--)
            {
                if (acc + (int)hist[d] >= rem) break;
                acc += (int)hist[d];
            }
            sh_digit = d;
            sh_rem = rem - acc;
        }
        __syncthreads();
        prefix |= (unsigned)sh_digit << shift;
        mask |= 255u << shift;
        rem = sh_rem;
        __syncthreads();
    }
    unsigned T = prefix;
    int need = rem;

    // Compaction in id order: thread t owns ids [t·chunk, (t+1)·chunk), so prefix sums of the per-thread counts give
    // each kept id its place and the tie rank of each key equal to T.
    int chunk = (V + nt - 1) / nt, lo = min(V, tid * chunk), hi = min(V, lo + chunk);
    int gt = 0, eq = 0;
    for (int i = lo; i < hi; i++)
    {
        unsigned k = sample_key(w[i]);
        gt += k > T;
        eq += k == T;
    }
    int total_gt, total_eq;
    int gt_off = sample_exclusive_scan(gt, &total_gt);
    int eq_off = sample_exclusive_scan(eq, &total_eq);
    int P = 1;
    while (P < C) P <<= 1;
    for (int i = tid; i < P; i += nt) { ck[i] = 0u; ci[i] = 0x7fffffff; }
    __syncthreads();
    for (int i = lo; i < hi; i++)
    {
        unsigned k = sample_key(w[i]);
        if (k > T) { ck[gt_off] = k; ci[gt_off] = i; gt_off++; }
        else if (k == T && eq_off < need) { ck[total_gt + eq_off] = k; ci[total_gt + eq_off] = i; eq_off++; }
    }
    __syncthreads();

    // Bitonic sort of the P (≥ C, padded with sentinels that sort last) candidates into the kept order.
    for (int size = 2; size <= P; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1)
        {
            for (int i = tid; i < P; i += nt)
            {
                int j = i ^ stride;
                if (j <= i) continue;
                bool up = (i & size) == 0;
                bool swap = up ? sample_before(ck[j], ci[j], ck[i], ci[i]) : sample_before(ck[i], ci[i], ck[j], ci[j]);
                if (swap)
                {
                    unsigned tk = ck[i]; ck[i] = ck[j]; ck[j] = tk;
                    int ti = ci[i]; ci[i] = ci[j]; ci[j] = ti;
                }
            }
            __syncthreads();
        }

    double mx = (double)w[ci[0]];
    if (partial)
    {
        // Mass of the ids left out, each thread over its own range in id order, then a fixed tree: deterministic.
        double tail = 0.0;
        for (int i = lo; i < hi; i++)
            if (sample_key(w[i]) < T) tail += exp((double)w[i] - mx);
        red[tid] = tail;
        __syncthreads();
        for (int s = nt >> 1; s > 0; s >>= 1)
        {
            if (tid < s) red[tid] += red[tid + s];
            __syncthreads();
        }
    }
    if (tid != 0) return;
    // Keys equal to T beyond the kept ones are part of the tail too (each has the mass of T's value).
    double tail_mass = 0.0;
    if (partial)
    {
        tail_mass = red[0];
        int left_eq = total_eq - need;
        if (left_eq > 0) tail_mass += (double)left_eq * exp((double)w[ci[C - 1]] - mx);
    }
    double sum = 0.0;
    for (int i = 0; i < C; i++) { double p = exp((double)w[ci[i]] - mx); probs[i] = p; sum += p; }
    double total = sum + tail_mass;
    int keep = C;
    if (top_p < 1.0)
    {
        double acc = 0.0;
        int cut = -1;
        for (int i = 0; i < C; i++)
        {
            acc += probs[i] / total;
            if (acc >= top_p) { cut = i + 1; break; }
        }
        if (cut < 0)
        {
            if (partial) { out[r] = -1; return; }
            cut = C;
        }
        keep = cut > 1 ? cut : 1;
        sum = 0.0;
        for (int i = 0; i < keep; i++) sum += probs[i];
    }
    else sum = total;
    double uu = u * sum;
    for (int i = 0; i < keep; i++)
    {
        uu -= probs[i];
        if (uu < 0.0) { out[r] = ci[i]; return; }
    }
    out[r] = partial && top_p >= 1.0 ? -1 : ci[keep - 1];
}
