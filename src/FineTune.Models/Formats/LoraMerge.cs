using System.Numerics.Tensors;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace FineTune.Models;

/// <summary>What a merge did: how many weights received a LoRA update, which were replaced, the output type.</summary>
public sealed record LoraMergeResult(int MergedWeights, int ReplacedWeights, int Tensors, double Scale, SafetensorsDType? OutputDType, IReadOnlyList<string> Files);

/// <summary>
/// Folds a PEFT LoRA adapter into its base model, file to file: for every adapted linear
/// W' = W + s·B·A with s = lora_alpha / r (lora_alpha / √r with use_rslora; rank_pattern and alpha_pattern
/// override r and alpha per module as PEFT does), for an adapted embedding E' = E + s·(B·A)ᵀ, and
/// modules_to_save tensors replace the base tensors. The result is a complete HF model directory in the
/// base model's dtype (or <c>outputDType</c>): config.json, tokenizer and generation files copied, weights
/// streamed one tensor at a time (memory stays at the size of the largest tensor). PEFT's ParamWrapper on a MoE model
/// folds as PEFT does: the experts per expert (<see cref="AddExpertLoraDelta"/>), the router (gate.weight) as a linear.
/// </summary>
public static partial class LoraMerge
{
    /// <summary>Files of a model directory other than weights that a merged model keeps.</summary>
    public static readonly IReadOnlyList<string> CompanionFiles =
    [
        "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
    ];

    private const string Prefix = "base_model.model.";

    /// <summary>Copies a model directory (weights re-encoded when <paramref name="outputDType"/> is set): a merge without adapter.</summary>
    public static LoraMergeResult CopyModel(string modelDir, string outputDir, SafetensorsDType? outputDType = null, long maxShardBytes = 5L << 30) =>
        Merge(modelDir, null, outputDir, outputDType, maxShardBytes);

    /// <param name="quantizedBase">
    /// A QLoRA adapter's base: every decoder linear is folded as quantize→dequantize of the base weight (the values the
    /// adapter trained against) plus s·B·A.
    /// </param>
    public static LoraMergeResult Merge(string baseModelDir, string? adapterDir, string outputDir,
        SafetensorsDType? outputDType = null, long maxShardBytes = 5L << 30, Quantization.QuantizationSetup? quantizedBase = null)
    {
        var baseConfig = ModelConfig.Load(baseModelDir);
        using var baseWeights = SafetensorsReader.Open(baseModelDir);
        if (adapterDir is null)
            return Write(baseModelDir, baseConfig, baseWeights, null, "", new(), new(), null, outputDir, outputDType, maxShardBytes, quantizedBase);
        var adapter = AdapterConfig.Read(adapterDir);
        var adapterWeightsPath = Path.Combine(adapterDir, AdapterConfig.WeightsName);
        if (!File.Exists(adapterWeightsPath))
            throw new ModelFormatException(adapterWeightsPath, "adapter weights not found; a PEFT adapter directory holds adapter_model.safetensors next to adapter_config.json.");
        using var adapterWeights = SafetensorsReader.Open(adapterWeightsPath);

        // Sort the adapter's tensors into LoRA pairs per module and replacements.
        var pairs = new Dictionary<string, (string? A, string? B, bool Embedding)>(StringComparer.Ordinal);
        var replacements = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var name in adapterWeights.Tensors.Keys)
        {
            if (!name.StartsWith(Prefix, StringComparison.Ordinal))
                throw new ModelFormatException(adapterWeightsPath, $"tensor \"{name}\" does not start with \"{Prefix}\"; not a PEFT causal-LM adapter.");
            var inner = name[Prefix.Length..];
            var m = LoraName().Match(inner);
            if (m.Success)
            {
                var module = m.Groups["module"].Value;
                bool embedding = m.Groups["kind"].Value.StartsWith("lora_embedding", StringComparison.Ordinal);
                var entry = pairs.GetValueOrDefault(module);
                if (m.Groups["kind"].Value.EndsWith('A')) entry.A = name; else entry.B = name;
                entry.Embedding = embedding;
                pairs[module] = entry;
                continue;
            }
            // modules_to_save: PEFT saves the trained copy under the module's own name.
            var target = inner.Replace(".modules_to_save.default", "", StringComparison.Ordinal);
            if (!baseWeights.Contains(target))
                throw new ModelFormatException(adapterWeightsPath, $"tensor \"{name}\" replaces \"{target}\", which the base model {baseModelDir} does not have; the adapter was trained on another model.");
            replacements[target] = name;
        }

