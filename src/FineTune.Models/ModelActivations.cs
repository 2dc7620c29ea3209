using FineTune.Engine;

namespace FineTune.Models;

/// <summary>Activations one decoder layer keeps for its backward, for up to Capacity tokens.</summary>
internal sealed class LayerActivations
{
    public Tensor Ln1 = null!, Rstd1 = null!, Q = null!, K = null!, V = null!, Att = null!, Lse = null!;
    public Tensor? QPre, KPre, QRstd, KRstd;
    public Tensor ResMid = null!, Ln2 = null!, Rstd2 = null!, Gate = null!, Up = null!, Act = null!;
    /// <summary>Sandwich blocks: o_proj's and down_proj's outputs before their post-norms, and those norms' rstd.</summary>
    public Tensor? AttnOut, MlpOut, RstdPostAttn, RstdPostFf;
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
    /// <summary>
    /// The set's bytes from resMid to its last MLP activation (resMid, ln2, rstd2, gate, up, act; a selective set's
    /// resMid, rstd2, gate, up), contiguous in the arena, as F32 words: once the layer's MLP backward is done nothing
    /// reads them before they are written again, so its attention backward may use them as workspace
    /// (<see cref="IBackend.AttentionBackward"/>'s scratch).
    /// </summary>
    public Tensor SpentAfterMlpBackward = null!;
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
    /// <summary>Per decoder layer, its activations (the recomputed layers all share one set).</summary>
    public LayerActivations[] Layers { get; }
    /// <summary>What each layer keeps (the plan this arena was carved for).</summary>
    public IReadOnlyList<LayerStorage> Storage { get; }
    public Tensor Dres, Dln, Dq, Dk, Dv, Datt, Dxa, DropScratch;
    public Tensor? DqPre, DkPre;
    /// <summary>Sandwich blocks: ∂L/∂(a sub-layer's output before its post-norm).</summary>
    public Tensor? DsubLayer;
    /// <summary>Final logit soft-cap: the capped logits of a chunk (its backward reads them after the loss overwrote the logits).</summary>
    public Tensor? CappedLogits;
    public Tensor LnF, RstdF, Hc, Dhc, Logits, LossSum;
    /// <summary>
    /// F32 per gathered row: log p(label) of each labelled row (or a value head's output), and the per-row gradient
    /// scale of the sequence objectives' backward (or ∂L/∂value).
    /// </summary>
    public Tensor CompactLogProbs, CompactScales;
    public Tensor Ids, Labels, Positions, Segments, CompactRows, CompactLabels;
    /// <summary>
    /// fp8_scaling: delayed, training: the FP8 codes that SwiGLU's fused casts write ([capacity, intermediate] bytes in I32
    /// words, and a scale inverse): <see cref="ActCodes"/> holds act's in the forward (read by down_proj's product) and
    /// dgate's in the backward (gate_proj's input gradient), <see cref="DupCodes"/> dup's (up_proj's); <see cref="NormCodes"/>
    /// ([capacity, hidden] bytes) those the RMSNorms' fused casts write, ln1's for q/k/v's products and then ln2's for
    /// gate/up's (each read right after it is written, in the forward and in a recompute). Null otherwise.
    /// </summary>
    public Fp8Operand? ActCodes, DupCodes, NormCodes;

    public ModelActivations(IBackend backend, TransformerSpec spec, IReadOnlyList<DecoderLayer> layers, bool checkpointing, bool training, int capacity, int chunkRows, int? residuals = null,
        bool fp8Codes = false)
        : this(backend, spec, layers, Enumerable.Repeat(checkpointing ? LayerStorage.Recompute : LayerStorage.Full, spec.NumLayers).ToArray(),
            training, capacity, chunkRows, residuals, fp8Codes)
    {
    }

