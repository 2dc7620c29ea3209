using System.Collections.Concurrent;
using System.Threading.Channels;
using FineTune.Models;
using FineTune.Models.Generation;

namespace FineTune.Serving;

/// <summary>What a running generation reports to the request that waits for it.</summary>
internal abstract record GenerationEvent
{
    public sealed record Token(int Id) : GenerationEvent;
    public sealed record Finished(string Reason) : GenerationEvent;
}

/// <summary>
/// The thread that owns the model: it moves submitted requests into the <see cref="GenerationEngine"/> and runs its
/// steps (continuous batching) while there is work, sleeping otherwise. Requests come from any thread; each reads its
/// tokens from a channel. Admission is bounded: at most max_batch running plus max_queue waiting, beyond which
/// <see cref="TrySubmit"/> refuses (the server answers 429).
/// </summary>
internal sealed class InferenceScheduler : IDisposable
{
    private readonly GenerationEngine _engine;
    private readonly ConcurrentQueue<GenerationRequest> _submitted = new();
    private readonly SemaphoreSlim _wake = new(0);
    private readonly Thread _thread;
    private readonly int _limit;
    private int _inFlight;
    private volatile bool _stopping;

    public InferenceScheduler(GenerationEngine engine, int maxQueue)
    {
        _engine = engine;
        _limit = engine.Options.MaxSequences + maxQueue;
        _thread = new Thread(Loop) { Name = "finetune-scheduler", IsBackground = true };
        _thread.Start();
    }

    /// <summary>Requests admitted and not yet finished (running or waiting).</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>
    /// Queues <paramref name="count"/> sequences for one HTTP request together (all or none), each reporting to its
    /// own channel; false when the queue is full.
    /// </summary>
    public bool TrySubmit(IReadOnlyList<(int[] Prompt, GenerationOptions Options)> sequences, string? adapter,
        out GenerationRequest[] requests, out ChannelReader<GenerationEvent>[] events)
    {
        requests = [];
        events = [];
        int n = sequences.Count;
        while (true)
        {
            int current = Volatile.Read(ref _inFlight);
            if (_stopping || current + n > _limit) return false;
            if (Interlocked.CompareExchange(ref _inFlight, current + n, current) == current) break;
        }
        requests = new GenerationRequest[n];
        events = new ChannelReader<GenerationEvent>[n];
        for (int i = 0; i < n; i++)
        {
            var channel = Channel.CreateUnbounded<GenerationEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
            events[i] = channel.Reader;
            var writer = channel.Writer;
            requests[i] = new GenerationRequest(sequences[i].Prompt, sequences[i].Options)
            {
                Adapter = adapter,
                OnToken = id => writer.TryWrite(new GenerationEvent.Token(id)),
                OnFinished = s =>
                {
                    writer.TryWrite(new GenerationEvent.Finished(s.FinishReason));
                    writer.TryComplete();
                    Interlocked.Decrement(ref _inFlight);
                },
            };
        }
        foreach (var r in requests) _submitted.Enqueue(r);
        _wake.Release();
        return true;
    }

    private void Loop()
    {
        // The model was loaded on the main thread; a CUDA context is current per thread (CUDA_ERROR_INVALID_CONTEXT otherwise).
        _engine.Model.Backend.BindToCurrentThread();
        while (true)
        {
            while (_submitted.TryDequeue(out var r))
            {
                try { _engine.Add(r); }
                catch (ArgumentException e) { Fail(r, e.Message); }
            }
            if (!_engine.HasWork)
            {
                if (_stopping && _submitted.IsEmpty) return;
                _wake.Wait(100);
                continue;
            }
            try { _engine.Step(); }
            catch (Exception e)
            {
                // A failed step (device out of memory, a kernel error) fails what was in flight; the engine keeps its slots.
                Console.Error.WriteLine($"error: generation step failed: {e.Message}");
                _engine.Abort("error: " + e.Message);
            }
        }
    }

    private void Fail(GenerationRequest r, string message)
    {
        r.OnFinished?.Invoke(new GeneratedSequence([], "error: " + message));
    }

    /// <summary>Refuses new requests, lets the engine finish what it holds, and stops the thread.</summary>
    public void Drain()
    {
        _stopping = true;
        _wake.Release();
        _thread.Join();
    }

    public void Dispose()
    {
        if (_thread.IsAlive) Drain();
        _wake.Dispose();
    }
}
