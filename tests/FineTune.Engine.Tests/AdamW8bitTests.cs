using System.Runtime.InteropServices;
using FineTune.Engine;
using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

/// <summary>bitsandbytes' 8-bit block-wise AdamW on the CPU backend against values worked out by hand.</summary>
public sealed class AdamW8bitTests
{
    private static float[] DynamicMap(bool signed)
    {
        // The map's fixed points are all this test reads: code[0], code[127], code[255] and the order.
        var map = new float[256];
        for (int i = 0; i < 256; i++) map[i] = signed ? (i - 127) / 128f : i / 255f;
        return map;
    }

    [Fact]
    public void The_first_step_takes_bnbs_update_and_requantizes_with_the_new_block_absmax()
    {
        using var b = new CpuBackend(1);
        var g = new float[256];
        g[0] = 1f; g[1] = -1f; g[2] = 0.5f;
        var codeM = DynamicMap(signed: true);
        var codeV = DynamicMap(signed: false);
        var param = b.F32(new float[256], 256);
        var grad = b.F32(g, 256);
        var m8 = b.Allocate(DType.I32, 64);
        var v8 = b.Allocate(DType.I32, 64);
        var am = b.F32(new float[1], 1);
        var av = b.F32(new float[1], 1);
        var step = new AdamWStep(0.1f, 0.9f, 0.999f, 1e-8f, 0f, 1);
        b.AdamW8bit(param, grad, m8, v8, am, av, b.F32(codeM, 256), b.F32(codeV, 256), null, null, step);

        // From zero states: m = (1−β1)·g, v = (1−β2)·g² (f32: 1 − 0.9 = 0.100000024); the block absmax are those of g = 1.
        float m0 = 1f - 0.9f, v0 = (1f - 0.999f) * 1f * 1f;
        Assert.Equal(m0, b.Read(am)[0]);
        Assert.Equal(v0, b.Read(av)[0]);
        // p = 0 + (−lr·√(1−β2^t)/(1−β1^t)) · m/(√v + eps·√(1−β2^t)).
        float c2 = MathF.Sqrt(1f - 0.999f), stepSize = -0.1f * c2 / (1f - 0.9f);
        var p = b.Read(param);
        Assert.Equal(stepSize * (m0 / (MathF.Sqrt(v0) + 1e-8f * c2)), p[0]);
        Assert.Equal(-p[0], p[1]);
        Assert.Equal(0f, p[3]);
        var words = new int[64];
        b.Download(m8, words);
        var mCodes = MemoryMarshal.AsBytes(words.AsSpan()).ToArray();
        b.Download(v8, words);
        var vCodes = MemoryMarshal.AsBytes(words.AsSpan()).ToArray();
        // m/absmax: 1 → code 255 (1.0), −1 → code 0 (the most negative), 0.5 → the code of value 0.5 (191 = 64/128 + 127), 0 → 127.
        Assert.Equal(new byte[] { 255, 0, 191, 127 }, mCodes[..4]);
        // v/absmax: 1, 1, 0.25 (→ code 64 of i/255 nearest 0.25: 63.75 → 64), 0 → 0.
        Assert.Equal(new byte[] { 255, 255, 64, 0 }, vCodes[..4]);
    }
}
