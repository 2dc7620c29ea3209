using FineTune.Engine;

namespace FineTune.Models;

/// <summary>
/// A decoder-only transformer (llama, mistral, qwen2, qwen3) on one backend, with explicit forward and
/// backward per layer (llm.c style) and the parameters the <see cref="TrainingSetup"/> makes trainable.
/// Weights live in one arena; activations in another, sized for the largest batch seen.
/// Not thread-safe: one caller drives it.
/// </summary>
public sealed partial class CausalLM : IDisposable
{
    private readonly TensorArena _weights;
    private readonly Parameter _embed;
    private readonly Parameter _finalNorm;
    private readonly Parameter? _lmHead;
    private readonly DecoderLayer[] _layers;
    private readonly List<Parameter> _allParameters;
    private readonly List<TrainableParameter> _trainable;
    private readonly Tensor _gradNormSquared;
    /// <summary>The trainable gradients in model order: the list the clipping norm sums (one SumOfSquaresMany).</summary>
    private readonly Tensor[] _trainableGrads;
    /// <summary>The parameters with F32 moments, their AdamW tensors and this step's hyper-parameters (built at the first step).</summary>
    private TrainableParameter[]? _f32Stepped;
    private AdamWTensors[]? _f32Tensors;
    private AdamWStep[]? _f32Steps;
    /// <summary>The arena's run of gradients (every trainable grad and the groups' stacked A grads, nothing else between), in pieces of at most 2³⁰ floats.</summary>
    private readonly Tensor[] _gradRun;
    /// <summary>ZeRO's windows (or shards) hold the trainable gradients: they are zeroed one by one, not as the run.</summary>
    private readonly bool _gradientsInWindows;
    private readonly Parameter? _valueHeadWeight, _valueHeadBias;
    private ModelActivations? _acts;
    private TensorArena? _rope;
    private Tensor? _cos, _sin;
    /// <summary>Gemma 3's local layers: the rope table of rope_local_base_freq (null where every layer shares _cos/_sin).</summary>
    private Tensor? _cosLocal, _sinLocal;
    private int _ropeLength;

