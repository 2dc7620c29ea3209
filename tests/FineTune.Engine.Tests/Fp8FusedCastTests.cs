using System.Runtime.InteropServices;
using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

/// <summary>
/// fp8_scaling: delayed: SwiGLU and the RMSNorms casting their own outputs for the next FP8 products (IBackend.SwiGluFp8,
/// SwiGluBackwardFp8, RmsNormFp8, ResidualRmsNormFp8) and the products from those codes (Fp8MatMulCodes,
/// Fp8MatMulSharedCodes) give the bits of the plain operation, then the delayed cast inside Fp8MatMul(Shared).
/// </summary>
public sealed class Fp8FusedCastTests
{
    const int Rows = 6, Inter = 48, Hidden = 16, History = 3;

    // A ready site whose history amax is below the tensor's own (its largest values saturate) and whose pass amax is
    // already non-zero (an earlier cast in this pass): [history max, pass amax, pushes = 2, ring].
    static float[] SiteValues(float historyMax, float passAmax) =>
        [historyMax, passAmax, BitConverter.Int32BitsToSingle(2), historyMax, historyMax / 2, 0f];

    static Fp8DelayedScale Site(CpuBackend cpu, float historyMax, float passAmax) =>
        new(cpu.F32(SiteValues(historyMax, passAmax), Fp8DelayedScale.Stride(History)), Ready: true);

    static Fp8Operand Operand(CpuBackend cpu, int values) =>
        new(cpu.I32(new int[QuantizedWeight.WordsFor(values)], QuantizedWeight.WordsFor(values)), cpu.F32([0f], 1));

    static byte[] Codes(CpuBackend cpu, Fp8Operand a, int values)
    {
        var words = new int[a.Codes.Length];
        cpu.Download(a.Codes, words);
        return MemoryMarshal.AsBytes(words.AsSpan())[..values].ToArray();
    }

    static QuantizedWeight Weight(CpuBackend cpu, int rows, int cols, int seed)
    {
        var (codes, transposed, inverse) = Fp8.QuantizeWeight(TestTensors.Random(rows * cols, seed, 0.1f), rows, cols);
        return new QuantizedWeight(QuantFormat.Fp8E4M3, rows, cols, cpu.I32(Words(codes), codes.Length / 4), cpu.F32([inverse], 1),
            Transposed: cpu.I32(Words(transposed), transposed.Length / 4));
    }

    static int[] Words(byte[] bytes)
    {
        var words = new int[QuantizedWeight.WordsFor(bytes.Length)];
        Buffer.BlockCopy(bytes, 0, words, 0, bytes.Length);
        return words;
    }

    static float[] Gate() => TestTensors.Random(Rows * Inter, 3, 4f);
    static float[] Up() => TestTensors.Random(Rows * Inter, 4, 2f);

    [Fact]
    public void SwiGluFp8_writes_the_bits_of_SwiGlu_and_the_codes_and_site_of_the_delayed_cast()
    {
        var cpu = new CpuBackend(1);
        var gate = cpu.F32(Gate(), Rows, Inter);
        var up = cpu.F32(Up(), Rows, Inter);
        var h = cpu.Allocate(DType.F32, Rows, Inter);
        var codes = Operand(cpu, Rows * Inter);
        var site = Site(cpu, 1.5f, 0.25f);
        cpu.SwiGluFp8(h, gate, up, codes, site);

        var want = cpu.Allocate(DType.F32, Rows, Inter);
        cpu.SwiGlu(want, gate, up);
        var hv = cpu.Read(want);
        Assert.Equal(hv, cpu.Read(h));
        float amax = Fp8.Amax(hv);
        Assert.True(amax > 1.5f, $"max |h| = {amax}: some values must saturate");
        var wantCodes = new byte[hv.Length];
        float inverse = Fp8.QuantizeWith(hv, wantCodes, Fp8Format.E4M3, 1.5f);
        Assert.Equal(wantCodes, Codes(cpu, codes, hv.Length));
        Assert.Contains(wantCodes, c => (c & 0x7F) == 0x7E); // ±448: the values past the history's amax
        Assert.Equal(1.5f / 448f, inverse);
        Assert.Equal(inverse, cpu.Read(codes.ScaleInverse)[0]);
        // Only the pass amax moves: max(0.25, max |h|); the history's max, the push count and the ring stay.
        var sites = SiteValues(1.5f, amax);
        Assert.Equal(sites, cpu.Read(site.State));

        // The same site values as Fp8MatMul's own delayed cast of h (down_proj's product without the fusion).
        var separate = Site(cpu, 1.5f, 0.25f);
        cpu.Fp8MatMul(cpu.Allocate(DType.F32, Rows, Hidden), want, Weight(cpu, Hidden, Inter, 5), inputGradient: false, delayed: separate);
        Assert.Equal(cpu.Read(separate.State), cpu.Read(site.State));
    }

