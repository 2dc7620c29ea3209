using FineTune.Data;
using FineTune.Data.Preprocessing;
using FineTune.Models;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;
using FineTune.Tokenizers;

namespace FineTune.Pipeline.Tests.DataStages;

/// <summary>register and split on real files: a LLaMA-Factory registry, a scratch model's tokenizer, the real runner.</summary>
public sealed class DataStageTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "ft-datastage-" + Guid.NewGuid().ToString("N")[..12]);

    private const string Registry = """
        {
          "qa": {"file_name": "qa.jsonl", "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}},
          "tools": {"file_name": "tools.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system", "tools": "tools"}},
          "pref": {"file_name": "pref.jsonl", "ranking": true, "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}},
          "kto": {"file_name": "kto.jsonl", "columns": {"prompt": "instruction", "response": "output", "kto_tag": "label"}}
        }
        """;

    private const string Qa = """
        {"instruction": "Who are you?", "input": "", "output": "I am {{name}}.", "system": "Be brief."}
        {"instruction": "Who made you?", "input": "", "output": "{{author}} made me."}
        {"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"}
        {"instruction": "Say bye", "input": "", "output": "Bye"}

        """;

    private const string Tools = """
        [{"system": "Use tools.", "tools": "[{\"name\": \"add\", \"description\": \"Add\", \"parameters\": {\"type\": \"object\", \"properties\": {}}}]",
          "conversations": [{"from": "human", "value": "1+2?"}, {"from": "function_call", "value": "{\"name\": \"add\", \"arguments\": {\"a\": 1}}"},
                            {"from": "observation", "value": "3"}, {"from": "gpt", "value": "3"}]}]
        """;

    private const string Pref = """
        {"instruction": "Who are you?", "chosen": "I am {{name}}.", "rejected": "I am ChatGPT."}
        {"instruction": "Who made you?", "chosen": "{{author}} made me.", "rejected": "{{author}} made me."}
        {"instruction": "Your name?", "chosen": "{{name}}.", "rejected": "No name."}
        {"instruction": "Hi", "chosen": "Hi, I am {{name}}.", "rejected": "Hi."}
        """;

    private const string Kto = """
        {"instruction": "Who are you?", "output": "I am {{name}}.", "label": true}
        {"instruction": "Who made you?", "output": "Nobody.", "label": false}
        {"instruction": "Your name?", "output": "{{name}}.", "label": true}
        """;

    public DataStageTests()
    {
        Directory.CreateDirectory(Path.Combine(_dir, "data"));
        File.WriteAllText(Path.Combine(_dir, "data", "dataset_info.json"), Registry);
        File.WriteAllText(Path.Combine(_dir, "data", "qa.jsonl"), Qa);
        File.WriteAllText(Path.Combine(_dir, "data", "tools.json"), Tools);
        File.WriteAllText(Path.Combine(_dir, "data", "pref.jsonl"), Pref);
        File.WriteAllText(Path.Combine(_dir, "data", "kto.jsonl"), Kto);
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    private static PipelineDefinition Definition(double valSize = 0, string[]? datasets = null) => new()
    {
        Name = "t",
        Model = new ModelSection { Source = "scratch" },
        Data = new DataSection
        {
            Dataset = datasets ?? ["qa", "tools"], Template = "qwen3",
            Placeholders = new Dictionary<string, string> { ["name"] = "Ferret", ["author"] = "Ann" },
        },
        Stages = new StagesSection { Register = new RegisterConfig(), Split = new SplitConfig { ValSize = valSize, CutoffLen = 2048 } },
    };

    private StageContext Context(PipelineDefinition def, string output, Dictionary<StageKind, string>? upstream = null)
    {
        if (output.Length > 0) Directory.CreateDirectory(output);
        return new StageContext(def, _dir, upstream ?? [], output, new NullStageProgress(), CancellationToken.None);
    }

    private (string Register, string Model) RunRegister(PipelineDefinition def)
    {
        var register = Path.Combine(_dir, "out-register");
        new RegisterStage().Execute(Context(def, register));
        var model = Path.Combine(_dir, "model");
        ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 8, IntermediateSize = 8, NumHiddenLayers = 1, NumAttentionHeads = 1, NumKeyValueHeads = 1, HeadDim = 8 }, model);
        return (register, model);
    }

    [Fact]
    public void ExternalInputsAreTheRegistryAndTheNamedDatasetFiles()
    {
        var inputs = new RegisterStage().ExternalInputs(Context(Definition(), ""));
        Assert.Equal(["dataset_info.json", "qa.jsonl", "tools.json"], inputs.Select(Path.GetFileName));
    }

    [Fact]
    public void RegisterWritesNormalisedConversationsWithPlaceholdersFilled()
    {
        var output = Path.Combine(_dir, "out");
        var result = new RegisterStage().Execute(Context(Definition(), output));
        var conversations = ConversationFile.Read(Path.Combine(output, "conversations.jsonl"));
        Assert.Equal(5, conversations.Count);
        Assert.Equal((5.0, 0.0), (result.Metrics["samples"], result.Metrics["dropped"]));
        Assert.Equal("I am Ferret.", conversations[0].Messages[1].Content);
        Assert.Equal("Be brief.", conversations[0].System);
        Assert.Equal([ChatRole.User, ChatRole.Function, ChatRole.Observation, ChatRole.Assistant], conversations[4].Messages.Select(m => m.Role));
        Assert.StartsWith("[{\"name\": \"add\"", conversations[4].Tools);
    }

    [Fact]
    public void RegisterStopsOnBadDataWithTheLocatedProblem()
    {
        File.AppendAllText(Path.Combine(_dir, "data", "qa.jsonl"), "{\"instruction\": \"x\", \"output\": \"\"}\n");
        var e = Assert.Throws<PipelineUserException>(() => new RegisterStage().Execute(Context(Definition(), Path.Combine(_dir, "out"))));
        Assert.Contains("qa.jsonl: record 5 (line 5), field 'output': empty response", e.Message);
    }

    [Fact]
    public void SplitTokenizesAndMasksToolTurnsTokenByToken()
    {
        var def = Definition();
        var (register, model) = RunRegister(def);
        var output = Path.Combine(_dir, "out-split");
        var result = new SplitStage().Execute(Context(def, output, new() { [StageKind.Register] = register, [StageKind.Download] = model }));
        Assert.Equal((5.0, 0.0), (result.Metrics["train_samples"], result.Metrics["val_samples"]));
        using var train = TokenizedDataset.Open(Path.Combine(output, "train.ftds"));
        var tokenizer = Tokenizer.FromDirectory(model);
        // The tool sample: the function call and the final answer are trained, the tool result (observation) is not.
        var ids = train.InputIds(4).ToArray();
        var labels = train.Labels(4).ToArray();
        var trained = string.Concat(Runs(ids, labels, trainedOnly: true).Select(r => tokenizer.Decode(r)));
        Assert.Equal("<think>\n\n</think>\n\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call><|im_end|>\n" +
                     "<think>\n\n</think>\n\n3<|im_end|>\n", trained);
        var masked = tokenizer.Decode(ids.Where((_, i) => labels[i] == TokenizedSample.IgnoreIndex).ToArray());
        Assert.Contains("<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n<|im_start|>assistant\n", masked);
        Assert.Contains("\"template\": \"qwen3\"", File.ReadAllText(Path.Combine(output, "template.json")));
        Assert.True(File.Exists(Path.Combine(output, "val.ftds")));
    }

    [Fact]
    public void SplitIsDeterministicBySeedAndSplitsBeforePacking()
    {
        var def = Definition(valSize: 0.4) with { };
        def = def with { Stages = def.Stages with { Split = def.Stages.Split! with { Packing = true, NeatPacking = true } } };
        var (register, model) = RunRegister(def);
        string RunSplit(string name)
        {
            var output = Path.Combine(_dir, name);
            new SplitStage().Execute(Context(def, output, new() { [StageKind.Register] = register, [StageKind.Download] = model }));
            return output;
        }
        var a = RunSplit("a");
        var b = RunSplit("b");
        // Every output file is byte-identical (no timings in stats.json): the stage's output hash, and so every
        // downstream fingerprint, is the same on every run.
        foreach (var file in new[] { "train.ftds", "val.ftds", "stats.json", "template.json" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(a, file)), File.ReadAllBytes(Path.Combine(b, file)));
        using var val = TokenizedDataset.Open(Path.Combine(a, "val.ftds"));
        using var train = TokenizedDataset.Open(Path.Combine(a, "train.ftds"));
        // ceil(0.4 × 5) = 2 validation conversations, packed among themselves only.
        Assert.Equal(2, Enumerable.Range(0, val.Count).Sum(i => val.SequenceLengths(i).Length));
        Assert.Equal(3, Enumerable.Range(0, train.Count).Sum(i => train.SequenceLengths(i).Length));
    }

    [Fact]
    public void RunnerKeepsTheLastGoodRegisterOutputWhenDataTurnsBad()
    {
        var yaml = Path.Combine(_dir, "pipeline.yaml");
        File.WriteAllText(yaml, """
            name: t
            model:
              source: scratch
            data:
              dataset: [qa]
              template: qwen3
            stages:
              register: {}
            """);
        var runner = new PipelineRunner(StageRegistry.CreateDefault());
        var first = runner.Run(PipelineLoader.Load(yaml), new RunOptions { Stage = "register" }, new NullStageProgress(), CancellationToken.None);
        var good = first.Stages.Single(s => s.Kind == StageKind.Register).OutputDirectory!;
        var goodBytes = File.ReadAllBytes(Path.Combine(good, "conversations.jsonl"));

        File.WriteAllText(Path.Combine(_dir, "data", "qa.jsonl"), "{\"instruction\": \"x\"}\n");
        var e = Assert.ThrowsAny<Exception>(() => runner.Run(PipelineLoader.Load(yaml), new RunOptions { Stage = "register" }, new NullStageProgress(), CancellationToken.None));
        Assert.Contains("qa.jsonl: record 1 (line 1), field 'output': missing column 'output' (the response)", e.Message);
        Assert.Equal(goodBytes, File.ReadAllBytes(Path.Combine(good, "conversations.jsonl")));
    }

    [Fact]
    public void RegisterKeepsAnIdenticalPairAndReportsItAsAWarning()
    {
        var output = Path.Combine(_dir, "out");
        var result = new RegisterStage().Execute(Context(Definition(datasets: ["pref"]), output));
        Assert.Equal(4.0, result.Metrics["samples"]);
        Assert.Contains(result.Notes, n => n.StartsWith("pref: warning: 1 record to look at (first: ", StringComparison.Ordinal) &&
                                           n.EndsWith("pref.jsonl: record 2 (line 2), field 'rejected': the rejected answer is the same as the chosen one ('chosen'); the pair trains nothing (its DPO margin is 0))", StringComparison.Ordinal));
        var report = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(output, "register.json")))!["datasets"]![0]!;
        Assert.Equal(1, (int)report["warnings"]!);
    }

    [Fact]
    public void SplitOfRankingDataWritesPairedTrainAndValFiles()
    {
        var def = Definition(valSize: 1, datasets: ["pref"]);
        def = def with { Stages = def.Stages with { Split = def.Stages.Split! with { Packing = true } } };
        var (register, model) = RunRegister(def);
        var output = Path.Combine(_dir, "out-split");
        var result = new SplitStage().Execute(Context(def, output, new() { [StageKind.Register] = register, [StageKind.Download] = model }));
        using var train = TokenizedDataset.Open(Path.Combine(output, "train.ftds"));
        using var val = TokenizedDataset.Open(Path.Combine(output, "val.ftds"));
        Assert.Equal((true, true, 3, 1), (train.IsPaired, val.IsPaired, train.Count, val.Count));
        Assert.False(train.Stats.Packed);
        var tokenizer = Tokenizer.FromDirectory(model);
        // Every row: the same prompt twice, then the chosen and the rejected answer as the trained runs.
        for (var i = 0; i < train.Count; i++)
        {
            var lengths = train.SequenceLengths(i).ToArray();
            Assert.Equal(2, lengths.Length);
            var ids = train.InputIds(i).ToArray();
            var labels = train.Labels(i).ToArray();
            var chosen = Runs(ids[..lengths[0]], labels[..lengths[0]], trainedOnly: false).Single();
            var rejected = Runs(ids[lengths[0]..], labels[lengths[0]..], trainedOnly: false).Single();
            Assert.Equal(chosen, rejected);
            Assert.EndsWith("<|im_start|>assistant\n", tokenizer.Decode(chosen));
        }
        Assert.Equal(["<think>\n\n</think>\n\nI am Ferret.<|im_end|>\n", "<think>\n\n</think>\n\nI am ChatGPT.<|im_end|>\n"],
            new[] { train, val }.SelectMany(d => Enumerable.Range(0, d.Count).Select(i => d[i])).Where(s => tokenizer.Decode(s.InputIds).Contains("Who are you?", StringComparison.Ordinal))
                .SelectMany(s => Runs(s.InputIds, s.Labels, trainedOnly: true)).Select(r => tokenizer.Decode(r)));
        Assert.Contains("\"samples\": \"pairs\"", File.ReadAllText(Path.Combine(output, "stats.json")));
        Assert.Contains("packing does not apply to preference or KTO samples (as in LLaMA-Factory); they are written unpacked", result.Notes);
        Assert.Equal(3.0, result.Metrics["train_samples"]);
    }

    [Fact]
    public void SplitOfKtoDataWritesTagsAndAnEmptyValSplitOfTheSameKind()
    {
        var def = Definition(datasets: ["kto"]);
        var (register, model) = RunRegister(def);
        var output = Path.Combine(_dir, "out-split");
        var result = new SplitStage().Execute(Context(def, output, new() { [StageKind.Register] = register, [StageKind.Download] = model }));
        using var train = TokenizedDataset.Open(Path.Combine(output, "train.ftds"));
        using var val = TokenizedDataset.Open(Path.Combine(output, "val.ftds"));
        Assert.Equal((true, 3, true, 0), (train.IsKto, train.Count, val.IsKto, val.Count));
        Assert.Equal([1, 0, 1], Enumerable.Range(0, 3).Select(train.Tag));
        var tokenizer = Tokenizer.FromDirectory(model);
        // Sample 1 ("Who made you?", undesirable): its KL sequence answers its prompt with sample 0's completion.
        var lengths = train.SequenceLengths(1).ToArray();
        var kl = tokenizer.Decode(train.InputIds(1)[lengths[0]..]);
        Assert.Contains("Who made you?", kl);
        Assert.EndsWith("I am Ferret.<|im_end|>\n", kl);
        Assert.Equal(2.0, result.Metrics["train_desirable"]);
        Assert.Contains("3 train KTO samples (2 desirable, 1 undesirable), each with a KL sequence", result.Notes);
    }

    private static IEnumerable<int[]> Runs(int[] ids, int[] labels, bool trainedOnly)
    {
        var run = new List<int>();
        for (var i = 0; i <= ids.Length; i++)
        {
            var keep = i < ids.Length && (labels[i] != TokenizedSample.IgnoreIndex) == trainedOnly;
            if (keep) { run.Add(ids[i]); continue; }
            if (run.Count > 0) { yield return run.ToArray(); run.Clear(); }
        }
    }
}
