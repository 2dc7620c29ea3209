using FineTune.Engine;

namespace FineTune.Models;

// The mixture-of-experts MLP (qwen3_moe, mixtral) as transformers computes it:
//   logits = ln2·W_gateᵀ (+ s·(ln2·Aᵀ)·Bᵀ with LoRA on the router), p = softmax(logits) in fp32, (w, idx) = topk(p, k)
//   (renormalised w /= Σw when the family says so),
//   y_t = Σ_j w_tj · down_e(silu(gate_e(x_t)) ⊙ up_e(x_t)) with e = idx_tj.
// The n·k choices are sorted by expert (stable), the tokens' rows gathered into that order, and each projection runs as
// one grouped product over all experts' row ranges. The load-balancing loss (transformers' load_balancing_loss_func over
// the sparse layers' router logits, masked by the attention mask):
//   aux = E · Σ_e F_e·P_e,  F_e = counts_e / (L·M),  P_e = probSums_e / (L·M),
// with counts_e = Σ_{layer,t} mask_t·[e ∈ idx_t], probSums_e = Σ_{layer,t} mask_t·p_te, L sparse layers, M = Σ mask.
// Only P carries a gradient (top-k and one_hot do not): ∂aux/∂p_te = E·counts_e·mask_t / (L·M)².
public sealed partial class CausalLM
{
    private ExpertActivations? _expertActs;
    /// <summary>True during a training forward: each sparse layer adds its router statistics for the load-balancing loss.</summary>
    private bool _routerStatistics;
    /// <summary>The load-balancing term's weight in the backward under way (0: none), as coef·E/(L·M)².</summary>
    private float _auxGradScale;

    /// <summary>Sparse layers of the model (the L of the load-balancing loss).</summary>
    private int SparseLayerCount => _layers.Count(l => l.Experts is not null);

    /// <summary>
    /// The load-balancing loss's coefficient for training: LLaMA-Factory's moe_aux_loss_coef when set (non-zero; it also
    /// turns output_router_logits on), else config.json's router_aux_loss_coef when its output_router_logits is true, else 0.
    /// </summary>
    public double RouterAuxLossCoef => Spec.Moe is not { } moe ? 0
        : Setup.MoeAuxLossCoef is { } c && c != 0 ? c
        : moe.OutputRouterLogits ? moe.RouterAuxLossCoef : 0;

    private ExpertBlock BuildExperts(string mlp, int hidden, Func<string, ParameterRole, int[], Parameter> declare)
    {
        var moe = Spec.Moe!;
        var x = Spec.Family.Experts!;
        int e = moe.NumExperts, inter = moe.ExpertIntermediateSize;
        return new ExpertBlock
        {
            Module = mlp,
            Router = declare($"{mlp}.{x.Router}.weight", ParameterRole.Weight, [e, hidden]),
            Gate = declare($"{mlp}.{x.ExpertList}.{x.Gate}", ParameterRole.Weight, [e, inter, hidden]),
            Up = declare($"{mlp}.{x.ExpertList}.{x.Up}", ParameterRole.Weight, [e, inter, hidden]),
            Down = declare($"{mlp}.{x.ExpertList}.{x.Down}", ParameterRole.Weight, [e, hidden, inter]),
            TopK = moe.NumExpertsPerTok,
            NormalizeTopK = moe.NormTopKProb,
        };
    }

    /// <summary>
    /// The PEFT module that holds an expert LoRA of <paramref name="x"/>: transformers 5's {layer}.mlp.experts (mixtral's
    /// block renamed mlp), nested as PEFT nests two ParamWrappers on one module — the parameter wrapped first
    /// (gate_up_proj, declared first) is the inner one, {…}.experts.base_layer, the other the outer {…}.experts.
    /// </summary>
    internal string ExpertLoraModule(ExpertBlock x, bool gateUp, bool both) =>
        $"{PeftMlpModule(x)}.{Spec.Family.Experts!.ExpertList}" + (gateUp && both ? ".base_layer" : "");

    /// <summary>The MoE block's module in transformers 5 (mixtral's block_sparse_moe renamed mlp), where PEFT's names of its adapters begin.</summary>
    private string PeftMlpModule(ExpertBlock x) =>
        Spec.Family.Experts!.MoeModule is { } moeModule ? x.Module[..^moeModule.Length] + "mlp" : x.Module;

