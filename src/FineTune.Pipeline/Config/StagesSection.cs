using System.ComponentModel;

namespace FineTune.Pipeline.Config;

/// <summary>
/// One stage of a pipeline: the key it has under <c>stages</c>, its kind, its block, and the stages it reads.
/// A key that is a kind's name (<c>train:</c>) is a stage of that kind; any other name (<c>dpo:</c>) says its kind with
/// <c>kind:</c>. Several stages may share a kind.
/// </summary>
/// <param name="Name">The key under <c>stages</c>: the stage's name in the lock file, `status`, `dag`, `run --stage` and
/// its work directory (.finetune/work/&lt;name&gt;).</param>
/// <param name="Block">Its block (a <see cref="TrainConfig"/> for a train stage), defaults applied.</param>
public sealed record StageInstance(string Name, StageKind Kind, object Block)
{
    /// <summary>The stages its <c>from:</c> names, as written (structure: not part of its fingerprint parameters).</summary>
    public IReadOnlyList<string> From { get; init; } = [];

    /// <summary>
    /// The stage it reads for each kind its description reads (and, for a train stage built on another, that train
    /// stage): resolved by the loader from <see cref="From"/> and the pipeline's stages. Empty on a pipeline built in
    /// code; <see cref="StagesSection.Resolved"/> fills it the same way.
    /// </summary>
    public IReadOnlyDictionary<StageKind, string> Reads { get; init; } = new Dictionary<StageKind, string>();
}

/// <summary>
/// The <c>stages</c> block. A stage is part of the pipeline when its block is present (an empty block means all defaults).
/// The properties are the stages named after their kind (today's files, and what the schema offers editors); <see cref="All"/>
/// holds every stage, named ones included, in pipeline order.
/// </summary>
public sealed record StagesSection
{
    private IReadOnlyList<StageInstance> _all = [];

    [Description("Fetch or generate the base model.")]
    public DownloadConfig? Download { get => Block<DownloadConfig>("download"); init => Put("download", StageKind.Download, value); }
    [Description("Read and check the datasets named in data.dataset (or in its own dataset key).")]
    public RegisterConfig? Register { get => Block<RegisterConfig>("register"); init => Put("register", StageKind.Register, value); }
    [Description("Apply the chat template, tokenize, split train/val, pack.")]
    public SplitConfig? Split { get => Block<SplitConfig>("split"); init => Put("split", StageKind.Split, value); }
    [Description("Fine-tune (LoRA, freeze or full).")]
    public TrainConfig? Train { get => Block<TrainConfig>("train"); init => Put("train", StageKind.Train, value); }
    [Description("Evaluate on the validation split (loss, perplexity, generation metrics).")]
    public EvalConfig? Eval { get => Block<EvalConfig>("eval"); init => Put("eval", StageKind.Eval, value); }
    [Description("Merge the adapter into the base model.")]
    public MergeConfig? Merge { get => Block<MergeConfig>("merge"); init => Put("merge", StageKind.Merge, value); }
    [Description("Write deployable formats (HF safetensors, GGUF + Ollama Modelfile).")]
    public ExportConfig? Export { get => Block<ExportConfig>("export"); init => Put("export", StageKind.Export, value); }

    /// <summary>Every stage in pipeline order: by kind (download … export), stages of one kind in the order the file lists them.</summary>
    public IReadOnlyList<StageInstance> All { get => _all; internal init => _all = Ordered(value); }

    /// <summary>The stage of this name, or null.</summary>
    public StageInstance? this[string name] => _all.FirstOrDefault(s => s.Name == name);

    /// <summary>The stages of one kind, in pipeline order.</summary>
    public IReadOnlyList<StageInstance> OfKind(StageKind kind) => _all.Where(s => s.Kind == kind).ToArray();

    /// <summary>The stages that read <paramref name="name"/>.</summary>
    public IReadOnlyList<StageInstance> Readers(string name) => _all.Where(s => s.Reads.Values.Contains(name)).ToArray();

    /// <summary>The stage that <paramref name="stage"/> reads for <paramref name="kind"/>, or null.</summary>
    public StageInstance? Provider(StageInstance stage, StageKind kind) => stage.Reads.TryGetValue(kind, out var n) ? this[n] : null;

    /// <summary>This section with <paramref name="stage"/> in place of the stage of its name.</summary>
    public StagesSection With(StageInstance stage) => this with { All = _all.Select(s => s.Name == stage.Name ? stage : s).ToArray() };

    /// <summary>
    /// Each stage's <see cref="StageInstance.Reads"/> by the provider rule (the stage <c>from</c> names, else the only one
    /// of that kind, else the one named after the kind), for a section built in code; the loader resolves (and checks) the same way.
    /// </summary>
    public StagesSection Resolved() => this with { All = _all.Select(s => s with { Reads = StageProviders.Resolve(this, s, null) }).ToArray() };

    private T? Block<T>(string name) where T : class => this[name]?.Block as T;

    private void Put(string name, StageKind kind, object? block)
    {
        if (block is null) _all = _all.Where(s => s.Name != name).ToArray();
        else if (this[name] is not null) _all = _all.Select(s => s.Name == name ? s with { Block = block } : s).ToArray();
        else _all = Ordered(_all.Append(new StageInstance(name, kind, block)));
    }

    // A stable sort: stages of one kind keep the file's order, which is what a train stage's from: is checked against.
    private static IReadOnlyList<StageInstance> Ordered(IEnumerable<StageInstance> stages) =>
        stages.Select((s, i) => (s, i)).OrderBy(x => (int)x.s.Kind).ThenBy(x => x.i).Select(x => x.s).ToArray();
}

/// <summary>The keys of a stage's block that are structure, not settings: never part of its fingerprint parameters.</summary>
public static class StageKeys
{
    /// <summary><c>kind: train</c>: what a stage under another name than its kind's is.</summary>
    public const string Kind = "kind";

    /// <summary><c>from: sft</c> or <c>from: [sft, pref_split]</c>: the stages it reads, where the pipeline has several of a kind.</summary>
    public const string From = "from";
}
