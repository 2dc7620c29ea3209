using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

/// <summary>Each operation's backward against central finite differences of L = Σ w ⊙ forward(x).</summary>
public sealed class GradientCheckTests
{
    private readonly CpuBackend _cpu = new(2);

    [Fact]
    public void RmsNormBackwardMatchesFiniteDifferences()
    {
        int rows = 3, c = 8;
        float[] x = TestTensors.Random(rows * c, 1), w = TestTensors.Random(c, 2), dy = TestTensors.Random(rows * c, 3);
        for (int i = 0; i < c; i++) w[i] += 1.5f;
        Tensor tx = _cpu.F32(x, rows, c), tw = _cpu.F32(w, c), y = _cpu.Allocate(DType.F32, rows, c), rstd = _cpu.Allocate(DType.F32, rows);
        double Loss()
        {
            _cpu.RmsNorm(y, rstd, tx, tw, 1e-5f);
            return TestTensors.Dot(_cpu.Read(y), dy);
        }
        Loss();
        Tensor dx = _cpu.Allocate(DType.F32, rows, c), dw = _cpu.Allocate(DType.F32, c);
        _cpu.RmsNormBackward(dx, dw, _cpu.F32(dy, rows, c), tx, tw, rstd);
        FiniteDifferences.AssertGradient(_cpu, dx, x, tx, Loss);
        FiniteDifferences.AssertGradient(_cpu, dw, w, tw, Loss);
    }

    [Fact]
    public void RmsNormBackwardAccumulatesIntoExistingGradient()
    {
        float[] x = TestTensors.Random(8, 4), w = TestTensors.Random(8, 5), dy = TestTensors.Random(8, 6);
        Tensor tx = _cpu.F32(x, 1, 8), tw = _cpu.F32(w, 8), y = _cpu.Allocate(DType.F32, 1, 8), rstd = _cpu.Allocate(DType.F32, 1);
        _cpu.RmsNorm(y, rstd, tx, tw, 1e-6f);
        Tensor once = _cpu.Allocate(DType.F32, 1, 8), twice = _cpu.Allocate(DType.F32, 1, 8), tdy = _cpu.F32(dy, 1, 8);
        _cpu.RmsNormBackward(once, null, tdy, tx, tw, rstd);
        _cpu.RmsNormBackward(twice, null, tdy, tx, tw, rstd);
        _cpu.RmsNormBackward(twice, null, tdy, tx, tw, rstd);
        float[] a = _cpu.Read(once), b = _cpu.Read(twice);
        for (int i = 0; i < 8; i++) Assert.Equal(2 * a[i], b[i], 6);
    }

    [Fact]
    public void RmsNormBackwardWithoutAccumulateWritesTheBitsOfAZeroedGradient()
    {
        float[] x = TestTensors.Random(24, 4), w = TestTensors.Random(8, 5), dy = TestTensors.Random(24, 6);
        Tensor tx = _cpu.F32(x, 3, 8), tw = _cpu.F32(w, 8), y = _cpu.Allocate(DType.F32, 3, 8), rstd = _cpu.Allocate(DType.F32, 3), tdy = _cpu.F32(dy, 3, 8);
        _cpu.RmsNorm(y, rstd, tx, tw, 1e-6f);
        Tensor zeroed = _cpu.Allocate(DType.F32, 3, 8), written = _cpu.F32(TestTensors.Random(24, 9, 100f), 3, 8);
        _cpu.RmsNormBackward(zeroed, null, tdy, tx, tw, rstd);
        _cpu.RmsNormBackward(written, null, tdy, tx, tw, rstd, accumulate: false);
        Assert.Equal(_cpu.Read(zeroed), _cpu.Read(written));
        Assert.Contains(_cpu.Read(written), v => v != 0);
    }

