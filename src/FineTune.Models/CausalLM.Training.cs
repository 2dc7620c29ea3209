using FineTune.Engine;

namespace FineTune.Models;

public sealed partial class CausalLM
{
    private int[] _hostRows = [];
    private int[] _hostLabels = [];
    private readonly float[] _hostLoss = new float[1];
    /// <summary>Counts forwards into the activations: a backward checks that its forward is still the last one.</summary>
    private long _forwardCount;

    /// <summary>
    /// Forward and backward of one micro-batch: accumulates lossScale·∂(Σ token losses)/∂θ into every
    /// trainable gradient (pass 1/labelled-tokens-of-the-step for a mean) and returns the summed loss.
    /// </summary>
    public LossResult ForwardBackward(TokenBatch batch, float lossScale = 1f)
    {
        int m = Prepare(batch, training: true);
        int n = batch.TokenCount;
        var pass = TrainingForward(batch, n, RandomCounter++);
        double loss = Head(n, m, lossScale, grad: true);
        _auxGradScale = AuxGradScale(batch);
        try { LayersBackward(pass); }
        finally { _auxGradScale = 0; }
        return new LossResult(loss, m) { RouterAuxLoss = RouterAuxLossCoef == 0 ? null : RouterAuxLoss(batch) };
    }

    /// <summary>What the backward of a training forward needs besides the activations: the tokens, the attention shape, the draw.</summary>
    private readonly record struct TrainingPass(int Tokens, AttentionShape Shape, ulong Seed);

    /// <summary>
    /// The training forward through every layer with LoRA dropout and NEFTune drawn at <paramref name="randomCounter"/>
    /// (callers pass <see cref="RandomCounter"/>++); leaves res_L in the last residual for a head.
    /// </summary>
    private TrainingPass TrainingForward(TokenBatch batch, int n, long randomCounter)
    {
        var acts = _acts!;
        ulong seed = Seeds.Mix((ulong)Setup.Seed, (ulong)randomCounter);
        Gather(_outerGroup); // ZeRO-3: the embeddings and head stay gathered through the pass and its backward
        EmbedTokens(n, batch.SeqLen, seed, training: true);
        var shape = AttentionShape.Training(batch.BatchSize, batch.SeqLen, Spec.NumHeads, Spec.NumKvHeads, Spec.HeadDim) with { Unpacked = batch.RowsAreSingleSequences };
        BeginRouterStatistics(batch);
        try
        {
            for (int l = 0; l < _layers.Length; l++)
            {
                Gather(LayerGroup(l));
                LayerForward(_layers[l], LayerActs(l), acts.Residual[l], acts.Residual[l + 1], n, shape, seed, training: true);
            }
        }
        finally { _routerStatistics = false; }
        return new TrainingPass(n, shape, seed);
    }

    /// <summary>
    /// From ∂L/∂res_L in Dres (a head's backward) down through the layers (recomputing each layer's forward under
    /// gradient checkpointing) into the embeddings: accumulates every trainable gradient.
    /// </summary>
    private void LayersBackward(TrainingPass pass)
    {
        var acts = _acts!;
        var (n, shape, seed) = (pass.Tokens, pass.Shape, pass.Seed);
        var finished = GradientsFinished;
        finished?.Invoke(0); // every head's backward (lm_head, final norm, value head) ran before this
        for (int l = _layers.Length - 1; l >= LowestBackwardLayer; l--)
        {
            var a = LayerActs(l);
            Gather(LayerGroup(l)); // ZeRO-3: again, for the recompute and the backward (the window held another layer)
            if (RecomputesLayer(l))
                LayerForward(_layers[l], a, acts.Residual[l], acts.Residual[l + 1], n, shape, seed, training: true, recompute: true);
            else if (acts.Storage[l] == LayerStorage.Selective)
                RecomputeSelective(_layers[l], a, acts.Residual[l], n);
            LayerBackward(_layers[l], a, acts.Residual[l], n, shape, seed);
            finished?.Invoke(_layers.Length - l);
            ReleaseGradients(LayerGroup(l));
        }
        if (_embed.Grad is { } eg)
        {
            if (EmbeddingScale is { } es) Backend.Scale(Rows(acts.Dres, n), es);
            Backend.EmbeddingBackward(eg, Rows(acts.Dres, n), Head1(acts.Ids, n));
        }
        finished?.Invoke(_layers.Length + 1);
        ReleaseGradients(_outerGroup);
    }

    /// <summary>
    /// Data parallel's overlap hook: during a training backward, called each time a group of trainable gradients is final
    /// for that backward, with the <see cref="BackwardStage"/> of the group: 0 when the layers' backward starts (the head's
    /// gradients — lm_head, final norm, value head — are done), L − l after layer l's backward, and L + 1 after the
    /// embeddings', always, as the last call (also when no layer needed a backward).
    /// </summary>
    public Action<int>? GradientsFinished { get; set; }

    private Dictionary<TrainableParameter, int>? _backwardStages;

