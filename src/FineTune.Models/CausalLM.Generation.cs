using FineTune.Engine;

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
}

/// <summary>Tokens produced for one prompt and why generation stopped ("eos", "stop" from the callback, or "length").</summary>
public sealed record GeneratedSequence(int[] Tokens, string FinishReason);

public sealed partial class CausalLM
{
    /// <summary>
    /// Autoregressive decoding with a per-layer KV cache preallocated for prompt + max_new_tokens. Prompts of
    /// different lengths are left-padded (padding is a segment of its own, so it is never attended).
    /// <paramref name="onToken"/>(row, token) streams each new token and returns false to stop that row
    /// (stop words). Uses the unmerged LoRA adapter when the model has one; never dropout.
    /// </summary>
    public IReadOnlyList<GeneratedSequence> Generate(IReadOnlyList<int[]> prompts, GenerationOptions options, Func<int, int, bool>? onToken = null)
    {
        if (prompts.Count == 0) return [];
        if (prompts.Any(p => p.Length == 0)) throw new ArgumentException("every prompt needs at least one token");
        int b = prompts.Count, promptLen = prompts.Max(p => p.Length), capacity = promptLen + Math.Max(0, options.MaxNewTokens);
        using var cache = new KvCache(this, b, capacity, b * promptLen);
        var results = new List<int>[b];
        var finish = new string?[b];
        var seen = new HashSet<int>[b];
        for (int r = 0; r < b; r++)
        {
            results[r] = [];
            seen[r] = [.. prompts[r]];
        }
        var rng = new Random(options.Seed);
        var logits = new float[(long)b * Spec.VocabSize];
        // Prefill: left-padded prompts, pad segment 0, real tokens segment 1; positions count real tokens only.
        var ids = new int[b * promptLen];
        var pos = new int[b * promptLen];
        for (int r = 0; r < b; r++)
        {
            int pad = promptLen - prompts[r].Length;
            for (int t = 0; t < promptLen; t++)
            {
                ids[r * promptLen + t] = t < pad ? 0 : prompts[r][t - pad];
                pos[r * promptLen + t] = Math.Max(0, t - pad);
                cache.Segments[r * capacity + t] = t < pad ? 0 : 1;
            }
        }
        cache.Step(ids, pos, promptLen, logits);
        var next = new int[b];
        var nextPos = new int[b];
        for (int step = 0; step < options.MaxNewTokens; step++)
        {
            bool any = false;
            for (int r = 0; r < b; r++)
            {
                if (finish[r] is not null) { next[r] = 0; continue; }
                int token = Pick(logits.AsSpan(r * Spec.VocabSize, Spec.VocabSize), seen[r], options, rng);
                if (options.EosTokenIds.Contains(token)) { finish[r] = "eos"; continue; }
                results[r].Add(token);
                seen[r].Add(token);
                next[r] = token;
                if (onToken is not null && !onToken(r, token)) { finish[r] = "stop"; continue; }
                any = true;
            }
            if (!any || step == options.MaxNewTokens - 1) break;
            for (int r = 0; r < b; r++)
            {
                nextPos[r] = prompts[r].Length + step;
                cache.Segments[r * capacity + cache.Length] = 1;
            }
            cache.Step(next, nextPos, 1, logits);
        }
        return Enumerable.Range(0, b).Select(r => new GeneratedSequence([.. results[r]], finish[r] ?? "length")).ToList();
    }

    /// <summary>HF's processors in order: repetition penalty, then greedy argmax or temperature → top-k → top-p → sample.</summary>
    public static int Pick(Span<float> logits, IReadOnlySet<int> seen, GenerationOptions o, Random rng)
    {
        if (o.RepetitionPenalty != 1.0)
            foreach (int id in seen)
            {
                if ((uint)id >= (uint)logits.Length) continue;
                logits[id] = logits[id] < 0 ? (float)(logits[id] * o.RepetitionPenalty) : (float)(logits[id] / o.RepetitionPenalty);
            }
        if (!o.DoSample)
        {
            int best = 0;
            for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
            return best;
        }
        if (o.Temperature <= 0) throw new ArgumentException($"temperature must be positive when sampling, got {o.Temperature}");
        int v = logits.Length;
        var order = new int[v];
        for (int i = 0; i < v; i++) order[i] = i;
        float[] scaled = new float[v];
        for (int i = 0; i < v; i++) scaled[i] = (float)(logits[i] / o.Temperature);
        // Stable sort by descending logit (ties keep the lower id first), so a seed reproduces the same draw.
        Array.Sort(order, (x, y) => scaled[y].CompareTo(scaled[x]) is var c && c != 0 ? c : x.CompareTo(y));
        int keep = o.TopK > 0 ? Math.Min(o.TopK, v) : v;
        double max = scaled[order[0]];
        var probs = new double[keep];
        double sum = 0;
        for (int i = 0; i < keep; i++) sum += probs[i] = Math.Exp(scaled[order[i]] - max);
        if (o.TopP < 1.0)
        {
            // Smallest prefix whose mass reaches top_p (at least one token).
            double acc = 0;
            int cut = keep;
            for (int i = 0; i < keep; i++)
            {
                acc += probs[i] / sum;
                if (acc >= o.TopP) { cut = i + 1; break; }
            }
            keep = Math.Max(1, cut);
            sum = 0;
            for (int i = 0; i < keep; i++) sum += probs[i];
        }
        double u = rng.NextDouble() * sum;
        for (int i = 0; i < keep; i++)
        {
            u -= probs[i];
            if (u < 0) return order[i];
        }
        return order[keep - 1];
    }