    private CausalLM(TransformerSpec spec, IBackend backend, TrainingSetup setup, IWeightSource weights)
    {
        // The architecture table says what of a family the engine does not run yet (Load reports it located first).
        if (spec.Family.EngineGap is { } gap) throw new NotSupportedException(gap);
        if (setup.Fp8 && setup.Quantization is not null)
            throw new NotSupportedException("fp8 and QLoRA (quantization_bit) both choose how the frozen base is held: use one of them");
        if (setup.Fp8AmaxHistory < 1)
            throw new ArgumentException($"fp8_amax_history must be at least 1 pass, got {setup.Fp8AmaxHistory}");
        if (spec.Moe is not null && setup.Quantization is not null)
            throw new NotSupportedException($"{spec.Architecture}: QLoRA (quantization_bit) on a mixture-of-experts model is not supported yet; train it without quantization_bit");
        if (setup.ShardedParameters is not null || setup.ShardedGradients is not null) CheckShardable(setup);
        var views = new List<Parameter>();
        Spec = spec;
        Backend = backend;
        Setup = setup;
        int c = spec.HiddenSize, qd = spec.QDim, kvd = spec.KvDim, inter = spec.IntermediateSize;
        _allParameters = [];
        Parameter P(string name, ParameterRole role, params int[] shape)
        {
            var p = new Parameter(name, shape, role);
            _allParameters.Add(p);
            return p;
        }
        LoraLinear L(string prefix, string shortName, int outDim, int inDim, bool bias) =>
            new($"{prefix}.{shortName}", shortName, P($"{prefix}.{shortName}.weight", ParameterRole.Weight, outDim, inDim),
                bias ? P($"{prefix}.{shortName}.bias", ParameterRole.Bias, outDim) : null);
        // A fused module (phi3's qkv_proj [q+2kv, c], gate_up_proj [2·inter, c]): one weight, one linear per part on its rows.
        LoraLinear[] Fused(string prefix, string fusedName, int inDim, params int[] outDims)
        {
            var weight = P($"{prefix}.{fusedName}.weight", ParameterRole.Weight, outDims.Sum(), inDim);
            var parts = new LoraLinear[outDims.Length];
            for (int j = 0, row = 0; j < outDims.Length; row += outDims[j], j++)
            {
                var view = new Parameter(weight.Name, [outDims[j], inDim], ParameterRole.Weight) { ViewOf = (weight, row) };
                views.Add(view);
                parts[j] = new LoraLinear($"{prefix}.{fusedName}", fusedName, view, null) { FusedRow = row };
            }
            return parts;
        }

        var n = spec.Family.Names;
        _embed = P($"{n.Embedding}.weight", ParameterRole.Embedding, spec.VocabSize, c);
        _layers = new DecoderLayer[spec.NumLayers];
        for (int l = 0; l < spec.NumLayers; l++)
        {
            string pre = n.Layer(l), attn = $"{pre}.{n.Attention}", mlp = $"{pre}.{n.Mlp}";
            // Parameters are declared in the order TrainableModules.ParameterNames lists them.
            var inputNorm = P($"{pre}.{n.InputNorm}.weight", ParameterRole.Norm, c);
            var qkv = spec.Family.Block.FusedQkv ? Fused(attn, n.Qkv, c, qd, kvd, kvd)
                : [L(attn, n.Q, qd, c, spec.QkvBias), L(attn, n.K, kvd, c, spec.QkvBias), L(attn, n.V, kvd, c, spec.QkvBias)];
            var qNorm = spec.QkNorm ? P($"{attn}.{n.QNorm}.weight", ParameterRole.Norm, spec.HeadDim) : null;
            var kNorm = spec.QkNorm ? P($"{attn}.{n.KNorm}.weight", ParameterRole.Norm, spec.HeadDim) : null;
            var o = L(attn, n.O, c, qd, spec.OutputBias);
            var postAttentionNorm = P($"{pre}.{n.PostAttentionNorm}.weight", ParameterRole.Norm, c);
            // Sandwich (gemma): the MLP's own pre- and post-norms beside post_attention_layernorm (which norms the attention output).
            var preFeedforwardNorm = spec.Sandwich ? P($"{pre}.{n.PreFeedforwardNorm}.weight", ParameterRole.Norm, c) : null;
            var postFeedforwardNorm = spec.Sandwich ? P($"{pre}.{n.PostFeedforwardNorm}.weight", ParameterRole.Norm, c) : null;
            var experts = spec.IsSparseLayer(l) ? BuildExperts(mlp, c, P) : null;
            var gateUp = experts is not null ? null : spec.Family.Block.FusedGateUp ? Fused(mlp, n.GateUp, c, inter, inter)
                : [L(mlp, n.Gate, inter, c, false), L(mlp, n.Up, inter, c, false)];
            _layers[l] = new DecoderLayer
            {
                Index = l,
                InputNorm = inputNorm,
                Q = qkv[0],
                K = qkv[1],
                V = qkv[2],
                QNorm = qNorm,
                KNorm = kNorm,
                O = o,
                PostAttentionNorm = postAttentionNorm,
                PreFeedforwardNorm = preFeedforwardNorm,
                PostFeedforwardNorm = postFeedforwardNorm,
                Gate = gateUp?[0],
                Up = gateUp?[1],
                Down = experts is null ? L(mlp, n.Down, c, inter, false) : null,
                Experts = experts,
            };
        }
        _finalNorm = P($"{n.FinalNorm}.weight", ParameterRole.Norm, c);
        _lmHead = spec.TieWordEmbeddings ? null : P($"{n.LmHead}.weight", ParameterRole.Weight, spec.VocabSize, c);

        var trainableNames = TrainableSelection.Select(spec, setup, _allParameters.Select(p => p.Name).ToList(), out var loraModules);
        // PEFT's LoRA on a fused module: one A [r, in], one B [all rows, r]; each part's adapter is A and its rows of B.
        var fusedLora = new Dictionary<string, (Parameter A, Parameter B)>(StringComparer.Ordinal);
        // On a mixture-of-experts model the MLP names reach the experts (PEFT on transformers 5), never a dense layer's MLP.
        var expertTargets = TrainableModules.ExpertTargets(spec);
        foreach (var layer in _layers)
            foreach (var lin in layer.Linears)
                if (loraModules.Contains(lin.ShortName) && !(expertTargets.Contains(lin.ShortName) && lin != layer.Q && lin != layer.K && lin != layer.V && lin != layer.O))
                {
                    int rank = setup.LoraRankFor(lin.Module);
                    if (rank <= 0) throw new ArgumentException($"{lin.Module}: the LoRA rank must be positive, got {rank}");
                    if (lin.FusedRow is { } row)
                    {
                        if (!fusedLora.TryGetValue(lin.Module, out var ab))
                        {
                            ab = (P($"{lin.Module}.lora_A.weight", ParameterRole.LoraA, rank, lin.In),
                                P($"{lin.Module}.lora_B.weight", ParameterRole.LoraB, lin.Weight.ViewOf!.Value.Source.Shape[0], rank));
                            fusedLora[lin.Module] = ab;
                            trainableNames.Add(ab.A.Name);
                            trainableNames.Add(ab.B.Name);
                        }
                        var bRows = new Parameter(ab.B.Name, [lin.Out, rank], ParameterRole.LoraB) { ViewOf = (ab.B, row) };
                        views.Add(bRows);
                        lin.Lora = new LoraAdapter(ab.A, bRows, (float)setup.LoraScaleFor(lin.Module), (float)setup.LoraDropout);
                        continue;
                    }
                    var a = P($"{lin.Module}.lora_A.weight", ParameterRole.LoraA, rank, lin.In);
                    var b = P($"{lin.Module}.lora_B.weight", ParameterRole.LoraB, lin.Out, rank);
                    lin.Lora = new LoraAdapter(a, b, (float)setup.LoraScaleFor(lin.Module), (float)setup.LoraDropout);
                    trainableNames.Add(a.Name);
                    trainableNames.Add(b.Name);
                }

        if (expertTargets.Count > 0 && loraModules.Overlaps(expertTargets))
            foreach (var layer in _layers)
                if (layer.Experts is { } x)
                    foreach (var p in AddExpertLora(x, loraModules, P)) trainableNames.Add(p.Name);
        if (TrainableModules.RouterTarget(spec) is { } router && loraModules.Contains(router))
            foreach (var layer in _layers)
                if (layer.Experts is { } x)
                    foreach (var p in AddRouterLora(x, P)) trainableNames.Add(p.Name);

        // TRL's AutoModelForCausalLMWithValueHead: v_head.summary = Linear(hidden, 1) on the final-normed hidden state,
        // trained whatever the finetuning type (LLaMA-Factory's reward model trains it beside the adapter or the weights).
        if (setup.ValueHead)
        {
            _valueHeadWeight = P(ValueHeadWeightName, ParameterRole.Weight, 1, c);
            _valueHeadBias = P(ValueHeadBiasName, ParameterRole.Bias, 1);
            trainableNames.Add(_valueHeadWeight.Name);
            trainableNames.Add(_valueHeadBias.Name);
        }

        // Adapters of linears that share an input form a group whose A values and A grads are one stacked tensor each.
        var stackedA = new Dictionary<Parameter, (LoraGroup Group, int Index)>();
        foreach (var layer in _layers)
            for (int s = 0; s < DecoderLayer.InputSetCount; s++)
            {
                var adapted = layer.InputSets[s].Where(l => l.Lora is not null).ToArray();
                if (adapted.Length == 0) continue;
                var group = new LoraGroup(adapted);
                layer.LoraGroups[s] = group;
                for (int j = 0; j < adapted.Length; j++) stackedA[adapted[j].Lora!.A] = (group, j);
            }

        // One arena: values (compute dtype), then per trainable parameter master (unless F32 compute), m, v, then every
        // gradient in one run (ZeroGrad zeroes it with one memset, not one per tensor); a stacked LoRA A has its value and
        // grad in its group's tensors and only master, m, v of its own.
        var builder = new TensorArena.Builder();
        var groupHandles = new Dictionary<LoraGroup, (int Value, int Grad)>();
        var groupNames = new Dictionary<LoraGroup, string>();
        foreach (var layer in _layers)
            for (int s = 0; s < DecoderLayer.InputSetCount; s++)
                if (layer.LoraGroups[s] is { } g)
                {
                    groupNames[g] = $"model.layers.{layer.Index}.lora_A.{string.Join('+', g.Linears.Select(l => l.ShortName).Distinct())}";
                    groupHandles[g] = (builder.Add(groupNames[g], backend.ComputeDType, g.Rows, g.In), -1);
                }
        var handles = new Dictionary<Parameter, (bool Trainable, int Value, int Master, int Grad, int M, int V)>();
        bool separateMaster = backend.ComputeDType != DType.F32;
        // ZeRO-3: the trainable parameters' values and gradients live in gather windows, their masters in this rank's shards.
        // ZeRO-2 with ShardedGradients: only the gradients live in windows, the values and masters stay whole.
        bool valuesSharded = setup.ShardedParameters is not null;
        var shardPlan = (setup.ShardedParameters ?? setup.ShardedGradients) is { } sharding
            ? PlanShards(builder, backend, _allParameters, _layers, trainableNames, sharding, valuesSharded) : default;
        bool noMoments = setup.ShardedOptimizerStates || setup.ShardedParameters is not null;
        // PEFT's ModulesToSaveWrapper keeps the original module beside the trained copy, and disable_adapter() runs
        // the original: the base values of LoRA's additional_target modules stay here for the adapter-disabled forward.
        var originalHandles = new Dictionary<Parameter, int>();
        if (setup.FinetuningType == FinetuningType.Lora)
            foreach (var p in _allParameters)
                if (trainableNames.Contains(p.Name) && p.Role is not (ParameterRole.LoraA or ParameterRole.LoraB)
                    && !ReferenceEquals(p, _valueHeadWeight) && !ReferenceEquals(p, _valueHeadBias))
                    originalHandles[p] = builder.Add(p.Name + ".original", backend.ComputeDType, p.Shape);
        foreach (var p in _allParameters)
        {
            bool stacked = stackedA.ContainsKey(p), trainable = trainableNames.Contains(p.Name);
            bool quantized = HeldQuantized(p, trainable);
            bool gradInWindow = trainable && shardPlan.Groups is not null, valueInWindow = gradInWindow && valuesSharded;
            if (quantized) PlanQuantized(builder, p);
            int value = stacked || quantized || valueInWindow ? -1 : builder.Add(p.Name, backend.ComputeDType, p.Shape);
            int master = -1, m = -1, v = -1;
            if (trainable && !valueInWindow && separateMaster) master = builder.Add(p.Name + ".master", DType.F32, p.Shape);
            if (trainable && !noMoments) (m, v) = PlanMoments(builder, p);
            handles[p] = (trainable, value, master, -1, m, v);
        }
        var gradHandles = new List<int>();
        foreach (var (g, name) in groupNames)
            if (trainableNames.Contains(g.Linears[0].Lora!.A.Name))
            {
                groupHandles[g] = (groupHandles[g].Value, builder.Add(name + ".grad", DType.F32, g.Rows, g.In));
                gradHandles.Add(groupHandles[g].Grad);
            }
        // The gradients in one run of the arena (one memset zeroes them all), except where ZeRO's windows hold them.
        foreach (var p in _allParameters)
            if (handles[p] is { Trainable: true } h && !stackedA.ContainsKey(p) && shardPlan.Groups is null)
            {
                h.Grad = builder.Add(p.Name + ".grad", DType.F32, p.Shape);
                handles[p] = h;
                gradHandles.Add(h.Grad);
            }
        PlanDequantScratch(builder);
        int normHandle = builder.Add("grad_norm_squared", DType.F32, 1);
        _weights = builder.Build(backend);
        BindQuantized();
        _gradNormSquared = _weights[normHandle];
        _gradRun = GradientRun(_weights, gradHandles);
        _gradientsInWindows = shardPlan.Groups is not null;
        var places = shardPlan.Groups is { } planned ? BindShards(planned, shardPlan.Shards, shardPlan.Windows) : new Dictionary<Parameter, ParameterShard>();
        foreach (var (g, gh) in groupHandles)
        {
            g.A = _weights[gh.Value];
            g.AGrad = gh.Grad >= 0 ? _weights[gh.Grad] : null;
        }

        _trainable = [];
        bool peftNames = setup.FinetuningType == FinetuningType.Lora;
        foreach (var p in _allParameters)
        {
            var hd = handles[p];
            Tensor? grad = null;
            if (stackedA.TryGetValue(p, out var sa))
            {
                long offset = (long)sa.Group.RowOffset(sa.Index) * sa.Group.In;
                p.Value = sa.Group.A.View(offset, p.Shape, p.Name);
                if (sa.Group.AGrad is { } ag) grad = ag.View(offset, p.Shape, p.Name + ".grad");
            }
            else if (hd.Value >= 0)
            {
                p.Value = _weights[hd.Value];
                if (hd.Grad >= 0) grad = _weights[hd.Grad];
            }
            var place = places.GetValueOrDefault(p);
            if (place is not null)
            {
                if (valuesSharded) p.Value = place.Group.Window.View(place.Offset, p.Shape, p.Name);
                grad = place.Group.GradWindow.View(place.Offset, p.Shape, p.Name + ".grad");
            }
            if (!hd.Trainable) continue;
            // The value head is saved apart (value_head.safetensors) under its own names, never as a PEFT module.
            string saved = peftNames && !IsValueHead(p) ? "base_model.model." + p.Name : p.Name;
            var master = place is not null && valuesSharded ? null : separateMaster ? _weights[hd.Master] : p.Value;
            p.Trainable = new TrainableParameter(saved, p.Name, p.Shape, p.Role, p.Value, master, grad!,
                hd.M >= 0 ? _weights[hd.M] : null, hd.V >= 0 ? _weights[hd.V] : null)
            {
                EightBit = EightBitMomentsOf(p),
                Shard = place,
            };
            _trainable.Add(p.Trainable);
            place?.Group._parameters.Add(p.Trainable);
        }
        _trainableGrads = [.. _trainable.Select(t => t.Grad)];
        if (shardPlan.Groups is { } groups)
        {
            _shardedGroups = [.. groups];
            _outerGroup = groups.FirstOrDefault(g => g.Slot == 0);
            _layerGroups = _layers.Select(l => groups.FirstOrDefault(g => g.Layer == l.Index)).ToArray();
        }

        foreach (var view in views) view.ResolveView();
        LoadWeights(weights);
        foreach (var (p, h) in originalHandles)
        {
            p.Original = _weights[h];
            backend.Copy(p.Original, p.Value);
        }
        LowestBackwardLayer = ComputeLowestBackwardLayer();
    }

