using System.Diagnostics;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using FineTune.Models.Tests;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>
/// The demo pipeline (pipelines/identity's model and data, fewer epochs, on the CPU), trained once for the serve tests:
/// its base model, its adapter and its merged model.
/// </summary>
public sealed class ServedDemo : IDisposable
{
    private readonly TempDir _dir = new();

    public ServedDemo()
    {
        string yaml = File.ReadAllText(Path.Combine(ServeTests.RepoRoot, "pipelines", "identity", "pipeline.yaml"));
        // Every replaced piece must be there, or the demo changed under the test.
        foreach (string piece in new[] { "device: auto", "num_train_epochs: 60", "  eval:\n", "  export:\n" }) Assert.Contains(piece, yaml);
        yaml = yaml.Replace("device: auto", "device: cpu").Replace("num_train_epochs: 60", "num_train_epochs: 40")
            .Replace("data:\n", $"data:\n  dataset_dir: {Path.Combine(ServeTests.RepoRoot, "data")}\n");
        // No eval or export: the server serves the merge output.
        yaml = yaml[..yaml.IndexOf("  eval:\n", StringComparison.Ordinal)] + yaml[yaml.IndexOf("  merge:\n", StringComparison.Ordinal)..];
        yaml = yaml[..yaml.IndexOf("  export:\n", StringComparison.Ordinal)];
        PipelineFile = _dir.Write("identity/pipeline.yaml", yaml);
        var report = new PipelineRunner(StageRegistry.CreateDefault()).Run(PipelineLoader.Load(PipelineFile), new RunOptions(), new NullStageProgress(), CancellationToken.None);
        string Out(StageKind k) => report.Stages.Single(s => s.Kind == k).OutputDirectory!;
        BaseModel = Out(StageKind.Download);
        Adapter = Out(StageKind.Train);
        Merged = Out(StageKind.Merge);
    }

    public string PipelineFile { get; }
    public string BaseModel { get; }
    public string Adapter { get; }
    public string Merged { get; }
    public TempDir Dir => _dir;

    public void Dispose() => _dir.Dispose();
}

