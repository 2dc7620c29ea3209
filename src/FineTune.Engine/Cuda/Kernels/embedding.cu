// Token embedding: gather rows of the table, and the scatter-add backward.
#include "common.cuh"

// out[i, :] = table[ids[i], :]; an id outside [0, vocab) gives a zero row (the host validates ids before upload).
extern "C" __global__ void embedding_forward(void* out, int dt_out, const void* table, int dt_t, const int* ids, i64 n, int cols, int vocab)
{
    GRID_STRIDE(e, n * cols)
    {
        i64 row = e / cols;
        int c = (int)(e - row * cols);
        int id = ids[row];
        st(out, e, (id >= 0 && id < vocab) ? ld(table, (i64)id * cols + c, dt_t) : 0.0f, dt_out);
    }
}

// embedding_forward with out and table BF16, cols % 8 == 0 and 16-byte aligned rows (cols8 = cols / 8): one warp per
// row, 16 bytes per load and store. A copy, so the same bits as the scalar kernel (whose widen-and-round is exact).
// It is also the experts' row gather (xs = ln2[sorted_token], rows × hidden), hence the care.
extern "C" __global__ void embedding_forward_v8(uint4* out, const uint4* table, const int* ids, i64 n, int cols8, int vocab)
{
    i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= n) return;
    int id = ids[row];
    bool valid = id >= 0 && id < vocab;
    const uint4* src = table + (valid ? (i64)id * cols8 : 0);
    uint4* dst = out + row * cols8;
    for (int c = threadIdx.x & 31; c < cols8; c += 32) dst[c] = valid ? src[c] : make_uint4(0u, 0u, 0u, 0u);
}

// BF16 atomic add through a compare-and-swap on the aligned 32-bit word that holds the half-word.
__device__ __forceinline__ void atomic_add_bf16(unsigned short* addr, float v)
{
    unsigned* word = (unsigned*)((size_t)addr & ~(size_t)3);
    unsigned shift = ((size_t)addr & 2) ? 16 : 0;
    unsigned old = *word, assumed;
    do
    {
        assumed = old;
        float cur = bf16_to_f32((unsigned short)(assumed >> shift));
        unsigned updated = (assumed & ~(0xffffu << shift)) | ((unsigned)f32_to_bf16(cur + v) << shift);
        old = atomicCAS(word, assumed, updated);
    } while (old != assumed);
}

// dtable[ids[i], :] += dout[i, :] (atomics: repeated ids add up). dtable is F32 (a gradient) or BF16 (an activation
// gradient, e.g. the LM head's rows scattered back to every position).
extern "C" __global__ void embedding_backward(void* dtable, int dt_t, const void* dout, int dt_d, const int* ids, i64 n, int cols, int vocab)
{
    GRID_STRIDE(e, n * cols)
    {
        i64 row = e / cols;
        int c = (int)(e - row * cols);
        int id = ids[row];
        if (id < 0 || id >= vocab) continue;
        i64 dst = (i64)id * cols + c;
        float v = ld(dout, e, dt_d);
        if (dt_t == FT_BF16) atomic_add_bf16((unsigned short*)dtable + dst, v);
        else atomicAdd((float*)dtable + dst, v);
    }
}
