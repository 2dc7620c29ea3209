using System.Net;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using FineTune.Pipeline;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Board.Tests;

/// <summary>The board's HTTP API on real Kestrel (loopback), over a temp copy of the demo; nothing here trains.</summary>
public sealed class BoardHttpTests
{
    [Fact]
    public async Task Pipelines_GiveEachStageTheRunnersStateAndWhy()
    {
        using var demo = new DemoRoot(y => y.Replace("    seed: 0\n", "    seed: 1\n"));
        var page = await demo.Get("/api/pipelines/identity");
        var stages = page["stages"]!.AsArray().Select(s => s!.AsObject()).ToArray();
        Assert.Equal(["download", "register", "split", "train", "eval", "merge", "export"], stages.Select(s => s["name"]!.GetValue<string>()));
        // The reasons are `finetune status`'s: the committed lock says seed 0, the file now says 1.
        var status = PipelineRunner.CreateDefault().Status(PipelineLoader.Load(demo.PipelineFile));
        Assert.Equal(status.Stages.Select(s => s.Reason), stages.Select(s => s["reason"]!.GetValue<string>()));
        Assert.Equal("model.scratch.seed: 0 → 1", stages[0]["reason"]!.GetValue<string>());
        Assert.Equal("stale", stages[0]["state"]!.GetValue<string>());
        Assert.Equal("no cached output", stages[1]["reason"]!.GetValue<string>());
        Assert.Equal(["download", "split"], stages[3]["reads"]!.AsArray().Select(r => r!.GetValue<string>()));
    }

    [Fact]
    public async Task Validate_LocatesTheErrorAndSuggestsTheKey()
    {
        using var demo = new DemoRoot();
        var yaml = File.ReadAllText(demo.PipelineFile).Replace("    learning_rate: 1.0e-2", "    learning_rat: 1.0e-2");
        var (status, body) = await demo.Post("/api/pipelines/identity/validate", new { yaml });
        Assert.Equal(200, status);
        var error = Assert.Single(body["errors"]!.AsArray())!;
        Assert.Equal(45, error["line"]!.GetValue<int>());
        Assert.Equal(5, error["column"]!.GetValue<int>());
        Assert.Equal("unknown key 'learning_rat' in stages.train; did you mean 'learning_rate'?", error["message"]!.GetValue<string>());
    }