    /// <summary>
    /// Carves the arena for <paramref name="storage"/>: one set per full or selective layer, one set shared by every
    /// recomputed layer, and (with selective layers) one shared ln1, ln2 and act that those layers recompute before their backward.
    /// <paramref name="fp8Codes"/> (fp8_scaling: delayed) adds <see cref="ActCodes"/>, <see cref="DupCodes"/> and
    /// <see cref="NormCodes"/> to a training arena.
    /// </summary>
    public ModelActivations(IBackend backend, TransformerSpec spec, IReadOnlyList<DecoderLayer> layers, IReadOnlyList<LayerStorage> storage,
        bool training, int capacity, int chunkRows, int? residuals = null, bool fp8Codes = false)
    {
        Capacity = capacity;
        ChunkRows = chunkRows;
        Storage = storage;
        int n = capacity;
        DType f = backend.ComputeDType;
        var b = new TensorArena.Builder();
        var h = new Dictionary<string, int>();
        int Add(string name, DType dt, params int[] shape) => h[name] = b.Add(name, dt, shape);

        // Set s serves layer setLayer[s] (the shared recompute set: the first recomputed layer, whose LoRA groups it sizes).
        var setOfLayer = new int[spec.NumLayers];
        var setLayer = new List<int>();
        int shared = -1;
        for (int l = 0; l < spec.NumLayers; l++)
        {
            if (storage[l] == LayerStorage.Recompute)
            {
                if (shared < 0) { shared = setLayer.Count; setLayer.Add(l); }
                setOfLayer[l] = shared;
                continue;
            }
            setOfLayer[l] = setLayer.Count;
            setLayer.Add(l);
        }
        bool anySelective = storage.Contains(LayerStorage.Selective);
        DeclareFixedHead(Add, f, spec, residuals ?? spec.NumLayers + 1, n);
        for (int s = 0; s < setLayer.Count; s++)
            DeclareSet(Add, f, spec, layers[setLayer[s]], $"{s}.", n, storage[setLayer[s]] == LayerStorage.Selective);
        if (anySelective) DeclareSelectiveScratch(Add, f, spec, n);
        if (fp8Codes && training) DeclareFp8Codes(Add, spec, n);
        DeclareFixedTail(Add, f, spec, layers, training, n, chunkRows);
        _arena = b.Build(backend);

        Tensor T(string name) => _arena[h[name]];
        Tensor? O(string name) => h.TryGetValue(name, out int i) ? _arena[i] : null;
        Residual = Enumerable.Range(0, residuals ?? spec.NumLayers + 1).Select(l => T($"res{l}")).ToArray();
        var sets = new LayerActivations[setLayer.Count];
        for (int s = 0; s < sets.Length; s++)
        {
            bool selective = storage[setLayer[s]] == LayerStorage.Selective;
            var a = new LayerActivations
            {
                Ln1 = selective ? T("sel.ln1") : T($"{s}.ln1"), Rstd1 = T($"{s}.rstd1"), Q = T($"{s}.q"), K = T($"{s}.k"), V = T($"{s}.v"),
                QPre = O($"{s}.qpre"), KPre = O($"{s}.kpre"), QRstd = O($"{s}.qrstd"), KRstd = O($"{s}.krstd"),
                Att = T($"{s}.att"), Lse = T($"{s}.lse"), ResMid = T($"{s}.resmid"), Ln2 = selective ? T("sel.ln2") : T($"{s}.ln2"), Rstd2 = T($"{s}.rstd2"),
                Gate = T($"{s}.gate"), Up = T($"{s}.up"), Act = selective ? T("sel.act") : T($"{s}.act"),
                AttnOut = O($"{s}.attnout"), MlpOut = O($"{s}.mlpout"), RstdPostAttn = O($"{s}.rstdpa"), RstdPostFf = O($"{s}.rstdpf"),
            };
            a.SpentAfterMlpBackward = Span(a.ResMid, selective ? a.Up : a.Act, $"{s}.spent");
            var layer = layers[setLayer[s]];
            var linears = layer.Linears.ToArray();
            for (int g = 0; g < DecoderLayer.InputSetCount; g++)
            {
                if (layer.LoraGroups[g] is not { } group) continue;
                var store = T($"{s}.xa{g}");
                a.LoraXaT[g] = store;
                for (int j = 0; j < group.Linears.Length; j++)
                    a.LoraXa[Array.IndexOf(linears, group.Linears[j])] = store.View((long)group.RowOffset(j) * n, [n, group.Linears[j].Lora!.Rank]);
            }
            sets[s] = a;
        }
        Layers = setOfLayer.Select(s => sets[s]).ToArray();
        Tensor Opt(string name) => O(name) ?? T("hc");
        Dres = Opt("dres"); Dln = Opt("dln"); Dq = Opt("dq"); Dk = Opt("dk"); Dv = Opt("dv"); Datt = Opt("datt");
        Dxa = Opt("dxa"); DropScratch = Opt("drop");
        DqPre = O("dqpre"); DkPre = O("dkpre"); DsubLayer = O("dsub"); CappedLogits = O("cappedlogits");
        LnF = T("lnf"); RstdF = T("rstdf"); Hc = T("hc"); Dhc = T("dhc"); Logits = T("logits"); LossSum = T("loss");
        CompactLogProbs = T("clogp"); CompactScales = T("cscale");
        Ids = T("ids"); Labels = T("labels"); Positions = T("pos"); Segments = T("seg"); CompactRows = T("crow"); CompactLabels = T("clab");
        if (fp8Codes && training)
        {
            ActCodes = new Fp8Operand(T("fp8.act_codes"), T("fp8.act_scale_inv"));
            DupCodes = new Fp8Operand(T("fp8.dup_codes"), T("fp8.dup_scale_inv"));
            NormCodes = new Fp8Operand(T("fp8.norm_codes"), T("fp8.norm_scale_inv"));
        }
        Training = training;
    }

