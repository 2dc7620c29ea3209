using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests;

internal static class TinyModels
{
    public static TransformerSpec Spec(string architecture, bool tied, int? headDim = null)
    {
        var (qkvBias, outputBias, qkNorm) = TransformerSpec.Variant(architecture, attentionBias: false);
        return new TransformerSpec
        {
            Architecture = architecture,
            VocabSize = 32,
            HiddenSize = 16,
            IntermediateSize = 24,
            NumLayers = 2,
            NumHeads = 4,
            NumKvHeads = 2,
            HeadDimOverride = headDim,
            RopeTheta = 10000,
            MaxPositionEmbeddings = 64,
            TieWordEmbeddings = tied,
            QkvBias = qkvBias,
            OutputBias = outputBias,
            QkNorm = qkNorm,
        };
    }

    public static CausalLM Create(TransformerSpec spec, TrainingSetup setup, int seed = 1, float std = 0.3f) =>
        CausalLM.Create(spec, new CpuBackend(2), setup, new RandomWeights(seed, std));

    /// <summary>Two rows of 7 tokens: row 0 packs sequences of 3 and 4 tokens, row 1 is one sequence of 5 plus 2 padding.</summary>
    public static TokenBatch PackedBatch()
    {
        int[] ids = [5, 9, 2, 7, 7, 30, 1, 4, 8, 15, 16, 23, 0, 0];
        int[] labels = [9, 2, -100, 7, 30, 1, -100, 8, 15, 16, 23, -100, -100, -100];
        int[] pos = [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1];
        int[] seg = [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1];
        return new TokenBatch(2, 7, ids, labels, pos, seg);
    }

    /// <summary>Sets every LoRA B to random values (PEFT starts them at zero, which would hide A's gradient).</summary>
    public static void RandomizeLoraB(CausalLM model, int seed)
    {
        var r = new Random(seed);
        foreach (var p in model.TrainableParameters.Where(p => p.Role == ParameterRole.LoraB))
        {
            var v = new float[p.Length];
            for (int i = 0; i < v.Length; i++) v[i] = (float)(r.NextDouble() - 0.5) * 0.5f;
            model.WriteParameter(p.HfName, v);
        }
    }

    public static float[] Grad(CausalLM model, TrainableParameter p)
    {
        var g = new float[p.Length];
        model.Backend.Download(p.Grad, g);
        return g;
    }
}
