using FineTune.Engine;

namespace FineTune.Models.Generation;

/// <summary>One adapter's LoRA on one linear: y += Scale·(x·Aᵀ)·Bᵀ, A [r, in], B [out, r] in the compute dtype.</summary>
internal sealed record LoraWeights(Tensor A, Tensor B, float Scale, int Rank);

/// <summary>A named PEFT adapter directory to serve beside the base model.</summary>
public sealed record NamedAdapter(string Name, string Directory);

/// <summary>
/// PEFT LoRA adapters held unmerged beside one base model, so requests of different adapters share a batch: the base
/// products run once over every row, then each token group adds its own adapter's LoRA term. An adapter's
/// modules_to_save (fully trained copies) may replace embed_tokens, the final norm and lm_head, which act per row
/// group too; a copy of any other module needs the merged model.
/// </summary>
internal sealed class AdapterBank : IDisposable
{
    private static readonly string[] PerRowModules = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"];
    private readonly TensorArena _arena;
    private readonly Entry[] _entries;
    private readonly bool _tied;

    private sealed class Entry
    {
        public required string Name { get; init; }
        public Dictionary<LoraLinear, LoraWeights> Lora { get; } = [];
        public Tensor? Embed, Norm, Head;
    }

    private AdapterBank(IBackend backend, TensorArena arena, Entry[] entries, Tensor scratch, bool tied)
    {
        Backend = backend;
        _arena = arena;
        _entries = entries;
        Scratch = scratch;
        _tied = tied;
    }

    public IBackend Backend { get; }
    /// <summary>x·Aᵀ of one token group, [max tokens, max rank].</summary>
    public Tensor Scratch { get; }
    /// <summary>Adapter names; adapter index i + 1 is Names[i] (index 0 is the model as loaded).</summary>
    public IReadOnlyList<string> Names => _entries.Skip(1).Select(e => e.Name).ToList();

    public int IndexOf(string name)
    {
        for (int i = 1; i < _entries.Length; i++) if (_entries[i].Name == name) return i;
        return -1;
    }

    public LoraWeights? Lora(int adapter, LoraLinear linear) => adapter == 0 ? null : _entries[adapter].Lora.GetValueOrDefault(linear);
    public Tensor? Embedding(int adapter) => adapter == 0 ? null : _entries[adapter].Embed;
    public Tensor? FinalNorm(int adapter) => adapter == 0 ? null : _entries[adapter].Norm;
    public Tensor? Head(int adapter) => adapter == 0 ? null : _entries[adapter].Head ?? (_tied ? _entries[adapter].Embed : null);

