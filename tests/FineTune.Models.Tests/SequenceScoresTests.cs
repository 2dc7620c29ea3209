using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests;

/// <summary>
/// The objective seam: ScoreSequences/BackwardSequences and SequenceValues/BackwardValues on preference pairs packed
/// two segments to a row (chosen, rejected, then padding), against log-softmax of the full logits, finite differences,
/// separate rows, the base model without its adapter, and ForwardBackward.
/// </summary>
public sealed class SequenceScoresTests
{
    private const int SeqLen = 10;

    /// <summary>A sequence of tokens whose first <paramref name="Prompt"/> tokens carry no label.</summary>
    private sealed record Sequence(int[] Tokens, int Prompt);

    private static readonly Sequence Chosen0 = new([3, 5, 9, 2], 2), Rejected0 = new([3, 5, 11, 7, 6], 2);
    private static readonly Sequence Chosen1 = new([8, 1, 4, 20, 13], 3), Rejected1 = new([8, 1, 4, 25], 3);

    /// <summary>
    /// Rows of packed sequences as DataLoader.Collate packs them: segment j = the j-th sequence, positions restarting,
    /// labels the next token after the prompt (-100 on the prompt and the last token), padding the segment after the last.
    /// </summary>
    private static TokenBatch Packed(params Sequence[][] rows)
    {
        int b = rows.Length, n = b * SeqLen;
        int[] ids = new int[n], labels = new int[n], pos = new int[n], seg = new int[n];
        Array.Fill(labels, -100);
        for (int r = 0; r < b; r++)
        {
            int t = 0;
            for (int s = 0; s < rows[r].Length; s++)
            {
                var q = rows[r][s];
                for (int i = 0; i < q.Tokens.Length; i++, t++)
                {
                    int at = r * SeqLen + t;
                    ids[at] = q.Tokens[i];
                    pos[at] = i;
                    seg[at] = s;
                    if (i >= q.Prompt - 1 && i + 1 < q.Tokens.Length) labels[at] = q.Tokens[i + 1];
                }
            }
            for (int p = 0; t < SeqLen; t++, p++)
            {
                pos[r * SeqLen + t] = p;
                seg[r * SeqLen + t] = rows[r].Length;
            }
        }
        return new TokenBatch(b, SeqLen, ids, labels, pos, seg);
    }

    /// <summary>Two pairs, one to a row: (chosen, rejected, padding) segments 0, 1, 2.</summary>
    private static TokenBatch Pairs() => Packed([Chosen0, Rejected0], [Chosen1, Rejected1]);