    /// <summary>
    /// The PEFT module of the router's LoRA: transformers 5's {layer}.mlp.gate (a TopKRouter holding its weight as a bare
    /// parameter, so PEFT's conversion of lora_target gate makes it target_parameters gate.weight, a ParamWrapper).
    /// </summary>
    internal string RouterLoraModule(ExpertBlock x) => $"{PeftMlpModule(x)}.{Spec.Family.Experts!.Router}";

    /// <summary>
    /// Declares PEFT's LoRA on a layer's router: lora_A [r, hidden], lora_B [E, r] under {mlp}.gate, with the rank and
    /// alpha that rank_pattern / alpha_pattern give PEFT's key of the targeted parameter, {mlp}.gate.weight.
    /// </summary>
    private IEnumerable<Parameter> AddRouterLora(ExpertBlock x, Func<string, ParameterRole, int[], Parameter> declare)
    {
        if (Setup.LoraDropout > 0)
            throw new ArgumentException($"{x.Module}: LoRA on the router trains without dropout, as PEFT's ParamWrapper does (lora_dropout is {Setup.LoraDropout}): set lora_dropout to 0");
        string m = RouterLoraModule(x), key = m + ".weight";
        int r = Setup.LoraRankFor(key);
        if (r <= 0) throw new ArgumentException($"{m}: the LoRA rank must be positive, got {r}");
        var a = declare($"{m}.lora_A.weight", ParameterRole.LoraA, [r, Spec.HiddenSize]);
        var b = declare($"{m}.lora_B.weight", ParameterRole.LoraB, [x.Count, r]);
        x.RouterLora = new LoraAdapter(a, b, (float)Setup.LoraScaleFor(key), 0);
        return [a, b];
    }

    /// <summary>
    /// Declares PEFT's LoRA on a layer's experts for the targeted projections (gate and up together as gate_up_proj of
    /// rank 2r and alpha 2α, as PEFT's transformers 5 conversion rewrites gate_proj + up_proj; down_proj of rank r).
    /// </summary>
    private IEnumerable<Parameter> AddExpertLora(ExpertBlock x, IReadOnlySet<string> loraModules, Func<string, ParameterRole, int[], Parameter> declare)
    {
        var names = Spec.Family.Experts!;
        if (Setup.LoraDropout > 0)
            throw new ArgumentException($"{x.Module}: LoRA on the experts trains without dropout, as PEFT's ParamWrapper does (lora_dropout is {Setup.LoraDropout}): set lora_dropout to 0");
        bool gateUp = loraModules.Contains(names.Gate) && loraModules.Contains(names.Up), down = loraModules.Contains(names.Down);
        int r = Setup.LoraRank, e = x.Count, inter = x.Intermediate, c = Spec.HiddenSize;
        double alpha = Setup.ResolvedLoraAlpha;
        if (gateUp)
        {
            string m = ExpertLoraModule(x, gateUp: true, both: down);
            x.GateUpLora = new ExpertLora
            {
                A = declare($"{m}.lora_A.weight", ParameterRole.LoraA, [e, 2 * r, c]),
                B = declare($"{m}.lora_B.weight", ParameterRole.LoraB, [2 * e, inter, 2 * r]),
                Scale = (float)PeftPattern.Scale(2 * alpha, 2 * r, Setup.UseRslora),
                Parts = 2,
            };
            yield return x.GateUpLora.A;
            yield return x.GateUpLora.B;
        }
        if (down)
        {
            string m = ExpertLoraModule(x, gateUp: false, both: gateUp);
            x.DownLora = new ExpertLora
            {
                A = declare($"{m}.lora_A.weight", ParameterRole.LoraA, [e, r, inter]),
                B = declare($"{m}.lora_B.weight", ParameterRole.LoraB, [e, c, r]),
                Scale = (float)PeftPattern.Scale(alpha, r, Setup.UseRslora),
                Parts = 1,
            };
            yield return x.DownLora.A;
            yield return x.DownLora.B;
        }
    }

