namespace FineTune.Models;

/// <summary>
/// cos/sin tables [positions, head_dim/2] of rotary embeddings, computed the way HF transformers does
/// (inverse frequencies base^(−2i/d) in float32, then the rope_scaling rule, then attention scaling).
/// </summary>
public static class RopeTables
{
    /// <summary>inv_freq[i] for i &lt; d/2 and the factor that multiplies cos and sin.</summary>
    public static (float[] InvFreq, float AttentionScaling) InverseFrequencies(TransformerSpec spec, int seqLen)
    {
        int d = spec.HeadDim, half = d / 2;
        double theta = spec.RopeTheta;
        RopeScalingSpec? rs = spec.RopeScaling;
        string type = rs?.Type ?? "default";
        double factor = rs?.Factor ?? 1.0;
        int originalMax = rs?.OriginalMaxPositionEmbeddings ?? spec.MaxPositionEmbeddings;
        if (type == "dynamic" && seqLen > spec.MaxPositionEmbeddings)
        {
            // Dynamic NTK: base' = base·((factor·L/max) − (factor − 1))^(d/(d−2)).
            theta *= Math.Pow(factor * seqLen / spec.MaxPositionEmbeddings - (factor - 1), d / (d - 2.0));
        }
        var inv = new float[half];
        for (int i = 0; i < half; i++) inv[i] = (float)(1.0 / Math.Pow(theta, (float)(2 * i) / d));
        float scaling = 1f;
        switch (type)
        {
            case "default" or "dynamic":
                break;
            case "linear":
                for (int i = 0; i < half; i++) inv[i] = (float)(inv[i] / factor);
                break;
            case "llama3":
                {
                    double lowWavelen = originalMax / rs!.LowFreqFactor, highWavelen = originalMax / rs.HighFreqFactor;
                    for (int i = 0; i < half; i++)
                    {
                        double wavelen = 2 * Math.PI / inv[i];
                        if (wavelen > lowWavelen) inv[i] = (float)(inv[i] / factor);
                        else if (wavelen >= highWavelen)
                        {
                            double smooth = (originalMax / wavelen - rs.LowFreqFactor) / (rs.HighFreqFactor - rs.LowFreqFactor);
                            inv[i] = (float)((1 - smooth) * inv[i] / factor + smooth * inv[i]);
                        }
                    }
                    break;
                }
            case "yarn":
                {
                    // Blend interpolated (÷factor) and extrapolated frequencies with a linear ramp between the
                    // correction dims of beta_fast and beta_slow rotations; mscale 0.1·ln(factor) + 1.
                    double Dim(double rotations) => d * Math.Log(originalMax / (rotations * 2 * Math.PI)) / (2 * Math.Log(spec.RopeTheta));
                    double low = Math.Max(Math.Floor(Dim(rs!.BetaFast)), 0), high = Math.Min(Math.Ceiling(Dim(rs.BetaSlow)), d - 1);
                    if (low == high) high += 0.001;
                    for (int i = 0; i < half; i++)
                    {
                        double ramp = Math.Clamp((i - low) / (high - low), 0, 1);
                        double extrapolation = 1 - ramp;
                        double f = inv[i];
                        inv[i] = (float)(f / factor * (1 - extrapolation) + f * extrapolation);
                    }
                    scaling = (float)(rs.AttentionFactor ?? (factor <= 1 ? 1.0 : 0.1 * Math.Log(factor) + 1.0));
                    break;
                }
            case "longrope":
                {
                    // transformers' _compute_longrope_parameters: inv_freq = 1 / (ext · base^(2i/d)) with ext the
                    // long factors when the sequence outgrows the pre-training context, else the short ones; the
                    // attention factor √(1 + ln(factor) / ln(original)), factor = max / original unless given.
                    double f = rs!.HasFactor ? factor : (double)spec.MaxPositionEmbeddings / originalMax;
                    var ext = seqLen > originalMax ? rs.LongFactor! : rs.ShortFactor!;
                    for (int i = 0; i < half; i++)
                        inv[i] = 1f / ((float)ext[i] * (float)Math.Pow(theta, (float)(2 * i) / d));
                    scaling = (float)(rs.AttentionFactor ?? (f <= 1 ? 1.0 : Math.Sqrt(1 + Math.Log(f) / Math.Log(originalMax))));
                    break;
                }
            default:
                throw new NotSupportedException($"rope_scaling type '{type}' is not supported; use linear, dynamic, yarn, llama3 or longrope");
        }
        return (inv, scaling);
    }

    /// <summary>longrope: the longest sequence the short factors serve (original_max_position_embeddings).</summary>
    public static int LongRopeThreshold(TransformerSpec spec) => spec.RopeScaling?.OriginalMaxPositionEmbeddings ?? spec.MaxPositionEmbeddings;

    /// <summary>Fills cos and sin ([positions·d/2]) for positions 0 … positions−1.</summary>
    public static void Compute(TransformerSpec spec, int positions, Span<float> cos, Span<float> sin)
    {
        var (inv, scaling) = InverseFrequencies(spec, positions);
        int half = inv.Length;
        for (int p = 0; p < positions; p++)
        {
            for (int i = 0; i < half; i++)
            {
                float angle = p * inv[i];
                cos[p * half + i] = (float)Math.Cos(angle) * scaling;
                sin[p * half + i] = (float)Math.Sin(angle) * scaling;
            }
        }
    }
}