    private static double[] Weights(int count, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => r.NextDouble() * 3 - 1.5).ToArray();
    }

    private static CausalLM Lora(string architecture, bool tied, TrainingSetup? setup = null, int seed = 1)
    {
        var model = TinyModels.Create(TinyModels.Spec(architecture, tied), setup ?? new TrainingSetup { LoraRank = 2, LoraAlpha = 4 }, seed);
        TinyModels.RandomizeLoraB(model, 3);
        return model;
    }

    /// <summary>
    /// ‖g − ĝ‖/‖ĝ‖ over up to <paramref name="perParameter"/> coordinates of every trainable parameter, g from
    /// <paramref name="backward"/>(w) after <paramref name="forward"/>(forBackward: true), ĝ the central differences of
    /// Σ_k w_k·forward[k] with the same random draw (RandomCounter held).
    /// </summary>
    private static double CheckGradients(CausalLM model, Func<bool, double[]> forward, Action<double[]> backward, double[] w, int perParameter = 3, float h = 1e-2f)
    {
        model.ZeroGrad();
        long counter = model.RandomCounter;
        forward(true);
        backward(w);
        double Loss()
        {
            model.RandomCounter = counter;
            var y = forward(true);
            return y.Select((v, k) => v * w[k]).Sum();
        }
        // Five-point stencil: the weighted sums of log-probs curve enough that the two-point O(h²) error alone reaches
        // 3e-3 at h = 1e-2 on these tiny models, as it does for the CE loss.
        return ParameterGradientCheck.RelativeError(model, Loss, perParameter, h, seed: 7, fivePoint: true);
    }

    private static double CheckSequenceGradients(CausalLM model, TokenBatch batch, int seed, int perParameter = 3, float h = 1e-2f)
    {
        int keys = batch.BatchSize * (batch.SegmentIds.Max() + 1);
        return CheckGradients(model, fb => model.ScoreSequences(batch, fb).SumLogProb, w => model.BackwardSequences(w), Weights(keys, seed), perParameter, h);
    }

    private static double CheckValueGradients(CausalLM model, TokenBatch batch, int seed, int perParameter = 3, float h = 1e-2f)
    {
        int keys = batch.BatchSize * (batch.SegmentIds.Max() + 1);
        return CheckGradients(model, fb => model.SequenceValues(batch, fb), w => model.BackwardValues(w), Weights(keys, seed), perParameter, h);
    }

    [Theory]
    [InlineData("llama", false)]
    [InlineData("qwen3", true)]
    public void ScoresAreTheSummedLogSoftmaxOfTheFullLogitsPerSegment(string architecture, bool tied)
    {
        using var model = Lora(architecture, tied);
        var batch = Pairs();
        var scores = model.ScoreSequences(batch, forBackward: false);
        Assert.Equal((2, 3), (scores.Rows, scores.SegmentsPerRow));
        Assert.Equal([2, 3, 0, 2, 1, 0], scores.Tokens);
        float[] logits = model.ForwardLogits(batch);
        int v = model.Spec.VocabSize;
        var expected = new double[6];
        for (int i = 0; i < batch.TokenCount; i++)
        {
            int label = batch.Labels[i];
            if (label == -100) continue;
            double max = double.NegativeInfinity, sum = 0;
            for (int j = 0; j < v; j++) max = Math.Max(max, logits[i * v + j]);
            for (int j = 0; j < v; j++) sum += Math.Exp(logits[i * v + j] - max);
            expected[i / SeqLen * 3 + batch.SegmentIds[i]] += logits[i * v + label] - max - Math.Log(sum);
        }
        for (int k = 0; k < 6; k++) Assert.Equal(expected[k], scores.SumLogProb[k], 1e-5);
        Assert.Equal(0, scores.SumLogProb[2]);
        // The training forward without dropout scores the same bits; LM head chunks of 3 rows (other product shapes) agree.
        Assert.Equal(scores.SumLogProb, model.ScoreSequences(batch, forBackward: true).SumLogProb);
        using var chunked = Lora(architecture, tied, new TrainingSetup { LoraRank = 2, LoraAlpha = 4, LogitsChunkRows = 3 });
        var small = chunked.ScoreSequences(batch, forBackward: false).SumLogProb;
        for (int k = 0; k < 6; k++) Assert.Equal(scores.SumLogProb[k], small[k], 1e-5);
    }

    [Fact]
    public void APairInOneRowScoresAsItsTwoSequencesInSeparateRows()
    {
        using var model = Lora("qwen2", false);
        var pair = model.ScoreSequences(Pairs(), forBackward: false);
        var alone = model.ScoreSequences(Packed([Chosen0], [Rejected0], [Chosen1], [Rejected1]), forBackward: false);
        Assert.Equal(2, alone.SegmentsPerRow);
        double[] pairScores = [pair.SumLogProb[0], pair.SumLogProb[1], pair.SumLogProb[3], pair.SumLogProb[4]];
        double[] aloneScores = [alone.SumLogProb[0], alone.SumLogProb[2], alone.SumLogProb[4], alone.SumLogProb[6]];
        for (int i = 0; i < 4; i++) Assert.Equal(aloneScores[i], pairScores[i], 1e-5);
        Assert.Equal([alone.Tokens[0], alone.Tokens[2], alone.Tokens[4], alone.Tokens[6]], new[] { pair.Tokens[0], pair.Tokens[1], pair.Tokens[3], pair.Tokens[4] });
        // Masking matters: the rejected sequence scored as a continuation of the chosen one (one segment) differs.
        var joined = Packed([new Sequence([.. Chosen0.Tokens, .. Rejected0.Tokens], Chosen0.Tokens.Length + Rejected0.Prompt)]);
        Assert.NotEqual(pair.SumLogProb[1], model.ScoreSequences(joined, forBackward: false).SumLogProb[0], 3);
    }

    [Theory]
    [InlineData("llama", false)]
    [InlineData("mistral", false)]
    [InlineData("qwen2", false)]
    [InlineData("qwen3", true)]
    public void LoraGradientsOfBackwardSequencesMatchFiniteDifferences(string architecture, bool tied)
    {
        using var model = Lora(architecture, tied);
        double err = CheckSequenceGradients(model, Pairs(), 11);
        Assert.True(err < 1e-3, $"relative error {err}");
    }

    [Fact]
    public void BackwardSequencesMatchFiniteDifferencesWithDropoutNeftuneAndCheckpointing()
    {
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 4, LoraDropout = 0.3, NeftuneNoiseAlpha = 5, GradientCheckpointing = true };
        using var model = Lora("qwen3", true, setup);
        model.RandomCounter = 5;
        double err = CheckSequenceGradients(model, Pairs(), 12, h: 3e-3f);
        Assert.True(err < 1e-3, $"relative error {err}");
        Assert.Equal(6, model.RandomCounter); // each forward for backward draws once (every difference restarted at 5)
    }

    [Theory]
    [InlineData("qwen2", false)]
    [InlineData("llama", true)]
    public void FullFinetuningGradientsOfBackwardSequencesMatchFiniteDifferences(string architecture, bool tied)
    {
        using var model = TinyModels.Create(TinyModels.Spec(architecture, tied), new TrainingSetup { FinetuningType = FinetuningType.Full });
        double err = CheckSequenceGradients(model, Pairs(), 13, perParameter: 2);
        Assert.True(err < 1e-3, $"relative error {err}");
    }

    [Fact]
    public void BackwardSequencesWithMinusOneEverywhereIsForwardBackwardBitForBit()
    {
        // Σ token cross-entropy = −Σ_k SumLogProb[k], so ∂L/∂SumLogProb = −1 must give ForwardBackward's gradients; the
        // two paths share the head's row routine, the chunk products and the layer backward, so the bits agree.
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 4, LoraDropout = 0.2, GradientCheckpointing = true, AdditionalTarget = ["norm"] };
        using var a = Lora("qwen3", false, setup);
        using var b = Lora("qwen3", false, setup);
        var batch = Pairs();
        a.RandomCounter = b.RandomCounter = 9;
        var loss = a.ForwardBackward(batch);
        var scores = b.ScoreSequences(batch, forBackward: true);
        b.BackwardSequences(Enumerable.Repeat(-1.0, scores.SumLogProb.Length).ToArray());
        Assert.Equal(a.RandomCounter, b.RandomCounter);
        foreach (var (pa, pb) in a.TrainableParameters.Zip(b.TrainableParameters))
            Assert.Equal(TinyModels.Grad(a, pa), TinyModels.Grad(b, pb));
        Assert.Equal(loss.SumLoss, -scores.SumLogProb.Sum(), 4);
        Assert.Equal(loss.TokenCount, scores.Tokens.Sum());
    }

    [Fact]
    public void WithoutAdaptersTheModelScoresAsTheBaseModelLoadedWithoutTheAdapter()
    {
        using var dir = new TempDir();
        string modelDir = dir.File("model"), adapterDir = dir.File("adapter");
        ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 32, IntermediateSize = 48, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8, Seed = 5 }, modelDir);
        // additional_target: the adapter also carries a trained final norm (PEFT modules_to_save), which the
        // adapter-disabled model must not read: PEFT's disable_adapter() runs the original module.
        using (var trained = CausalLM.Load(modelDir, new CpuBackend(2), new TrainingSetup { LoraRank = 2, LoraAlpha = 4, AdditionalTarget = ["norm"] }))
        {
            TinyModels.RandomizeLoraB(trained, 4);
            trained.WriteParameter("model.norm.weight", Enumerable.Range(0, 32).Select(i => 0.5f + i / 16f).ToArray());
            trained.SaveAdapter(adapterDir);
        }
        using var withAdapter = CausalLM.Load(modelDir, new CpuBackend(2), TrainingSetup.Inference, adapterDir);
        using var baseModel = CausalLM.Load(modelDir, new CpuBackend(2), TrainingSetup.Inference);
        var batch = Pairs();
        var reference = withAdapter.ScoreSequences(batch, forBackward: false, adapters: false);
        Assert.Equal(baseModel.ScoreSequences(batch, forBackward: false).SumLogProb, reference.SumLogProb);
        var policy = withAdapter.ScoreSequences(batch, forBackward: false);
        Assert.NotEqual(policy.SumLogProb[0], reference.SumLogProb[0], 3);
        // The adapter and the trained norm are back for the next forward.
        Assert.Equal(policy.SumLogProb, withAdapter.ScoreSequences(batch, forBackward: false).SumLogProb);
        Assert.Equal(0.5f + 31 / 16f, withAdapter.ReadParameter("model.norm.weight")[31]);
        // Training the LoRA model (its norm included) leaves the reference where the base model is.
        using var training = CausalLM.Load(modelDir, new CpuBackend(2), new TrainingSetup { AdditionalTarget = ["norm"] }, adapterDir);
        training.WriteParameter("model.norm.weight", new float[32]);
        Assert.Equal(reference.SumLogProb, training.ScoreSequences(batch, forBackward: false, adapters: false).SumLogProb);
    }

    [Fact]
    public void TheReferenceModelNeverTrainsAndABackwardNeedsItsOwnForward()
    {
        using var model = Lora("llama", false);
        var batch = Pairs();
        var e = Assert.Throws<ArgumentException>(() => model.ScoreSequences(batch, forBackward: true, adapters: false));
        Assert.StartsWith("adapters: false runs the reference model, which never trains: score it with forBackward: false", e.Message);
        var scores = model.ScoreSequences(batch, forBackward: true);
        model.ScoreSequences(batch, forBackward: false, adapters: false);
        var late = Assert.Throws<InvalidOperationException>(() => model.BackwardSequences(new double[scores.SumLogProb.Length]));
        Assert.StartsWith("BackwardSequences continues the last ScoreSequences(forBackward: true), and no forward may run in between (score the reference model before the policy)", late.Message);
        model.ScoreSequences(batch, forBackward: true);
        model.BackwardSequences(new double[6]);
        Assert.Throws<InvalidOperationException>(() => model.BackwardSequences(new double[6]));
        model.ScoreSequences(batch, forBackward: true);
        var size = Assert.Throws<ArgumentException>(() => model.BackwardSequences(new double[5]));
        Assert.StartsWith("BackwardSequences needs one gradient per (row, segment), 6, got 5", size.Message);
    }

    [Fact]
    public void ValuesAreTheValueHeadAtEachSegmentsLastToken()
    {
        using var model = Lora("qwen2", false, new TrainingSetup { LoraRank = 2, LoraAlpha = 4, ValueHead = true });
        Assert.True(model.HasValueHead);
        Assert.Contains(model.TrainableParameters, p => p.Name == "v_head.summary.weight" && p.Shape.SequenceEqual([1, 16]));
        Assert.Contains(model.TrainableParameters, p => p.Name == "v_head.summary.bias" && p.Shape.SequenceEqual([1]));
        float[] w = model.ReadParameter("v_head.summary.weight"), bias = model.ReadParameter("v_head.summary.bias");
        Assert.All(w.Append(bias[0]), x => Assert.InRange(x, -0.25f, 0.25f)); // U(±1/√16)
        Assert.True(w.Distinct().Count() == 16);
        var batch = Pairs();
        double[] values = model.SequenceValues(batch, forBackward: false);
        // Reference: the final-normed hidden state of the last token (row 0 chosen ends at 3, rejected at 8, padding at 9).
        var lnf = FinalNormed(model, batch);
        int[] last = [3, 8, 9, 14, 18, 19];
        for (int k = 0; k < 6; k++)
        {
            double expected = bias[0];
            for (int j = 0; j < 16; j++) expected += (double)lnf[last[k] * 16 + j] * w[j];
            Assert.Equal(expected, values[k], 1e-5);
        }
    }

    /// <summary>rmsnorm(res_L)·w_norm for every token, from a model whose head is the identity (lm_head = I on 16 of 32 rows).</summary>
    private static float[] FinalNormed(CausalLM model, TokenBatch batch)
    {
        var head = model.ReadParameter("lm_head.weight");
        var identity = new float[head.Length];
        for (int i = 0; i < 16; i++) identity[i * 16 + i] = 1;
        model.WriteParameter("lm_head.weight", identity);
        float[] logits = model.ForwardLogits(batch);
        model.WriteParameter("lm_head.weight", head);
        var h = new float[batch.TokenCount * 16];
        for (int t = 0; t < batch.TokenCount; t++) Array.Copy(logits, t * 32, h, t * 16, 16);
        return h;
    }

    [Theory]
    [InlineData(FinetuningType.Lora, 0.0)]
    [InlineData(FinetuningType.Lora, 0.1)]
    [InlineData(FinetuningType.Freeze, 0.1)]
    [InlineData(FinetuningType.Full, 0.0)]
    public void ValueGradientsMatchFiniteDifferences(FinetuningType type, double dropout)
    {
        var setup = new TrainingSetup { FinetuningType = type, LoraRank = 2, LoraAlpha = 4, FreezeTrainableLayers = 1, ValueHead = true, ValueHeadDropout = dropout };
        using var model = TinyModels.Create(TinyModels.Spec("llama", false), setup);
        if (type == FinetuningType.Lora) TinyModels.RandomizeLoraB(model, 8);
        Assert.Contains(model.TrainableParameters, p => p.Name == "v_head.summary.bias");
        model.RandomCounter = 3;
        double err = CheckValueGradients(model, Pairs(), 14, perParameter: type == FinetuningType.Full ? 2 : 3);
        Assert.True(err < 1e-3, $"relative error {err}");
        if (dropout > 0) // the summary dropout draws with the training forward: training values differ from eval values
            Assert.NotEqual(model.SequenceValues(Pairs(), forBackward: true)[0], model.SequenceValues(Pairs(), forBackward: false)[0], 6);
    }

    [Fact]
    public void ValueHeadIsSavedBesideTheAdapterAndTheModelAndLoadedBack()
    {
        using var dir = new TempDir();
        string modelDir = dir.File("model"), adapterDir = dir.File("adapter"), merged = dir.File("merged");
        ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 32, IntermediateSize = 48, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8, Seed = 6 }, modelDir);
        var batch = Pairs();
        double[] values;
        float[] weight, bias;
        using (var trained = CausalLM.Load(modelDir, new CpuBackend(2), new TrainingSetup { LoraRank = 2, LoraAlpha = 4, ValueHead = true, Seed = 9 }))
        {
            TinyModels.RandomizeLoraB(trained, 4);
            trained.WriteParameter("v_head.summary.bias", [0.75f]);
            values = trained.SequenceValues(batch, forBackward: false);
            weight = trained.ReadParameter("v_head.summary.weight");
            bias = trained.ReadParameter("v_head.summary.bias");
            trained.SaveAdapter(adapterDir);
            trained.SaveModel(merged);
        }
        foreach (string d in new[] { adapterDir, merged })
        {
            using var reader = SafetensorsReader.Open(Path.Combine(d, CausalLM.ValueHeadFileName));
            Assert.Equal(["v_head.summary.bias", "v_head.summary.weight"], reader.Tensors.Keys.Order(StringComparer.Ordinal));
            Assert.Equal(new long[] { 1, 32 }, reader.Get("v_head.summary.weight").Shape.ToArray());
            Assert.Equal(new long[] { 1 }, reader.Get("v_head.summary.bias").Shape.ToArray());
            Assert.Equal("F32", reader.Get("v_head.summary.weight").DType.ToString());
            var w = new float[32];
            reader.ReadAsFloat32("v_head.summary.weight", w);
            Assert.Equal(weight, w);
        }
        // Neither the adapter nor the model carries the value head as a module of its own.
        using (var adapter = SafetensorsReader.Open(Path.Combine(adapterDir, "adapter_model.safetensors")))
            Assert.DoesNotContain(adapter.Tensors.Keys, n => n.Contains("v_head", StringComparison.Ordinal));
        Assert.DoesNotContain("modules_to_save\": [", File.ReadAllText(Path.Combine(adapterDir, "adapter_config.json")));
        using (var model = SafetensorsReader.Open(Path.Combine(merged, "model.safetensors")))
            Assert.DoesNotContain(model.Tensors.Keys, n => n.Contains("v_head", StringComparison.Ordinal));

        using var fromAdapter = CausalLM.Load(modelDir, new CpuBackend(2), TrainingSetup.Inference, adapterDir);
        Assert.True(fromAdapter.HasValueHead);
        Assert.Equal(bias, fromAdapter.ReadParameter("v_head.summary.bias"));
        Assert.Equal(values, fromAdapter.SequenceValues(batch, forBackward: false));
        using var fromMerged = CausalLM.Load(merged, new CpuBackend(2), TrainingSetup.Inference);
        Assert.True(fromMerged.HasValueHead);
        var mergedValues = fromMerged.SequenceValues(batch, forBackward: false);
        for (int k = 0; k < values.Length; k++) Assert.Equal(values[k], mergedValues[k], 1e-4); // LoRA folded into W
        using var plain = CausalLM.Load(modelDir, new CpuBackend(2), TrainingSetup.Inference);
        Assert.False(plain.HasValueHead);
        var none = Assert.Throws<InvalidOperationException>(() => plain.SequenceValues(batch, forBackward: false));
        Assert.Equal("this model has no value head: build it with TrainingSetup.ValueHead, or load a directory holding value_head.safetensors", none.Message);
    }

    [Fact]
    public void AValueHeadFileWithoutItsBiasIsALocatedFormatError()
    {
        using var dir = new TempDir();
        string modelDir = dir.File("model");
        ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 32, IntermediateSize = 48, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8, Seed = 6 }, modelDir);
        var writer = new SafetensorsWriter(new Dictionary<string, string> { ["format"] = "pt" });
        writer.Add("v_head.summary.weight", new float[32], [1, 32]);
        string file = Path.Combine(modelDir, CausalLM.ValueHeadFileName);
        writer.Save(file);
        var e = Assert.Throws<ModelFormatException>(() => CausalLM.Load(modelDir, new CpuBackend(2), TrainingSetup.Inference));
        Assert.Equal($"{file}: tensor \"v_head.summary.bias\" is missing; a value head file holds v_head.summary.weight [1, hidden] and v_head.summary.bias [1].", e.Message);
    }
}
