using System.Text.Json.Nodes;
using FineTune.Models;
using FineTune.Models.Hub;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline;

/// <summary>
/// download: the base model as a Hugging Face model directory in the cache, from one of
/// <c>scratch</c> (generated from model.scratch), a local directory (copied), or <c>hf://org/name[@rev]</c>
/// (downloaded). A hub model's fingerprint input is its snapshot manifest (resolved commit + every file's
/// size and hash), so a branch that moves re-runs the stage and a pinned commit never does. The output's files are
/// hard links to the store's blobs, so a rebuild (after the cached output was edited in place) re-checks every blob
/// against the listed hash and fetches a changed one again rather than linking it back.
/// </summary>
public sealed class DownloadStage(Func<string, string?>? environment = null, HttpMessageHandler? httpHandler = null) : IStageExecutor
{
    /// <summary>Reads no stage; its fingerprint covers where the model comes from (a local directory by content, see ExternalInputs).</summary>
    public static StageDescription Description { get; } = new(StageKind.Download, [], typeof(DownloadConfig),
        (p, _) => new()
    {
        ["model"] = new JsonObject
        {
            ["source"] = p.Model.IsScratch || p.Model.IsHub ? p.Model.Source : "local",
            ["scratch"] = p.Model.Scratch is null ? null : Engine.CanonicalJson.FromRecord(p.Model.Scratch),
        },
    }, () => new DownloadStage());

    public StageKind Kind => Description.Kind;

    public IReadOnlyList<string> ExternalInputs(StageContext ctx)
    {
        var model = ctx.Pipeline.Model;
        if (model.IsScratch)
            return model.Scratch?.Tokenizer is { } tok ? [ctx.ResolvePath(tok)] : [];
        if (model.IsHub)
        {
            var reference = Reference(ctx);
            using var client = new HubClient(HubOptions.FromEnvironment(environment), httpHandler);
            var store = Store(ctx);
            var snapshot = Run(() => client.SnapshotAsync(reference, store, ctx.Cancellation).GetAwaiter().GetResult(), reference.ToString());
            return [store.SnapshotManifestPath(snapshot.RepoId, snapshot.Commit)];
        }
        var dir = LocalDirectory(ctx);
        var include = GlobPattern.Matcher(ctx.Block<DownloadConfig>().AllowPatterns);
        return Directory.GetFiles(dir).Where(f => include(Path.GetFileName(f))).Order(StringComparer.Ordinal).ToArray();
    }

    public StageResult Execute(StageContext ctx)
    {
        var model = ctx.Pipeline.Model;
        var notes = new List<string>();
        if (model.IsScratch)
        {
            var spec = ScratchSpec(ctx);
            Run(() => ScratchModel.Generate(spec, ctx.OutputDirectory), "model.scratch");
            notes.Add($"generated a {spec.Architecture.ToString().ToLowerInvariant()} model: {spec.NumHiddenLayers} layers, hidden {spec.HiddenSize}, seed {spec.Seed}");
        }
        else if (model.IsHub)
        {
            var reference = Reference(ctx);
            using var client = new HubClient(HubOptions.FromEnvironment(environment), httpHandler);
            var store = Store(ctx);
            // The snapshot ExternalInputs fingerprinted (recorded in the store), so a branch that moves
            // between fingerprinting and downloading cannot slip another commit in.
            var snapshot = Run(() => store.Load(reference.RepoId, reference.Revision), reference.ToString())
                ?? Run(() => client.SnapshotAsync(reference, store, ctx.Cancellation).GetAwaiter().GetResult(), reference.ToString());
            var include = GlobPattern.Matcher(ctx.Block<DownloadConfig>().AllowPatterns);
            var files = Run(() => HubClient.Select(snapshot, include), reference.ToString());
            using (var progress = new ByteProgress(ctx.Progress.Start($"download {reference}", files.Sum(f => f.Size ?? 0))))
                Run(() => { client.DownloadAsync(snapshot, store, ctx.OutputDirectory, include, progress, ctx.Cancellation).GetAwaiter().GetResult(); return 0; }, reference.ToString());
            notes.Add($"resolved {reference.Revision} → {snapshot.Commit}");
        }
        else
        {
            var dir = LocalDirectory(ctx);
            foreach (var file in ExternalInputs(ctx))
                File.Copy(file, Path.Combine(ctx.OutputDirectory, Path.GetFileName(file)));
            notes.Add($"copied {dir}");
        }
        return Describe(ctx.OutputDirectory, notes);
    }

