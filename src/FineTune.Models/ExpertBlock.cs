using FineTune.Engine;

namespace FineTune.Models;

/// <summary>
/// A layer's mixture of experts: the router {mlp}.gate [E, hidden] and each projection of all E experts as one stacked
/// parameter (gate and up [E, inter, hidden], down [E, hidden, inter]), so that one grouped product per projection runs
/// every expert over its rows. The stacks are named {mlp}.experts.{gate_proj|up_proj|down_proj} (mixtral: w1, w3, w2)
/// without ".weight"; the files hold one tensor per expert ({mlp}.experts.E.gate_proj.weight), see <see cref="ExpertKey"/>.
/// </summary>
internal sealed class ExpertBlock
{
    public required string Module { get; init; }
    public required Parameter Router { get; init; }
    public required Parameter Gate { get; init; }
    public required Parameter Up { get; init; }
    public required Parameter Down { get; init; }
    public required int TopK { get; init; }
    public required bool NormalizeTopK { get; init; }

    /// <summary>LoRA on gate and up together (PEFT's target_parameter gate_up_proj), null without.</summary>
    public ExpertLora? GateUpLora { get; set; }
    /// <summary>LoRA on down (PEFT's target_parameter down_proj), null without.</summary>
    public ExpertLora? DownLora { get; set; }
    /// <summary>
    /// LoRA on the router (lora_target gate; PEFT's ParamWrapper on transformers 5's {mlp}.gate.weight): logits +=
    /// s·(x·Aᵀ)·Bᵀ, A [r, hidden], B [E, r]; null without.
    /// </summary>
    public LoraAdapter? RouterLora { get; set; }

    public int Count => Router.Shape[0];
    public int Intermediate => Gate.Shape[1];
    public IEnumerable<Parameter> Parameters => [Router, Gate, Up, Down];
    public bool HasTrainable => Parameters.Any(p => p.IsTrainable) || GateUpLora is not null || DownLora is not null || RouterLora is not null;

    /// <summary>transformers 5's fused parameter names, which PEFT's target_parameters name.</summary>
    public const string PeftGateUp = "gate_up_proj", PeftDown = "down_proj";

    /// <summary>The stacked parameter's per-expert tensor name in the files: {mlp}.experts.E.gate_proj.weight.</summary>
    public static string ExpertKey(string stackName, int expert)
    {
        int dot = stackName.LastIndexOf('.');
        return $"{stackName[..dot]}.{expert}.{stackName[(dot + 1)..]}.weight";
    }

    /// <summary>Whether a parameter name is a stacked expert projection of a family with experts.</summary>
    public static bool IsStack(ModelArchitecture family, string name) =>
        family.Experts is { } x && !name.EndsWith(".weight", StringComparison.Ordinal)
        && name.Contains($".{x.ExpertList}.", StringComparison.Ordinal);
}

/// <summary>
/// LoRA on one of transformers 5's stacked expert parameters, as PEFT's ParamWrapper holds it (PEFT ≥ 0.19.1, the
/// parameter [E, out, in] as transformers 5's Qwen2Moe/Mixtral experts store it, so in and out are swapped from the
/// shape's order): lora_A [R·E, in] and lora_B [out·parts, R·E] with, for expert e,
///     ΔW_e[o, i] = s · Σ_ρ lora_B[o, ρ·E + e] · lora_A[e·R + ρ, i]
/// (A's rows group by expert, B's columns interleave them). The engine keeps A as it is ([E, R, in]: the same bytes) and
/// B regrouped per expert, [parts·E, out, R] with B_int[p·E + e, o, ρ] = lora_B[p·out + o, ρ·E + e], so that each
/// expert's A_e and B_e are contiguous and the term is two grouped products over the expert-sorted rows,
///     y_rows += (s · x_rows·A_eᵀ)·B_eᵀ,
/// its backward three more (no ΔW is formed). gate_up has two parts (gate rows, then up rows, sharing A's rank R = 2r as
/// PEFT's conversion of gate_proj + up_proj gives it), down one. <see cref="ToPeftB"/> / <see cref="FromPeftB"/> convert B.
/// </summary>
internal sealed class ExpertLora
{
    public required Parameter A { get; init; }
    public required Parameter B { get; init; }
    public required float Scale { get; init; }
    public required int Parts { get; init; }
    public int Experts => A.Shape[0];
    public int Rank => A.Shape[1];
    public int In => A.Shape[2];
    /// <summary>Rows of one part of one expert's B (inter for gate/up, hidden for down).</summary>
    public int Out => B.Shape[1];

