namespace FineTune.Models;

/// <summary>Which base parameters train and which linear modules get LoRA, by LLaMA-Factory's rules.</summary>
internal static class TrainableSelection
{
    /// <summary>
    /// The trainable parameter names and LoRA modules. Names that resolve to nothing throw here as a last guard; front ends
    /// report them earlier, located, through <see cref="TrainableModules.Check"/>.
    /// </summary>
    public static HashSet<string> Select(TransformerSpec spec, TrainingSetup setup, IReadOnlyList<string> parameters, out HashSet<string> loraModules)
    {
        var trainable = new HashSet<string>(StringComparer.Ordinal);
        loraModules = new HashSet<string>(StringComparer.Ordinal);
        switch (setup.FinetuningType)
        {
            case FinetuningType.Full:
                trainable.UnionWith(parameters);
                break;
            case FinetuningType.Lora:
                if (setup.LoraRank <= 0) throw new ArgumentException($"lora_rank must be positive, got {setup.LoraRank}");
                var allowed = TrainableModules.LoraTargetsOf(spec);
                foreach (string t in TrainableModules.ResolveLoraTargets(spec, setup.LoraTarget))
                {
                    if (allowed.Contains(t)) loraModules.Add(t);
                    else throw new ArgumentException($"lora_target '{t}' names no linear module of a {spec.Architecture} model; use 'all' or some of {string.Join(", ", allowed)}");
                }
                if (TrainableModules.Check(spec, setup).FirstOrDefault(p => p.Option == "lora_target") is { } problem)
                    throw new ArgumentException($"lora_target '{problem.Value}' {problem.Problem}; {problem.Expected}");
                AddModules(setup.AdditionalTarget, parameters, trainable, "additional_target");
                break;
            case FinetuningType.Freeze:
                {
                    int n = spec.NumLayers, k = setup.FreezeTrainableLayers;
                    var ids = k > 0 ? Enumerable.Range(Math.Max(0, n - k), Math.Min(k, n)) : Enumerable.Range(0, Math.Min(-k, n));
                    var patterns = new List<string>();
                    foreach (int id in ids)
                    {
                        foreach (string m in setup.FreezeTrainableModules)
                        {
                            if (m == "all") patterns.Add($".{id}.");
                            else if (TrainableModules.DecoderLayerModules(spec).Contains(m)) patterns.Add($".{id}.{m}");
                            else throw new ArgumentException($"freeze_trainable_modules '{m}' names no module of a decoder layer; use 'all' or some of {string.Join(", ", TrainableModules.DecoderLayerModules(spec))}");
                        }
                    }
                    foreach (string p in parameters)
                        if (p.StartsWith(spec.Family.Names.Layers + ".", StringComparison.Ordinal) && patterns.Any(pat => p.Contains(pat, StringComparison.Ordinal)))
                            trainable.Add(p);
                    AddModules(setup.FreezeExtraModules, parameters, trainable, "freeze_extra_modules");
                    break;
                }
        }
        return trainable;
    }

    private static void AddModules(IReadOnlyList<string> modules, IReadOnlyList<string> parameters, HashSet<string> trainable, string option)
    {
        foreach (string m in modules)
        {
            var hits = parameters.Where(p => TrainableModules.ModuleMatches(p, m)).ToList();
            if (hits.Count == 0)
                throw new ArgumentException($"{option} '{m}' matches no module of the model (tied embeddings have no lm_head); use names such as embed_tokens, norm or lm_head");
            trainable.UnionWith(hits);
        }
    }
}
