namespace FineTune.Models.Generation;

/// <summary>Sizes of a <see cref="GenerationEngine"/>: its KV cache and how much one step may carry.</summary>
public sealed record GenerationEngineOptions
{
    /// <summary>Sequences decoded at once (vLLM's max_num_seqs).</summary>
    public int MaxSequences { get; init; } = 8;
    /// <summary>Tokens one sequence may hold, prompt and generated together (vLLM's max_model_len).</summary>
    public int MaxModelLength { get; init; } = 2048;
    /// <summary>
    /// Blocks in the KV cache's pool (vLLM's num_gpu_blocks), each <see cref="KvBlockSize"/> positions; 0: enough for
    /// every sequence at the full model length (plus the scratch block). A smaller pool lets more sequences run than
    /// fit at full length; when it runs short the latest admitted sequence is preempted and recomputed later.
    /// </summary>
    public int KvCacheBlocks { get; init; }
    /// <summary>Positions per KV block (vLLM's block_size).</summary>
    public int KvBlockSize { get; init; } = 16;
    /// <summary>
    /// Replay decode steps as CUDA graphs on backends that record them (<see cref="DecodeGraphs"/>); false (or
    /// FINETUNE_CUDA_GRAPHS=0) runs every step eagerly (decode steps still padded to their buckets, so the tokens are the
    /// same either way).
    /// </summary>
    public bool CudaGraphs { get; init; } = true;
    /// <summary>
    /// Tokens through the model in one step (vLLM's max_num_batched_tokens): each running sequence's decode token
    /// first, then prompt chunks of sequences still in their prefill, a long prompt spread over several steps.
    /// </summary>
    public int MaxBatchTokens { get; init; } = 2048;
    /// <summary>
    /// Static batching (<see cref="CausalLM.Generate"/>): a finished sequence keeps its row in every decode step until
    /// all have finished, so each step has the row count it had before the engine existed (the CPU backend takes a
    /// different product path below five rows, so the count decides the last bits of the logits).
    /// </summary>
    public bool KeepFinishedRows { get; init; }
}

/// <summary>
/// One prompt to continue. Callbacks run on the thread that drives the engine's <see cref="GenerationEngine.Step"/>;
/// <see cref="Cancel"/> may be called from any thread and frees the sequence's slot at the next step.
/// </summary>
public sealed class GenerationRequest(int[] prompt, GenerationOptions options)
{
    private volatile bool _cancelled;

    public int[] Prompt { get; } = prompt;
    public GenerationOptions Options { get; } = options;
    /// <summary>A named adapter of the engine (null: the model as loaded, with its own LoRA if it has one).</summary>
    public string? Adapter { get; init; }
    /// <summary>Each new token as it is picked; returning false stops the sequence (finish reason "stop").</summary>
    public Func<int, bool>? OnToken { get; init; }
    /// <summary>The generated tokens and the finish reason, once.</summary>
    public Action<GeneratedSequence>? OnFinished { get; init; }
    /// <summary>The generator that draws samples; default a new one seeded with Options.Seed (one per request).</summary>
    public Random? Random { get; init; }

    public bool IsCancelled => _cancelled;
    public void Cancel() => _cancelled = true;
}
