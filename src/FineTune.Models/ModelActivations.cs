using FineTune.Engine;

namespace FineTune.Models;

/// <summary>Activations one decoder layer keeps for its backward, for up to Capacity tokens.</summary>
internal sealed class LayerActivations
{
    public Tensor Ln1 = null!, Rstd1 = null!, Q = null!, K = null!, V = null!, Att = null!, Lse = null!;
    public Tensor? QPre, KPre, QRstd, KRstd;
    public Tensor ResMid = null!, Ln2 = null!, Rstd2 = null!, Gate = null!, Up = null!, Act = null!;
    /// <summary>
    /// Per input set with LoRA (<see cref="DecoderLayer.InputSets"/>), storage for the group's xa: the grouped path
    /// views it as xaᵀ [g·r, tokens] (adapter j's block [r, tokens] at j·r·tokens).
    /// </summary>
    public Tensor?[] LoraXaT = new Tensor?[DecoderLayer.InputSetCount];
    /// <summary>
    /// The per-linear path's x·Aᵀ [capacity, r] of each LoRA linear, indexed like <see cref="DecoderLayer.Linears"/>
    /// (null without LoRA): views of the same storage, adapter j's at j·r·capacity.
    /// </summary>
    public Tensor?[] LoraXa = new Tensor?[7];
}

/// <summary>
/// Every activation and gradient buffer of a forward+backward, carved from one arena for Capacity tokens
/// (batch × sequence). Calls with fewer tokens use leading views; a bigger batch rebuilds the arena once.
/// </summary>
internal sealed class ModelActivations : IDisposable
{
    private readonly TensorArena _arena;

    public int Capacity { get; }
    public int ChunkRows { get; }
    public Tensor[] Residual { get; }
    public LayerActivations[] Layers { get; }
    public Tensor Dres, Dln, Dq, Dk, Dv, Datt, Dgate, Dup, Dact, Dxa, DropScratch;
    public Tensor? DqPre, DkPre;
    public Tensor LnF, RstdF, Hc, Dhc, Logits, LossSum;
    /// <summary>
    /// F32 per gathered row: log p(label) of each labelled row (or a value head's output), and the per-row gradient
    /// scale of the sequence objectives' backward (or ∂L/∂value).
    /// </summary>
    public Tensor CompactLogProbs, CompactScales;
    public Tensor Ids, Labels, Positions, Segments, CompactRows, CompactLabels;