    // [first, last] of one arena as F32 words (every tensor starts on a 256-byte boundary, so the span's start is 4-aligned).
    private static Tensor Span(Tensor first, Tensor last, string name)
    {
        long start = first.Offset * first.DType.ByteSize(), end = (last.Offset + last.Length) * last.DType.ByteSize();
        long words = (end - start) / sizeof(float);
        return new Tensor(first.Buffer, start / sizeof(float), DType.F32, [checked((int)(words / 64)), 64], name);
    }

    /// <summary>Bytes of <see cref="LayerActivations.SpentAfterMlpBackward"/> at <paramref name="capacity"/> tokens (a selective set's, the smaller).</summary>
    public static long SpentAfterMlpBackwardBytes(DType computeDType, TransformerSpec spec, int capacity) =>
        (long)capacity * (spec.HiddenSize + 2L * DenseIntermediate(spec)) * computeDType.ByteSize();

    /// <summary>The arena's parts at <paramref name="capacity"/> tokens (exact up to each tensor's 256-byte alignment): what a plan spends.</summary>
    public static ActivationBytes Bytes(DType computeDType, TransformerSpec spec, IReadOnlyList<DecoderLayer> layers, bool training, int capacity, int chunkRows,
        bool fp8Codes = false)
    {
        long Measure(Action<Func<string, DType, int[], int>> declare)
        {
            var b = new TensorArena.Builder();
            declare((name, dt, shape) => b.Add(name, dt, shape));
            return b.ByteLength;
        }
        int n = capacity;
        // The largest layer's set: ranks may differ per layer (rank_pattern), and the estimate should not fall short.
        var widest = layers.MaxBy(l => l.LoraGroups.Sum(g => g?.Rows ?? 0))!;
        var f = computeDType;
        long fixedBytes = Measure(add =>
        {
            DeclareFixedHead(add, f, spec, spec.NumLayers + 1, n);
            if (fp8Codes && training) DeclareFp8Codes(add, spec, n);
            DeclareFixedTail(add, f, spec, layers, training, n, chunkRows);
        });
        long full = Measure(add => DeclareSet(add, f, spec, widest, "", n, selective: false));
        long selective = Measure(add => DeclareSet(add, f, spec, widest, "", n, selective: true));
        long scratch = Measure(add => DeclareSelectiveScratch(add, f, spec, n));
        if (spec.Moe is { } moe)
        {
            // The experts' arena follows the same plan (CausalLM.ExpertSetOfLayer): one set per kept layer, one shared by
            // the recomputed ones, and its gradient scratch and statistics once.
            // With LoRA on the experts, each set also keeps s·x·Aᵀ of gate_up and down; with LoRA on the router, x·Aᵀ.
            var (gateUpRank, downRank, routerRank) = CausalLM.RanksOf(layers);
            long Experts(int sets) => ExpertActivations.Bytes(f, n, sets, training, spec.HiddenSize, moe.NumExperts, moe.NumExpertsPerTok, moe.ExpertIntermediateSize,
                gateUpRank, downRank, routerRank);
            long expertFixed = Experts(0), expertSet = Experts(1) - expertFixed;
            fixedBytes += expertFixed;
            full += expertSet;
            selective += expertSet;
        }
        return new ActivationBytes(fixedBytes, full, selective, scratch);
    }
    /// <summary>The dense MLP's width: a model whose every MLP is a mixture of experts keeps no dense MLP activations (the experts have their own).</summary>
    private static int DenseIntermediate(TransformerSpec spec) => spec.HasDenseLayers ? spec.IntermediateSize : 1;

    private static void DeclareFixedHead(Func<string, DType, int[], int> add, DType f, TransformerSpec spec, int residuals, int n)
    {
        for (int l = 0; l < residuals; l++) add($"res{l}", f, [n, spec.HiddenSize]);
    }

