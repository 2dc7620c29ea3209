using System.Text.Json.Nodes;
using FineTune.Data.Templates;
using FineTune.Models;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline;

/// <summary>
/// export: deployable files from the merged model. <c>hf</c> → <c>hf/</c>, safetensors shards of at most
/// export_size GB with model.safetensors.index.json, plus config and tokenizer files; <c>gguf</c> →
/// <c>gguf/model-&lt;type&gt;.gguf</c> for each gguf_type (float types, Q8_0, Q4_0/Q5_0 and llama-quantize's K-quant
/// mixes; tokenizer embedded) and an Ollama Modelfile for each, its TEMPLATE derived from the pipeline's chat template
/// (<see cref="OllamaTemplate"/>); the notes say the <c>ollama create &lt;name&gt; -f …/Modelfile</c> line.
/// </summary>
public sealed class ExportStage : IStageExecutor
{
    /// <summary>Reads the merged model; writes the chat template into the Modelfile.</summary>
    public static StageDescription Description { get; } = new(StageKind.Export, [StageKind.Merge], typeof(ExportConfig),
        StageDescription.TemplateSetting, () => new ExportStage());

    public StageKind Kind => Description.Kind;

    public IReadOnlyList<string> ExternalInputs(StageContext ctx) => [];

    public StageResult Execute(StageContext ctx)
    {
        if (!ctx.UpstreamOutputs.TryGetValue(StageKind.Merge, out var modelDir))
            throw new PipelineUserException("stages.export needs the merge stage's model; add a stages.merge block.");
        var export = ctx.Block<ExportConfig>();
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
                    ExportGguf(ctx, modelDir, export, metrics, notes);
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

    /// <summary>
    /// One GGUF per requested type, <c>gguf/model-&lt;type&gt;.gguf</c>, each with its Modelfile: <c>gguf/Modelfile</c> for a
    /// single type (metrics gguf_bytes, gguf_tensors), <c>gguf/Modelfile-&lt;type&gt;</c> for several (metrics suffixed
    /// with the type), created in Ollama as <c>name:&lt;type&gt;</c>.
    /// </summary>
    private static void ExportGguf(StageContext ctx, string modelDir, ExportConfig export, Dictionary<string, double> metrics, List<string> notes)
    {
        var types = export.GgufTypes.Distinct().ToArray();
        var ggufDir = Directory.CreateDirectory(Path.Combine(ctx.OutputDirectory, "gguf")).FullName;
        var (bos, eos) = SpecialTokens(modelDir);
        var templateName = ctx.Pipeline.Data.Template ?? TemplateNameOf(GgufExporter.ChatTemplateOf(modelDir));
        if (ctx.Pipeline.Data.Template is null)
            notes.Add($"data.template is not set: the Modelfile's TEMPLATE is FineTune's {templateName} template, recognised from the model's chat template");
        var chat = ChatTemplate.Get(templateName);
        var goTemplate = OllamaTemplate.GoTemplate(chat, bos, eos);
        var stops = OllamaTemplate.Stops(chat, eos).Concat(StopTokens(modelDir)).ToArray();
        var system = export.System ?? (chat.DefaultSystem.Length > 0 ? chat.DefaultSystem : null);
        foreach (var type in types)
        {
            ctx.Cancellation.ThrowIfCancellationRequested();
            var name = ConfigModel.EnumName(type);
            var fileName = $"model-{name}.gguf";
            var single = types.Length == 1;
            var modelfileName = single ? "Modelfile" : $"Modelfile-{name}";
            var suffix = single ? "" : "_" + name;
            var result = GgufExporter.Export(modelDir, Path.Combine(ggufDir, fileName), FileTypeOf(type), ctx.Pipeline.Name);
            metrics["gguf_bytes" + suffix] = result.Bytes;
            metrics["gguf_tensors" + suffix] = result.Tensors;
            notes.AddRange(result.Notes);
            var modelfile = OllamaModelfile.Build(fileName, goTemplate, stops, system);
            AtomicFile.WriteAllText(Path.Combine(ggufDir, modelfileName), modelfile);
            var tag = single ? ctx.Pipeline.Name : $"{ctx.Pipeline.Name}:{name}";
            notes.Add($"gguf/{fileName}: {result.Architecture}, {result.Tensors} tensors ({TypeCounts(result)}), {result.Bytes / (1024.0 * 1024.0):F1} MiB; run: ollama create {tag} -f \"$(finetune path \"{ctx.PipelineDirectory}\" --stage export)/gguf/{modelfileName}\"");
        }
    }

    private static string TypeCounts(GgufExportResult r) =>
        string.Join(", ", r.TensorTypes.OrderByDescending(t => t.Value).ThenBy(t => t.Key).Select(t => $"{t.Value} {t.Key}"));

    /// <summary>The YAML's gguf_type as llama.cpp's file type.</summary>
    public static GgufFileType FileTypeOf(GgufType type) => type switch
    {
        GgufType.F32 => GgufFileType.F32,
        GgufType.F16 => GgufFileType.F16,
        GgufType.Bf16 => GgufFileType.BF16,
        GgufType.Q8_0 => GgufFileType.Q8_0,
        GgufType.Q6_K => GgufFileType.Q6_K,
        GgufType.Q5_K_M => GgufFileType.Q5_K_M,
        GgufType.Q5_K_S => GgufFileType.Q5_K_S,
        GgufType.Q4_K_M => GgufFileType.Q4_K_M,
        GgufType.Q4_K_S => GgufFileType.Q4_K_S,
        GgufType.Q5_0 => GgufFileType.Q5_0,
        GgufType.Q4_0 => GgufFileType.Q4_0,
        GgufType.Q3_K_M => GgufFileType.Q3_K_M,
        GgufType.Q2_K => GgufFileType.Q2_K,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };

    /// <summary>The FineTune template of a model that the pipeline does not name one for, from its Jinja template's markers.</summary>
    private static string TemplateNameOf(string? jinja) => jinja switch
    {
        null => "default",
        _ when jinja.Contains("<|im_sep|>", StringComparison.Ordinal) => "phi4",
        _ when jinja.Contains("<|im_start|>", StringComparison.Ordinal) => jinja.Contains("<think>", StringComparison.Ordinal) ? "qwen3" : "chatml",
        _ when jinja.Contains("<start_of_turn>", StringComparison.Ordinal) => "gemma",
        _ when jinja.Contains("<|start_header_id|>", StringComparison.Ordinal) => "llama3",
        _ when jinja.Contains("<<SYS>>", StringComparison.Ordinal) => "llama2",
        _ when jinja.Contains("[INST]", StringComparison.Ordinal) => "mistral",
        _ => "default",
    };

    /// <summary>BOS and EOS as text (tokenizer_config.json's bos_token / eos_token, a string or an AddedToken object).</summary>
    private static (string? Bos, string? Eos) SpecialTokens(string modelDir)
    {
        var tcPath = Path.Combine(modelDir, "tokenizer_config.json");
        if (!File.Exists(tcPath) || JsonNode.Parse(File.ReadAllText(tcPath)) is not JsonObject tc)
            return (null, null);
        static string? Text(JsonNode? n) => n switch
        {
            JsonValue v when v.TryGetValue<string>(out var s) => s,
            JsonObject o => o["content"]?.GetValue<string>(),
            _ => null,
        };
        return (Text(tc["bos_token"]), Text(tc["eos_token"]));
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
