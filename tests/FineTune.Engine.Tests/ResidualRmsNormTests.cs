using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

/// <summary>The fused residual add + RMSNorm against the two operations it replaces.</summary>
public sealed class ResidualRmsNormTests
{
    private readonly CpuBackend _cpu = new(2);

    [Fact]
    public void InPlaceResidualMatchesAddThenRmsNormBitForBit()
    {
        // 37 rows of 48: several ForRange chunks; the residual is summed in place into a, as the decoder layer does.
        int rows = 37, c = 48;
        float[] a = TestTensors.Random(rows * c, 11, 3f), b = TestTensors.Random(rows * c, 12), w = TestTensors.Random(c, 13);

        Tensor refSum = _cpu.F32(a, rows, c), refY = _cpu.Allocate(DType.F32, rows, c), refRstd = _cpu.Allocate(DType.F32, rows);
        _cpu.Add(refSum, _cpu.F32(b, rows, c));
        _cpu.RmsNorm(refY, refRstd, refSum, _cpu.F32(w, c), 1e-6f);

        Tensor sum = _cpu.F32(a, rows, c), y = _cpu.Allocate(DType.F32, rows, c), rstd = _cpu.Allocate(DType.F32, rows);
        _cpu.ResidualRmsNorm(sum, y, rstd, sum, _cpu.F32(b, rows, c), _cpu.F32(w, c), 1e-6f);

        Assert.Equal(_cpu.Read(refSum), _cpu.Read(sum));
        Assert.Equal(_cpu.Read(refY), _cpu.Read(y));
        Assert.Equal(_cpu.Read(refRstd), _cpu.Read(rstd));
    }

    [Fact]
    public void SeparateOutputsHoldTheSumAndItsNorm()
    {
        // One row: resid = [1, 2] + [2, 2] = [3, 4]; mean(resid²) = 12.5, rstd = 1/√12.5; y = resid·rstd·w.
        Tensor a = _cpu.F32([1f, 2f], 1, 2), b = _cpu.F32([2f, 2f], 1, 2), w = _cpu.F32([1f, 0.5f], 2);
        Tensor resid = _cpu.Allocate(DType.F32, 1, 2), y = _cpu.Allocate(DType.F32, 1, 2), rstd = _cpu.Allocate(DType.F32, 1);
        _cpu.ResidualRmsNorm(resid, y, rstd, a, b, w, 0f);
        Assert.Equal([3f, 4f], _cpu.Read(resid));
        Assert.Equal([1f, 2f], _cpu.Read(a));
        float inv = 1f / MathF.Sqrt(12.5f);
        Assert.Equal(inv, _cpu.Read(rstd)[0], 6);
        var yv = _cpu.Read(y);
        Assert.Equal(3 * inv, yv[0], 6);
        Assert.Equal(4 * inv * 0.5f, yv[1], 6);
    }
}
