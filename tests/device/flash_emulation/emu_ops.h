// Emulated tensor-core and async-copy helpers (replace the asm ones of flash_attention.cu).
inline float lo16(unsigned w) { return bf(w & 0xffff); }
inline float hi16(unsigned w) { return bf(w >> 16); }
inline void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
    Slot& s = my_slot();
    for (int i = 0; i < 4; i++) s.u[i] = a[i];
    s.u[4] = b0; s.u[5] = b1;
    warp_bar();
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; l++)
    {
        int g = l / 4, t = l % 4; Slot& o = slot(l);
        A[g][2*t] = lo16(o.u[0]); A[g][2*t+1] = hi16(o.u[0]);
        A[g+8][2*t] = lo16(o.u[1]); A[g+8][2*t+1] = hi16(o.u[1]);
        A[g][2*t+8] = lo16(o.u[2]); A[g][2*t+9] = hi16(o.u[2]);
        A[g+8][2*t+8] = lo16(o.u[3]); A[g+8][2*t+9] = hi16(o.u[3]);
        B[2*t][g] = lo16(o.u[4]); B[2*t+1][g] = hi16(o.u[4]);
        B[2*t+8][g] = lo16(o.u[5]); B[2*t+9][g] = hi16(o.u[5]);
    }
    warp_bar();
    int g = lane_id() / 4, t = lane_id() % 4;
    int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2*t, 2*t+1, 2*t, 2*t+1};
    for (int e = 0; e < 4; e++) { float acc = 0; for (int k = 0; k < 16; k++) acc += A[rows[e]][k] * B[k][cols[e]]; c[e] += acc; }
}
inline void ldsm_any(unsigned* r, const bf16_t* p, bool trans)
{
    my_slot().p = p;
    warp_bar();
    int l = lane_id();
    for (int m = 0; m < 4; m++)
    {
        if (!trans)
        {
            const bf16_t* row = (const bf16_t*)slot(m * 8 + l / 4).p;
            r[m] = (unsigned)row[2 * (l % 4)] | ((unsigned)row[2 * (l % 4) + 1] << 16);
        }
        else
        {
            const bf16_t* r0 = (const bf16_t*)slot(m * 8 + 2 * (l % 4)).p;
            const bf16_t* r1 = (const bf16_t*)slot(m * 8 + 2 * (l % 4) + 1).p;
            r[m] = (unsigned)r0[l / 4] | ((unsigned)r1[l / 4] << 16);
        }
    }
    warp_bar();
}
inline void ldsm_x4(unsigned* r, const bf16_t* p) { ldsm_any(r, p, false); }
inline void ldsm_x4_trans(unsigned* r, const bf16_t* p) { ldsm_any(r, p, true); }
extern unsigned char smem[];
extern size_t g_smem_bytes;
inline void check_smem(const void* d, int n)
{
    const unsigned char* p = (const unsigned char*)d;
    if (p < smem || p + n > smem + g_smem_bytes) { fprintf(stderr, "shared memory out of bounds: offset %ld (+%d) of %zu\n", (long)(p - smem), n, g_smem_bytes); abort(); }
    if (((uintptr_t)p) % n) { fprintf(stderr, "misaligned cp.async %d\n", n); abort(); }
}
inline void cp_async16(void* dst, const void* src, bool valid) { check_smem(dst, 16); if (valid) memcpy(dst, src, 16); else memset(dst, 0, 16); }
inline void cp_async4(void* dst, const void* src, bool valid) { check_smem(dst, 4); if (valid) memcpy(dst, src, 4); else memset(dst, 0, 4); }
inline void cp_async_commit() {}
template <int N> inline void cp_async_wait() {}
// The 32-bit shared-address forms (mma.cuh): an address is the byte offset into the emulated shared memory.
inline unsigned smem_addr(const void* p) { return (unsigned)((const unsigned char*)p - smem); }
inline void ldsm_x4_at(unsigned* r, unsigned addr) { ldsm_any(r, (const bf16_t*)(smem + addr), false); }
inline void ldsm_x4_trans_at(unsigned* r, unsigned addr) { ldsm_any(r, (const bf16_t*)(smem + addr), true); }
inline void cp_async16_at(unsigned dst, const void* src, bool valid) { cp_async16(smem + dst, src, valid); }
inline float exp2_ftz(float x) { float r = exp2f(x); return r < 1.17549435e-38f ? 0.0f : r; }
inline unsigned pack_bf16(float lo, float hi) { return (unsigned)f32_to_bf16_emu(lo) | ((unsigned)f32_to_bf16_emu(hi) << 16); }
