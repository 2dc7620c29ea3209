// CPU emulation of the CUDA primitives flash_attention.cu uses: every thread of a block is a ucontext; block and warp
// barriers switch between them; warp collectives (shfl, ballot, ldmatrix, mma) exchange through per-warp slots.
#pragma once
#include <ucontext.h>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <vector>
#include <functional>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct float2 { float x, y; };
struct uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline float2 make_float2(float a, float b) { return {a, b}; }
struct ThreadCtx { ucontext_t uc; dim3 idx; bool done = false; std::vector<char> stack; };
extern std::vector<ThreadCtx> g_threads;
extern int g_cur, g_nthreads;
extern ucontext_t g_sched;
extern dim3 blockIdx, gridDim, blockDim;
#define threadIdx (g_threads[g_cur].idx)
inline void yield_() { swapcontext(&g_threads[g_cur].uc, &g_sched); }
// generation barriers
struct Barrier { int count = 0, gen = 0; };
extern Barrier g_block_bar; extern Barrier g_warp_bar[32];
inline void bar_wait(Barrier& b, int n) { int gen = b.gen; if (++b.count == n) { b.count = 0; b.gen++; return; } while (b.gen == gen) yield_(); }
inline void __syncthreads() { bar_wait(g_block_bar, g_nthreads); }
inline int warp_id() { return threadIdx.x / 32; }
inline int lane_id() { return threadIdx.x % 32; }
inline void warp_bar() { bar_wait(g_warp_bar[warp_id()], 32); }
inline void __syncwarp(unsigned = 0xffffffffu) { warp_bar(); }
struct Slot { unsigned u[8]; const void* p; float f; };
extern Slot g_slots[32][32];
inline Slot& my_slot() { return g_slots[warp_id()][lane_id()]; }
inline Slot& slot(int l) { return g_slots[warp_id()][l]; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); } // common.cuh's RMSNorm helpers (unused by the flash kernels)
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline float __shfl_xor_sync(unsigned, float v, int o) { my_slot().f = v; warp_bar(); float r = slot(lane_id() ^ o).f; warp_bar(); return r; }
inline float __shfl_sync(unsigned, float v, int src) { my_slot().f = v; warp_bar(); float r = slot(src).f; warp_bar(); return r; }
inline unsigned __ballot_sync(unsigned, int pred) { my_slot().u[0] = pred ? 1 : 0; warp_bar(); unsigned r = 0; for (int l = 0; l < 32; l++) if (slot(l).u[0]) r |= 1u << l; warp_bar(); return r; }
inline int __any_sync(unsigned m, int pred) { return __ballot_sync(m, pred) != 0; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned short f32_to_bf16_emu(float f)
{
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffff) > 0x7f800000) return (u >> 16) | 0x40;
    unsigned r = u + 0x7fff + ((u >> 16) & 1);
    return r >> 16;
}
inline float bf(unsigned short h) { return __uint_as_float(((unsigned)h) << 16); }
