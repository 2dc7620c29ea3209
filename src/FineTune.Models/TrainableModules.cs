namespace FineTune.Models;

/// <summary>
/// One module option value that names nothing in the model: <paramref name="Option"/>[<paramref name="Index"/>] =
/// <paramref name="Value"/>, what is wrong with it, the names it could have meant (for a "did you mean") and what is expected.
/// </summary>
public sealed record ModuleNameProblem(string Option, int Index, string Value, string Problem, IReadOnlyList<string> Candidates, string Expected);

/// <summary>
/// The module names the training options may use, for a given model (LLaMA-Factory's and PEFT's rules):
/// lora_target names linear modules ("all" = every linear layer but the output head); additional_target and
/// freeze_extra_modules name modules by their full path or a dotted suffix of it (embed_tokens, norm, lm_head,
/// layers.1.mlp.down_proj, …, as PEFT's modules_to_save matches); freeze_trainable_modules names modules of a decoder layer.
/// </summary>
public static class TrainableModules
{
    public static readonly IReadOnlyList<string> LinearModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    public static readonly IReadOnlyList<string> LayerModules = ["self_attn", "mlp", "input_layernorm", "post_attention_layernorm"];

    /// <summary>The modules of a decoder layer that freeze_trainable_modules may name (q_norm/k_norm where the architecture has them).</summary>
    public static IReadOnlyList<string> DecoderLayerModules(TransformerSpec spec) =>
        [.. LayerModules, .. LinearModules, .. spec.QkNorm ? new[] { "q_norm", "k_norm" } : []];

    /// <summary>HF names of every base weight of a model of this shape, in the order <see cref="CausalLM"/> holds them.</summary>
    public static IReadOnlyList<string> ParameterNames(TransformerSpec spec)
    {
        var names = new List<string> { "model.embed_tokens.weight" };
        for (int l = 0; l < spec.NumLayers; l++)
        {
            string pre = $"model.layers.{l}";
            names.Add($"{pre}.input_layernorm.weight");
            foreach (string p in new[] { "q_proj", "k_proj", "v_proj" })
            {
                names.Add($"{pre}.self_attn.{p}.weight");
                if (spec.QkvBias) names.Add($"{pre}.self_attn.{p}.bias");
            }
            if (spec.QkNorm) names.AddRange([$"{pre}.self_attn.q_norm.weight", $"{pre}.self_attn.k_norm.weight"]);
            names.Add($"{pre}.self_attn.o_proj.weight");
            if (spec.OutputBias) names.Add($"{pre}.self_attn.o_proj.bias");
            names.Add($"{pre}.post_attention_layernorm.weight");
            names.AddRange([$"{pre}.mlp.gate_proj.weight", $"{pre}.mlp.up_proj.weight", $"{pre}.mlp.down_proj.weight"]);
        }
        names.Add("model.norm.weight");
        if (!spec.TieWordEmbeddings) names.Add("lm_head.weight");
        return names;
    }

    /// <summary>True when the parameter's module path is <paramref name="target"/> or ends with "." + <paramref name="target"/>.</summary>
    public static bool ModuleMatches(string parameter, string target)
    {
        string module = parameter[..parameter.LastIndexOf('.')];
        return module == target || module.EndsWith("." + target, StringComparison.Ordinal);
    }

    /// <summary>Every module option of <paramref name="setup"/> that its finetuning type uses, checked against the model; empty when all resolve.</summary>
    public static IReadOnlyList<ModuleNameProblem> Check(TransformerSpec spec, TrainingSetup setup)
    {
        var problems = new List<ModuleNameProblem>();
        string model = $"this {spec.Architecture} model";
        var parameters = ParameterNames(spec);
        // Leaf module names (and "norm" for model.norm): what a user names in additional_target / freeze_extra_modules.
        var leaves = new List<string> { "embed_tokens", "norm" };
        if (!spec.TieWordEmbeddings) leaves.Add("lm_head");
        leaves.AddRange(["input_layernorm", "post_attention_layernorm", .. LinearModules]);
        if (spec.QkNorm) leaves.AddRange(["q_norm", "k_norm"]);
        string modules = $"modules: {string.Join(", ", leaves)}" + (spec.TieWordEmbeddings ? "; the embeddings are tied, so there is no lm_head" : "");

        void Modules(string option, IReadOnlyList<string> values)
        {
            for (int i = 0; i < values.Count; i++)
                if (!parameters.Any(p => ModuleMatches(p, values[i])))
                    problems.Add(new ModuleNameProblem(option, i, values[i], $"matches no module of {model}", leaves, modules));
        }

        void Names(string option, IReadOnlyList<string> values, IReadOnlyList<string> allowed, string what)
        {
            for (int i = 0; i < values.Count; i++)
                if (values[i] != "all" && !allowed.Contains(values[i]))
                    problems.Add(new ModuleNameProblem(option, i, values[i], $"is not {what} of {model}", ["all", .. allowed],
                        $"expected all, or some of {string.Join(", ", allowed)}"));
        }

        switch (setup.FinetuningType)
        {
            case FinetuningType.Lora:
                Names("lora_target", setup.LoraTarget, LinearModules, "a linear module");
                Modules("additional_target", setup.AdditionalTarget);
                break;
            case FinetuningType.Freeze:
                Names("freeze_trainable_modules", setup.FreezeTrainableModules, DecoderLayerModules(spec), "a module of a decoder layer");
                Modules("freeze_extra_modules", setup.FreezeExtraModules);
                break;
        }
        return problems;
    }
}