    /// <summary>Folds the experts' LoRA into a stacked expert parameter's values (merge): LoraMerge's PEFT fold per expert.</summary>
    private void FoldExpertLora(Parameter stack, float[] values)
    {
        var x = _layers.Select(l => l.Experts).OfType<ExpertBlock>().FirstOrDefault(b => b.Gate == stack || b.Up == stack || b.Down == stack);
        if (x is null) return;
        var (lora, part) = stack == x.Down ? (x.DownLora, 0) : (x.GateUpLora, stack == x.Gate ? 0 : 1);
        if (lora is null) return;
        float[] a = ReadParameter(lora.A.Name), b = ExpertLora.ToPeftB(ReadParameter(lora.B.Name), lora.Parts, lora.Experts, lora.Out, lora.Rank);
        int outDim = stack.Shape[1], inDim = stack.Shape[2], per = outDim * inDim;
        for (int e = 0; e < lora.Experts; e++)
            LoraMerge.AddExpertLoraDelta(values.AsSpan(e * per, per), outDim, inDim, a, b, e, lora.Experts, part, lora.Rank, lora.Scale);
    }

    /// <summary>The expert LoRA whose B is <paramref name="p"/> (null when p is no expert LoRA B).</summary>
    private ExpertLora? ExpertLoraOfB(Parameter p) =>
        _layers.Select(l => l.Experts).OfType<ExpertBlock>().SelectMany(x => new[] { x.GateUpLora, x.DownLora }).OfType<ExpertLora>()
            .FirstOrDefault(lora => ReferenceEquals(lora.B, p));

    /// <summary>A parameter's values as the PEFT file holds them (an expert LoRA's B regrouped; everything else as it is).</summary>
    internal (float[] Values, long[] Shape) ToFileLayout(string hfName, float[] values)
    {
        var p = _allParameters.First(q => q.Name == hfName);
        if (ExpertLoraOfB(p) is { } lora)
            return (ExpertLora.ToPeftB(values, lora.Parts, lora.Experts, lora.Out, lora.Rank), lora.PeftBShape.Select(d => (long)d).ToArray());
        if (p.Role == ParameterRole.LoraA && p.Shape.Length == 3) return (values, [(long)p.Shape[0] * p.Shape[1], p.Shape[2]]);
        return (values, p.Shape.Select(d => (long)d).ToArray());
    }

    /// <summary>
    /// A trainable parameter's gradient in the layout its file holds it (PEFT's for LoRA: an expert LoRA's lora_B
    /// [out·parts, R·E]), with that shape: what <c>finetune forward --grads</c> writes under "grad." + its name.
    /// </summary>
    public (float[] Values, long[] Shape) GradientInFileLayout(TrainableParameter t)
    {
        var g = new float[t.Length];
        Backend.Download(t.Grad, g);
        return ToFileLayout(t.HfName, g);
    }

    /// <summary>The shape a parameter has in a PEFT file (see <see cref="ToFileLayout"/>).</summary>
    private int[] FileShape(Parameter p) =>
        ExpertLoraOfB(p) is { } lora ? lora.PeftBShape : p.Role == ParameterRole.LoraA && p.Shape.Length == 3 ? [p.Shape[0] * p.Shape[1], p.Shape[2]] : p.Shape;

    /// <summary>Values read from a PEFT file into the engine's layout (inverse of <see cref="ToFileLayout"/>).</summary>
    private float[] FromFileLayout(Parameter p, float[] values) =>
        ExpertLoraOfB(p) is { } lora ? ExpertLora.FromPeftB(values, lora.Parts, lora.Experts, lora.Out, lora.Rank) : values;