    /// <summary>Checks that the output is a model FineTune can read and counts its parameters.</summary>
    private static StageResult Describe(string dir, List<string> notes)
    {
        var config = Run(() => ModelConfig.Load(dir), dir);
        long parameters = 0, bytes = 0;
        Run(() =>
        {
            using var weights = SafetensorsReader.Open(dir);
            foreach (var t in weights.Tensors.Values)
            {
                parameters += t.ElementCount;
                bytes += t.ByteLength;
            }
            return 0;
        }, dir);
        if (!File.Exists(Path.Combine(dir, "tokenizer.json")))
            notes.Add("warning: no tokenizer.json in the model directory; FineTune's tokenizer needs one (set model.scratch.tokenizer or add the file)");
        notes.Add($"{config.ModelType}: {parameters:N0} parameters, {bytes / (1024.0 * 1024.0):F1} MiB of weights");
        return new StageResult(new Dictionary<string, double>
        {
            ["parameters"] = parameters,
            ["weight_bytes"] = bytes,
            ["layers"] = config.NumHiddenLayers,
            ["vocab_size"] = config.VocabSize,
        }, notes);
    }

    private static HubModelReference Reference(StageContext ctx) =>
        Run(() => HubModelReference.Parse(ctx.Pipeline.Model.Source, ctx.Block<DownloadConfig>().Revision), "model.source");

    private static HubStore Store(StageContext ctx) => StoreIn(string.IsNullOrEmpty(ctx.WorkDirectory)
        ? Engine.StageCache.Beside(ctx.PipelineDirectory).WorkDirectory(ctx.Stage?.Name ?? Description.Name)
        : ctx.WorkDirectory);

    /// <summary>The hub store a download stage keeps in its work directory (blobs, snapshots, listings), also read by `validate`.</summary>
    public static HubStore StoreIn(string workDirectory) => new(Path.Combine(workDirectory, "hub"));

    private static string LocalDirectory(StageContext ctx)
    {
        var dir = ctx.ResolvePath(ctx.Pipeline.Model.Source);
        if (!Directory.Exists(dir))
            throw new PipelineUserException($"model.source: \"{ctx.Pipeline.Model.Source}\" is neither 'scratch', an hf:// reference, nor an existing directory ({dir}).");
        if (!File.Exists(Path.Combine(dir, "config.json")))
            throw new PipelineUserException($"model.source: {dir} has no config.json; point it at a Hugging Face model directory.");
        return dir;
    }

