using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

/// <summary>
/// The finite-difference check every backward on the CPU reference shares: the analytic gradient against central
/// differences of a scalar loss L = Σ w ⊙ forward(x), as one relative error ‖g − ĝ‖/‖ĝ‖.
/// </summary>
internal static class FiniteDifferences
{
    public const double Tolerance = 1e-3;

    /// <summary>Asserts the analytic gradient <paramref name="grad"/> of L with respect to the host values <paramref name="x"/>
    /// of <paramref name="input"/> (re-uploaded after each perturbation) within <see cref="Tolerance"/>.</summary>
    public static void AssertGradient(CpuBackend cpu, Tensor grad, float[] x, Tensor input, Func<double> loss) =>
        AssertGradient(cpu.Read(grad), x, v => cpu.Upload(input, v), loss);

    /// <summary>As above, for a loss that reads <paramref name="x"/> itself (<paramref name="upload"/> does whatever else it needs).</summary>
    public static void AssertGradient(float[] grad, float[] x, Action<float[]> upload, Func<double> loss, double scale = 1.0)
    {
        var numeric = TestTensors.NumericGradient(x, upload, loss);
        for (int i = 0; i < numeric.Length; i++) numeric[i] *= scale;
        Assert.InRange(TestTensors.RelativeError(grad, numeric), 0, Tolerance);
    }

    /// <summary>
    /// Attention's backward (dq, dk, dv) against finite differences of Σ dy ⊙ Attention(q, k, v) on random q, k, v
    /// (seeds 10, 11, 12; dy seed 13), q and k drawn from ±<paramref name="qkRange"/>, with the given segments per token.
    /// </summary>
    public static void AssertAttentionBackward(CpuBackend cpu, AttentionShape shape, int[] segments, float qkRange = 1f)
    {
        int rows = shape.Batch * shape.QueryLen, qd = shape.QueryHeads * shape.HeadDim, kvd = shape.KvHeads * shape.HeadDim;
        float[] q = TestTensors.Random(rows * qd, 10, qkRange), k = TestTensors.Random(rows * kvd, 11, qkRange), v = TestTensors.Random(rows * kvd, 12);
        float[] dy = TestTensors.Random(rows * qd, 13);
        Tensor seg = cpu.I32(segments, rows);
        Tensor tq = cpu.F32(q, rows, qd), tk = cpu.F32(k, rows, kvd), tv = cpu.F32(v, rows, kvd);
        Tensor o = cpu.Allocate(DType.F32, rows, qd), lse = cpu.Allocate(DType.F32, shape.Batch * shape.QueryHeads * shape.QueryLen);
        double Loss()
        {
            cpu.Attention(o, lse, tq, tk, tv, seg, shape);
            return TestTensors.Dot(cpu.Read(o), dy);
        }
        Loss();
        Tensor dq = cpu.Allocate(DType.F32, rows, qd), dk = cpu.Allocate(DType.F32, rows, kvd), dv = cpu.Allocate(DType.F32, rows, kvd);
        cpu.AttentionBackward(dq, dk, dv, cpu.F32(dy, rows, qd), o, lse, tq, tk, tv, seg, shape);
        AssertGradient(cpu, dq, q, tq, Loss);
        AssertGradient(cpu, dk, k, tk, Loss);
        AssertGradient(cpu, dv, v, tv, Loss);
    }
}