    [Fact]
    public void SwiGluBackwardFp8_in_place_writes_the_bits_of_SwiGluBackward_and_each_outputs_E5M2_codes_and_site()
    {
        var cpu = new CpuBackend(1);
        float[] g = Gate(), u = Up(), d = TestTensors.Random(Rows * Inter, 6, 3e-2f);
        var dh = cpu.F32(d, Rows, Inter);
        // In place as MlpBackward runs it: dgate over gate, dup over up.
        var dgate = cpu.F32(g, Rows, Inter);
        var dup = cpu.F32(u, Rows, Inter);
        var (gateCodes, upCodes) = (Operand(cpu, Rows * Inter), Operand(cpu, Rows * Inter));
        var (gateSite, upSite) = (Site(cpu, 0.02f, 1e-3f), Site(cpu, 0.5f, 0.75f));
        cpu.SwiGluBackwardFp8(dgate, dup, dh, dgate, dup, gateCodes, gateSite, upCodes, upSite);

        var (wantGate, wantUp) = (cpu.Allocate(DType.F32, Rows, Inter), cpu.Allocate(DType.F32, Rows, Inter));
        cpu.SwiGluBackward(wantGate, wantUp, dh, cpu.F32(g, Rows, Inter), cpu.F32(u, Rows, Inter));
        float[] dg = cpu.Read(wantGate), du = cpu.Read(wantUp);
        Assert.Equal(dg, cpu.Read(dgate));
        Assert.Equal(du, cpu.Read(dup));
        foreach (var (values, codes, site, historyMax, passAmax) in new[] { (dg, gateCodes, gateSite, 0.02f, 1e-3f), (du, upCodes, upSite, 0.5f, 0.75f) })
        {
            var want = new byte[values.Length];
            float inverse = Fp8.QuantizeWith(values, want, Fp8Format.E5M2, historyMax);
            Assert.Equal(want, Codes(cpu, codes, values.Length));
            Assert.Equal(inverse, cpu.Read(codes.ScaleInverse)[0]);
            Assert.Equal(SiteValues(historyMax, MathF.Max(passAmax, Fp8.Amax(values))), cpu.Read(site.State));
        }
        // dgate's amax passes its history's (saturation in E5M2 too); dup's stays under the pass amax already recorded.
        Assert.True(Fp8.Amax(dg) > 0.02f && Fp8.Amax(du) < 0.75f, $"{Fp8.Amax(dg)}, {Fp8.Amax(du)}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Fp8MatMulCodes_from_fused_codes_gives_the_bits_of_Fp8MatMul_with_the_same_ready_site(bool accumulate)
    {
        var cpu = new CpuBackend(1);
        var down = Weight(cpu, Hidden, Inter, 7);
        var gateWeight = Weight(cpu, Inter, Hidden, 8);
        var gate = cpu.F32(Gate(), Rows, Inter);
        var up = cpu.F32(Up(), Rows, Inter);
        var start = TestTensors.Random(Rows * Hidden, 9, 0.5f);

        // Forward: act's E4M3 codes from SwiGluFp8, down's product from them.
        var act = cpu.Allocate(DType.F32, Rows, Inter);
        var actCodes = Operand(cpu, Rows * Inter);
        cpu.SwiGluFp8(act, gate, up, actCodes, Site(cpu, 1.5f, 0f));
        var (fused, separate) = (cpu.F32(start, Rows, Hidden), cpu.F32(start, Rows, Hidden));
        cpu.Fp8MatMulCodes(fused, actCodes, down, inputGradient: false, accumulate);
        cpu.Fp8MatMul(separate, act, down, inputGradient: false, accumulate, Site(cpu, 1.5f, 0f));
        Assert.Equal(cpu.Read(separate), cpu.Read(fused));
        Assert.NotEqual(start, cpu.Read(fused));

        // Input gradient: dgate's E5M2 codes from SwiGluBackwardFp8, dx = dgate·W_gate from them.
        var dgate = cpu.Allocate(DType.F32, Rows, Inter);
        var dup = cpu.Allocate(DType.F32, Rows, Inter);
        var (gateCodes, upCodes) = (Operand(cpu, Rows * Inter), Operand(cpu, Rows * Inter));
        cpu.SwiGluBackwardFp8(dgate, dup, cpu.F32(TestTensors.Random(Rows * Inter, 10, 1e-2f), Rows, Inter), gate, up,
            gateCodes, Site(cpu, 0.01f, 0f), upCodes, Site(cpu, 0.01f, 0f));
        var (dxFused, dxSeparate) = (cpu.F32(start, Rows, Hidden), cpu.F32(start, Rows, Hidden));
        cpu.Fp8MatMulCodes(dxFused, gateCodes, gateWeight, inputGradient: true, accumulate);
        cpu.Fp8MatMul(dxSeparate, dgate, gateWeight, inputGradient: true, accumulate, Site(cpu, 0.01f, 0f));
        Assert.Equal(cpu.Read(dxSeparate), cpu.Read(dxFused));
        Assert.NotEqual(start, cpu.Read(dxFused));
    }

    [Fact]
    public void A_fused_cast_refuses_a_site_not_yet_advanced()
    {
        // A site's first pass scales currently (the amax before the cast), which only the separate cast does.
        var cpu = new CpuBackend(1);
        var h = cpu.Allocate(DType.F32, Rows, Inter);
        var state = cpu.F32(new float[Fp8DelayedScale.Stride(History)], Fp8DelayedScale.Stride(History));
        var e = Assert.Throws<ArgumentException>(() =>
            cpu.SwiGluFp8(h, cpu.F32(Gate(), Rows, Inter), cpu.F32(Up(), Rows, Inter), Operand(cpu, Rows * Inter), new Fp8DelayedScale(state, Ready: false)));
        Assert.StartsWith("a cast fused into its producer needs a delayed-scaling site already advanced", e.Message);
        Assert.Equal(new float[Fp8DelayedScale.Stride(History)], cpu.Read(state));
    }

    static float[] NormInput(int seed) => TestTensors.Random(Rows * Hidden, seed, 2f);
    static float[] NormWeight() => TestTensors.Random(Hidden, 12, 0.5f).Select(w => 1f + w).ToArray();

    /// <summary>The codes, scale inverse and site the separate delayed cast of <paramref name="y"/> gives (Fp8MatMul's, from the same site).</summary>
    static void AssertDelayedCastOf(CpuBackend cpu, float[] y, Fp8Operand codes, Fp8DelayedScale site, float historyMax, float passAmax)
    {
        float amax = Fp8.Amax(y);
        Assert.True(amax > historyMax, $"max |y| = {amax}: some values must saturate");
        var want = new byte[y.Length];
        float inverse = Fp8.QuantizeWith(y, want, Fp8Format.E4M3, historyMax);
        Assert.Equal(want, Codes(cpu, codes, y.Length));
        Assert.Contains(want, c => (c & 0x7F) == 0x7E); // ±448: the values past the history's amax
        Assert.Equal(historyMax / 448f, inverse);
        Assert.Equal(inverse, cpu.Read(codes.ScaleInverse)[0]);
        Assert.Equal(SiteValues(historyMax, MathF.Max(passAmax, amax)), cpu.Read(site.State));
        var separate = Site(cpu, historyMax, passAmax);
        cpu.Fp8MatMulShared([cpu.Allocate(DType.F32, Rows, Inter), cpu.Allocate(DType.F32, Rows, Inter)], cpu.F32(y, Rows, Hidden),
            [Weight(cpu, Inter, Hidden, 13), Weight(cpu, Inter, Hidden, 14)], delayed: separate);
        Assert.Equal(cpu.Read(separate.State), cpu.Read(site.State));
    }

    [Theory]
    [InlineData(0f)]
    [InlineData(1f)]
    public void RmsNormFp8_writes_the_bits_of_RmsNorm_and_the_codes_and_site_of_the_delayed_cast(float weightOffset)
    {
        var cpu = new CpuBackend(1);
        var x = cpu.F32(NormInput(11), Rows, Hidden);
        var weight = cpu.F32(NormWeight(), Hidden);
        var (y, rstd) = (cpu.Allocate(DType.F32, Rows, Hidden), cpu.Allocate(DType.F32, Rows));
        var codes = Operand(cpu, Rows * Hidden);
        var site = Site(cpu, 1.25f, 0.5f);
        cpu.RmsNormFp8(y, rstd, x, weight, 1e-6f, weightOffset, codes, site);

        var (wantY, wantRstd) = (cpu.Allocate(DType.F32, Rows, Hidden), cpu.Allocate(DType.F32, Rows));
        cpu.RmsNorm(wantY, wantRstd, x, weight, 1e-6f, weightOffset);
        var yv = cpu.Read(wantY);
        Assert.Equal(yv, cpu.Read(y));
        Assert.Equal(cpu.Read(wantRstd), cpu.Read(rstd));
        AssertDelayedCastOf(cpu, yv, codes, site, 1.25f, 0.5f);
    }

    [Fact]
    public void ResidualRmsNormFp8_in_place_writes_the_bits_of_ResidualRmsNorm_and_the_codes_and_site_of_the_delayed_cast()
    {
        var cpu = new CpuBackend(1);
        float[] a = NormInput(15), b = NormInput(16);
        var weight = cpu.F32(NormWeight(), Hidden);
        // In place as LayerTail runs it: resMid = resMid + x.
        var resid = cpu.F32(a, Rows, Hidden);
        var bt = cpu.F32(b, Rows, Hidden);
        var (y, rstd) = (cpu.Allocate(DType.F32, Rows, Hidden), cpu.Allocate(DType.F32, Rows));
        var codes = Operand(cpu, Rows * Hidden);
        var site = Site(cpu, 1.25f, 0f);
        cpu.ResidualRmsNormFp8(resid, y, rstd, resid, bt, weight, 1e-6f, 0f, codes, site);

        var (wantResid, wantY, wantRstd) = (cpu.Allocate(DType.F32, Rows, Hidden), cpu.Allocate(DType.F32, Rows, Hidden), cpu.Allocate(DType.F32, Rows));
        cpu.ResidualRmsNorm(wantResid, wantY, wantRstd, cpu.F32(a, Rows, Hidden), bt, weight, 1e-6f);
        var yv = cpu.Read(wantY);
        Assert.Equal(cpu.Read(wantResid), cpu.Read(resid));
        Assert.Equal(yv, cpu.Read(y));
        Assert.Equal(cpu.Read(wantRstd), cpu.Read(rstd));
        AssertDelayedCastOf(cpu, yv, codes, site, 1.25f, 0f);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Fp8MatMulSharedCodes_from_a_norms_codes_gives_the_bits_of_Fp8MatMulShared_with_the_same_ready_site(bool accumulate)
    {
        var cpu = new CpuBackend(1);
        var x = cpu.F32(NormInput(17), Rows, Hidden);
        var weight = cpu.F32(NormWeight(), Hidden);
        QuantizedWeight[] ws = [Weight(cpu, Inter, Hidden, 18), Weight(cpu, Hidden, Hidden, 19)];
        float[] start0 = TestTensors.Random(Rows * Inter, 20, 0.5f), start1 = TestTensors.Random(Rows * Hidden, 21, 0.5f);

        var (ln, rstd) = (cpu.Allocate(DType.F32, Rows, Hidden), cpu.Allocate(DType.F32, Rows));
        var codes = Operand(cpu, Rows * Hidden);
        var fusedSite = Site(cpu, 1.25f, 0f);
        cpu.RmsNormFp8(ln, rstd, x, weight, 1e-6f, 0f, codes, fusedSite);
        Tensor[] fused = [cpu.F32(start0, Rows, Inter), cpu.F32(start1, Rows, Hidden)];
        cpu.Fp8MatMulSharedCodes(fused, codes, ws, accumulate);

        var separateSite = Site(cpu, 1.25f, 0f);
        Tensor[] separate = [cpu.F32(start0, Rows, Inter), cpu.F32(start1, Rows, Hidden)];
        cpu.Fp8MatMulShared(separate, ln, ws, accumulate, separateSite);
        Assert.Equal(cpu.Read(separate[0]), cpu.Read(fused[0]));
        Assert.Equal(cpu.Read(separate[1]), cpu.Read(fused[1]));
        Assert.NotEqual(start0, cpu.Read(fused[0]));
        // The fused cast recorded what the product's own cast records; reading codes records nothing more.
        Assert.Equal(cpu.Read(separateSite.State), cpu.Read(fusedSite.State));
    }

    [Fact]
    public void A_fused_norm_cast_refuses_a_site_not_yet_advanced()
    {
        var cpu = new CpuBackend(1);
        var state = cpu.F32(new float[Fp8DelayedScale.Stride(History)], Fp8DelayedScale.Stride(History));
        var e = Assert.Throws<ArgumentException>(() => cpu.RmsNormFp8(cpu.Allocate(DType.F32, Rows, Hidden), cpu.Allocate(DType.F32, Rows),
            cpu.F32(NormInput(22), Rows, Hidden), cpu.F32(NormWeight(), Hidden), 1e-6f, 0f, Operand(cpu, Rows * Hidden), new Fp8DelayedScale(state, Ready: false)));
        Assert.StartsWith("a cast fused into its producer needs a delayed-scaling site already advanced", e.Message);
        Assert.Equal(new float[Fp8DelayedScale.Stride(History)], cpu.Read(state));
    }
}
