using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Data.Preprocessing;
using FineTune.Models;
using FineTune.Models.Tests;
using FineTune.Pipeline.Config;
using FineTune.Tokenizers;
using FineTune.Training;

namespace FineTune.Pipeline.Tests.Stages;

/// <summary>Train and eval stages on a real scratch model directory and real tokenized split files.</summary>
public sealed class TrainEvalStageTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private static readonly (string Q, string A)[] Pairs =
    [
        ("hi", "Hello, I am Tiny."), ("who are you?", "I am Tiny."), ("name?", "Tiny."), ("hello", "Hi, I am Tiny."),
        ("what are you?", "A tiny model."), ("creator?", "The FineTune team."), ("hey", "Hey, Tiny here."), ("ok?", "Yes."),
        ("your name", "Tiny."), ("help", "I am Tiny, ask away."),
    ];

    /// <summary>A 1-layer scratch qwen3 model and a split directory (8 train / 2 val conversations, qwen-style turns).</summary>
    private (string Model, string Split) Upstream()
    {
        string model = _dir.File("model"), split = Directory.CreateDirectory(_dir.File("split")).FullName;
        ScratchModel.Generate(new ScratchModelSpec
        {
            HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 16,
            InitializerRange = 0.5, Seed = 3,
        }, model);
        var tok = Tokenizer.FromDirectory(model);
        int end = tok.TokenToId("<|im_end|>")!.Value;
        TokenizedSample Encode((string Q, string A) p)
        {
            var prompt = tok.Encode($"<|im_start|>user\n{p.Q}<|im_end|>\n<|im_start|>assistant\n");
            var answer = tok.Encode(p.A).Append(end).ToArray();
            var ids = prompt.Concat(answer).ToArray();
            return TokenizedSample.Single(ids, ids.Select((t, i) => i < prompt.Length ? -100 : t).ToArray());
        }
        TokenizedDataset.Write(Path.Combine(split, "train.ftds"), Pairs.Take(8).Select(Encode));
        TokenizedDataset.Write(Path.Combine(split, "val.ftds"), Pairs.Skip(8).Select(Encode));
        File.WriteAllText(Path.Combine(split, "template.json"), new JsonObject
        {
            ["template"] = "qwen", ["stop_words"] = new JsonArray("<|im_end|>"),
            ["tokenizer"] = new JsonObject { ["eos_token_id"] = end, ["pad_token_id"] = end },
        }.ToJsonString());
        return (model, split);
    }

    private StageContext Context(StagesSection stages, Dictionary<StageKind, string> upstream, string output) =>
        new(new PipelineDefinition { Name = "t", Model = new ModelSection { Source = "scratch" }, Stages = stages },
            _dir.Path, upstream, Directory.CreateDirectory(output).FullName, new NullStageProgress(), CancellationToken.None, _dir.File("work/train"));

    private static TrainConfig Train => new()
    {
        Device = "cpu", LoraRank = 4, LearningRate = 2e-2, MaxSteps = 24, PerDeviceTrainBatchSize = 4, LoggingSteps = 4,
        LrSchedulerType = Training.LrSchedulerType.Cosine, WarmupSteps = 2, SaveSteps = 12, PlotLoss = true, Seed = 1,
    };

    private (string Model, string Split, string Train, StageResult Result) RunTrain(TrainConfig? train = null, TrainStage? stage = null)
    {
        var (model, split) = Upstream();
        var up = new Dictionary<StageKind, string> { [StageKind.Download] = model, [StageKind.Split] = split };
        string output = _dir.File("train-out");
        var result = (stage ?? new TrainStage()).Execute(Context(new StagesSection { Train = train ?? Train }, up, output));
        return (model, split, output, result);
    }

    [Fact]
    public void Train_writes_the_adapter_logs_curve_and_results_and_reports_metrics()
    {
        var (_, _, output, result) = RunTrain();
        foreach (var f in new[] { "adapter_config.json", "adapter_model.safetensors", "trainer_log.jsonl", "training_loss.svg", "train_results.json" })
            Assert.True(File.Exists(Path.Combine(output, f)), f);
        var log = TrainerLog.Read(Path.Combine(output, TrainerLog.FileName));
        Assert.Equal([4, 8, 12, 16, 20, 24], log.Select(e => e.CurrentSteps));
        Assert.True(log[^1].Loss < log[0].Loss, $"loss {log[0].Loss} → {log[^1].Loss}");
        Assert.Equal(24, result.Metrics["global_step"]);
        Assert.Equal(log[^1].Loss, result.Metrics["loss"]);
        Assert.Empty(Directory.GetDirectories(output, "checkpoint-*"));
        var run = Assert.Single(Directory.GetDirectories(_dir.File("work/train/checkpoints")));
        Assert.True(new CheckpointStore(run).IsFinished);
        // The adapter names the model as the pipeline does, never the cache path it was loaded from, so its bytes do
        // not depend on where the checkout lives (pipeline.lock records their hash).
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "adapter_config.json")))!;
        Assert.Equal("scratch", (string?)config["base_model_name_or_path"]);
        Assert.Equal(["train_results.json", "trainer_log.jsonl", "training_eval_loss.svg", "training_loss.svg"], result.Reports!.Order(StringComparer.Ordinal));
    }

    /// <summary>The files of a train output that the output hash (and so pipeline.lock and downstream stages) covers.</summary>
    private static Dictionary<string, string> ResultFiles(string output, StageResult result) =>
        Directory.GetFiles(output).Select(Path.GetFileName).OfType<string>()
            .Where(f => !(result.Reports ?? []).Contains(f))
            .ToDictionary(f => f, f => Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(Path.Combine(output, f)))));

    [Fact]
    public void Logging_plotting_and_checkpoint_keys_change_report_files_only()
    {
        var (model, split) = Upstream();
        var up = new Dictionary<StageKind, string> { [StageKind.Download] = model, [StageKind.Split] = split };
        var first = new TrainStage().Execute(Context(new StagesSection { Train = Train }, up, _dir.File("a")));
        var second = new TrainStage().Execute(Context(new StagesSection
        {
            Train = Train with { LoggingSteps = 5, PlotLoss = false, SaveSteps = 7, SaveTotalLimit = 1 },
        }, up, _dir.File("b")));
        var a = ResultFiles(_dir.File("a"), first);
        Assert.Equal(["adapter_config.json", "adapter_model.safetensors"], a.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(a, ResultFiles(_dir.File("b"), second));
        Assert.NotEqual(File.ReadAllBytes(_dir.File("a/trainer_log.jsonl")), File.ReadAllBytes(_dir.File("b/trainer_log.jsonl")));
    }

    [Theory]
    [InlineData("hf://Qwen/Qwen3-0.6B@a1b2c3", "Qwen/Qwen3-0.6B")]
    [InlineData("hf://meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B")]
    [InlineData("models/base", "models/base")]
    [InlineData("scratch", "scratch")]
    public void Adapter_base_model_is_the_source_as_the_pipeline_names_it(string source, string expected) =>
        Assert.Equal(expected, TrainStage.BaseModelName(new ModelSection { Source = source }));

    [Fact]
    public void Eval_reports_loss_perplexity_and_generation_scores()
    {
        var (model, split, train, _) = RunTrain();
        var up = new Dictionary<StageKind, string> { [StageKind.Download] = model, [StageKind.Split] = split, [StageKind.Train] = train };
        string output = _dir.File("eval-out");
        var eval = new EvalConfig { Device = "cpu", PredictWithGenerate = true, MaxNewTokens = 8, DoSample = false };
        var result = new EvalStage().Execute(Context(new StagesSection { Train = Train, Eval = eval }, up, output));

        Assert.Equal(Math.Exp(result.Metrics["eval_loss"]), result.Metrics["perplexity"], tolerance: 1e-3);
        Assert.Equal(2, result.Metrics["eval_samples"]);
        var lines = File.ReadAllLines(Path.Combine(output, "generated_predictions.jsonl"));
        Assert.Equal(2, lines.Length);
        var first = JsonNode.Parse(lines[0])!.AsObject();
        Assert.Equal("Tiny.", first["label"]!.GetValue<string>());
        Assert.EndsWith("<|im_start|>assistant\n", first["prompt"]!.GetValue<string>());
        var predict = JsonSerializer.Deserialize<Dictionary<string, double>>(File.ReadAllText(Path.Combine(output, "predict_results.json")))!;
        Assert.Equal(result.Metrics["predict_bleu-4"], predict["predict_bleu-4"]);
        Assert.InRange(predict["predict_rouge-l"], 0, 100);
        Assert.True(File.Exists(Path.Combine(output, "eval_results.json")));
    }

    [Fact]
    // dotnet test runs where no CUDA driver is loaded (CI has no GPU; GPU checks live in tests/device).
    public void Cuda_device_without_a_cuda_driver_is_a_user_error_naming_the_key()
    {
        var (model, split) = Upstream();
        var up = new Dictionary<StageKind, string> { [StageKind.Download] = model, [StageKind.Split] = split };
        var e = Assert.Throws<PipelineUserException>(() =>
            new TrainStage().Execute(Context(new StagesSection { Train = Train with { Device = "cuda" } }, up, _dir.File("o"))));
        Assert.StartsWith("stages.train.device: 'cuda' — device: cuda:0 was asked for, but no CUDA driver", e.Message);
        Assert.EndsWith("Use device: auto or cpu to train on the CPU.", e.Message);
    }

    [Fact]
    public void An_unknown_lora_target_stops_before_training_with_the_key_named()
    {
        var (model, split) = Upstream();
        var up = new Dictionary<StageKind, string> { [StageKind.Download] = model, [StageKind.Split] = split };
        var e = Assert.ThrowsAny<PipelineUserException>(() =>
            new TrainStage().Execute(Context(new StagesSection { Train = Train with { LoraTarget = ["q_proj", "q_prj"] } }, up, _dir.File("o"))));
        Assert.Equal("stages.train.lora_target[1]: 'q_prj' is not a linear module of this qwen3 model; did you mean 'q_proj'? " +
            "(expected all, or some of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)", e.Message);
        Assert.False(Directory.Exists(_dir.File("work/train/checkpoints")));
    }

    [Fact]
    public void Eval_steps_without_validation_data_is_a_user_error()
    {
        var (model, split) = Upstream();
        File.Delete(Path.Combine(split, "val.ftds"));
        var up = new Dictionary<StageKind, string> { [StageKind.Download] = model, [StageKind.Split] = split };
        var e = Assert.Throws<PipelineUserException>(() =>
            new TrainStage().Execute(Context(new StagesSection { Train = Train with { EvalSteps = 4 } }, up, _dir.File("o"))));
        Assert.Contains("val_size", e.Message);
    }

    [Fact]
    public void Report_to_tensorboard_writes_an_event_file_of_the_trainers_scalars_under_hf_tags()
    {
        var (_, _, output, result) = RunTrain(Train with { ReportTo = ReportTo.Tensorboard, EvalSteps = 12 });
        Assert.Contains("runs/events.out.tfevents.finetune", result.Reports!);
        var events = Tracking.TfRecordReader.Read(Path.Combine(output, "runs/events.out.tfevents.finetune"));
        Assert.Equal("brain.Event:2", events[0].FileVersion);
        Assert.Empty(events[0].Scalars);
        var log = TrainerLog.Read(Path.Combine(output, TrainerLog.FileName));
        // One event per log line, then the end of training; every value as the log has it, in float32 as TensorBoard keeps it.
        Assert.Equal(log.Count + 2, events.Count);
        var train = log.Where(e => e.Loss is not null).ToList();
        Assert.Equal([4, 8, 12, 16, 20, 24], train.Select(e => e.CurrentSteps));
        foreach (var (entry, ev) in log.Zip(events.Skip(1)))
        {
            Assert.Equal(entry.CurrentSteps, ev.Step);
            var tags = ev.Scalars.ToDictionary(s => s.Tag, s => s.Value);
            if (entry.Loss is double loss)
            {
                Assert.Equal(["train/epoch", "train/grad_norm", "train/learning_rate", "train/loss", "train/num_input_tokens_seen", "train/throughput"], tags.Keys.Order(StringComparer.Ordinal));
                Assert.Equal((float)loss, tags["train/loss"]);
                Assert.Equal((float)entry.LearningRate!.Value, tags["train/learning_rate"]);
                Assert.Equal((float)entry.GradNorm!.Value, tags["train/grad_norm"]);
                Assert.Equal((float)entry.Epoch!.Value, tags["train/epoch"]);
            }
            else
            {
                Assert.Equal(["eval/loss", "train/epoch"], tags.Keys.Order(StringComparer.Ordinal));
                Assert.Equal((float)entry.EvalLoss!.Value, tags["eval/loss"]);
            }
        }
        Assert.Equal([12, 24], log.Where(e => e.EvalLoss is not null).Select(e => e.CurrentSteps));
        var end = events[^1];
        Assert.Equal(24, end.Step);
        Assert.Equal((float)result.Metrics["train_loss"], end.Scalars.Single(s => s.Tag == "train/train_loss").Value);
        Assert.True(events.Skip(1).All(e => e.WallTime >= events[0].WallTime), "wall times count from the start");
    }

    [Fact]
    public void Report_to_none_writes_no_event_file_and_leaves_the_fingerprint_of_every_report_to()
    {
        var (_, _, output, result) = RunTrain();
        Assert.False(Directory.Exists(Path.Combine(output, "runs")));
        Assert.DoesNotContain("runs/events.out.tfevents.finetune", result.Reports!);
        var stages = new[] { ReportTo.None, ReportTo.Tensorboard, ReportTo.Mlflow, ReportTo.All }
            .Select(r => Engine.CanonicalJson.Serialize(Engine.StageFingerprint.ParametersOf(StageKind.Train,
                new PipelineDefinition { Name = "t", Stages = new StagesSection { Train = Train with { ReportTo = r } } })))
            .Distinct().ToList();
        Assert.Single(stages);
        Assert.DoesNotContain("report_to", stages[0]);
    }

    [Fact]
    public void Report_to_mlflow_logs_params_tags_metrics_per_step_and_artifacts_to_the_tracking_server()
    {
        using var server = new Tracking.StandInMlflowServer();
        var env = new Dictionary<string, string> { ["MLFLOW_TRACKING_URI"] = server.Endpoint, ["MLFLOW_EXPERIMENT_NAME"] = "identity-exp" };
        var (model, split, output, result) = RunTrain(Train with { ReportTo = ReportTo.Mlflow }, new TrainStage(k => env.GetValueOrDefault(k)));
        var artifactPut = "PUT artifacts/1/run1/artifacts/";
        Assert.Equal(["GET experiments/get-by-name", "POST experiments/create", "POST runs/create", "POST runs/log-batch", "POST runs/log-batch",
            artifactPut + "trainer_log.jsonl", artifactPut + "train_results.json", artifactPut + "training_loss.svg", "POST runs/update"], server.Calls);
        var requests = server.Requests.ToList();
        Assert.Equal("identity-exp", (string?)requests[1].Body!["name"]);
        var create = requests[2].Body!;
        Assert.Equal(("1", "t/train"), ((string?)create["experiment_id"], (string?)create["run_name"]));
        var tags = create["tags"]!.AsArray().ToDictionary(t => (string)t!["key"]!, t => (string)t!["value"]!);
        var fingerprint = new Engine.StageFingerprint(StageKind.Train, Engine.StageFingerprint.ParametersOf(StageKind.Train,
            new PipelineDefinition { Name = "t", Model = new ModelSection { Source = "scratch" }, Stages = new StagesSection { Train = Train with { ReportTo = ReportTo.Mlflow } } }),
            new Dictionary<StageKind, string>
            {
                [StageKind.Download] = Engine.ContentHasher.TreeHash(new Engine.ContentHasher(null).HashTree(model)),
                [StageKind.Split] = Engine.ContentHasher.TreeHash(new Engine.ContentHasher(null).HashTree(split)),
            }, []).Hash;
        Assert.Equal(fingerprint, tags["finetune.fingerprint"]);
        Assert.Equal(("t", "train"), (tags["finetune.pipeline"], tags["finetune.stage"]));

        var parameters = requests[3].Body!["params"]!.AsArray().ToDictionary(p => (string)p!["key"]!, p => (string)p!["value"]!);
        Assert.Equal("0.02", parameters["learning_rate"]);
        Assert.Equal("4", parameters["lora_rank"]);
        Assert.Equal("24", parameters["max_steps"]);
        Assert.Equal("cosine", parameters["lr_scheduler_type"]);
        Assert.Equal("[\"all\"]", parameters["lora_target"]);
        Assert.Equal("mlflow", parameters["report_to"]);
        Assert.Equal("scratch", parameters["model_name_or_path"]);

        var metrics = requests[4].Body!["metrics"]!.AsArray().Select(m => ((string)m!["key"]!, (long)m["step"]!, (double)m["value"]!)).ToList();
        var log = TrainerLog.Read(Path.Combine(output, TrainerLog.FileName));
        Assert.Equal(log.Select(e => ((long)e.CurrentSteps, e.Loss!.Value)), metrics.Where(m => m.Item1 == "loss").Select(m => (m.Item2, m.Item3)));
        Assert.Equal(log.Select(e => e.LearningRate!.Value), metrics.Where(m => m.Item1 == "learning_rate").Select(m => m.Item3));
        Assert.Equal([(24L, result.Metrics["train_loss"])], metrics.Where(m => m.Item1 == "train_loss").Select(m => (m.Item2, m.Item3)));
        Assert.Equal(File.ReadAllBytes(Path.Combine(output, TrainerLog.FileName)), requests[5].Bytes);
        var update = requests[^1].Body!;
        Assert.Equal(("run1", "FINISHED"), ((string?)update["run_id"], (string?)update["status"]));
    }

    [Fact]
    public void Report_to_mlflow_without_a_tracking_uri_stops_before_training_with_the_key_named()
    {
        var e = Assert.Throws<PipelineUserException>(() => RunTrain(Train with { ReportTo = ReportTo.All }, new TrainStage(_ => null)));
        Assert.Equal("stages.train.report_to is all, but MLFLOW_TRACKING_URI is not set; set it to the tracking server's URL (http://host:5000), or set report_to: none or tensorboard.", e.Message);
        Assert.False(File.Exists(Path.Combine(_dir.File("train-out"), TrainerLog.FileName)));
    }

    [Fact]
    public void A_cancelled_training_ends_its_mlflow_run_killed()
    {
        using var server = new Tracking.StandInMlflowServer();
        var (model, split) = Upstream();
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        var ctx = Context(new StagesSection { Train = Train with { ReportTo = ReportTo.Mlflow } },
            new Dictionary<StageKind, string> { [StageKind.Download] = model, [StageKind.Split] = split }, _dir.File("train-out")) with { Cancellation = cancelled.Token };
        Assert.ThrowsAny<OperationCanceledException>(() => new TrainStage(k => k == "MLFLOW_TRACKING_URI" ? server.Endpoint : null).Execute(ctx));
        Assert.Equal(["GET experiments/get-by-name", "POST experiments/create", "POST runs/create", "POST runs/log-batch", "POST runs/update"], server.Calls);
        var update = server.Requests.Last().Body!;
        Assert.Equal(("run1", "KILLED"), ((string?)update["run_id"], (string?)update["status"]));
        // No experiment name set: the pipeline's.
        Assert.Equal("t", (string?)server.Requests.ElementAt(1).Body!["name"]);
    }
}