    /// <summary>Part <paramref name="part"/>'s B of every expert, [E, out, R].</summary>
    public Tensor BPart(int part) => B.Value.View((long)part * Experts * Out * Rank, [Experts, Out, Rank]);
    public Tensor? BPartGrad(int part) => B.Grad?.View((long)part * Experts * Out * Rank, [Experts, Out, Rank]);

    /// <summary>PEFT's lora_B [parts·out, R·E] from the engine's [parts·E, out, R].</summary>
    public static float[] ToPeftB(ReadOnlySpan<float> b, int parts, int experts, int outDim, int rank)
    {
        var peft = new float[b.Length];
        for (int p = 0; p < parts; p++)
            for (int e = 0; e < experts; e++)
                for (int o = 0; o < outDim; o++)
                    for (int r = 0; r < rank; r++)
                        peft[((long)p * outDim + o) * rank * experts + r * experts + e] = b[(int)((((long)p * experts + e) * outDim + o) * rank + r)];
        return peft;
    }

    /// <summary>The engine's B [parts·E, out, R] from PEFT's lora_B [parts·out, R·E].</summary>
    public static float[] FromPeftB(ReadOnlySpan<float> peft, int parts, int experts, int outDim, int rank)
    {
        var b = new float[peft.Length];
        for (int p = 0; p < parts; p++)
            for (int e = 0; e < experts; e++)
                for (int o = 0; o < outDim; o++)
                    for (int r = 0; r < rank; r++)
                        b[(((long)p * experts + e) * outDim + o) * rank + r] = peft[(int)(((long)p * outDim + o) * rank * experts + r * experts + e)];
        return b;
    }

    /// <summary>PEFT's saved shape of B: [parts·out, R·E].</summary>
    public int[] PeftBShape => [Parts * Out, Rank * Experts];

    /// <summary>PEFT's saved shape of A: [R·E, in].</summary>
    public int[] PeftAShape => [Rank * Experts, In];
}

/// <summary>
/// What the expert blocks keep for their backward, for up to Capacity tokens and k choices each (rows = Capacity·k in
/// expert-sorted order): per set (one per layer the checkpointing plan keeps, one shared by the recomputed layers, one in all without training) the router's logits,
/// probabilities and choices, the sort, the gathered inputs and the experts' gate/up/act/out; shared gradient scratch;
/// and the load-balancing statistics (counts and probability sums per expert over a forward's sparse layers); with LoRA
/// on the router, its x·Aᵀ per set and the gradient's scratch.
/// </summary>
internal sealed class ExpertActivations : IDisposable
{
    internal sealed class Layer
    {
        public Tensor Logits = null!, Probs = null!, TopIdx = null!, TopWeight = null!, Offsets = null!, SortedToken = null!, RowOf = null!;
        public Tensor Xs = null!, Gate = null!, Up = null!, Act = null!, Out = null!;
        /// <summary>s·x_rows·A_eᵀ of the experts' LoRA (gate_up [rows, R], down [rows, r]); null without.</summary>
        public Tensor? XaGateUp, XaDown;
        /// <summary>x·Aᵀ of the router's LoRA, [n, r]; null without.</summary>
        public Tensor? XaRouter;
    }

    private readonly TensorArena _arena;

    public ExpertActivations(IBackend backend, int capacity, int sets, bool training, int hidden, int experts, int topK, int inter,
        int gateUpRank = 0, int downRank = 0, int routerRank = 0)
    {
        Capacity = capacity;
        Training = training;
        var b = new TensorArena.Builder();
        var (handles, grads, counts, probSums, mask) = Declare((name, dt, shape) => b.Add(name, dt, shape), backend.ComputeDType,
            capacity, sets, training, hidden, experts, topK, inter, gateUpRank, downRank, routerRank);
        _arena = b.Build(backend);
        Layers = handles.Select(h => new Layer
        {
            Logits = _arena[h[0]], Probs = _arena[h[1]], TopIdx = _arena[h[2]], TopWeight = _arena[h[3]], Offsets = _arena[h[4]],
            SortedToken = _arena[h[5]], RowOf = _arena[h[6]], Xs = _arena[h[7]], Gate = _arena[h[8]], Up = _arena[h[9]], Act = _arena[h[10]], Out = _arena[h[11]],
            XaGateUp = h[12] >= 0 ? _arena[h[12]] : null, XaDown = h[13] >= 0 ? _arena[h[13]] : null, XaRouter = h[14] >= 0 ? _arena[h[14]] : null,
        }).ToArray();
        if (training)
        {
            Dout = _arena[grads[0]]; Dact = _arena[grads[1]]; Dgate = _arena[grads[2]]; Dup = _arena[grads[3]];
            Dxs = _arena[grads[4]]; DtopWeight = _arena[grads[5]]; Dlogits = _arena[grads[6]];
            if (grads[7] >= 0) Dxa = _arena[grads[7]];
            if (grads[8] >= 0) DxaRouter = _arena[grads[8]];
        }
        Counts = _arena[counts];
        ProbSums = _arena[probSums];
        Mask = _arena[mask];
    }