    /// <summary>
    /// Per-layer K and V of every generated position, [batch, capacity, kv_heads·head_dim], and the segment ids of
    /// the cached positions; activations for the widest step (the prompt) come from an inference arena.
    /// </summary>
    private sealed class KvCache : IDisposable
    {
        private readonly CausalLM _m;
        private readonly TensorArena _arena;
        private readonly ModelActivations _acts;
        private readonly Tensor[] _k, _v;
        private readonly Tensor _segments;
        private readonly int _batch, _capacity;

        public KvCache(CausalLM model, int batch, int capacity, int maxStepTokens)
        {
            _m = model;
            _batch = batch;
            _capacity = capacity;
            var s = model.Spec;
            var builder = new TensorArena.Builder();
            var hk = new int[s.NumLayers];
            var hv = new int[s.NumLayers];
            for (int l = 0; l < s.NumLayers; l++)
            {
                hk[l] = builder.Add($"k{l}", model.Backend.ComputeDType, batch * capacity, s.KvDim);
                hv[l] = builder.Add($"v{l}", model.Backend.ComputeDType, batch * capacity, s.KvDim);
            }
            int hs = builder.Add("segments", DType.I32, batch * capacity);
            _arena = builder.Build(model.Backend);
            _k = hk.Select(h => _arena[h]).ToArray();
            _v = hv.Select(h => _arena[h]).ToArray();
            _segments = _arena[hs];
            Segments = new int[batch * capacity];
            _acts = new ModelActivations(model.Backend, s, model._layers, checkpointing: true, training: false,
                Math.Max(batch, maxStepTokens), batch, residuals: 2);
        }

        /// <summary>Host copy of the cache's segment ids, uploaded at each step.</summary>
        public int[] Segments { get; }

        /// <summary>Positions filled so far (the same for every row).</summary>
        public int Length { get; private set; }

        /// <summary>Runs n new tokens per row through the model, appends their K/V, and writes the last token's logits per row.</summary>
        public void Step(int[] ids, int[] positions, int n, float[] logits)
        {
            var m = _m;
            var B = m.Backend;
            var s = m.Spec;
            if (Length + n > _capacity) throw new InvalidOperationException($"KV cache of {_capacity} positions is full");
            int tokens = _batch * n, c = s.HiddenSize;
            m.EnsureRope(positions.Max() + 1);
            B.Upload(_acts.Ids.View(0, [tokens]), ids);
            B.Upload(_acts.Positions.View(0, [tokens]), positions);
            B.Upload(_segments, Segments);
            var x = _acts.Residual[0].View(0, [tokens, c]);
            var y = _acts.Residual[1].View(0, [tokens, c]);
            B.Embedding(x, m._embed.Value, _acts.Ids.View(0, [tokens]));
            var shape = new AttentionShape(_batch, n, Length + n, _capacity, s.NumHeads, s.NumKvHeads, s.HeadDim);
            var a = _acts.Layers[0];
            for (int l = 0; l < s.NumLayers; l++)
            {
                m.DecodeLayer(m._layers[l], a, x, y, tokens, _acts.Positions.View(0, [tokens]), _k[l], _v[l], _segments, Length, n, shape);
                (x, y) = (y, x);
            }
            // x holds the last layer's output; gather each row's last token, norm, and project to logits.
            var rows = new int[_batch];
            for (int r = 0; r < _batch; r++) rows[r] = r * n + n - 1;
            B.Upload(_acts.CompactRows.View(0, [_batch]), rows);
            var last = _acts.Hc.View(0, [_batch, c]);
            B.Embedding(last, x, _acts.CompactRows.View(0, [_batch]));
            var normed = _acts.LnF.View(0, [_batch, c]);
            B.RmsNorm(normed, _acts.RstdF.View(0, [_batch]), last, m._finalNorm.Value, (float)s.RmsNormEps);
            var lg = _acts.Logits.View(0, [_batch, s.VocabSize]);
            B.MatMul(lg, normed, false, m.HeadWeight.Value, true);
            B.Download(lg, logits);
            Length += n;
        }

        public void Dispose()
        {
            _acts.Dispose();
            _arena.Dispose();
        }
    }

    /// <summary>One layer for new tokens: like the training forward, but K/V go into the cache and attention reads all cached positions.</summary>
    private void DecodeLayer(DecoderLayer L, LayerActivations a, Tensor x, Tensor y, int tokens, Tensor pos, Tensor kCache, Tensor vCache,
        Tensor segments, int past, int n, AttentionShape shape)
    {
        var B = Backend;
        var (q, k, v) = AttentionInputs(L, a, x, pos, tokens, 0, false);
        int kvd = Spec.KvDim, capacity = shape.KvCapacity;
        for (int r = 0; r < shape.Batch; r++)
        {
            B.Copy(kCache.View(((long)r * capacity + past) * kvd, [n, kvd]), k.View((long)r * n * kvd, [n, kvd]));
            B.Copy(vCache.View(((long)r * capacity + past) * kvd, [n, kvd]), v.View((long)r * n * kvd, [n, kvd]));
        }
        var att = Rows(a.Att, tokens);
        B.Attention(att, Head1(a.Lse, (long)tokens * Spec.NumHeads), q, kCache, vCache, segments, shape);
        LayerTail(L, a, x, att, y, tokens, 0, false);
    }
}
