using FineTune.Engine;
using FineTune.Models.Generation;

namespace FineTune.Models;

/// <summary>
/// Decoding settings with Hugging Face generate()'s meanings: greedy unless <see cref="DoSample"/>; logits are
/// processed in HF's order — repetition penalty, then temperature, top-k and top-p — before sampling.
/// </summary>
public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 256;
    public bool DoSample { get; init; }
    public double Temperature { get; init; } = 1.0;
    /// <summary>Keep the smallest set of tokens whose probabilities sum to at least top_p (1 disables).</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Keep the k most likely tokens (0 disables).</summary>
    public int TopK { get; init; }
    /// <summary>CTRL's penalty on tokens already in the sequence (prompt included): logit/p if positive, logit·p if negative.</summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    public int Seed { get; init; }
    /// <summary>Generation stops for a sequence when it produces one of these ids (the id is not returned).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    /// <summary>Greedy without a repetition penalty: the pick is the argmax of the raw logits (done on the device).</summary>
    internal bool PlainGreedy => !DoSample && RepetitionPenalty == 1.0;
}

/// <summary>Tokens produced for one prompt and why generation stopped ("eos", "stop" from the callback, "length", or "cancelled").</summary>
public sealed record GeneratedSequence(int[] Tokens, string FinishReason);

public sealed partial class CausalLM
{
    /// <summary>
    /// Decodes a batch of prompts together on the <see cref="GenerationEngine"/> (KV cache per sequence, one prefill
    /// pass, batched decode steps). <paramref name="onToken"/>(row, token) streams each new token and returns false to
    /// stop that row (stop words). Uses the unmerged LoRA adapter when the model has one; never dropout. The batch keeps
    /// HF generate()'s shape: one random generator seeded with options.Seed draws for the rows in row order, and a row
    /// that has finished stays in the decode step until every row has, so results do not depend on when rows finish.
    /// </summary>
    public IReadOnlyList<GeneratedSequence> Generate(IReadOnlyList<int[]> prompts, GenerationOptions options, Func<int, int, bool>? onToken = null)
    {
        if (prompts.Count == 0) return [];
        RequireWholeParameters("generation");
        if (prompts.Any(p => p.Length == 0)) throw new ArgumentException("every prompt needs at least one token");
        int b = prompts.Count, promptLen = prompts.Max(p => p.Length);
        var engineOptions = new GenerationEngineOptions
        {
            MaxSequences = b,
            MaxModelLength = promptLen + Math.Max(1, options.MaxNewTokens),
            MaxBatchTokens = Math.Max(b, prompts.Sum(p => p.Length)),
            KeepFinishedRows = true,
        };
        using var engine = new GenerationEngine(this, engineOptions);
        var rng = new Random(options.Seed);
        var results = new GeneratedSequence?[b];
        for (int r = 0; r < b; r++)
        {
            int row = r;
            engine.Add(new GenerationRequest(prompts[r], options)
            {
                Random = rng,
                OnToken = onToken is null ? null : token => onToken(row, token),
                OnFinished = s => results[row] = s,
            });
        }
        engine.RunToCompletion();
        return results.Select(s => s!).ToList();
    }

    /// <summary>HF's processors in order: repetition penalty, then greedy argmax or temperature → top-k → top-p → sample.</summary>
    public static int Pick(Span<float> logits, IReadOnlySet<int> seen, GenerationOptions o, Random rng) =>
        TokenSampler.Pick(logits, seen, o, rng);

    /// <summary>
    /// One engine step through the model: the step's inputs go to the device in one copy, then the step's tokens (prompt
    /// chunks and decode tokens of any sequences, grouped by adapter) are embedded, each layer writes their K/V into the
    /// paged cache and attends over each token's sequence through its block table, and the logit rows get the final
    /// norm and LM head. Returns the logits tensor [rows, vocab].
    /// </summary>
    internal Tensor ForwardStep(StepBatch step, PagedKvCache cache, ModelActivations acts, AdapterBank? bank)
    {
        UploadStep(step, cache);
        return StepKernels(step.Layout, step.TokenGroups, step.LogitGroups, cache, acts, bank);
    }

    /// <summary>The host side of a step: the rope tables long enough, the step's inputs in one copy.</summary>
    internal void UploadStep(StepBatch step, PagedKvCache cache)
    {
        EnsureRope(step.MaxPosition + 1);
        Backend.Upload(cache.StepInputs.View(0, [step.Layout.Length]), step.Inputs);
    }

    /// <summary>Builds the rope tables for <paramref name="positions"/> up front (before decode graphs record them).</summary>
    internal void PrepareRope(int positions) => EnsureRope(positions);