    public static AdapterBank Load(CausalLM model, IReadOnlyList<NamedAdapter> adapters, int maxTokens)
    {
        if (model.HasOwnLora) throw new ArgumentException("named adapters need a base model loaded without an adapter of its own");
        var spec = model.Spec;
        var names = new HashSet<string>(StringComparer.Ordinal);
        var host = new List<(int Entry, string Kind, LoraLinear? Linear, int[] Shape, float[] Values, float Scale)>();
        var entries = new List<Entry> { new() { Name = "" } };
        int maxRank = 1;
        foreach (var named in adapters)
        {
            if (!names.Add(named.Name)) throw new ArgumentException($"adapter name '{named.Name}' is given twice");
            // The one adapter_config.json reader (PEFT's defaults, rank/alpha patterns, rsLoRA; unsupported kinds refused).
            var file = AdapterConfig.Read(named.Directory);
            string weights = Path.Combine(named.Directory, AdapterConfig.WeightsName);
            if (!File.Exists(weights)) throw new ModelFormatException(weights, "not found; an adapter directory holds adapter_config.json and adapter_model.safetensors as PEFT writes them.");
            if (file.TargetParameters.Count > 0)
                throw new ModelFormatException(file.FilePath, $"target_parameters names {string.Join(", ", file.TargetParameters)} (PEFT's ParamWrapper on the experts or the router): several adapters served side by side cover linear modules only; load this adapter alone, or merge it into the model.");
            file.Apply(model.Setup); // refuses targets that can only be merged (embeddings, the head), as chat and eval do
            var targets = file.TargetModules.ToHashSet(StringComparer.Ordinal);
            if (targets.Count == 0) throw new ModelFormatException(file.FilePath, $"target_modules is empty; name some of {string.Join(", ", TrainableModules.LinearModules)}.");
            int index = entries.Count;
            entries.Add(new Entry { Name = named.Name });
            using var reader = SafetensorsReader.Open(weights);
            var source = new SafetensorsWeights(reader, named.Directory);
            var used = new HashSet<string>(StringComparer.Ordinal);
            float[] Read(string key, int[] shape)
            {
                if (!reader.Contains(key))
                    throw new ModelFormatException(weights, $"tensor \"{key}\" is missing; the adapter's target_modules do not match its weights.");
                var values = new float[shape.Aggregate(1L, (a, b) => a * b)];
                source.Read(key, shape, values);
                used.Add(key);
                return values;
            }
            foreach (var layer in model.DecoderLayers)
                foreach (var lin in layer.Linears.Where(l => targets.Contains(l.ShortName)))
                {
                    int rank = file.RankFor(lin.Module);
                    float scale = (float)file.ScaleFor(lin.Module);
                    maxRank = Math.Max(maxRank, rank);
                    host.Add((index, "A", lin, [rank, lin.In], Read($"base_model.model.{lin.Module}.lora_A.weight", [rank, lin.In]), scale));
                    host.Add((index, "B", lin, [lin.Out, rank], Read($"base_model.model.{lin.Module}.lora_B.weight", [lin.Out, rank]), scale));
                }
            foreach (string key in reader.Tensors.Keys.Where(k => !used.Contains(k)).Order(StringComparer.Ordinal))
            {
                string name = key.StartsWith("base_model.model.", StringComparison.Ordinal) ? key["base_model.model.".Length..] : key;
                if (name.Contains(".lora_", StringComparison.Ordinal)) continue; // LoRA of a module outside target_modules: PEFT ignores it too
                if (!PerRowModules.Contains(name))
                    throw new ModelFormatException(weights, $"tensor \"{key}\" is a trained copy of {name[..name.LastIndexOf('.')]} (modules_to_save); " +
                        "serving applies copies of embed_tokens, norm and lm_head per request, but not of a layer's module: merge the adapter (the merge stage) and serve the merged model.");
                int[] shape = name == "model.norm.weight" ? [spec.HiddenSize] : [spec.VocabSize, spec.HiddenSize];
                host.Add((index, name, null, shape, Read(key, shape), 0f));
            }
        }
        var b = new TensorArena.Builder();
        var handles = host.Select((h, i) => b.Add($"adapter{h.Entry}.{h.Linear?.Module ?? h.Kind}.{h.Kind}", model.Backend.ComputeDType, h.Shape)).ToArray();
        int scratch = b.Add("adapter_xa", model.Backend.ComputeDType, Math.Max(1, maxTokens), maxRank);
        var arena = b.Build(model.Backend);
        var result = new AdapterBank(model.Backend, arena, [.. entries], arena[scratch], spec.TieWordEmbeddings);
        for (int i = 0; i < host.Count; i++)
        {
            var h = host[i];
            var t = arena[handles[i]];
            model.Backend.Upload(t, h.Values);
            var e = result._entries[h.Entry];
            switch (h.Kind)
            {
                case "A": break;
                case "B":
                    var a = arena[handles[i - 1]];
                    e.Lora[h.Linear!] = new LoraWeights(a, t, h.Scale, h.Shape[1]);
                    break;
                case "model.embed_tokens.weight": e.Embed = t; break;
                case "model.norm.weight": e.Norm = t; break;
                case "lm_head.weight": e.Head = t; break;
            }
        }
        return result;
    }

    public void Dispose() => _arena.Dispose();
}
