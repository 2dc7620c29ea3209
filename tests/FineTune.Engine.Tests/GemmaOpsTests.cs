using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

/// <summary>
/// Gemma's operations on the CPU reference: (1 + w) RMSNorm, GeGLU with tanh GELU, soft-capping, and attention with a
/// sliding window, a logit soft-cap and a query scale — backwards against central finite differences, forwards
/// against values computed by hand from transformers' formulas.
/// </summary>
public sealed class GemmaOpsTests
{
    private readonly CpuBackend _cpu = new(2);

    [Fact]
    public void Offset_rmsnorm_scales_by_one_plus_w_and_its_backward_matches_finite_differences()
    {
        int rows = 3, c = 8;
        float[] x = TestTensors.Random(rows * c, 1), w = TestTensors.Random(c, 2, 0.3f), dy = TestTensors.Random(rows * c, 3);
        Tensor tx = _cpu.F32(x, rows, c), tw = _cpu.F32(w, c), y = _cpu.Allocate(DType.F32, rows, c), rstd = _cpu.Allocate(DType.F32, rows);
        double Loss()
        {
            _cpu.RmsNorm(y, rstd, tx, tw, 1e-6f, weightOffset: 1f);
            return TestTensors.Dot(_cpu.Read(y), dy);
        }
        Loss();
        // y = x / sqrt(mean(x²) + eps) · (1 + w), row 1 column 5 by hand.
        double ms = 0;
        for (int j = 0; j < c; j++) ms += (double)x[c + j] * x[c + j];
        double expected = x[c + 5] / Math.Sqrt(ms / c + 1e-6) * (1 + w[5]);
        Assert.Equal(expected, _cpu.Read(y)[c + 5], 5);
        Tensor dx = _cpu.Allocate(DType.F32, rows, c), dw = _cpu.Allocate(DType.F32, c);
        _cpu.RmsNormBackward(dx, dw, _cpu.F32(dy, rows, c), tx, tw, rstd, weightOffset: 1f);
        FiniteDifferences.AssertGradient(_cpu, dx, x, tx, Loss);
        FiniteDifferences.AssertGradient(_cpu, dw, w, tw, Loss);
    }

    [Fact]
    public void Offset_residual_rmsnorm_equals_add_then_offset_norm()
    {
        int rows = 2, c = 6;
        float[] a = TestTensors.Random(rows * c, 4), b = TestTensors.Random(rows * c, 5), w = TestTensors.Random(c, 6);
        Tensor ta = _cpu.F32(a, rows, c), tb = _cpu.F32(b, rows, c), tw = _cpu.F32(w, c);
        Tensor resid = _cpu.Allocate(DType.F32, rows, c), y = _cpu.Allocate(DType.F32, rows, c), rstd = _cpu.Allocate(DType.F32, rows);
        _cpu.ResidualRmsNorm(resid, y, rstd, ta, tb, tw, 1e-6f, weightOffset: 1f);
        var sum = _cpu.F32(a.Zip(b, (p, q) => p + q).ToArray(), rows, c);
        Tensor y2 = _cpu.Allocate(DType.F32, rows, c), r2 = _cpu.Allocate(DType.F32, rows);
        _cpu.RmsNorm(y2, r2, sum, tw, 1e-6f, weightOffset: 1f);
        Assert.Equal(_cpu.Read(y2), _cpu.Read(y));
    }

    [Fact]
    public void GeGlu_is_tanh_gelu_times_up_and_its_backward_matches_finite_differences()
    {
        int n = 12;
        float[] g = TestTensors.Random(n, 30, 3f), u = TestTensors.Random(n, 31), dy = TestTensors.Random(n, 32);
        Tensor tg = _cpu.F32(g, n), tu = _cpu.F32(u, n), h = _cpu.Allocate(DType.F32, n);
        double Loss()
        {
            _cpu.GeGlu(h, tg, tu);
            return TestTensors.Dot(_cpu.Read(h), dy);
        }
        Loss();
        // torch.nn.functional.gelu(x, approximate="tanh") at x = 1: 0.8411920071 (times up).
        var h1 = _cpu.Allocate(DType.F32, 1);
        _cpu.GeGlu(h1, _cpu.F32([1f], 1), _cpu.F32([2f], 1));
        Assert.Equal(2 * 0.8411920071, _cpu.Read(h1)[0], 5);
        Tensor dg = _cpu.Allocate(DType.F32, n), du = _cpu.Allocate(DType.F32, n);
        _cpu.GeGluBackward(dg, du, _cpu.F32(dy, n), tg, tu);
        FiniteDifferences.AssertGradient(_cpu, dg, g, tg, Loss);
        FiniteDifferences.AssertGradient(_cpu, du, u, tu, Loss);
    }

