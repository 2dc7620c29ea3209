using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace FineTune.Engine.Cpu;

// Cache-blocked GEMM in the BLIS/GotoBLAS layout: op(B) is packed once into K-blocks of NR-wide column
// panels, each task packs MR-high row panels of op(A) for one K-block, and a register-blocked MR×NR
// micro-kernel (FMA on Vector512 or Vector256) walks the panels. Every element of C sums its K-blocks in
// ascending order and each C tile belongs to exactly one task, so results do not depend on scheduling.
public sealed unsafe partial class CpuBackend
{
    private const int MR = 6;
    private const int KC = 192;
    private const int MC = 144;
    private static readonly int NR = Vector512.IsHardwareAccelerated ? 32 : 16;

    private float[] _packedB = [];

    public void MatMul(Tensor c, Tensor a, bool transA, Tensor b, bool transB, float alpha = 1f, bool accumulate = false)
    {
        int m = transA ? a.Cols : a.Rows, k = transA ? a.Rows : a.Cols;
        int kb = transB ? b.Cols : b.Rows, n = transB ? b.Rows : b.Cols;
        if (k != kb || c.Cols != n || c.Length != (long)m * n)
            throw new ArgumentException($"matmul shapes do not agree: C {c} = op(A {a}, T={transA})·op(B {b}, T={transB})");
        float* pa = F(a), pb = F(b), pc = F(c);
        if (m == 0 || n == 0) return;
        if (k == 0)
        {
            if (!accumulate) new Span<float>(pc, checked(m * n)).Clear();
            return;
        }
        if (m <= 4 && !transA && transB)
        {
            GemvRows(pc, pa, pb, m, n, k, alpha, accumulate);
            return;
        }
        Gemm(pc, pa, transA, pb, transB, m, n, k, alpha, accumulate);
    }

    /// <summary>Few rows times a transposed weight: each output is one dot product (decoding path).</summary>
    private void GemvRows(float* pc, float* pa, float* pb, int m, int n, int k, float alpha, bool accumulate)
    {
        ForRange(n, 64, (s, e) =>
        {
            for (int i = 0; i < m; i++)
            {
                var x = new ReadOnlySpan<float>(pa + (long)i * k, k);
                for (int j = s; j < e; j++)
                {
                    float dot = alpha * TensorPrimitives.Dot(x, new ReadOnlySpan<float>(pb + (long)j * k, k));
                    float* dst = pc + (long)i * n + j;
                    *dst = accumulate ? *dst + dot : dot;
                }
            }
        });
    }

