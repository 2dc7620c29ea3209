// Tensor-core building blocks shared by flash_attention.cu and experts.cu: mma.sync m16n8k16 (bf16 operands,
// fp32 accumulators), ldmatrix fragment loads from shared memory, and cp.async copies global → shared.
//
// Fragment layouts of mma.m16n8k16 (g = lane/4, t = lane%4):
//   A (16×16, row): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16×8, col):  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C (16×8, f32):  c0 = (g, 2t), c1 = (g, 2t+1), c2 = (g+8, 2t), c3 = (g+8, 2t+1)
// Tiles sit in shared memory row-major as they are in global memory (e.g. [key][dim], [row][k]); fragments are read with
// ldmatrix (x4: four 8×8 matrices per instruction), with .trans where the product needs the other orientation.
#pragma once
#include "common.cuh"

typedef unsigned short bf16_t;

__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi)
{
    return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
}

__device__ __forceinline__ unsigned smem_addr(const void* p)
{
    unsigned long long s;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(s) : "l"(p));
    return (unsigned)s;
}

__device__ __forceinline__ void ldsm_x4(unsigned* r, const bf16_t* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, const bf16_t* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

// A fragment (rows r0..r0+15, k0..k0+15) of a row-major tile.
__device__ __forceinline__ void frag_a(unsigned* a, const bf16_t* tile, int stride, int r0, int k0, int lane)
{
    ldsm_x4(a, tile + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * stride + k0 + (lane >> 4) * 8);
}

// B fragments of two adjacent n-tiles (n0..n0+15) × (k0..k0+15) from a tile stored [n][k] (rows are n):
// b[0], b[1] for n-tile n0; b[2], b[3] for n-tile n0+8.
__device__ __forceinline__ void frag_b_nk(unsigned* b, const bf16_t* tile, int stride, int n0, int k0, int lane)
{
    ldsm_x4(b, tile + (n0 + (lane & 7) + (lane >> 4) * 8) * stride + k0 + ((lane >> 3) & 1) * 8);
}

// The same from a tile stored [k][n] (rows are k), transposed by ldmatrix.
__device__ __forceinline__ void frag_b_kn(unsigned* b, const bf16_t* tile, int stride, int n0, int k0, int lane)
{
    ldsm_x4_trans(b, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * stride + n0 + (lane >> 4) * 8);
}

// 16 bytes global → shared, asynchronously; valid = false copies nothing and zero-fills the 16 bytes (src-size 0),
// so src must still be a legal address (callers pass the tensor's base).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }
