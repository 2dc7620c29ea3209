using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using FineTune.Data.Templates;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Import;

/// <summary>An argument the import could not carry, reported once: ignored (no effect in FineTune) or unsupported.</summary>
public sealed record ImportNote(string Key, KeyFate Fate, string Why, int Line)
{
    public override string ToString() => $"{(Fate == KeyFate.Ignored ? "ignored" : "unsupported"),-11} {Key} (line {Line}): {Why}";
}

/// <summary>A LLaMA-Factory config turned into a FineTune pipeline: its text, the pipeline loaded from that text, the notes.</summary>
public sealed record ImportedPipeline(string Yaml, LoadedPipeline Pipeline, IReadOnlyList<ImportNote> Notes);

/// <summary>
/// Maps a LLaMA-Factory training config onto a FineTune pipeline (download → register → split → train [→ eval]
/// [→ merge → export]) by <see cref="LlamaFactoryKeys"/>, every carried value kept as written. Paths resolve as
/// LLaMA-Factory resolves them, relative to the directory the command ran in (<c>baseDirectory</c>), and are written
/// relative to the pipeline file. The pipeline is validated by the real loader before anything is written; its errors
/// are located at the argument in the source file that produced the value.
/// </summary>
public static partial class LlamaFactoryImport
{
    /// <param name="sourceFile">The LLaMA-Factory YAML/JSON config or command text.</param>
    /// <param name="baseDirectory">Where LLaMA-Factory would have run: relative model and dataset paths start here.</param>
    /// <param name="pipelineFile">The pipeline.yaml to be (its directory anchors the relative paths written).</param>
    /// <param name="schemaFile">The pipeline JSON Schema, for the editor comment line; null leaves the line out.</param>
    /// <param name="overrides">Command-line overrides applied over the imported pipeline (FineTune paths).</param>
    public static ImportedPipeline Import(string sourceFile, string baseDirectory, string pipelineFile, string? schemaFile = null, IReadOnlyList<string>? overrides = null)
    {
        sourceFile = Path.GetFullPath(sourceFile);
        var args = LlamaFactoryArguments.Read(sourceFile);
        return Import(args, sourceFile, baseDirectory, pipelineFile, schemaFile, overrides);
    }

    public static ImportedPipeline Import(IReadOnlyList<LlamaFactoryArgument> args, string sourceFile, string baseDirectory, string pipelineFile, string? schemaFile,
        IReadOnlyList<string>? overrides = null)
    {
        var mapping = new Mapping(args, sourceFile, Path.GetFullPath(baseDirectory), Path.GetFullPath(pipelineFile));
        mapping.Run();
        if (mapping.Errors.Count > 0)
            throw new PipelineValidationException(mapping.Errors.OrderBy(e => e.Line).ToArray());
        var yaml = mapping.Render(schemaFile);
        LoadedPipeline loaded;
        try
        {
            loaded = PipelineLoader.Parse(yaml, pipelineFile, overrides);
        }
        catch (PipelineValidationException e)
        {
            throw new PipelineValidationException(e.Errors.Select(x => x.Line == 0 ? x : mapping.Locate(x)).ToArray());
        }
        return new ImportedPipeline(yaml, loaded, mapping.Notes);
    }

    /// <summary>A pipeline name from the config's file name (llama3_lora_sft.yaml → llama3_lora_sft).</summary>
    public static string PipelineName(string sourceFile)
    {
        var name = InvalidNameChars().Replace(Path.GetFileNameWithoutExtension(sourceFile), "-").Trim('-', '.', '_');
        return name.Length == 0 ? "imported" : name;
    }

    [GeneratedRegex("[^A-Za-z0-9._-]+")]
    private static partial Regex InvalidNameChars();

    [GeneratedRegex(@"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")]
    private static partial Regex HubId();

    // YAML's indicators (@, -, ?, … at the start) need quotes; a leading - is safe before a non-space (-1).
    [GeneratedRegex(@"^(?:[A-Za-z0-9_./]|-(?=\S))[A-Za-z0-9_.@/+:=-]*$")]
    private static partial Regex PlainScalar();

    /// <summary>A value as YAML: plain where it is safe, else double-quoted (JSON's escapes are YAML's).</summary>
    public static string Scalar(string text) => PlainScalar().IsMatch(text) && !text.EndsWith(':') ? text : JsonSerializer.Serialize(text);

    private static string FlowList(IEnumerable<string> items) => "[" + string.Join(", ", items.Select(Scalar)) + "]";

    /// <summary>The FineTune key a target names (<c>stages.train.plot_loss</c> → TrainConfig's PlotLoss), or null.</summary>
    internal static ConfigKey? TargetKey(string target)
    {
        var dot = target.LastIndexOf('.');
        if (dot < 0) return null;
        Type? type = target[..dot] switch
        {
            "model" => typeof(ModelSection),
            "data" => typeof(DataSection),
            var b when b.StartsWith("stages.", StringComparison.Ordinal) && StageGraph.TryParse(b[7..], out var kind) => StageTable.Of(kind).Block,
            _ => null,
        };
        return type is null ? null : ConfigModel.Keys(type).FirstOrDefault(k => k.Name == target[(dot + 1)..]);
    }

    /// <summary>Python's and YAML 1.1's spellings of a boolean (what LLaMA-Factory accepts) as true/false, else null.</summary>
    internal static string? Boolean(string? text) => text?.ToLowerInvariant() switch
    {
        "true" or "yes" or "y" or "t" or "on" or "1" => "true",
        "false" or "no" or "n" or "f" or "off" or "0" => "false",
        _ => null,
    };

    private sealed class Mapping(IReadOnlyList<LlamaFactoryArgument> args, string sourceFile, string baseDir, string pipelineFile)
    {
        private static readonly string[] BlockOrder =
            ["model", "data", "stages.download", "stages.register", "stages.split", "stages.train", "stages.eval", "stages.merge", "stages.export"];

        private readonly Dictionary<string, List<(string Key, string Yaml)>> _blocks = BlockOrder.ToDictionary(b => b, _ => new List<(string, string)>());
        private readonly HashSet<string> _present = new(StringComparer.Ordinal) { "model", "data", "stages.download", "stages.register", "stages.split", "stages.train" };
        private readonly Dictionary<string, LlamaFactoryArgument> _origin = new(StringComparer.Ordinal);
        private readonly Dictionary<string, LlamaFactoryArgument> _args = args.ToDictionary(a => a.Key, StringComparer.Ordinal);
        private readonly string _pipelineDir = Path.GetDirectoryName(pipelineFile)!;

        public List<PipelineError> Errors { get; } = [];
        public List<ImportNote> Notes { get; } = [];

        private LlamaFactoryArgument? Arg(string key) => _args.GetValueOrDefault(key);
        private string? Text(string key) => Arg(key)?.Text;
        private bool Flag(string key) => Boolean(Text(key)) == "true";

        private void Error(LlamaFactoryArgument a, string message) =>
            Errors.Add(new PipelineError(sourceFile, a.Line, a.Column, a.Key, message));

        private void Note(LlamaFactoryArgument a, KeyFate fate, string why) => Notes.Add(new ImportNote(a.Key, fate, why, a.Line));

        private void Set(string target, string yaml, LlamaFactoryArgument? from)
        {
            var dot = target.LastIndexOf('.');
            var (block, key) = (target[..dot], target[(dot + 1)..]);
            var entries = _blocks[block];
            entries.RemoveAll(e => e.Key == key);
            entries.Add((key, yaml));
            _present.Add(block);
            if (from is not null) _origin["$." + target] = from;
        }

        public void Run()
        {
            if (Arg("do_train") is { } doTrain && Boolean(doTrain.Text) == "false")
                Error(doTrain, "do_train: false — FineTune imports training configs (a pipeline without training is not supported)");
            Model();
            Datasets();
            Objective();
            DeepSpeed();
            Evaluation();
            Export();
            var handled = new HashSet<string>(StringComparer.Ordinal)
            {
                "model_name_or_path", "model_revision", "dataset", "dataset_dir", "template", "stage", "finetuning_type", "seed",
                "disable_gradient_checkpointing", "optim", "do_train", "do_eval", "do_predict", "eval_strategy", "evaluation_strategy",
                "eval_steps", "export_dir", "infer_dtype", "deepspeed",
            };
            foreach (var a in args)
            {
                if (handled.Contains(a.Key) || _origin.Values.Contains(a)) continue;
                var key = LlamaFactoryKeys.Find(a.Key);
                if (key is null)
                {
                    var suggestion = DidYouMean.Suggest(a.Key, LlamaFactoryKeys.All.Select(k => k.Name));
                    if (suggestion is not null) Error(a, $"unknown argument '{a.Key}'; did you mean '{suggestion}'?");
                    else Note(a, KeyFate.Unsupported, "not an argument FineTune knows (LLaMA-Factory documents no such key)");
                    continue;
                }
                if (key.Fate != KeyFate.Carried) { Note(a, key.Fate, key.Why!); continue; }
                if (a.Key == "report_to" && a.Text is { } tracker && tracker is not ("none" or "tensorboard" or "mlflow" or "all"))
                {
                    Note(a, KeyFate.Ignored, $"FineTune reports to tensorboard and mlflow only, not '{tracker}'; trainer_log.jsonl and training_loss.svg are always written");
                    continue;
                }
                if (key.Target!.StartsWith("stages.eval.", StringComparison.Ordinal) && !_present.Contains("stages.eval"))
                {
                    Note(a, KeyFate.Ignored, "no evaluation in this config: FineTune's eval stage comes with val_size > 0 and do_eval, do_predict or eval_strategy");
                    continue;
                }
                Carry(a, key.Target);
            }
        }