    /// <summary>
    /// The <see cref="GradientsFinished"/> stage after which <paramref name="p"/>'s gradient is final: 0 for the head's
    /// parameters, L − l for layer l's (its norms, linears, experts and LoRA adapters), L + 1 for the embeddings (and a
    /// tied LM head, which the embedding backward adds to last) and for anything this map does not place.
    /// </summary>
    public int BackwardStage(TrainableParameter p)
    {
        if (_backwardStages is null)
        {
            var stages = new Dictionary<TrainableParameter, int>();
            foreach (var head in new[] { _finalNorm, _lmHead, _valueHeadWeight, _valueHeadBias })
                if (head?.Trainable is { } t) stages[t] = 0;
            foreach (var layer in _layers)
            {
                var own = layer.Parameters.Concat(layer.Linears.Where(x => x.Lora is not null).SelectMany(x => new[] { x.Lora!.A, x.Lora.B }));
                foreach (var q in own)
                    if ((q.ViewOf?.Source ?? q).Trainable is { } t) stages[t] = _layers.Length - layer.Index;
            }
            if (_embed.Trainable is { } e) stages[e] = _layers.Length + 1;
            _backwardStages = stages;
        }
        return _backwardStages.TryGetValue(p, out int stage) ? stage : _layers.Length + 1;
    }

    /// <summary>Forward only (evaluation): the summed loss over labelled tokens, no dropout, no gradients.</summary>
    public LossResult Forward(TokenBatch batch)
    {
        int m = Prepare(batch, training: false);
        int n = batch.TokenCount;
        RunForward(batch, n);
        return new LossResult(Head(n, m, 1f, grad: false), m);
    }

    /// <summary>
    /// The summed loss of the training forward (LoRA dropout and NEFTune noise as ForwardBackward draws them at
    /// <paramref name="randomCounter"/>), without gradients: finite-difference checks of the stochastic path.
    /// </summary>
    internal double TrainingLoss(TokenBatch batch, long randomCounter)
    {
        int m = Prepare(batch, training: true);
        TrainingForward(batch, batch.TokenCount, randomCounter);
        return Head(batch.TokenCount, m, 1f, grad: false);
    }

    /// <summary>Logits [tokens, vocab] of every position (tests and small models; generation uses the KV cache).</summary>
    public float[] ForwardLogits(TokenBatch batch)
    {
        Prepare(batch, training: false);
        int n = batch.TokenCount, v = Spec.VocabSize;
        RunForward(batch, n);
        var acts = _acts!;
        Backend.RmsNorm(Rows(acts.LnF, n), Head1(acts.RstdF, n), Rows(acts.Residual[^1], n), _finalNorm.Value, (float)Spec.RmsNormEps, Spec.NormWeightOffset);
        var result = new float[(long)n * v];
        for (int r0 = 0; r0 < n; r0 += acts.ChunkRows)
        {
            int cr = Math.Min(acts.ChunkRows, n - r0);
            var logits = acts.Logits.View(0, [cr, v]);
            Backend.MatMul(logits, acts.LnF.View((long)r0 * Spec.HiddenSize, [cr, Spec.HiddenSize]), false, HeadWeight.Value, true);
            if (Spec.FinalLogitSoftcap > 0) Backend.SoftCap(logits, logits, (float)Spec.FinalLogitSoftcap);
            Backend.Download(logits, result.AsSpan(r0 * v, cr * v));
        }
        return result;
    }

    private void RunForward(TokenBatch batch, int n)
    {
        var acts = _acts!;
        Gather(_outerGroup);
        EmbedTokens(n, batch.SeqLen, 0, training: false);
        var shape = AttentionShape.Training(batch.BatchSize, batch.SeqLen, Spec.NumHeads, Spec.NumKvHeads, Spec.HeadDim) with { Unpacked = batch.RowsAreSingleSequences };
        for (int l = 0; l < _layers.Length; l++)
        {
            Gather(LayerGroup(l));
            LayerForward(_layers[l], LayerActs(l), acts.Residual[l], acts.Residual[l + 1], n, shape, 0, training: false);
        }
    }

    /// <summary>True inside <see cref="WithoutAdapters{T}"/>: LinearForward and SetForward skip every LoRA adapter.</summary>
    private bool _adaptersOff;

    /// <summary>
    /// Runs <paramref name="body"/> as the base model (PEFT's disable_adapter()): every LoRA adapter skipped and every
    /// additional_target parameter reading its base value; the trained values are back when it returns.
    /// </summary>
    private T WithoutAdapters<T>(Func<T> body)
    {
        var swapped = _allParameters.Where(p => p.Original is not null).ToArray();
        foreach (var p in swapped) (p.Value, p.Original) = (p.Original!, p.Value);
        _adaptersOff = true;
        try { return body(); }
        finally
        {
            _adaptersOff = false;
            foreach (var p in swapped) (p.Value, p.Original) = (p.Original!, p.Value);
        }
    }

    private Parameter HeadWeight => _lmHead ?? _embed;

    private LayerActivations LayerActs(int l) => _acts!.Layers[l];

    private static Tensor Rows(Tensor t, int n) => t.View(0, [n, t.Cols]);
    private static Tensor Head1(Tensor t, long count) => t.View(0, [checked((int)count)]);