    private void Gemm(float* pc, float* pa, bool transA, float* pb, bool transB, int m, int n, int k, float alpha, bool accumulate)
    {
        int nr = NR;
        int panels = (n + nr - 1) / nr;
        int npad = panels * nr;
        long packedLength = (long)k * npad;
        if (_packedB.Length < packedLength) _packedB = GC.AllocateUninitializedArray<float>(checked((int)packedLength), pinned: true);
        int lda = transA ? m : k, ldb = transB ? k : n;
        int kBlocks = (k + KC - 1) / KC;
        fixed (float* bp = _packedB)
        {
            float* bpk = bp;
            // Pack op(B): block p0 (height kc) starts at p0·npad; its panel jp at + jp·kc·nr; element (p, jj) at p·nr + jj.
            ForRange(panels, 4, (s, e) =>
            {
                for (int jp = s; jp < e; jp++)
                {
                    int j0 = jp * nr, w = Math.Min(nr, n - j0);
                    for (int kbI = 0; kbI < kBlocks; kbI++)
                    {
                        int p0 = kbI * KC, kc = Math.Min(KC, k - p0);
                        float* dst = bpk + (long)p0 * npad + (long)jp * kc * nr;
                        if (transB)
                        {
                            for (int jj = 0; jj < nr; jj++)
                            {
                                if (jj < w)
                                {
                                    float* src = pb + (long)(j0 + jj) * ldb + p0;
                                    for (int p = 0; p < kc; p++) dst[p * nr + jj] = src[p];
                                }
                                else for (int p = 0; p < kc; p++) dst[p * nr + jj] = 0f;
                            }
                        }
                        else
                        {
                            for (int p = 0; p < kc; p++)
                            {
                                float* src = pb + (long)(p0 + p) * ldb + j0;
                                float* d = dst + p * nr;
                                for (int jj = 0; jj < w; jj++) d[jj] = src[jj];
                                for (int jj = w; jj < nr; jj++) d[jj] = 0f;
                            }
                        }
                    }
                }
            });

            int mBlocks = (m + MC - 1) / MC;
            int nSplit = mBlocks >= 2 * Threads ? 1 : Math.Min(panels, (2 * Threads + mBlocks - 1) / mBlocks);
            int panelsPerSplit = (panels + nSplit - 1) / nSplit;
            nSplit = (panels + panelsPerSplit - 1) / panelsPerSplit;
            For(mBlocks * nSplit, task =>
            {
                int mb = task / nSplit, ns = task % nSplit;
                int i0 = mb * MC, mc = Math.Min(MC, m - i0);
                int jpStart = ns * panelsPerSplit, jpEnd = Math.Min(panels, jpStart + panelsPerSplit);
                float[] aBuf = System.Buffers.ArrayPool<float>.Shared.Rent(((MC + MR - 1) / MR) * MR * KC);
                try
                {
                    fixed (float* ap = aBuf)
                    {
                        for (int kbI = 0; kbI < kBlocks; kbI++)
                        {
                            int p0 = kbI * KC, kc = Math.Min(KC, k - p0);
                            PackA(ap, pa, transA, lda, i0, mc, p0, kc);
                            bool add = accumulate || kbI > 0;
                            for (int jp = jpStart; jp < jpEnd; jp++)
                            {
                                int j0 = jp * nr, w = Math.Min(nr, n - j0);
                                float* bpanel = bpk + (long)p0 * npad + (long)jp * kc * nr;
                                for (int ir = 0; ir < mc; ir += MR)
                                {
                                    int h = Math.Min(MR, mc - ir);
                                    float* cTile = pc + (long)(i0 + ir) * n + j0;
                                    if (nr == 32) Kernel6x32(kc, ap + (long)ir * kc, bpanel, cTile, n, alpha, add, h, w);
                                    else Kernel6x16(kc, ap + (long)ir * kc, bpanel, cTile, n, alpha, add, h, w);
                                }
                            }
                        }
                    }
                }
                finally { System.Buffers.ArrayPool<float>.Shared.Return(aBuf); }
            });
        }
    }