        /// <summary>Writes the argument's value to its target, as written (booleans in FineTune's spelling, lists as lists).</summary>
        private void Carry(LlamaFactoryArgument a, string target, string? yaml = null)
        {
            if (a.IsMapping) { Error(a, $"expected a value, got a mapping (FineTune's {target} takes one)"); return; }
            if (a.Value is null && a.Items is null) return; // null: LLaMA-Factory's default, which is FineTune's
            var key = TargetKey(target);
            if (yaml is null)
            {
                if (key?.Kind == ValueKind.Boolean) yaml = Boolean(a.Text) ?? Scalar(a.Text!);
                else if (a.Items is not null) yaml = FlowList(a.Items);
                else yaml = Scalar(a.Value!);
            }
            Set(target, yaml, a);
        }

        private void Model()
        {
            if (Arg("model_name_or_path") is not { Text: { } source } model)
            {
                Errors.Add(new PipelineError(sourceFile, 1, 1, "model_name_or_path", "missing model_name_or_path (a hub id such as Qwen/Qwen3-0.6B, or a model directory)"));
                return;
            }
            var local = Path.GetFullPath(Path.Combine(baseDir, source));
            if (source.StartsWith("hf://", StringComparison.Ordinal))
                Set("model.source", Scalar(source), model);
            else if (Directory.Exists(local))
            {
                var relative = Path.GetRelativePath(_pipelineDir, local).Replace('\\', '/');
                Set("model.source", Scalar(relative.StartsWith('.') || Path.IsPathRooted(relative) ? relative : "./" + relative), model);
            }
            else if (HubId().IsMatch(source))
                Set("model.source", Scalar("hf://" + source), model);
            else
            {
                Error(model, $"'{source}' is neither a model directory (relative to {baseDir}, where LLaMA-Factory would run) nor a hub id (org/name); pass --base-dir or fix the path");
                return;
            }
            if (Arg("model_revision") is { Text: { } revision } rev && revision != "main")
            {
                if (source.StartsWith("hf://", StringComparison.Ordinal) || !Directory.Exists(local)) Set("stages.download.revision", Scalar(revision), rev);
                else Note(rev, KeyFate.Ignored, "the model is a local directory");
            }
        }

        private void Datasets()
        {
            if (Arg("dataset") is { } dataset)
            {
                var names = (dataset.Items ?? dataset.Value?.Split(',') ?? []).Select(n => n.Trim()).Where(n => n.Length > 0).ToArray();
                if (dataset.IsMapping || names.Length == 0) Error(dataset, "expected dataset names (a comma-separated string or a list)");
                else Set("data.dataset", FlowList(names), dataset);
            }
            else
                Errors.Add(new PipelineError(sourceFile, 1, 1, "dataset", "missing dataset (names in dataset_info.json); FineTune trains on registered datasets"));

            if (Arg("template") is { Text: { } template } t)
            {
                if (ChatTemplate.Names.Contains(template)) Set("data.template", Scalar(template), t);
                else Error(t, $"template '{template}' has no FineTune chat template yet; FineTune has {string.Join(", ", ChatTemplate.Names)}");
            }

            // LLaMA-Factory's dataset_dir defaults to "data" where it runs; FineTune's to the nearest data/ above the pipeline.
            var dirArg = Arg("dataset_dir");
            var dir = dirArg?.Text ?? "data";
            if (dir == "ONLINE" || dir.StartsWith("REMOTE:", StringComparison.Ordinal))
            {
                Note(dirArg!, KeyFate.Unsupported, "datasets from the hub (FineTune reads a local dataset_info.json)");
                return;
            }
            var full = Path.GetFullPath(Path.Combine(baseDir, dir));
            if (dirArg is null && !File.Exists(Path.Combine(full, "dataset_info.json")))
                return; // no data/ where LLaMA-Factory would look: FineTune's own lookup finds the registry (or says it cannot)
            Set("data.dataset_dir", Scalar(Path.GetRelativePath(_pipelineDir, full).Replace('\\', '/')), dirArg);

        }