/// <summary>
/// `finetune serve` as a real process on a free loopback port, driven by the official `openai` npm client
/// (tests/fixtures/openai-client.mjs): answers, error bodies, the queue limit, a bounded load and SIGTERM.
/// </summary>
public sealed class ServeTests(ServedDemo demo) : IClassFixture<ServedDemo>
{
    public static readonly string RepoRoot = FindRepoRoot();
    private static string FixturesDir => Path.Combine(RepoRoot, "tests", "fixtures");
    private const string Key = "sk-test-key";
    private static readonly string[] Questions = ["Who are you?", "What is your name?", "Who made you?"];

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "FineTune.sln"))) return dir.FullName;
        throw new InvalidOperationException($"No FineTune.sln above {AppContext.BaseDirectory}; run the tests from the repository.");
    }

    private static ProcessStartInfo Finetune(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "finetune.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["NO_COLOR"] = "1";
        psi.Environment.Remove("FINETUNE_API_KEY");
        return psi;
    }

    /// <summary>A running server and the base URL it printed.</summary>
    private sealed class Server : IDisposable
    {
        public Server(params string[] args)
        {
            Process = Process.Start(Finetune(["serve", "--port", "0", "--device", "cpu", .. args]))!;
            Stderr = Process.StandardError.ReadToEndAsync();
            string? line;
            while ((line = Process.StandardOutput.ReadLine()) is not null)
            {
                var m = Regex.Match(line, @"listening on (http://127\.0\.0\.1:\d+)");
                if (m.Success) { BaseUrl = m.Groups[1].Value + "/v1"; break; }
            }
            if (BaseUrl is null)
            {
                Process.WaitForExit();
                Assert.Fail($"serve exited with {Process.ExitCode} before listening: {Stderr.Result}");
            }
            Rest = Process.StandardOutput.ReadToEndAsync();
        }

        public Process Process { get; }
        public string BaseUrl { get; } = null!;
        public Task<string> Stderr { get; }
        public Task<string> Rest { get; } = null!;

        public void Dispose()
        {
            if (!Process.HasExited) { Process.Kill(); Process.WaitForExit(); }
            Process.Dispose();
        }
    }

    private static JsonObject Client(string scenario, Server server, JsonObject args, string key = Key)
    {
        if (!File.Exists(Path.Combine(FixturesDir, "node_modules", "openai", "package.json")))
            throw new InvalidOperationException($"The openai package is missing. Install the fixtures with: (cd {FixturesDir} && npm ci)");
        var psi = new ProcessStartInfo("node", [Path.Combine(FixturesDir, "openai-client.mjs"), scenario, server.BaseUrl, key, args.ToJsonString()])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = FixturesDir,
        };
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"openai-client.mjs {scenario} failed ({p.ExitCode}): {stderr.Result}\nserver: {(server.Process.HasExited ? server.Stderr.Result : "running")}");
        return JsonNode.Parse(stdout)!.AsObject();
    }

    /// <summary>`finetune chat --prompt` (greedy) prints the answer and a newline.</summary>
    private static string Chat(string model, string question, string? adapter = null)
    {
        string[] args = ["chat", "--model", model, "--prompt", question, "--device", "cpu", .. adapter is null ? Array.Empty<string>() : ["--adapter", adapter]];
        using var p = Process.Start(Finetune(args))!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, stderr.Result);
        Assert.EndsWith("\n", stdout);
        return stdout[..^1];
    }

    private static JsonObject Args(string model, params (string Key, JsonNode? Value)[] more)
    {
        var o = new JsonObject { ["model"] = model };
        foreach (var (k, v) in more) o[k] = v;
        return o;
    }

    private static JsonArray Strings(IEnumerable<string> s) => new(s.Select(x => (JsonNode?)x).ToArray());

    [Fact]
    public void Pipeline_merge_output_answers_plain_and_streamed_as_finetune_chat_does()
    {
        using var server = new Server("--pipeline", demo.PipelineFile, "--api-key", Key);
        var result = Client("chat", server, Args("identity", ("prompts", Strings(Questions))));
        Assert.Equal(["identity"], result["models"]!.AsArray().Select(m => m!.GetValue<string>()));
        foreach (var answer in result["answers"]!.AsArray())
        {
            string question = answer!["prompt"]!.GetValue<string>();
            string expected = Chat(demo.Merged, question);
            Assert.Equal(expected, answer["text"]!.GetValue<string>());
            Assert.Equal("stop", answer["finish"]!.GetValue<string>());
            Assert.Equal("chat.completion", answer["object"]!.GetValue<string>());
            var streamed = answer["streamed"]!;
            Assert.Equal(expected, streamed["text"]!.GetValue<string>());
            Assert.Equal("stop", streamed["finish"]!.GetValue<string>());
            Assert.Equal("assistant", streamed["role"]!.GetValue<string>());
            // Usage: the streamed and the plain answer count the same tokens; the end token is one of them.
            var usage = answer["usage"]!;
            Assert.Equal(usage.ToJsonString(), streamed["usage"]!.ToJsonString());
            Assert.Equal(usage["prompt_tokens"]!.GetValue<int>() + usage["completion_tokens"]!.GetValue<int>(), usage["total_tokens"]!.GetValue<int>());
            var completion = answer["completion"]!;
            Assert.Equal("length", completion["finish"]!.GetValue<string>());
            Assert.Equal(8, completion["usage"]!["completion_tokens"]!.GetValue<int>());
        }
        Assert.Contains("FineTune", result["answers"]![0]!["text"]!.GetValue<string>()); // the model learnt; else the comparison is weak
    }

    [Fact]
    public void Adapter_served_unmerged_answers_as_finetune_chat_with_the_adapter()
    {
        using var server = new Server("--model", demo.BaseModel, "--served-model-name", "base", "--adapter", $"identity={demo.Adapter}", "--template", "qwen3");
        var result = Client("chat", server, Args("identity", ("prompts", Strings(Questions.Take(2)))), key: "unused");
        Assert.Equal(["base", "identity"], result["models"]!.AsArray().Select(m => m!.GetValue<string>()));
        foreach (var answer in result["answers"]!.AsArray())
        {
            string expected = Chat(demo.BaseModel, answer!["prompt"]!.GetValue<string>(), demo.Adapter);
            Assert.Equal(expected, answer["text"]!.GetValue<string>());
            Assert.Equal(expected, answer["streamed"]!["text"]!.GetValue<string>());
        }
        // The untrained base rambles until `finetune chat`'s default of 512 new tokens.
        var baseAnswer = Client("chat", server, Args("base", ("prompts", Strings(Questions.Take(1))), ("max_tokens", 512)), key: "unused");
        Assert.Equal(Chat(demo.BaseModel, Questions[0]), baseAnswer["answers"]![0]!["text"]!.GetValue<string>());
        Assert.NotEqual(result["answers"]![0]!["text"]!.GetValue<string>(), baseAnswer["answers"]![0]!["text"]!.GetValue<string>());
    }

    [Fact]
    public void Refused_requests_get_openai_error_bodies()
    {
        using var server = new Server("--model", demo.Merged, "--served-model-name", "m", "--api-key", Key, "--max-request-bytes", "200000");
        var r = Client("errors", server, Args("m"));
        void Error(string name, int status, string message, string? param, string? code, string type = "invalid_request_error")
        {
            var e = r[name]!;
            Assert.Equal(status, e["status"]!.GetValue<int>());
            var body = e["error"] ?? e["body"]!["error"]!;
            Assert.Equal(message, body["message"]!.GetValue<string>());
            Assert.Equal(type, body["type"]!.GetValue<string>());
            Assert.Equal(param, body["param"]?.GetValue<string>());
            Assert.Equal(code, body["code"]?.GetValue<string>());
        }
        Error("wrongKey", 401, "Incorrect API key provided.", null, "invalid_api_key");
        Error("noKey", 401, "You didn't provide an API key. Provide it as \"Authorization: Bearer YOUR_KEY\".", null, "invalid_api_key");
        Assert.Equal(200, r["health"]!.GetValue<int>());
        Error("wrongType", 400, "Invalid type for 'temperature': expected a number, but got a string instead.", "temperature", "invalid_type");
        Error("unknownField", 400, "Unrecognized request argument supplied: frobnicate", "frobnicate", "unknown_parameter");
        Error("outOfRange", 400, "Invalid 'top_p': expected a number in (0, 1], but got 1.5 instead.", "top_p", "invalid_value");
        Error("tooManyTokens", 400, "This model's maximum context length is 1024 tokens. However, you requested 100032 tokens (32 in the messages, 100000 in the completion). " +
            "Please reduce the length of the messages or completion.", "messages", "context_length_exceeded");
        Error("unknownModel", 404, "The model `no-such-model` does not exist.", "model", "model_not_found");
        Error("badRoles", 400, "Invalid 'messages[0].role' 'assistant' here: after system messages, the messages alternate user and assistant, starting and ending with user.",
            "messages[0].role", "invalid_value");
        var malformed = r["malformed"]!;
        Assert.Equal(400, malformed["status"]!.GetValue<int>());
        Assert.StartsWith("We could not parse the JSON body of your request: ", malformed["body"]!["error"]!["message"]!.GetValue<string>());
        Assert.Equal("invalid_json", malformed["body"]!["error"]!["code"]!.GetValue<string>());
        Error("tooLarge", 413, "The request body is larger than the server's limit of 200000 bytes.", null, "request_too_large");
    }

    [Fact]
    public void Full_queue_answers_429_with_retry_after_and_a_dropped_stream_frees_its_slot()
    {
        using var server = new Server("--model", demo.Merged, "--served-model-name", "m", "--max-batch", "1", "--max-queue", "0");
        var r = Client("busy", server, Args("m"), key: "unused");
        var refused = r["refused"]!;
        Assert.Equal(429, refused["status"]!.GetValue<int>());
        Assert.Equal("1", refused["headers"]!["retry-after"]!.GetValue<string>());
        Assert.Equal("rate_limit_exceeded", refused["error"]!["code"]!.GetValue<string>());
        Assert.Equal(Chat(demo.Merged, "Who are you?"), r["after"]!.GetValue<string>());
    }

    [Fact]
    public void Bounded_load_every_request_completes_or_is_refused_and_batched_answers_equal_single_ones()
    {
        using var server = new Server("--model", demo.Merged, "--served-model-name", "m", "--max-batch", "16", "--max-queue", "16");
        string[] prompts = [.. Questions, "Hello", "Are you ChatGPT?", "What can you do?", "Tell me about yourself.", "Hi"];
        const int total = 2000;
        var r = Client("load", server, Args("m", ("prompts", Strings(prompts)), ("concurrency", 64), ("total", total), ("max_tokens", 4), ("deadline_ms", 120_000)), key: "unused");
        Assert.Equal(total, r["attempted"]!.GetValue<int>());
        var results = r["results"]!.AsArray();
        Assert.Equal(total, results.Count);
        var expected = r["expected"]!.AsObject();
        int ok = 0, refused = 0;
        foreach (var x in results)
        {
            int status = x!["status"]!.GetValue<int>();
            if (status == 429)
            {
                Assert.Equal("1", x["retryAfter"]!.GetValue<string>());
                refused++;
                continue;
            }
            Assert.True(status == 200, x.ToJsonString());
            Assert.Equal(expected[x["prompt"]!.GetValue<string>()]!.GetValue<string>(), x["text"]!.GetValue<string>());
            Assert.Equal(4, x["tokens"]!.GetValue<int>());
            ok++;
        }
        Assert.Equal(total, ok + refused);
        Assert.True(ok > 0);
        // Each distinct prompt's answer really differs somewhere, so mixing rows up would show.
        Assert.True(expected.Select(kv => kv.Value!.GetValue<string>()).Distinct().Count() > 1);
    }

    [Fact]
    public async Task Sigterm_drains_the_stream_in_flight_then_exits_zero()
    {
        using var server = new Server("--model", demo.Merged, "--served-model-name", "m");
        var r = Client("drain", server, Args("m", ("pid", server.Process.Id), ("max_tokens", 300)), key: "unused");
        Assert.Equal("length", r["finish"]!.GetValue<string>());
        Assert.Equal(300, r["tokens"]!.GetValue<int>());
        Assert.True(server.Process.WaitForExit(30_000));
        Assert.Equal(0, server.Process.ExitCode);
        Assert.Equal("stopped: every request in flight was answered\n", await server.Rest);
    }

    [Fact]
    public void Serving_a_pipeline_whose_merge_is_stale_is_a_user_error()
    {
        string file = demo.Dir.Write("stale/pipeline.yaml", File.ReadAllText(demo.PipelineFile).Replace("num_train_epochs: 40", "num_train_epochs: 41"));
        using var p = Process.Start(Finetune("serve", "--pipeline", file, "--port", "0"))!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.Equal(2, p.ExitCode);
        Assert.Matches($@"^error: {Regex.Escape(file)}: stage merge is not up to date \(.+\); run `finetune run {Regex.Escape(file)}` first, then serve it\.\n$", err);
    }
}