    [Fact]
    public void Softcap_backward_from_the_output_matches_finite_differences()
    {
        int n = 10;
        float[] x = TestTensors.Random(n, 40, 60f), dy = TestTensors.Random(n, 41);
        Tensor tx = _cpu.F32(x, n), y = _cpu.Allocate(DType.F32, n);
        double Loss()
        {
            _cpu.SoftCap(y, tx, 30f);
            return TestTensors.Dot(_cpu.Read(y), dy);
        }
        Loss();
        Assert.Equal(30 * Math.Tanh(x[3] / 30.0), _cpu.Read(y)[3], 4);
        var dx = _cpu.F32(dy, n);
        _cpu.SoftCapBackward(dx, y, 30f);
        FiniteDifferences.AssertGradient(_cpu, dx, x, tx, Loss);
    }

    [Theory]
    [InlineData(2, 0f)]
    [InlineData(0, 1.5f)]
    [InlineData(3, 0.8f)]
    public void Windowed_softcapped_attention_backward_matches_finite_differences(int window, float cap) =>
        FiniteDifferences.AssertAttentionBackward(_cpu,
            AttentionShape.Training(2, 6, 4, 2, 4) with { Variant = new AttentionVariant(window, cap, 0.7f) },
            [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1], qkRange: 2f);

    [Fact]
    public void A_window_of_two_lets_a_query_see_itself_and_the_key_before_only()
    {
        int t = 4, d = 2;
        var shape = AttentionShape.Training(1, t, 1, 1, d) with { Variant = new AttentionVariant(Window: 2) };
        // Zero queries: uniform weights over the visible keys, so each output is the mean of the visible values.
        float[] v = [1, 0, 2, 0, 3, 0, 4, 0];
        Tensor o = _cpu.Allocate(DType.F32, t, d), lse = _cpu.Allocate(DType.F32, t);
        _cpu.Attention(o, lse, _cpu.F32(new float[t * d], t, d), _cpu.F32(TestTensors.Random(t * d, 21), t, d), _cpu.F32(v, t, d), _cpu.I32([0, 0, 0, 0], t), shape);
        float[] r = _cpu.Read(o);
        Assert.Equal([1f, 1.5f, 2.5f, 3.5f], [r[0], r[2], r[4], r[6]]);
    }

    [Fact]
    public void Cached_attention_with_window_and_softcap_equals_the_training_forward()
    {
        int t = 7, hq = 2, hkv = 1, d = 4;
        var variant = new AttentionVariant(3, 1.2f, 0.6f);
        float[] q = TestTensors.Random(t * hq * d, 50, 2f), k = TestTensors.Random(t * hkv * d, 51, 2f), v = TestTensors.Random(t * hkv * d, 52);
        Tensor tq = _cpu.F32(q, t, hq * d), tk = _cpu.F32(k, t, hkv * d), tv = _cpu.F32(v, t, hkv * d);
        Tensor o = _cpu.Allocate(DType.F32, t, hq * d), lse = _cpu.Allocate(DType.F32, hq * t);
        _cpu.Attention(o, lse, tq, tk, tv, _cpu.I32(new int[t], t), AttentionShape.Training(1, t, hq, hkv, d) with { Variant = variant });
        Tensor oc = _cpu.Allocate(DType.F32, t, hq * d);
        _cpu.CachedAttention(oc, tq, tk, tv, _cpu.I32(new int[t], t), _cpu.I32(Enumerable.Range(0, t).ToArray(), t), _cpu.I32([0], 1),
            new CachedAttentionShape(t, 1, t, 1, hq, hkv, d) { Variant = variant });
        float[] a = _cpu.Read(o), c = _cpu.Read(oc);
        for (int i = 0; i < a.Length; i++) Assert.Equal(a[i], c[i], 5);
    }
}
