using FineTune.Engine;
using FineTune.Engine.Sampling;

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
    private readonly PagedKvCache _cache;
    private readonly ModelActivations _acts;
    private readonly AdapterBank? _bank;
    private readonly SamplingBuffers _sampling;
    private readonly DecodeGraphs? _graphs;
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
        /// <summary>The sequence's block table: the cache blocks that hold its positions, in order.</summary>
        public List<int> Blocks { get; } = [];
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
            _cache = new PagedKvCache(model, options.MaxSequences, options.MaxModelLength, options.KvCacheBlocks, options.KvBlockSize, options.MaxBatchTokens);
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
        _sampling = new SamplingBuffers(model.Backend, options.MaxSequences, model.Spec.VocabSize);
        if (DecodeGraphs.Usable(model))
        {
            model.PrepareRope(options.MaxModelLength);
            _graphs = new DecodeGraphs(model, _cache, _acts, options.MaxSequences, DecodeGraphs.Wanted(options));
        }
    }

    /// <summary>Decode graphs recorded and replayed so far, and why graphs went off (null while they are on or were never on).</summary>
    public (int Captured, long Replays, string? Failure) GraphStats => _graphs is null ? (0, 0, null) : (_graphs.Captured, _graphs.Replays, _graphs.Failure);

    public GenerationEngineOptions Options { get; }
    public CausalLM Model => _model;
    /// <summary>The adapter names requests may choose.</summary>
    public IReadOnlyList<string> AdapterNames => _bank?.Names ?? [];
    public int Running => _running.Count;
    public int Waiting => _waiting.Count;
    public bool HasWork => _running.Count > 0 || _waiting.Count > 0;
    /// <summary>Bytes of the KV cache (the whole block pool, all layers, K and V) and the step's input buffer.</summary>
    public long CacheBytes => _cache.ByteLength;
    /// <summary>Blocks of the pool no sequence holds (block 0, the scratch block, not counted).</summary>
    public int FreeCacheBlocks => _cache.FreeBlocks;
    /// <summary>Sequences sent back to the queue because the pool ran out of blocks (recomputed when readmitted).</summary>
    public long Preemptions { get; private set; }

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

    /// <summary>
    /// One iteration: drop cancelled requests, preempt if the pool is short, admit waiting ones, one forward (replayed as
    /// a graph for a decode-only step where the backend records them), one pick per sequence.
    /// </summary>
    public void Step()
    {
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        DropCancelled();
        var chunks = Schedule();
        if (chunks.Count == 0) return;
        var step = Flatten(chunks, out var pickers);
        long t1 = System.Diagnostics.Stopwatch.GetTimestamp();
        Tensor logits;
        if (step.DecodeOnly && _graphs is not null)
        {
            _model.UploadStep(step, _cache);
            logits = _graphs.Run(step);
            _lastDecode = step;
        }
        else logits = _model.ForwardStep(step, _cache, _acts, _bank);
        long t2 = System.Diagnostics.Stopwatch.GetTimestamp();
        Pick(logits, step.LogitRows, pickers);
        Retire();
        long t3 = System.Diagnostics.Stopwatch.GetTimestamp();
        Times = new StepTimes(Times.Steps + 1, Times.ScheduleTicks + (t1 - t0), Times.LaunchTicks + (t2 - t1), Times.PickTicks + (t3 - t2));
    }

    private StepBatch? _lastDecode;

    /// <summary>
    /// Host time of the steps so far, split where the host waits differently: scheduling and packing the inputs; the
    /// upload and the step's launches (a replayed graph or eager kernels); the picks (which wait for the device to
    /// finish the step, then download). For `finetune bench --generate --profile`.
    /// </summary>
    public StepTimes Times { get; private set; } = new(0, 0, 0, 0);

    /// <summary>
    /// Device time of one decode step alone: the last recorded decode graph replayed <paramref name="replays"/> times back
    /// to back (no host work between them), milliseconds per replay; null before a decode graph exists. The replays
    /// rewrite that step's cache rows with the same values, so the engine's state is unchanged.
    /// </summary>
    internal double? DecodeReplayMs(int replays)
    {
        if (_graphs is null || _lastDecode is not { } step || _graphs.Captured == 0) return null;
        var B = _model.Backend;
        _model.UploadStep(step, _cache);
        _graphs.Run(step);
        B.Synchronize();
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        for (int i = 0; i < replays; i++) _graphs.Run(step);
        B.Synchronize();
        return System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds / replays;
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
        foreach (var seq in _running) _cache.Release(seq.Blocks);
        _running.Clear();
    }

    private void DropCancelled()
    {
        foreach (var seq in _running)
            if (seq.Finish is null && seq.Request.IsCancelled) Finish(seq, "cancelled");
        if (_waiting.Any(s => s.Request.IsCancelled))
        {
            var keep = _waiting.Where(s => !s.Request.IsCancelled).ToList();
            // A preempted sequence waits with the tokens it made so far; Finish reports them (none for a fresh request).
            foreach (var s in _waiting.Where(s => s.Request.IsCancelled)) Finish(s, "cancelled");
            _waiting.Clear();
            foreach (var s in keep) _waiting.Enqueue(s);
        }
        Retire();
    }

    /// <summary>
    /// The step's work as (sequence, tokens to compute): decode tokens of running sequences first, then prompt chunks of
    /// sequences in their prefill, then newly admitted ones, within the token budget. A finished sequence that keeps
    /// its row (static batching) contributes one throw-away token. A decode token that crosses into a new block takes
    /// one from the pool; when the pool is short, the latest admitted sequence goes back to the front of the queue with
    /// its blocks freed (vLLM's recompute preemption: readmitted, it computes its prompt and tokens so far again). A
    /// waiting request is admitted when a sequence place is free and the pool holds its whole prompt.
    /// </summary>
    private List<(Sequence Seq, int Count)> Schedule()
    {
        Preempt();
        var chunks = new List<(Sequence, int)>();
        int budget = Options.MaxBatchTokens;
        foreach (var seq in _running)
            if (seq.Finish is not null || seq.Computed == seq.Tokens.Count - 1)
            {
                if (seq.Finish is null && !_cache.TryReserve(seq.Blocks, seq.Computed + 1))
                    throw new InvalidOperationException("the KV block pool ran short after preemption"); // Preempt() freed enough
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
        while (_waiting.Count > 0 && _running.Count < Options.MaxSequences && budget > 0)
        {
            var seq = _waiting.Peek();
            if (!_cache.TryReserve(seq.Blocks, seq.Tokens.Count)) break;
            _waiting.Dequeue();
            _running.Add(seq);
            int n = Math.Min(seq.Tokens.Count, budget);
            chunks.Add((seq, n));
            budget -= n;
        }
        return chunks;
    }

    /// <summary>Frees the blocks of the latest admitted sequences until every decode token of this step has its block.</summary>
    private void Preempt()
    {
        int Needed() => _running.Count(s => s.Finish is null && s.Computed == s.Tokens.Count - 1 && _cache.BlocksFor(s.Computed + 1) > s.Blocks.Count);
        while (Needed() > _cache.FreeBlocks)
        {
            var victim = _running.Where(s => s.Finish is null).MaxBy(s => s.Order)!;
            _running.Remove(victim);
            _cache.Release(victim.Blocks);
            victim.Computed = 0;
            var rest = _waiting.ToList();
            _waiting.Clear();
            _waiting.Enqueue(victim);
            foreach (var w in rest) _waiting.Enqueue(w);
            Preemptions++;
        }
    }

    /// <summary>
    /// The step's inputs packed in one I32 array (<see cref="StepLayout"/>), tokens grouped by adapter, one block-table
    /// row per chunk; the logit rows of chunks that reach their sequence's end.
    /// </summary>
    private StepBatch Flatten(List<(Sequence Seq, int Count)> chunks, out List<(Sequence Seq, int Row)> pickers)
    {
        if (_bank is not null) chunks = [.. chunks.OrderBy(c => c.Seq.Adapter)]; // stable: admission order within an adapter
        // A decode-only step on graphs is padded to its bucket: pad rows read and write the scratch block only.
        bool graph = _graphs is not null && _bank is null
            && chunks.All(c => c.Count == 1 && (c.Seq.Finish is not null || c.Seq.Computed == c.Seq.Tokens.Count - 1));
        int pad = graph ? _graphs!.Bucket(chunks.Count) - chunks.Count : 0;
        int n = chunks.Sum(c => c.Count) + pad;
        int logitRows = chunks.Count(c => c.Seq.Finish is not null || c.Seq.Computed + c.Count == c.Seq.Tokens.Count) + pad;
        var layout = new StepLayout(n, logitRows, chunks.Count + pad, _cache.TableWidth);
        var inputs = new int[layout.Length];
        var tokenGroups = new List<RowGroup>();
        var logitGroups = new List<RowGroup>();
        pickers = [];
        int t = 0, logit = 0, maxPos = 0;
        for (int c = 0; c < chunks.Count; c++)
        {
            var (seq, count) = chunks[c];
            bool dummy = seq.Finish is not null;
            var table = inputs.AsSpan(layout.Tables + c * layout.TableWidth, layout.TableWidth);
            for (int j = 0; j < seq.Blocks.Count; j++) table[j] = seq.Blocks[j];
            for (int i = 0; i < count; i++, t++)
            {
                // A throw-away token reads its sequence's last key and writes its own K/V into the scratch block.
                int p = dummy ? Math.Max(0, seq.Computed - 1) : seq.Computed + i;
                inputs[layout.Ids + t] = dummy ? 0 : seq.Tokens[p];
                inputs[layout.Positions + t] = p;
                inputs[layout.Sequences + t] = c;
                inputs[layout.CacheRows + t] = dummy ? 0 : _cache.Row(seq.Blocks, p);
                maxPos = Math.Max(maxPos, p);
            }
            AddToGroup(tokenGroups, seq.Adapter, count);
            if (!dummy) seq.Computed += count;
            if (dummy || seq.Computed == seq.Tokens.Count)
            {
                if (!dummy) pickers.Add((seq, logit));
                inputs[layout.Logits + logit++] = t - 1;
                AddToGroup(logitGroups, seq.Adapter, 1);
            }
        }
        for (int c = chunks.Count; c < chunks.Count + pad; c++, t++)
        {
            // id 0 at position 0 of table row c (all scratch), K/V into the scratch block's first row.
            inputs[layout.Sequences + t] = c;
            inputs[layout.Logits + logit++] = t;
            AddToGroup(tokenGroups, 0, 1);
            AddToGroup(logitGroups, 0, 1);
        }
        // Sampling draws in admission order (a shared generator then gives the rows the draws HF generate gives them).
        pickers.Sort((a, b) => a.Seq.Order.CompareTo(b.Seq.Order));
        return new StepBatch
        {
            Layout = layout, Inputs = inputs, TokenGroups = tokenGroups, LogitGroups = logitGroups, MaxPosition = maxPos,
            DecodeOnly = graph,
        };
    }

    private static void AddToGroup(List<RowGroup> groups, int adapter, int count)
    {
        if (groups.Count > 0 && groups[^1].Adapter == adapter) groups[^1] = groups[^1] with { Count = groups[^1].Count + count };
        else groups.Add(new RowGroup(adapter, groups.Count == 0 ? 0 : groups[^1].Start + groups[^1].Count, count));
    }

    /// <summary>
    /// One pick per logit row on the device, one int per row back: a step of plain greedy rows takes the argmax; a step
    /// with a row that samples or penalises repetition runs <see cref="IBackend.SampleRows"/> over every row, each
    /// sampling row with a uniform drawn here from its own generator (in admission order), so every backend draws the
    /// same token. A row the device leaves undecided (−1) is picked on the host with that same uniform.
    /// </summary>
    private void Pick(Tensor logits, int rows, List<(Sequence Seq, int Row)> pickers)
    {
        if (pickers.Count == 0) return;
        var B = _model.Backend;
        var picks = _cache.Picks.View(0, [rows]);
        SamplingRow[]? settings = null;
        int[]? seen = null;
        if (pickers.All(p => p.Seq.Request.Options.PlainGreedy)) B.ArgMax(logits, picks);
        else
        {
            int seenIds = pickers.Sum(p => p.Seq.Seen?.Count ?? 0);
            _sampling.Ensure(seenIds);
            var greedy = new SamplingRow(false, 1, 0, 1, 1, 0, 0, 0);
            settings = new SamplingRow[rows];
            Array.Fill(settings, greedy);
            seen = new int[Math.Max(1, seenIds)];
            int at = 0;
            foreach (var (seq, row) in pickers)
            {
                var o = seq.Request.Options;
                int count = 0;
                if (seq.Seen is { } set && o.RepetitionPenalty != 1.0) { set.CopyTo(seen, at); count = set.Count; }
                settings[row] = TokenSampler.Row(o, o.DoSample ? seq.Rng.NextDouble() : 0, at, count);
                at += count;
            }
            var packed = new int[rows * SamplingRow.Ints];
            for (int r = 0; r < rows; r++) settings[r].Write(packed.AsSpan(r * SamplingRow.Ints, SamplingRow.Ints));
            var parameters = _sampling.Parameters.View(0, [packed.Length]);
            B.Upload(parameters, packed);
            B.Upload(_sampling.Seen.View(0, [seen.Length]), seen);
            B.SampleRows(logits, parameters, _sampling.Seen, picks, _sampling.Scratch);
        }
        B.Download(picks, _picks.AsSpan(0, rows));
        foreach (var (seq, row) in pickers)
        {
            int token = _picks[row];
            if (token < 0)
            {
                var o = settings![row];
                B.Download(logits.SliceRows(row, 1), _row);
                token = TokenSampling.Pick(_row, seen.AsSpan(o.SeenStart, o.SeenCount), o);
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

    /// <summary>Frees the blocks of finished sequences (under static batching only once every row has finished).</summary>
    private void Retire()
    {
        if (Options.KeepFinishedRows && _running.Any(s => s.Finish is null)) return;
        for (int i = _running.Count - 1; i >= 0; i--)
        {
            if (_running[i].Finish is null) continue;
            _cache.Release(_running[i].Blocks);
            _running.RemoveAt(i);
        }
    }

    public void Dispose()
    {
        _graphs?.Dispose();
        _acts.Dispose();
        _sampling.Dispose();
        _cache.Dispose();
        _bank?.Dispose();
    }
}

/// <summary>Accumulated host time of <see cref="GenerationEngine.Step"/> by phase, in Stopwatch ticks.</summary>
public readonly record struct StepTimes(long Steps, long ScheduleTicks, long LaunchTicks, long PickTicks)
{
    public double MsPerStep(long ticks) => Steps == 0 ? 0 : ticks * 1000.0 / System.Diagnostics.Stopwatch.Frequency / Steps;
}