    [Fact]
    public void InverseRopeIsTheBackwardOfRope()
    {
        int n = 4, heads = 2, d = 8, half = d / 2, maxPos = 16;
        float[] x = TestTensors.Random(n * heads * d, 7), dy = TestTensors.Random(n * heads * d, 8);
        var cos = new float[maxPos * half];
        var sin = new float[maxPos * half];
        for (int p = 0; p < maxPos; p++)
            for (int i = 0; i < half; i++)
            {
                double a = p * Math.Pow(10000, -2.0 * i / d);
                cos[p * half + i] = (float)Math.Cos(a);
                sin[p * half + i] = (float)Math.Sin(a);
            }
        Tensor tc = _cpu.F32(cos, maxPos, half), ts = _cpu.F32(sin, maxPos, half), pos = _cpu.I32([3, 0, 9, 15], n);
        Tensor tx = _cpu.F32(x, n, heads * d);
        double Loss()
        {
            var y = _cpu.F32(x, n, heads * d);
            _cpu.Rope(y, pos, tc, ts, d, inverse: false);
            return TestTensors.Dot(_cpu.Read(y), dy);
        }
        var g = _cpu.F32(dy, n, heads * d);
        _cpu.Rope(g, pos, tc, ts, d, inverse: true);
        FiniteDifferences.AssertGradient(_cpu.Read(g), x, _ => { }, Loss);
    }

    [Theory]
    [InlineData(4, 4)]
    [InlineData(4, 2)]
    [InlineData(2, 1)]
    public void AttentionBackwardMatchesFiniteDifferencesWithPackedSegments(int qHeads, int kvHeads) =>
        // Row 0 packs sequences of 2 and 3 tokens; row 1 has 4 tokens and one padding token.
        FiniteDifferences.AssertAttentionBackward(_cpu, AttentionShape.Training(2, 5, qHeads, kvHeads, 4), [0, 0, 1, 1, 1, 0, 0, 0, 0, 1]);

    [Fact]
    public void AttentionDoesNotLookAcrossSegmentsOrIntoTheFuture()
    {
        int t = 4, d = 2;
        var shape = AttentionShape.Training(1, t, 1, 1, d);
        float[] q = TestTensors.Random(t * d, 20), k = TestTensors.Random(t * d, 21), v = [1, 0, 2, 0, 3, 0, 4, 0];
        Tensor o = _cpu.Allocate(DType.F32, t, d), lse = _cpu.Allocate(DType.F32, t);
        _cpu.Attention(o, lse, _cpu.F32(q, t, d), _cpu.F32(k, t, d), _cpu.F32(v, t, d), _cpu.I32([0, 0, 1, 1], t), shape);
        float[] r = _cpu.Read(o);
        Assert.Equal(1f, r[0]);                 // first token sees only itself
        Assert.Equal(3f, r[4]);                 // first token of segment 1 sees only itself, not segment 0
        Assert.InRange(r[6], 3f, 4f);           // last token mixes tokens 2 and 3 only
    }

    [Fact]
    public void SwiGluBackwardMatchesFiniteDifferences()
    {
        int n = 12;
        float[] g = TestTensors.Random(n, 30, 3f), u = TestTensors.Random(n, 31), dy = TestTensors.Random(n, 32);
        Tensor tg = _cpu.F32(g, n), tu = _cpu.F32(u, n), h = _cpu.Allocate(DType.F32, n);
        double Loss()
        {
            _cpu.SwiGlu(h, tg, tu);
            return TestTensors.Dot(_cpu.Read(h), dy);
        }
        Tensor dg = _cpu.Allocate(DType.F32, n), du = _cpu.Allocate(DType.F32, n);
        _cpu.SwiGluBackward(dg, du, _cpu.F32(dy, n), tg, tu);
        FiniteDifferences.AssertGradient(_cpu, dg, g, tg, Loss);
        FiniteDifferences.AssertGradient(_cpu, du, u, tu, Loss);
    }

    [Fact]
    public void SwiGluAndGeGluBackwardInPlaceGiveTheOutOfPlaceBits()
    {
        // The training MLP writes dgate over gate and dup over up (CausalLM.MlpBackward).
        int n = 1000;
        float[] g = TestTensors.Random(n, 40, 3f), u = TestTensors.Random(n, 41), dy = TestTensors.Random(n, 42);
        var dh = _cpu.F32(dy, n);
        foreach (var backward in new Action<Tensor, Tensor, Tensor, Tensor, Tensor>[] { _cpu.SwiGluBackward, _cpu.GeGluBackward })
        {
            Tensor dg = _cpu.Allocate(DType.F32, n), du = _cpu.Allocate(DType.F32, n);
            backward(dg, du, dh, _cpu.F32(g, n), _cpu.F32(u, n));
            Tensor gate = _cpu.F32(g, n), up = _cpu.F32(u, n);
            backward(gate, up, dh, gate, up);
            Assert.Equal(_cpu.Read(dg), _cpu.Read(gate));
            Assert.Equal(_cpu.Read(du), _cpu.Read(up));
        }
    }