    [Fact]
    public async Task Save_WritesTheTextAsTypedOnlyWhenValidAndNotOverAnotherEdit()
    {
        using var demo = new DemoRoot();
        var before = File.ReadAllBytes(demo.PipelineFile);
        var loaded = await demo.Get("/api/pipelines/identity/yaml");
        var sha = loaded["sha256"]!.GetValue<string>();
        var text = loaded["yaml"]!.GetValue<string>();

        var (bad, badBody) = await demo.Post("/api/pipelines/identity/save", new { yaml = text.Replace("lora_rank: 16", "lora_rank: -1"), sha256 = sha });
        Assert.Equal(422, bad);
        Assert.Contains("lora_rank", badBody["errors"]![0]!["path"]!.GetValue<string>());
        Assert.Equal(before, File.ReadAllBytes(demo.PipelineFile));

        var edited = text.Replace("    lora_rank: 16\n", "    lora_rank: 8   # smaller: a comment the save keeps\n");
        var (ok, okBody) = await demo.Post("/api/pipelines/identity/save", new { yaml = edited, sha256 = sha });
        Assert.Equal(200, ok);
        Assert.Equal(edited, File.ReadAllText(demo.PipelineFile));
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(demo.PipelineFile))), okBody["sha256"]!.GetValue<string>());
        Assert.Empty(Directory.EnumerateFiles(Path.GetDirectoryName(demo.PipelineFile)!, "*.tmp"));

        // Saving again from the text loaded before that save would undo it: refused.
        var (stale, staleBody) = await demo.Post("/api/pipelines/identity/save", new { yaml = text, sha256 = sha });
        Assert.Equal(409, stale);
        Assert.StartsWith("not saved: ", staleBody["error"]!.GetValue<string>());
        Assert.Equal(edited, File.ReadAllText(demo.PipelineFile));
    }

    [Fact]
    public async Task Posts_WithoutTheCsrfToken_AreRefusedAndChangeNothing()
    {
        using var demo = new DemoRoot();
        using var bare = new HttpClient { BaseAddress = new Uri(demo.Address) };
        var before = File.ReadAllText(demo.PipelineFile);
        using var r = await bare.PostAsJsonAsync("/api/pipelines/identity/save", new { yaml = "name: x\n" });
        Assert.Equal(HttpStatusCode.Forbidden, r.StatusCode);
        using var run = await bare.PostAsJsonAsync("/api/runs", new { pipeline = "identity" });
        Assert.Equal(HttpStatusCode.Forbidden, run.StatusCode);
        Assert.Equal(before, File.ReadAllText(demo.PipelineFile));
        Assert.Empty((await demo.Get("/api/runs"))["runs"]!.AsArray());
    }

    [Fact]
    public async Task LoopbackBoard_AnswersOnlyToLoopbackHostNames()
    {
        using var demo = new DemoRoot();
        using var request = new HttpRequestMessage(HttpMethod.Get, "/api/session");
        request.Headers.Host = "evil.example:7860"; // a DNS-rebinding page's origin
        using var r = await demo.Client.SendAsync(request);
        Assert.Equal((HttpStatusCode)421, r.StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await demo.Client.GetAsync("/api/session")).StatusCode);
    }

    [Fact]
    public void OtherHosts_NeedAToken()
    {
        using var dir = new FineTune.Models.Tests.TempDir();
        var e = Assert.Throws<PipelineUserException>(() => new BoardOptions { Root = dir.Path, Host = "0.0.0.0" }.Check());
        Assert.StartsWith("--host 0.0.0.0: the board starts and stops runs and edits pipelines, so any host but 127.0.0.1 needs a token", e.Message);
        new BoardOptions { Root = dir.Path, Host = "0.0.0.0", Token = "t" }.Check();
        new BoardOptions { Root = dir.Path, Host = "::1" }.Check();
    }

    [Fact]
    public async Task Token_IsNeededOnEveryRequest_AndMovesFromTheAddressToACookie()
    {
        using var demo = new DemoRoot(token: "s3cret");
        using var bare = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false, UseCookies = false }) { BaseAddress = new Uri(demo.Address) };
        Assert.Equal(HttpStatusCode.Unauthorized, (await bare.GetAsync("/")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await bare.GetAsync("/api/pipelines")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await bare.GetAsync("/?token=wrong")).StatusCode);
        using var first = await bare.GetAsync("/?token=s3cret");
        Assert.Equal(HttpStatusCode.Redirect, first.StatusCode);
        var cookie = Assert.Single(first.Headers.GetValues("Set-Cookie"));
        Assert.StartsWith($"{BoardServer.TokenCookie}=s3cret; path=/; samesite=strict; httponly", cookie, StringComparison.OrdinalIgnoreCase);
        using var withCookie = new HttpRequestMessage(HttpMethod.Get, "/api/pipelines");
        withCookie.Headers.Add("Cookie", $"{BoardServer.TokenCookie}=s3cret");
        Assert.Equal(HttpStatusCode.OK, (await bare.SendAsync(withCookie)).StatusCode);
        Assert.Equal("identity", (await demo.Get("/api/pipelines"))["pipelines"]![0]!["name"]!.GetValue<string>()); // Bearer
    }

    [Fact]
    public async Task Artifacts_ListTheCachedFilesAndDownloadNothingElse()
    {
        using var demo = new DemoRoot();
        var run = await demo.RunToEnd(new { pipeline = "identity", stage = "register" });
        Assert.Equal("succeeded", run["state"]!.GetValue<string>());
        var list = await demo.Get("/api/pipelines/identity/artifacts");
        var register = Assert.Single(list["stages"]!.AsArray())!;
        Assert.Equal("register", register["stage"]!.GetValue<string>());
        foreach (var f in register["files"]!.AsArray())
        {
            var path = f!["path"]!.GetValue<string>();
            var bytes = await demo.Client.GetByteArrayAsync($"/api/pipelines/identity/artifacts/register/file?path={Uri.EscapeDataString(path)}");
            Assert.Equal(f["size"]!.GetValue<long>(), bytes.Length);
            Assert.Equal(f["sha256"]!.GetValue<string>(), Convert.ToHexStringLower(SHA256.HashData(bytes)));
        }
        // Paths out of the output (its manifest, the hash index, the pipeline, the system) and made-up stages: 404.
        foreach (var (stage, path) in new[] { ("register", "../manifest.json"), ("register", "../../../index.json"), ("register", "../../../../pipeline.yaml"),
                     ("register", "/etc/passwd"), ("register", "..%2F..%2F..%2F..%2Fpipeline.yaml"), ("..", "pipeline.yaml"), ("download", "config.json"), ("register", "") })
        {
            using var r = await demo.Client.GetAsync($"/api/pipelines/identity/artifacts/{Uri.EscapeDataString(stage)}/file?path={Uri.EscapeDataString(path)}");
            Assert.True(r.StatusCode == HttpStatusCode.NotFound, $"{stage} {path}: {r.StatusCode}");
        }
        using var other = await demo.Client.GetAsync("/api/pipelines/..%2F..%2Fetc/artifacts");
        Assert.Equal(HttpStatusCode.NotFound, other.StatusCode);
    }

    [Fact]
    public async Task Data_ShowsTrainedAndMaskedTokens_AsDataPreviewDoes()
    {
        using var demo = new DemoRoot();
        var data = await demo.Get("/api/pipelines/identity/data?n=2");
        Assert.Equal("qwen3", data["template"]!.GetValue<string>());
        Assert.Equal("identity.json", data["datasets"]!["identity"]!["file_name"]!.GetValue<string>());
        var expected = DataPreview.Samples(DataPreview.Prepare(PipelineLoader.Load(demo.PipelineFile), CancellationToken.None), null, 2);
        var samples = data["samples"]!.AsArray();
        Assert.Equal(expected.Count, samples.Count);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.Equal(expected[i].Source, samples[i]!["source"]!.GetValue<string>());
            Assert.Equal(expected[i].Trained, samples[i]!["trained"]!.GetValue<int>());
            Assert.Equal(expected[i].Segments.Select(s => (s.Text, s.Trained)),
                samples[i]!["segments"]!.AsArray().Select(s => (s!["text"]!.GetValue<string>(), s["trained"]!.GetValue<bool>())));
        }
        // The answer is trained, the prompt masked.
        var first = samples[0]!["segments"]!.AsArray();
        Assert.Contains(first, s => s!["trained"]!.GetValue<bool>() && s["text"]!.GetValue<string>().Contains("FineTune Assistant"));
        Assert.Contains(first, s => !s!["trained"]!.GetValue<bool>() && s["text"]!.GetValue<string>().Contains("<|im_start|>user"));
    }

    [Fact]
    public async Task Data_ShowsABadRecordsLocatedError()
    {
        using var demo = new DemoRoot();
        var file = Path.Combine(demo.Root, "data", "identity.json");
        var records = JsonNode.Parse(File.ReadAllText(file))!.AsArray();
        records[2]!["output"] = 42;
        File.WriteAllText(file, records.ToJsonString());
        var data = await demo.Get("/api/pipelines/identity/data");
        Assert.Null(data["samples"]);
        Assert.Equal(Expected(), data["error"]!.GetValue<string>());
        Assert.Contains($"{file}: record 3 (line 1), field 'output': expected a string, found a number", data["error"]!.GetValue<string>());

        string Expected()
        {
            try
            {
                DataPreview.Prepare(PipelineLoader.Load(demo.PipelineFile), CancellationToken.None);
                return "no error";
            }
            catch (PipelineUserException e) { return e.Message; }
        }
    }

    [Fact]
    public async Task Compare_ReadsMetricsAndChangedParametersFromTheLockHistory()
    {
        using var demo = new DemoRoot();
        var text = File.ReadAllText(demo.LockFile);
        Assert.Contains("\"learning_rate\": 0.01,", text);
        File.WriteAllText(demo.LockFile, text.Replace("\"learning_rate\": 0.01,", "\"learning_rate\": 0.005,"));
        demo.Commit("learning rate 0.005");
        var page = await demo.Get("/api/pipelines/identity/evaluate");
        var commits = page["commits"]!.AsArray();
        Assert.Equal(3, commits.Count); // the working tree, then the two commits, newest first
        Assert.Equal("working tree", commits[0]!["title"]!.GetValue<string>());
        Assert.EndsWith(" learning rate 0.005", commits[1]!["title"]!.GetValue<string>());
        Assert.Equal(["stages.train.learning_rate: 0.01 → 0.005"], commits[1]!["stages"]!["train"]!["changed"]!.AsArray().Select(c => c!.GetValue<string>()));
        Assert.Empty(commits[1]!["stages"]!["eval"]!["changed"]!.AsArray());
        var locked = FineTune.Pipeline.Engine.LockFile.Read(demo.LockFile).Stages["train"].Metrics;
        Assert.Equal(locked["train_loss"], commits[2]!["stages"]!["train"]!["metrics"]!["train_loss"]!.GetValue<double>());
    }
}

/// <summary>Run requests the board refuses before queueing them.</summary>
public sealed class BoardRunRequestTests
{
    [Fact]
    public async Task ARunOfAPipelineWithErrors_IsRefusedWithTheLocatedErrors()
    {
        using var demo = new DemoRoot(y => y.Replace("    lora_rank: 16", "    lora_rnk: 16"));
        var (status, body) = await demo.Post("/api/runs", new { pipeline = "identity" });
        Assert.Equal(422, status);
        Assert.Equal("pipeline.yaml:39:5: error: $.stages.train.lora_rnk: unknown key 'lora_rnk' in stages.train; did you mean 'lora_rank'?",
            body["errors"]![0]!["text"]!.GetValue<string>());
        File.WriteAllText(demo.PipelineFile, File.ReadAllText(demo.PipelineFile).Replace("    lora_rnk: 16", "    lora_rank: 16"));
        var (stageStatus, stageBody) = await demo.Post("/api/runs", new { pipeline = "identity", stage = "trian" });
        Assert.Equal(422, stageStatus);
        Assert.EndsWith("did you mean 'train'?", stageBody["error"]!.GetValue<string>());
        Assert.Empty((await demo.Get("/api/runs"))["runs"]!.AsArray());
    }
}
