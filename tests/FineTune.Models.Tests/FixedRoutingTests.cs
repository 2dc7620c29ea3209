namespace FineTune.Models.Tests;

/// <summary>
/// The routing test hook (<see cref="CausalLM.RoutingOverride"/>, what the device checks use to compare CUDA with the CPU
/// reference under like routing): the model's own choices change nothing; other choices route the rows to the given
/// experts, weighted by the model's own probabilities there; and the training objective stays differentiable under them.
/// </summary>
public sealed class FixedRoutingTests
{
    private const int Tokens = 14; // TinyModels.PackedBatch

    /// <summary>Choices no router picked: token t goes to experts (t + 1) mod E, (t + 3) mod E, … (distinct for E = 4, k = 2).</summary>
    private static int[]?[] OtherRouting(int layers, int experts, int k) =>
        Enumerable.Range(0, layers).Select(l => (int[]?)Enumerable.Range(0, Tokens * k).Select(i => (i / k + l + 2 * (i % k) + 1) % experts).ToArray()).ToArray();

    private static float[] Grads(CausalLM model) => model.TrainableParameters.SelectMany(p => TinyModels.Grad(model, p)).ToArray();

    [Theory]
    [InlineData("qwen3_moe", false, false)]
    [InlineData("qwen3_moe", true, true)]
    [InlineData("mixtral", true, false)]
    public void Fixing_the_routing_to_the_models_own_choices_changes_nothing_bit_for_bit(string architecture, bool normTopK, bool checkpointing)
    {
        var spec = MoeTests.Spec(architecture, normTopK, auxCoef: 0.5, outputRouterLogits: true);
        using var model = TinyModels.Create(spec, new TrainingSetup { FinetuningType = FinetuningType.Full, GradientCheckpointing = checkpointing });
        var batch = TinyModels.PackedBatch();
        model.RoutingRecord = new int[]?[spec.NumLayers];
        var logits = model.ForwardLogits(batch);
        var own = model.RoutingRecord.ToArray();
        model.ZeroGrad();
        var result = model.ForwardBackward(batch, 0.1f);
        var grads = Grads(model);
        Assert.Equal(own, model.RoutingRecord);

        model.RoutingOverride = own;
        Assert.Equal(logits, model.ForwardLogits(batch));
        model.ZeroGrad();
        var fixedResult = model.ForwardBackward(batch, 0.1f);
        Assert.Equal((result.SumLoss, result.RouterAuxLoss), (fixedResult.SumLoss, fixedResult.RouterAuxLoss));
        Assert.Equal(grads, Grads(model));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_fixed_routing_weights_the_given_experts_by_the_models_own_probabilities(bool normTopK)
    {
        var spec = MoeTests.Spec("qwen3_moe", normTopK);
        using var model = TinyModels.Create(spec, new TrainingSetup { FinetuningType = FinetuningType.Full });
        var batch = TinyModels.PackedBatch();
        double freeLoss = model.ForwardBackward(batch).SumLoss;
        var (freeProbs, freeIdx, _) = model.RouterOutputs(0, Tokens);
        var other = OtherRouting(spec.NumLayers, 4, 2);
        Assert.NotEqual(freeIdx, other[0]);

        model.RoutingOverride = other;
        model.ZeroGrad();
        double fixedLoss = model.ForwardBackward(batch).SumLoss;
        Assert.NotEqual(freeLoss, fixedLoss);
        for (int l = 0; l < spec.NumLayers; l++)
        {
            // A training forward without checkpointing keeps every layer's router outputs.
            var (p, idx, w) = model.RouterOutputs(l, Tokens);
            Assert.Equal(other[l], idx);
            if (l == 0) Assert.Equal(freeProbs, p); // the router's input comes before any expert
            for (int t = 0; t < Tokens; t++)
            {
                double p0 = p[t * 4 + idx[t * 2]], p1 = p[t * 4 + idx[t * 2 + 1]], s = normTopK ? p0 + p1 : 1;
                Assert.Equal(p0 / s, w[t * 2], 6);
                Assert.Equal(p1 / s, w[t * 2 + 1], 6);
            }
        }
    }

    [Fact]
    public void With_one_expert_per_token_a_fixed_routing_gives_the_output_of_a_model_whose_experts_are_all_the_chosen_one()
    {
        // top 1, renormalised: w = 1 whatever the router says, so layer l sending every token to expert c_l computes what
        // a model whose E experts are all copies of c_l computes under any routing.
        var spec = MoeTests.Spec("mixtral", normTopK: true, topK: 1);
        int[] chosen = [2, 0];
        var batch = TinyModels.PackedBatch();
        using var model = TinyModels.Create(spec, TrainingSetup.Inference);
        var free = model.ForwardLogits(batch);
        model.RoutingOverride = chosen.Select(c => (int[]?)Enumerable.Repeat(c, Tokens).ToArray()).ToArray();
        var fixedLogits = model.ForwardLogits(batch);

        using var copies = TinyModels.Create(spec, TrainingSetup.Inference);
        for (int l = 0; l < spec.NumLayers; l++)
            foreach (var w in new[] { "w1", "w3", "w2" })
            {
                string name = $"model.layers.{l}.block_sparse_moe.experts.{w}";
                var stack = copies.ReadParameter(name);
                int per = stack.Length / 4;
                for (int e = 0; e < 4; e++) stack.AsSpan(chosen[l] * per, per).CopyTo(stack.AsSpan(e * per, per));
                copies.WriteParameter(name, stack);
            }
        var expected = copies.ForwardLogits(batch);
        Assert.True(free.Zip(expected).Max(z => Math.Abs(z.First - z.Second)) > 1e-3, "the copies must compute another model than the free routing");
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], fixedLogits[i], 1e-5f);
    }

    [Theory]
    [InlineData("qwen3_moe", true)]
    [InlineData("mixtral", true)]
    [InlineData("qwen3_moe", false)]
    public void Gradients_under_a_fixed_routing_match_finite_differences(string architecture, bool normTopK)
    {
        // The router still trains: the weights at the fixed experts come from its probabilities (and the aux loss's P).
        var spec = MoeTests.Spec(architecture, normTopK, auxCoef: 0.5, outputRouterLogits: true);
        using var model = TinyModels.Create(spec, new TrainingSetup { FinetuningType = FinetuningType.Full });
        model.RoutingOverride = OtherRouting(spec.NumLayers, 4, 2);
        double err = MoeTests.CheckGradients(model, TinyModels.PackedBatch(), lossScale: 0.1f, perParameter: 4, h: 3e-3f);
        Assert.True(err < 2e-3, $"relative error {err}");
    }

    [Fact]
    public void A_routing_override_of_another_token_count_is_refused_with_the_counts()
    {
        using var model = TinyModels.Create(MoeTests.Spec("qwen3_moe"), TrainingSetup.Inference);
        model.RoutingOverride = [new int[10], null];
        var e = Assert.Throws<ArgumentException>(() => model.ForwardLogits(TinyModels.PackedBatch()));
        Assert.Equal("model.layers.0.mlp: the routing override holds 10 choices, but this forward routes 14 tokens to 2 experts each (28)", e.Message);
    }
}
