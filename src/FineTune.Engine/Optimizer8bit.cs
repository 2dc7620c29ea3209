namespace FineTune.Engine;

/// <summary>
/// The arithmetic of bitsandbytes' 8-bit block-wise Adam shared by the backends: the step constants computed once on
/// the host (so CPU and CUDA use the same bits) and the code search of bnb's quantize_2D.
/// </summary>
public static unsafe class Optimizer8bit
{
    /// <summary>bnb's BLOCKSIZE_2STATE: one absmax per 256 values of each state.</summary>
    public const int BlockSize = 256;

    /// <summary>bnb's min_8bit_size: tensors with fewer values keep 32-bit states.</summary>
    public const int MinSize = 4096;

    public readonly record struct StepConstants(float Beta1, float Beta2, float OneMinusBeta1, float OneMinusBeta2,
        float StepSize, float EpsTimesCorrection2, float Decay, float GradScale);

    /// <summary>
    /// correction1 = 1 − β1^t, correction2 = √(1 − β2^t), step_size = −lr·correction2/correction1 (bnb), the update
    /// p += step_size·m/(√v + eps·correction2), then p ·= 1 − lr·wd; GradScale folds in clipping as <see cref="IBackend.AdamW"/>.
    /// </summary>
    public static StepConstants Constants(AdamWStep step, float gradNormSquared)
    {
        float scale = step.GradScale;
        if (step.MaxGradNorm > 0)
        {
            float norm = scale * MathF.Sqrt(gradNormSquared);
            float coef = step.MaxGradNorm / (norm + 1e-6f);
            if (coef < 1f) scale *= coef;
        }
        float correction1 = 1f - MathF.Pow(step.Beta1, step.Step);
        float correction2 = MathF.Sqrt(1f - MathF.Pow(step.Beta2, step.Step));
        float stepSize = -step.LearningRate * correction2 / correction1;
        return new StepConstants(step.Beta1, step.Beta2, 1f - step.Beta1, 1f - step.Beta2, stepSize,
            step.Epsilon * correction2, 1f - step.LearningRate * step.WeightDecay, scale);
    }

    /// <summary>
    /// bnb's quantize_2D: a 7-step binary search over the sorted 256-entry code from the middle, then the nearer of the
    /// two neighbours by comparing with their midpoint (a value on a midpoint takes the lower code). Below code[0] or
    /// above code[255] the search's bounds are −1 (signed) / 0 (unsigned) and 1.
    /// </summary>
    public static byte Quantize(float* code, float x, bool signed)
    {
        int pivot = 127, upperPivot = 255, lowerPivot = 0;
        float lower = signed ? -1f : 0f, upper = 1f;
        float val = code[pivot];
        for (int i = 64; i > 0; i >>= 1)
        {
            if (x > val) { lowerPivot = pivot; lower = val; pivot += i; }
            else { upperPivot = pivot; upper = val; pivot -= i; }
            val = code[pivot];
        }
        if (x > val) return (byte)(x > (upper + val) * 0.5f ? upperPivot : pivot);
        return (byte)(x < (lower + val) * 0.5f ? lowerPivot : pivot);
    }

    /// <summary>The signed state's code, moved one step when the code's sign differs from the value's (bnb keeps m's sign).</summary>
    public static byte QuantizeSigned(float* code, float x, float value)
    {
        byte c = Quantize(code, x, signed: true);
        if (float.IsNegative(code[c]) != float.IsNegative(value)) c = value > 0f ? (byte)(c + 1) : (byte)(c - 1);
        return c;
    }
}
