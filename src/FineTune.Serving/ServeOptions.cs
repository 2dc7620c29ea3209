using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Models;
using FineTune.Models.Generation;

namespace FineTune.Serving;

/// <summary>`finetune serve`'s settings (vLLM's names where it has one).</summary>
public sealed record ServeOptions
{
    /// <summary>The HF model directory (a merged model, or the base of the adapters).</summary>
    public required string ModelDirectory { get; init; }
    /// <summary>The model id clients name in "model" and /v1/models lists.</summary>
    public required string ModelId { get; init; }
    public IReadOnlyList<NamedAdapter> Adapters { get; init; } = [];
    /// <summary>Chat template name (FineTune's templates, as `finetune chat --template`).</summary>
    public required string Template { get; init; }
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 picks a free port (the one bound is printed).</summary>
    public int Port { get; init; } = 8000;
    /// <summary>When set, every /v1 request needs "Authorization: Bearer &lt;key&gt;".</summary>
    public string? ApiKey { get; init; }
    public string Device { get; init; } = "auto";
    /// <summary>Sequences decoded together (vLLM's max_num_seqs).</summary>
    public int MaxBatch { get; init; } = 32;
    /// <summary>Blocks of 16 positions in the KV cache's pool (vLLM's num_gpu_blocks); 0: every sequence at the full model length.</summary>
    public int KvCacheBlocks { get; init; }
    /// <summary>Replay decode steps as CUDA graphs (on CUDA); false runs them eagerly.</summary>
    public bool CudaGraphs { get; init; } = true;
    /// <summary>Requests that may wait for a slot; more get 429.</summary>
    public int MaxQueue { get; init; } = 256;
    /// <summary>Prompt plus completion tokens per sequence (default: the model's max_position_embeddings, at most 4096).</summary>
    public int? MaxModelLength { get; init; }
    /// <summary>Tokens through the model per step (prompt chunks and decode tokens).</summary>
    public int MaxBatchTokens { get; init; } = 2048;
    /// <summary>The largest max_tokens a request may ask for (default: the model length).</summary>
    public int? MaxTokensLimit { get; init; }
    /// <summary>The largest request body in bytes (413 beyond).</summary>
    public long MaxRequestBytes { get; init; } = 1 << 20;
    /// <summary>How long SIGTERM waits for in-flight requests before the server exits anyway.</summary>
    public TimeSpan DrainTimeout { get; init; } = TimeSpan.FromSeconds(60);
}

/// <summary>generation_config.json's eos_token_id and sampling defaults (vLLM uses them for fields a request leaves out).</summary>
public sealed record GenerationConfig(IReadOnlyList<int> EosTokenIds, double? Temperature, double? TopP, int? TopK, double? RepetitionPenalty)
{
    public static GenerationConfig Read(string modelDirectory)
    {
        string path = Path.Combine(modelDirectory, "generation_config.json");
        if (!File.Exists(path)) return new([], null, null, null, null);
        try
        {
            var o = JsonNode.Parse(File.ReadAllText(path))?.AsObject() ?? throw new JsonException("not an object");
            IReadOnlyList<int> eos = o["eos_token_id"] switch
            {
                JsonArray a => a.Select(x => x!.GetValue<int>()).ToList(),
                JsonValue v => [v.GetValue<int>()],
                _ => [],
            };
            return new(eos, o["temperature"]?.GetValue<double>(), o["top_p"]?.GetValue<double>(), o["top_k"]?.GetValue<int>(),
                o["repetition_penalty"]?.GetValue<double>());
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new ModelFormatException(path, $"cannot read it: {e.Message}");
        }
    }
}
