using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Data;
using FineTune.Data.Preprocessing;
using FineTune.Data.Templates;
using FineTune.Pipeline.Config;
using FineTune.Tokenizers;

namespace FineTune.Pipeline;

/// <summary>
/// split: splits the registered conversations into train/val (by sample, before packing), applies the chat
/// template, tokenizes with the downloaded model's tokenizer and writes <c>train.ftds</c>, <c>val.ftds</c>,
/// <c>stats.json</c> and <c>template.json</c>.
/// </summary>
public sealed class SplitStage : IStageExecutor
{
    /// <summary>Reads the model (its tokenizer) and the registered samples; renders the chat template.</summary>
    public static StageDescription Description { get; } = new(StageKind.Split, [StageKind.Download, StageKind.Register], typeof(SplitConfig),
        StageDescription.TemplateSetting, () => new SplitStage());

    public StageKind Kind => Description.Kind;

    public IReadOnlyList<string> ExternalInputs(StageContext ctx) => [];

    public StageResult Execute(StageContext ctx) => RegisterStage.Guard(() =>
    {
        var config = ctx.Block<SplitConfig>();
        var conversations = ConversationFile.Read(RegisterOutput.Of(ctx).Conversations);
        var modelDir = ModelOutput.Of(ctx).Directory;
        var output = new SplitOutput(ctx.OutputDirectory);
        var tokenizer = Tokenizer.FromDirectory(modelDir);
        var templateName = ctx.Pipeline.Data.Template ?? "empty";
        var template = ChatTemplate.Get(templateName, config.EnableThinking);
        var options = Options(config);
        var preprocessor = new Preprocessor(tokenizer, template, options);

        // Pairs (ranking: true) and KTO samples (kto_tag) are told by the data itself; both splits are written as that kind.
        var kind = Preprocessor.KindOf(conversations);
        var (train, val) = TrainValSplit.Split(conversations, config.ValSize, config.Seed);
        var watch = Stopwatch.StartNew();
        PreprocessResult trainResult, valResult;
        using (var task = ctx.Progress.Start("tokenize", 2))
        {
            task.SetDescription($"tokenize {train.Count} train samples");
            trainResult = preprocessor.Process(train, kind: kind);
            task.Increment(1);
            ctx.Cancellation.ThrowIfCancellationRequested();
            task.SetDescription($"tokenize {val.Count} val samples");
            valResult = preprocessor.Process(val, kind: kind);
            task.Increment(1);
        }
        var seconds = watch.Elapsed.TotalSeconds;
        var trainHash = TokenizedDataset.Write(output.Train, trainResult.Samples, trainResult.Stats);
        var valHash = TokenizedDataset.Write(output.Val, valResult.Samples, valResult.Stats);

        var indented = new JsonSerializerOptions { WriteIndented = true };
        var stats = new JsonObject
        {
            ["source_samples"] = conversations.Count,
            ["train"] = StatsJson(trainResult.Stats, trainHash, train.Count),
            ["val"] = StatsJson(valResult.Stats, valHash, val.Count),
            // No timings here: the output must be a function of the inputs (its hash feeds every downstream
            // fingerprint). Throughput goes to the stage's notes and `finetune data bench`.
        };
        // Only for pairs/KTO, so that a supervised split's stats.json (hashed into pipeline.lock) keeps its bytes.
        if (kind != SampleKind.Supervised) stats["samples"] = kind == SampleKind.Pair ? "pairs" : "kto";
        File.WriteAllText(Path.Combine(ctx.OutputDirectory, "stats.json"), stats.ToJsonString(indented) + "\n");
        var tokenizerJson = Path.Combine(modelDir, "tokenizer.json");
        var templateDoc = new JsonObject
        {
            ["template"] = template.Name,
            ["enable_thinking"] = template.EnableThinking,
            ["stage"] = options.Stage == PreprocessStage.Pt ? "pt" : "sft",
            ["cutoff_len"] = options.CutoffLen,
            ["packing"] = options.Packing,
            ["neat_packing"] = options.NeatPacking,
            ["stop_words"] = new JsonArray(template.StopWords.Select(s => (JsonNode?)s).ToArray()),
            ["default_system"] = template.DefaultSystem,
            ["tokenizer"] = new JsonObject
            {
                ["file"] = "tokenizer.json",
                ["sha256"] = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(tokenizerJson))),
                ["vocab_size"] = tokenizer.VocabSize,
                ["bos_token_id"] = tokenizer.BosTokenId,
                ["eos_token_id"] = preprocessor.EosId,
                ["pad_token_id"] = preprocessor.PadId,
            },
        };
        File.WriteAllText(output.Template, templateDoc.ToJsonString(indented) + "\n");