    /// <summary>
    /// Reads a stacked expert projection from per-expert tensors ({mlp}.experts.E.gate_proj.weight, the hub layout) or
    /// from transformers 5's fused parameters ({mlp}.experts.gate_up_proj [E, 2·inter, hidden], gate rows first;
    /// {mlp}.experts.down_proj [E, hidden, inter]).
    /// </summary>
    private void ReadExpertStack(IWeightSource source, Parameter p, Span<float> values)
    {
        int e = p.Shape[0], rows = p.Shape[1], cols = p.Shape[2];
        int per = rows * cols;
        string first = ExpertBlock.ExpertKey(p.Name, 0);
        if (source.Contains(first))
        {
            for (int x = 0; x < e; x++) source.Read(ExpertBlock.ExpertKey(p.Name, x), [rows, cols], values.Slice(x * per, per));
            return;
        }
        var layout = Spec.Family.Experts!;
        string list = p.Name[..p.Name.LastIndexOf('.')];
        // transformers 5 names the mixtral block mlp, not block_sparse_moe.
        if (layout.MoeModule is { } moeModule) list = list.Replace($".{moeModule}.", ".mlp.", StringComparison.Ordinal);
        string leaf = p.Name[(p.Name.LastIndexOf('.') + 1)..];
        if (leaf == layout.Down && source.Contains($"{list}.down_proj"))
        {
            source.Read($"{list}.down_proj", [e, rows, cols], values);
            return;
        }
        if ((leaf == layout.Gate || leaf == layout.Up) && source.Contains($"{list}.gate_up_proj"))
        {
            var fused = new float[(long)e * 2 * per];
            source.Read($"{list}.gate_up_proj", [e, 2 * rows, cols], fused);
            int half = leaf == layout.Gate ? 0 : per;
            for (int x = 0; x < e; x++) fused.AsSpan(x * 2 * per + half, per).CopyTo(values.Slice(x * per, per));
            return;
        }
        source.Read(first, [rows, cols], values[..per]); // throws the source's located "missing tensor" message
    }

    /// <summary>
    /// The name a weight has in <paramref name="source"/>: its own, or for mixtral's router transformers 5's
    /// (model.layers.N.mlp.gate where the hub checkpoints say block_sparse_moe.gate).
    /// </summary>
    private string SourceName(IWeightSource source, string name) =>
        Spec.Family.Experts?.MoeModule is { } moeModule && name.Contains($".{moeModule}.", StringComparison.Ordinal) && !source.Contains(name)
            && source.Contains(name.Replace($".{moeModule}.", ".mlp.", StringComparison.Ordinal))
            ? name.Replace($".{moeModule}.", ".mlp.", StringComparison.Ordinal) : name;

    private void EnsureExpertActs(int n, bool training)
    {
        var moe = Spec.Moe!;
        var setOf = ExpertSetOfLayer(training);
        if (_expertActs is { } a && a.Capacity >= n && (a.Training || !training) && (!training || _expertSetOf.AsSpan().SequenceEqual(setOf))) return;
        int capacity = Math.Max(n, _expertActs?.Capacity ?? 0);
        training |= _expertActs?.Training ?? false;
        _expertActs?.Dispose();
        _expertActs = null;
        var ranks = ExpertLoraRanks;
        _expertActs = new ExpertActivations(Backend, capacity, setOf.Max() + 1, training, Spec.HiddenSize, moe.NumExperts, moe.NumExpertsPerTok, moe.ExpertIntermediateSize,
            ranks.GateUp, ranks.Down, ranks.Router);
        _expertSetOf = setOf;
        ExpertBuffersVersion++;
    }

    /// <summary>
    /// The experts' LoRA ranks (gate_up R = 2r, down r; 0 where none), the same in every sparse layer, and the router's
    /// (the largest over the layers: rank_pattern may differ per layer).
    /// </summary>
    internal (int GateUp, int Down, int Router) ExpertLoraRanks => RanksOf(_layers);

    internal static (int GateUp, int Down, int Router) RanksOf(IEnumerable<DecoderLayer> layers)
    {
        var blocks = layers.Select(l => l.Experts).OfType<ExpertBlock>().ToList();
        if (blocks.Count == 0) return (0, 0, 0);
        return (blocks[0].GateUpLora?.Rank ?? 0, blocks[0].DownLora?.Rank ?? 0, blocks.Max(x => x.RouterLora?.Rank ?? 0));
    }

    /// <summary>Bytes of the activation arenas now carved: the layers' and the experts' (what a checkpointing plan estimates).</summary>
    internal long ActivationArenaBytes => (_acts?.ByteLength ?? 0) + (_expertActs?.ByteLength ?? 0);

    /// <summary>Per layer, the expert set it uses (see <see cref="ExpertSetOfLayer"/>).</summary>
    private int[] _expertSetOf = [];

