using System.Net;
using System.Reflection;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Pipeline;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace FineTune.Board;

/// <summary>
/// `finetune board`: a web UI over the pipelines under a root — status and why, the YAML with located errors, runs
/// (queue, stop, live training), data, metrics across commits, chat, artifacts — on the same loader, runner, run lock,
/// cache and generation code as the CLI. Kestrel from the shared framework, as `finetune serve`; the front end is
/// plain files embedded in the assembly.
/// </summary>
public sealed class BoardServer : IDisposable
{
    public const string TokenCookie = "finetune_board_token";
    public const string CsrfHeader = "X-CSRF-Token";
    private readonly BoardOptions _o;
    private readonly PipelineCatalog _catalog;
    private readonly BoardRuns _runs;
    private readonly BoardChat _chat;
    private readonly byte[]? _token;
    /// <summary>Per process: a page of another origin cannot read it, so it cannot POST with it.</summary>
    private readonly string _csrf = Convert.ToHexString(RandomNumberGenerator.GetBytes(32)).ToLowerInvariant();
    private WebApplication? _app;
    private static readonly JsonSerializerOptions Json = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public BoardServer(BoardOptions options)
    {
        options.Check();
        _o = options;
        _catalog = new PipelineCatalog(options.Root);
        _token = options.Token is { Length: > 0 } t ? Encoding.UTF8.GetBytes(t) : null;
        _runs = new BoardRuns(_catalog);
        _chat = new BoardChat(options.Device);
    }

    /// <summary>The address the board listens on, once started.</summary>
    public string? Address { get; private set; }

