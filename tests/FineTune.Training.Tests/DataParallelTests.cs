using System.Net;
using System.Net.Sockets;
using FineTune.Engine.Collectives;
using FineTune.Models;
using FineTune.Training.Objectives;

namespace FineTune.Training.Tests;

/// <summary>
/// Data parallel and ZeRO-1/2/3 on the tiny model: each rank a thread of this process with its own CPU backend and model,
/// talking over real loopback sockets (TcpCollective), against one process with the same global batch.
/// </summary>
public sealed class DataParallelTests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("ft-dp-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    static readonly TrainingSetup Lora = new() { LoraRank = 4, LoraAlpha = 8, Seed = 5, LoraDropout = 0.1 };

    // 12 samples of different lengths: a 2-token prompt (labels −100) and a response pattern.
    static LoaderSample Sample(int i)
    {
        int len = 5 + i % 5;
        var ids = new int[len];
        for (int t = 0; t < len; t++) ids[t] = t < 2 ? 1 + i : 10 + (i * 3 + t) % 30;
        return new LoaderSample(ids, ids.Select((x, t) => t < 2 ? -100 : x).ToArray(), [len]);
    }

    static DataLoader Loader() => new(12, Sample, 2, seed: 9, shuffle: true, padTokenId: 0);

    /// <summary>Global batch 2 (micro) × 2 (micro-batches per step over all ranks) = 4 samples a step, 3 steps an epoch.</summary>
    TrainingArguments Args(string name, int maxSteps = 6) => new()
    {
        OutputDirectory = Path.Combine(_root, name),
        LearningRate = 2e-2, MaxSteps = maxSteps, GradientAccumulationSteps = 2, LoggingSteps = 1, SaveSteps = 1000, Seed = 9,
        LrSchedulerType = LrSchedulerType.Cosine, WarmupSteps = 1, MaxGradNorm = 1.0,
    };

    static float[] Trainable(CausalLM m) => m.TrainableParameters.SelectMany(p =>
    {
        var host = new float[p.Length];
        m.Backend.Download(p.Master, host);
        return host;
    }).ToArray();

    /// <summary>ZeRO-3: every rank takes part in gathering the masters (a collective); each ends with the whole weights.</summary>
    static float[] Gathered(CausalLM m, DataParallel parallel)
    {
        using (parallel.GatherParameters(0))
            return m.TrainableParameters.SelectMany(p => m.ReadParameter(p.HfName)).ToArray();
    }

    static double RelativeDifference(float[] a, float[] b)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < a.Length; i++) { diff += (double)(a[i] - b[i]) * (a[i] - b[i]); norm += (double)b[i] * b[i]; }
        return Math.Sqrt(diff / norm);
    }

    static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    float[] OneProcess(TrainingArguments args, TrainingSetup? setup = null, Func<ITrainingObjective>? objective = null, Func<DataLoader>? loader = null)
    {
        using var models = new TinyTrainingModels();
        var model = models.Create(setup ?? Lora);
        FineTuneRecipe.Train(model, args, (loader ?? Loader)(), null, ITrainingMonitor.Silent, objective: objective?.Invoke());
        return Trainable(model);
    }

    /// <summary>What one rank ends with: its trainable weights, its error, its info lines and the state bytes it held.</summary>
    sealed record RankResult(float[] Weights, Exception? Error, string[] Info, long OptimizerStateBytes, long FullOptimizerStateBytes, long ModelBytes)
    {
        public int[] LaunchStages { get; init; } = [];
        /// <summary>fp8_scaling: delayed: the rank's whole site arena at the end (empty otherwise).</summary>
        public float[] Fp8States { get; init; } = [];
        public (long Parameters, long Gradients, long OptimizerStates) Held { get; init; }
        public (long Parameters, long Gradients, long OptimizerStates) Unsharded { get; init; }
    }

    /// <summary>
    /// Trains on <paramref name="world"/> ranks; rank r writes under <c>name</c> for r = 0 and <c>name-rank{r}</c> otherwise.
    /// With ZeRO the models are built as the train stage builds them: without moments of their own (ZeRO-3: nor whole
    /// trainable weights; the weights returned are gathered after training). <paramref name="load"/> builds the model
    /// from a model directory instead of the tiny random one (checkpoints of full fine-tuning need its config.json).
    /// </summary>
    RankResult[] Ranks(int world, int zeroStage, Func<int, TrainingArguments> args, TrainingSetup? setup = null,
        Action<int, int>? afterStep = null, long bucketElements = DataParallel.DefaultBucketElements, bool overlap = true,
        Func<ITrainingObjective>? objective = null, Func<DataLoader>? loader = null, Func<TinyTrainingModels, TrainingSetup, CausalLM>? load = null,
        Func<DataLoader>? eval = null, bool layerGradients = false)
    {
        int port = FreePort();
        var results = new RankResult[world];
        var threads = Enumerable.Range(0, world).Select(rank => new Thread(() =>
        {
            using var models = new TinyTrainingModels();
            var rankSetup = (setup ?? Lora) with
            {
                ShardedOptimizerStates = zeroStage > 0,
                ShardedParameters = zeroStage == 3 ? new ParameterSharding(rank, world) : null,
                ShardedGradients = layerGradients ? new ParameterSharding(rank, world) : null,
            };
            var monitor = new AfterStep(s => afterStep?.Invoke(rank, s));
            long stateBytes = 0, fullBytes = 0;
            CausalLM? model = null;
            try
            {
                // Inside the try: an error building a rank's model is that rank's result, not an unhandled thread exception.
                model = load is null ? models.Create(rankSetup) : load(models, rankSetup);
                using var group = TcpCollective.Connect(new Rendezvous("127.0.0.1", port, rank, world, rank, world), TimeSpan.FromSeconds(20));
                using var parallel = new DataParallel(group, zeroStage, bucketElements, overlap);
                FineTuneRecipe.Train(model, args(rank), (loader ?? Loader)(), eval?.Invoke(), monitor, objective: objective?.Invoke(), parallel: parallel);
                (stateBytes, fullBytes) = (parallel.OptimizerStateBytes, parallel.FullOptimizerStateBytes);
                var weights = zeroStage == 3 ? Gathered(model, parallel) : Trainable(model);
                results[rank] = new(weights, null, [.. monitor.Lines], stateBytes, fullBytes, model.WeightBytes)
                {
                    LaunchStages = [.. parallel.LaunchStages], Held = parallel.HeldBytes, Unsharded = parallel.UnshardedBytes,
                    Fp8States = model.HasFp8Histories ? model.ReadFp8States() : [],
                };
            }
            catch (Exception e)
            {
                results[rank] = new(zeroStage == 3 || model is null ? [] : Trainable(model), e, [.. monitor.Lines], stateBytes, fullBytes, model?.WeightBytes ?? 0);
            }
        })).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) Assert.True(t.Join(TimeSpan.FromSeconds(120)), "a rank hung");
        return results;
    }

    sealed class AfterStep(Action<int> stepped) : ITrainingMonitor
    {
        public List<string> Lines { get; } = [];
        public void Started(int startStep, int maxSteps) { }
        public void Stepped(int step) => stepped(step);
        public void Logged(StepReport report) { }
        public void Info(string line) => Lines.Add(line);
    }

    static float[][] Ok(RankResult[] results) =>
        results.Select(r => r.Error is null ? r.Weights : throw new Xunit.Sdk.XunitException(r.Error.ToString())).ToArray();

    [Fact]
    public void Two_ranks_give_one_processs_weights_with_the_same_global_batch()
    {
        var one = OneProcess(Args("one"));
        var two = Ok(Ranks(2, 0, r => Args(r == 0 ? "two" : "two-rank1")));
        // Bit-identical: one process adds the second micro-batch's gradient (one product per LoRA weight) to the first's,
        // the reduction adds rank 1's to rank 0's, the same F32 sum; the dropout draws follow the micro-batch, not the rank.
        Assert.Equal(two[0], two[1]);
        Assert.Equal(one, two[0]);
        Assert.False(Directory.Exists(Path.Combine(_root, "two-rank1")), "rank 1 wrote under its output directory");
        Assert.True(File.Exists(Path.Combine(_root, "two", "adapter_model.safetensors")));
        // The logged losses are the global step's mean loss, as one process logs it.
        var oneLog = TrainerLog.Read(Path.Combine(_root, "one", TrainerLog.FileName)).Select(e => e.Loss).ToArray();
        var twoLog = TrainerLog.Read(Path.Combine(_root, "two", TrainerLog.FileName)).Select(e => e.Loss).ToArray();
        Assert.Equal(oneLog, twoLog);
    }

    [Fact]
    public void Zero_1_equals_plain_data_parallel_bit_for_bit()
    {
        var plain = Ok(Ranks(2, 0, r => Args($"plain{r}")));
        var zero1 = Ok(Ranks(2, 1, r => Args($"zero1-{r}")));
        Assert.Equal(plain[0], zero1[0]);
        Assert.Equal(zero1[0], zero1[1]);
    }

    [Fact]
    public void Zero_1_and_2_hold_the_moments_of_the_owned_chunks_only()
    {
        using var models = new TinyTrainingModels();
        var whole = models.Create(Lora);
        long n = whole.TrainableParameters.Sum(p => p.Length);
        Assert.Equal(4096, n);
        foreach (int stage in new[] { 1, 2 })
        {
            // Buckets of at most 500 elements: the 28 LoRA tensors fall into 10 buckets (6 of 384 elements, 4 of 448); over 3
            // ranks each 448 pads to 450, so a rank owns 6·128 + 4·150 = 1368 elements (4096 / 3 plus 4 · 2/3 of padding)
            // and holds their two F32 moments: 10,944 bytes, against 32,768 in one process.
            var results = Ranks(3, stage, r => Args($"shard{stage}-{r}", 2) with { GradientAccumulationSteps = 3 }, bucketElements: 500);
            Ok(results);
            foreach (var r in results)
            {
                Assert.Equal(8 * 1368, r.OptimizerStateBytes);
                Assert.Equal(8 * 4096, r.FullOptimizerStateBytes);
                // The model itself allocated no moments at all: its arena is one process's less 8 bytes per trainable element.
                Assert.Equal(whole.WeightBytes - 8 * 4096, r.ModelBytes);
            }
            Assert.Contains($"optimizer states: 0.010 MiB on this rank (of 0.031 MiB; ZeRO-{stage}, rank 1 of 3).", results[1].Info);
        }
    }

    [Fact]
    public void Zero_1_with_many_small_buckets_equals_plain_data_parallel_bit_for_bit()
    {
        var plain = Ok(Ranks(2, 0, r => Args($"plainb{r}")));
        var zero1 = Ok(Ranks(2, 1, r => Args($"zero1b-{r}"), bucketElements: 500));
        Assert.Equal(plain[0], zero1[0]);
        Assert.Equal(plain[0], zero1[1]);
    }

    [Theory]
    [InlineData(0, false)]
    [InlineData(1, false)]
    [InlineData(2, false)]
    [InlineData(0, true)]
    [InlineData(2, true)]
    public void One_rank_through_data_parallel_is_the_plain_trainer_bit_for_bit(int zeroStage, bool full)
    {
        // The NCCL world-size-1 question on the CPU: the data-parallel path (bucket copies, the reduction, the loss's host
        // sum, the clipping norm, the sharded AdamW) must not change one bit of one process's arithmetic.
        var setup = full ? new TrainingSetup { FinetuningType = FinetuningType.Full, Seed = 5 } : Lora;
        TrainingArguments A(string name) => full ? Args(name, 3) with { LearningRate = 1e-3, StopAfterStep = 3 } : Args(name);
        var plain = OneProcess(A("plain1"), setup);
        var one = Ok(Ranks(1, zeroStage, _ => A($"rank1-{zeroStage}"), setup));
        Assert.Equal(plain, one[0]);
        if (!full)
        {
            var plainLog = TrainerLog.Read(Path.Combine(_root, "plain1", TrainerLog.FileName)).Select(e => (e.Loss, e.GradNorm)).ToArray();
            var oneLog = TrainerLog.Read(Path.Combine(_root, $"rank1-{zeroStage}", TrainerLog.FileName)).Select(e => (e.Loss, e.GradNorm)).ToArray();
            Assert.Equal(plainLog, oneLog);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Buckets_reduced_during_the_backward_give_the_bits_of_buckets_reduced_after_it(int zeroStage)
    {
        // 2 micro-batches per rank: only the last backward of a share overlaps (the first one's gradients are partial sums).
        TrainingArguments A(string name) => Args(name, 3) with { GradientAccumulationSteps = 4 };
        var after = Ok(Ranks(2, zeroStage, r => A($"after{zeroStage}-{r}"), bucketElements: 500, overlap: false));
        var during = Ranks(2, zeroStage, r => A($"during{zeroStage}-{r}"), bucketElements: 500);
        Assert.Equal(after[0], Ok(during)[0]);
        Assert.Equal(after[1], Ok(during)[1]);
        // The 10 buckets in reverse parameter order: the first five hold layer 1's adapters and went out right after layer
        // 1's backward (stage 1), the other five after layer 0's (stage 2), while the embedding backward still ran.
        Assert.Equal([1, 1, 1, 1, 1, 2, 2, 2, 2, 2], during[0].LaunchStages);
    }

    [Fact]
    public void Full_fine_tuning_overlapped_equals_the_reduction_after_the_backward()
    {
        // Full: the tied embedding is also the LM head, so its bucket waits for the embedding backward (stage 3), the last.
        var full = new TrainingSetup { FinetuningType = FinetuningType.Full, Seed = 5 };
        TrainingArguments A(string name) => Args(name, 3) with { LearningRate = 1e-3, StopAfterStep = 3 };
        // Buckets of at most 40 elements: the final norm (32) alone, then about one tensor each.
        var after = Ok(Ranks(2, 0, r => A($"fafter{r}"), full, bucketElements: 40, overlap: false));
        var during = Ranks(2, 0, r => A($"fduring{r}"), full, bucketElements: 40);
        Assert.Equal(after[0], Ok(during)[0]);
        var stages = during[0].LaunchStages;
        Assert.Equal(0, stages[0]);
        Assert.Equal(3, stages[^1]);
        Assert.Equal([0, 1, 2, 3], stages.Distinct());
        Assert.Equal(stages.Order(), stages);
    }

    public static TheoryData<string, int, int> PreferenceCases => new()
    {
        { "dpo", 2, 0 }, { "dpo", 4, 0 }, { "dpo", 2, 1 }, { "orpo", 2, 0 }, { "simpo", 2, 0 }, { "kto", 2, 0 }, { "kto", 4, 0 },
        { "kto", 2, 1 }, { "rm", 2, 0 }, { "rm", 4, 0 }, { "rm", 2, 1 },
    };

    [Theory]
    [MemberData(nameof(PreferenceCases))]
    public void Preference_objectives_on_two_ranks_equal_one_process(string objective, int microBatches, int zeroStage)
    {
        // 8 samples in micro-batches of 2; a step of 2 (one per rank) or 4 (two per rank) micro-batches.
        ITrainingObjective Objective() => objective switch
        {
            "dpo" => new PreferenceTraining(PreferenceObjectives.Dpo(new PreferenceSettings { PrefBeta = 0.5 }), PreferenceLayout.Pairs, referenceWithoutAdapters: true),
            "orpo" => new PreferenceTraining(PreferenceObjectives.Dpo(new PreferenceSettings { PrefLoss = PreferenceLoss.Orpo, PrefBeta = 0.5 }), PreferenceLayout.Pairs, referenceWithoutAdapters: true),
            "simpo" => new PreferenceTraining(PreferenceObjectives.Dpo(new PreferenceSettings { PrefLoss = PreferenceLoss.Simpo, PrefBeta = 0.5 }), PreferenceLayout.Pairs, referenceWithoutAdapters: true),
            "kto" => new PreferenceTraining(PreferenceObjectives.Kto(new PreferenceSettings { PrefBeta = 0.5 }), PreferenceLayout.Kto, referenceWithoutAdapters: true, trainTag: i => i % 2 == 0),
            _ => new PreferenceTraining(PreferenceObjectives.RewardModel(), PreferenceLayout.Rewards, referenceWithoutAdapters: true),
        };
        DataLoader Data() => objective == "kto"
            ? new DataLoader(8, PreferenceTrainingTests.Kto, 2, 9, true, 0)
            : new DataLoader(8, PreferenceTrainingTests.Pair, 2, seed: 9, shuffle: true, padTokenId: 0);
        var setup = Lora with { ValueHead = objective == "rm" };
        TrainingArguments A(string name) => Args(name, 4) with { GradientAccumulationSteps = microBatches };
        var one = OneProcess(A($"{objective}{microBatches}-one"), setup, Objective, Data);
        // (ZeRO-1 cases: the value head's and the adapters' moments live in the ranks' shards.)
        var two = Ok(Ranks(2, zeroStage, r => A(r == 0 ? $"{objective}{microBatches}-two" : $"{objective}{microBatches}-two-rank1"), setup, objective: Objective, loader: Data));
        Assert.Equal(two[0], two[1]);
        var oneLog = TrainerLog.Read(Path.Combine(_root, $"{objective}{microBatches}-one", TrainerLog.FileName));
        var twoLog = TrainerLog.Read(Path.Combine(_root, $"{objective}{microBatches}-two", TrainerLog.FileName));
        Assert.Equal(oneLog.Select(e => e.Loss), twoLog.Select(e => e.Loss));
        Assert.Equal(oneLog.Select(e => string.Join(",", e.Metrics!.Select(kv => $"{kv.Key}={kv.Value}"))),
            twoLog.Select(e => string.Join(",", e.Metrics!.Select(kv => $"{kv.Key}={kv.Value}"))));
        if (microBatches == 2) Assert.Equal(one, two[0]);
        else
        {
            // Two micro-batches per rank: one process adds 4 micro-batches' gradients in turn, the ranks add pairs and then
            // the pairs' sums, so the F32 sums associate differently.
            double rel = RelativeDifference(two[0], one);
            Assert.True(rel < 1e-6, $"relative difference {rel:E2}");
        }
    }

    [Fact]
    public void A_mixture_of_experts_with_its_aux_loss_on_two_ranks_equals_one_process()
    {
        // qwen3_moe-style layers (4 experts, top 2) with the load-balancing loss on, full fine-tuning: the experts' and
        // routers' gradients are reduced as each layer's backward ends, and aux_loss is logged as one process logs it.
        var moe = TinyTrainingModels.Spec with
        {
            Architecture = "qwen3_moe",
            Moe = new MoeConfig { NumExperts = 4, NumExpertsPerTok = 2, ExpertIntermediateSize = 12, RouterAuxLossCoef = 0.01, OutputRouterLogits = true },
        };
        var setup = new TrainingSetup { FinetuningType = FinetuningType.Full, Seed = 5 };
        TrainingArguments A(string name) => Args(name, 3) with { LearningRate = 1e-3, StopAfterStep = 3 };
        float[] one;
        using (var models = new TinyTrainingModels())
        {
            var model = models.Create(setup, moe);
            FineTuneRecipe.Train(model, A("moe-one"), Loader(), null, ITrainingMonitor.Silent);
            one = Trainable(model);
        }
        int port = FreePort();
        var two = new float[2][];
        var threads = Enumerable.Range(0, 2).Select(rank => new Thread(() =>
        {
            using var models = new TinyTrainingModels();
            var model = models.Create(setup, moe);
            using var group = TcpCollective.Connect(new Rendezvous("127.0.0.1", port, rank, 2, rank, 2), TimeSpan.FromSeconds(20));
            using var parallel = new DataParallel(group, 0, bucketElements: 2000);
            FineTuneRecipe.Train(model, A($"moe-two{rank}"), Loader(), null, ITrainingMonitor.Silent, parallel: parallel);
            two[rank] = Trainable(model);
        })).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) Assert.True(t.Join(TimeSpan.FromSeconds(120)), "a rank hung");
        double rel = RelativeDifference(two[0], one);
        Assert.True(rel < 1e-7, $"relative difference {rel:E2}");
        var oneAux = TrainerLog.Read(Path.Combine(_root, "moe-one", TrainerLog.FileName)).Select(e => e.Metric("aux_loss")).ToArray();
        var twoAux = TrainerLog.Read(Path.Combine(_root, "moe-two0", TrainerLog.FileName)).Select(e => e.Metric("aux_loss")).ToArray();
        Assert.All(oneAux, a => Assert.NotNull(a));
        Assert.Equal(oneAux, twoAux);
    }

    [Fact]
    public void Zero_2_equals_plain_data_parallel()
    {
        var plain = Ok(Ranks(2, 0, r => Args($"plain{r}")));
        var zero2 = Ok(Ranks(2, 2, r => Args($"zero2-{r}")));
        Assert.Equal(zero2[0], zero2[1]);
        // Bit-identical but for the clipping norm, which ZeRO-2 sums from the ranks' chunks in another order (3e-7 here).
        double rel = RelativeDifference(zero2[0], plain[0]);
        Assert.True(rel < 1e-6, $"relative difference {rel:E2}");
        var unclipped = Ok(Ranks(2, 0, r => Args($"plainu{r}") with { MaxGradNorm = 0 }));
        var zero2Unclipped = Ok(Ranks(2, 2, r => Args($"zero2u-{r}") with { MaxGradNorm = 0 }));
        Assert.Equal(unclipped[0], zero2Unclipped[0]);
    }

    [Fact]
    public void A_zero_1_checkpoint_of_two_ranks_resumes_on_one_process()
    {
        var whole = OneProcess(Args("whole"));
        // Two ranks stop after step 4 (as if killed), with checkpoint-3 saved by rank 0 from the gathered moments.
        Ok(Ranks(2, 1, r => Args(r == 0 ? "parts" : "parts-rank1") with { SaveSteps = 3, StopAfterStep = 4 }));
        using var models = new TinyTrainingModels();
        var resumed = models.Create(Lora);
        var r = FineTuneRecipe.Train(resumed, Args("parts") with { SaveSteps = 3, ResumeFromCheckpoint = "true" }, Loader(), null, ITrainingMonitor.Silent);
        Assert.EndsWith("checkpoint-3", r.ResumedFrom);
        Assert.Equal(whole, Trainable(resumed));
    }

    [Fact]
    public void Full_fine_tuning_on_two_ranks_equals_one_process()
    {
        var full = new TrainingSetup { FinetuningType = FinetuningType.Full, Seed = 5 };
        // StopAfterStep: the scratch model has no config.json to save a full model beside; the weights are compared in memory.
        var one = OneProcess(Args("full-one", 3) with { LearningRate = 1e-3, StopAfterStep = 3 }, full);
        var two = Ok(Ranks(2, 2, r => Args($"full-two{r}", 3) with { LearningRate = 1e-3, StopAfterStep = 3 }, full));
        // Not to the bit (4e-9 relative here): norm weights and the embedding accumulate their gradients row by row, so
        // one process's sum over two micro-batches associates differently from the sum of the two ranks' sums.
        double rel = RelativeDifference(two[0], one);
        Assert.True(rel < 1e-7, $"relative difference {rel:E2}");
    }

    [Fact]
    public void A_rank_that_dies_mid_run_ends_the_other_with_a_clear_error_and_the_checkpoint_intact()
    {
        var results = Ranks(2, 0, r => Args(r == 0 ? "dies" : "dies-rank1") with { SaveSteps = 2 },
            afterStep: (rank, step) => { if (rank == 1 && step == 3) throw new InvalidOperationException("rank 1 killed after step 3"); });
        Assert.Equal("rank 1 killed after step 3", results[1].Error!.Message);
        var e = Assert.IsType<CollectiveException>(results[0].Error);
        Assert.StartsWith("rank 0: rank 1 closed its connection during the gradient all-reduce of step 4", e.Message);
        var store = new CheckpointStore(Path.Combine(_root, "dies"));
        Assert.Equal([2], store.List().Select(c => c.Step));
        Assert.True(File.Exists(Path.Combine(store.Latest()!, FineTuneRecipe.OptimizerFile)));
    }

    // ---- ZeRO-3: parameters sharded, gathered a layer at a time ----

    static readonly TrainingSetup Full = new() { FinetuningType = FinetuningType.Full, Seed = 5 };

    /// <summary>A step of 6 micro-batches (a multiple of 1, 2 and 3 ranks): the whole epoch of 12 samples in pairs.</summary>
    TrainingArguments FullArgs(string name, int maxSteps = 3) =>
        Args(name, maxSteps) with { LearningRate = 1e-3, GradientAccumulationSteps = 6, StopAfterStep = maxSteps };

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void Zero_3_on_several_ranks_gives_one_processs_weights(int world)
    {
        var one = OneProcess(FullArgs("z3-one"), Full);
        var ranks = Ok(Ranks(world, 3, r => FullArgs($"z3-{world}-{r}"), Full));
        for (int r = 1; r < world; r++) Assert.Equal(ranks[0], ranks[r]);
        // Not to the bit: one process adds the 6 micro-batches' gradients in turn (norm weights and the embedding row by row
        // inside the backward), the ranks reduce-scatter each micro-batch's and add the sums, so the F32 sums associate
        // differently; the clipping norm is summed from the chunks. Both are rounding: 6e-9 relative here, 2 and 3 ranks.
        double rel = RelativeDifference(ranks[0], one);
        Assert.True(rel < 1e-7, $"relative difference {rel:E2}");
    }

    [Fact]
    public void One_rank_of_zero_3_is_the_plain_trainer_bit_for_bit_with_one_micro_batch_a_step()
    {
        // One micro-batch a step: the gathered window is the whole model, each backward writes a zeroed gradient window, the
        // reduce-scatter of one rank is the identity and 0 + g = g, so AdamW sees one process's gradient and norm.
        TrainingArguments A(string name, int accumulation) => FullArgs(name) with { GradientAccumulationSteps = accumulation };
        var plain = OneProcess(A("z3p1", 1), Full);
        var one = Ok(Ranks(1, 3, _ => A("z3o1", 1), Full));
        Assert.Equal(plain, one[0]);
        var plainLog = TrainerLog.Read(Path.Combine(_root, "z3p1", TrainerLog.FileName)).Select(e => (e.Loss, e.GradNorm)).ToArray();
        var oneLog = TrainerLog.Read(Path.Combine(_root, "z3o1", TrainerLog.FileName)).Select(e => (e.Loss, e.GradNorm)).ToArray();
        Assert.Equal(plainLog, oneLog);
        // Two: one process accumulates the second micro-batch into the first's gradient inside the backward (norms and
        // embedding row by row), ZeRO-3 adds the second's whole gradient to the first's: rounding apart (1e-9 relative here).
        var plain2 = OneProcess(A("z3p2", 2), Full);
        var one2 = Ok(Ranks(1, 3, _ => A("z3o2", 2), Full));
        double rel = RelativeDifference(one2[0], plain2);
        Assert.True(rel < 1e-7, $"relative difference {rel:E2}");
    }

    [Fact]
    public void Zero_3_equals_zero_2_to_rounding_and_tops_up_a_short_share_at_the_epoch_end()
    {
        // 6 micro-batches an epoch, 4 a step: step 2 holds 2, both rank 0's; rank 1 runs 2 label-free passes beside it.
        TrainingArguments A(string name) => Args(name, 4) with { LearningRate = 1e-3, GradientAccumulationSteps = 4, StopAfterStep = 4 };
        var zero2 = Ok(Ranks(2, 2, r => A($"z2e-{r}"), Full));
        var zero3 = Ok(Ranks(2, 3, r => A($"z3e-{r}"), Full));
        Assert.Equal(zero3[0], zero3[1]);
        // ZeRO-2 sums each rank's micro-batches in its gradients and then the ranks; ZeRO-3 the ranks per micro-batch and
        // then the micro-batches (6e-9 relative here).
        double rel = RelativeDifference(zero3[0], zero2[0]);
        Assert.True(rel < 1e-7, $"relative difference {rel:E2}");
        var z2Log = TrainerLog.Read(Path.Combine(_root, "z2e-0", TrainerLog.FileName)).Select(e => e.Loss!.Value).ToArray();
        var z3Log = TrainerLog.Read(Path.Combine(_root, "z3e-0", TrainerLog.FileName)).Select(e => e.Loss!.Value).ToArray();
        Assert.Equal(4, z3Log.Length);
        for (int i = 0; i < z2Log.Length; i++) Assert.Equal(z2Log[i], z3Log[i], 1e-4);
    }

    [Fact]
    public void Zero_3_of_freeze_fine_tuning_shards_the_trained_layer_and_every_rank_evaluates()
    {
        // freeze_trainable_layers 1: only layer 1 trains, so layer 1 is the one group; layer 0 and the embeddings stay whole.
        var freeze = new TrainingSetup { FinetuningType = FinetuningType.Freeze, FreezeTrainableLayers = 1, Seed = 5 };
        TrainingArguments A(string name) => FullArgs(name) with { EvalSteps = 2 };
        float[] one;
        using (var models = new TinyTrainingModels())
        {
            var model = models.Create(freeze);
            FineTuneRecipe.Train(model, A("z3f-one"), Loader(), Loader(), ITrainingMonitor.Silent);
            one = Trainable(model);
        }
        var two = Ranks(2, 3, r => A($"z3f-{r}"), freeze, eval: Loader);
        Assert.Equal(9296, Ok(two)[0].Length);
        // Layer 1's 9472-element layout (9296 and the alignment gaps) in two chunks of 4736, one layer window of 9472.
        double rel = RelativeDifference(two[0].Weights, one);
        Assert.True(rel < 1e-7, $"relative difference {rel:E2}");
        // Evaluation forwards gather the layer too, so both ranks ran it; rank 0 logged the loss one process logs.
        var oneEval = TrainerLog.Read(Path.Combine(_root, "z3f-one", TrainerLog.FileName)).Where(e => e.EvalLoss is not null).Select(e => e.EvalLoss!.Value).ToArray();
        var twoEval = TrainerLog.Read(Path.Combine(_root, "z3f-0", TrainerLog.FileName)).Where(e => e.EvalLoss is not null).Select(e => e.EvalLoss!.Value).ToArray();
        Assert.Single(twoEval);
        Assert.Equal(oneEval[0], twoEval[0], 1e-4);
        Assert.Equal((4 * (4736 + 9472), 4 * (4736 + 9472), 8 * 4736), two[1].Held);
    }

    [Fact]
    public void Zero_3_with_gradient_checkpointing_gives_the_weights_without_it()
    {
        // The recompute gathers each layer again before its backward; the arithmetic is the same as keeping the activations.
        var kept = Ok(Ranks(2, 3, r => FullArgs($"z3k-{r}"), Full));
        var recomputed = Ok(Ranks(2, 3, r => FullArgs($"z3c-{r}"), Full with { GradientCheckpointing = true }));
        Assert.Equal(kept[0], recomputed[0]);
        Assert.Equal(kept[1], recomputed[1]);
    }

    [Fact]
    public void Zero_3_holds_the_owned_chunks_and_one_layers_window_only()
    {
        using var models = new TinyTrainingModels();
        var whole = models.Create(Full);
        long n = whole.TrainableParameters.Sum(p => p.Length);
        // The embeddings' group: the tied embedding 48×32 and the final norm (1568 elements); a layer's: norms 32 + 8 + 8 + 32,
        // q 1024, k 512, v 512, o 1024, gate, up, down 2048 each (9296), each tensor starting at a multiple of 64 elements:
        // 9472 with the gaps after the norms. Over 3 ranks the chunks round up to multiples of 64 too, 576 and 3200: a rank
        // owns 576 + 2·3200 = 6976 elements (a third of 20,160 is 6720; the rest is alignment, small in a real model),
        // and the windows hold 3·576 = 1728 and 3·3200 = 9600.
        Assert.Equal(20160, n);
        var results = Ranks(3, 3, r => FullArgs($"z3b-{r}", 1), Full);
        Ok(results);
        const long owned = 6976, windows = 1728 + 9600;
        foreach (var r in results)
        {
            Assert.Equal(8 * owned, r.OptimizerStateBytes);
            Assert.Equal(8 * n, r.FullOptimizerStateBytes);
            // F32 on the CPU: the master chunk is the compute chunk; the two windows hold the embeddings' group and one layer.
            Assert.Equal((4 * (owned + windows), 4 * (owned + windows), 8 * owned), r.Held);
            Assert.Equal((4 * n, 4 * n, 8 * n), r.Unsharded);
            // The model's arena: the master and gradient chunk of each group, the four windows and the 4-byte norm scalar, each
            // placed at a multiple of 256 bytes (146,436 bytes; one process's arena holds the whole values, gradients and moments).
            static long Aligned(long bytes) => (bytes + 255) / 256 * 256;
            long arena = new long[] { 576, 576, 3200, 3200, 3200, 3200, 1728, 1728, 9600, 9600 }.Sum(x => Aligned(4 * x)) + 4;
            Assert.Equal(arena, r.ModelBytes);
            Assert.True(r.ModelBytes < whole.WeightBytes / 2, $"{r.ModelBytes} of {whole.WeightBytes}");
        }
        Assert.Contains("trainable parameters 0.070 MiB, gradients 0.070 MiB, optimizer states 0.053 MiB on this rank (unsharded 0.077, 0.077, 0.154 MiB; " +
            "ZeRO-3, rank 1 of 3).", results[1].Info);
    }

    /// <summary>
    /// A scratch qwen3 model directory (config.json: full fine-tuning saves a model into every checkpoint). Ranks call it
    /// from their threads at once: one writes it (config.json lands before the weights), the others wait for it.
    /// </summary>
    string ModelDir()
    {
        string dir = Path.Combine(_root, "model");
        lock (_modelLock)
        {
            if (!File.Exists(Path.Combine(dir, "config.json")))
                ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 32, IntermediateSize = 64, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8, Seed = 5 }, dir);
        }
        return dir;
    }

    readonly Lock _modelLock = new();

    CausalLM LoadModel(TinyTrainingModels models, TrainingSetup setup)
    {
        var backend = new FineTune.Engine.Cpu.CpuBackend(threads: 1);
        var model = CausalLM.Load(ModelDir(), backend, setup);
        models.Own(model, backend);
        return model;
    }

    float[] Run(int world, string name, Func<TrainingArguments, TrainingArguments> args)
    {
        // The ranks share rank 0's checkpoints, as the train stage's ranks share its work directory.
        if (world > 1)
            return Ok(Ranks(world, 3, r => args(FullArgs(r == 0 ? name : $"{name}-rank{r}", 4)) with { CheckpointDirectory = Path.Combine(_root, name) }, Full, load: LoadModel))[0];
        using var models = new TinyTrainingModels();
        var model = LoadModel(models, Full);
        FineTuneRecipe.Train(model, args(FullArgs(name, 4)), Loader(), null, ITrainingMonitor.Silent);
        return Trainable(model);
    }

    [Theory]
    [InlineData(2, 1)]
    [InlineData(1, 2)]
    [InlineData(2, 3)]
    public void A_zero_3_checkpoint_resumes_on_another_world_size(int savedOn, int resumedOn)
    {
        ModelDir();
        var whole = Run(1, $"z3r-whole-{savedOn}{resumedOn}", a => a with { StopAfterStep = 0 });
        // Stopped after step 3 (as if killed) with checkpoint-2 saved in the single-process format, then resumed.
        string name = $"z3r-{savedOn}{resumedOn}";
        Run(savedOn, name, a => a with { SaveSteps = 2, StopAfterStep = 3 });
        Assert.True(File.Exists(Path.Combine(_root, name, "checkpoint-2", "model.safetensors")));
        var resumed = Run(resumedOn, name, a => a with { SaveSteps = 2, StopAfterStep = 0, ResumeFromCheckpoint = "true" });
        // Rounding only (1e-8 relative here): the gradients of 6 micro-batches summed in another order on each world size.
        double rel = RelativeDifference(resumed, whole);
        Assert.True(rel < 1e-7, $"relative difference {rel:E2}");
        // Rank 0 wrote the final model from the gathered weights: the bytes of the weights it holds.
        using var reader = SafetensorsReader.Open(Path.Combine(_root, name, "model.safetensors"));
        var embedding = reader.ReadAsFloat32("model.embed_tokens.weight");
        Assert.Equal(resumed[..embedding.Length], embedding);
    }

    [Fact]
    public void A_rank_that_dies_under_zero_3_ends_the_other_with_a_clear_error_and_the_checkpoint_intact()
    {
        var results = Ranks(2, 3, r => FullArgs(r == 0 ? "z3dies" : "z3dies-rank1", 6) with { SaveSteps = 2, StopAfterStep = 0 },
            Full, afterStep: (rank, step) => { if (rank == 1 && step == 3) throw new InvalidOperationException("rank 1 killed after step 3"); },
            load: LoadModel);
        Assert.Equal("rank 1 killed after step 3", results[1].Error!.Message);
        var e = Assert.IsType<CollectiveException>(results[0].Error);
        // Rank 0 is inside step 4's first forward, gathering the embeddings' group, when rank 1's socket closes.
        Assert.StartsWith("rank 0: rank 1 closed its connection during the parameter all-gather of embeddings and head in step 4", e.Message);
        var store = new CheckpointStore(Path.Combine(_root, "z3dies"));
        Assert.Equal([2], store.List().Select(c => c.Step));
        Assert.True(File.Exists(Path.Combine(store.Latest()!, FineTuneRecipe.OptimizerFile)));
    }

    [Fact]
    public void Zero_2_with_per_layer_gradients_equals_whole_gradients_and_holds_one_layers()
    {
        // TrainingSetup.ShardedGradients: the gradients live in the layer's window (reduce-scattered after every backward)
        // and in the owned chunk; the values and masters stay whole, as ZeRO-2 keeps them.
        var whole = Ok(Ranks(3, 2, r => FullArgs($"z2w-{r}"), Full));
        var perLayer = Ranks(3, 2, r => FullArgs($"z2l-{r}"), Full, layerGradients: true);
        Assert.Equal(Ok(perLayer)[0], perLayer[2].Weights);
        // Rounding apart (the micro-batches' sums associate as ZeRO-3's do).
        double rel = RelativeDifference(perLayer[0].Weights, whole[0]);
        Assert.True(rel < 1e-7, $"relative difference {rel:E2}");
        // The layout of the ZeRO-3 test: 6976 owned elements, windows of 1728 and 9600; the values whole (20,160 F32).
        Assert.Equal((4 * 20160, 4 * (6976 + 1728 + 9600), 8 * 6976), perLayer[1].Held);
        Assert.Contains("trainable parameters 0.077 MiB, gradients 0.070 MiB, optimizer states 0.053 MiB on this rank (unsharded 0.077, 0.077, 0.154 MiB; ZeRO-2, rank 1 of 3).", perLayer[1].Info);
        // One rank with one micro-batch a step: the plain trainer's bits.
        TrainingArguments A(string name) => FullArgs(name) with { GradientAccumulationSteps = 1 };
        Assert.Equal(OneProcess(A("z2l-plain"), Full), Ok(Ranks(1, 2, _ => A("z2l-one"), Full, layerGradients: true))[0]);
    }

    [Fact]
    public void Zero_3_of_a_mixture_of_experts_gives_one_processs_weights()
    {
        // qwen3_moe-style layers (4 experts, top 2), no aux loss: the expert stacks and the router are the layer's group.
        var moe = TinyTrainingModels.Spec with
        {
            Architecture = "qwen3_moe",
            Moe = new MoeConfig { NumExperts = 4, NumExpertsPerTok = 2, ExpertIntermediateSize = 12 },
        };
        float[] one;
        using (var models = new TinyTrainingModels())
        {
            var model = models.Create(Full, moe);
            FineTuneRecipe.Train(model, FullArgs("z3moe-one"), Loader(), null, ITrainingMonitor.Silent);
            one = Trainable(model);
        }
        var two = Ok(Ranks(2, 3, r => FullArgs($"z3moe-{r}"), Full, load: (models, setup) => models.Create(setup, moe)));
        Assert.Equal(two[0], two[1]);
        double rel = RelativeDifference(two[0], one);
        Assert.True(rel < 1e-7, $"relative difference {rel:E2}");
    }

    // ---- fp8_scaling: delayed: the ranks reduce their amaxes (Transformer Engine's reduce_amax) ----

    const int Fp8History = 8;
    static readonly int Fp8Stride = Engine.Fp8DelayedScale.Stride(Fp8History);
    static readonly TrainingSetup Fp8Lora = Lora with { Fp8 = true, Fp8Scaling = Engine.Fp8Scaling.Delayed, Fp8AmaxHistory = Fp8History };

    static int Pushes(float[] arena, int site) => BitConverter.SingleToInt32Bits(arena[site * Fp8Stride + 2]);

    /// <summary>Every value of two arenas bit for bit, except each site's pass amax ([1]: the last pass's, reduced only as the next pass starts).</summary>
    static void EqualBesidesPending(float[] a, float[] b)
    {
        Assert.Equal(a.Length, b.Length);
        for (int i = 0; i < a.Length; i++)
            if (i % Fp8Stride != 1) Assert.True(BitConverter.SingleToInt32Bits(a[i]) == BitConverter.SingleToInt32Bits(b[i]), $"arena value {i} (site {i / Fp8Stride}, slot {i % Fp8Stride}): {a[i]} against {b[i]}");
    }

    [Fact]
    public void Fp8_delayed_ranks_push_the_largest_amax_any_rank_cast_and_keep_the_same_histories()
    {
        // One micro-batch a rank a step. After one step each rank's arena holds its own pass amaxes, not yet pushed: the
        // ranks' micro-batches differ, so do their amaxes.
        var first = Succeeded(Ranks(2, 0, r => Args($"fp8a1-{r}", 1), Fp8Lora));
        int sites = first[0].Fp8States.Length / Fp8Stride;
        Assert.Equal(2 * 2 * 7, sites); // two per FP8 linear (forward input, output gradient), seven linears a layer, two layers
        float[] own0 = [.. Enumerable.Range(0, sites).Select(s => first[0].Fp8States[s * Fp8Stride + 1])];
        float[] own1 = [.. Enumerable.Range(0, sites).Select(s => first[1].Fp8States[s * Fp8Stride + 1])];
        // k, v and up cast no input of their own (q/k/v and gate/up share one cast, at q's and gate's site): 22 sites used.
        int[] used = [.. Enumerable.Range(0, sites).Where(s => own0[s] > 0)];
        Assert.Equal(22, used.Length);
        Assert.Equal(used, Enumerable.Range(0, sites).Where(s => own1[s] > 0));
        Assert.Equal(22, used.Count(s => own0[s] != own1[s])); // the ranks' micro-batches differ, so does every amax
        for (int s = 0; s < sites; s++) Assert.Equal(0, Pushes(first[0].Fp8States, s));

        // Three steps: the first pass's push (ring slot 0) is, on both ranks, the larger of the two ranks' amaxes; the
        // arenas agree bit for bit (but for the third pass's amaxes, pushed as a next pass starts); the LoRA weights too.
        var three = Succeeded(Ranks(2, 0, r => Args($"fp8a3-{r}", 3), Fp8Lora));
        Assert.Equal(three[0].Weights, three[1].Weights);
        EqualBesidesPending(three[0].Fp8States, three[1].Fp8States);
        foreach (int s in used)
        {
            var site = three[0].Fp8States.AsSpan(s * Fp8Stride, Fp8Stride);
            Assert.Equal(2, Pushes(three[0].Fp8States, s));
            Assert.Equal(Math.Max(own0[s], own1[s]), site[3]);
            Assert.Equal(Math.Max(site[3], site[4]), site[0]);
        }
        // The push is not a rank's own amax alone: where rank 1's was the larger, rank 0 pushed rank 1's, and the reverse.
        Assert.Contains(used, s => own1[s] > own0[s] && three[0].Fp8States[s * Fp8Stride + 3] == own1[s]);
        Assert.Contains(used, s => own0[s] > own1[s] && three[1].Fp8States[s * Fp8Stride + 3] == own0[s]);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Fp8_delayed_ranks_stay_in_step_through_accumulation_evaluation_and_a_short_last_share(int zeroStage)
    {
        // 6 micro-batches an epoch, 4 a step (2 a rank): the epoch's second step holds 2, both rank 0's, and rank 1 tops its
        // share up with 2 label-free passes; every rank evaluates (6 micro-batches, 6 passes) after steps 2 and 4. (ZeRO-3
        // and ZeRO-2's per-layer gradients refuse an fp8 base when the model is built.)
        TrainingArguments A(string name) => Args(name, 4) with { GradientAccumulationSteps = 4, EvalSteps = 2 };
        var ranks = Succeeded(Ranks(2, zeroStage, r => A($"fp8s{zeroStage}-{r}"), Fp8Lora, eval: Loader));
        Assert.Equal(ranks[0].Weights, ranks[1].Weights);
        // Eval passes cast every rank's same batches with the same scales: their amaxes agree too, the pending ones included.
        Assert.Equal(ranks[0].Fp8States, ranks[1].Fp8States);
        // A forward-input site (q/k/v's shared cast) saw 8 training and 12 eval passes: 19 pushed, the last one pending.
        Assert.Equal(19, Pushes(ranks[0].Fp8States, 0));
        // Its output-gradient site only the 8 training passes (evaluation has no backward), each pushed as the pass after
        // it (the next, or an evaluation's first) started.
        Assert.Equal(8, Pushes(ranks[0].Fp8States, 1));
        var evalLoss = TrainerLog.Read(Path.Combine(_root, $"fp8s{zeroStage}-0", TrainerLog.FileName)).Count(e => e.EvalLoss is not null);
        Assert.Equal(2, evalLoss);
    }

    [Fact]
    public void Fp8_delayed_dpo_on_two_ranks_keeps_one_history_and_refuses_an_epoch_it_cannot_top_up()
    {
        ITrainingObjective Dpo() => new PreferenceTraining(PreferenceObjectives.Dpo(new PreferenceSettings { PrefBeta = 0.5 }), PreferenceLayout.Pairs, referenceWithoutAdapters: true);
        TrainingArguments A(string name) => Args(name, 2);
        // 8 pairs, 4 micro-batches an epoch, 2 a step: every rank runs the reference passes and one pass a step alike.
        var even = Succeeded(Ranks(2, 0, r => A($"fp8dpo-{r}"), Fp8Lora, objective: Dpo,
            loader: () => new DataLoader(8, PreferenceTrainingTests.Pair, 2, seed: 9, shuffle: true, padTokenId: 0)));
        Assert.Equal(even[0].Weights, even[1].Weights);
        EqualBesidesPending(even[0].Fp8States, even[1].Fp8States);
        // q/k/v's input cast: 4 reference passes (the adapter off) and 2 training passes, the last pending; its output
        // gradient: the first training pass's.
        Assert.Equal(5, Pushes(even[0].Fp8States, 0));
        Assert.Equal(1, Pushes(even[0].Fp8States, 1));
        // 6 pairs: 3 micro-batches an epoch, so rank 1's share of the second step is empty, and a preference micro-batch
        // cannot be label-free; both ranks refuse before training.
        var odd = Ranks(2, 0, r => A($"fp8dpo-odd-{r}"), Fp8Lora, objective: Dpo,
            loader: () => new DataLoader(6, PreferenceTrainingTests.Pair, 2, seed: 9, shuffle: true, padTokenId: 0));
        foreach (var r in odd)
        {
            var e = Assert.IsType<TrainingException>(r.Error);
            Assert.Equal("fp8_scaling: delayed on 2 ranks reduces the FP8 amaxes over the ranks at every pass, so every rank runs the same passes; " +
                "an epoch of 3 micro-batches ends with a step of 1 of 2, whose short shares of the dpo/sigmoid objective cannot be topped up with label-free micro-batches. " +
                "Make the training samples a multiple of 4 (per_device_train_batch_size × gradient_accumulation_steps), or use fp8_scaling: current.", e.Message);
        }
    }

    [Fact]
    public void Fp8_delayed_with_a_load_balancing_loss_runs_on_whole_epoch_steps_and_refuses_a_short_one()
    {
        // qwen3_moe-style layers: the attention's linears are FP8, the experts stay in the compute dtype.
        var moe = TinyTrainingModels.Spec with
        {
            Architecture = "qwen3_moe",
            Moe = new MoeConfig { NumExperts = 4, NumExpertsPerTok = 2, ExpertIntermediateSize = 12, RouterAuxLossCoef = 0.01, OutputRouterLogits = true },
        };
        CausalLM Load(TinyTrainingModels models, TrainingSetup setup) => models.Create(setup, moe);
        // 6 micro-batches an epoch, 2 a step: no share is ever short.
        var whole = Succeeded(Ranks(2, 0, r => Args($"fp8moe-{r}", 3), Fp8Lora, load: Load));
        Assert.Equal(2 * 2 * 4, whole[0].Fp8States.Length / Fp8Stride); // q, k, v, o of two layers
        Assert.Equal(whole[0].Weights, whole[1].Weights);
        EqualBesidesPending(whole[0].Fp8States, whole[1].Fp8States);
        // 4 a step: the epoch's second step leaves rank 1 nothing, and a label-free micro-batch would add aux-loss gradients.
        var shortStep = Ranks(2, 0, r => Args($"fp8moe4-{r}", 3) with { GradientAccumulationSteps = 4 }, Fp8Lora, load: Load);
        foreach (var r in shortStep)
            Assert.Contains("whose short shares with a mixture of experts' load-balancing loss (moe_aux_loss_coef) cannot be topped up", Assert.IsType<TrainingException>(r.Error).Message);
    }

    [Fact]
    public void Fp8_delayed_on_one_rank_through_data_parallel_is_the_plain_trainer_bit_for_bit()
    {
        float[] weights, arena;
        using (var models = new TinyTrainingModels())
        {
            var model = models.Create(Fp8Lora);
            FineTuneRecipe.Train(model, Args("fp8one-plain", 3), Loader(), null, ITrainingMonitor.Silent);
            (weights, arena) = (Trainable(model), model.ReadFp8States());
        }
        var one = Succeeded(Ranks(1, 0, _ => Args("fp8one-dp", 3), Fp8Lora))[0];
        Assert.Equal(weights, one.Weights);
        Assert.Equal(arena, one.Fp8States);
    }

    static RankResult[] Succeeded(RankResult[] results) =>
        results.Select(r => r.Error is null ? r : throw new Xunit.Sdk.XunitException(r.Error.ToString())).ToArray();
}
