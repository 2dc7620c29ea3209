namespace FineTune.Engine;

/// <summary>
/// How a product's FP8 input is scaled. Current scaling (Transformer Engine's Float8CurrentScaling) measures amax = max|x|
/// of the tensor itself first: two passes over x, exact to the tensor. Delayed scaling (Transformer Engine's
/// DelayedScaling, its default recipe) takes the scale from the largest amax this cast site saw in its last
/// <c>history</c> passes and records the new tensor's amax while it casts: one pass over x; values past the scale's
/// range saturate.
/// </summary>
public enum Fp8Scaling
{
    Current,
    Delayed,
}

/// <summary>
/// The delayed-scaling state of one FP8 cast site (a linear's forward input, or its output gradient), a slice of an F32
/// arena of <see cref="Stride"/>(history) values per site:
/// <list type="bullet">
/// <item>[0]: the largest amax in the history: the cast's scale is <see cref="Fp8.Scale"/>(it) through the pass;</item>
/// <item>[1]: the largest amax cast at this site in the pass so far (max of the pass's inputs; 0 before any);</item>
/// <item>[2]: how many amaxes were pushed into the history (an I32 held in the F32's bits);</item>
/// <item>[3 … 3 + history): the history, a ring written at pushes % history.</item>
/// </list>
/// <see cref="IBackend.Fp8AdvanceHistories"/> ends a pass: each site with a non-zero [1] pushes it, [0] becomes the
/// ring's largest value, [1] returns to 0. The scale is fixed between advances, so a layer's recompute under gradient
/// checkpointing casts exactly as its forward did. <paramref name="Ready"/> false (no pass has pushed at this site yet):
/// the cast scales currently (the codes of <see cref="Fp8Scaling.Current"/>) and records its amax the same way.
/// </summary>
/// <param name="State">F32 [<see cref="Stride"/>(history)], this site's slice of the arena.</param>
public readonly record struct Fp8DelayedScale(Tensor State, bool Ready)
{
    /// <summary>Values per site: the history's largest amax, the pass's amax, the push count and the ring.</summary>
    public static int Stride(int history) => 3 + history;

    /// <summary>The history length TE's DelayedScaling defaults to (amax_history_len).</summary>
    public const int DefaultHistory = 1024;

    /// <summary>The CPU reference of one site's advance (<see cref="IBackend.Fp8AdvanceHistories"/>), on its values.</summary>
    public static void Advance(Span<float> site, int history)
    {
        float pending = site[1];
        if (pending > 0f)
        {
            int pushes = BitConverter.SingleToInt32Bits(site[2]);
            site[3 + pushes % history] = pending;
            site[2] = BitConverter.Int32BitsToSingle(pushes + 1);
        }
        float max = 0f;
        foreach (float v in site.Slice(3, history))
            if (v > max) max = v;
        site[0] = max;
        site[1] = 0f;
    }
}

/// <summary>
/// An FP8 operand cast before its product (fp8_scaling: delayed): the kernel that writes a tensor also writes its codes
/// with a ready site's scale (<see cref="IBackend.SwiGluFp8"/>, <see cref="IBackend.SwiGluBackwardFp8"/>), and
/// <see cref="IBackend.Fp8MatMulCodes"/> reads them instead of casting again.
/// </summary>
/// <param name="Codes">I32 words holding the codes, one byte per value in row-major order (as <see cref="IBackend.QuantizeFp8"/> writes them).</param>
/// <param name="ScaleInverse">F32 [1]: 1/s, the factor that turns the codes back into values.</param>
public readonly record struct Fp8Operand(Tensor Codes, Tensor ScaleInverse);