    /// <summary>Packs rows [i0, i0+mc) × K-block [p0, p0+kc) of op(A) as MR-high panels: element (r, p) at panel·kc·MR + p·MR + r.</summary>
    private static void PackA(float* ap, float* pa, bool transA, int lda, int i0, int mc, int p0, int kc)
    {
        for (int ir = 0; ir < mc; ir += MR)
        {
            int h = Math.Min(MR, mc - ir);
            float* dst = ap + (long)ir * kc;
            if (transA)
            {
                for (int p = 0; p < kc; p++)
                {
                    float* src = pa + (long)(p0 + p) * lda + i0 + ir;
                    float* d = dst + p * MR;
                    for (int r = 0; r < h; r++) d[r] = src[r];
                    for (int r = h; r < MR; r++) d[r] = 0f;
                }
            }
            else
            {
                for (int r = 0; r < MR; r++)
                {
                    if (r < h)
                    {
                        float* src = pa + (long)(i0 + ir + r) * lda + p0;
                        for (int p = 0; p < kc; p++) dst[p * MR + r] = src[p];
                    }
                    else for (int p = 0; p < kc; p++) dst[p * MR + r] = 0f;
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x32(int kc, float* a, float* b, float* c, int ldc, float alpha, bool add, int h, int w)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector512<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> b0 = Vector512.Load(b), b1 = Vector512.Load(b + 16);
            Vector512<float> x = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(x, b0, c00); c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(a[1]);
            c10 = Vector512.FusedMultiplyAdd(x, b0, c10); c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(a[2]);
            c20 = Vector512.FusedMultiplyAdd(x, b0, c20); c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(a[3]);
            c30 = Vector512.FusedMultiplyAdd(x, b0, c30); c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(a[4]);
            c40 = Vector512.FusedMultiplyAdd(x, b0, c40); c41 = Vector512.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(a[5]);
            c50 = Vector512.FusedMultiplyAdd(x, b0, c50); c51 = Vector512.FusedMultiplyAdd(x, b1, c51);
            a += MR;
            b += 32;
        }
        Vector512<float> va = Vector512.Create(alpha);
        if (h == MR && w == 32)
        {
            Store512(c, c00, c01, va, add); Store512(c + ldc, c10, c11, va, add); Store512(c + 2 * ldc, c20, c21, va, add);
            Store512(c + 3 * ldc, c30, c31, va, add); Store512(c + 4 * ldc, c40, c41, va, add); Store512(c + 5 * ldc, c50, c51, va, add);
            return;
        }
        float* t = stackalloc float[MR * 32];
        (c00 * va).Store(t); (c01 * va).Store(t + 16); (c10 * va).Store(t + 32); (c11 * va).Store(t + 48);
        (c20 * va).Store(t + 64); (c21 * va).Store(t + 80); (c30 * va).Store(t + 96); (c31 * va).Store(t + 112);
        (c40 * va).Store(t + 128); (c41 * va).Store(t + 144); (c50 * va).Store(t + 160); (c51 * va).Store(t + 176);
        StoreEdge(t, 32, c, ldc, add, h, w);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store512(float* c, Vector512<float> x0, Vector512<float> x1, Vector512<float> alpha, bool add)
    {
        if (add)
        {
            Vector512.FusedMultiplyAdd(x0, alpha, Vector512.Load(c)).Store(c);
            Vector512.FusedMultiplyAdd(x1, alpha, Vector512.Load(c + 16)).Store(c + 16);
        }
        else
        {
            (x0 * alpha).Store(c);
            (x1 * alpha).Store(c + 16);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x16(int kc, float* a, float* b, float* c, int ldc, float alpha, bool add, int h, int w)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < kc; p++)
        {
            Vector256<float> b0 = Vector256.Load(b), b1 = Vector256.Load(b + 8);
            Vector256<float> x = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(x, b0, c00); c01 = Vector256.FusedMultiplyAdd(x, b1, c01);
            x = Vector256.Create(a[1]);
            c10 = Vector256.FusedMultiplyAdd(x, b0, c10); c11 = Vector256.FusedMultiplyAdd(x, b1, c11);
            x = Vector256.Create(a[2]);
            c20 = Vector256.FusedMultiplyAdd(x, b0, c20); c21 = Vector256.FusedMultiplyAdd(x, b1, c21);
            x = Vector256.Create(a[3]);
            c30 = Vector256.FusedMultiplyAdd(x, b0, c30); c31 = Vector256.FusedMultiplyAdd(x, b1, c31);
            x = Vector256.Create(a[4]);
            c40 = Vector256.FusedMultiplyAdd(x, b0, c40); c41 = Vector256.FusedMultiplyAdd(x, b1, c41);
            x = Vector256.Create(a[5]);
            c50 = Vector256.FusedMultiplyAdd(x, b0, c50); c51 = Vector256.FusedMultiplyAdd(x, b1, c51);
            a += MR;
            b += 16;
        }
        float* t = stackalloc float[MR * 16];
        Vector256<float> va = Vector256.Create(alpha);
        (c00 * va).Store(t); (c01 * va).Store(t + 8); (c10 * va).Store(t + 16); (c11 * va).Store(t + 24);
        (c20 * va).Store(t + 32); (c21 * va).Store(t + 40); (c30 * va).Store(t + 48); (c31 * va).Store(t + 56);
        (c40 * va).Store(t + 64); (c41 * va).Store(t + 72); (c50 * va).Store(t + 80); (c51 * va).Store(t + 88);
        StoreEdge(t, 16, c, ldc, add, h, w);
    }

    private static void StoreEdge(float* t, int nr, float* c, int ldc, bool add, int h, int w)
    {
        for (int r = 0; r < h; r++)
        {
            float* src = t + r * nr;
            float* dst = c + (long)r * ldc;
            if (add) for (int j = 0; j < w; j++) dst[j] += src[j];
            else for (int j = 0; j < w; j++) dst[j] = src[j];
        }
    }
}
