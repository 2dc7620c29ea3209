using FineTune.Engine;
using FineTune.Engine.Cuda;

namespace FineTune.Models;

// The gemma block (sandwich norms, GeGLU, √hidden embedding scale, local-layer rope tables): what the architecture
// table's Sandwich / GeluTanh / ScaleEmbeddingBySqrtHidden options and Gemma 3's rope_local_base_freq add to the
// llama block, as transformers' Gemma2DecoderLayer / Gemma3DecoderLayer compute it.
public sealed partial class CausalLM
{
    /// <summary>
    /// Gemma: the embedding output × √hidden_size, the normalizer rounded to the compute dtype first (HF casts it to
    /// the hidden states' dtype, so bf16 training multiplies by bf16(√h)); null for the other families.
    /// </summary>
    private float? EmbeddingScale
    {
        get
        {
            if (!Spec.Family.Block.ScaleEmbeddingBySqrtHidden) return null;
            float s = MathF.Sqrt(Spec.HiddenSize);
            return Backend.ComputeDType == DType.BF16 ? Bf16.ToFloat(Bf16.FromFloat(s)) : s;
        }
    }

    /// <summary>The rope table of layer L: the local table (rope_local_base_freq) for Gemma 3's sliding layers, else the model's.</summary>
    private (Tensor Cos, Tensor Sin) RopeTablesOf(DecoderLayer L) =>
        _cosLocal is not null && Spec.IsSlidingLayer(L.Index) ? (_cosLocal, _sinLocal!) : (_cos!, _sin!);

    /// <summary>Local layers rotate with the default rope at rope_local_base_freq (no scaling, attention factor 1).</summary>
    private static void LocalRopeTable(TransformerSpec spec, int length, float[] cos, float[] sin) =>
        RopeTables.Compute(spec with { RopeTheta = spec.LocalRopeTheta!.Value, RopeScaling = null }, length, cos, sin);

    private void Activate(Tensor act, Tensor gate, Tensor up)
    {
        if (Spec.Family.Block.Activation == MlpActivation.GeluTanh) Backend.GeGlu(act, gate, up);
        else Backend.SwiGlu(act, gate, up);
    }

    private void ActivateBackward(Tensor dgate, Tensor dup, Tensor dact, Tensor gate, Tensor up)
    {
        if (Spec.Family.Block.Activation == MlpActivation.GeluTanh) Backend.GeGluBackward(dgate, dup, dact, gate, up);
        else Backend.SwiGluBackward(dgate, dup, dact, gate, up);
    }

    /// <summary>
    /// After attention, the sandwich block: resMid = x + post_attention_norm(o(att)), ln2 = pre_feedforward_norm(resMid),
    /// y = resMid + post_feedforward_norm(down(act(gate(ln2)) ⊙ up(ln2))), every norm (1 + w). y serves as scratch for the
    /// normed attention output before it holds the layer's output.
    /// </summary>
    private void SandwichTail(DecoderLayer L, LayerActivations a, Tensor x, Tensor att, Tensor y, int n, ulong seed, bool training)
    {
        var B = Backend;
        float eps = (float)Spec.RmsNormEps, off = Spec.NormWeightOffset;
        var attnOut = Rows(a.AttnOut!, n);
        SetForward(L, 1, [attnOut], att, a, n, seed, training);
        B.RmsNorm(y, Head1(a.RstdPostAttn!, n), attnOut, L.PostAttentionNorm.Value, eps, off);
        var resMid = Rows(a.ResMid, n);
        var ln2 = Rows(a.Ln2, n);
        B.ResidualRmsNorm(resMid, ln2, Head1(a.Rstd2, n), x, y, L.PreFeedforwardNorm!.Value, eps, off);
        var gate = Rows(a.Gate, n);
        var up = Rows(a.Up, n);
        var act = Rows(a.Act, n);
        SetForward(L, 2, [gate, up], ln2, a, n, seed, training);
        Activate(act, gate, up);
        var mlpOut = Rows(a.MlpOut!, n);
        SetForward(L, 3, [mlpOut], act, a, n, seed, training);
        B.RmsNorm(y, Head1(a.RstdPostFf!, n), mlpOut, L.PostFeedforwardNorm!.Value, eps, off);
        B.Add(y, resMid);
    }

    /// <summary>
    /// Backward of <see cref="SandwichTail"/> from ∂L/∂y in Dres: leaves ∂L/∂resMid in Dres (the residual path to x)
    /// and returns ∂L/∂(o_proj's output) for the attention's backward.
    /// </summary>
    private Tensor SandwichTailBackward(DecoderLayer L, LayerActivations a, int n, ulong seed)
    {
        var B = Backend;
        var acts = _acts!;
        float off = Spec.NormWeightOffset;
        var dres = Rows(acts.Dres, n);
        var dln = Rows(acts.Dln, n);
        var dsub = Rows(acts.DsubLayer!, n);
        B.RmsNormBackward(dsub, L.PostFeedforwardNorm!.Grad, dres, Rows(a.MlpOut!, n), L.PostFeedforwardNorm.Value, Head1(a.RstdPostFf!, n), off, accumulate: false);
        // In place, as the pre-norm MLP's backward: dact over act, dgate and dup over gate and up (none is read again).
        var act = Rows(a.Act, n);
        var dact = act;
        SetBackward(L, 3, dact, [dsub], act, a, n, seed);
        var (dgate, dup) = (Rows(a.Gate, n), Rows(a.Up, n));
        ActivateBackward(dgate, dup, dact, dgate, dup);
        SetBackward(L, 2, dln, [dgate, dup], Rows(a.Ln2, n), a, n, seed);
        B.RmsNormBackward(dres, L.PreFeedforwardNorm!.Grad, dln, Rows(a.ResMid, n), L.PreFeedforwardNorm.Value, Head1(a.Rstd2, n), off);
        B.RmsNormBackward(dsub, L.PostAttentionNorm.Grad, dres, Rows(a.AttnOut!, n), L.PostAttentionNorm.Value, Head1(a.RstdPostAttn!, n), off, accumulate: false);
        return dsub;
    }
}

/// <summary>The language model's weights inside a Gemma3ForConditionalGeneration checkpoint, read under the text model's names.</summary>
internal sealed class LanguageModelWeightSource(IWeightSource inner, LanguageModelWeights layout) : IWeightSource
{
    public bool Contains(string name) => layout.StoredNames(name).Any(inner.Contains);

    public void Read(string name, ReadOnlySpan<int> shape, Span<float> destination)
    {
        foreach (var stored in layout.StoredNames(name))
            if (inner.Contains(stored)) { inner.Read(stored, shape, destination); return; }
        // Neither layout holds it: let the inner source name the missing tensor under its usual (transformers 4) name.
        inner.Read(layout.StoredNames(name).First(), shape, destination);
    }
}
