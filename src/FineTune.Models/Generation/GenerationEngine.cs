using FineTune.Engine;

namespace FineTune.Models.Generation;

/// <summary>
/// Continuous batching over a slot-based KV cache (the vLLM way, on FineTune's backends): requests wait in a queue,
/// join the running batch as soon as a slot is free, have their prompt computed in one pass (or in chunks, when
/// longer than a step's token budget) and then one token per step, each sequence stopping on its own (EOS, its
/// callback, its length) and handing its slot on at once. Each step is one forward through the model with every
/// running sequence's tokens. Sampling per sequence with its own settings and generator. Requests may name one of the
/// engine's adapters; the batch then mixes adapters (<see cref="AdapterBank"/>).
/// Not thread-safe: one thread calls <see cref="Add"/> and <see cref="Step"/> (the callbacks run there too).
/// </summary>
public sealed class GenerationEngine : IDisposable
{
    private readonly CausalLM _model;
    private readonly KvCacheSlots _cache;
    private readonly ModelActivations _acts;
    private readonly AdapterBank? _bank;
    private readonly Queue<Sequence> _waiting = new();
    private readonly List<Sequence> _running = [];
    private readonly float[] _row;
    private readonly int[] _picks;
    private long _admitted;

    private sealed class Sequence(GenerationRequest request, int adapter, Random rng)
    {
        public GenerationRequest Request { get; } = request;
        public int Adapter { get; } = adapter;
        public Random Rng { get; } = rng;
        public List<int> Tokens { get; } = [.. request.Prompt];
        public int PromptLength { get; } = request.Prompt.Length;
        public HashSet<int>? Seen { get; } = request.Options.RepetitionPenalty != 1.0 ? [.. request.Prompt] : null;
        public long Order { get; init; }
        public int Slot { get; set; } = -1;
        /// <summary>Tokens whose K/V are in the cache.</summary>
        public int Computed { get; set; }
        public string? Finish { get; set; }
        public int Generated => Tokens.Count - PromptLength;
    }

    public GenerationEngine(CausalLM model, GenerationEngineOptions options, IReadOnlyList<NamedAdapter>? adapters = null)
    {
        if (options.MaxSequences < 1) throw new ArgumentException($"the engine needs at least one sequence slot, got {options.MaxSequences}");
        if (options.MaxModelLength < 2) throw new ArgumentException($"the model length must be at least 2 tokens, got {options.MaxModelLength}");
        if (options.MaxBatchTokens < options.MaxSequences)
            throw new ArgumentException($"a step's token budget ({options.MaxBatchTokens}) must hold one decode token per sequence ({options.MaxSequences})");
        _model = model;
        Options = options;
        try
        {
            if (adapters is { Count: > 0 }) _bank = AdapterBank.Load(model, adapters, options.MaxBatchTokens);
            _cache = new KvCacheSlots(model, options.MaxSequences, options.MaxModelLength, options.MaxBatchTokens);
            _acts = model.CreateStepActivations(options.MaxBatchTokens, options.MaxSequences);
        }
        catch
        {
            _bank?.Dispose();
            _cache?.Dispose();
            throw;
        }
        _row = new float[model.Spec.VocabSize];
        _picks = new int[options.MaxSequences];
    }

    public GenerationEngineOptions Options { get; }
    public CausalLM Model => _model;
    /// <summary>The adapter names requests may choose.</summary>
    public IReadOnlyList<string> AdapterNames => _bank?.Names ?? [];
    public int Running => _running.Count;
    public int Waiting => _waiting.Count;
    public bool HasWork => _running.Count > 0 || _waiting.Count > 0;
    /// <summary>Bytes of the KV cache (all slots, all layers, K and V).</summary>
    public long CacheBytes => _cache.ByteLength;