    public ModelActivations(IBackend backend, TransformerSpec spec, IReadOnlyList<DecoderLayer> layers, bool checkpointing, bool training, int capacity, int chunkRows, int? residuals = null)
    {
        Capacity = capacity;
        ChunkRows = chunkRows;
        // A model whose every MLP is a mixture of experts keeps no dense MLP activations (the experts have their own).
        int n = capacity, c = spec.HiddenSize, qd = spec.QDim, kvd = spec.KvDim, inter = spec.HasDenseLayers ? spec.IntermediateSize : 1;
        DType f = backend.ComputeDType;
        var b = new TensorArena.Builder();
        var h = new Dictionary<string, int>();
        int Add(string name, DType dt, params int[] shape) => h[name] = b.Add(name, dt, shape);

        int residualCount = residuals ?? spec.NumLayers + 1;
        for (int l = 0; l < residualCount; l++) Add($"res{l}", f, n, c);
        int sets = checkpointing ? 1 : spec.NumLayers;
        int maxRows = 1, maxIn = 1;
        for (int s = 0; s < sets; s++)
        {
            Add($"{s}.ln1", f, n, c); Add($"{s}.rstd1", DType.F32, n);
            Add($"{s}.q", f, n, qd); Add($"{s}.k", f, n, kvd); Add($"{s}.v", f, n, kvd);
            if (spec.QkNorm)
            {
                Add($"{s}.qpre", f, n, qd); Add($"{s}.kpre", f, n, kvd);
                Add($"{s}.qrstd", DType.F32, n * spec.NumHeads); Add($"{s}.krstd", DType.F32, n * spec.NumKvHeads);
            }
            Add($"{s}.att", f, n, qd); Add($"{s}.lse", DType.F32, n * spec.NumHeads);
            Add($"{s}.resmid", f, n, c); Add($"{s}.ln2", f, n, c); Add($"{s}.rstd2", DType.F32, n);
            Add($"{s}.gate", f, n, inter); Add($"{s}.up", f, n, inter); Add($"{s}.act", f, n, inter);
            for (int g = 0; g < DecoderLayer.InputSetCount; g++)
                if (layers[s].LoraGroups[g] is { } group) Add($"{s}.xa{g}", f, group.Rows, n);
        }
        foreach (var layer in layers)
        {
            foreach (var group in layer.LoraGroups)
                if (group is not null) maxRows = Math.Max(maxRows, group.Rows);
            foreach (var lin in layer.Linears)
                if (lin.Lora is { Dropout: > 0 }) maxIn = Math.Max(maxIn, lin.In);
        }
        if (training)
        {
            Add("dres", f, n, c); Add("dln", f, n, c); Add("dq", f, n, qd); Add("dk", f, n, kvd); Add("dv", f, n, kvd);
            if (spec.QkNorm) { Add("dqpre", f, n, qd); Add("dkpre", f, n, kvd); }
            Add("datt", f, n, qd); Add("dgate", f, n, inter); Add("dup", f, n, inter); Add("dact", f, n, inter);
            Add("dxa", f, maxRows, n); Add("drop", f, n, maxIn);
        }
        Add("lnf", f, n, c); Add("rstdf", DType.F32, n); Add("hc", f, n, c); Add("dhc", f, training ? n : 1, c);
        Add("logits", f, chunkRows, spec.VocabSize); Add("loss", DType.F32, 1);
        Add("clogp", DType.F32, n); Add("cscale", DType.F32, n);
        foreach (var name in new[] { "ids", "labels", "pos", "seg", "crow", "clab" }) Add(name, DType.I32, n);
        _arena = b.Build(backend);

        Tensor T(string name) => _arena[h[name]];
        Tensor? O(string name) => h.TryGetValue(name, out int i) ? _arena[i] : null;
        Residual = Enumerable.Range(0, residualCount).Select(l => T($"res{l}")).ToArray();
        Layers = new LayerActivations[sets];
        for (int s = 0; s < sets; s++)
        {
            var a = new LayerActivations
            {
                Ln1 = T($"{s}.ln1"), Rstd1 = T($"{s}.rstd1"), Q = T($"{s}.q"), K = T($"{s}.k"), V = T($"{s}.v"),
                QPre = O($"{s}.qpre"), KPre = O($"{s}.kpre"), QRstd = O($"{s}.qrstd"), KRstd = O($"{s}.krstd"),
                Att = T($"{s}.att"), Lse = T($"{s}.lse"), ResMid = T($"{s}.resmid"), Ln2 = T($"{s}.ln2"), Rstd2 = T($"{s}.rstd2"),
                Gate = T($"{s}.gate"), Up = T($"{s}.up"), Act = T($"{s}.act"),
            };
            var linears = layers[s].Linears.ToArray();
            for (int g = 0; g < DecoderLayer.InputSetCount; g++)
            {
                if (layers[s].LoraGroups[g] is not { } group) continue;
                var store = T($"{s}.xa{g}");
                a.LoraXaT[g] = store;
                for (int j = 0; j < group.Linears.Length; j++)
                    a.LoraXa[Array.IndexOf(linears, group.Linears[j])] = store.View((long)group.RowOffset(j) * n, [n, group.Linears[j].Lora!.Rank]);
            }
            Layers[s] = a;
        }
        Tensor Opt(string name) => O(name) ?? T("hc");
        Dres = Opt("dres"); Dln = Opt("dln"); Dq = Opt("dq"); Dk = Opt("dk"); Dv = Opt("dv"); Datt = Opt("datt");
        Dgate = Opt("dgate"); Dup = Opt("dup"); Dact = Opt("dact"); Dxa = Opt("dxa"); DropScratch = Opt("drop");
        DqPre = O("dqpre"); DkPre = O("dkpre");
        LnF = T("lnf"); RstdF = T("rstdf"); Hc = T("hc"); Dhc = T("dhc"); Logits = T("logits"); LossSum = T("loss");
        CompactLogProbs = T("clogp"); CompactScales = T("cscale");
        Ids = T("ids"); Labels = T("labels"); Positions = T("pos"); Segments = T("seg"); CompactRows = T("crow"); CompactLabels = T("clab");
        Training = training;
    }

    public bool Training { get; }
    public long ByteLength => _arena.ByteLength;

    public void Dispose() => _arena.Dispose();
}