        var updates = new Dictionary<string, (string A, string B, bool Embedding, double Scale)>(StringComparer.Ordinal);
        var expertUpdates = new Dictionary<string, ExpertDelta>(StringComparer.Ordinal);
        foreach (var (module, (a, b, embedding)) in pairs)
        {
            if (a is null || b is null)
                throw new ModelFormatException(adapterWeightsPath, $"module \"{module}\" has {(a is null ? "lora_B but no lora_A" : "lora_A but no lora_B")}; the adapter file is incomplete.");
            if (adapter.TargetParameters.Count > 0 && ExpertParameterOf(module, adapter) is { } parameter)
            {
                AddExpertUpdates(baseConfig, baseWeights, adapterWeights, adapterWeightsPath, adapter, module, parameter, a, b, expertUpdates);
                continue;
            }
            var weightName = module + ".weight";
            // The router's ParamWrapper (target_parameters gate.weight) is named as transformers 5 names it: mixtral's mlp.gate is block_sparse_moe.gate in the hub files.
            bool router = adapter.TargetParameters.Contains(AdapterConfig.RouterParameter) && baseConfig.Architecture.Experts is { } layout
                && module.EndsWith("." + layout.Router, StringComparison.Ordinal);
            if (router && !baseWeights.Contains(weightName) && baseConfig.Architecture.Experts!.MoeModule is { } moeModule)
                weightName = module.Replace(".mlp.", $".{moeModule}.", StringComparison.Ordinal) + ".weight";
            if (!baseWeights.Contains(weightName))
                throw new ModelFormatException(adapterWeightsPath, $"tensor \"{a}\" adapts \"{weightName}\", which the base model {baseModelDir} does not have; the adapter was trained on another model.");
            var w = baseWeights.Get(weightName);
            var ai = adapterWeights.Get(a);
            var bi = adapterWeights.Get(b);
            int rank = (int)ai.Shape[0];
            // linear: A [r, in], B [out, r], W [out, in]; embedding: A [r, vocab], B [dim, r], E [vocab, dim]
            long rows = embedding ? w.Shape[1] : w.Shape[0], cols = embedding ? w.Shape[0] : w.Shape[1];
            if (w.Shape.Count != 2 || ai.Shape.Count != 2 || bi.Shape.Count != 2 || ai.Shape[1] != cols || bi.Shape[0] != rows || bi.Shape[1] != rank)
                throw new ModelFormatException(adapterWeightsPath, $"shapes do not fit: \"{a}\" [{string.Join(", ", ai.Shape)}], \"{b}\" [{string.Join(", ", bi.Shape)}], base \"{weightName}\" [{string.Join(", ", w.Shape)}]; the adapter was trained on another model.");
            // PEFT looks a ParamWrapper's rank and alpha up by its parameter's key ({mlp}.gate.weight), a module's by the module.
            string patternKey = router ? module + ".weight" : module;
            if (adapter.RankFor(patternKey) != rank)
                throw new ModelFormatException(adapter.FilePath, $"module \"{module}\": lora_A has rank {rank} but the config says r = {adapter.RankFor(patternKey)}; the adapter files do not belong together.");
            updates[weightName] = (a, b, embedding, adapter.ScaleFor(patternKey));
        }