        private void Objective()
        {
            if (Arg("stage") is { Text: { } stage } s)
            {
                if (stage == "ppo") Error(s, "stage: ppo is unsupported in FineTune (PPO: generation in the training loop); pt, sft, dpo, kto and rm are");
                else Carry(s, "stages.train.stage");
            }
            if (Arg("finetuning_type") is { Text: { } type } f)
            {
                if (type == "oft") Error(f, "finetuning_type: oft is unsupported in FineTune (OFT adapters); lora, freeze and full are");
                else Carry(f, "stages.train.finetuning_type");
            }
            // LLaMA-Factory's seed is the trainer's and the split's (train_test_split(seed=training_args.seed)).
            if (Arg("seed") is { Text: not null } seed)
            {
                Carry(seed, "stages.train.seed");
                Carry(seed, "stages.split.seed");
                _origin["$.stages.train.seed"] = seed;
            }
            if (Arg("disable_gradient_checkpointing") is { Text: { } disable } d)
                Set("stages.train.gradient_checkpointing", Boolean(disable) is { } b ? (b == "true" ? "false" : "true") : Scalar(disable), d);
            if (Arg("optim") is { Text: { } optim } o)
            {
                // bitsandbytes' 8-bit AdamW states are FineTune's optim too; the torch AdamW variants are its default.
                if (optim is "adamw_8bit" or "paged_adamw_8bit" or "adamw_bnb_8bit") Set("stages.train.optim", optim == "adamw_bnb_8bit" ? "adamw_8bit" : optim, o);
                else if (!LlamaFactoryKeys.AdamW.Contains(optim))
                    Note(o, KeyFate.Unsupported, $"the optimizer {optim} (FineTune trains with AdamW: adamw_torch, adamw_8bit, paged_adamw_8bit)");
            }
        }

