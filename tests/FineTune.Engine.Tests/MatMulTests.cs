using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

public sealed class MatMulTests
{
    private static double[] Naive(float[] a, bool ta, float[] b, bool tb, int m, int n, int k)
    {
        var c = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++)
                    s += (double)(ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
                c[i * n + j] = s;
            }
        return c;
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void MatchesNaiveProductForEveryTransposeAcrossBlockEdges(bool ta, bool tb)
    {
        var cpu = new CpuBackend(2);
        int m = 157, n = 75, k = 401; // crosses the 144-row, 192-deep and 16/32-wide block edges
        float[] a = TestTensors.Random(m * k, 1), b = TestTensors.Random(k * n, 2);
        var ta_ = cpu.F32(a, ta ? [k, m] : [m, k]);
        var tb_ = cpu.F32(b, tb ? [n, k] : [k, n]);
        var tc = cpu.Allocate(DType.F32, m, n);
        cpu.MatMul(tc, ta_, ta, tb_, tb);
        double err = TestTensors.RelativeError(cpu.Read(tc), Naive(a, ta, b, tb, m, n, k));
        Assert.True(err < 1e-6, $"relative error {err}");
    }

    [Fact]
    public void AccumulateAddsAlphaTimesProductToExistingValues()
    {
        var cpu = new CpuBackend(2);
        int m = 9, n = 40, k = 33;
        float[] a = TestTensors.Random(m * k, 3), b = TestTensors.Random(n * k, 4), c0 = TestTensors.Random(m * n, 5);
        var tc = cpu.F32((float[])c0.Clone(), m, n);
        cpu.MatMul(tc, cpu.F32(a, m, k), false, cpu.F32(b, n, k), true, alpha: 0.5f, accumulate: true);
        double[] expected = Naive(a, false, b, true, m, n, k);
        for (int i = 0; i < expected.Length; i++) expected[i] = c0[i] + 0.5 * expected[i];
        Assert.True(TestTensors.RelativeError(cpu.Read(tc), expected) < 1e-6);
    }

    [Fact]
    public void FewRowsTimesTransposedWeightUsesDotPathWithSameResult()
    {
        var cpu = new CpuBackend(2);
        int m = 3, n = 130, k = 70;
        float[] a = TestTensors.Random(m * k, 6), b = TestTensors.Random(n * k, 7);
        var tc = cpu.Allocate(DType.F32, m, n);
        cpu.MatMul(tc, cpu.F32(a, m, k), false, cpu.F32(b, n, k), true);
        Assert.True(TestTensors.RelativeError(cpu.Read(tc), Naive(a, false, b, true, m, n, k)) < 1e-6);
    }

    [Fact]
    public void ResultsAreBitIdenticalAcrossThreadCounts()
    {
        int m = 300, n = 200, k = 500;
        float[] a = TestTensors.Random(m * k, 8), b = TestTensors.Random(n * k, 9);
        float[] Run(int threads)
        {
            var cpu = new CpuBackend(threads);
            var tc = cpu.Allocate(DType.F32, m, n);
            cpu.MatMul(tc, cpu.F32(a, m, k), false, cpu.F32(b, n, k), true);
            return cpu.Read(tc);
        }
        Assert.Equal(Run(1), Run(2));
        Assert.Equal(Run(2), Run(7));
    }
}
