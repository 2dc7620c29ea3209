using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Data.Templates;
using FineTune.Engine;
using FineTune.Models;
using FineTune.Models.Generation;
using FineTune.Tokenizers;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace FineTune.Serving;

/// <summary>
/// `finetune serve`: an OpenAI-compatible HTTP server (the endpoints and behaviour of vLLM's) over one model on one
/// device. Kestrel threads parse and validate requests and stream answers; the <see cref="InferenceScheduler"/> thread
/// owns the model and batches every request in flight.
/// </summary>
public sealed class OpenAiServer : IDisposable
{
    private readonly ServeOptions _o;
    private readonly IBackend _backend;
    private readonly CausalLM _model;
    private readonly GenerationEngine _engine;
    private readonly InferenceScheduler _scheduler;
    private readonly Tokenizer _tokenizer;
    private readonly ChatPrompt _chat;
    private readonly GenerationConfig _defaults;
    private readonly IReadOnlyList<int> _completionEos;
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    private readonly byte[]? _apiKey;
    /// <summary>Text as it is (no \u0027 for an apostrophe); still valid JSON for every client.</summary>
    private static readonly JsonSerializerOptions Json = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private static readonly string[] ChatFields =
    [
        "model", "messages", "temperature", "top_p", "top_k", "n", "stream", "stream_options", "stop", "max_tokens", "max_completion_tokens",
        "seed", "repetition_penalty", "presence_penalty", "frequency_penalty", "user", "logprobs", "top_logprobs", "logit_bias",
        "response_format", "tools", "tool_choice", "parallel_tool_calls", "ignore_eos",
    ];

    private static readonly string[] CompletionFields =
    [
        "model", "prompt", "temperature", "top_p", "top_k", "n", "stream", "stream_options", "stop", "max_tokens", "seed",
        "repetition_penalty", "presence_penalty", "frequency_penalty", "user", "logprobs", "logit_bias", "echo", "suffix", "best_of", "ignore_eos",
    ];

    public OpenAiServer(ServeOptions options)
    {
        _o = options;
        var config = ModelConfig.Load(Path.Combine(options.ModelDirectory, "config.json"));
        int maxLen = options.MaxModelLength ?? Math.Min(config.MaxPositionEmbeddings is > 0 and var m ? m : 4096, 4096);
        MaxModelLength = maxLen;
        _tokenizer = Tokenizer.FromDirectory(options.ModelDirectory);
        _defaults = GenerationConfig.Read(options.ModelDirectory);
        _chat = new ChatPrompt(_tokenizer, ChatTemplate.Get(options.Template, enableThinking: false), _defaults.EosTokenIds);
        var eos = new HashSet<int>(_defaults.EosTokenIds);
        if (_tokenizer.EosTokenId is { } e) eos.Add(e);
        _completionEos = [.. eos.Order()];
        _apiKey = options.ApiKey is { Length: > 0 } k ? Encoding.UTF8.GetBytes(k) : null;
        _backend = Backends.Create(options.Device);
        try
        {
            _model = CausalLM.Load(options.ModelDirectory, _backend, TrainingSetup.Inference);
            _engine = new GenerationEngine(_model, new GenerationEngineOptions
            {
                MaxSequences = options.MaxBatch,
                MaxModelLength = maxLen,
                MaxBatchTokens = Math.Max(options.MaxBatchTokens, options.MaxBatch),
                KvCacheBlocks = options.KvCacheBlocks,
                CudaGraphs = options.CudaGraphs,
            }, options.Adapters);
        }
        catch
        {
            _model?.Dispose();
            _backend.Dispose();
            throw;
        }
        _scheduler = new InferenceScheduler(_engine, options.MaxQueue);
    }

    public int MaxModelLength { get; }
    private int MaxTokensLimit => _o.MaxTokensLimit ?? MaxModelLength;