    [Fact]
    public void CrossEntropyGradientMatchesFiniteDifferencesAndIgnoresMinus100()
    {
        int n = 3, v = 7;
        float[] logits = TestTensors.Random(n * v, 40, 2f);
        int[] labels = [2, -100, 6];
        Tensor tl = _cpu.I32(labels, n), loss = _cpu.Allocate(DType.F32, 1);
        double Loss()
        {
            _cpu.Zero(loss);
            _cpu.CrossEntropy(_cpu.F32((float[])logits.Clone(), n, v), tl, loss, 1f, computeGrad: false);
            return _cpu.Read(loss)[0];
        }
        var grad = _cpu.F32((float[])logits.Clone(), n, v);
        _cpu.CrossEntropy(grad, tl, loss, 0.5f, computeGrad: true);
        float[] g = _cpu.Read(grad);
        FiniteDifferences.AssertGradient(g, logits, _ => { }, Loss, scale: 0.5);
        Assert.All(g.AsSpan(v, v).ToArray(), x => Assert.Equal(0f, x));
        // Loss of row 0 by hand: logsumexp − logit[label].
        double lse = Math.Log(Enumerable.Range(0, v).Sum(j => Math.Exp(logits[j])));
        double lse2 = Math.Log(Enumerable.Range(0, v).Sum(j => Math.Exp(logits[2 * v + j])));
        Assert.Equal(lse - logits[2] + lse2 - logits[2 * v + 6], Loss(), 4);
    }

    [Fact]
    public void EmbeddingBackwardScatterAddsRepeatedIds()
    {
        float[] dout = [1, 2, 10, 20, 100, 200];
        Tensor dtable = _cpu.Allocate(DType.F32, 4, 2);
        _cpu.EmbeddingBackward(dtable, _cpu.F32(dout, 3, 2), _cpu.I32([3, 0, 3], 3));
        Assert.Equal([10f, 20f, 0f, 0f, 0f, 0f, 101f, 202f], _cpu.Read(dtable));
    }

    [Fact]
    public void DropoutBackwardReusesTheForwardMask()
    {
        int n = 1000;
        float[] x = TestTensors.Random(n, 50);
        Tensor y = _cpu.Allocate(DType.F32, n), ones = _cpu.F32(Enumerable.Repeat(1f, n).ToArray(), n);
        _cpu.Dropout(y, _cpu.F32(x, n), 0.25f, 1234);
        _cpu.Dropout(ones, ones, 0.25f, 1234);
        float[] ry = _cpu.Read(y), mask = _cpu.Read(ones);
        int dropped = 0;
        for (int i = 0; i < n; i++)
        {
            Assert.Equal(x[i] * mask[i], ry[i], 6);
            if (mask[i] == 0) dropped++;
            else Assert.Equal(1f / 0.75f, mask[i], 6);
        }
        Assert.InRange(dropped, 200, 300);
    }

    [Fact]
    public void AdamWStepMatchesTorchFormulaIncludingClipping()
    {
        float[] p = [1f, -2f], g = [0.5f, 3f];
        Tensor tp = _cpu.F32(p, 2), tg = _cpu.F32(g, 2), m = _cpu.Allocate(DType.F32, 2), v = _cpu.Allocate(DType.F32, 2), sq = _cpu.Allocate(DType.F32, 1);
        _cpu.SumOfSquares(tg, sq);
        Assert.Equal(9.25f, _cpu.Read(sq)[0]);
        var step = new AdamWStep(0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 1, GradScale: 1f, MaxGradNorm: 1f);
        _cpu.AdamW(tp, tg, m, v, null, sq, step);
        // Clipped grad g·(1/‖g‖); first step: m̂ = g, v̂ = g², update = lr·g/(|g|+eps) = ±lr.
        float[] r = _cpu.Read(tp);
        Assert.Equal(1f * (1 - 0.1f * 0.01f) - 0.1f, r[0], 5);
        Assert.Equal(-2f * (1 - 0.1f * 0.01f) - 0.1f, r[1], 5);
        float coef = 1f / (MathF.Sqrt(9.25f) + 1e-6f);
        Assert.Equal(0.1f * 0.5f * coef, _cpu.Read(m)[0], 6);
    }
}