    /// <summary>Validates and uploads a batch; returns the number of labelled positions.</summary>
    private int Prepare(TokenBatch batch, bool training)
    {
        batch.Validate();
        _forwardCount++;
        AdvanceFp8Histories();
        int n = batch.TokenCount;
        if (_acts is null || _acts.Capacity < n || (training && !_acts.Training))
        {
            int capacity = Math.Max(n, _acts?.Capacity ?? 0);
            _acts?.Dispose();
            _acts = null;
            // Planned after the old arena is gone: auto counts what the device holds and could still give.
            CheckpointingPlan = PlanActivations(capacity, training);
            _acts = new ModelActivations(Backend, Spec, _layers, CheckpointingPlan.Layers, training,
                capacity, Math.Max(1, Setup.LogitsChunkRows), fp8Codes: Fp8CodesInArena);
        }
        int maxPos = 0;
        foreach (int p in batch.PositionIds)
        {
            if (p < 0) throw new ArgumentException($"negative position id {p} in the batch");
            maxPos = Math.Max(maxPos, p);
        }
        EnsureRope(maxPos + 1);
        var acts = _acts;
        Backend.Upload(Head1(acts.Ids, n), batch.InputIds);
        Backend.Upload(Head1(acts.Labels, n), batch.Labels);
        Backend.Upload(Head1(acts.Positions, n), batch.PositionIds);
        Backend.Upload(Head1(acts.Segments, n), batch.SegmentIds);
        // Only labelled rows reach the LM head: gather them (prompt tokens cost no vocabulary-sized work).
        if (_hostRows.Length < n) { _hostRows = new int[n]; _hostLabels = new int[n]; }
        int m = 0;
        for (int i = 0; i < n; i++)
        {
            int label = batch.Labels[i];
            if (label == -100) continue;
            if ((uint)label >= (uint)Spec.VocabSize) throw new ArgumentException($"label {label} at position {i} is outside the vocabulary of {Spec.VocabSize}");
            _hostRows[m] = i;
            _hostLabels[m] = label;
            m++;
        }
        if (m > 0)
        {
            Backend.Upload(Head1(acts.CompactRows, m), _hostRows.AsSpan(0, m));
            Backend.Upload(Head1(acts.CompactLabels, m), _hostLabels.AsSpan(0, m));
        }
        return m;
    }

    private void EnsureRope(int positions)
    {
        // dynamic NTK and longrope tables depend on the longest sequence: rebuilt for each length past the threshold.
        bool dynamic = (Spec.RopeScaling?.Type == "dynamic" && positions > Spec.MaxPositionEmbeddings)
            || (Spec.RopeScaling?.Type == "longrope" && (positions > RopeTables.LongRopeThreshold(Spec) || _ropeLength > RopeTables.LongRopeThreshold(Spec)));
        if (positions <= _ropeLength && !dynamic) return;
        int length = dynamic ? positions : Math.Max(positions, Math.Min(Math.Max(256, _ropeLength * 2), Math.Max(positions, Spec.MaxPositionEmbeddings)));
        // A longrope table within the pre-training context must stay within it (its short factors hold only there).
        if (Spec.RopeScaling?.Type == "longrope" && positions <= RopeTables.LongRopeThreshold(Spec))
            length = Math.Min(length, RopeTables.LongRopeThreshold(Spec));
        if (dynamic && length == _ropeLength) return;
        int half = Spec.HeadDim / 2;
        var cos = new float[(long)length * half];
        var sin = new float[(long)length * half];
        RopeTables.Compute(Spec, length, cos, sin);
        _rope?.Dispose();
        var b = new TensorArena.Builder();
        int hc = b.Add("rope_cos", DType.F32, length, half), hs = b.Add("rope_sin", DType.F32, length, half);
        bool local = Spec.LocalRopeTheta is not null;
        int lc = local ? b.Add("rope_cos_local", DType.F32, length, half) : -1, ls = local ? b.Add("rope_sin_local", DType.F32, length, half) : -1;
        _rope = b.Build(Backend);
        _cos = _rope[hc];
        _sin = _rope[hs];
        Backend.Upload(_cos, cos);
        Backend.Upload(_sin, sin);
        if (local)
        {
            LocalRopeTable(Spec, length, cos, sin);
            (_cosLocal, _sinLocal) = (_rope[lc], _rope[ls]);
            Backend.Upload(_cosLocal, cos);
            Backend.Upload(_sinLocal, sin);
        }
        _ropeLength = length;
        RopeVersion++;
    }

    /// <summary>Counts rebuilds of the rope tables: a recorded decode graph names the tables it was recorded with.</summary>
    internal int RopeVersion { get; private set; }

    private void EmbedTokens(int n, int seqLen, ulong seed, bool training)
    {
        var acts = _acts!;
        var x = Rows(acts.Residual[0], n);
        Backend.Embedding(x, _embed.Value, Head1(acts.Ids, n));
        if (EmbeddingScale is { } es) Backend.Scale(x, es);
        if (training && Setup.NeftuneNoiseAlpha is { } alpha && alpha > 0)
            Backend.AddUniformNoise(x, (float)(alpha / Math.Sqrt((double)seqLen * Spec.HiddenSize)), Seeds.Mix(seed, 0xE0E0));
    }

    private static ulong LinearSeed(ulong seed, int layer, int linear) => Seeds.Mix(seed, (ulong)(layer * 8 + linear + 1));