    /// <summary>Queues a request (validated here: a user's mistake is an ArgumentException naming it).</summary>
    public void Add(GenerationRequest request)
    {
        var o = request.Options;
        if (request.Prompt.Length == 0) throw new ArgumentException("the prompt has no tokens");
        if (request.Prompt.Length >= Options.MaxModelLength)
            throw new ArgumentException($"the prompt has {request.Prompt.Length} tokens; this engine holds at most {Options.MaxModelLength} tokens per sequence (prompt and generated)");
        foreach (int id in request.Prompt)
            if ((uint)id >= (uint)_model.Spec.VocabSize) throw new ArgumentException($"token id {id} is outside the vocabulary of {_model.Spec.VocabSize}");
        if (o.DoSample && o.Temperature <= 0) throw new ArgumentException($"temperature must be positive when sampling, got {o.Temperature}");
        int adapter = 0;
        if (request.Adapter is { } name && (adapter = _bank?.IndexOf(name) ?? -1) < 0)
            throw new ArgumentException($"no adapter named '{name}'; the engine has {(AdapterNames.Count == 0 ? "none" : string.Join(", ", AdapterNames))}");
        var seq = new Sequence(request, adapter, request.Random ?? new Random(o.Seed)) { Order = _admitted++ };
        if (o.MaxNewTokens <= 0)
        {
            request.OnFinished?.Invoke(new GeneratedSequence([], "length"));
            return;
        }
        _waiting.Enqueue(seq);
    }

    /// <summary>Runs steps until every request has finished.</summary>
    public void RunToCompletion()
    {
        while (HasWork) Step();
    }

    /// <summary>One iteration: drop cancelled requests, admit waiting ones into free slots, one forward, one pick per sequence.</summary>
    public void Step()
    {
        DropCancelled();
        var chunks = Schedule();
        if (chunks.Count == 0) return;
        var step = Flatten(chunks, out var pickers);
        var logits = _model.ForwardStep(step, _cache, _acts, _bank);
        Pick(logits, step.LogitRows.Length, pickers);
        Retire();
    }

    /// <summary>
    /// Ends every running and waiting request with <paramref name="reason"/> and frees all slots: what a driver does
    /// when a step failed (the cache rows of a half-done step are then no one's).
    /// </summary>
    public void Abort(string reason)
    {
        foreach (var seq in _running)
            if (seq.Finish is null) Finish(seq, reason);
        foreach (var seq in _waiting) Finish(seq, reason);
        _waiting.Clear();
        foreach (var seq in _running) _cache.Release(seq.Slot);
        _running.Clear();
    }

    private void DropCancelled()
    {
        foreach (var seq in _running)
            if (seq.Finish is null && seq.Request.IsCancelled) Finish(seq, "cancelled");
        if (_waiting.Any(s => s.Request.IsCancelled))
        {
            var keep = _waiting.Where(s => !s.Request.IsCancelled).ToList();
            foreach (var s in _waiting.Where(s => s.Request.IsCancelled)) s.Request.OnFinished?.Invoke(new GeneratedSequence([], "cancelled"));
            _waiting.Clear();
            foreach (var s in keep) _waiting.Enqueue(s);
        }
        Retire();
    }

    /// <summary>
    /// The step's work as (sequence, tokens to compute): decode tokens of running sequences first, then prompt chunks of
    /// sequences in their prefill, then newly admitted ones, within the token budget. A finished sequence that keeps
    /// its row (static batching) contributes one throw-away token.
    /// </summary>
    private List<(Sequence Seq, int Count)> Schedule()
    {
        var chunks = new List<(Sequence, int)>();
        int budget = Options.MaxBatchTokens;
        foreach (var seq in _running)
            if (seq.Finish is not null || seq.Computed == seq.Tokens.Count - 1)
            {
                chunks.Add((seq, 1));
                budget--;
            }
        foreach (var seq in _running)
            if (seq.Finish is null && seq.Computed < seq.Tokens.Count - 1 && budget > 0)
            {
                int n = Math.Min(seq.Tokens.Count - seq.Computed, budget);
                chunks.Add((seq, n));
                budget -= n;
            }
        while (_waiting.Count > 0 && _cache.FreeSlots > 0 && budget > 0)
        {
            var seq = _waiting.Dequeue();
            seq.Slot = _cache.Take();
            _running.Add(seq);
            int n = Math.Min(seq.Tokens.Count, budget);
            chunks.Add((seq, n));
            budget -= n;
        }
        return chunks;
    }