        /// <summary>
        /// deepspeed names a DeepSpeed JSON config; FineTune takes its ZeRO stage (zero_optimization.stage) as
        /// stages.train.zero_stage, read from the file where it exists (beside the config or under --base-dir), else from
        /// the name of LLaMA-Factory's examples (examples/deepspeed/ds_z3_config.json, ds_z3_offload_config.json, …).
        /// </summary>
        private void DeepSpeed()
        {
            if (Arg("deepspeed") is not { Text: { } file } d) return;
            int? stage = null;
            bool offload = false;
            var path = new[] { Path.Combine(Path.GetDirectoryName(Path.GetFullPath(sourceFile))!, file), Path.Combine(baseDir, file) }.FirstOrDefault(File.Exists);
            if (path is not null)
            {
                try
                {
                    var zero = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))?["zero_optimization"];
                    stage = zero?["stage"]?.GetValue<int>();
                    offload = zero?["offload_optimizer"] is not null || zero?["offload_param"] is not null;
                }
                catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
                {
                    Error(d, $"deepspeed: {path} is not a DeepSpeed JSON config FineTune can read ({e.Message}); set stages.train.zero_stage instead");
                    return;
                }
            }
            else if (Regex.Match(Path.GetFileName(file), @"^ds_z([0-3])(_offload)?_config\.json$") is { Success: true } m)
                (stage, offload) = (m.Groups[1].Value[0] - '0', m.Groups[2].Success);
            if (stage is not (>= 0 and <= 3))
            {
                Note(d, KeyFate.Unsupported, $"the DeepSpeed config {file}: no ZeRO stage 0–3 found (the file is not here and its name is not ds_z<N>_config.json); set stages.train.zero_stage");
                return;
            }
            if (offload) Note(d, KeyFate.Unsupported, $"ZeRO offload to the CPU (zero_stage: {stage} is carried; every shard stays on its GPU)");
            Set("stages.train.zero_stage", stage.Value.ToString(CultureInfo.InvariantCulture), d);
        }

        private void Evaluation()
        {
            var valSize = double.TryParse(Text("val_size"), NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v : 0;
            var strategyArg = Arg("eval_strategy") ?? Arg("evaluation_strategy");
            var strategy = strategyArg?.Text ?? "no";
            var wanted = Flag("do_eval") || Flag("do_predict") || Flag("predict_with_generate") || strategy is "steps" or "epoch";
            if (valSize > 0 && wanted) _present.Add("stages.eval");
            if (strategy == "epoch" && strategyArg is not null)
                Note(strategyArg, KeyFate.Unsupported, "evaluating every epoch (FineTune evaluates every eval_steps and in the eval stage)");
            var steps = Arg("eval_steps");
            if (valSize <= 0)
            {
                if (wanted && (Arg("do_eval") ?? Arg("do_predict") ?? strategyArg) is { } asked)
                    Note(asked, KeyFate.Ignored, "no validation split (val_size is 0), so nothing to evaluate on");
                if (steps is not null) Note(steps, KeyFate.Ignored, "no validation split (val_size is 0)");
                return;
            }
            if (strategy == "no")
            {
                if (steps is not null) Note(steps, KeyFate.Ignored, "eval_strategy is no (Hugging Face's default)");
                return;
            }
            if (strategy != "steps") return;
            // Hugging Face: eval_steps defaults to logging_steps (itself 500 by default).
            if (steps is { Text: not null }) Carry(steps, "stages.train.eval_steps");
            else Set("stages.train.eval_steps", Scalar(Text("logging_steps") ?? "500"), Arg("logging_steps") ?? strategyArg);
        }

        private void Export()
        {
            if (Arg("export_dir") is not { Text: not null } exportDir)
            {
                if (Arg("infer_dtype") is { } dtype) Note(dtype, KeyFate.Ignored, "no export_dir: nothing is merged");
                return;
            }
            Note(exportDir, KeyFate.Ignored, "the merged model goes to the export stage's output; `finetune path PIPELINE --stage export` prints it");
            _present.Add("stages.merge");
            Set("stages.export.formats", "[hf]", exportDir);
            if (Arg("infer_dtype") is { } infer) Carry(infer, "stages.merge.export_dtype");
        }

        public string Render(string? schemaFile)
        {
            var sb = new StringBuilder();
            if (schemaFile is not null)
                sb.Append("# yaml-language-server: $schema=").Append(Path.GetRelativePath(_pipelineDir, schemaFile).Replace('\\', '/')).Append('\n');
            sb.Append("# Imported from ").Append(Path.GetFileName(sourceFile)).Append(" (LLaMA-Factory) by `finetune import llamafactory`.\n");
            sb.Append("name: ").Append(Scalar(PipelineName(sourceFile))).Append('\n');
            var inStages = false;
            foreach (var block in BlockOrder.Where(_present.Contains))
            {
                var entries = _blocks[block];
                var isStage = block.StartsWith("stages.", StringComparison.Ordinal);
                if (isStage && !inStages) { sb.Append("\nstages:\n"); inStages = true; }
                var indent = isStage ? "    " : "  ";
                var name = isStage ? block[7..] : block;
                if (!isStage) sb.Append('\n');
                sb.Append(isStage ? "  " : "").Append(name).Append(':');
                if (entries.Count == 0) { sb.Append(" {}\n"); continue; }
                sb.Append('\n');
                foreach (var (key, yaml) in entries)
                    sb.Append(indent).Append(key).Append(": ").Append(yaml).Append('\n');
            }
            return sb.ToString();
        }

        /// <summary>An error of the written pipeline, moved to the source argument that produced the value.</summary>
        public PipelineError Locate(PipelineError e)
        {
            for (var p = e.JsonPath; ; p = p[..p.LastIndexOfAny(['.', '['])])
            {
                if (_origin.TryGetValue(p, out var a))
                    return new PipelineError(sourceFile, a.Line, a.Column, a.Key, $"{e.Message} (as FineTune's {e.JsonPath[2..]})");
                if (!p.Contains('.') && !p.Contains('[')) break;
            }
            return new PipelineError(sourceFile, 1, 1, "$", $"{e.Message} (in the imported pipeline's {e.JsonPath})");
        }
    }
}