    /// <summary>
    /// The layer's forward from res_l in <paramref name="xFull"/> to res_{l+1} in <paramref name="yFull"/>. A
    /// <paramref name="recompute"/> (gradient checkpointing, just before the layer's backward) computes only what the
    /// backward reads: res_{l+1} is the stored checkpoint already, so a pre-norm block skips the MLP's frozen down
    /// product and the residual add (<see cref="LayerTail"/>).
    /// </summary>
    private void LayerForward(DecoderLayer L, LayerActivations a, Tensor xFull, Tensor yFull, int n, AttentionShape shape, ulong seed, bool training,
        bool recompute = false)
    {
        var acts = _acts!;
        var x = Rows(xFull, n);
        shape = shape with { Variant = Spec.AttentionVariantOf(L.Index) };
        var (q, k, v) = AttentionInputs(L, a, x, Head1(acts.Positions, n), n, seed, training);
        var att = Rows(a.Att, n);
        Backend.Attention(att, Head1(a.Lse, (long)n * Spec.NumHeads), q, k, v, Head1(acts.Segments, n), shape);
        LayerTail(L, a, x, att, Rows(yFull, n), n, seed, training, recompute);
    }

    /// <summary>ln1 = rmsnorm(x); q, k, v = projections of ln1 (q/k normed for qwen3), RoPE applied to q and k.</summary>
    private (Tensor Q, Tensor K, Tensor V) AttentionInputs(DecoderLayer L, LayerActivations a, Tensor x, Tensor pos, int n, ulong seed, bool training)
    {
        var B = Backend;
        float eps = (float)Spec.RmsNormEps;
        var ln1 = Rows(a.Ln1, n);
        // A training forward or recompute with fp8_scaling: delayed, q/k/v's shared cast site ready: the norm writes ln1's
        // E4M3 codes too, and the set's FP8 products read them (the site's scale is fixed through the pass, so a
        // recompute writes the forward's codes).
        Fp8Operand? ln1Codes = null;
        if (training && _acts!.NormCodes is { } codes && SharedFp8Site(L.InputSets[0]) is { } site)
        {
            B.RmsNormFp8(ln1, Head1(a.Rstd1, n), x, L.InputNorm.Value, eps, Spec.NormWeightOffset, codes, site);
            ln1Codes = codes;
        }
        else B.RmsNorm(ln1, Head1(a.Rstd1, n), x, L.InputNorm.Value, eps, Spec.NormWeightOffset);
        var q = Rows(a.Q, n);
        var k = Rows(a.K, n);
        var v = Rows(a.V, n);
        if (Spec.QkNorm)
        {
            var qPre = Rows(a.QPre!, n);
            var kPre = Rows(a.KPre!, n);
            SetForward(L, 0, [qPre, kPre, v], ln1, a, n, seed, training, ln1Codes);
            B.RmsNorm(q, Head1(a.QRstd!, (long)n * Spec.NumHeads), qPre, L.QNorm!.Value, eps, Spec.NormWeightOffset);
            B.RmsNorm(k, Head1(a.KRstd!, (long)n * Spec.NumKvHeads), kPre, L.KNorm!.Value, eps, Spec.NormWeightOffset);
        }
        else SetForward(L, 0, [q, k, v], ln1, a, n, seed, training, ln1Codes);
        var (cos, sin) = RopeTablesOf(L);
        B.Rope(q, pos, cos, sin, Spec.HeadDim, inverse: false);
        B.Rope(k, pos, cos, sin, Spec.HeadDim, inverse: false);
        return (q, k, v);
    }

    /// <summary>
    /// After attention: resMid = x + o(att), ln2 = rmsnorm(resMid), y = resMid + down(silu(gate(ln2)) ⊙ up(ln2)). A
    /// recompute stops at act: the backward of down reads only act and down's LoRA input xa (<see cref="SetLoraInputs"/>),
    /// and y is the checkpoint. The sandwich block's post-feedforward norm reads down's output, so it runs whole.
    /// </summary>
    private void LayerTail(DecoderLayer L, LayerActivations a, Tensor x, Tensor att, Tensor y, int n, ulong seed, bool training, bool recompute)
    {
        if (Spec.Sandwich) { SandwichTail(L, a, x, att, y, n, seed, training); return; }
        var B = Backend;
        var resMid = Rows(a.ResMid, n);
        SetForward(L, 1, [resMid], att, a, n, seed, training);
        // resMid = x + o(att) and ln2 = rmsnorm(resMid) in one pass; in a training forward or recompute with gate/up's
        // shared cast site ready (fp8_scaling: delayed), ln2's E4M3 codes too, which gate's and up's products read.
        var ln2 = Rows(a.Ln2, n);
        Fp8Operand? ln2Codes = null;
        if (training && L.Experts is null && _acts!.NormCodes is { } normCodes && SharedFp8Site(L.InputSets[2]) is { } normSite)
        {
            B.ResidualRmsNormFp8(resMid, ln2, Head1(a.Rstd2, n), resMid, x, L.PostAttentionNorm.Value, (float)Spec.RmsNormEps, 0f, normCodes, normSite);
            ln2Codes = normCodes;
        }
        else B.ResidualRmsNorm(resMid, ln2, Head1(a.Rstd2, n), resMid, x, L.PostAttentionNorm.Value, (float)Spec.RmsNormEps);
        if (L.Experts is not null)
        {
            ExpertsForward(L, ln2, y, n, training, recompute);
            if (!recompute) B.Add(y, resMid);
            return;
        }
        var gate = Rows(a.Gate, n);
        var up = Rows(a.Up, n);
        var act = Rows(a.Act, n);
        SetForward(L, 2, [gate, up], ln2, a, n, seed, training, ln2Codes);
        if (recompute)
        {
            B.SwiGlu(act, gate, up);
            SetLoraInputs(L, 3, act, a, n, seed);
            return;
        }
        // A training forward with fp8_scaling: delayed, down_proj's input site ready: SwiGLU writes act's E4M3 codes too,
        // and down's base product reads them (into the pass's arena: an evaluation or a generation step, whose
        // activations may be another arena, casts as before).
        Fp8Operand? actCodes = null;
        if (training && _acts!.ActCodes is { } codes && FusedFp8Site(L.Down!, outputGradient: false) is { } site)
        {
            B.SwiGluFp8(act, gate, up, codes, site);
            actCodes = codes;
        }
        else B.SwiGlu(act, gate, up);
        SetForward(L, 3, [y], act, a, n, seed, training, actCodes);
        B.Add(y, resMid);
    }