        var notes = new List<string>
        {
            $"template {template.Name}: {train.Count} train / {val.Count} val samples, {trainResult.Stats.Tokens} train tokens ({trainResult.Stats.TrainedTokens} trained), {conversations.Count / Math.Max(seconds, 1e-9):0} samples/s",
        };
        if (trainResult.Stats.Truncated + valResult.Stats.Truncated > 0)
            notes.Add($"{trainResult.Stats.Truncated + valResult.Stats.Truncated} samples truncated to cutoff_len {options.CutoffLen}");
        if (trainResult.Stats.Dropped + valResult.Stats.Dropped > 0)
            notes.Add($"{trainResult.Stats.Dropped + valResult.Stats.Dropped} samples dropped: nothing left to train after truncation");
        notes.AddRange(TwoSequenceNotes(kind, options, trainResult.Stats));
        var metrics = new Dictionary<string, double>
        {
            ["train_samples"] = trainResult.Stats.Samples,
            ["val_samples"] = valResult.Stats.Samples,
            ["train_tokens"] = trainResult.Stats.Tokens,
            ["trained_tokens"] = trainResult.Stats.TrainedTokens,
            ["truncated"] = trainResult.Stats.Truncated + valResult.Stats.Truncated,
            ["dropped"] = trainResult.Stats.Dropped + valResult.Stats.Dropped,
        };
        if (kind == SampleKind.Kto) metrics["train_desirable"] = trainResult.Stats.Desirable;
        return new StageResult(metrics, notes);
    });

    /// <summary>What a user of pairs/KTO data should know: packing does not apply, KTO wants both kinds of answers.</summary>
    private static IEnumerable<string> TwoSequenceNotes(SampleKind kind, PreprocessOptions options, TokenizedDatasetStats train)
    {
        if (kind == SampleKind.Supervised) yield break;
        yield return kind == SampleKind.Pair
            ? $"{train.Samples} train pairs: chosen and rejected as two sequences of one row, each at most cutoff_len {options.CutoffLen}"
            : $"{train.Samples} train KTO samples ({train.Desirable} desirable, {train.Samples - train.Desirable} undesirable), each with a KL sequence";
        if (options.Packing)
            yield return "packing does not apply to preference or KTO samples (as in LLaMA-Factory); they are written unpacked";
        if (kind == SampleKind.Kto && train.Samples > 0 && (train.Desirable == 0 || train.Desirable == train.Samples))
            yield return $"the KTO data has only {(train.Desirable == 0 ? "undesirable" : "desirable")} answers; KTO learns from both kinds";
    }

    public static PreprocessOptions Options(SplitConfig config) => new()
    {
        Stage = config.Stage == TrainingStage.Pt ? PreprocessStage.Pt : PreprocessStage.Sft,
        CutoffLen = config.CutoffLen,
        TrainOnPrompt = config.TrainOnPrompt,
        MaskHistory = config.MaskHistory,
        Packing = config.ResolvedPacking || config.NeatPacking,
        NeatPacking = config.NeatPacking,
    };

    private static JsonObject StatsJson(TokenizedDatasetStats s, string hash, int sourceSamples) => new()
    {
        ["source_samples"] = sourceSamples,
        ["samples"] = s.Samples,
        ["tokens"] = s.Tokens,
        ["trained_tokens"] = s.TrainedTokens,
        ["truncated"] = s.Truncated,
        ["dropped"] = s.Dropped,
        ["content_hash"] = hash,
    };
}

/// <summary>What the split stage writes, as its readers (train, eval) address it.</summary>
public sealed record SplitOutput(string Directory)
{
    /// <summary>Tokenized training samples (<see cref="TokenizedDataset"/>).</summary>
    public string Train => Path.Combine(Directory, "train.ftds");
    /// <summary>Tokenized validation samples; empty when val_size is 0.</summary>
    public string Val => Path.Combine(Directory, "val.ftds");
    /// <summary>The template and its special token ids (<see cref="SplitTemplateInfo"/>).</summary>
    public string Template => Path.Combine(Directory, "template.json");

    public static SplitOutput Of(StageContext ctx) => new(ctx.UpstreamOutputs[StageKind.Split]);
}