    /// <summary>Starts listening; returns the bound address (http://127.0.0.1:PORT).</summary>
    public string Start()
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(5));
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = PipelineLoader.MaxPipelineBytes + 65536;
            if (_o.Host == "localhost") k.ListenLocalhost(_o.Port);
            else k.Listen(IPAddress.Parse(_o.Host), _o.Port);
        });
        var app = builder.Build();
        app.Use(Guard);
        Map(app);
        app.Start();
        _app = app;
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        Address = address.Replace("[::]", "127.0.0.1").Replace("0.0.0.0", "127.0.0.1");
        return Address;
    }

    /// <summary>Serves until <paramref name="stop"/> (Ctrl-C / SIGTERM in the CLI).</summary>
    public void Run(TextWriter log, CancellationToken stop)
    {
        var address = Start();
        log.WriteLine($"FineTune Board on {address}{(_token is null ? "" : "/?token=…")} — pipelines under {_catalog.Root}: {string.Join(", ", _catalog.Names())}");
        log.Flush();
        using var reg = stop.Register(() => _app!.Lifetime.StopApplication());
        _app!.WaitForShutdown();
        log.WriteLine("board stopped; runs it had started were stopped as Ctrl-C stops them (training saved its step).");
    }

    public void Dispose()
    {
        _runs.Dispose();
        _app?.StopAsync().GetAwaiter().GetResult();
        (_app as IDisposable)?.Dispose();
        _chat.Dispose();
    }

    // ---- security: token, host, CSRF ----

    private async Task Guard(HttpContext ctx, RequestDelegate next)
    {
        // DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1 reaches the board under its own origin; a
        // loopback board answers only to loopback names.
        if (_o.IsLoopback && !LoopbackHost(ctx.Request.Host.Host))
        {
            await Error(ctx, 421, $"host '{ctx.Request.Host}' is not this board's; open it as http://127.0.0.1:{ctx.Connection.LocalPort}/");
            return;
        }
        if (_token is not null)
        {
            string? given = ctx.Request.Headers.Authorization.ToString() is { } h && h.StartsWith("Bearer ", StringComparison.Ordinal) ? h[7..].Trim()
                : ctx.Request.Cookies[TokenCookie] ?? ctx.Request.Query["token"].FirstOrDefault();
            if (given is null || !CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(given), _token))
            {
                await Error(ctx, 401, "this board needs its token: open it as /?token=T (T as given to --token or FINETUNE_BOARD_TOKEN), or send Authorization: Bearer T");
                return;
            }
            if (ctx.Request.Query.ContainsKey("token"))
            {
                // The token moves from the address bar to a cookie scripts cannot read.
                ctx.Response.Cookies.Append(TokenCookie, given, new CookieOptions { HttpOnly = true, SameSite = SameSiteMode.Strict, Path = "/" });
                ctx.Response.Redirect(ctx.Request.Path);
                return;
            }
        }
        if (!HttpMethods.IsGet(ctx.Request.Method) && !HttpMethods.IsHead(ctx.Request.Method))
        {
            string given = ctx.Request.Headers[CsrfHeader].ToString();
            if (!CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(given), Encoding.UTF8.GetBytes(_csrf)))
            {
                await Error(ctx, 403, $"missing or wrong {CsrfHeader} header: state-changing requests carry the token of GET /api/session (the board's pages send it)");
                return;
            }
        }
        await next(ctx);
    }

    private static bool LoopbackHost(string host) =>
        host is "localhost" or "127.0.0.1" or "[::1]" or "::1" || (IPAddress.TryParse(host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));

    // ---- routes ----

    private void Map(WebApplication app)
    {
        app.MapGet("/", ctx => Asset(ctx, "index.html"));
        app.MapGet("/assets/{file}", (HttpContext ctx, string file) => Asset(ctx, file));
        app.MapGet("/api/session", () => Results.Json(new JsonObject { ["csrf"] = _csrf, ["root"] = _catalog.Root }));
        app.MapGet("/api/pipelines", () => Results.Json(new JsonObject
        {
            ["pipelines"] = new JsonArray(_catalog.Names().Select(n => (JsonNode)StatusView.Of(n, _catalog.FileOf(n)!, _runs)).ToArray()),
        }));
        app.MapGet("/api/pipelines/{name}", (string name) => WithPipeline(name, file => Results.Json(StatusView.Of(name, file, _runs))));
        app.MapGet("/api/pipelines/{name}/yaml", (string name) => WithPipeline(name, file =>
        {
            var text = File.ReadAllText(file);
            return Results.Json(new JsonObject { ["yaml"] = text, ["sha256"] = ContentHasher.Sha256Hex(text) });
        }));
        app.MapPost("/api/pipelines/{name}/validate", async (HttpContext ctx, string name) => await WithBody(ctx, name, (file, body) =>
            Results.Json(Validate(file, body["yaml"]?.GetValue<string>() ?? ""))));
        app.MapPost("/api/pipelines/{name}/save", async (HttpContext ctx, string name) => await WithBody(ctx, name, (file, body) => Save(file, body)));
        app.MapGet("/api/runs", () => Results.Json(new JsonObject { ["runs"] = new JsonArray(_runs.All.Select(r => (JsonNode)r.Summary()).ToArray()) }));
        app.MapPost("/api/runs", async (HttpContext ctx) =>
        {
            var body = await Body(ctx);
            if (body is null) return Problem(400, "expected a JSON object {\"pipeline\": NAME, \"stage\": STAGE?, \"force\": false}");
            var name = body["pipeline"]?.GetValue<string>() ?? "";
            // A pipeline with errors, or a stage it does not have, is refused here with the located errors, not queued.
            return WithPipeline(name, _ => Results.Json(_runs.Enqueue(new RunRequest(name, body["stage"]?.GetValue<string>(), body["force"]?.GetValue<bool>() ?? false)).Summary()));
        });
        app.MapPost("/api/runs/{id}/stop", (string id) => _runs.Stop(id) ? Results.Json(_runs.Get(id)!.Summary()) : Problem(409, $"run {id} is not queued or running"));
        app.MapGet("/api/runs/{id}", (string id) => _runs.Get(id) is { } r ? Results.Json(Full(r)) : Problem(404, $"no run {id}"));
        app.MapGet("/api/runs/{id}/events", RunEvents);
        app.MapGet("/api/pipelines/{name}/training", (string name, string? stage) => WithPipeline(name, file => Results.Json(Training(name, file, stage))));
        app.MapGet("/api/pipelines/{name}/data", (HttpContext ctx, string name, string? dataset, int? n) => WithPipeline(name, file => Results.Json(Data(file, dataset, n ?? 3, ctx.RequestAborted))));
        app.MapGet("/api/pipelines/{name}/evaluate", (string name) => WithPipeline(name, file => Results.Json(Evaluate(name, file))));
        app.MapGet("/api/pipelines/{name}/artifacts", (string name) => WithPipeline(name, file => Results.Json(Artifacts.List(file))));
        app.MapGet("/api/pipelines/{name}/artifacts/{stage}/file", (string name, string stage, string? path) => WithPipeline(name, file =>
            Artifacts.Find(file, stage, path ?? "") is { } found
                ? Results.File(found, "application/octet-stream", Path.GetFileName(found))
                : Problem(404, $"stage {stage} of {name} has no output file '{path}' (downloads are the files of an up-to-date stage's cached output)")));
        app.MapPost("/api/pipelines/{name}/chat", Chat);
    }

    private IResult WithPipeline(string name, Func<string, IResult> body)
    {
        var file = _catalog.FileOf(name);
        if (file is null) return Problem(404, $"no pipeline '{name}' under {_catalog.Root}/pipelines (there: {string.Join(", ", _catalog.Names())})");
        try
        {
            return body(file);
        }
        catch (PipelineValidationException e)
        {
            return Results.Json(new JsonObject { ["error"] = e.Errors.Count + " error(s) in the pipeline", ["errors"] = StatusView.Errors(e.Errors) }, statusCode: 422);
        }
        catch (Exception e) when (e is PipelineUserException || StatusView.IsUserError(e))
        {
            return Problem(422, e.Message);
        }
    }

    private async Task<IResult> WithBody(HttpContext ctx, string name, Func<string, JsonObject, IResult> body)
    {
        var json = await Body(ctx);
        if (json is null) return Problem(400, "expected a JSON object");
        return WithPipeline(name, file => body(file, json));
    }

    private static async Task<JsonObject?> Body(HttpContext ctx)
    {
        try { return await JsonNode.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted) as JsonObject; }
        catch (JsonException) { return null; }
    }

    private static IResult Problem(int status, string message) => Results.Json(new JsonObject { ["error"] = message }, statusCode: status);

    private static async Task Error(HttpContext ctx, int status, string message)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync(new JsonObject { ["error"] = message }.ToJsonString(Json));
    }

    private static async Task Asset(HttpContext ctx, string file)
    {
        using var stream = typeof(BoardServer).Assembly.GetManifestResourceStream("FineTune.Board.wwwroot." + file);
        if (stream is null) { await Error(ctx, 404, $"no asset {file}"); return; }
        ctx.Response.ContentType = Path.GetExtension(file) switch
        {
            ".html" => "text/html; charset=utf-8", ".js" => "text/javascript; charset=utf-8", ".css" => "text/css; charset=utf-8", _ => "application/octet-stream",
        };
        // The pages run only their own files: no inline script, nothing from elsewhere.
        ctx.Response.Headers.ContentSecurityPolicy = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'";
        ctx.Response.Headers.XContentTypeOptions = "nosniff";
        await stream.CopyToAsync(ctx.Response.Body);
    }

    // ---- edit ----

    /// <summary>The text checked as `finetune validate` checks the file (schema, semantics, did-you-mean), without writing it.</summary>
    internal static JsonObject Validate(string file, string yaml)
    {
        try
        {
            PipelineLoader.Parse(yaml, file);
            return new JsonObject { ["valid"] = true, ["errors"] = new JsonArray() };
        }
        catch (PipelineValidationException e)
        {
            return new JsonObject { ["valid"] = false, ["errors"] = StatusView.Errors(e.Errors) };
        }
        catch (PipelineUserException e)
        {
            return new JsonObject { ["valid"] = false, ["errors"] = new JsonArray(new JsonObject { ["line"] = 1, ["column"] = 1, ["message"] = e.Message, ["text"] = e.Message }) };
        }
    }

    /// <summary>
    /// Writes the text as given (so every comment, blank line and key order stays as typed) through a temp file and a
    /// rename; refuses text with errors, and text edited from a file that changed on disk since it was loaded.
    /// </summary>
    private static IResult Save(string file, JsonObject body)
    {
        var yaml = body["yaml"]?.GetValue<string>() ?? "";
        var check = Validate(file, yaml);
        if (check["valid"]!.GetValue<bool>() is false)
            return Results.Json(new JsonObject { ["error"] = "not saved: the pipeline has errors", ["errors"] = check["errors"]!.DeepClone() }, statusCode: 422);
        var current = ContentHasher.Sha256Hex(File.ReadAllText(file));
        if (body["sha256"]?.GetValue<string>() is { } loadedFrom && loadedFrom != current)
            return Problem(409, $"not saved: {file} changed on disk since it was loaded; reload it, then apply your edit again");
        AtomicFile.WriteAllText(file, yaml);
        return Results.Json(new JsonObject { ["saved"] = true, ["sha256"] = ContentHasher.Sha256Hex(yaml) });
    }

    // ---- runs ----

    private static JsonObject Full(BoardRun run)
    {
        var o = run.Summary();
        o["events"] = new JsonArray(run.EventsAfter(0).Select(e => (JsonNode)e).ToArray());
        return o;
    }

    /// <summary>Server-sent events of a run from ?after=SEQ (or Last-Event-ID): every event, then new ones as they come, until it is done.</summary>
    private async Task RunEvents(HttpContext ctx, string id)
    {
        if (_runs.Get(id) is not { } run) { await Error(ctx, 404, $"no run {id}"); return; }
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        int after = int.TryParse(ctx.Request.Headers["Last-Event-ID"].FirstOrDefault() ?? ctx.Request.Query["after"].FirstOrDefault(), out var a) ? a : 0;
        var ct = ctx.RequestAborted;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                bool done = run.Done; // read before the events, so the last ones are sent before the stream ends
                foreach (var e in run.EventsAfter(after))
                {
                    after = e["seq"]!.GetValue<int>();
                    await ctx.Response.WriteAsync($"id: {after}\nevent: {e["type"]}\ndata: {e.ToJsonString(Json)}\n\n", ct);
                }
                await ctx.Response.Body.FlushAsync(ct);
                if (done) { await ctx.Response.WriteAsync("event: end\ndata: {}\n\n", ct); return; }
                await Task.Delay(200, ct);
            }
        }
        catch (OperationCanceledException)
        {
            // The browser left; the run goes on (it lives on the queue's worker).
        }
    }

    // ---- training, data, evaluate ----

    private JsonObject Training(string name, string file, string? stageName)
    {
        var loaded = PipelineLoader.Load(file);
        var trains = loaded.Stages.Where(s => s.Kind == StageKind.Train).Select(s => s.Name).ToArray();
        var stage = stageName ?? trains.LastOrDefault();
        var o = new JsonObject { ["stages"] = new JsonArray(trains.Select(t => (JsonNode)t).ToArray()), ["stage"] = stage };
        if (_runs.All.FirstOrDefault(r => r.Request.Pipeline == name && !r.Done) is { } active) o["run"] = active.Summary();
        var live = TrainingLog.Live(StageCache.Beside(loaded.Directory).Root).FirstOrDefault(f => Path.GetFileName(Path.GetDirectoryName(Path.GetDirectoryName(f)))!.StartsWith(stage + "-", StringComparison.Ordinal));
        if (live is not null)
        {
            o["source"] = "live";
            o["entries"] = new JsonArray(TrainingLog.Read(live).Select(e => (JsonNode)e).ToArray());
            return o;
        }
        var done = PipelineRunner.CreateDefault().Status(loaded).Stages.FirstOrDefault(s => s.Name == stage);
        if (done is { State: StageState.UpToDate, OutputDirectory: { } dir })
        {
            o["source"] = "finished";
            o["entries"] = new JsonArray(TrainingLog.Read(Path.Combine(dir, FineTune.Training.TrainerLog.FileName)).Select(e => (JsonNode)e).ToArray());
        }
        else
        {
            o["source"] = "none";
            o["entries"] = new JsonArray();
            o["reason"] = done?.Reason;
        }
        return o;
    }

    private static JsonObject Data(string file, string? dataset, int n, CancellationToken ct)
    {
        var loaded = PipelineLoader.Load(file);
        var o = new JsonObject
        {
            ["datasets"] = DatasetEntries(loaded),
        };
        PreviewInputs inputs;
        try
        {
            inputs = DataPreview.Prepare(loaded, ct);
        }
        catch (PipelineUserException e)
        {
            // A bad record is the register stage's located error ("data/identity.json: record 3: …").
            o["error"] = e.Message;
            return o;
        }
        var sequences = DataPreview.Samples(inputs, dataset is { Length: > 0 } ? dataset : null, Math.Clamp(n, 1, 50));
        o["template"] = inputs.Template.Name;
        o["cutoff_len"] = inputs.Options.CutoffLen;
        o["samples_total"] = inputs.Conversations.Count;
        o["samples"] = new JsonArray(sequences.Select(s => (JsonNode)new JsonObject
        {
            ["source"] = s.Source, ["title"] = s.Title, ["tokens"] = s.Tokens, ["trained"] = s.Trained, ["truncated"] = s.Truncated,
            ["segments"] = new JsonArray(s.Segments.Select(g => (JsonNode)new JsonObject { ["text"] = g.Text, ["trained"] = g.Trained, ["tokens"] = g.Tokens }).ToArray()),
        }).ToArray());
        return o;
    }

    /// <summary>The pipeline's datasets as dataset_info.json describes them (the entries of the names data.dataset lists).</summary>
    private static JsonObject DatasetEntries(LoadedPipeline loaded)
    {
        var data = loaded.Definition.Data;
        var info = Path.Combine(data.ResolveDatasetDir(loaded.Directory), "dataset_info.json");
        var o = new JsonObject { ["dataset_info"] = info };
        try
        {
            var all = JsonNode.Parse(File.ReadAllText(info)) as JsonObject;
            foreach (var name in data.Dataset) o[name] = all?[name]?.DeepClone();
        }
        catch (Exception e) when (e is IOException or JsonException)
        {
            o["error"] = $"{info}: {e.Message}";
        }
        return o;
    }

    private JsonObject Evaluate(string name, string file)
    {
        var loaded = PipelineLoader.Load(file);
        var status = PipelineRunner.CreateDefault().Status(loaded);
        var evals = new JsonArray();
        foreach (var s in status.Stages.Where(s => s.Kind == StageKind.Eval))
        {
            var e = new JsonObject { ["stage"] = s.Name, ["state"] = s.State.Word(), ["reason"] = s.Reason };
            if (s is { State: StageState.UpToDate, OutputDirectory: { } dir })
            {
                foreach (var f in new[] { "eval_results.json", "predict_results.json" })
                    if (File.Exists(Path.Combine(dir, f))) e[Path.GetFileNameWithoutExtension(f)] = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, f)));
                var predictions = Path.Combine(dir, "generated_predictions.jsonl");
                if (File.Exists(predictions))
                    e["predictions"] = new JsonArray(File.ReadLines(predictions).Take(10).Select(l => JsonNode.Parse(l)).ToArray());
            }
            evals.Add(e);
        }
        var history = new LockHistory(_catalog.Root).Read($"./pipelines/{name}/{LockFile.FileName}", LockFile.PathBeside(file));
        var o = LockHistory.Compare(history);
        o["evals"] = evals;
        return o;
    }

    // ---- chat ----

    private async Task Chat(HttpContext ctx, string name)
    {
        var body = await Body(ctx);
        var file = _catalog.FileOf(name);
        if (file is null || body is null) { await Error(ctx, file is null ? 404 : 400, file is null ? $"no pipeline '{name}'" : "expected a JSON object"); return; }
        ChatModel model;
        ChatAsk ask;
        try
        {
            var loaded = PipelineLoader.Load(file);
            model = ChatModels(loaded, body["model"]?.GetValue<string>() ?? "tuned");
            ask = new ChatAsk(body["prompt"]?.GetValue<string>() ?? "", body["system"]?.GetValue<string>(), body["template"]?.GetValue<string>() ?? loaded.Definition.Data.Template ?? "default",
                body["enable_thinking"]?.GetValue<bool>() ?? false, body["max_new_tokens"]?.GetValue<int>() ?? 256);
            if (ask.Prompt.Length == 0) throw new PipelineUserException("the message is empty");
        }
        catch (Exception e) when (e is PipelineUserException || StatusView.IsUserError(e))
        {
            await Error(ctx, 422, e.Message);
            return;
        }
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        await ctx.Response.WriteAsync($"event: model\ndata: {new JsonObject { ["label"] = model.Label, ["model"] = model.ModelDirectory, ["adapter"] = model.Adapter }.ToJsonString(Json)}\n\n");
        await ctx.Response.Body.FlushAsync();
        // Generation runs on its own thread; pieces reach the response through a channel, so Kestrel's threads never block.
        var pieces = System.Threading.Channels.Channel.CreateUnbounded<string>();
        var ct = ctx.RequestAborted;
        var work = Task.Run(() =>
        {
            try { return _chat.Reply(model, ask, p => pieces.Writer.TryWrite(p), ct); }
            finally { pieces.Writer.TryComplete(); }
        }, CancellationToken.None);
        try
        {
            await foreach (var p in pieces.Reader.ReadAllAsync(ct))
            {
                await ctx.Response.WriteAsync($"event: text\ndata: {JsonSerializer.Serialize(p, Json)}\n\n", ct);
                await ctx.Response.Body.FlushAsync(ct);
            }
            var text = await work;
            await ctx.Response.WriteAsync($"event: done\ndata: {JsonSerializer.Serialize(text, Json)}\n\n", ct);
        }
        catch (OperationCanceledException) { }
        catch (Exception e) when (StatusView.IsUserError(e) || e is ArgumentException or NotSupportedException)
        {
            await ctx.Response.WriteAsync($"event: error\ndata: {JsonSerializer.Serialize(e.Message, Json)}\n\n", CancellationToken.None);
        }
    }

    /// <summary>"base": the download stage's model; "tuned": the merge stage's model, else the base with the train stage's adapter.</summary>
    private static ChatModel ChatModels(LoadedPipeline loaded, string which)
    {
        var status = PipelineRunner.CreateDefault().Status(loaded).Stages;
        StageOutcome? Ready(StageKind kind) => status.LastOrDefault(s => s.Kind == kind && s.State == StageState.UpToDate && s.OutputDirectory is not null);
        var download = Ready(StageKind.Download) ?? throw new PipelineUserException($"{loaded.FilePath}: the download stage is not up to date; run the pipeline first (Run page).");
        if (which == "base") return new ChatModel($"base ({download.Name})", download.OutputDirectory!, null);
        if (which != "tuned") throw new PipelineUserException($"model '{which}': expected base or tuned");
        if (Ready(StageKind.Merge) is { } merge) return new ChatModel($"fine-tuned ({merge.Name})", merge.OutputDirectory!, null);
        if (Ready(StageKind.Train) is { } train && File.Exists(Path.Combine(train.OutputDirectory!, "adapter_config.json")))
            return new ChatModel($"fine-tuned ({train.Name}, adapter)", download.OutputDirectory!, train.OutputDirectory);
        throw new PipelineUserException($"{loaded.FilePath}: no up-to-date merge or train stage to chat with; run the pipeline first (Run page).");
    }
}