    /// <summary>
    /// The device work of a step whose inputs are in <see cref="PagedKvCache.StepInputs"/>: launches only, no host
    /// transfer and no allocation, so it can be captured as a CUDA graph and replayed.
    /// </summary>
    internal Tensor StepKernels(StepLayout layout, IReadOnlyList<RowGroup> tokenGroups, IReadOnlyList<RowGroup> logitGroups,
        PagedKvCache cache, ModelActivations acts, AdapterBank? bank)
    {
        var B = Backend;
        var s = Spec;
        int n = layout.Tokens, c = s.HiddenSize, rows = layout.LogitRows;
        var inputs = cache.StepInputs;
        var ids = inputs.View(layout.Ids, [n]);
        var pos = inputs.View(layout.Positions, [n]);
        var seqs = inputs.View(layout.Sequences, [n]);
        var cacheRows = inputs.View(layout.CacheRows, [n]);
        var logitRows = inputs.View(layout.Logits, [rows]);
        var tables = inputs.View(layout.Tables, [layout.TableRows * layout.TableWidth]);
        var x = acts.Residual[0].View(0, [n, c]);
        var y = acts.Residual[1].View(0, [n, c]);
        foreach (var g in tokenGroups)
            B.Embedding(x.SliceRows(g.Start, g.Count), bank?.Embedding(g.Adapter) ?? _embed.Value, ids.View(g.Start, [g.Count]));
        if (EmbeddingScale is { } es) B.Scale(x, es);
        var shape = new CachedAttentionShape(n, cache.Blocks, cache.BlockSize, cache.TableWidth, s.NumHeads, s.NumKvHeads, s.HeadDim);
        var a = acts.Layers[0];
        _stepLora = bank is null ? null : new StepLora(bank, tokenGroups);
        try
        {
            // Named adapters of the step add their LoRA terms after each product set (SetForward): not in the fused layer.
            bool fused = FusedDecodeLayers && tokenGroups.All(g => g.Adapter == 0);
            for (int l = 0; l < s.NumLayers; l++)
            {
                var L = _layers[l];
                var layerShape = shape with { Variant = s.AttentionVariantOf(l) };
                if (fused && FusedDecodeApplies(L))
                    DecodeLayer(L, a, x, y, n, pos, cacheRows, cache.K[l], cache.V[l], seqs, tables, layerShape);
                else
                {
                    var (q, k, v) = AttentionInputs(L, a, x, pos, n, 0, false);
                    B.ScatterRows(cache.K[l], k, cacheRows);
                    B.ScatterRows(cache.V[l], v, cacheRows);
                    var att = Rows(a.Att, n);
                    B.CachedAttention(att, q, cache.K[l], cache.V[l], seqs, pos, tables, layerShape);
                    LayerTail(L, a, x, att, y, n, 0, training: false, recompute: false);
                }
                (x, y) = (y, x);
            }
        }
        finally { _stepLora = null; }
        // x holds the last layer's output; gather the rows that need logits, norm, and project.
        var last = acts.Hc.View(0, [rows, c]);
        B.Embedding(last, x, logitRows);
        var normed = acts.LnF.View(0, [rows, c]);
        var logits = acts.Logits.View(0, [rows, s.VocabSize]);
        foreach (var g in logitGroups)
        {
            B.RmsNorm(normed.SliceRows(g.Start, g.Count), acts.RstdF.View(g.Start, [g.Count]), last.SliceRows(g.Start, g.Count),
                bank?.FinalNorm(g.Adapter) ?? _finalNorm.Value, (float)s.RmsNormEps, s.NormWeightOffset);
            B.MatMul(logits.SliceRows(g.Start, g.Count), normed.SliceRows(g.Start, g.Count), false, bank?.Head(g.Adapter) ?? HeadWeight.Value, true);
            if (s.FinalLogitSoftcap > 0) B.SoftCap(logits.SliceRows(g.Start, g.Count), logits.SliceRows(g.Start, g.Count), (float)s.FinalLogitSoftcap);
        }
        return logits;
    }

    /// <summary>
    /// Engine steps run llama-style layers through IBackend's fused decode operations (<see cref="DecodeLayer"/>; the
    /// same values, fewer launches on CUDA); false (or FINETUNE_FUSED_DECODE=0 on CUDA) keeps the step's plain operations.
    /// </summary>
    public bool FusedDecodeLayers { get; set; } = true;

    /// <summary>
    /// Whether <see cref="DecodeLayer"/> computes layer <paramref name="L"/> as AttentionInputs + ScatterRows +
    /// LayerTail do: a pre-norm block (llama-style norms, no sandwich), a dense SwiGLU MLP, and every linear a plain
    /// weight (no bias, no LoRA of the model's own, not quantized or FP8).
    /// </summary>
    private bool FusedDecodeApplies(DecoderLayer L) =>
        !Spec.Sandwich && Spec.NormWeightOffset == 0 && Spec.Family.Block.Activation == MlpActivation.Silu && L.Experts is null
        && (L.QNorm is null) == (L.KNorm is null)
        && L.Linears.All(x => x.Lora is null && x.Bias is null && !_quantized.ContainsKey(x.Weight));