    private void LayerBackward(DecoderLayer L, LayerActivations a, Tensor xFull, int n, AttentionShape shape, ulong seed)
    {
        var B = Backend;
        var acts = _acts!;
        var dres = Rows(acts.Dres, n);
        var x = Rows(xFull, n);
        var pos = Head1(acts.Positions, n);
        var dln = Rows(acts.Dln, n);
        shape = shape with { Variant = Spec.AttentionVariantOf(L.Index) };
        // ∂L/∂(o_proj's output): dres itself for a pre-norm block, through post_attention_layernorm for a sandwich one.
        var dAttnOut = Spec.Sandwich ? SandwichTailBackward(L, a, n, seed) : MlpBackward(L, a, n, seed);
        // Attention: resMid = x + o(attn(rope(q), rope(k), v)), q/k/v = proj(ln1), ln1 = rmsnorm(x)
        var datt = Rows(acts.Datt, n);
        SetBackward(L, 1, datt, [dAttnOut], Rows(a.Att, n), a, n, seed);
        var dq = Rows(acts.Dq, n);
        var dk = Rows(acts.Dk, n);
        var dv = Rows(acts.Dv, n);
        // The MLP's activations are spent by now: the attention backward may put its workspace over them.
        B.AttentionBackward(dq, dk, dv, datt, Rows(a.Att, n), Head1(a.Lse, (long)n * Spec.NumHeads),
            Rows(a.Q, n), Rows(a.K, n), Rows(a.V, n), Head1(acts.Segments, n), shape, a.SpentAfterMlpBackward);
        var (cos, sin) = RopeTablesOf(L);
        B.Rope(dq, pos, cos, sin, Spec.HeadDim, inverse: true);
        B.Rope(dk, pos, cos, sin, Spec.HeadDim, inverse: true);
        if (Spec.QkNorm)
        {
            var dqPre = Rows(acts.DqPre!, n);
            var dkPre = Rows(acts.DkPre!, n);
            B.RmsNormBackward(dqPre, L.QNorm!.Grad, dq, Rows(a.QPre!, n), L.QNorm.Value, Head1(a.QRstd!, (long)n * Spec.NumHeads), Spec.NormWeightOffset, accumulate: false);
            B.RmsNormBackward(dkPre, L.KNorm!.Grad, dk, Rows(a.KPre!, n), L.KNorm.Value, Head1(a.KRstd!, (long)n * Spec.NumKvHeads), Spec.NormWeightOffset, accumulate: false);
            dq = dqPre;
            dk = dkPre;
        }
        var ln1 = Rows(a.Ln1, n);
        SetBackward(L, 0, dln, [dq, dk, dv], ln1, a, n, seed);
        B.RmsNormBackward(dres, L.InputNorm.Grad, dln, x, L.InputNorm.Value, Head1(a.Rstd1, n), Spec.NormWeightOffset);
    }

    /// <summary>
    /// MLP of a pre-norm block: y = resMid + down(silu(gate(ln2)) ⊙ up(ln2)), ln2 = rmsnorm(resMid). From ∂L/∂y in Dres,
    /// leaves ∂L/∂resMid there and returns it (the gradient of o_proj's output, which resMid adds).
    /// </summary>
    private Tensor MlpBackward(DecoderLayer L, LayerActivations a, int n, ulong seed)
    {
        var B = Backend;
        var acts = _acts!;
        var dres = Rows(acts.Dres, n);
        var dln = Rows(acts.Dln, n);
        var ln2 = Rows(a.Ln2, n);
        if (L.Experts is not null) ExpertsBackward(L, dln, dres, ln2, n);
        else
        {
            // In place: down_proj's input gradient dact takes act's buffer (its backward reads act before writing dact;
            // no [n, inter] gradient scratch: ~0.29 GiB at 7B × 8192 tokens).
            var act = Rows(a.Act, n);
            var dact = act;
            SetBackward(L, 3, dact, [dres], act, a, n, seed);
            // In place: gate and up are read here for the last time, so their buffers take dgate and dup (no [n, inter]
            // gradient scratch of their own: ~0.6 GiB at 7B × 8192 tokens).
            var (dgate, dup) = (Rows(a.Gate, n), Rows(a.Up, n));
            // fp8_scaling: delayed, both output-gradient sites ready: the backward writes dgate's and dup's E5M2 codes too,
            // and gate's and up's input-gradient products read them.
            if (acts.ActCodes is { } gateCodes && acts.DupCodes is { } upCodes
                && FusedFp8Site(L.Gate!, outputGradient: true) is { } gateSite && FusedFp8Site(L.Up!, outputGradient: true) is { } upSite)
            {
                B.SwiGluBackwardFp8(dgate, dup, dact, dgate, dup, gateCodes, gateSite, upCodes, upSite);
                SetBackward(L, 2, dln, [dgate, dup], ln2, a, n, seed, [gateCodes, upCodes]);
            }
            else
            {
                B.SwiGluBackward(dgate, dup, dact, dgate, dup);
                SetBackward(L, 2, dln, [dgate, dup], ln2, a, n, seed);
            }
        }
        B.RmsNormBackward(dres, L.PostAttentionNorm.Grad, dln, Rows(a.ResMid, n), L.PostAttentionNorm.Value, Head1(a.Rstd2, n));
        return dres;
    }

