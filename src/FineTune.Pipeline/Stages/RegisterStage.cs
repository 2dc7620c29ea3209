using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Data;
using FineTune.Data.Reading;
using FineTune.Data.Registry;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline;

/// <summary>
/// register: reads the datasets that <c>data.dataset</c> names from dataset_info.json, checks every record,
/// fills <c>data.placeholders</c>, and writes the normalised conversations (<c>conversations.jsonl</c>) plus
/// a report (<c>register.json</c>). Bad records stop the stage with located errors unless skip_invalid.
/// </summary>
public sealed class RegisterStage : IStageExecutor
{
    /// <summary>Seed of num_samples sampling; fixed so that the output depends on the data and the pipeline only.</summary>
    public const int SampleSeed = 42;

    /// <summary>
    /// Reads no stage; its fingerprint covers the datasets, their placeholders and what the records must hold (sft or pt).
    /// A stage with its own <c>dataset:</c> has it in its block, and data.dataset stays out of its fingerprint.
    /// </summary>
    public static StageDescription Description { get; } = new(StageKind.Register, [], typeof(RegisterConfig),
        (p, stage) =>
        {
            var data = new JsonObject();
            if (((RegisterConfig)stage.Block).Dataset is null)
                data["dataset"] = Engine.CanonicalJson.Value(p.Data.Dataset);
            data["placeholders"] = Engine.CanonicalJson.Value(p.Data.Placeholders);
            // register checks records for what split will train: answers for sft, text only for pt.
            data["stage"] = PurposeOf(p, stage) == DatasetPurpose.Pretrain ? "pt" : "sft";
            return new JsonObject { ["data"] = data };
        }, () => new RegisterStage());

    /// <summary>What the records must hold: what the split stages reading this one tokenize for (sft when none reads it).</summary>
    public static DatasetPurpose PurposeOf(PipelineDefinition p, StageInstance register)
    {
        // A section built in code has no providers resolved: the only split, as the loader would resolve it.
        var readers = p.Stages.Readers(register.Name).Where(s => s.Kind == StageKind.Split).ToArray();
        if (readers.Length == 0 && p.Stages.All.All(s => s.Reads.Count == 0)) readers = p.Stages.OfKind(StageKind.Split).ToArray();
        return readers.FirstOrDefault()?.Block is SplitConfig { Stage: TrainingStage.Pt } ? DatasetPurpose.Pretrain : DatasetPurpose.Sft;
    }

    /// <summary>The datasets this stage reads: its own <c>dataset:</c>, else data.dataset.</summary>
    public static IReadOnlyList<string> Datasets(StageContext ctx) => ctx.Block<RegisterConfig>().DatasetsOr(ctx.Pipeline.Data);

    private static StageInstance Instance(StageContext ctx) =>
        ctx.Stage ?? ctx.Pipeline.Stages.OfKind(StageKind.Register).FirstOrDefault() ?? new StageInstance("register", StageKind.Register, new RegisterConfig());

    public StageKind Kind => Description.Kind;

    public IReadOnlyList<string> ExternalInputs(StageContext ctx) => Guard(() =>
    {
        var registry = LoadRegistry(ctx);
        var inputs = new List<string> { registry.RegistryPath };
        foreach (var name in Datasets(ctx))
            inputs.AddRange(registry.ResolveFiles(registry.Get(name)));
        return inputs.Distinct(StringComparer.Ordinal).ToList();
    });

    public StageResult Execute(StageContext ctx) => Guard(() =>
    {
        var config = ctx.Block<RegisterConfig>();
        var datasets = Datasets(ctx);
        var registry = LoadRegistry(ctx);
        var options = new DatasetLoadOptions
        {
            Purpose = PurposeOf(ctx.Pipeline, Instance(ctx)),
            SkipInvalid = config.SkipInvalid,
            MaxSamples = config.MaxSamples,
            Placeholders = ctx.Pipeline.Data.Placeholders,
            Seed = SampleSeed,
        };
        var all = new List<Conversation>();
        var report = new JsonArray();
        var notes = new List<string>();
        long dropped = 0;
        using (var task = ctx.Progress.Start(Instance(ctx).Name, datasets.Count))
        {
            foreach (var name in datasets)
            {
                ctx.Cancellation.ThrowIfCancellationRequested();
                task.SetDescription($"{Instance(ctx).Name} {name}");
                var loaded = DatasetLoader.Load(registry, name, options);
                all.AddRange(loaded.Conversations);
                dropped += loaded.Dropped;
                report.Add(new JsonObject
                {
                    ["dataset"] = name,
                    ["files"] = new JsonArray(loaded.Files.Select(f => (JsonNode?)Path.GetRelativePath(registry.Directory, f)).ToArray()),
                    ["records_read"] = loaded.RecordsRead,
                    ["samples"] = loaded.Conversations.Count,
                    ["dropped"] = loaded.Dropped,
                    ["dropped_examples"] = new JsonArray(loaded.DroppedProblems.Select(p => (JsonNode?)p.ToString()).ToArray()),
                });
                notes.Add($"{name}: {loaded.Conversations.Count} samples" + (loaded.Dropped > 0 ? $", {loaded.Dropped} invalid records dropped (first: {loaded.DroppedProblems[0]})" : ""));
                if (loaded.WarningCount > 0)
                {
                    // Only when there are warnings, so that register.json of clean data keeps its bytes (pipeline.lock).
                    report[^1]!["warnings"] = loaded.WarningCount;
                    report[^1]!["warning_examples"] = new JsonArray(loaded.Warnings.Select(p => (JsonNode?)p.ToString()).ToArray());
                    notes.Add($"{name}: warning: {loaded.WarningCount} record{(loaded.WarningCount == 1 ? "" : "s")} to look at (first: {loaded.Warnings[0]})");
                }
                task.Increment(1);
            }
        }
        ConversationFile.Write(new RegisterOutput(ctx.OutputDirectory).Conversations, all);
        var doc = new JsonObject { ["registry"] = Path.GetFileName(registry.RegistryPath), ["samples"] = all.Count, ["dropped"] = dropped, ["datasets"] = report };
        File.WriteAllText(Path.Combine(ctx.OutputDirectory, "register.json"), doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        return new StageResult(new Dictionary<string, double>
        {
            ["samples"] = all.Count,
            ["dropped"] = dropped,
            ["datasets"] = datasets.Count,
        }, notes);
    });

    public static DatasetRegistry LoadRegistry(StageContext ctx) =>
        DatasetRegistry.Load(Path.Combine(ctx.Pipeline.Data.ResolveDatasetDir(ctx.PipelineDirectory), "dataset_info.json"));

    /// <summary>Data errors are the user's to fix: they surface as <see cref="PipelineUserException"/> with the located message.</summary>
    internal static T Guard<T>(Func<T> body)
    {
        try
        {
            return body();
        }
        catch (DatasetException e)
        {
            throw new PipelineUserException(e.Message, e);
        }
        catch (FineTune.Tokenizers.TokenizerFormatException e)
        {
            throw new PipelineUserException(e.Message, e);
        }
    }
}

/// <summary>What the register stage writes, as its reader (split) addresses it.</summary>
public sealed record RegisterOutput(string Directory)
{
    /// <summary>The normalised samples of every dataset, placeholders filled in.</summary>
    public string Conversations => Path.Combine(Directory, "conversations.jsonl");

    public static RegisterOutput Of(StageContext ctx) => new(ctx.UpstreamOutputs[StageKind.Register]);
}
