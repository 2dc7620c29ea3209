using System.Text.Json.Nodes;
using FineTune.Engine;
using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests;

/// <summary>
/// Mixture of experts (qwen3_moe, mixtral): config keys and defaults, the router (softmax, top-k with ties to the lower
/// index, renormalisation), the load-balancing loss as transformers' load_balancing_loss_func computes it, whole-model
/// gradients against finite differences, and the hub's per-expert weight layout in and out.
/// </summary>
public sealed class MoeTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    internal static TransformerSpec Spec(string architecture, bool normTopK = true, IReadOnlyList<int>? mlpOnly = null, int experts = 4, int topK = 2,
        double auxCoef = 0.001, bool outputRouterLogits = false)
    {
        var baseSpec = TinyModels.Spec(architecture, tied: false);
        return baseSpec with
        {
            Moe = new MoeConfig
            {
                NumExperts = experts, NumExpertsPerTok = topK, ExpertIntermediateSize = 12, NormTopKProb = normTopK,
                MlpOnlyLayers = mlpOnly ?? [], RouterAuxLossCoef = auxCoef, OutputRouterLogits = outputRouterLogits,
            },
        };
    }

    [Fact]
    public void Qwen3_moe_config_takes_qwen3_moe_defaults_and_keeps_its_keys()
    {
        var c = ModelConfig.FromJson(JsonNode.Parse(
            """{"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}""")!.AsObject(), "config.json");
        Assert.Equal(("Qwen3MoeForCausalLM", 16, 151936, 32768), (c.ArchitectureClassName, c.HeadDim, c.VocabSize, c.MaxPositionEmbeddings));
        var moe = c.Moe!;
        Assert.Equal((128, 8, 768, false, 1, 0.001, false), (moe.NumExperts, moe.NumExpertsPerTok, moe.ExpertIntermediateSize, moe.NormTopKProb,
            moe.DecoderSparseStep, moe.RouterAuxLossCoef, moe.OutputRouterLogits));
        var json = c.ToJson();
        Assert.Equal(128, (int)json["num_experts"]!);
        Assert.Equal(768, (int)json["moe_intermediate_size"]!);
        Assert.Empty(json["mlp_only_layers"]!.AsArray());
    }

    [Fact]
    public void Mixtral_config_takes_mixtral_defaults_with_experts_of_intermediate_size()
    {
        var c = ModelConfig.FromJson(JsonNode.Parse(
            """{"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_local_experts": 4}""")!.AsObject(), "config.json");
        Assert.Equal(("MixtralForCausalLM", 32000, 131072, 1e-5), (c.ArchitectureClassName, c.VocabSize, c.MaxPositionEmbeddings, c.RmsNormEps));
        Assert.Equal((4, 2, 96, true), (c.Moe!.NumExperts, c.Moe.NumExpertsPerTok, c.Moe.ExpertIntermediateSize, c.Moe.NormTopKProb));
        Assert.Equal(4, (int)c.ToJson()["num_local_experts"]!);
    }

    [Fact]
    public void Decoder_sparse_step_and_mlp_only_layers_pick_the_dense_layers_as_qwen3_moe_does()
    {
        var moe = new MoeConfig { NumExperts = 4, NumExpertsPerTok = 2, ExpertIntermediateSize = 8, DecoderSparseStep = 2, MlpOnlyLayers = [3] };
        Assert.Equal([false, true, false, false, false, true], Enumerable.Range(0, 6).Select(moe.IsSparse));
    }

    [Fact]
    public void Mlp_only_layers_outside_the_model_are_a_located_error()
    {
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.FromJson(JsonNode.Parse(
            """{"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "mlp_only_layers": [2]}""")!.AsObject(), "config.json"));
        Assert.Equal("config.json: \"mlp_only_layers\" names layer 2, but the model has layers 0 … 1.", e.Message);
    }

    private static (float[] Probs, int[] Idx, float[] W) Route(float[] logits, int n, int e, int k, bool normalize)
    {
        var B = new CpuBackend(1);
        var arena = new TensorArena.Builder();
        int hl = arena.Add("l", DType.F32, n, e), hp = arena.Add("p", DType.F32, n, e), hi = arena.Add("i", DType.I32, n, k), hw = arena.Add("w", DType.F32, n, k);
        using var a = arena.Build(B);
        B.Upload(a[hl], logits);
        B.MoeRoute(a[hl], a[hp], a[hi], a[hw], normalize);
        var p = new float[n * e]; var idx = new int[n * k]; var w = new float[n * k];
        B.Download(a[hp], p); B.Download(a[hi], idx); B.Download(a[hw], w);
        return (p, idx, w);
    }

    [Fact]
    public void The_router_takes_the_k_largest_probabilities_ties_to_the_lower_index_and_renormalises()
    {
        // Row 0: experts 1 and 3 tie for first, 0 and 2 for second: torch.topk gives 1, 3. Row 1: 2 > 0 > others.
        float[] logits = [0f, 1f, 0f, 1f, 0.5f, -1f, 2f, -1f];
        var (p, idx, w) = Route(logits, 2, 4, 2, normalize: false);
        Assert.Equal([1, 3, 2, 0], idx);
        double z0 = 2 + 2 * Math.E;
        Assert.Equal(Math.E / z0, p[1], 6);
        Assert.Equal(Math.E / z0, w[0], 6);
        var (_, _, wn) = Route(logits, 2, 4, 2, normalize: true);
        Assert.Equal(0.5f, wn[0], 6);
        Assert.Equal(0.5f, wn[1], 6);
        Assert.Equal(Math.Exp(2) / (Math.Exp(2) + Math.Exp(0.5)), wn[2], 6);
    }

    [Fact]
    public void The_load_balancing_loss_is_transformers_formula_over_the_sparse_layers_and_masked_tokens()
    {
        // load_balancing_loss_func: E · Σ_e (Σ_j f_je)·P_e with f and P means over (layer, unmasked token).
        var setup = new TrainingSetup { FinetuningType = FinetuningType.Full };
        using var model = TinyModels.Create(Spec("qwen3_moe", outputRouterLogits: true), setup);
        var batch = TinyModels.PackedBatch() with { AttentionMask = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0] };
        var result = model.ForwardBackward(batch);
        // Recompute from the router outputs the forward kept (no gradient checkpointing: one set per layer).
        var (counts, sums) = (new double[4], new double[4]);
        int masked = 12, layers = 2;
        for (int l = 0; l < layers; l++)
        {
            var (probs, idx) = model.RouterOutputs(l, 14);
            for (int t = 0; t < 14; t++)
            {
                int m = batch.AttentionMask![t];
                for (int j = 0; j < 2; j++) counts[idx[t * 2 + j]] += m;
                for (int x = 0; x < 4; x++) sums[x] += m * probs[t * 4 + x];
            }
        }
        double expected = 0;
        for (int x = 0; x < 4; x++) expected += counts[x] / (layers * masked) * (sums[x] / (layers * masked));
        expected *= 4;
        Assert.Equal(expected, result.RouterAuxLoss!.Value, 6);
        Assert.True(expected > 1.0, "the loss is at least 1 (perfect balance gives top_k·1 … here k = 2)");
    }

    /// <summary>‖g − ĝ‖/‖ĝ‖ over a few coordinates of every trainable parameter, ĝ from central differences of the training objective.</summary>
    private static double CheckGradients(CausalLM model, TokenBatch batch, float lossScale, int perParameter = 3, float h = 1e-2f)
    {
        model.ZeroGrad();
        model.ForwardBackward(batch, lossScale);
        var analytic = new List<float>();
        var numeric = new List<double>();
        var rng = new Random(11);
        foreach (var p in model.TrainableParameters)
        {
            float[] g = TinyModels.Grad(model, p);
            float[] value = model.ReadParameter(p.HfName);
            for (int s = 0; s < Math.Min(perParameter, value.Length); s++)
            {
                int i = rng.Next(value.Length);
                float keep = value[i];
                value[i] = keep + h; model.WriteParameter(p.HfName, value);
                double plus = model.TrainingObjective(batch, lossScale);
                value[i] = keep - h; model.WriteParameter(p.HfName, value);
                double minus = model.TrainingObjective(batch, lossScale);
                value[i] = keep; model.WriteParameter(p.HfName, value);
                analytic.Add(g[i]);
                numeric.Add((plus - minus) / (2.0 * h));
            }
        }
        double num = 0, den = 0;
        for (int i = 0; i < analytic.Count; i++)
        {
            num += (analytic[i] - numeric[i]) * (analytic[i] - numeric[i]);
            den += numeric[i] * numeric[i];
        }
        Assert.True(den > 1e-6, "gradients are all zero: the check would prove nothing");
        return Math.Sqrt(num / den);
    }

    [Theory]
    [InlineData("qwen3_moe", false, false)]
    [InlineData("qwen3_moe", true, true)]
    [InlineData("mixtral", true, false)]
    [InlineData("mixtral", true, true)]
    public void Full_finetuning_gradients_of_router_and_experts_match_finite_differences(string architecture, bool normTopK, bool aux)
    {
        // qwen3_moe with layer 1 dense (mlp_only_layers), so both MLP kinds are in one model; a large coefficient makes
        // the load-balancing term visible in the objective.
        var spec = Spec(architecture, normTopK, mlpOnly: architecture == "qwen3_moe" ? [1] : null, auxCoef: 0.5, outputRouterLogits: aux);
        using var model = TinyModels.Create(spec, new TrainingSetup { FinetuningType = FinetuningType.Full });
        Assert.Contains(model.TrainableParameters, p => p.HfName.EndsWith(".experts.down_proj", StringComparison.Ordinal) || p.HfName.EndsWith(".experts.w2", StringComparison.Ordinal));
        double err = CheckGradients(model, TinyModels.PackedBatch(), lossScale: 0.1f, perParameter: 4, h: 3e-3f);
        Assert.True(err < 2e-3, $"relative error {err}");
    }

    [Fact]
    public void Lora_on_attention_of_a_moe_model_matches_finite_differences_with_the_aux_loss_under_checkpointing()
    {
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 4, GradientCheckpointing = true, MoeAuxLossCoef = 0.3 };
        using var model = TinyModels.Create(Spec("qwen3_moe"), setup);
        TinyModels.RandomizeLoraB(model, 3);
        // lora_target all: q, k, v, o (the experts and the router are not nn.Linear modules PEFT's all-linear wraps).
        Assert.Equal(2 * 4 * 2, model.TrainableParameters.Count);
        Assert.Equal(0.3, model.RouterAuxLossCoef);
        double err = CheckGradients(model, TinyModels.PackedBatch(), lossScale: 0.1f, h: 3e-3f);
        Assert.True(err < 2e-3, $"relative error {err}");
    }
}