    /// <summary>
    /// The linears of input set <paramref name="set"/> of layer L (<see cref="DecoderLayer.InputSets"/>), all reading x,
    /// writing ys in set order. Grouped LoRA: xaᵀ = A_group·xᵀ for every adapter of the set in one product (one pass
    /// over x), then per linear y = scale·xa·Bᵀ (a skinny product that writes y without reading it) and y += x·Wᵀ (the
    /// big product does the accumulating, where reading C is nearly free); an adapted linear's bias rides with its skinny
    /// product (IBackend.MatMulBias), any other's follows. <paramref name="xCodes"/>: x's FP8 codes cast by its producer,
    /// which the base product of a set of one linear reads (<see cref="FrozenProduct"/>), or a larger set's shared FP8
    /// products (<see cref="SharedFp8Products"/>, cast with <see cref="SharedFp8Site"/>'s site).
    /// </summary>
    private void SetForward(DecoderLayer L, int set, Tensor[] ys, Tensor x, LayerActivations a, int n, ulong seed, bool training, Fp8Operand? xCodes = null)
    {
        var lins = L.InputSets[set];
        var (ownCodes, sharedCodes) = lins.Length == 1 ? (xCodes, (Fp8Operand?)null) : (null, xCodes);
        int first = DecoderLayer.FirstLinearOfSet[set];
        if (L.LoraGroups[set] is not { } group || !GroupedLora(training) || _adaptersOff)
        {
            if (lins.All(l => (l.Lora is null || _adaptersOff) && !_quantized.ContainsKey(l.Weight)))
            {
                // Plain products of one input (a decode step's q/k/v or gate/up): one launch where the backend fuses them.
                Backend.MatMulShared(ys, x, [.. lins.Select(l => l.Weight.Value)]);
                for (int j = 0; j < lins.Length; j++)
                    if (lins[j].Bias is { } b) Backend.AddBias(ys[j], b.Value);
                _stepLora?.Apply(L, set, ys, x);
                return;
            }
            var baseDone = SharedFp8Products(lins, ys, x, _ => false, sharedCodes);
            for (int j = 0; j < lins.Length; j++)
                LinearForward(lins[j], ys[j], x, a.LoraXa[first + j], n, LinearSeed(seed, L.Index, first + DropoutIndex(lins, j)), training,
                    baseDone?[j] ?? false, ownCodes);
            _stepLora?.Apply(L, set, ys, x);
            return;
        }
        var B = Backend;
        var xaT = a.LoraXaT[set]!.View(0, [group.Rows, n]);
        B.MatMul(xaT, group.A, false, x, true);
        for (int j = 0; j < lins.Length; j++)
            if (lins[j].Lora is { } lora)
            {
                var xaTj = xaT.View((long)group.RowOffset(group.IndexOf(lins[j])) * n, [lora.Rank, n]);
                // The bias (qwen2's q/k/v) rides with the skinny product, which writes y anyway.
                if (lins[j].Bias is { } bias) B.MatMulBias(ys[j], xaTj, true, lora.B.Value, true, bias.Value, lora.Scale);
                else B.MatMul(ys[j], xaTj, true, lora.B.Value, true, lora.Scale);
            }
        // Each y is its own: the base products may follow all the LoRA ones (and share one FP8 cast of x) without changing a value.
        var done = SharedFp8Products(lins, ys, x, j => lins[j].Lora is not null, sharedCodes);
        for (int j = 0; j < lins.Length; j++)
        {
            var lin = lins[j];
            if (done?[j] != true) FrozenProduct(ys[j], x, lin, accumulate: lin.Lora is not null, ownCodes);
            if (lin.Bias is { } bias && lin.Lora is null) B.AddBias(ys[j], bias.Value);
        }
        _stepLora?.Apply(L, set, ys, x);
    }

    /// <summary>
    /// What <see cref="SetBackward"/> reads of a training <see cref="SetForward"/>, without the set's outputs (a recompute
    /// whose outputs are not needed): the LoRA inputs, xaᵀ = A_group·xᵀ for a grouped set, else xa = drop(x)·Aᵀ per adapted
    /// linear — the same products as the forward's, so the same bits. The frozen products, biases and B products are skipped.
    /// </summary>
    private void SetLoraInputs(DecoderLayer L, int set, Tensor x, LayerActivations a, int n, ulong seed)
    {
        if (_adaptersOff) return;
        var B = Backend;
        var lins = L.InputSets[set];
        if (L.LoraGroups[set] is { } group && GroupedLora(training: true))
        {
            B.MatMul(a.LoraXaT[set]!.View(0, [group.Rows, n]), group.A, false, x, true);
            return;
        }
        int first = DecoderLayer.FirstLinearOfSet[set];
        for (int j = 0; j < lins.Length; j++)
        {
            if (lins[j].Lora is not { } lora) continue;
            var xin = x;
            if (lora.Dropout > 0)
            {
                xin = _acts!.DropScratch.View(0, [n, lins[j].In]);
                B.Dropout(xin, x, lora.Dropout, LinearSeed(seed, L.Index, first + DropoutIndex(lins, j)));
            }
            B.MatMul(Rows(a.LoraXa[first + j]!, n), xin, false, lora.A.Value, true);
        }
    }