    /// <summary>
    /// As the activation arena's sets: for training, every layer the checkpointing plan keeps (full or selective) has its
    /// own set (its backward reads its own routing and expert rows) and the recomputed layers share one; otherwise one set.
    /// </summary>
    private int[] ExpertSetOfLayer(bool training)
    {
        var setOf = new int[_layers.Length];
        if (!training || _acts is not { Training: true } acts) return setOf;
        int next = 0, shared = -1;
        for (int l = 0; l < setOf.Length; l++)
        {
            if (acts.Storage[l] == LayerStorage.Recompute)
            {
                if (shared < 0) shared = next++;
                setOf[l] = shared;
            }
            else setOf[l] = next++;
        }
        return setOf;
    }

    /// <summary>Bumped whenever the experts' buffers are carved anew (decode graphs recorded before name the old ones).</summary>
    internal int ExpertBuffersVersion { get; private set; }

    private ExpertActivations.Layer ExpertActs(DecoderLayer L) => _expertActs!.Layers[_expertSetOf[L.Index]];

    /// <summary>
    /// Before a training forward of a model with experts: the buffers, the token mask (HF's attention mask: 0 on padding)
    /// and zeroed load-balancing statistics; the sparse layers of the forward then add theirs.
    /// </summary>
    private void BeginRouterStatistics(TokenBatch batch)
    {
        if (Spec.Moe is null) return;
        int n = batch.TokenCount;
        EnsureExpertActs(n, training: true);
        var acts = _expertActs!;
        var mask = new float[n];
        for (int i = 0; i < n; i++) mask[i] = batch.AttentionMask is { } am ? am[i] : 1;
        Backend.Upload(acts.Mask.View(0, [n]), mask);
        Backend.Zero(acts.Counts);
        Backend.Zero(acts.ProbSums);
        // Without the load-balancing loss nothing reads them: no statistics, no download after the step.
        _routerStatistics = RouterAuxLossCoef != 0;
    }

    /// <summary>coef·E/(L·M)²: the weight of counts_e·mask_t in ∂(coef·aux)/∂p_te (0 without the loss).</summary>
    private float AuxGradScale(TokenBatch batch)
    {
        double coef = RouterAuxLossCoef;
        if (coef == 0 || Spec.Moe is null) return 0;
        double m = batch.AttentionMask is { } am ? am.Sum() : batch.TokenCount, lm = SparseLayerCount * m;
        return lm == 0 ? 0 : (float)(coef * Spec.Moe.NumExperts / (lm * lm));
    }

    /// <summary>The load-balancing loss of the last training forward (without the coefficient): E·Σ_e counts_e·probSums_e/(L·M)².</summary>
    private double RouterAuxLoss(TokenBatch batch)
    {
        var acts = _expertActs!;
        int e = Spec.Moe!.NumExperts;
        var counts = new float[e];
        var sums = new float[e];
        Backend.Download(acts.Counts, counts);
        Backend.Download(acts.ProbSums, sums);
        double m = batch.AttentionMask is { } am ? am.Sum() : batch.TokenCount, lm = SparseLayerCount * m;
        if (lm == 0) return 0;
        double s = 0;
        for (int x = 0; x < e; x++) s += (double)counts[x] * sums[x];
        return e * s / (lm * lm);
    }

    /// <summary>
    /// Test hook (the device checks compare CUDA with the CPU reference under like routing): per layer index, the [n·k]
    /// expert choices every forward uses instead of its own top-k while set; a null entry (or null) leaves a layer's
    /// routing its own. The weights stay the model's: w_j = p[idx_j] of its own probabilities (÷ Σ_j p[idx_j] when the
    /// family renormalises), as transformers computes them given those indices; the load-balancing counts and the
    /// backward use the fixed choices too. A host round trip per sparse layer: not for training, not in decode graphs.
    /// </summary>
    internal int[]?[]? RoutingOverride { get; set; }

    /// <summary>Test hook: while non-null (one entry per layer), every forward stores each sparse layer's [n·k] choices (after any override) at its index.</summary>
    internal int[]?[]? RoutingRecord { get; set; }