    /// <summary>Builds the model from a spec and a weight source (a checkpoint or <see cref="RandomWeights"/>).</summary>
    public static CausalLM Create(TransformerSpec spec, IBackend backend, TrainingSetup setup, IWeightSource weights) =>
        new(spec, backend, setup, weights);

    public TransformerSpec Spec { get; }
    public IBackend Backend { get; }
    public TrainingSetup Setup { get; }

    /// <summary>Parameters the optimizer updates, in model order (PEFT/HF names).</summary>
    public IReadOnlyList<TrainableParameter> TrainableParameters => _trainable;

    /// <summary>
    /// Counts training forwards; LoRA dropout and NEFTune noise are seeded by (seed, counter, module), so a
    /// checkpoint saves this value and a resumed run restores it to continue bit-identically.
    /// </summary>
    public long RandomCounter { get; set; }

    /// <summary>
    /// Forces LoRA through one linear at a time (x·Aᵀ per adapter, LoRA term added into y) even where the grouped
    /// path applies: tests compare the two paths on the same weights.
    /// </summary>
    internal bool PerLinearLora { get; set; }

    /// <summary>The decoder layers (tests inspect the LoRA groups).</summary>
    internal IReadOnlyList<DecoderLayer> Layers => _layers;

    /// <summary>
    /// Whether LoRA runs grouped (stacked A per input set): always, unless forced per linear or the pass is a
    /// training pass with dropout, where each linear sees its own mask of x.
    /// </summary>
    private bool GroupedLora(bool training) => !PerLinearLora && !(training && Setup.LoraDropout > 0);