    /// <summary>
    /// Backward of <see cref="SetForward"/>: writes dx (the set's linears all read x, so their input gradients sum).
    /// Grouped LoRA: per adapter dB += scale·dyᵀ·xa and dxaᵀ = scale·Bᵀ·dyᵀ into a stacked [g·r, n] scratch, then one
    /// dA_group += dxaᵀ·x and one dx = dxa·A_group (writes dx), then every dx += dy·W with the big product accumulating.
    /// <paramref name="dyCodes"/>: each dy's E5M2 codes cast by its producer, read by its input-gradient product.
    /// </summary>
    private void SetBackward(DecoderLayer L, int set, Tensor dx, Tensor[] dys, Tensor x, LayerActivations a, int n, ulong seed, Fp8Operand[]? dyCodes = null)
    {
        var lins = L.InputSets[set];
        int first = DecoderLayer.FirstLinearOfSet[set];
        if (L.LoraGroups[set] is not { } group || !GroupedLora(training: true))
        {
            for (int j = 0; j < lins.Length; j++)
                LinearBackward(lins[j], dx, j > 0, dys[j], x, a.LoraXa[first + j], n, LinearSeed(seed, L.Index, first + DropoutIndex(lins, j)), dyCodes?[j]);
            return;
        }
        var B = Backend;
        var xaT = a.LoraXaT[set]!.View(0, [group.Rows, n]);
        var dxaT = _acts!.Dxa.View(0, [group.Rows, n]);
        for (int j = 0; j < lins.Length; j++)
        {
            if (lins[j].Lora is not { } lora) continue;
            int r = lora.Rank;
            long block = (long)group.RowOffset(group.IndexOf(lins[j])) * n;
            B.MatMul(lora.B.Grad!, dys[j], true, xaT.View(block, [r, n]), true, lora.Scale, accumulate: true);
            // The parts of a fused module share A's rows: their dxa add up.
            B.MatMul(dxaT.View(block, [r, n]), lora.B.Value, true, dys[j], true, lora.Scale, accumulate: group.SharesRows(group.IndexOf(lins[j])));
        }
        B.MatMul(group.AGrad!, dxaT, false, x, false, 1f, accumulate: true);
        // x's last reads (dA above, dW here) come before dx is written: dx may be x's own buffer (down_proj's dact over act).
        for (int j = 0; j < lins.Length; j++)
        {
            if (lins[j].Weight.Grad is { } dw) B.MatMul(dw, dys[j], true, x, false, 1f, accumulate: true);
            if (lins[j].Bias?.Grad is { } db) B.BiasBackward(db, dys[j]);
        }
        B.MatMul(dx, dxaT, true, group.A, false);
        for (int j = 0; j < lins.Length; j++)
            FrozenInputGradient(dx, dys[j], lins[j], accumulate: true, dyCodes?[j]);
    }

    /// <summary>
    /// The linear whose seed draws linear j's dropout mask: its own, or for a part of a fused module the module's first
    /// part, so that the module sees one mask as PEFT's lora_B(lora_A(dropout(x))) does.
    /// </summary>
    private static int DropoutIndex(LoraLinear[] lins, int j) =>
        lins[j].FusedRow is null ? j : Array.FindIndex(lins, l => l.Module == lins[j].Module);

    // y = x·Wᵀ + b + scale·(drop(x)·Aᵀ)·Bᵀ; xa = drop(x)·Aᵀ is kept for the backward.
    private void LinearForward(LoraLinear lin, Tensor y, Tensor x, Tensor? xaFull, int n, ulong seed, bool training, bool baseDone = false,
        Fp8Operand? xCodes = null)
    {
        var B = Backend;
        if (!baseDone) FrozenProduct(y, x, lin, xCodes: xCodes);
        if (lin.Bias is { } bias) B.AddBias(y, bias.Value);
        if (lin.Lora is not { } lora || _adaptersOff) return;
        var xin = x;
        if (training && lora.Dropout > 0)
        {
            xin = _acts!.DropScratch.View(0, [n, lin.In]);
            B.Dropout(xin, x, lora.Dropout, seed);
        }
        var xa = Rows(xaFull!, n);
        B.MatMul(xa, xin, false, lora.A.Value, true);
        B.MatMul(y, xa, false, lora.B.Value, true, lora.Scale, accumulate: true);
    }