    /// <summary>Replaces a layer's top-k choices with <paramref name="choices"/> and recomputes their weights from the probabilities (see <see cref="RoutingOverride"/>).</summary>
    private void FixRouting(ExpertBlock x, int[] choices, Tensor probs, Tensor topIdx, Tensor topW, int n)
    {
        int e = x.Count, k = x.TopK;
        if (choices.Length != n * k)
            throw new ArgumentException($"{x.Module}: the routing override holds {choices.Length} choices, but this forward routes {n} tokens to {k} experts each ({n * k})");
        var p = new float[n * e];
        Backend.Download(probs, p);
        var w = new float[n * k];
        for (int t = 0; t < n; t++)
        {
            // In MoeRoute's order (w_s = p[idx_s], S summed over s, then w_s /= S): the model's own choices give its own weights bit for bit.
            float chosen = 0;
            for (int s = 0; s < k; s++)
            {
                int j = choices[t * k + s];
                if ((uint)j >= (uint)e) throw new ArgumentException($"{x.Module}: the routing override sends token {t} to expert {j}, but the layer has experts 0 … {e - 1}");
                w[t * k + s] = p[(long)t * e + j];
                chosen += w[t * k + s];
            }
            if (x.NormalizeTopK) for (int s = 0; s < k; s++) w[t * k + s] /= chosen;
        }
        Backend.Upload(topIdx, choices);
        Backend.Upload(topW, w);
    }

    /// <summary>y = Σ_j w_j·expert_j(ln2) for each token (written; the caller adds the residual).</summary>
    private void ExpertsForward(DecoderLayer L, Tensor ln2, Tensor y, int n, bool training)
    {
        var B = Backend;
        var x = L.Experts!;
        EnsureExpertActs(n, training && _acts is { Training: true });
        var a = ExpertActs(L);
        int k = x.TopK, rows = n * k, e = x.Count, inter = x.Intermediate, c = Spec.HiddenSize;
        var logits = a.Logits.View(0, [n, e]);
        var probs = a.Probs.View(0, [n, e]);
        var topIdx = a.TopIdx.View(0, [n, k]);
        var topW = a.TopWeight.View(0, [n, k]);
        var sorted = a.SortedToken.View(0, [rows]);
        var rowOf = a.RowOf.View(0, [rows]);
        var xs = a.Xs.View(0, [rows, c]);
        var gate = a.Gate.View(0, [rows, inter]);
        var up = a.Up.View(0, [rows, inter]);
        var act = a.Act.View(0, [rows, inter]);
        var outRows = a.Out.View(0, [rows, c]);
        B.MatMul(logits, ln2, false, x.Router.Value, true);
        bool lora = !_adaptersOff;
        if (lora && x.RouterLora is { } rl)
        {
            // PEFT's ParamWrapper: W_gate + s·B·A, applied as logits += s·(ln2·Aᵀ)·Bᵀ.
            var xa = a.XaRouter!.View(0, [n, rl.Rank]);
            B.MatMul(xa, ln2, false, rl.A.Value, true);
            B.MatMul(logits, xa, false, rl.B.Value, true, rl.Scale, accumulate: true);
        }
        B.MoeRoute(logits, probs, topIdx, topW, x.NormalizeTopK);
        if (RoutingOverride?[L.Index] is { } fixedChoices) FixRouting(x, fixedChoices, probs, topIdx, topW, n);
        if (RoutingRecord is { } record) { record[L.Index] = new int[n * k]; B.Download(topIdx, record[L.Index]); }
        if (_routerStatistics) B.MoeRouterStatistics(_expertActs!.Counts, _expertActs.ProbSums, probs, topIdx, _expertActs.Mask.View(0, [n]));
        B.MoeSort(topIdx, a.Offsets, sorted, rowOf);
        B.Embedding(xs, ln2, sorted);
        B.GroupedMatMul(gate, xs, x.Gate.Value, true, a.Offsets);
        B.GroupedMatMul(up, xs, x.Up.Value, true, a.Offsets);
        if (lora && x.GateUpLora is { } gu)
        {
            // PEFT's ParamWrapper: W_e + s·B_e·A_e, applied as (s·x·A_eᵀ)·B_eᵀ over each expert's rows.
            var xa = a.XaGateUp!.View(0, [rows, gu.Rank]);
            B.GroupedMatMul(xa, xs, gu.A.Value, true, a.Offsets);
            B.Scale(xa, gu.Scale);
            B.GroupedMatMul(gate, xa, gu.BPart(0), true, a.Offsets, accumulate: true);
            B.GroupedMatMul(up, xa, gu.BPart(1), true, a.Offsets, accumulate: true);
        }
        B.SwiGlu(act, gate, up);
        B.GroupedMatMul(outRows, act, x.Down.Value, true, a.Offsets);
        if (lora && x.DownLora is { } dl)
        {
            var xa = a.XaDown!.View(0, [rows, dl.Rank]);
            B.GroupedMatMul(xa, act, dl.A.Value, true, a.Offsets);
            B.Scale(xa, dl.Scale);
            B.GroupedMatMul(outRows, xa, dl.BPart(0), true, a.Offsets, accumulate: true);
        }
        B.MoeCombine(y, outRows, topW, rowOf);
    }

