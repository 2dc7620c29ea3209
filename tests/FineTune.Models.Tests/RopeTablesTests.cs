namespace FineTune.Models.Tests;

public sealed class RopeTablesTests
{
    private static TransformerSpec Spec(RopeScalingSpec? scaling, double theta = 10000, int headDim = 8, int maxPos = 64) => new()
    {
        Architecture = "llama", VocabSize = 8, HiddenSize = headDim, IntermediateSize = 8, NumLayers = 1, NumHeads = 1, NumKvHeads = 1,
        RopeTheta = theta, RopeScaling = scaling, MaxPositionEmbeddings = maxPos,
    };

    [Fact]
    public void DefaultFrequenciesAreThetaToTheMinusTwoIOverD()
    {
        var (inv, scaling) = RopeTables.InverseFrequencies(Spec(null), 16);
        Assert.Equal(1f, scaling);
        Assert.Equal([1f, 0.1f, 0.01f, 0.001f], inv.Select(x => MathF.Round(x, 6)).ToArray());
        var cos = new float[3 * 4];
        var sin = new float[3 * 4];
        RopeTables.Compute(Spec(null), 3, cos, sin);
        Assert.Equal((float)Math.Cos(2.0), cos[2 * 4 + 0], 6);
        Assert.Equal((float)Math.Sin(0.2), sin[2 * 4 + 1], 6);
    }

    [Fact]
    public void LinearScalingDividesEveryFrequencyByTheFactor()
    {
        var (inv, _) = RopeTables.InverseFrequencies(Spec(new RopeScalingSpec("linear", 4)), 16);
        double[] expected = [0.25, 0.025, 0.0025, 0.00025];
        for (int i = 0; i < 4; i++) Assert.Equal(expected[i], inv[i], expected[i] * 1e-6);
    }

    [Fact]
    public void DynamicScalingChangesTheBaseOnlyBeyondTheTrainedLength()
    {
        var spec = Spec(new RopeScalingSpec("dynamic", 2), maxPos: 16);
        Assert.Equal(RopeTables.InverseFrequencies(Spec(null), 16).InvFreq, RopeTables.InverseFrequencies(spec, 16).InvFreq);
        // L = 32: base' = 10000·(2·32/16 − 1)^(8/6) = 10000·3^(4/3)
        var (inv, _) = RopeTables.InverseFrequencies(spec, 32);
        double b = 10000 * Math.Pow(3, 4.0 / 3);
        Assert.Equal((float)(1 / Math.Pow(b, 2.0 / 8)), inv[1], 6);
    }

    [Fact]
    public void Llama3KeepsHighFrequenciesAndDividesLowOnes()
    {
        // Llama 3.1: theta 500000, factor 8, low 1, high 4, original 8192, head_dim 128.
        var spec = Spec(new RopeScalingSpec("llama3", 8, 8192, 1, 4), theta: 500000, headDim: 128, maxPos: 131072);
        var (inv, _) = RopeTables.InverseFrequencies(spec, 16);
        var (plain, _) = RopeTables.InverseFrequencies(Spec(null, 500000, 128, 131072), 16);
        Assert.Equal(plain[0], inv[0]);                       // wavelength 2π < 8192/4: unchanged
        Assert.Equal(plain[63] / 8, inv[63], 12);             // wavelength > 8192: divided by 8
        int medium = Enumerable.Range(0, 64).First(i => 2 * Math.PI / plain[i] >= 2048);
        Assert.InRange(inv[medium], plain[medium] / 8, plain[medium]); // smoothed in between
    }

    [Fact]
    public void YarnBlendsInterpolationAndScalesAttention()
    {
        var spec = Spec(new RopeScalingSpec("yarn", 4, 16), theta: 10000, headDim: 16, maxPos: 64);
        var (inv, scaling) = RopeTables.InverseFrequencies(spec, 16);
        var (plain, _) = RopeTables.InverseFrequencies(Spec(null, 10000, 16, 64), 16);
        Assert.Equal((float)(0.1 * Math.Log(4) + 1), scaling, 6);
        Assert.Equal(plain[0], inv[0]);            // fast dims extrapolate
        Assert.Equal(plain[7] / 4, inv[7], 9);     // slow dims interpolate
    }
}
