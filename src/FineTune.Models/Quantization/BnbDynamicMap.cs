namespace FineTune.Models.Quantization;

/// <summary>
/// bitsandbytes' 8-bit dynamic data type (functional.create_dynamic_map, Dettmers 2015): for exponents 10⁻⁶ … 10⁰ the
/// midpoints of a linear fraction grid in [0.1, 1], mirrored when signed, plus 0 and 1, sorted into 256 codes. It is the
/// code of double-quantized 4-bit absmax (signed) and of the 8-bit optimizer's first (signed) and second (unsigned) moments.
/// Computed in f32 as torch does it: linspace's scalar formula (start + step·i below the halfway point,
/// end − step·(steps − 1 − i) from it, each one fused multiply-add), means (b[i] + b[i+1]) / 2, each scaled by f32(10^(i−6)).
/// </summary>
public static class BnbDynamicMap
{
    private static readonly float[] SignedMap = Create(signed: true), UnsignedMap = Create(signed: false);

    /// <summary>create_dynamic_map(signed=True): code[127] = 0, code[255] = 1.</summary>
    public static ReadOnlySpan<float> Signed => SignedMap;

    /// <summary>create_dynamic_map(signed=False): code[0] = 0, code[255] = 1.</summary>
    public static ReadOnlySpan<float> Unsigned => UnsignedMap;

    private static float[] Create(bool signed)
    {
        const int maxExponentBits = 7, nonSignBits = 7;
        var data = new List<float>(256);
        for (int i = 0; i < maxExponentBits; i++)
        {
            int fractionItems = signed ? (1 << (i + nonSignBits - maxExponentBits)) + 1 : (1 << (i + nonSignBits - maxExponentBits + 1)) + 1;
            var boundaries = Linspace(0.1f, 1f, fractionItems);
            float scale = (float)Math.Pow(10, -(maxExponentBits - 1) + i);
            for (int j = 0; j + 1 < boundaries.Length; j++)
            {
                float mean = (boundaries[j] + boundaries[j + 1]) / 2f;
                data.Add(scale * mean);
                if (signed) data.Add(-scale * mean);
            }
        }
        // additional_items = 2^(7−7) − 1 = 0: none.
        data.Add(0f);
        data.Add(1f);
        if (data.Count != 256) throw new InvalidOperationException($"the dynamic map has {data.Count} values, expected 256");
        data.Sort();
        return data.ToArray();
    }

    private static float[] Linspace(float start, float end, int steps)
    {
        var v = new float[steps];
        float step = (end - start) / (steps - 1);
        int halfway = steps / 2;
        // torch's CPU kernel is compiled with FMA contraction: start + step·i and end − step·k round once (the device's
        // reference saw 42 signed / 31 unsigned map entries differ from the twice-rounded formula).
        for (int i = 0; i < steps; i++)
            v[i] = i < halfway ? MathF.FusedMultiplyAdd(step, i, start) : MathF.FusedMultiplyAdd(-step, steps - i - 1, end);
        return v;
    }
}