    /// <summary>From dy = ∂L/∂y of <see cref="ExpertsForward"/>: writes dln = ∂L/∂ln2 and accumulates the trainable experts' and router's gradients.</summary>
    private void ExpertsBackward(DecoderLayer L, Tensor dln, Tensor dy, Tensor ln2, int n)
    {
        var B = Backend;
        var x = L.Experts!;
        var acts = _expertActs!;
        var a = ExpertActs(L);
        int k = x.TopK, rows = n * k, e = x.Count, inter = x.Intermediate, c = Spec.HiddenSize;
        var topIdx = a.TopIdx.View(0, [n, k]);
        var topW = a.TopWeight.View(0, [n, k]);
        var rowOf = a.RowOf.View(0, [rows]);
        var xs = a.Xs.View(0, [rows, c]);
        var act = a.Act.View(0, [rows, inter]);
        var dout = acts.Dout!.View(0, [rows, c]);
        var dact = acts.Dact!.View(0, [rows, inter]);
        var dgate = acts.Dgate!.View(0, [rows, inter]);
        var dup = acts.Dup!.View(0, [rows, inter]);
        var dxs = acts.Dxs!.View(0, [rows, c]);
        var dtopW = acts.DtopWeight!.View(0, [n, k]);
        var dlogits = acts.Dlogits!.View(0, [n, e]);
        B.MoeCombineBackward(dout, dtopW, dy, a.Out.View(0, [rows, c]), topW, rowOf);
        B.GroupedMatMul(dact, dout, x.Down.Value, false, a.Offsets);
        if (x.Down.Grad is { } dDown) B.GroupedMatMulWeightGrad(dDown, dout, act, a.Offsets);
        bool lora = !_adaptersOff;
        if (lora && x.DownLora is { } dl)
        {
            // out += xa·B_eᵀ with xa = s·act·A_eᵀ: dB_e += dout_eᵀ·xa_e, dxa = dout·B_e, dA_e += (s·dxa_e)ᵀ·act_e, dact += s·dxa·A_e.
            var xa = a.XaDown!.View(0, [rows, dl.Rank]);
            var dxa = acts.Dxa!.View(0, [rows, dl.Rank]);
            if (dl.BPartGrad(0) is { } dB) B.GroupedMatMulWeightGrad(dB, dout, xa, a.Offsets);
            B.GroupedMatMul(dxa, dout, dl.BPart(0), false, a.Offsets);
            B.Scale(dxa, dl.Scale);
            if (dl.A.Grad is { } dA) B.GroupedMatMulWeightGrad(dA, dxa, act, a.Offsets);
            B.GroupedMatMul(dact, dxa, dl.A.Value, false, a.Offsets, accumulate: true);
        }
        B.SwiGluBackward(dgate, dup, dact, a.Gate.View(0, [rows, inter]), a.Up.View(0, [rows, inter]));
        B.GroupedMatMul(dxs, dgate, x.Gate.Value, false, a.Offsets);
        B.GroupedMatMul(dxs, dup, x.Up.Value, false, a.Offsets, accumulate: true);
        if (x.Gate.Grad is { } dGate) B.GroupedMatMulWeightGrad(dGate, dgate, xs, a.Offsets);
        if (x.Up.Grad is { } dUp) B.GroupedMatMulWeightGrad(dUp, dup, xs, a.Offsets);
        if (lora && x.GateUpLora is { } gu)
        {
            // gate/up += xa·B_{gate|up,e}ᵀ with the shared xa = s·xs·A_eᵀ: dxa = dgate·B_gate,e + dup·B_up,e.
            var xa = a.XaGateUp!.View(0, [rows, gu.Rank]);
            var dxa = acts.Dxa!.View(0, [rows, gu.Rank]);
            if (gu.BPartGrad(0) is { } dBg) B.GroupedMatMulWeightGrad(dBg, dgate, xa, a.Offsets);
            if (gu.BPartGrad(1) is { } dBu) B.GroupedMatMulWeightGrad(dBu, dup, xa, a.Offsets);
            B.GroupedMatMul(dxa, dgate, gu.BPart(0), false, a.Offsets);
            B.GroupedMatMul(dxa, dup, gu.BPart(1), false, a.Offsets, accumulate: true);
            B.Scale(dxa, gu.Scale);
            if (gu.A.Grad is { } dA) B.GroupedMatMulWeightGrad(dA, dxa, xs, a.Offsets);
            B.GroupedMatMul(dxs, dxa, gu.A.Value, false, a.Offsets, accumulate: true);
        }
        B.MoeGatherBackward(dln, dxs, rowOf);
        bool aux = _auxGradScale != 0;
        B.MoeRouteBackward(dlogits, dtopW, a.Probs.View(0, [n, e]), topIdx, topW, x.NormalizeTopK,
            aux ? acts.Counts : null, aux ? acts.Mask.View(0, [n]) : null, _auxGradScale);
        B.MatMul(dln, dlogits, false, x.Router.Value, false, 1f, accumulate: true);
        if (x.Router.Grad is { } dRouter) B.MatMul(dRouter, dlogits, true, ln2, false, 1f, accumulate: true);
        if (lora && x.RouterLora is { } rl)
        {
            // logits += s·xa·Bᵀ with xa = ln2·Aᵀ: dB += s·dlogitsᵀ·xa, dxa = s·dlogits·B, dA += dxaᵀ·ln2, dln += dxa·A.
            var xa = a.XaRouter!.View(0, [n, rl.Rank]);
            var dxa = acts.DxaRouter!.View(0, [n, rl.Rank]);
            if (rl.B.Grad is { } dB) B.MatMul(dB, dlogits, true, xa, false, rl.Scale, accumulate: true);
            B.MatMul(dxa, dlogits, false, rl.B.Value, false, rl.Scale);
            if (rl.A.Grad is { } dA) B.MatMul(dA, dxa, true, ln2, false, 1f, accumulate: true);
            B.MatMul(dln, dxa, false, rl.A.Value, false, 1f, accumulate: true);
        }
    }

