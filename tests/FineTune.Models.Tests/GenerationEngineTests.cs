using FineTune.Engine.Cpu;
using FineTune.Models.Generation;

namespace FineTune.Models.Tests;

/// <summary>The continuous-batching engine against decoding one prompt at a time, on the CPU backend.</summary>
public sealed class GenerationEngineTests
{
    private static readonly int[][] Prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11], [12], [13, 14, 15, 16, 17, 18, 19, 20, 21], [22, 23, 24, 25], [3, 3, 3]];

    private static List<GeneratedSequence> RunEngine(CausalLM model, GenerationEngineOptions o, IEnumerable<GenerationRequest> requests, Action<GenerationEngine>? everyStep = null)
    {
        using var engine = new GenerationEngine(model, o);
        var list = requests.ToList();
        var results = new GeneratedSequence?[list.Count];
        for (int i = 0; i < list.Count; i++)
        {
            int row = i;
            var r = list[i];
            engine.Add(new GenerationRequest(r.Prompt, r.Options) { Adapter = r.Adapter, OnFinished = s => results[row] = s, OnToken = r.OnToken });
        }
        while (engine.HasWork)
        {
            engine.Step();
            everyStep?.Invoke(engine);
            Assert.True(engine.Running <= o.MaxSequences);
        }
        return results.Select(s => s!).ToList();
    }

    [Theory]
    [InlineData(2, 64)] // more prompts than slots: a finished sequence's slot goes to the next one
    [InlineData(3, 4)]  // a step budget below the longest prompt: prefill spread over steps (chunked), mixed with decodes
    public void ContinuousBatchingGivesEachPromptWhatItGeneratesAlone(int slots, int budget)
    {
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference, std: 0.5f);
        var options = Prompts.Select((p, i) => new GenerationOptions { MaxNewTokens = 3 + i }).ToArray();
        var alone = Prompts.Select((p, i) => model.Generate([p], options[i])[0]).ToList();
        var batched = RunEngine(model, new GenerationEngineOptions { MaxSequences = slots, MaxModelLength = 32, MaxBatchTokens = Math.Max(slots, budget) },
            Prompts.Select((p, i) => new GenerationRequest(p, options[i])));
        for (int i = 0; i < Prompts.Length; i++)
        {
            Assert.Equal(alone[i].Tokens, batched[i].Tokens);
            Assert.Equal("length", batched[i].FinishReason);
            Assert.Equal(3 + i, batched[i].Tokens.Length);
        }
    }

    [Fact]
    public void SeededSamplingPerRequestDoesNotDependOnTheBatch()
    {
        using var model = TinyModels.Create(TinyModels.Spec("llama", false), TrainingSetup.Inference, std: 0.5f);
        var o = new GenerationOptions { MaxNewTokens = 6, DoSample = true, Temperature = 1.3, TopK = 20, TopP = 0.9, RepetitionPenalty = 1.2 };
        var requests = Prompts.Select((p, i) => new GenerationRequest(p, o with { Seed = 100 + i })).ToList();
        var together = RunEngine(model, new GenerationEngineOptions { MaxSequences = 8, MaxModelLength = 32, MaxBatchTokens = 64 }, requests);
        var oneSlot = RunEngine(model, new GenerationEngineOptions { MaxSequences = 1, MaxModelLength = 32, MaxBatchTokens = 64 }, requests);
        for (int i = 0; i < Prompts.Length; i++) Assert.Equal(oneSlot[i].Tokens, together[i].Tokens);
        Assert.NotEqual(together[0].Tokens, RunEngine(model, new() { MaxModelLength = 32 }, [new GenerationRequest(Prompts[0], o with { Seed = 7 })])[0].Tokens);
    }

    [Fact]
    public void CancelledAndLimitedSequencesFreeTheirSlots()
    {
        using var model = TinyModels.Create(TinyModels.Spec("qwen2", false), TrainingSetup.Inference, std: 0.5f);
        var results = new GeneratedSequence?[3];
        GenerationRequest? first = null;
        int streamed = 0;
        using var engine = new GenerationEngine(model, new GenerationEngineOptions { MaxSequences = 1, MaxModelLength = 12, MaxBatchTokens = 8 });
        engine.Add(first = new GenerationRequest(Prompts[0], new GenerationOptions { MaxNewTokens = 20 })
        {
            OnToken = _ => { if (++streamed == 2) first!.Cancel(); return true; },
            OnFinished = s => results[0] = s,
        });
        engine.Add(new GenerationRequest(Prompts[1], new GenerationOptions { MaxNewTokens = 20 }) { OnFinished = s => results[1] = s }); // runs into the model length (12)
        engine.Add(new GenerationRequest(Prompts[2], new GenerationOptions { MaxNewTokens = 4 }) { OnFinished = s => results[2] = s });
        engine.RunToCompletion();
        Assert.Equal("cancelled", results[0]!.FinishReason);
        Assert.Equal(2, results[0]!.Tokens.Length);
        Assert.Equal(("length", 10), (results[1]!.FinishReason, results[1]!.Tokens.Length));
        Assert.Equal(model.Generate([Prompts[2]], new GenerationOptions { MaxNewTokens = 4 })[0].Tokens, results[2]!.Tokens);
    }

    [Fact]
    public void NamedAdaptersInOneBatchEachGenerateWhatTheModelLoadedWithThemGenerates()
    {
        using var dir = new TempDir();
        string baseDir = dir.File("base");
        ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 32, IntermediateSize = 48, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8, TieWordEmbeddings = false, InitializerRange = 0.5, Seed = 6 }, baseDir);
        string SaveAdapter(string name, TrainingSetup setup, int seed)
        {
            using var m = CausalLM.Load(baseDir, new CpuBackend(2), setup);
            TinyModels.RandomizeLoraB(m, seed);
            var r = new Random(seed);
            foreach (var p in m.TrainableParameters.Where(p => p.Role is not (ParameterRole.LoraA or ParameterRole.LoraB)))
                m.WriteParameter(p.HfName, m.ReadParameter(p.HfName).Select(v => v + (float)(r.NextDouble() - 0.5)).ToArray());
            m.SaveAdapter(dir.File(name));
            return dir.File(name);
        }
        string a = SaveAdapter("a", new TrainingSetup { LoraRank = 4, LoraAlpha = 8, LoraTarget = ["q_proj", "v_proj", "down_proj"], AdditionalTarget = ["norm", "lm_head"] }, 1);
        string b = SaveAdapter("b", new TrainingSetup { LoraRank = 2, LoraTarget = ["all"], UseRslora = true }, 2);
        var o = new GenerationOptions { MaxNewTokens = 6 };
        int[][] prompts = [Prompts[0], Prompts[1], Prompts[2], Prompts[4]];
        string?[] choose = ["a", null, "b", "a"];
        var expected = new int[prompts.Length][];
        for (int i = 0; i < prompts.Length; i++)
        {
            using var m = CausalLM.Load(baseDir, new CpuBackend(2), TrainingSetup.Inference, choose[i] switch { "a" => a, "b" => b, _ => null });
            expected[i] = m.Generate([prompts[i]], o)[0].Tokens;
        }
        using var model = CausalLM.Load(baseDir, new CpuBackend(2), TrainingSetup.Inference);
        using var engine = new GenerationEngine(model, new GenerationEngineOptions { MaxSequences = 4, MaxModelLength = 32, MaxBatchTokens = 64 },
            [new NamedAdapter("a", a), new NamedAdapter("b", b)]);
        Assert.Equal(["a", "b"], engine.AdapterNames);
        var results = new int[prompts.Length][];
        for (int i = 0; i < prompts.Length; i++)
        {
            int row = i;
            engine.Add(new GenerationRequest(prompts[i], o) { Adapter = choose[i], OnFinished = s => results[row] = s.Tokens });
        }
        engine.RunToCompletion();
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], results[i]);
        Assert.NotEqual(expected[0], RunEngine(model, new() { MaxModelLength = 32 }, [new GenerationRequest(prompts[0], o)])[0].Tokens);
        var e = Assert.Throws<ArgumentException>(() => engine.Add(new GenerationRequest(prompts[0], o) { Adapter = "c" }));
        Assert.Equal("no adapter named 'c'; the engine has a, b", e.Message);
    }

    /// <summary>The sampler before the top-k heap: a stable sort of the whole vocabulary (the reference for equality).</summary>
    private static int ReferencePick(float[] logits, GenerationOptions o, Random rng)
    {
        int v = logits.Length;
        var order = Enumerable.Range(0, v).ToArray();
        var scaled = logits.Select(x => (float)(x / o.Temperature)).ToArray();
        Array.Sort(order, (x, y) => scaled[y].CompareTo(scaled[x]) is var c && c != 0 ? c : x.CompareTo(y));
        int keep = o.TopK > 0 ? Math.Min(o.TopK, v) : v;
        double max = scaled[order[0]], sum = 0;
        var probs = new double[keep];
        for (int i = 0; i < keep; i++) sum += probs[i] = Math.Exp(scaled[order[i]] - max);
        if (o.TopP < 1.0)
        {
            double acc = 0;
            int cut = keep;
            for (int i = 0; i < keep; i++) { acc += probs[i] / sum; if (acc >= o.TopP) { cut = i + 1; break; } }
            keep = Math.Max(1, cut);
            sum = 0;
            for (int i = 0; i < keep; i++) sum += probs[i];
        }
        double u = rng.NextDouble() * sum;
        for (int i = 0; i < keep; i++) { u -= probs[i]; if (u < 0) return order[i]; }
        return order[keep - 1];
    }

    [Theory]
    [InlineData(50, 0.7)]
    [InlineData(5, 1.0)]
    [InlineData(0, 0.9)]
    [InlineData(0, 1.0)]
    public void SamplerDrawsWhatTheFullSortDraws(int topK, double topP)
    {
        var r = new Random(3);
        var o = new GenerationOptions { DoSample = true, Temperature = 0.8, TopK = topK, TopP = topP };
        for (int trial = 0; trial < 200; trial++)
        {
            // Coarse values so that ties are common and the id order among them matters.
            var logits = Enumerable.Range(0, 300).Select(_ => (float)Math.Round(r.NextDouble() * 8, 1)).ToArray();
            logits[r.Next(300)] = float.NaN;
            Assert.Equal(ReferencePick((float[])logits.Clone(), o, new Random(trial)), TokenSampler.Pick((float[])logits.Clone(), null, o, new Random(trial)));
        }
    }

    [Fact]
    public void PagedCacheTakesABlockAtEachBoundaryAndFreesAllWhenTheSequenceFinishes()
    {
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference, std: 0.5f);
        // Blocks of 4 positions, 2 sequences × 8 blocks + the scratch block: 16 to hand out.
        using var engine = new GenerationEngine(model, new GenerationEngineOptions { MaxSequences = 2, MaxModelLength = 32, MaxBatchTokens = 32, KvBlockSize = 4 });
        Assert.Equal(16, engine.FreeCacheBlocks);
        GeneratedSequence? done = null;
        engine.Add(new GenerationRequest([1, 2, 3, 4, 5, 6], new GenerationOptions { MaxNewTokens = 5 }) { OnFinished = s => done = s });
        var free = new List<int>();
        while (engine.HasWork) { engine.Step(); free.Add(engine.FreeCacheBlocks); }
        // Prefill of 6 positions: 2 blocks; decodes at positions 6, 7 fit; position 8 takes a third; the finish frees all.
        Assert.Equal([14, 14, 14, 13, 16], free);
        Assert.Equal(5, done!.Tokens.Length);
    }

    [Fact]
    public void ARequestWaitsWhileThePoolCannotHoldItsPrompt()
    {
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference, std: 0.5f);
        // 6 blocks of 4 to hand out (24 positions): the first prompt of 20 tokens takes 5, the second (8 tokens, 2 blocks) waits.
        using var engine = new GenerationEngine(model, new GenerationEngineOptions { MaxSequences = 2, MaxModelLength = 24, MaxBatchTokens = 32, KvBlockSize = 4, KvCacheBlocks = 7 });
        var finished = new List<int>();
        engine.Add(new GenerationRequest([.. Enumerable.Range(1, 20)], new GenerationOptions { MaxNewTokens = 2 }) { OnFinished = _ => finished.Add(0) });
        engine.Add(new GenerationRequest([.. Enumerable.Range(20, 8)], new GenerationOptions { MaxNewTokens = 2 }) { OnFinished = _ => finished.Add(1) });
        engine.Step();
        Assert.Equal((1, 1, 1), (engine.Running, engine.Waiting, engine.FreeCacheBlocks));
        engine.RunToCompletion();
        Assert.Equal([0, 1], finished);
        Assert.Equal((0L, 6), (engine.Preemptions, engine.FreeCacheBlocks));
    }

    [Fact]
    public void AShortPoolPreemptsTheLatestSequenceWhichStillGetsItsAloneTokens()
    {
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference, std: 0.5f);
        var o = new GenerationOptions { MaxNewTokens = 12 };
        int[][] prompts = [[1, 2, 3, 4, 5], [7, 8, 9, 10], [11, 12, 13, 14, 15, 16]];
        var alone = prompts.Select(p => model.Generate([p], o)[0].Tokens).ToList();
        // 6 blocks of 4 for three sequences that each grow to 16-18 positions (5 blocks): decodes run the pool dry.
        var got = RunEngine(model, new GenerationEngineOptions { MaxSequences = 3, MaxModelLength = 24, MaxBatchTokens = 32, KvBlockSize = 4, KvCacheBlocks = 7 },
            prompts.Select(p => new GenerationRequest(p, o)), e => Assert.InRange(e.FreeCacheBlocks, 0, 6));
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(alone[i], got[i].Tokens);
        using var engine = new GenerationEngine(model, new GenerationEngineOptions { MaxSequences = 3, MaxModelLength = 24, MaxBatchTokens = 32, KvBlockSize = 4, KvCacheBlocks = 7 });
        foreach (var p in prompts) engine.Add(new GenerationRequest(p, o));
        engine.RunToCompletion();
        Assert.True(engine.Preemptions > 0, "the pool never ran short");
    }

    [Fact]
    public void APoolThatCannotHoldOneFullSequenceIsRefused()
    {
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference, std: 0.5f);
        var e = Assert.Throws<ArgumentException>(() => new GenerationEngine(model, new GenerationEngineOptions { MaxSequences = 2, MaxModelLength = 32, MaxBatchTokens = 32, KvCacheBlocks = 2 }));
        Assert.Equal("a KV cache of 2 blocks of 16 cannot hold one sequence of 32 tokens (2 blocks, plus the scratch block); give it at least 3", e.Message);
    }

    [Fact]
    public void TheCpuBackendRecordsNoGraphsAndPadsNothing()
    {
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference, std: 0.5f);
        using var engine = new GenerationEngine(model, new GenerationEngineOptions { MaxSequences = 4, MaxModelLength = 32, MaxBatchTokens = 32 });
        foreach (var p in Prompts.Take(3)) engine.Add(new GenerationRequest(p, new GenerationOptions { MaxNewTokens = 4 }));
        engine.RunToCompletion();
        Assert.Equal((0, 0L, (string?)null), engine.GraphStats);
    }
}