    /// <summary>
    /// One layer of an engine step as IBackend.DecodeLayer: three operations (ln1 + q/k/v products; q/k norms + RoPE +
    /// K/V into the cache and attention over the cache; o_proj + residual, ln2 + gate/up + SwiGLU and down_proj +
    /// residual), or CUDA's one persistent launch. Each is IBackend's fused operation, defined as the composition the
    /// unfused step runs (DecodeComposition), so the values are the same.
    /// </summary>
    private void DecodeLayer(DecoderLayer L, LayerActivations a, Tensor x, Tensor y, int n, Tensor pos, Tensor cacheRows,
        Tensor kCache, Tensor vCache, Tensor seqs, Tensor tables, CachedAttentionShape shape)
    {
        var B = Backend;
        float eps = (float)Spec.RmsNormEps;
        var (q, k, v) = (Rows(a.Q, n), Rows(a.K, n), Rows(a.V, n));
        var (qIn, kIn) = L.QNorm is null ? (q, k) : (Rows(a.QPre!, n), Rows(a.KPre!, n));
        var (cos, sin) = RopeTablesOf(L);
        B.DecodeLayer(new DecodeLayerTensors
        {
            X = x, Y = y, Eps = eps,
            Ln1 = Rows(a.Ln1, n), Rstd1 = Head1(a.Rstd1, n), InputNorm = L.InputNorm.Value, QIn = qIn, KIn = kIn, V = v,
            QWeight = L.Q.Weight.Value, KWeight = L.K.Weight.Value, VWeight = L.V.Weight.Value,
            Q = q, K = k, QNorm = L.QNorm?.Value, KNorm = L.KNorm?.Value,
            QRstd = L.QNorm is null ? null : Head1(a.QRstd!, (long)n * Spec.NumHeads), KRstd = L.KNorm is null ? null : Head1(a.KRstd!, (long)n * Spec.NumKvHeads),
            Positions = pos, Cos = cos, Sin = sin, HeadDim = Spec.HeadDim, KCache = kCache, VCache = vCache, CacheRows = cacheRows,
            Sequences = seqs, BlockTables = tables, Shape = shape, Att = Rows(a.Att, n),
            OWeight = L.O.Weight.Value, Mid = Rows(a.ResMid, n), Ln2 = Rows(a.Ln2, n), Rstd2 = Head1(a.Rstd2, n), PostNorm = L.PostAttentionNorm.Value,
            Gate = Rows(a.Gate, n), Up = Rows(a.Up, n), H = Rows(a.Act, n),
            GateWeight = L.Gate!.Weight.Value, UpWeight = L.Up!.Weight.Value, DownWeight = L.Down!.Weight.Value,
        });
    }

    /// <summary>Activations for engine steps of up to <paramref name="tokens"/> tokens and <paramref name="logitRows"/> logit rows.</summary>
    internal ModelActivations CreateStepActivations(int tokens, int logitRows)
    {
        int capacity = Math.Max(tokens, logitRows);
        // The experts' buffers at the engine's largest step now: a later, longer prefill must not reallocate the buffers
        // that recorded decode graphs name.
        if (Spec.Moe is not null) EnsureExpertActs(capacity, training: false);
        return new(Backend, Spec, _layers, checkpointing: true, training: false, capacity, logitRows, residuals: 2);
    }

    /// <summary>The decoder layers' linears, for adapters loaded beside the model.</summary>
    internal IReadOnlyList<DecoderLayer> DecoderLayers => _layers;

    internal Tensor EmbeddingWeight => _embed.Value;
    internal Tensor FinalNormWeight => _finalNorm.Value;
    internal Tensor LmHeadWeight => HeadWeight.Value;
    internal bool HasOwnLora => _layers.Any(l => l.Linears.Any(x => x.Lora is not null)
        || l.Experts is { } e && (e.GateUpLora is not null || e.DownLora is not null || e.RouterLora is not null));

    /// <summary>
    /// The named adapters of the step in flight (null outside <see cref="ForwardStep"/>): SetForward adds each token
    /// group's LoRA term after the set's base products. Set and cleared by ForwardStep, which one thread drives.
    /// </summary>
    private StepLora? _stepLora;

    /// <summary>The per-group LoRA terms of named adapters: y_g += scale·(x_g·Aᵀ)·Bᵀ for each group's adapter.</summary>
    private sealed class StepLora(AdapterBank bank, IReadOnlyList<RowGroup> groups)
    {
        public void Apply(DecoderLayer layer, int set, Tensor[] ys, Tensor x)
        {
            var lins = layer.InputSets[set];
            foreach (var g in groups)
            {
                if (g.Adapter == 0) continue;
                for (int j = 0; j < lins.Length; j++)
                {
                    if (bank.Lora(g.Adapter, lins[j]) is not { } lora) continue;
                    var xa = bank.Scratch.View(0, [g.Count, lora.Rank]);
                    bank.Backend.MatMul(xa, x.SliceRows(g.Start, g.Count), false, lora.A, true);
                    bank.Backend.MatMul(ys[j].SliceRows(g.Start, g.Count), xa, false, lora.B, true, lora.Scale, accumulate: true);
                }
            }
        }
    }
}