    /// <summary>Bytes of weights, gradients and optimizer state; bytes of activations for the current capacity.</summary>
    public long WeightBytes => _weights.ByteLength;
    public long ActivationBytes => (_acts?.ByteLength ?? 0) + (_expertActs?.ByteLength ?? 0);

    /// <summary>Layers below this one need no backward (nothing trainable there or below).</summary>
    internal int LowestBackwardLayer { get; }

    private int ComputeLowestBackwardLayer()
    {
        if (_embed.IsTrainable) return 0;
        for (int l = 0; l < _layers.Length; l++)
            if (_layers[l].HasTrainable) return l;
        return _layers.Length;
    }

    private void LoadWeights(IWeightSource source)
    {
        var host = Array.Empty<float>();
        foreach (var p in _allParameters)
        {
            if ((int)p.Length > host.Length) host = new float[p.Length];
            var span = host.AsSpan(0, (int)p.Length);
            if (_quantized.TryGetValue(p, out var slot)) { LoadQuantized(p, slot, source, span); continue; }
            if (p.Shape.Length == 3 && ExpertBlock.IsStack(Spec.Family, p.Name)) ReadExpertStack(source, p, span);
            else
            if (p.Role == ParameterRole.LoraA)
            {
                // PEFT: kaiming_uniform_(a=√5) ⇒ U(−1/√fan_in, 1/√fan_in), seeded per tensor name (an expert A [E, R, in]: fan_in = in).
                float bound = 1f / MathF.Sqrt(p.Shape[^1]);
                ulong s = Seeds.Mix((ulong)Setup.Seed, Seeds.Hash(p.Name));
                for (int i = 0; i < span.Length; i++) span[i] = (float)((2 * Seeds.Uniform(s, i) - 1) * bound);
            }
            else if (p.Role == ParameterRole.LoraB) span.Clear();
            else if (IsValueHead(p))
            {
                // torch nn.Linear's default for weight and bias alike: U(−1/√in, 1/√in), seeded per tensor name.
                float bound = 1f / MathF.Sqrt(Spec.HiddenSize);
                ulong s = Seeds.Mix((ulong)Setup.Seed, Seeds.Hash(p.Name));
                for (int i = 0; i < span.Length; i++) span[i] = (float)((2 * Seeds.Uniform(s, i) - 1) * bound);
            }
            else source.Read(SourceName(source, p.Name), p.Shape, span);
            if (p.Trainable is { Shard.Group.ShardsValues: true } shardedParameter) { LoadMaster(shardedParameter, span); continue; }
            Backend.Upload(p.Value, span);
            if (p.Trainable is { } t && !ReferenceEquals(t.Master, t.Value)) Backend.Upload(t.Master, span);
        }
    }