    /// <summary>Token arrays of the step, grouped by adapter; the logit rows of chunks that reach their sequence's end.</summary>
    private StepBatch Flatten(List<(Sequence Seq, int Count)> chunks, out List<(Sequence Seq, int Row)> pickers)
    {
        if (_bank is not null) chunks = [.. chunks.OrderBy(c => c.Seq.Adapter)]; // stable: admission order within an adapter
        int n = chunks.Sum(c => c.Count), cap = Options.MaxModelLength;
        int[] ids = new int[n], pos = new int[n], slots = new int[n], rows = new int[n];
        var logitRows = new List<int>();
        var tokenGroups = new List<RowGroup>();
        var logitGroups = new List<RowGroup>();
        pickers = [];
        int t = 0;
        foreach (var (seq, count) in chunks)
        {
            bool dummy = seq.Finish is not null;
            for (int i = 0; i < count; i++, t++)
            {
                int p = dummy ? Math.Min(seq.Computed, cap - 1) : seq.Computed + i;
                ids[t] = dummy ? 0 : seq.Tokens[p];
                pos[t] = p;
                slots[t] = seq.Slot;
                rows[t] = seq.Slot * cap + p;
            }
            AddToGroup(tokenGroups, seq.Adapter, count);
            if (!dummy) seq.Computed += count;
            if (dummy || seq.Computed == seq.Tokens.Count)
            {
                if (!dummy) pickers.Add((seq, logitRows.Count));
                logitRows.Add(t - 1);
                AddToGroup(logitGroups, seq.Adapter, 1);
            }
        }
        // Sampling draws in admission order (a shared generator then gives the rows the draws HF generate gives them).
        pickers.Sort((a, b) => a.Seq.Order.CompareTo(b.Seq.Order));
        return new StepBatch
        {
            Ids = ids, Positions = pos, Slots = slots, CacheRows = rows, LogitRows = [.. logitRows],
            TokenGroups = tokenGroups, LogitGroups = logitGroups,
        };
    }

    private static void AddToGroup(List<RowGroup> groups, int adapter, int count)
    {
        if (groups.Count > 0 && groups[^1].Adapter == adapter) groups[^1] = groups[^1] with { Count = groups[^1].Count + count };
        else groups.Add(new RowGroup(adapter, groups.Count == 0 ? 0 : groups[^1].Start + groups[^1].Count, count));
    }

    /// <summary>
    /// Greedy rows take the device's argmax (one int per row comes back); a row that samples or penalises repetition
    /// downloads its logits and picks on the host.
    /// </summary>
    private void Pick(Tensor logits, int rows, List<(Sequence Seq, int Row)> pickers)
    {
        if (pickers.Count == 0) return;
        var B = _model.Backend;
        var picks = _cache.Picks.View(0, [rows]);
        B.ArgMax(logits, picks);
        B.Download(picks, _picks.AsSpan(0, rows));
        foreach (var (seq, row) in pickers)
        {
            var o = seq.Request.Options;
            int token;
            if (o.PlainGreedy) token = _picks[row];
            else
            {
                B.Download(logits.SliceRows(row, 1), _row);
                token = TokenSampler.Pick(_row, seq.Seen, o, seq.Rng);
            }
            Accept(seq, token);
        }
    }

    private void Accept(Sequence seq, int token)
    {
        var o = seq.Request.Options;
        if (o.EosTokenIds.Contains(token)) { Finish(seq, "eos"); return; }
        seq.Tokens.Add(token);
        seq.Seen?.Add(token);
        if (seq.Request.OnToken is { } onToken && !onToken(token)) Finish(seq, "stop");
        else if (seq.Generated >= o.MaxNewTokens || seq.Tokens.Count >= Options.MaxModelLength) Finish(seq, "length");
    }

    private static void Finish(Sequence seq, string reason)
    {
        seq.Finish = reason;
        seq.Request.OnFinished?.Invoke(new GeneratedSequence([.. seq.Tokens.Skip(seq.PromptLength)], reason));
    }

    /// <summary>Frees the slots of finished sequences (under static batching only once every row has finished).</summary>
    private void Retire()
    {
        if (Options.KeepFinishedRows && _running.Any(s => s.Finish is null)) return;
        for (int i = _running.Count - 1; i >= 0; i--)
        {
            if (_running[i].Finish is null) continue;
            _cache.Release(_running[i].Slot);
            _running.RemoveAt(i);
        }
    }

    public void Dispose()
    {
        _acts.Dispose();
        _cache.Dispose();
        _bank?.Dispose();
    }
}
