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