    /// <summary>Serves until SIGTERM/SIGINT (or <paramref name="stop"/>), then drains in-flight requests and returns.</summary>
    public void Run(TextWriter log, CancellationToken stop = default)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = _o.DrainTimeout);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = _o.MaxRequestBytes;
            if (_o.Host == "localhost") k.ListenLocalhost(_o.Port);
            else if (IPAddress.TryParse(_o.Host, out var ip)) k.Listen(ip, _o.Port);
            else throw new ArgumentException($"--host {_o.Host}: not an IP address; use 127.0.0.1 (the default), 0.0.0.0, ::, or localhost");
        });
        using var app = builder.Build();
        app.Use(Authorize);
        app.MapGet("/health", () => Results.Ok());
        app.MapGet("/v1/models", ListModels);
        app.MapPost("/v1/chat/completions", ctx => Handle(ctx, ChatCompletion));
        app.MapPost("/v1/completions", ctx => Handle(ctx, Completion));
        app.Start();
        var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;
        log.WriteLine($"serving {_o.ModelId}{(_engine.AdapterNames.Count > 0 ? " with adapters " + string.Join(", ", _engine.AdapterNames) : "")} " +
            $"on {_backend.Name} (batch {_o.MaxBatch}, queue {_o.MaxQueue}, model length {MaxModelLength}); listening on {string.Join(", ", addresses)}");
        log.Flush();
        using var reg = stop.Register(() => app.Lifetime.StopApplication());
        app.WaitForShutdown();
        _scheduler.Drain();
        log.WriteLine("stopped: every request in flight was answered");
        log.Flush();
    }

    // ---- middleware and plain endpoints ----

    private async Task Authorize(HttpContext ctx, RequestDelegate next)
    {
        if (_apiKey is not null && ctx.Request.Path.StartsWithSegments("/v1"))
        {
            string header = ctx.Request.Headers.Authorization.ToString();
            byte[] given = header.StartsWith("Bearer ", StringComparison.Ordinal) ? Encoding.UTF8.GetBytes(header[7..].Trim()) : [];
            if (!CryptographicOperations.FixedTimeEquals(given, _apiKey))
            {
                await WriteError(ctx, new OpenAiError(401, header.Length == 0
                    ? "You didn't provide an API key. Provide it as \"Authorization: Bearer YOUR_KEY\"."
                    : "Incorrect API key provided.", code: "invalid_api_key"));
                return;
            }
        }
        await next(ctx);
    }

    private JsonObject ListModels()
    {
        var data = new JsonArray(ModelCard(_o.ModelId, null));
        foreach (string a in _engine.AdapterNames) data.Add(ModelCard(a, _o.ModelId));
        return new JsonObject { ["object"] = "list", ["data"] = data };
    }

    private JsonObject ModelCard(string id, string? parent) => new()
    {
        ["id"] = id, ["object"] = "model", ["created"] = _created, ["owned_by"] = "finetune", ["root"] = parent is null ? _o.ModelDirectory : id,
        ["parent"] = parent, ["max_model_len"] = MaxModelLength,
    };

    // ---- generation endpoints ----

    /// <summary>What a validated request asks for: prompts, n choices each, sampling, stops, streaming.</summary>
    private sealed record Job(string Kind, string Model, string? Adapter, IReadOnlyList<int[]> Prompts, int N, bool Stream, bool IncludeUsage,
        IReadOnlyList<GenerationOptions> Options, IReadOnlyList<string> Stops);

    private async Task Handle(HttpContext ctx, Func<JsonElement, Job> parse)
    {
        try
        {
            using var doc = await ReadJson(ctx);
            var job = parse(doc.RootElement);
            var sequences = new List<(int[], GenerationOptions)>();
            for (int p = 0; p < job.Prompts.Count; p++)
                for (int i = 0; i < job.N; i++) sequences.Add((job.Prompts[p], job.Options[p * job.N + i]));
            if (!_scheduler.TrySubmit(sequences, job.Adapter, out var requests, out var events))
            {
                ctx.Response.Headers.RetryAfter = "1";
                throw new OpenAiError(429, $"The server is busy: {_scheduler.InFlight} requests are in flight (at most {_o.MaxBatch} running and {_o.MaxQueue} waiting). Retry shortly.",
                    "rate_limit_error", code: "rate_limit_exceeded");
            }
            using var cancel = ctx.RequestAborted.Register(() => { foreach (var r in requests) r.Cancel(); });
            var choices = requests.Select((r, i) => new Choice(r, events[i], new TextStream(_tokenizer, job.Stops), i)).ToArray();
            try
            {
                if (job.Stream) await Stream(ctx, job, choices);
                else await Answer(ctx, job, choices);
            }
            finally
            {
                foreach (var r in requests) r.Cancel(); // no-op for finished ones; frees the slots of a client that left
            }
        }
        catch (OpenAiError e)
        {
            if (!ctx.Response.HasStarted) await WriteError(ctx, e);
        }
        catch (Exception) when (ctx.RequestAborted.IsCancellationRequested)
        {
            // The client went away; its sequences were cancelled above.
        }
    }

    private static async Task<JsonDocument> ReadJson(HttpContext ctx)
    {
        byte[] body;
        try
        {
            using var ms = new MemoryStream();
            await ctx.Request.Body.CopyToAsync(ms, ctx.RequestAborted);
            body = ms.ToArray();
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            throw new OpenAiError(413, $"The request body is larger than the server's limit of {ctx.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize} bytes.",
                code: "request_too_large");
        }
        try { return JsonDocument.Parse(body); }
        catch (JsonException e)
        {
            throw OpenAiError.BadRequest($"We could not parse the JSON body of your request: {e.Message} (the body must be a JSON object)", code: "invalid_json");
        }
    }

    private Job ChatCompletion(JsonElement root)
    {
        var f = new RequestFields(root, ChatFields);
        var (model, adapter) = ResolveModel(f);
        var messages = f.Required("messages");
        if (messages.ValueKind != JsonValueKind.Array) throw RequestFields.WrongType("messages", "an array", messages);
        string system = "";
        var turns = new List<FineTune.Data.ChatMessage>();
        int index = 0;
        foreach (var m in messages.EnumerateArray())
        {
            string at = $"messages[{index}]";
            if (m.ValueKind != JsonValueKind.Object) throw RequestFields.WrongType(at, "an object", m);
            var mf = new RequestFields(m, ["role", "content", "name"]);
            string role = mf.String("role") ?? throw OpenAiError.BadRequest($"Missing required parameter: '{at}.role'.", $"{at}.role", "missing_required_parameter");
            string content = Content(mf, at);
            switch (role)
            {
                case "system" or "developer" when turns.Count == 0:
                    system = system.Length == 0 ? content : system + "\n" + content;
                    break;
                case "user" when turns.Count % 2 == 0:
                    turns.Add(new(FineTune.Data.ChatRole.User, content));
                    break;
                case "assistant" when turns.Count % 2 == 1:
                    turns.Add(new(FineTune.Data.ChatRole.Assistant, content));
                    break;
                case "system" or "developer" or "user" or "assistant":
                    throw OpenAiError.BadRequest($"Invalid '{at}.role' '{role}' here: after system messages, the messages alternate user and assistant, starting and ending with user.", $"{at}.role", "invalid_value");
                default:
                    throw OpenAiError.BadRequest($"Invalid '{at}.role': '{role}' is not supported; use system, developer, user or assistant.", $"{at}.role", "invalid_value");
            }
            index++;
        }
        if (turns.Count == 0 || turns.Count % 2 == 0)
            throw OpenAiError.BadRequest("Invalid 'messages': the last message must be from the user (after optional system messages, user and assistant alternate).", "messages", "invalid_value");
        int[] prompt = _chat.Encode(system, turns);
        int? maxTokens = (int?)(f.Integer("max_completion_tokens", 1, int.MaxValue) ?? f.Integer("max_tokens", 1, int.MaxValue));
        Unsupported(f, chat: true);
        return Build(f, "chat", model, adapter, [prompt], maxTokens, [.. _chat.StopStrings], _chat.EosTokenIds);
    }

    private static string Content(RequestFields mf, string at)
    {
        if (mf.Get("content") is not { } c) return "";
        if (c.ValueKind == JsonValueKind.String) return c.GetString()!;
        if (c.ValueKind != JsonValueKind.Array) throw RequestFields.WrongType($"{at}.content", "a string or an array of text parts", c);
        var sb = new StringBuilder();
        int i = 0;
        foreach (var part in c.EnumerateArray())
        {
            string pat = $"{at}.content[{i++}]";
            if (part.ValueKind != JsonValueKind.Object) throw RequestFields.WrongType(pat, "an object", part);
            var pf = new RequestFields(part, ["type", "text"]);
            if (pf.String("type") != "text") throw OpenAiError.BadRequest($"Invalid '{pat}.type': only \"text\" parts are supported.", $"{pat}.type", "invalid_value");
            sb.Append(pf.String("text") ?? throw OpenAiError.BadRequest($"Missing required parameter: '{pat}.text'.", $"{pat}.text", "missing_required_parameter"));
        }
        return sb.ToString();
    }

    private Job Completion(JsonElement root)
    {
        var f = new RequestFields(root, CompletionFields);
        var (model, adapter) = ResolveModel(f);
        var p = f.Required("prompt");
        var prompts = new List<int[]>();
        int[] Ids(JsonElement arr, string at) => arr.EnumerateArray().Select((x, i) =>
            x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out int id) ? id : throw RequestFields.WrongType($"{at}[{i}]", "a token id (integer)", x)).ToArray();
        if (p.ValueKind == JsonValueKind.String) prompts.Add(_tokenizer.Encode(p.GetString()!, addSpecialTokens: true));
        else if (p.ValueKind == JsonValueKind.Array && p.GetArrayLength() > 0 && p[0].ValueKind == JsonValueKind.Number) prompts.Add(Ids(p, "prompt"));
        else if (p.ValueKind == JsonValueKind.Array && p.GetArrayLength() > 0)
        {
            int i = 0;
            foreach (var x in p.EnumerateArray())
            {
                string at = $"prompt[{i++}]";
                if (x.ValueKind == JsonValueKind.String) prompts.Add(_tokenizer.Encode(x.GetString()!, addSpecialTokens: true));
                else if (x.ValueKind == JsonValueKind.Array) prompts.Add(Ids(x, at));
                else throw RequestFields.WrongType(at, "a string or an array of token ids", x);
            }
        }
        else throw RequestFields.WrongType("prompt", "a non-empty string, array of strings, or array of token ids", p);
        if (prompts.Any(x => x.Length == 0)) throw OpenAiError.BadRequest("Invalid 'prompt': a prompt may not be empty.", "prompt", "invalid_value");
        foreach (var ids in prompts)
            foreach (int id in ids)
                if ((uint)id >= (uint)_model.Spec.VocabSize)
                    throw OpenAiError.BadRequest($"Invalid 'prompt': token id {id} is outside the vocabulary of {_model.Spec.VocabSize}.", "prompt", "invalid_value");
        if (f.Bool("echo") == true) throw OpenAiError.BadRequest("'echo' is not supported by this server.", "echo", "unsupported_parameter");
        f.OnlyNeutral("suffix", e => e.ValueKind == JsonValueKind.String && e.GetString() == "", "no suffix");
        f.OnlyNeutral("best_of", e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int b) && b == ((int?)f.Integer("n", 1, 128) ?? 1), "best_of must equal n");
        Unsupported(f, chat: false);
        int maxTokens = (int)(f.Integer("max_tokens", 1, int.MaxValue) ?? 16); // OpenAI's and vLLM's default for completions
        return Build(f, "text_completion", model, adapter, prompts, maxTokens, [], _completionEos);
    }

    private (string Model, string? Adapter) ResolveModel(RequestFields f)
    {
        var m = f.Required("model");
        if (m.ValueKind != JsonValueKind.String) throw RequestFields.WrongType("model", "a string", m);
        string id = m.GetString()!;
        if (id == _o.ModelId) return (id, null);
        if (_engine.AdapterNames.Contains(id)) return (id, id);
        throw new OpenAiError(404, $"The model `{id}` does not exist.", param: "model", code: "model_not_found");
    }

    private static void Unsupported(RequestFields f, bool chat)
    {
        static bool Zero(JsonElement e) => e.ValueKind == JsonValueKind.Number && e.GetDouble() == 0;
        f.OnlyNeutral("presence_penalty", Zero, "only 0 (use repetition_penalty)");
        f.OnlyNeutral("frequency_penalty", Zero, "only 0 (use repetition_penalty)");
        f.OnlyNeutral("logit_bias", e => e.ValueKind == JsonValueKind.Object && !e.EnumerateObject().Any(), "no logit biases");
        f.OnlyNeutral("logprobs", e => e.ValueKind == JsonValueKind.False, "no log probabilities");
        if (!chat) return;
        f.OnlyNeutral("top_logprobs", Zero, "no log probabilities");
        f.OnlyNeutral("response_format", e => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "text", "only {\"type\": \"text\"}");
        f.OnlyNeutral("tools", e => e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 0, "no tool calls");
        f.OnlyNeutral("tool_choice", e => e.ValueKind == JsonValueKind.String && e.GetString() == "none", "no tool calls");
        f.OnlyNeutral("parallel_tool_calls", _ => true, "");
    }

    /// <summary>Sampling settings, lengths and stops shared by both endpoints (vLLM's meanings and defaults).</summary>
    private Job Build(RequestFields f, string kind, string model, string? adapter, IReadOnlyList<int[]> prompts, int? maxTokens,
        List<string> stops, IReadOnlyList<int> eos)
    {
        double temperature = f.Number("temperature", 0, 2) ?? _defaults.Temperature ?? 1.0;
        double topP = f.Number("top_p", 0, 1, minExclusive: true) ?? _defaults.TopP ?? 1.0;
        long topK = f.Integer("top_k", -1, int.MaxValue) ?? _defaults.TopK ?? 0;
        double repetition = f.Number("repetition_penalty", 0, 2, minExclusive: true) ?? _defaults.RepetitionPenalty ?? 1.0;
        int n = (int)(f.Integer("n", 1, 128) ?? 1);
        long? seed = f.Integer("seed", int.MinValue, int.MaxValue);
        bool stream = f.Bool("stream") ?? false;
        bool includeUsage = false;
        if (f.Get("stream_options") is { } so)
        {
            if (!stream) throw OpenAiError.BadRequest("Invalid 'stream_options': only allowed when 'stream' is true.", "stream_options", "invalid_value");
            if (so.ValueKind != JsonValueKind.Object) throw RequestFields.WrongType("stream_options", "an object", so);
            var sf = new RequestFields(so, ["include_usage", "continuous_usage_stats"]);
            includeUsage = sf.Bool("include_usage") ?? false;
            if (sf.Bool("continuous_usage_stats") == true) throw OpenAiError.BadRequest("'stream_options.continuous_usage_stats' is not supported by this server.", "stream_options", "unsupported_parameter");
        }
        stops.AddRange(f.Strings("stop", 16));
        if (f.Bool("ignore_eos") == true) eos = []; // vLLM's extra parameter: run to max_tokens (benchmarks, tests)
        f.String("user");
        var options = new List<GenerationOptions>();
        foreach (var prompt in prompts)
        {
            int room = MaxModelLength - prompt.Length;
            if (room < 1 || (maxTokens ?? 1) > room)
                throw OpenAiError.BadRequest($"This model's maximum context length is {MaxModelLength} tokens. However, you requested {prompt.Length + (maxTokens ?? 1)} tokens " +
                    $"({prompt.Length} in the {(kind == "chat" ? "messages" : "prompt")}, {maxTokens ?? 1} in the completion). Please reduce the length of the {(kind == "chat" ? "messages" : "prompt")} or completion.",
                    kind == "chat" ? "messages" : "prompt", "context_length_exceeded");
            int max = maxTokens ?? room;
            if (maxTokens > MaxTokensLimit)
                throw OpenAiError.BadRequest($"Invalid 'max_tokens': {maxTokens} is above this server's limit of {MaxTokensLimit}.", "max_tokens", "invalid_value");
            max = Math.Min(max, MaxTokensLimit);
            for (int i = 0; i < n; i++)
                options.Add(new GenerationOptions
                {
                    MaxNewTokens = max,
                    DoSample = temperature >= 1e-5, // vLLM: a temperature this small is greedy
                    Temperature = temperature < 1e-5 ? 1.0 : temperature,
                    TopP = topP,
                    TopK = topK <= 0 ? 0 : (int)topK,
                    RepetitionPenalty = repetition,
                    // One generator per choice: seed + choice index, so n choices differ and each is reproducible.
                    Seed = seed is { } s ? unchecked((int)s + i) : Random.Shared.Next(),
                    EosTokenIds = eos,
                });
        }
        return new Job(kind, model, adapter, prompts, n, stream, includeUsage, options, stops);
    }

    // ---- answers ----

    private sealed class Choice(GenerationRequest request, System.Threading.Channels.ChannelReader<GenerationEvent> events, TextStream text, int index)
    {
        public GenerationRequest Request { get; } = request;
        public System.Threading.Channels.ChannelReader<GenerationEvent> Events { get; } = events;
        public TextStream Text { get; } = text;
        public int Index { get; } = index;
        public string? Finish { get; set; }
        public bool Eos { get; set; }
        public int PromptTokens => Request.Prompt.Length;
        public int CompletionTokens => Text.TokenCount + (Eos ? 1 : 0);

        /// <summary>Applies one event; returns the text it makes visible. Sets <see cref="Finish"/> at the end.</summary>
        public string Apply(GenerationEvent e)
        {
            switch (e)
            {
                case GenerationEvent.Token t:
                    string piece = Text.Push(t.Id);
                    if (Text.Stopped && Finish is null)
                    {
                        Finish = "stop";
                        Request.Cancel();
                        return piece + Text.Flush();
                    }
                    return piece;
                case GenerationEvent.Finished f when Finish is null:
                    if (f.Reason.StartsWith("error", StringComparison.Ordinal))
                        throw new OpenAiError(500, $"Generation failed: {f.Reason[6..].Trim()}", "server_error", code: "generation_failed");
                    Eos = f.Reason == "eos";
                    Finish = f.Reason is "eos" or "stop" ? "stop" : f.Reason == "length" ? "length" : "abort";
                    return Text.Flush();
                default:
                    return "";
            }
        }
    }

    private async Task Answer(HttpContext ctx, Job job, Choice[] choices)
    {
        foreach (var c in choices)
            await foreach (var e in c.Events.ReadAllAsync(ctx.RequestAborted))
            {
                c.Apply(e);
                if (c.Finish is not null) break;
            }
        string id = (job.Kind == "chat" ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        var array = new JsonArray();
        foreach (var c in choices)
            array.Add(job.Kind == "chat"
                ? new JsonObject
                {
                    ["index"] = c.Index,
                    ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = c.Text.Text },
                    ["logprobs"] = null,
                    ["finish_reason"] = c.Finish,
                }
                : new JsonObject { ["index"] = c.Index, ["text"] = c.Text.Text, ["logprobs"] = null, ["finish_reason"] = c.Finish });
        var body = new JsonObject
        {
            ["id"] = id,
            ["object"] = job.Kind == "chat" ? "chat.completion" : "text_completion",
            ["created"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
            ["model"] = job.Model,
            ["choices"] = array,
            ["usage"] = Usage(job, choices),
        };
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync(body.ToJsonString(Json), ctx.RequestAborted);
    }

    private static JsonObject Usage(Job job, Choice[] choices)
    {
        // Each prompt counts once, however many choices continue it.
        int prompt = job.Prompts.Sum(p => p.Length), completion = choices.Sum(c => c.CompletionTokens);
        return new JsonObject { ["prompt_tokens"] = prompt, ["completion_tokens"] = completion, ["total_tokens"] = prompt + completion };
    }

    /// <summary>Server-sent events in OpenAI's chunk format, ending with <c>data: [DONE]</c>.</summary>
    private async Task Stream(HttpContext ctx, Job job, Choice[] choices)
    {
        var r = ctx.Response;
        r.ContentType = "text/event-stream";
        r.Headers.CacheControl = "no-cache";
        string id = (job.Kind == "chat" ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        string obj = job.Kind == "chat" ? "chat.completion.chunk" : "text_completion";
        JsonObject Chunk(JsonArray chunkChoices) => new()
        {
            ["id"] = id, ["object"] = obj, ["created"] = created, ["model"] = job.Model, ["choices"] = chunkChoices,
        };
        JsonObject ChoiceDelta(Choice c, string? text, string? finish, bool first = false) => job.Kind == "chat"
            ? new JsonObject
            {
                ["index"] = c.Index,
                ["delta"] = first ? new JsonObject { ["role"] = "assistant", ["content"] = "" } : text is null ? new JsonObject() : new JsonObject { ["content"] = text },
                ["logprobs"] = null,
                ["finish_reason"] = finish,
            }
            : new JsonObject { ["index"] = c.Index, ["text"] = text ?? "", ["logprobs"] = null, ["finish_reason"] = finish };
        async Task Send(JsonObject o)
        {
            await r.WriteAsync("data: " + o.ToJsonString(Json) + "\n\n", ctx.RequestAborted);
        }

        await r.StartAsync(ctx.RequestAborted);
        if (job.Kind == "chat")
            foreach (var c in choices) await Send(Chunk([ChoiceDelta(c, null, null, first: true)]));
        await r.Body.FlushAsync(ctx.RequestAborted);
        var open = choices.ToList();
        try
        {
            while (open.Count > 0)
            {
                bool wrote = false;
                foreach (var c in open.ToList())
                {
                    var text = new StringBuilder();
                    while (c.Finish is null && c.Events.TryRead(out var e)) text.Append(c.Apply(e));
                    if (text.Length > 0) { await Send(Chunk([ChoiceDelta(c, text.ToString(), null)])); wrote = true; }
                    if (c.Finish is not null)
                    {
                        await Send(Chunk([ChoiceDelta(c, null, c.Finish)]));
                        wrote = true;
                        open.Remove(c);
                    }
                }
                if (wrote) await r.Body.FlushAsync(ctx.RequestAborted);
                if (open.Count > 0 && !open.Any(c => c.Events.TryPeek(out _)))
                    await Task.WhenAny(open.Select(c => c.Events.WaitToReadAsync(ctx.RequestAborted).AsTask()));
            }
        }
        catch (OpenAiError e)
        {
            await Send(e.Body());
        }
        if (job.IncludeUsage)
        {
            var usage = Chunk([]);
            usage["usage"] = Usage(job, choices);
            await Send(usage);
        }
        await r.WriteAsync("data: [DONE]\n\n", ctx.RequestAborted);
        await r.Body.FlushAsync(ctx.RequestAborted);
    }

    private static async Task WriteError(HttpContext ctx, OpenAiError e)
    {
        ctx.Response.StatusCode = e.Status;
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync(e.Body().ToJsonString(Json));
    }

    public void Dispose()
    {
        _scheduler.Dispose();
        _engine.Dispose();
        _model.Dispose();
        _backend.Dispose();
    }
}
