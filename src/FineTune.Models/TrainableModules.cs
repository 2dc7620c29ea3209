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
    /// <summary>The linear modules of the llama-style families (what PEFT's all-linear means for them).</summary>
    public static IReadOnlyList<string> LinearModules => ModelArchitecture.Llama.LoraTargets;

    /// <summary>The linear modules LoRA may target in a model of this family, in PEFT's names.</summary>
    /// <remarks>
    /// A mixture-of-experts model's MLP linears exist only in its dense layers: without any, lora_target may name the
    /// attention projections alone (the experts are not linear modules; PEFT reaches them only as target_parameters).
    /// </remarks>
    public static IReadOnlyList<string> LinearModulesOf(TransformerSpec spec) =>
        spec.Moe is not null && !spec.HasDenseLayers ? AttentionTargets(spec) : spec.Family.LoraTargets;

    private static List<string> AttentionTargets(TransformerSpec spec) => spec.Family.LoraTargets.Take(spec.Family.Block.FusedQkv ? 2 : 4).ToList();

    /// <summary>
    /// The expert projections' names lora_target may use on a mixture-of-experts model (qwen3_moe: gate_proj, up_proj,
    /// down_proj; mixtral: w1, w3, w2): the names PEFT on transformers 5 turns into the experts' target_parameters
    /// gate_up_proj and down_proj. Empty for a dense family.
    /// </summary>
    public static IReadOnlyList<string> ExpertTargets(TransformerSpec spec) =>
        spec.Moe is not null && spec.Family.Experts is { } x ? [x.Gate, x.Up, x.Down] : [];

    /// <summary>
    /// The router's name lora_target may use on a mixture-of-experts model (gate, qwen3_moe's mlp.gate and mixtral's
    /// block_sparse_moe.gate): an nn.Linear in transformers 4, a TopKRouter with a bare weight in transformers 5, whose
    /// lora_target gate PEFT's conversion turns into target_parameters gate.weight. Null for a dense family.
    /// </summary>
    public static string? RouterTarget(TransformerSpec spec) => spec.Moe is not null ? spec.Family.Experts?.Router : null;

    /// <summary>
    /// The names lora_target may use: the linear modules, and on a mixture-of-experts model the attention projections,
    /// the expert names (<see cref="ExpertTargets"/>) and the router (<see cref="RouterTarget"/>); "all" is <see cref="AllLoraTargets"/>.
    /// </summary>
    public static IReadOnlyList<string> LoraTargetsOf(TransformerSpec spec) =>
        spec.Moe is null ? spec.Family.LoraTargets : [.. AttentionTargets(spec), .. ExpertTargets(spec), .. RouterTarget(spec) is { } r ? new[] { r } : []];

    /// <summary>
    /// What lora_target "all" means, as LLaMA-Factory resolves it (the nn.Linear leaf names of the transformers 5 model)
    /// and PEFT then reads it: on a mixture-of-experts model the attention projections, plus gate_proj, up_proj, down_proj
    /// where some layer is dense — and PEFT (transformers 5) turns those MLP names into the experts' target_parameters,
    /// leaving the dense layers' MLP without LoRA. FineTune does the same, so its adapter is the one PEFT builds. The router
    /// is never in it: LLaMA-Factory's find_all_linear_modules takes modules whose class name holds "Linear", and
    /// transformers 5's Qwen3MoeTopKRouter / MixtralTopKRouter does not (name gate to train it).
    /// </summary>
    public static IReadOnlyList<string> AllLoraTargets(TransformerSpec spec) =>
        spec.Moe is null ? spec.Family.LoraTargets : spec.HasDenseLayers ? [.. AttentionTargets(spec), .. ExpertTargets(spec)] : AttentionTargets(spec);

    /// <summary>A decoder layer's sub-modules and norms (the table's names).</summary>
    public static IReadOnlyList<string> LayerModules(TransformerSpec spec)
    {
        var n = spec.Family.Names;
        return spec.Sandwich ? [n.Attention, n.Mlp, n.InputNorm, n.PostAttentionNorm, n.PreFeedforwardNorm, n.PostFeedforwardNorm]
            : [n.Attention, n.Mlp, n.InputNorm, n.PostAttentionNorm];
    }

    /// <summary>The modules of a decoder layer that freeze_trainable_modules may name (q_norm/k_norm where the architecture has them).</summary>
    public static IReadOnlyList<string> DecoderLayerModules(TransformerSpec spec) =>
        [.. LayerModules(spec), .. LinearModulesOf(spec), .. spec.QkNorm ? new[] { spec.Family.Names.QNorm, spec.Family.Names.KNorm } : []];

    /// <summary>HF names of every base weight of a model of this shape, in the order <see cref="CausalLM"/> holds them.</summary>
    public static IReadOnlyList<string> ParameterNames(TransformerSpec spec)
    {
        var n = spec.Family.Names;
        var names = new List<string> { $"{n.Embedding}.weight" };
        for (int l = 0; l < spec.NumLayers; l++)
        {
            string pre = n.Layer(l), attn = $"{pre}.{n.Attention}", mlp = $"{pre}.{n.Mlp}";
            names.Add($"{pre}.{n.InputNorm}.weight");
            foreach (string p in spec.Family.Block.FusedQkv ? [n.Qkv] : new[] { n.Q, n.K, n.V })
            {
                names.Add($"{attn}.{p}.weight");
                if (spec.QkvBias) names.Add($"{attn}.{p}.bias");
            }
            if (spec.QkNorm) names.AddRange([$"{attn}.{n.QNorm}.weight", $"{attn}.{n.KNorm}.weight"]);
            names.Add($"{attn}.{n.O}.weight");
            if (spec.OutputBias) names.Add($"{attn}.{n.O}.bias");
            names.Add($"{pre}.{n.PostAttentionNorm}.weight");
            if (spec.Sandwich) names.AddRange([$"{pre}.{n.PreFeedforwardNorm}.weight", $"{pre}.{n.PostFeedforwardNorm}.weight"]);
            if (spec.IsSparseLayer(l) && spec.Family.Experts is { } x)
            {
                // The router, then each projection of all experts as one stacked parameter (see ExpertBlock).
                names.AddRange([$"{mlp}.{x.Router}.weight", $"{mlp}.{x.ExpertList}.{x.Gate}", $"{mlp}.{x.ExpertList}.{x.Up}", $"{mlp}.{x.ExpertList}.{x.Down}"]);
                continue;
            }
            names.AddRange(spec.Family.Block.FusedGateUp ? [$"{mlp}.{n.GateUp}.weight", $"{mlp}.{n.Down}.weight"]
                : [$"{mlp}.{n.Gate}.weight", $"{mlp}.{n.Up}.weight", $"{mlp}.{n.Down}.weight"]);
        }
        names.Add($"{n.FinalNorm}.weight");
        if (!spec.TieWordEmbeddings) names.Add($"{n.LmHead}.weight");
        return names;
    }

    /// <summary>
    /// What PEFT's ParamWrapper (LoRA on the experts' 3-D parameters) refuses or its transformers 5 conversion cannot
    /// express, reported at the lora_target entry that reaches the experts: gate and up without each other (they are one
    /// fused gate_up_proj), lora_dropout, rank/alpha patterns (the conversion writes its own for gate_up_proj).
    /// </summary>
    private static void ExpertProblems(TransformerSpec spec, TrainingSetup setup, List<ModuleNameProblem> problems)
    {
        var experts = ExpertTargets(spec);
        if (experts.Count == 0) return;
        var resolved = ResolveLoraTargets(spec, setup.LoraTarget);
        int at = Enumerable.Range(0, setup.LoraTarget.Count).FirstOrDefault(i => setup.LoraTarget[i] == "all" || experts.Contains(setup.LoraTarget[i]), -1);
        if (at < 0 || !resolved.Overlaps(experts)) return;
        string value = setup.LoraTarget[at], model = $"this {spec.Architecture} model";
        string gate = experts[0], up = experts[1];
        if (resolved.Contains(gate) != resolved.Contains(up))
            problems.Add(new ModuleNameProblem("lora_target", at, value,
                $"reaches the experts' fused {ExpertBlock.PeftGateUp} of {model}, which needs both {gate} and {up}", [],
                $"name both {gate} and {up} (PEFT trains them as one gate_up_proj), or neither"));
        if (setup.LoraDropout > 0)
            problems.Add(new ModuleNameProblem("lora_target", at, value,
                $"reaches the experts of {model}, which PEFT's ParamWrapper trains without dropout (lora_dropout is {setup.LoraDropout})", [],
                "set lora_dropout: 0, or leave the expert projections out of lora_target"));
        if (setup.LoraRankPattern.Count > 0 || setup.LoraAlphaPattern.Count > 0)
            problems.Add(new ModuleNameProblem("lora_target", at, value,
                $"reaches the experts of {model}, whose ranks FineTune sets as PEFT's transformers 5 conversion does (gate_up_proj 2·r, down_proj r); lora_rank_pattern / lora_alpha_pattern are not applied to them", [],
                "remove lora_rank_pattern and lora_alpha_pattern, or leave the expert projections out of lora_target"));
    }

    /// <summary>What PEFT's ParamWrapper refuses on the router (lora_target gate): lora_dropout, reported at that entry.</summary>
    private static void RouterProblems(TransformerSpec spec, TrainingSetup setup, List<ModuleNameProblem> problems)
    {
        if (RouterTarget(spec) is not { } router || setup.LoraDropout <= 0) return;
        int at = setup.LoraTarget.ToList().IndexOf(router);
        if (at < 0) return;
        problems.Add(new ModuleNameProblem("lora_target", at, router,
            $"reaches the router of this {spec.Architecture} model, which PEFT's ParamWrapper (transformers 5's router is no nn.Linear) trains without dropout (lora_dropout is {setup.LoraDropout})", [],
            $"set lora_dropout: 0, or leave {router} out of lora_target"));
    }

    /// <summary>lora_target with "all" expanded (<see cref="AllLoraTargets"/>); names outside the model are kept (Check reports them).</summary>
    public static HashSet<string> ResolveLoraTargets(TransformerSpec spec, IReadOnlyList<string> targets)
    {
        var set = new HashSet<string>(StringComparer.Ordinal);
        foreach (string t in targets)
            if (t == "all") set.UnionWith(AllLoraTargets(spec));
            else set.Add(t);
        return set;
    }

    private static string Leaf(string module) => module[(module.LastIndexOf('.') + 1)..];

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
        var n = spec.Family.Names;
        var leaves = new List<string> { Leaf(n.Embedding), Leaf(n.FinalNorm) };
        if (!spec.TieWordEmbeddings) leaves.Add(Leaf(n.LmHead));
        leaves.AddRange([n.InputNorm, n.PostAttentionNorm, .. LinearModulesOf(spec)]);
        if (spec.Sandwich) leaves.AddRange([n.PreFeedforwardNorm, n.PostFeedforwardNorm]);
        if (spec.QkNorm) leaves.AddRange([n.QNorm, n.KNorm]);
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
                Names("lora_target", setup.LoraTarget, LoraTargetsOf(spec), spec.Moe is null ? "a linear module" : "an attention projection, expert projection or the router");
                ExpertProblems(spec, setup, problems);
                RouterProblems(spec, setup, problems);
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