    private static ScratchModelSpec ScratchSpec(StageContext ctx)
    {
        var s = ctx.Pipeline.Model.Scratch ?? new ScratchConfig();
        var gemmaKeys = new (string Key, object? Value)[]
        {
            ("sliding_window", s.SlidingWindow), ("layer_types", s.LayerTypes), ("query_pre_attn_scalar", s.QueryPreAttnScalar),
            ("attn_logit_softcapping", s.AttnLogitSoftcapping), ("final_logit_softcapping", s.FinalLogitSoftcapping), ("rope_local_base_freq", s.RopeLocalBaseFreq),
        };
        if (s.Architecture is not (ScratchArchitecture.Gemma2 or ScratchArchitecture.Gemma3Text) && gemmaKeys.FirstOrDefault(k => k.Value is not null) is { Key: { } key })
            throw new PipelineUserException($"model.scratch.{key}: {ConfigModel.EnumName(s.Architecture)} has no {key} (a gemma2 / gemma3_text key); remove it or set architecture: gemma2 or gemma3_text.");
        if (s.LayerTypes is { } lt && (lt.Count != s.NumHiddenLayers || lt.Any(t => t is not ("sliding_attention" or "full_attention"))))
            throw new PipelineUserException($"model.scratch.layer_types: give {s.NumHiddenLayers} entries (num_hidden_layers), each sliding_attention or full_attention.");
        // The scratch block's architecture is HF's model_type, the architecture table's key.
        var architecture = ModelArchitecture.Find(ConfigModel.EnumName(s.Architecture))
            ?? throw new PipelineUserException($"model.scratch.architecture: \"{ConfigModel.EnumName(s.Architecture)}\" is not in the architecture table; use one of {string.Join(", ", ModelArchitecture.All)}.");
        if (architecture.Experts is null && s.HasExpertKeys)
            throw new PipelineUserException($"model.scratch: num_experts, num_experts_per_tok and the other mixture-of-experts keys are for qwen3_moe and mixtral, not {architecture.ModelType}; remove them or set architecture: qwen3_moe.");
        var moe = s.ExpertsFor(architecture);
        if (moe is not null && moe.NumExpertsPerTok > moe.NumExperts)
            throw new PipelineUserException($"model.scratch.num_experts_per_tok: {moe.NumExpertsPerTok} is more than the {moe.NumExperts} experts; route each token to at most num_experts.");
        return new ScratchModelSpec
        {
            Architecture = architecture,
            Moe = moe,
            HiddenSize = s.HiddenSize,
            IntermediateSize = s.IntermediateSize,
            NumHiddenLayers = s.NumHiddenLayers,
            NumAttentionHeads = s.NumAttentionHeads,
            NumKeyValueHeads = s.NumKeyValueHeads,
            HeadDim = s.HeadDim,
            VocabSize = s.VocabSize,
            MaxPositionEmbeddings = s.MaxPositionEmbeddings,
            RopeTheta = s.RopeTheta,
            TieWordEmbeddings = s.TieWordEmbeddings,
            Seed = s.Seed,
            TokenizerPath = s.Tokenizer is null ? null : ctx.ResolvePath(s.Tokenizer),
            SlidingWindow = s.SlidingWindow,
            LayerTypes = s.LayerTypes,
            QueryPreAttnScalar = s.QueryPreAttnScalar,
            AttnLogitSoftcapping = s.AttnLogitSoftcapping,
            FinalLogitSoftcapping = s.FinalLogitSoftcapping,
            RopeLocalBaseFreq = s.RopeLocalBaseFreq,
        };
    }

    /// <summary>Turns the model layer's user errors into the pipeline's, prefixed with where they came from.</summary>
    private static T Run<T>(Func<T> action, string where)
    {
        try
        {
            return action();
        }
        catch (HubException e)
        {
            throw new PipelineUserException(e.Message, e);
        }
        catch (ModelFormatException e)
        {
            throw new PipelineUserException(e.Message, e);
        }
        catch (ArgumentException e)
        {
            throw new PipelineUserException($"{where}: {e.Message}", e);
        }
    }

    /// <summary>One progress bar for all files, advanced by the bytes each file gains (resumed bytes count at once).</summary>
    private sealed class ByteProgress(IProgressTask task) : IProgress<HubDownloadProgress>, IDisposable
    {
        private readonly Dictionary<string, long> _done = new(StringComparer.Ordinal);
        private readonly object _lock = new();

        public void Report(HubDownloadProgress value)
        {
            lock (_lock)
            {
                long last = _done.GetValueOrDefault(value.File);
                _done[value.File] = value.BytesDone;
                task.Increment(value.BytesDone - last);
            }
        }

        public void Dispose() => task.Dispose();
    }
}

/// <summary>What the download stage writes: an HF model directory (config.json, safetensors, tokenizer files).</summary>
public sealed record ModelOutput(string Directory)
{
    public static ModelOutput Of(StageContext ctx) => new(ctx.UpstreamOutputs[StageKind.Download]);

    /// <summary>The base model when the stage reads one; null otherwise.</summary>
    public static ModelOutput? Find(StageContext ctx) =>
        ctx.UpstreamOutputs.TryGetValue(StageKind.Download, out var dir) ? new(dir) : null;
}