    /// <summary>
    /// The training objective of one micro-batch as ForwardBackward differentiates it: lossScale·Σ CE + coef·aux
    /// (finite-difference checks of the router and the load-balancing loss).
    /// </summary>
    internal double TrainingObjective(TokenBatch batch, float lossScale)
    {
        int m = Prepare(batch, training: true);
        TrainingForward(batch, batch.TokenCount, RandomCounter);
        double ce = Head(batch.TokenCount, m, 1f, grad: false);
        double aux = RouterAuxLossCoef == 0 ? 0 : RouterAuxLoss(batch);
        return lossScale * ce + RouterAuxLossCoef * aux;
    }

    /// <summary>
    /// The router probabilities [n, E], choices [n, k] and their weights [n, k] that layer <paramref name="layer"/> kept
    /// from the last forward (tests; after a forward without training every layer shares one set: the last sparse layer's).
    /// </summary>
    internal (float[] Probs, int[] TopIdx, float[] TopWeight) RouterOutputs(int layer, int n)
    {
        var a = ExpertActs(_layers[layer]);
        var moe = Spec.Moe!;
        var probs = new float[n * moe.NumExperts];
        var idx = new int[n * moe.NumExpertsPerTok];
        var w = new float[n * moe.NumExpertsPerTok];
        Backend.Download(a.Probs.View(0, [n, moe.NumExperts]), probs);
        Backend.Download(a.TopIdx.View(0, [n, moe.NumExpertsPerTok]), idx);
        Backend.Download(a.TopWeight.View(0, [n, moe.NumExpertsPerTok]), w);
        return (probs, idx, w);
    }
}