    /// <summary>
    /// Zeroes every trainable gradient: one memset over the arena's run of gradients (per piece of 2³⁰ floats); under
    /// ZeRO's per-layer windows, each trainable gradient (its window view or owned chunk) in turn.
    /// </summary>
    public void ZeroGrad()
    {
        foreach (var piece in _gradRun) Backend.Zero(piece);
        if (_gradientsInWindows)
            foreach (var t in _trainable) Backend.Zero(t.Grad);
    }

    /// <summary>
    /// F32 views covering the gradients declared consecutively as <paramref name="handles"/> (and the alignment padding
    /// between them, which nothing else uses), in pieces a tensor's int shape can hold.
    /// </summary>
    private static Tensor[] GradientRun(TensorArena arena, List<int> handles)
    {
        if (handles.Count == 0) return [];
        var first = arena[handles[0]];
        var last = arena[handles[^1]];
        long start = first.Offset, end = last.Offset + last.Length;
        const long Piece = 1L << 30;
        var pieces = new List<Tensor>();
        for (long at = start; at < end; at += Piece)
            pieces.Add(new Tensor(arena.Buffer, at, DType.F32, [(int)Math.Min(Piece, end - at)], "gradients"));
        return [.. pieces];
    }

    /// <summary>Σ‖grad‖² over trainable parameters, left on the device (F32 scalar) for AdamW's clipping.</summary>
    public Tensor GradNormSquared()
    {
        Backend.Zero(_gradNormSquared);
        Backend.SumOfSquaresMany(_trainableGrads, _gradNormSquared);
        return _gradNormSquared;
    }

