using System.Text.Json.Nodes;
using FineTune.Models;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline;

/// <summary>
/// export: deployable files from the merged model. <c>hf</c> → <c>hf/</c>, safetensors shards of at most
/// export_size GB with model.safetensors.index.json, plus config and tokenizer files; <c>gguf</c> →
/// <c>gguf/model-&lt;type&gt;.gguf</c> (F16, BF16 or Q8_0, tokenizer embedded) and an Ollama
/// <c>gguf/Modelfile</c> (<c>ollama create &lt;name&gt; -f Modelfile</c>).
/// </summary>
public sealed class ExportStage : IStageExecutor
{
    /// <summary>Reads the merged model; writes the chat template into the Modelfile.</summary>
    public static StageDescription Description { get; } = new(StageKind.Export, [StageKind.Merge], s => s.Export,
        StageDescription.TemplateSetting, () => new ExportStage());

    public StageKind Kind => Description.Kind;

    public IReadOnlyList<string> ExternalInputs(StageContext ctx) => [];

    public StageResult Execute(StageContext ctx)
    {
        if (!ctx.UpstreamOutputs.TryGetValue(StageKind.Merge, out var modelDir))
            throw new PipelineUserException("stages.export needs the merge stage's model; add a stages.merge block.");
        var export = ctx.Pipeline.Stages.Export ?? new ExportConfig();
        var metrics = new Dictionary<string, double>();
        var notes = new List<string>();
        try
        {
            using var task = ctx.Progress.Start("export", export.Formats.Count);
            foreach (var format in export.Formats.Distinct())
            {
                ctx.Cancellation.ThrowIfCancellationRequested();
                if (format == ExportFormat.Hf)
                {
                    var hfDir = Path.Combine(ctx.OutputDirectory, "hf");
                    var result = LoraMerge.CopyModel(modelDir, hfDir, null, (long)export.ExportSize * 1_000_000_000L);
                    int shards = result.Files.Count(f => f.EndsWith(".safetensors", StringComparison.Ordinal));
                    metrics["hf_shards"] = shards;
                    notes.Add($"hf/: {shards} safetensors file(s) of at most {export.ExportSize} GB");
                }
                else
                {
                    var type = export.GgufType switch
                    {
                        GgufType.Bf16 => GgufTensorType.BF16,
                        GgufType.Q8_0 => GgufTensorType.Q8_0,
                        _ => GgufTensorType.F16,
                    };
                    var ggufDir = Directory.CreateDirectory(Path.Combine(ctx.OutputDirectory, "gguf")).FullName;
                    var fileName = $"model-{type.ToString().ToLowerInvariant()}.gguf";
                    var result = GgufExporter.Export(modelDir, Path.Combine(ggufDir, fileName), type, ctx.Pipeline.Name);
                    metrics["gguf_bytes"] = result.Bytes;
                    metrics["gguf_tensors"] = result.Tensors;
                    notes.AddRange(result.Notes);
                    var modelfile = OllamaModelfile.Build(fileName, ctx.Pipeline.Data.Template, GgufExporter.ChatTemplateOf(modelDir),
                        StopTokens(modelDir), export.System);
                    AtomicFile.WriteAllText(Path.Combine(ggufDir, "Modelfile"), modelfile);
                    notes.Add($"gguf/{fileName}: {result.Architecture}, {result.Tensors} tensors, {result.Bytes / (1024.0 * 1024.0):F1} MiB; run: ollama create {ctx.Pipeline.Name} -f gguf/Modelfile");
                }
                task.Increment(1);
            }
        }
        catch (ModelFormatException e)
        {
            throw new PipelineUserException(e.Message, e);
        }
        return new StageResult(metrics, notes);
    }

    /// <summary>The end-of-sequence tokens of generation_config.json and tokenizer_config.json, as text.</summary>
    private static IReadOnlyList<string> StopTokens(string modelDir)
    {
        var stops = new List<string>();
        var tokPath = Path.Combine(modelDir, "tokenizer.json");
        var tok = File.Exists(tokPath) ? HfTokenizerFile.Load(tokPath) : null;
        var tcPath = Path.Combine(modelDir, "tokenizer_config.json");
        if (File.Exists(tcPath) && JsonNode.Parse(File.ReadAllText(tcPath)) is JsonObject tc && tc["eos_token"] is JsonValue eos && eos.TryGetValue<string>(out var e))
            stops.Add(e);
        var genPath = Path.Combine(modelDir, "generation_config.json");
        if (tok is not null && File.Exists(genPath) && JsonNode.Parse(File.ReadAllText(genPath)) is JsonObject gen)
        {
            var ids = gen["eos_token_id"] switch
            {
                JsonArray a => a.Select(x => x!.GetValue<int>()).ToArray(),
                JsonValue v => [v.GetValue<int>()],
                _ => [],
            };
            foreach (var id in ids)
                if (id >= 0 && id < tok.Tokens.Count && tok.Tokens[id] is { } t && !stops.Contains(t.Content))
                    stops.Add(t.Content);
        }
        return stops;
    }
}
