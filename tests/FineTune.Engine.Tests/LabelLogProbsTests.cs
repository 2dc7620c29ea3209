using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

/// <summary>LabelLogProbs (the preference objectives' op) against a double-precision log-softmax and against CrossEntropy.</summary>
public sealed class LabelLogProbsTests
{
    private readonly CpuBackend _cpu = new(2);

    private static double RefLogProb(float[] logits, int row, int v, int label)
    {
        double max = double.NegativeInfinity;
        for (int j = 0; j < v; j++) max = Math.Max(max, logits[row * v + j]);
        double sum = 0;
        for (int j = 0; j < v; j++) sum += Math.Exp(logits[row * v + j] - max);
        return logits[row * v + label] - max - Math.Log(sum);
    }

    [Fact]
    public void LogProbsEqualDoubleLogSoftmaxAndZeroForIgnoredLabels()
    {
        int n = 5, v = 301;
        float[] logits = TestTensors.Random(n * v, 7, 6f);
        int[] labels = [0, 300, -100, 17, 150];
        Tensor tl = _cpu.F32((float[])logits.Clone(), n, v), lp = _cpu.Allocate(DType.F32, n);
        _cpu.Upload(lp, Enumerable.Repeat(float.NaN, n).ToArray());
        _cpu.LabelLogProbs(tl, _cpu.I32(labels, n), lp, null);
        float[] got = _cpu.Read(lp);
        for (int r = 0; r < n; r++)
            if (labels[r] == -100) Assert.Equal(0f, got[r]);
            else Assert.Equal(RefLogProb(logits, r, v, labels[r]), got[r], 5e-6);
    }

    [Fact]
    public void GradientWithScalesIsTheFiniteDifferenceOfTheWeightedLogProbs()
    {
        // L = Σ_r w_r·logp_r; passing gradScales = −w leaves ∂L/∂logits in the logits (∂logp/∂x = onehot − softmax).
        int n = 4, v = 9;
        float[] logits = TestTensors.Random(n * v, 11, 2f);
        float[] w = [0.7f, -1.3f, 2.1f, 0.4f];
        int[] labels = [3, -100, 8, 0];
        Tensor tlab = _cpu.I32(labels, n), lp = _cpu.Allocate(DType.F32, n);
        double Loss()
        {
            _cpu.LabelLogProbs(_cpu.F32((float[])logits.Clone(), n, v), tlab, lp, null);
            return TestTensors.Dot(_cpu.Read(lp), w);
        }
        var grad = _cpu.F32((float[])logits.Clone(), n, v);
        _cpu.LabelLogProbs(grad, tlab, lp, _cpu.F32(w.Select(x => -x).ToArray(), n));
        float[] g = _cpu.Read(grad);
        FiniteDifferences.AssertGradient(g, logits, _ => { }, Loss);
        Assert.All(g.AsSpan(v, v).ToArray(), x => Assert.Equal(0f, x));
        // The exact form, in double: row 0 ends as −w_0·(softmax − onehot).
        double max = logits.Take(v).Max(), sum = logits.Take(v).Sum(x => Math.Exp(x - max));
        for (int j = 0; j < v; j++)
            Assert.Equal(-w[0] * (Math.Exp(logits[j] - max) / sum - (j == 3 ? 1 : 0)), g[j], 1e-6);
    }

    [Fact]
    public void LogProbsAndGradientAreCrossEntropysBitForBit()
    {
        // One row routine serves both ops: per row, logp = −(CrossEntropy's loss) and the same gradient scale gives
        // the same gradient bits, so SFT and preference objectives see identical numerics.
        int n = 3, v = 257;
        float[] logits = TestTensors.Random(n * v, 23, 5f);
        int[] labels = [5, 256, -100];
        float scale = 0.37f;
        var ce = _cpu.F32((float[])logits.Clone(), n, v);
        var lpGrad = _cpu.F32((float[])logits.Clone(), n, v);
        Tensor tlab = _cpu.I32(labels, n), lp = _cpu.Allocate(DType.F32, n);
        _cpu.CrossEntropy(ce, tlab, _cpu.Allocate(DType.F32, 1), scale, computeGrad: true);
        _cpu.LabelLogProbs(lpGrad, tlab, lp, _cpu.F32([scale, scale, scale], n));
        Assert.Equal(_cpu.Read(ce), _cpu.Read(lpGrad));
        float[] got = _cpu.Read(lp);
        for (int r = 0; r < n; r++)
        {
            var loss = _cpu.Allocate(DType.F32, 1);
            _cpu.CrossEntropy(_cpu.F32(logits.AsSpan(r * v, v).ToArray(), 1, v), _cpu.I32([labels[r]], 1), loss, 1f, computeGrad: false);
            Assert.Equal(-_cpu.Read(loss)[0], got[r]);
        }
    }

    [Fact]
    public void LabelOutsideTheVocabularyIsRejected()
    {
        // Rows run in parallel, so the row's exception may arrive wrapped, as CrossEntropy's does.
        var e = Assert.ThrowsAny<Exception>(() =>
            _cpu.LabelLogProbs(_cpu.F32(new float[6], 2, 3), _cpu.I32([1, 3], 2), _cpu.Allocate(DType.F32, 2), null));
        var inner = e is AggregateException a ? a.Flatten().InnerExceptions.Single() : e;
        Assert.IsType<ArgumentOutOfRangeException>(inner);
        Assert.Contains("label 3 in row 1 is outside the vocabulary of 3", inner.Message);
    }
}