    /// <summary>The arena's bytes for <paramref name="sets"/> layer sets (exact up to each tensor's alignment): what a checkpointing plan spends on the experts.</summary>
    public static long Bytes(DType computeDType, int capacity, int sets, bool training, int hidden, int experts, int topK, int inter,
        int gateUpRank = 0, int downRank = 0, int routerRank = 0)
    {
        var b = new TensorArena.Builder();
        Declare((name, dt, shape) => b.Add(name, dt, shape), computeDType, capacity, sets, training, hidden, experts, topK, inter, gateUpRank, downRank, routerRank);
        return b.ByteLength;
    }

    private static (List<int[]> Sets, int[] Grads, int Counts, int ProbSums, int Mask) Declare(Func<string, DType, int[], int> add, DType f,
        int capacity, int sets, bool training, int hidden, int experts, int topK, int inter, int gateUpRank, int downRank, int routerRank)
    {
        int n = capacity, rows = capacity * topK;
        var handles = new List<int[]>();
        for (int s = 0; s < sets; s++)
            handles.Add(
            [
                add($"moe{s}.logits", f, [n, experts]), add($"moe{s}.probs", DType.F32, [n, experts]),
                add($"moe{s}.topidx", DType.I32, [n, topK]), add($"moe{s}.topw", DType.F32, [n, topK]),
                add($"moe{s}.offsets", DType.I32, [experts + 1]), add($"moe{s}.sorted", DType.I32, [rows]), add($"moe{s}.rowof", DType.I32, [rows]),
                add($"moe{s}.xs", f, [rows, hidden]), add($"moe{s}.gate", f, [rows, inter]), add($"moe{s}.up", f, [rows, inter]),
                add($"moe{s}.act", f, [rows, inter]), add($"moe{s}.out", f, [rows, hidden]),
                gateUpRank > 0 ? add($"moe{s}.xa_gate_up", f, [rows, gateUpRank]) : -1,
                downRank > 0 ? add($"moe{s}.xa_down", f, [rows, downRank]) : -1,
                routerRank > 0 ? add($"moe{s}.xa_router", f, [n, routerRank]) : -1,
            ]);
        int[] grads = training
            ? [add("moe.dout", f, [rows, hidden]), add("moe.dact", f, [rows, inter]), add("moe.dgate", f, [rows, inter]), add("moe.dup", f, [rows, inter]),
               add("moe.dxs", f, [rows, hidden]), add("moe.dtopw", DType.F32, [n, topK]), add("moe.dlogits", f, [n, experts]),
               gateUpRank + downRank > 0 ? add("moe.dxa", f, [rows, Math.Max(gateUpRank, downRank)]) : -1,
               routerRank > 0 ? add("moe.dxa_router", f, [n, routerRank]) : -1]
            : [];
        return (handles, grads, add("moe.counts", DType.F32, [experts]), add("moe.probsums", DType.F32, [experts]), add("moe.mask", DType.F32, [n]));
    }

    public int Capacity { get; }
    public bool Training { get; }
    public Layer[] Layers { get; }
    public Tensor? Dout, Dact, Dgate, Dup, Dxs, DtopWeight, Dlogits;
    /// <summary>∂L/∂(s·x·Aᵀ) of the experts' LoRA, [rows, max R] (null without expert LoRA).</summary>
    public Tensor? Dxa;
    /// <summary>∂L/∂(x·Aᵀ) of the router's LoRA, [n, r] (null without).</summary>
    public Tensor? DxaRouter;
    public Tensor Counts, ProbSums, Mask;
    public long ByteLength => _arena.ByteLength;

    public void Dispose() => _arena.Dispose();
}