    /// <summary>
    /// One AdamW update of every trainable parameter, each with its hyper-parameters from <paramref name="adamW"/>: the
    /// ones with F32 moments through one <see cref="IBackend.AdamWMany"/> (one launch on CUDA), 8-bit ones one by one.
    /// The same bits as <see cref="TrainableParameter.Step"/> of each in turn.
    /// </summary>
    public void OptimizerStep(Func<TrainableParameter, AdamWStep> adamW, Tensor? gradNormSquared)
    {
        _f32Stepped ??= [.. _trainable.Where(t => t.EightBit is null)];
        _f32Tensors ??= [.. _f32Stepped.Select(t => t.AdamWTensors)];
        _f32Steps ??= new AdamWStep[_f32Stepped.Length];
        for (int i = 0; i < _f32Stepped.Length; i++) _f32Steps[i] = adamW(_f32Stepped[i]);
        Backend.AdamWMany(_f32Tensors, _f32Steps, gradNormSquared);
        foreach (var t in _trainable)
            if (t.EightBit is not null) t.Step(adamW(t), gradNormSquared);
    }

    /// <summary>Host copy of a parameter's current value by HF name (tests, merging, export).</summary>
    public float[] ReadParameter(string hfName)
    {
        var p = _allParameters.FirstOrDefault(x => x.Name == hfName)
            ?? throw new KeyNotFoundException($"the model has no parameter '{hfName}'");
        var host = new float[p.Length];
        if (TryReadQuantized(p, host)) return host;
        if (p.Trainable is { Shard.Group.ShardsValues: true } sharded)
            return GatheredParameters?.GetValueOrDefault(sharded)?.ToArray() ?? throw new InvalidOperationException(
                $"{hfName}: under ZeRO-3 no rank holds the whole parameter; read it inside DataParallel.GatherParameters.");
        Backend.Download(p.Trainable?.Master ?? p.Value, host);
        return host;
    }

    /// <summary>Overwrites a parameter (value and master) from host values, by HF name.</summary>
    public void WriteParameter(string hfName, ReadOnlySpan<float> values)
    {
        var p = _allParameters.FirstOrDefault(x => x.Name == hfName)
            ?? throw new KeyNotFoundException($"the model has no parameter '{hfName}'");
        if (TryWriteQuantized(p, values)) return;
        if (p.Trainable is { Shard.Group.ShardsValues: true } sharded) { LoadMaster(sharded, values); return; }
        Backend.Upload(p.Value, values);
        if (p.Trainable is { } t && !ReferenceEquals(t.Master, t.Value)) Backend.Upload(t.Master, values);
    }

    /// <summary>HF names of every parameter, base weights and LoRA tensors, in model order.</summary>
    public IReadOnlyList<string> ParameterNames => _allParameters.Select(p => p.Name).ToList();

    public void Dispose()
    {
        _acts?.Dispose();
        _expertActs?.Dispose();
        _rope?.Dispose();
        _weights.Dispose();
    }
}