    // dx (+)= dy·W + drop'(scale·dy·B·A); dW += dyᵀ·x; db += Σ dy; dB += scale·dyᵀ·xa; dA += (scale·dy·B)ᵀ·drop(x).
    // Every read of x comes before dx is first written, so dx may be x's own buffer (down_proj's dact over act) when the
    // linear is its set's only one; dx's own terms keep their order (the base product, then the adapter's).
    private void LinearBackward(LoraLinear lin, Tensor dx, bool accumulateDx, Tensor dy, Tensor x, Tensor? xaFull, int n, ulong seed, Fp8Operand? dyCodes = null)
    {
        var B = Backend;
        if (lin.Weight.Grad is { } dw) B.MatMul(dw, dy, true, x, false, 1f, accumulate: true);
        if (lin.Bias?.Grad is { } db) B.BiasBackward(db, dy);
        if (lin.Lora is not { } lora)
        {
            FrozenInputGradient(dx, dy, lin, accumulateDx, dyCodes);
            return;
        }
        var xa = Rows(xaFull!, n);
        B.MatMul(lora.B.Grad!, dy, true, xa, false, lora.Scale, accumulate: true);
        var dxa = _acts!.Dxa.View(0, [n, lora.Rank]);
        B.MatMul(dxa, dy, false, lora.B.Value, false, lora.Scale);
        var drop = lora.Dropout > 0 ? _acts.DropScratch.View(0, [n, lin.In]) : null;
        if (drop is not null)
        {
            B.Dropout(drop, x, lora.Dropout, seed);
            B.MatMul(lora.A.Grad!, dxa, true, drop, false, 1f, accumulate: true);
        }
        else B.MatMul(lora.A.Grad!, dxa, true, x, false, 1f, accumulate: true);
        FrozenInputGradient(dx, dy, lin, accumulateDx, dyCodes);
        if (drop is not null)
        {
            B.MatMul(drop, dxa, false, lora.A.Value, false);
            B.Dropout(drop, drop, lora.Dropout, seed);
            B.Add(dx, drop);
        }
        else B.MatMul(dx, dxa, false, lora.A.Value, false, 1f, accumulate: true);
    }

    /// <summary>Final norm, LM head and cross-entropy over labelled rows, chunk by chunk; with grad, leaves ∂/∂res_L in Dres.</summary>
    private double Head(int n, int m, float lossScale, bool grad)
    {
        var B = Backend;
        var acts = _acts!;
        FinalNormAndGather(n, m);
        B.Zero(acts.LossSum);
        HeadChunks(m, grad, (logits, r0, cr) => B.CrossEntropy(logits, acts.CompactLabels.View(r0, [cr]), acts.LossSum, lossScale, grad));
        if (grad) HeadBackwardTail(n, m);
        B.Download(acts.LossSum, _hostLoss);
        return _hostLoss[0];
    }

    /// <summary>lnf = rmsnorm(res_L) for every token, then Hc = the <paramref name="m"/> rows of lnf named by CompactRows.</summary>
    private void FinalNormAndGather(int n, int m)
    {
        var acts = _acts!;
        Backend.RmsNorm(Rows(acts.LnF, n), Head1(acts.RstdF, n), Rows(acts.Residual[^1], n), _finalNorm.Value, (float)Spec.RmsNormEps, Spec.NormWeightOffset);
        if (m > 0) Backend.Embedding(acts.Hc.View(0, [m, Spec.HiddenSize]), Rows(acts.LnF, n), Head1(acts.CompactRows, m));
    }

    /// <summary>
    /// The LM head over Hc's <paramref name="m"/> rows, ChunkRows at a time (never [m, V] logits at once): logits = h·Wᵀ,
    /// then <paramref name="loss"/>(logits, first row, rows), which with grad leaves ∂L/∂logits in the logits, from
    /// which Dhc = ∂L/∂logits·W and dW += ∂L/∂logitsᵀ·h.
    /// </summary>
    private void HeadChunks(int m, bool grad, Action<Tensor, int, int> loss)
    {
        var B = Backend;
        var acts = _acts!;
        int c = Spec.HiddenSize, v = Spec.VocabSize;
        var w = HeadWeight;
        for (int r0 = 0; r0 < m; r0 += acts.ChunkRows)
        {
            int cr = Math.Min(acts.ChunkRows, m - r0);
            var logits = acts.Logits.View(0, [cr, v]);
            var h = acts.Hc.View((long)r0 * c, [cr, c]);
            B.MatMul(logits, h, false, w.Value, true);
            // Final soft-cap (gemma): the loss sees cap·tanh(z/cap); its gradient goes back through 1 − (capped/cap)².
            Tensor? capped = null;
            if (Spec.FinalLogitSoftcap > 0)
            {
                B.SoftCap(logits, logits, (float)Spec.FinalLogitSoftcap);
                if (grad)
                {
                    capped = acts.CappedLogits!.View(0, [cr, v]);
                    B.Copy(capped, logits);
                }
            }
            loss(logits, r0, cr);
            if (!grad) continue;
            if (capped is not null) B.SoftCapBackward(logits, capped, (float)Spec.FinalLogitSoftcap);
            B.MatMul(acts.Dhc.View((long)r0 * c, [cr, c]), logits, false, w.Value, false);
            if (w.Grad is { } dw) B.MatMul(dw, logits, true, h, false, 1f, accumulate: true);
        }
    }

    /// <summary>Scatters Dhc (∂L/∂Hc of the <paramref name="m"/> gathered rows) back to token rows and through the final norm into Dres.</summary>
    private void HeadBackwardTail(int n, int m)
    {
        var B = Backend;
        var acts = _acts!;
        var dln = Rows(acts.Dln, n);
        B.Zero(dln);
        if (m > 0) B.EmbeddingBackward(dln, acts.Dhc.View(0, [m, Spec.HiddenSize]), Head1(acts.CompactRows, m));
        B.RmsNormBackward(Rows(acts.Dres, n), _finalNorm.Grad, dln, Rows(acts.Residual[^1], n), _finalNorm.Value, Head1(acts.RstdF, n), Spec.NormWeightOffset,
            accumulate: false);
    }
}