        return Write(baseModelDir, baseConfig, baseWeights, adapterWeights, adapterWeightsPath, updates, replacements, adapter, outputDir, outputDType, maxShardBytes, quantizedBase, expertUpdates);
    }

    /// <summary>One expert's slice of an expert LoRA (PEFT's ParamWrapper on gate_up_proj or down_proj) to fold into its hub-layout tensor.</summary>
    private sealed record ExpertDelta(string A, string B, int Expert, int Experts, int Part, int Rank, float Scale);

    /// <summary>
    /// Which target_parameter a PEFT expert module holds: {…}.experts.base_layer is the inner wrapper (gate_up_proj, wrapped
    /// first) when both are targeted; {…}.experts is down_proj then, or the only one targeted. Null for any other module.
    /// </summary>
    private static string? ExpertParameterOf(string module, AdapterConfig adapter)
    {
        var experts = adapter.ExpertParameters;
        if (experts.Count == 0) return null;
        bool both = experts.Contains(ExpertBlock.PeftGateUp) && experts.Contains(ExpertBlock.PeftDown);
        if (module.EndsWith(".experts.base_layer", StringComparison.Ordinal)) return both ? ExpertBlock.PeftGateUp : null;
        if (!module.EndsWith(".experts", StringComparison.Ordinal)) return null;
        return both ? ExpertBlock.PeftDown : experts[0];
    }

    /// <summary>The per-expert hub tensors ({mlp}.experts.E.gate_proj.weight, …) an expert LoRA module updates, with their slices.</summary>
    private static void AddExpertUpdates(ModelConfig baseConfig, SafetensorsReader baseWeights, SafetensorsReader adapterWeights, string adapterWeightsPath,
        AdapterConfig adapter, string module, string parameter, string a, string b, Dictionary<string, ExpertDelta> expertUpdates)
    {
        var layout = baseConfig.Architecture.Experts ?? throw new ModelFormatException(adapter.FilePath,
            $"target_parameters names the experts' {parameter}, but the base model ({baseConfig.ModelType}) has no experts; the adapter was trained on another model.");
        int experts = baseConfig.Moe!.NumExperts;
        // transformers 5 names the block mlp; the hub files (mixtral) block_sparse_moe.
        string list = module.EndsWith(".base_layer", StringComparison.Ordinal) ? module[..^".base_layer".Length] : module;
        if (layout.MoeModule is { } moeModule) list = list.Replace(".mlp.", $".{moeModule}.", StringComparison.Ordinal);
        string[] leaves = parameter == ExpertBlock.PeftGateUp ? [layout.Gate, layout.Up] : [layout.Down];
        var ai = adapterWeights.Get(a);
        var bi = adapterWeights.Get(b);
        string fused = $"{module[..module.IndexOf(".experts", StringComparison.Ordinal)]}.experts.{parameter}";
        int rank = adapter.RankFor(fused);
        double scale = adapter.ScaleFor(fused);
        for (int part = 0; part < leaves.Length; part++)
            for (int e = 0; e < experts; e++)
            {
                string weightName = $"{list}.{e}.{leaves[part]}.weight";
                if (!baseWeights.Contains(weightName))
                    throw new ModelFormatException(adapterWeightsPath, $"tensor \"{a}\" adapts the experts' \"{weightName}\", which the base model does not have (FineTune merges into the hub's per-expert tensors); the adapter was trained on another model.");
                var w = baseWeights.Get(weightName);
                if (ai.Shape.Count != 2 || bi.Shape.Count != 2 || ai.Shape[0] != (long)rank * experts || ai.Shape[1] != w.Shape[1]
                    || bi.Shape[0] != leaves.Length * w.Shape[0] || bi.Shape[1] != (long)rank * experts)
                    throw new ModelFormatException(adapterWeightsPath, $"shapes do not fit: \"{a}\" [{string.Join(", ", ai.Shape)}], \"{b}\" [{string.Join(", ", bi.Shape)}] for {experts} experts of rank {rank}, base \"{weightName}\" [{string.Join(", ", w.Shape)}]; the adapter was trained on another model.");
                expertUpdates[weightName] = new ExpertDelta(a, b, e, experts, part, rank, (float)scale);
            }
    }

    /// <summary>
    /// PEFT's ParamWrapper fold of one expert e of a stacked [E, out, in] parameter (part p of a fused one):
    /// W_e[o, i] += s · Σ_ρ lora_B[p·out + o, ρ·E + e] · lora_A[e·R + ρ, i], lora_A [R·E, in], lora_B [parts·out, R·E].
    /// </summary>
    public static void AddExpertLoraDelta(Span<float> w, int outDim, int inDim, ReadOnlySpan<float> a, ReadOnlySpan<float> b,
        int expert, int experts, int part, int rank, float scale)
    {
        int bCols = rank * experts;
        for (int o = 0; o < outDim; o++)
        {
            var row = w.Slice(o * inDim, inDim);
            for (int r = 0; r < rank; r++)
            {
                float coef = scale * b[(part * outDim + o) * bCols + r * experts + expert];
                if (coef != 0f) TensorPrimitives.MultiplyAdd(a.Slice((expert * rank + r) * inDim, inDim), coef, row, row);
            }
        }
    }

    private static LoraMergeResult Write(string baseModelDir, ModelConfig baseConfig, SafetensorsReader baseWeights,
        SafetensorsReader? adapterWeightsOrNull, string adapterWeightsPath,
        Dictionary<string, (string A, string B, bool Embedding, double Scale)> updates, Dictionary<string, string> replacements,
        AdapterConfig? adapter, string outputDir, SafetensorsDType? outputDType, long maxShardBytes, Quantization.QuantizationSetup? quantizedBase,
        Dictionary<string, ExpertDelta>? expertUpdates = null)
    {
        expertUpdates ??= new();
        Directory.CreateDirectory(outputDir);
        var writer = new SafetensorsWriter();
        foreach (var info in baseWeights.Tensors.Values)
        {
            var name = info.Name;
            bool isFloat = info.DType is SafetensorsDType.F32 or SafetensorsDType.BF16 or SafetensorsDType.F16 or SafetensorsDType.F64;
            var dtype = isFloat && outputDType is { } forced ? forced : info.DType;
            if (!isFloat && (updates.ContainsKey(name) || replacements.ContainsKey(name) || expertUpdates.ContainsKey(name)))
                throw new ModelFormatException(info.FilePath, $"tensor \"{name}\" is {info.DType.HeaderName()}; only floating-point weights can be merged.");
            bool dequantized = quantizedBase is not null && Quantization.QuantizationSetup.IsQuantizedLinear(name) && !replacements.ContainsKey(name);
            if (!isFloat && dequantized)
                throw new ModelFormatException(info.FilePath, $"tensor \"{name}\" is {info.DType.HeaderName()}; a QLoRA merge reads the unquantized base weights (download the bf16/fp16 model the adapter's base was quantized from).");
            if (!updates.ContainsKey(name) && !replacements.ContainsKey(name) && !expertUpdates.ContainsKey(name) && !dequantized && dtype == info.DType)
            {
                writer.AddDeferred(name, dtype, info.Shape, span => baseWeights.GetBytes(name).CopyTo(span));
                continue;
            }
            writer.AddDeferred(name, dtype == SafetensorsDType.F64 ? SafetensorsDType.F32 : dtype, info.Shape, span =>
            {
                var adapterWeights = adapterWeightsOrNull!;
                float[] values;
                if (replacements.TryGetValue(name, out var replacement))
                {
                    var r = adapterWeights.Get(replacement);
                    if (!r.Shape.SequenceEqual(info.Shape))
                        throw new ModelFormatException(adapterWeightsPath, $"tensor \"{replacement}\" has shape [{string.Join(", ", r.Shape)}] but \"{name}\" is [{string.Join(", ", info.Shape)}].");
                    values = adapterWeights.ReadAsFloat32(replacement);
                }
                else
                    values = baseWeights.ReadAsFloat32(name);
                if (dequantized) values = quantizedBase!.RoundTrip(values, (int)info.Shape[0], (int)info.Shape[1]);
                if (updates.TryGetValue(name, out var u))
                    AddLoraDelta(values, info.Shape, adapterWeights.ReadAsFloat32(u.A), adapterWeights.ReadAsFloat32(u.B), (int)adapterWeights.Get(u.A).Shape[0], (float)u.Scale, u.Embedding);
                if (expertUpdates.TryGetValue(name, out var x))
                    AddExpertLoraDelta(values, (int)info.Shape[0], (int)info.Shape[1], adapterWeights.ReadAsFloat32(x.A), adapterWeights.ReadAsFloat32(x.B),
                        x.Expert, x.Experts, x.Part, x.Rank, x.Scale);
                FloatConversions.Encode(values, dtype == SafetensorsDType.F64 ? SafetensorsDType.F32 : dtype, span);
            });
        }
        var files = writer.SaveSharded(outputDir, maxShardBytes).ToList();

        var torchDtype = outputDType?.ToTorchDtype() ?? baseConfig.TorchDtype;
        (baseConfig with { TorchDtype = torchDtype }).Save(Path.Combine(outputDir, "config.json"));
        files.Add("config.json");
        foreach (var f in CompanionFiles)
        {
            var src = Path.Combine(baseModelDir, f);
            if (File.Exists(src))
            {
                AtomicFile.WriteAllBytes(Path.Combine(outputDir, f), File.ReadAllBytes(src));
                files.Add(f);
            }
        }
        double anyScale = updates.Count > 0 ? updates.Values.First().Scale
            : adapter is null ? 0 : PeftPattern.Scale(adapter.Alpha, adapter.Rank, adapter.UseRslora);
        return new LoraMergeResult(updates.Count + expertUpdates.Count, replacements.Count, baseWeights.Tensors.Count, anyScale, outputDType, files);
    }

    /// <summary>
    /// linear: W[o, i] += s · Σ_k B[o, k]·A[k, i]; embedding: E[v, d] += s · Σ_k B[d, k]·A[k, v].
    /// Rows are independent, so they run in parallel; each row is a sum of r scaled rows of A (SIMD).
    /// </summary>
    public static void AddLoraDelta(float[] w, IReadOnlyList<long> shape, float[] a, float[] b, int rank, float scale, bool embedding)
    {
        int rows = (int)shape[0], cols = (int)shape[1];
        if (!embedding)
        {
            Parallel.For(0, rows, o =>
            {
                var row = w.AsSpan(o * cols, cols);
                for (int k = 0; k < rank; k++)
                {
                    float coef = scale * b[o * rank + k];
                    if (coef != 0f)
                        TensorPrimitives.MultiplyAdd(a.AsSpan(k * cols, cols), coef, row, row);
                }
            });
            return;
        }
        // E is [vocab, dim]; A is [r, vocab], B is [dim, r].
        Parallel.For(0, rows, v =>
        {
            var row = w.AsSpan(v * cols, cols);
            for (int d = 0; d < cols; d++)
            {
                float s = 0;
                for (int k = 0; k < rank; k++)
                    s += b[d * rank + k] * a[k * rows + v];
                row[d] += scale * s;
            }
        });
    }

    [GeneratedRegex(@"^(?<module>.+)\.(?<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.[A-Za-z0-9_]+)?(\.weight)?$")]
    private static partial Regex LoraName();
}