    /// <summary>One layer's saved activations under <paramref name="prefix"/>; a selective set has no ln1, ln2 and act of its own.</summary>
    private static void DeclareSet(Func<string, DType, int[], int> add, DType f, TransformerSpec spec, DecoderLayer layer, string prefix, int n, bool selective)
    {
        int c = spec.HiddenSize, qd = spec.QDim, kvd = spec.KvDim, inter = DenseIntermediate(spec);
        if (!selective) add($"{prefix}ln1", f, [n, c]);
        add($"{prefix}rstd1", DType.F32, [n]);
        add($"{prefix}q", f, [n, qd]); add($"{prefix}k", f, [n, kvd]); add($"{prefix}v", f, [n, kvd]);
        if (spec.QkNorm)
        {
            add($"{prefix}qpre", f, [n, qd]); add($"{prefix}kpre", f, [n, kvd]);
            add($"{prefix}qrstd", DType.F32, [n * spec.NumHeads]); add($"{prefix}krstd", DType.F32, [n * spec.NumKvHeads]);
        }
        add($"{prefix}att", f, [n, qd]); add($"{prefix}lse", DType.F32, [n * spec.NumHeads]);
        add($"{prefix}resmid", f, [n, c]);
        if (!selective) add($"{prefix}ln2", f, [n, c]);
        add($"{prefix}rstd2", DType.F32, [n]);
        add($"{prefix}gate", f, [n, inter]); add($"{prefix}up", f, [n, inter]);
        if (!selective) add($"{prefix}act", f, [n, inter]);
        if (spec.Sandwich)
        {
            add($"{prefix}attnout", f, [n, c]); add($"{prefix}mlpout", f, [n, c]);
            add($"{prefix}rstdpa", DType.F32, [n]); add($"{prefix}rstdpf", DType.F32, [n]);
        }
        for (int g = 0; g < DecoderLayer.InputSetCount; g++)
            if (layer.LoraGroups[g] is { } group) add($"{prefix}xa{g}", f, [group.Rows, n]);
    }

    private static void DeclareSelectiveScratch(Func<string, DType, int[], int> add, DType f, TransformerSpec spec, int n)
    {
        add("sel.ln1", f, [n, spec.HiddenSize]);
        add("sel.ln2", f, [n, spec.HiddenSize]);
        add("sel.act", f, [n, DenseIntermediate(spec)]);
    }

    /// <summary>Gradient scratch (training), the head's buffers and the token tensors.</summary>
    private static void DeclareFixedTail(Func<string, DType, int[], int> add, DType f, TransformerSpec spec, IReadOnlyList<DecoderLayer> layers, bool training, int n, int chunkRows)
    {
        int c = spec.HiddenSize, qd = spec.QDim, kvd = spec.KvDim;
        int maxRows = 1, maxIn = 1;
        foreach (var layer in layers)
        {
            foreach (var group in layer.LoraGroups)
                if (group is not null) maxRows = Math.Max(maxRows, group.Rows);
            foreach (var lin in layer.Linears)
                if (lin.Lora is { Dropout: > 0 }) maxIn = Math.Max(maxIn, lin.In);
        }
        if (training)
        {
            add("dres", f, [n, c]); add("dln", f, [n, c]); add("dq", f, [n, qd]); add("dk", f, [n, kvd]); add("dv", f, [n, kvd]);
            if (spec.QkNorm) { add("dqpre", f, [n, qd]); add("dkpre", f, [n, kvd]); }
            if (spec.Sandwich) add("dsub", f, [n, c]);
            add("datt", f, [n, qd]); // dact, dgate, dup: in place over act, gate, up
            add("dxa", f, [maxRows, n]); add("drop", f, [n, maxIn]);
        }
        add("lnf", f, [n, c]); add("rstdf", DType.F32, [n]); add("hc", f, [n, c]); add("dhc", f, [training ? n : 1, c]);
        add("logits", f, [chunkRows, spec.VocabSize]); add("loss", DType.F32, [1]);
        if (spec.FinalLogitSoftcap > 0 && training) add("cappedlogits", f, [chunkRows, spec.VocabSize]);
        add("clogp", DType.F32, [n]); add("cscale", DType.F32, [n]);
        foreach (var name in new[] { "ids", "labels", "pos", "seg", "crow", "clab" }) add(name, DType.I32, [n]);
    }

    /// <summary>
    /// The fused FP8 casts' codes: one byte per [n, intermediate] value of act (then dgate), and of dup; one per [n, hidden]
    /// value of ln1 (then ln2).
    /// </summary>
    private static void DeclareFp8Codes(Func<string, DType, int[], int> add, TransformerSpec spec, int n)
    {
        int words = QuantizedWeight.WordsFor((long)n * DenseIntermediate(spec));
        add("fp8.act_codes", DType.I32, [words]); add("fp8.act_scale_inv", DType.F32, [1]);
        add("fp8.dup_codes", DType.I32, [words]); add("fp8.dup_scale_inv", DType.F32, [1]);
        add("fp8.norm_codes", DType.I32, [QuantizedWeight.WordsFor((long)n * spec.HiddenSize)]); add("fp8.norm_scale_inv", DType.F32, [1]);
    }

    public bool Training { get; }
    public long ByteLength => _arena.ByteLength;

    public void Dispose() => _arena.Dispose();
}
