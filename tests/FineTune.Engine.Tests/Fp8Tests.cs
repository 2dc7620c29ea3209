using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

public sealed class Fp8Tests
{
    [Theory]
    // E4M3: 1.0 = 0.0111.000; 448 the largest finite; ties go to the even mantissa; sub-normals are multiples of 2^-9.
    [InlineData(Fp8Format.E4M3, 0f, 0x00)]
    [InlineData(Fp8Format.E4M3, -0f, 0x80)]
    [InlineData(Fp8Format.E4M3, 1f, 0x38)]
    [InlineData(Fp8Format.E4M3, -1.5f, 0xBC)]
    [InlineData(Fp8Format.E4M3, 1.0625f, 0x38)]   // midway 1 ↔ 1.125: to the even 1
    [InlineData(Fp8Format.E4M3, 1.1875f, 0x3A)]   // midway 1.125 ↔ 1.25: to the even 1.25
    [InlineData(Fp8Format.E4M3, 1.07f, 0x39)]     // past the midway: up
    [InlineData(Fp8Format.E4M3, 448f, 0x7E)]
    [InlineData(Fp8Format.E4M3, 464f, 0x7E)]      // midway 448 ↔ 480 rounds to the even 448
    [InlineData(Fp8Format.E4M3, 1e6f, 0x7E)]      // saturates
    [InlineData(Fp8Format.E4M3, float.NegativeInfinity, 0xFE)]
    [InlineData(Fp8Format.E4M3, 0.001953125f, 0x01)]   // 2^-9, the smallest sub-normal
    [InlineData(Fp8Format.E4M3, 0.0009765625f, 0x00)]  // 2^-10: midway 0 ↔ 2^-9, to the even 0
    [InlineData(Fp8Format.E4M3, 0.0029296875f, 0x02)]  // 1.5·2^-9: midway, to the even 2·2^-9
    [InlineData(Fp8Format.E4M3, 0.0146484375f, 0x08)]  // 7.5·2^-9 rounds up into the smallest normal 2^-6
    [InlineData(Fp8Format.E4M3, float.NaN, 0xFF)] // .NET's NaN has the sign bit set; the sign is kept
    // E5M2: 1.0 = 0.01111.00; 57344 the largest finite; sub-normals are multiples of 2^-16.
    [InlineData(Fp8Format.E5M2, 1f, 0x3C)]
    [InlineData(Fp8Format.E5M2, -3f, 0xC2)]
    [InlineData(Fp8Format.E5M2, 1.125f, 0x3C)]    // midway 1 ↔ 1.25: to the even 1
    [InlineData(Fp8Format.E5M2, 57344f, 0x7B)]
    [InlineData(Fp8Format.E5M2, float.PositiveInfinity, 0x7B)]
    [InlineData(Fp8Format.E5M2, 1.52587890625e-05f, 0x01)] // 2^-16
    public void EncodeRoundsToNearestEvenAndSaturates(Fp8Format format, float value, int code) =>
        Assert.Equal((byte)code, Fp8.Encode(value, format));

    [Theory]
    [InlineData(Fp8Format.E4M3)]
    [InlineData(Fp8Format.E5M2)]
    public void EveryFiniteCodeDecodesAndEncodesBackToItself(Fp8Format format)
    {
        int finite = 0;
        for (int c = 0; c < 256; c++)
        {
            float v = Fp8.Decode((byte)c, format);
            if (!float.IsFinite(v)) continue;
            finite++;
            Assert.Equal((byte)c, Fp8.Encode(v, format));
        }
        // E4M3 has 2 NaN codes (no infinities); E5M2 has 2 infinities and 6 NaNs.
        Assert.Equal(format == Fp8Format.E4M3 ? 254 : 248, finite);
        Assert.Equal(448f, Fp8.Decode(0x7E, Fp8Format.E4M3));
        Assert.Equal(57344f, Fp8.Decode(0x7B, Fp8Format.E5M2));
    }

    [Theory]
    [InlineData(Fp8Format.E4M3)]
    [InlineData(Fp8Format.E5M2)]
    public void EncodeIsTheNearestCodeWithTiesToEvenOnRandomValues(Fp8Format format)
    {
        // Brute force over the finite codes of one sign: the nearest value, ties to the code with an even last bit.
        var values = Enumerable.Range(0, 128).Select(c => (Code: c, Value: (double)Fp8.Decode((byte)c, format)))
            .Where(p => double.IsFinite(p.Value)).ToArray();
        var rng = new Random(7);
        for (int i = 0; i < 20000; i++)
        {
            float x = (float)(Math.Pow(2, rng.NextDouble() * 34 - 18) * Fp8.Max(format) / 256);
            if (rng.Next(8) == 0) x = (float)values[rng.Next(values.Length - 1)].Value + (float)(values[1].Value / 2); // near midways
            double best = double.MaxValue; int bestCode = 0;
            foreach (var (c, v) in values)
            {
                double d = Math.Abs(v - x);
                if (d < best || (d == best && (c & 1) == 0)) { best = d; bestCode = c; }
            }
            if (x > Fp8.Max(format)) bestCode = values[^1].Code;
            Assert.True(bestCode == Fp8.Encode(x, format), $"{x:R}: expected 0x{bestCode:X2}, got 0x{Fp8.Encode(x, format):X2}");
            Assert.Equal((byte)(bestCode | 0x80), Fp8.Encode(-x, format));
        }
    }

