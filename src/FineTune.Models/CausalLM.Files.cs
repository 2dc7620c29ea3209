using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Engine;

namespace FineTune.Models;

public sealed partial class CausalLM
{
    /// <summary>Files a model directory carries beside its weights; <see cref="SaveModel"/> copies them along.</summary>
    private static readonly string[] CompanionFiles =
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "vocab.json", "merges.txt", "chat_template.jinja", "added_tokens.json"];

    /// <summary>The parsed config.json when the model came from a directory.</summary>
    public ModelConfig? Config { get; private set; }

    /// <summary>The directory the base model was loaded from, if any.</summary>
    public string? ModelDirectory { get; private set; }

    /// <summary>
    /// Loads an HF model directory (config.json + safetensors) onto <paramref name="backend"/>. With
    /// <paramref name="adapterDirectory"/>, a PEFT LoRA adapter is applied unmerged (its rank, alpha, targets and
    /// rsLoRA flag override <paramref name="setup"/>'s LoRA settings).
    /// </summary>
    public static CausalLM Load(string modelDirectory, IBackend backend, TrainingSetup setup, string? adapterDirectory = null)
    {
        var config = ModelConfig.Load(Path.Combine(modelDirectory, "config.json"));
        // What the engine refuses of a mixture-of-experts model, located at its config.json (user errors, not crashes).
        if (config.Moe is { RouterJitterNoise: > 0 } jittered)
            throw new ModelFormatException(Path.Combine(modelDirectory, "config.json"),
                $"\"router_jitter_noise\" is {jittered.RouterJitterNoise}; FineTune's engine routes without jitter noise: set it to 0.0 to train or run this model.");
        if (config.Moe is not null && setup.Quantization is not null)
            throw new ModelFormatException(Path.Combine(modelDirectory, "config.json"),
                $"model_type \"{config.ModelType}\" is a mixture of experts, which FineTune does not train with QLoRA (quantization_bit) yet: remove quantization_bit.");
        var spec = TransformerSpec.FromConfig(config);
        if (config.Architecture.EngineGap is { } gap)
            throw new ModelFormatException(Path.Combine(modelDirectory, "config.json"),
                $"model_type \"{config.ModelType}\": {gap}; train or chat with one of {string.Join(", ", ModelArchitecture.All.Where(a => a.EngineGap is null))}.");
        AdapterConfig? adapter = adapterDirectory is null ? null : AdapterConfig.Read(adapterDirectory);
        if (adapter is not null)
            setup = adapter.Apply(setup, spec.Moe is null ? TrainableModules.LinearModulesOf(spec) : TrainableModules.LoraTargetsOf(spec), TrainableModules.ExpertTargets(spec),
                TrainableModules.RouterTarget(spec));
        // A QLoRA adapter runs on the base it trained against: held quantized as its quantization_config.json says.
        if (adapterDirectory is not null && setup.Quantization is null && FineTune.Models.Quantization.QuantizedBaseFile.Read(adapterDirectory) is { } quantization)
            setup = setup with { Quantization = quantization };
        // A reward model's value head lies beside its adapter (or its model), as LLaMA-Factory saves it.
        string? valueHead = new[] { adapterDirectory, modelDirectory }.OfType<string>()
            .Select(d => Path.Combine(d, ValueHeadFileName)).FirstOrDefault(File.Exists);
        if (valueHead is not null) setup = setup with { ValueHead = true };
        using var reader = SafetensorsReader.Open(modelDirectory);
        IWeightSource weights = new SafetensorsWeights(reader, modelDirectory);
        if (config.LanguageModelWeights is { } layout) weights = new LanguageModelWeightSource(weights, layout);
        var model = new CausalLM(spec, backend, setup, weights)
        {
            Config = config,
            ModelDirectory = Path.GetFullPath(modelDirectory),
        };
        if (adapter is not null) model.LoadAdapterWeights(adapter);
        if (valueHead is not null) model.LoadValueHead(valueHead);
        return model;
    }

    private void LoadValueHead(string file)
    {
        using var reader = SafetensorsReader.Open(file);
        foreach (var p in new[] { _valueHeadWeight!, _valueHeadBias! })
        {
            if (!reader.Contains(p.Name))
                throw new ModelFormatException(file, $"tensor \"{p.Name}\" is missing; a value head file holds {ValueHeadWeightName} [1, hidden] and {ValueHeadBiasName} [1].");
            var values = new float[p.Length];
            new SafetensorsWeights(reader, Path.GetDirectoryName(file)!).Read(p.Name, p.Shape, values);
            WriteParameter(p.Name, values);
        }
    }

    /// <summary>Writes value_head.safetensors (v_head.summary.weight [1, hidden], v_head.summary.bias [1], F32) when the model has a value head.</summary>
    private void SaveValueHead(string directory)
    {
        if (_valueHeadWeight is null || _valueHeadBias is null) return;
        var writer = new SafetensorsWriter(new Dictionary<string, string> { ["format"] = "pt" });
        foreach (var p in new[] { _valueHeadWeight, _valueHeadBias })
            writer.Add(p.Name, ReadParameter(p.Name), p.Shape.Select(x => (long)x).ToArray());
        writer.Save(Path.Combine(directory, ValueHeadFileName));
    }

    private bool IsValueHead(TrainableParameter t) =>
        ReferenceEquals(t, _valueHeadWeight?.Trainable) || ReferenceEquals(t, _valueHeadBias?.Trainable);

    private void LoadAdapterWeights(AdapterConfig adapter)
    {
        using var reader = SafetensorsReader.Open(Path.Combine(adapter.Directory, AdapterConfig.WeightsName));
        foreach (var p in _allParameters.Where(p => p.Role is ParameterRole.LoraA or ParameterRole.LoraB))
        {
            string key = "base_model.model." + p.Name;
            // A router adapter of PEFT on transformers 4 (an nn.Linear gate, the same A and B) names mixtral's block block_sparse_moe.
            if (!reader.Contains(key) && Spec.Family.Experts?.MoeModule is { } moeModule && key.Replace(".mlp.", $".{moeModule}.", StringComparison.Ordinal) is var v4 && reader.Contains(v4))
                key = v4;
            if (!reader.Contains(key))
                throw new ModelFormatException(Path.Combine(adapter.Directory, AdapterConfig.WeightsName),
                    $"tensor \"{key}\" is missing; the adapter's target_modules do not match its weights.");
            var values = new float[p.Length];
            new SafetensorsWeights(reader, adapter.Directory).Read(key, FileShape(p), values);
            WriteParameter(p.Name, FromFileLayout(p, values));
        }
        foreach (string module in adapter.ModulesToSave)
            foreach (var p in _allParameters.Where(p => p.Name.StartsWith(module + ".", StringComparison.Ordinal) || p.Name.Contains("." + module + ".", StringComparison.Ordinal)))
            {
                string key = "base_model.model." + p.Name;
                if (!reader.Contains(key)) continue;
                var values = new float[p.Length];
                new SafetensorsWeights(reader, adapter.Directory).Read(key, p.Shape, values);
                WriteParameter(p.Name, values);
            }
    }

    /// <summary>
    /// Writes a PEFT adapter directory: adapter_model.safetensors (F32; keys such as
    /// base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight with A [r, in] and B [out, r], plus
    /// modules_to_save tensors) and adapter_config.json with LoraConfig's keys; a value head goes to value_head.safetensors.
    /// </summary>
    public void SaveAdapter(string directory, string? baseModelNameOrPath = null)
    {
        if (Setup.FinetuningType != FinetuningType.Lora) throw new InvalidOperationException($"SaveAdapter needs finetuning_type lora; this model trains with {Setup.FinetuningType}: use SaveModel");
        Directory.CreateDirectory(directory);
        var writer = new SafetensorsWriter(new Dictionary<string, string> { ["format"] = "pt" });
        foreach (var t in _trainable.Where(t => !IsValueHead(t)))
        {
            var values = new float[t.Length];
            Backend.Download(t.Master, values);
            var (fileValues, shape) = ToFileLayout(t.HfName, values);
            writer.Add(t.Name, fileValues, shape);
        }
        writer.Save(Path.Combine(directory, AdapterConfig.WeightsName));
        var targets = _layers.SelectMany(l => l.Linears).Where(l => l.Lora is not null).Select(l => l.ShortName).Distinct().Order(StringComparer.Ordinal).ToList();
        // LoRA on the experts is written as PEFT's transformers 5 conversion leaves gate_proj/up_proj/down_proj: target_parameters
        // gate_up_proj (rank 2r, alpha 2α through the patterns) and down_proj, so peft builds exactly these adapters.
        var experts = _layers.Select(l => l.Experts).OfType<ExpertBlock>().FirstOrDefault();
        var targetParameters = new List<string>();
        var rankPattern = Setup.LoraRankPattern.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)p.Value)).ToList();
        var alphaPattern = Setup.LoraAlphaPattern.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)p.Value)).ToList();
        if (experts?.DownLora is not null) targetParameters.Add(ExpertBlock.PeftDown);
        // LoRA on the router: target_parameters gate.weight, as the conversion leaves lora_target gate (sorted between the two).
        if (experts?.RouterLora is not null) targetParameters.Add(AdapterConfig.RouterParameter);
        if (experts?.GateUpLora is { } gu)
        {
            targetParameters.Add(ExpertBlock.PeftGateUp);
            rankPattern.Add(KeyValuePair.Create(AdapterConfig.GateUpPatternKey, (JsonNode?)gu.Rank));
            alphaPattern.Add(KeyValuePair.Create(AdapterConfig.GateUpPatternKey, (JsonNode?)(2 * Setup.ResolvedLoraAlpha)));
        }
        // PEFT matches modules_to_save by plain suffix ("norm" would also wrap every q_norm and input_layernorm),
        // so the config names the full paths of the modules that were trained: model.norm, lm_head, ...
        var modulesToSave = _trainable.Where(t => t.Role is not (ParameterRole.LoraA or ParameterRole.LoraB) && !IsValueHead(t))
            .Select(t => t.HfName[..t.HfName.LastIndexOf('.')]).Distinct().Order(StringComparer.Ordinal).ToList();
        var config = new JsonObject
        {
            ["alpha_pattern"] = new JsonObject(alphaPattern),
            ["auto_mapping"] = null,
            ["base_model_name_or_path"] = baseModelNameOrPath ?? ModelDirectory,
            ["bias"] = "none",
            ["fan_in_fan_out"] = false,
            ["inference_mode"] = true,
            ["init_lora_weights"] = true,
            ["layers_pattern"] = null,
            ["layers_to_transform"] = null,
            ["loftq_config"] = new JsonObject(),
            ["lora_alpha"] = Setup.ResolvedLoraAlpha,
            ["lora_bias"] = false,
            ["lora_dropout"] = Setup.LoraDropout,
            ["megatron_config"] = null,
            ["megatron_core"] = "megatron.core",
            ["modules_to_save"] = modulesToSave.Count == 0 ? null : new JsonArray(modulesToSave.Select(x => (JsonNode?)x).ToArray()),
            ["peft_type"] = "LORA",
            ["r"] = Setup.LoraRank,
            ["rank_pattern"] = new JsonObject(rankPattern),
            ["revision"] = null,
            ["target_modules"] = new JsonArray(targets.Select(x => (JsonNode?)x).ToArray()),
            ["task_type"] = "CAUSAL_LM",
            ["use_dora"] = false,
            ["use_rslora"] = Setup.UseRslora,
        };
        if (targetParameters.Count > 0) config["target_parameters"] = new JsonArray(targetParameters.Select(x => (JsonNode?)x).ToArray());
        AtomicFile.WriteAllText(Path.Combine(directory, AdapterConfig.FileName), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        SaveValueHead(directory);
    }

    /// <summary>
    /// Writes a complete HF model directory (config.json, model.safetensors in the config's torch_dtype, and the
    /// tokenizer/generation files of the source directory). LoRA adapters are folded in: W + scale·B·A. A value head
    /// goes to value_head.safetensors beside it, as LLaMA-Factory saves a reward model.
    /// </summary>
    public void SaveModel(string directory, SafetensorsDType? dtype = null)
    {
        var config = Config ?? throw new InvalidOperationException("SaveModel needs a model loaded from a directory (its config.json)");
        Directory.CreateDirectory(directory);
        var storeAs = dtype ?? SafetensorsDTypes.FromTorchDtype(config.TorchDtype) ?? SafetensorsDType.F32;
        var writer = new SafetensorsWriter(new Dictionary<string, string> { ["format"] = "pt" });
        // The parts of a fused module share its weight's name and one A/B pair: fold it once, over all its rows.
        var loraOf = _layers.SelectMany(l => l.Linears).Where(l => l.Lora is not null).GroupBy(l => l.Weight.Name).ToDictionary(g => g.Key, g => g.First().Lora!);
        foreach (var x in _layers.Select(l => l.Experts).OfType<ExpertBlock>())
            if (x.RouterLora is { } router) loraOf[x.Router.Name] = router;
        foreach (var p in _allParameters.Where(p => p.Role is not (ParameterRole.LoraA or ParameterRole.LoraB) && !IsValueHead(p)))
        {
            float[] values = ReadParameter(p.Name);
            if (loraOf.TryGetValue(p.Name, out var lora)) FoldLora(values, lora);
            if (p.Shape.Length == 3 && ExpertBlock.IsStack(Spec.Family, p.Name))
            {
                FoldExpertLora(p, values);
                // The hub layout, one tensor per expert, which transformers 4 and 5 both load.
                int per = p.Shape[1] * p.Shape[2];
                for (int e = 0; e < p.Shape[0]; e++)
                    writer.Add(ExpertBlock.ExpertKey(p.Name, e), values.AsSpan(e * per, per).ToArray(), [p.Shape[1], p.Shape[2]], storeAs);
                continue;
            }
            writer.Add(p.Name, values, p.Shape.Select(x => (long)x).ToArray(), storeAs);
        }
        writer.Save(Path.Combine(directory, "model.safetensors"));
        SaveValueHead(directory);
        (config with { TorchDtype = storeAs.ToTorchDtype() }).Save(Path.Combine(directory, "config.json"));
        if (ModelDirectory is not null && Path.GetFullPath(directory) != ModelDirectory)
            foreach (string f in CompanionFiles)
            {
                string src = Path.Combine(ModelDirectory, f);
                if (File.Exists(src)) AtomicFile.WriteAllBytes(Path.Combine(directory, f), File.ReadAllBytes(src));
            }
    }

    /// <summary>W[o, i] += scale · Σ_r B[o, r]·A[r, i] in double.</summary>
    private void FoldLora(float[] w, LoraAdapter lora)
    {
        float[] a = ReadParameter(lora.A.Name), b = ReadParameter(lora.B.Name);
        int r = lora.Rank, outDim = b.Length / r, inDim = lora.A.Shape[1]; // b by name: a fused module's whole B
        for (int o = 0; o < outDim; o++)
            for (int i = 0; i < inDim; i++)
            {
                double s = 0;
                for (int k = 0; k < r; k++) s += (double)b[o * r + k] * a[k * inDim + i];
                w[(long)o * inDim + i] += (float)(lora.Scale * s);
            }
    }
}
