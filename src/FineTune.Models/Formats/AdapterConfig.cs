using System.Text.Json;
using System.Text.Json.Nodes;

namespace FineTune.Models;

/// <summary>
/// A PEFT LoRA adapter directory's <c>adapter_config.json</c>: the one reader behind chat, eval and forward (the adapter
/// applied unmerged, <see cref="CausalLM.Load"/>) and merge (<see cref="LoraMerge"/>), so all of them build the same model.
/// Missing keys take PEFT's <c>LoraConfig</c> defaults (r = 8, lora_alpha = 8, lora_dropout = 0, use_rslora = false, no
/// patterns). Settings FineTune cannot apply (DoRA, trained biases, Conv1D weights, some layers only, …) are refused with
/// the file named, rather than giving a model that silently differs from the one PEFT builds.
/// </summary>
/// <param name="RankPattern">rank_pattern in file order (PEFT tries the keys in order; see <see cref="PeftPattern"/>).</param>
public sealed record AdapterConfig(
    string Directory,
    int Rank,
    double Alpha,
    double LoraDropout,
    bool UseRslora,
    IReadOnlyList<string> TargetModules,
    IReadOnlyList<string> ModulesToSave,
    IReadOnlyList<KeyValuePair<string, int>> RankPattern,
    IReadOnlyList<KeyValuePair<string, double>> AlphaPattern)
{
    /// <summary>
    /// target_parameters: transformers 5's parameters LoRA adapts through PEFT's ParamWrapper — the stacked experts'
    /// gate_up_proj and down_proj, the router's gate.weight — empty for an adapter of linear modules only.
    /// </summary>
    public IReadOnlyList<string> TargetParameters { get; init; } = [];

    /// <summary>The router's weight as target_parameters names it (PEFT's conversion of lora_target gate on transformers 5).</summary>
    public const string RouterParameter = "gate.weight";

    /// <summary>The experts' entries of <see cref="TargetParameters"/> (gate_up_proj, down_proj), in file order.</summary>
    public IReadOnlyList<string> ExpertParameters => TargetParameters.Where(t => t is ExpertBlock.PeftGateUp or ExpertBlock.PeftDown).ToList();

    /// <summary>The rank_pattern / alpha_pattern key PEFT's transformers 5 conversion writes for the fused gate_up_proj (rank 2r, alpha 2α).</summary>
    public const string GateUpPatternKey = @".*\.gate_up_proj";

    public const string FileName = "adapter_config.json";
    public const string WeightsName = "adapter_model.safetensors";

    /// <summary>PEFT's LoraConfig defaults.</summary>
    public const int DefaultRank = 8;
    public const double DefaultAlpha = 8;

    public string FilePath => Path.Combine(Directory, FileName);

    public int RankFor(string module) => PeftPattern.Lookup(RankPattern, module) ?? Rank;

    public double AlphaFor(string module) => PeftPattern.Lookup(AlphaPattern, module) ?? Alpha;

    /// <summary>PEFT's scaling of <paramref name="module"/> (its full name, e.g. <c>model.layers.0.self_attn.v_proj</c>).</summary>
    public double ScaleFor(string module) => PeftPattern.Scale(AlphaFor(module), RankFor(module), UseRslora);

    public static AdapterConfig Read(string directory)
    {
        string path = Path.Combine(directory, FileName);
        if (!File.Exists(path))
            throw new ModelFormatException(path, "adapter_config.json not found; a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors.");
        JsonObject o;
        try
        {
            o = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new JsonException("not a JSON object");
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(path, $"invalid JSON: {e.Message}", e);
        }
        var keys = new ConfigReader(o, path);

        string peftType = keys.String("peft_type") ?? "LORA";
        if (peftType != "LORA") keys.Refuse($"peft_type is '{peftType}': FineTune applies LORA adapters only");
        if (keys.Bool("use_dora") == true) keys.Refuse("use_dora is true: DoRA adapters are not supported; FineTune applies plain LoRA adapters");
        if (keys.Bool("fan_in_fan_out") == true)
            keys.Refuse("fan_in_fan_out is true (GPT-2 style Conv1D weights): FineTune applies adapters of llama/qwen/mistral linear layers only");
        if (keys.String("bias") is { } bias && bias != "none")
            keys.Refuse($"bias is '{bias}': FineTune applies adapters with bias 'none' only (no trained biases)");
        if (keys.Bool("lora_bias") == true) keys.Refuse("lora_bias is true: FineTune applies adapters without a lora_B bias only");
        if (keys.IsSet("layers_to_transform"))
            keys.Refuse("layers_to_transform is set: FineTune applies adapters on every layer of their target_modules only");
        if (keys.IsSet("exclude_modules"))
            keys.Refuse("exclude_modules is set: FineTune applies adapters on every module their target_modules name");
        IReadOnlyList<string> targetParameters = keys.IsSet("target_parameters") ? keys.Strings("target_parameters") : [];
        if (targetParameters.FirstOrDefault(t => t is not (ExpertBlock.PeftGateUp or ExpertBlock.PeftDown or RouterParameter)) is { } other)
            keys.Refuse($"target_parameters names '{other}': FineTune applies LoRA on the experts' {ExpertBlock.PeftGateUp} and {ExpertBlock.PeftDown} and the router's {RouterParameter} of a mixture-of-experts model only");
        if (keys.IsSet("trainable_token_indices")) keys.Refuse("trainable_token_indices is set: FineTune applies adapters without trainable tokens");

        int rank = keys.Int("r") ?? DefaultRank;
        if (rank <= 0) keys.Refuse($"r is {rank}: the LoRA rank must be positive");
        var targets = o["target_modules"] switch
        {
            JsonArray => keys.Strings("target_modules"),
            // PEFT saves "all-linear" resolved into names, but accepts it as written; any other string is a regular expression.
            JsonValue v when v.GetValueKind() == JsonValueKind.String && v.GetValue<string>() == "all-linear" => [.. TrainableModules.LinearModules],
            JsonValue v when v.GetValueKind() == JsonValueKind.String =>
                throw keys.Error($"target_modules is the regular expression '{v.GetValue<string>()}': FineTune reads a list of module names"),
            null when targetParameters.Count > 0 => [],
            _ => throw keys.Error("target_modules is missing: PEFT writes the list of adapted module names there"),
        };
        return new AdapterConfig(directory, rank, keys.Double("lora_alpha") ?? DefaultAlpha, keys.Double("lora_dropout") ?? 0,
            keys.Bool("use_rslora") ?? false, targets, keys.Strings("modules_to_save"),
            keys.Pattern("rank_pattern", (r, k) => r.Int(k)).Select(p => p.Value > 0 ? p : throw keys.Error($"rank_pattern '{p.Key}' is {p.Value}: the LoRA rank must be positive")).ToList(),
            keys.Pattern("alpha_pattern", (r, k) => r.Double(k)))
        {
            TargetParameters = targetParameters,
        };
    }

    /// <summary>
    /// <paramref name="setup"/> with this adapter's LoRA shape, to build the model the adapter's weights load into. Every
    /// target must be a linear module of the engine's transformer: an adapter on embeddings or the output head can only
    /// be merged (merge folds those in).
    /// </summary>
    /// <param name="expertTargets">
    /// The family's expert names (qwen3_moe gate_proj, up_proj, down_proj; mixtral w1, w3, w2) that target_parameters
    /// gate_up_proj / down_proj map back to; empty for a dense model.
    /// </param>
    /// <param name="routerTarget">The router's lora_target name (gate) that target_parameters gate.weight maps back to; null for a dense model.</param>
    public TrainingSetup Apply(TrainingSetup setup, IReadOnlyList<string>? linearModules = null, IReadOnlyList<string>? expertTargets = null, string? routerTarget = null)
    {
        // The model's family says which linears it has (phi3: the fused qkv_proj, gate_up_proj); default the llama set.
        linearModules ??= TrainableModules.LinearModules;
        expertTargets ??= [];
        var others = TargetModules.Where(t => !linearModules.Contains(t)).ToList();
        if (others.Count > 0)
            throw new ModelFormatException(FilePath, $"target_modules names {string.Join(", ", others.Select(t => $"'{t}'"))}, which FineTune cannot apply unmerged " +
                $"(it applies adapters on {string.Join(", ", linearModules)}); merge the adapter into the model and use the merged model instead.");
        var targets = TargetModules.ToList();
        var rankPattern = RankPattern;
        var alphaPattern = AlphaPattern;
        if (TargetParameters.Contains(RouterParameter))
        {
            if (routerTarget is null)
                throw new ModelFormatException(FilePath, $"target_parameters names {RouterParameter}, the router of a mixture-of-experts model; this model has none.");
            targets.Add(routerTarget);
        }
        if (ExpertParameters.Count > 0)
        {
            if (expertTargets.Count != 3)
                throw new ModelFormatException(FilePath, $"target_parameters names {string.Join(", ", ExpertParameters)}, the experts of a mixture-of-experts model; this model has none.");
            if (TargetParameters.Contains(ExpertBlock.PeftGateUp))
            {
                // FineTune trains gate_up_proj as PEFT's conversion of gate_proj + up_proj leaves it: rank 2r, alpha 2α.
                int? r = PeftPattern.Lookup(RankPattern, "model.layers.0.mlp.experts." + ExpertBlock.PeftGateUp);
                double a = PeftPattern.Lookup(AlphaPattern, "model.layers.0.mlp.experts." + ExpertBlock.PeftGateUp) ?? Alpha;
                if (r != 2 * Rank || a != 2 * Alpha)
                    throw new ModelFormatException(FilePath, $"target_parameters has {ExpertBlock.PeftGateUp} of rank {r ?? Rank} and alpha {a}; FineTune applies it with rank 2·r = {2 * Rank} and alpha 2·lora_alpha = {2 * Alpha} " +
                        $"(rank_pattern and alpha_pattern \"{GateUpPatternKey}\", as PEFT's transformers 5 conversion of gate_proj + up_proj writes them); merge the adapter into the model instead.");
                targets.AddRange([expertTargets[0], expertTargets[1]]);
                rankPattern = RankPattern.Where(p => p.Key != GateUpPatternKey).ToList();
                alphaPattern = AlphaPattern.Where(p => p.Key != GateUpPatternKey).ToList();
            }
            if (TargetParameters.Contains(ExpertBlock.PeftDown)) targets.Add(expertTargets[2]);
        }
        return setup with
        {
            FinetuningType = FinetuningType.Lora,
            LoraRank = Rank,
            LoraAlpha = Alpha,
            LoraTarget = targets,
            UseRslora = UseRslora,
            AdditionalTarget = ModulesToSave,
            LoraRankPattern = rankPattern,
            LoraAlphaPattern = alphaPattern,
            LoraDropout = TargetParameters.Count > 0 ? 0 : setup.LoraDropout,
        };
    }
}