    [Fact]
    public void QuantizeScalesTheLargestMagnitudeToTheFormatMaximum()
    {
        float[] x = [0.5f, -2f, 1f, 0f];
        var codes = new byte[4];
        float inv = Fp8.Quantize(x, codes, Fp8Format.E4M3);
        Assert.Equal(2f / 448f, inv);                    // s = 448 / 2, returned as 1/s
        Assert.Equal(new byte[] { 0x6E, 0xFE, 0x76, 0x00 }, codes); // 112 = 1.75·2^6, −448, 224 = 1.75·2^7, 0
        Assert.Equal(1f, Fp8.Quantize([0f, 0f], new byte[2], Fp8Format.E5M2)); // all zero: scale 1
    }

    [Fact]
    public void QuantizeWeightOnAllCoresGivesTheSerialCodesAndTheirTranspose()
    {
        // 3 × 700,001 values: more than two of QuantizeWeight's 2^20-value blocks, the last one partial; the largest
        // magnitude sits in the last block, so the blocks' maxima must be combined.
        const int rows = 3, cols = 700_001;
        var rng = new Random(5);
        var w = new float[rows * cols];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() * 2 - 1);
        w[^2] = -7.25f;
        var serial = new byte[w.Length];
        float inverse = Fp8.Quantize(w, serial, Fp8Format.E4M3);
        var (codes, transposed, scaleInverse) = Fp8.QuantizeWeight(w, rows, cols);
        Assert.Equal(inverse, scaleInverse);
        Assert.Equal(7.25f / 448f, scaleInverse);
        Assert.True(codes.AsSpan().SequenceEqual(serial));
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < cols; j += 99_991)
                Assert.Equal(codes[(long)r * cols + j], transposed[(long)j * rows + r]);
    }

    [Fact]
    public void CpuFp8ProductIsTheProductOfTheQuantizedOperands()
    {
        var cpu = new CpuBackend(2);
        int m = 5, n = 32, k = 48;
        float[] x = TestTensors.Random(m * k, 1), w = TestTensors.Random(n * k, 2, 0.05f), dy = TestTensors.Random(m * n, 3, 1e-3f);
        var wCodes = new byte[n * k];
        float wInv = Fp8.Quantize(w, wCodes, Fp8Format.E4M3);
        var codes = cpu.I32(Words(wCodes), n * k / 4);
        var weight = new QuantizedWeight(QuantFormat.Fp8E4M3, n, k, codes, cpu.F32([wInv], 1));

        var y = cpu.Allocate(DType.F32, m, n);
        cpu.Fp8MatMul(y, cpu.F32(x, m, k), weight, inputGradient: false);
        var dx = cpu.Allocate(DType.F32, m, k);
        cpu.Fp8MatMul(dx, cpu.F32(dy, m, n), weight, inputGradient: true);

        double[] wq = wCodes.Select(c => (double)(Fp8.Decode(c, Fp8Format.E4M3) * wInv)).ToArray();
        double[] xq = Dequantized(x, Fp8Format.E4M3), dyq = Dequantized(dy, Fp8Format.E5M2);
        var yRef = new double[m * n];
        var dxRef = new double[m * k];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                for (int p = 0; p < k; p++)
                {
                    yRef[i * n + j] += xq[i * k + p] * wq[j * k + p];
                    dxRef[i * k + p] += dyq[i * n + j] * wq[j * k + p];
                }
        Assert.True(TestTensors.RelativeError(cpu.Read(y), yRef) < 1e-6);
        Assert.True(TestTensors.RelativeError(cpu.Read(dx), dxRef) < 1e-6);
        // The FP8 product differs from the f32 one by the casts' rounding (3 mantissa bits: a few per cent).
        var exact = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                for (int p = 0; p < k; p++) exact[i * n + j] += (double)x[i * k + p] * w[j * k + p];
        double err = TestTensors.RelativeError(cpu.Read(y), exact);
        Assert.InRange(err, 1e-3, 8e-2);

        // The quantized weight reads back as its codes times its scale inverse.
        var back = cpu.Allocate(DType.F32, n, k);
        cpu.Dequantize(back, weight);
        Assert.Equal(wq.Select(v => (float)v), cpu.Read(back));
    }

    [Fact]
    public void CpuQuantizeFp8WritesCodesAndScaleInverse()
    {
        var cpu = new CpuBackend(1);
        var codes = cpu.Allocate(DType.I32, 1);
        var inv = cpu.Allocate(DType.F32, 1);
        cpu.QuantizeFp8(codes, inv, cpu.F32([1f, -0.25f, 3e-3f, 0.5f], 4), Fp8Format.E4M3);
        var words = new int[1];
        cpu.Download(codes, words);
        Assert.Equal(new byte[] { 0x7E, 0xEE, 0x3B, 0x76 }, BitConverter.GetBytes(words[0])); // 448, −112, 1.344 → 1.375, 224
        Assert.Equal(1f / 448f, cpu.Read(inv)[0]);
    }

    [Fact]
    public void Delayed_scaling_casts_with_the_history_amax_and_records_each_pass_amax()
    {
        var cpu = new CpuBackend(1);
        int m = 2, n = 16, k = 16;
        float[] w = TestTensors.Random(n * k, 2, 0.05f);
        var wCodes = new byte[n * k];
        float wInv = Fp8.Quantize(w, wCodes, Fp8Format.E4M3);
        var weight = new QuantizedWeight(QuantFormat.Fp8E4M3, n, k, cpu.I32(Words(wCodes), n * k / 4), cpu.F32([wInv], 1));
        const int history = 3;
        var states = cpu.Allocate(DType.F32, Fp8DelayedScale.Stride(history));
        cpu.Zero(states);
        float[] Input(float amax)
        {
            var x = TestTensors.Random(m * k, 7, 0.5f);
            x[5] = -amax; // the largest magnitude (the random values stay under 0.5)
            return x;
        }
        float[] Product(float[] x, Fp8DelayedScale? delayed)
        {
            var y = cpu.Allocate(DType.F32, m, n);
            cpu.Fp8MatMul(y, cpu.F32(x, m, k), weight, inputGradient: false, delayed: delayed);
            return cpu.Read(y);
        }

        // Not yet advanced: current scaling's bits, the amax recorded (twice the same input: a recompute records it again).
        var x1 = Input(2f);
        var first = Product(x1, new Fp8DelayedScale(states, Ready: false));
        Assert.Equal(Product(x1, null), first);
        Product(x1, new Fp8DelayedScale(states, Ready: false));
        Assert.Equal([0f, 2f, 0f, 0f, 0f, 0f], cpu.Read(states));
        cpu.Fp8AdvanceHistories(states, 1, history);
        Assert.Equal([2f, 0f, BitConverter.Int32BitsToSingle(1), 2f, 0f, 0f], cpu.Read(states));

        // Ready: the scale is 448/2 whatever this input's amax (4: its largest values saturate at ±448·(2/448) = ±2).
        var x2 = Input(4f);
        var delayed = Product(x2, new Fp8DelayedScale(states, Ready: true));
        var clipped = x2.Select(v => Math.Clamp(v, -2f, 2f)).ToArray();
        Assert.Equal(Product(clipped, new Fp8DelayedScale(states, Ready: true)), delayed);
        Assert.NotEqual(Product(x2, null), delayed);
        Assert.Equal(4f, cpu.Read(states)[1]); // the pass amax is the largest of its casts (4, then the clipped 2)

        // The ring after 2, then 4, 1, 3: [3, 4, 1] (2 overwritten); a pass that cast nothing (amax 0) pushes nothing.
        cpu.Fp8AdvanceHistories(states, 1, history);
        Assert.Equal(4f, cpu.Read(states)[0]);
        foreach (float a in new[] { 1f, 3f })
        {
            Product(Input(a), new Fp8DelayedScale(states, Ready: true));
            cpu.Fp8AdvanceHistories(states, 1, history);
        }
        cpu.Fp8AdvanceHistories(states, 1, history);
        Assert.Equal([4f, 0f, BitConverter.Int32BitsToSingle(4), 3f, 4f, 1f], cpu.Read(states));
        Product(Input(0.75f), new Fp8DelayedScale(states, Ready: true));
        cpu.Fp8AdvanceHistories(states, 1, history);
        Assert.Equal([3f, 0f, BitConverter.Int32BitsToSingle(5), 3f, 0.75f, 1f], cpu.Read(states));
    }

    private static double[] Dequantized(float[] values, Fp8Format format)
    {
        var codes = new byte[values.Length];
        float inv = Fp8.Quantize(values, codes, format);
        return codes.Select(c => (double)(Fp8.Decode(c, format) * inv)).ToArray();
    }

    private static int[] Words(byte[] bytes)
    {
        var words = new int[(bytes.Length + 3) / 4];
        Buffer.BlockCopy(bytes, 0, words, 0, bytes.Length);
        return words;
    }
}
