using System.Text;
using FineTune.Models.Hub;

namespace FineTune.Models.Tests.Hub;

public sealed class HubClientTests : IDisposable
{
    private const string Commit = "0123456789abcdef0123456789abcdef01234567";
    private readonly TempDir _dir = new();
    private readonly LoopbackHub _hub = new();
    private readonly byte[] _weights;
    private readonly byte[] _config = Encoding.UTF8.GetBytes("""{"model_type": "qwen3"}""");

    public HubClientTests()
    {
        _weights = new byte[300_000];
        new Random(5).NextBytes(_weights);
        _hub.Add(new LoopbackHub.Repo("acme/tiny", Commit,
            new Dictionary<string, byte[]> { ["config.json"] = _config, ["model.safetensors"] = _weights, ["README.md"] = "# tiny"u8.ToArray() },
            new HashSet<string> { "model.safetensors" }, RequiredToken: null));
        _hub.Add(new LoopbackHub.Repo("acme/gated", Commit,
            new Dictionary<string, byte[]> { ["config.json"] = _config }, new HashSet<string>(), RequiredToken: "hf_secret"));
    }

    public void Dispose()
    {
        _hub.Dispose();
        _dir.Dispose();
    }

    private HubClient Client(string? token = null, bool offline = false) =>
        new(new HubOptions { Endpoint = _hub.Endpoint, Token = token, Offline = offline, RetryDelay = TimeSpan.FromMilliseconds(10), MaxAttempts = 3 });

    private HubStore Store => new(_dir.File("store"));

    [Fact]
    public async Task Resolve_returns_commit_and_files_with_lfs_hashes()
    {
        using var client = Client();
        var snap = await client.ResolveAsync(HubModelReference.Parse("hf://acme/tiny"));
        Assert.Equal(Commit, snap.Commit);
        var weights = snap.Files.Single(f => f.Path == "model.safetensors");
        Assert.Equal(new HubFile("model.safetensors", 300_000, LoopbackHub.Sha256(_weights), null), weights);
        Assert.Equal(LoopbackHub.GitBlobId(_config), snap.Files.Single(f => f.Path == "config.json").BlobId);
        Assert.Contains($"GET /api/models/acme/tiny/revision/main", _hub.Requests);
    }

    [Fact]
    public async Task Download_places_verified_files_and_skips_unwanted_ones()
    {
        using var client = Client();
        var (snap, manifest) = await client.DownloadAsync(HubModelReference.Parse("hf://acme/tiny@main"), Store, _dir.File("out"));
        Assert.Equal(_weights, File.ReadAllBytes(_dir.File("out/model.safetensors")));
        Assert.Equal(_config, File.ReadAllBytes(_dir.File("out/config.json")));
        Assert.False(File.Exists(_dir.File("out/README.md")));
        Assert.Contains($"\"commit\": \"{Commit}\"", File.ReadAllText(manifest));
        Assert.Equal(Commit, snap.Commit);
    }

    [Fact]
    public async Task Connection_dropped_mid_file_resumes_with_range_and_verifies()
    {
        _hub.DropMidFile["model.safetensors"] = 1;
        using var client = Client();
        await client.DownloadAsync(HubModelReference.Parse("hf://acme/tiny"), Store, _dir.File("out"));
        Assert.Equal(_weights, File.ReadAllBytes(_dir.File("out/model.safetensors")));
        var gets = _hub.Requests.Where(r => r.Contains("/resolve/") && r.Contains("model.safetensors")).ToArray();
        Assert.Equal(2, gets.Length);
        Assert.EndsWith("Range=bytes=150000-", gets[1]);
    }

    [Fact]
    public async Task Network_failure_keeps_the_partial_file_and_the_next_run_resumes()
    {
        _hub.DropMidFile["model.safetensors"] = 3; // every attempt of the first run breaks
        var partial = HubStore.IncompletePath(Store.BlobPath("acme/tiny", Commit, new HubFile("model.safetensors", 300_000, LoopbackHub.Sha256(_weights), null)));
        using (var client = Client())
        {
            var e = await Assert.ThrowsAsync<HubException>(() => client.DownloadAsync(HubModelReference.Parse("hf://acme/tiny"), Store, _dir.File("out")));
            Assert.Equal(HubErrorKind.Network, e.Kind);
            Assert.Contains($"bytes are kept in {partial} and the next run resumes from there", e.Message);
        }
        Assert.True(new FileInfo(partial).Length >= 150_000);
        using (var client = Client())
            await client.DownloadAsync(HubModelReference.Parse("hf://acme/tiny"), Store, _dir.File("out"));
        Assert.Equal(_weights, File.ReadAllBytes(_dir.File("out/model.safetensors")));
        Assert.False(File.Exists(partial));
    }

    [Fact]
    public async Task Wrong_hash_is_rejected_and_the_file_removed()
    {
        _hub.Corrupt["model.safetensors"] = true;
        using var client = Client();
        var e = await Assert.ThrowsAsync<HubException>(() => client.DownloadAsync(HubModelReference.Parse("hf://acme/tiny"), Store, _dir.File("out")));
        Assert.Equal(HubErrorKind.Integrity, e.Kind);
        Assert.StartsWith("hf://acme/tiny: model.safetensors: sha256 is ", e.Message);
        Assert.Contains($"but the hub lists {LoopbackHub.Sha256(_weights)}; the file was removed", e.Message);
        var blobs = Directory.GetFiles(Path.Combine(Store.RepoDirectory("acme/tiny"), "blobs"));
        Assert.DoesNotContain(blobs, b => Path.GetFileName(b).StartsWith(LoopbackHub.Sha256(_weights), StringComparison.Ordinal));
        Assert.False(File.Exists(_dir.File("out/model.safetensors")));
    }

    [Fact]
    public async Task Gated_repo_without_token_is_401_with_what_to_do()
    {
        using var client = Client();
        var e = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(HubModelReference.Parse("hf://acme/gated")));
        Assert.Equal(HubErrorKind.Gated, e.Kind);
        Assert.Equal($"hf://acme/gated@main: 401 — the repository is gated; accept its licence on {_hub.Endpoint}/acme/gated with your account and set HF_TOKEN to a read token of that account (HF_TOKEN is not set).", e.Message);
    }

    [Fact]
    public async Task Token_is_sent_as_bearer_and_opens_the_gated_repo()
    {
        using var client = Client(token: "hf_secret");
        await client.DownloadAsync(HubModelReference.Parse("hf://acme/gated"), Store, _dir.File("out"));
        Assert.Equal(_config, File.ReadAllBytes(_dir.File("out/config.json")));
        Assert.All(_hub.Requests, r => Assert.EndsWith("Auth=Bearer hf_secret", r));
    }

    [Fact]
    public async Task Unknown_repo_is_401_not_found_or_private()
    {
        using var client = Client();
        var e = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(HubModelReference.Parse("hf://acme/nope")));
        Assert.Equal(HubErrorKind.Unauthorized, e.Kind);
        Assert.StartsWith("hf://acme/nope@main: 401 — the repository does not exist or needs authentication (HF_TOKEN is not set)", e.Message);
    }

    [Fact]
    public async Task Unknown_revision_is_404()
    {
        using var client = Client();
        var e = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(HubModelReference.Parse("hf://acme/tiny@v9")));
        Assert.Equal(HubErrorKind.NotFound, e.Kind);
        Assert.Equal("hf://acme/tiny@v9: 404 — revision \"v9\" not found; use a branch, tag or commit that exists in acme/tiny.", e.Message);
    }

    [Fact]
    public async Task Offline_uses_the_earlier_download_without_requests()
    {
        using (var online = Client())
            await online.DownloadAsync(HubModelReference.Parse("hf://acme/tiny"), Store, _dir.File("a"));
        int before = _hub.Requests.Count;
        using var offline = Client(offline: true);
        var (snap, _) = await offline.DownloadAsync(HubModelReference.Parse("hf://acme/tiny"), Store, _dir.File("b"));
        Assert.Equal(before, _hub.Requests.Count);
        Assert.Equal(Commit, snap.Commit);
        Assert.Equal(_weights, File.ReadAllBytes(_dir.File("b/model.safetensors")));
    }

    [Fact]
    public async Task Offline_without_earlier_download_says_to_go_online()
    {
        using var offline = Client(offline: true);
        var e = await Assert.ThrowsAsync<HubException>(() => offline.DownloadAsync(HubModelReference.Parse("hf://acme/tiny"), Store, _dir.File("b")));
        Assert.Equal(HubErrorKind.Offline, e.Kind);
        Assert.Equal($"hf://acme/tiny@main: HF_HUB_OFFLINE is set and this model was never downloaded here (nothing in {Store.RepoDirectory("acme/tiny")}); unset HF_HUB_OFFLINE and run once with network access.", e.Message);
    }

    [Fact]
    public async Task Unreachable_endpoint_is_a_network_error()
    {
        var endpoint = _hub.Endpoint;
        _hub.Dispose();
        using var client = new HubClient(new HubOptions { Endpoint = endpoint });
        var e = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(HubModelReference.Parse("hf://acme/tiny")));
        Assert.Equal(HubErrorKind.Network, e.Kind);
        Assert.StartsWith($"hf://acme/tiny@main: cannot reach {endpoint} (", e.Message);
    }

    [Fact]
    public void Environment_sets_endpoint_token_and_offline()
    {
        var env = new Dictionary<string, string> { ["HF_ENDPOINT"] = "https://mirror.example/", ["HF_TOKEN"] = "hf_x", ["HF_HUB_OFFLINE"] = "1" };
        var o = HubOptions.FromEnvironment(k => env.GetValueOrDefault(k));
        Assert.Equal("https://mirror.example", o.Endpoint);
        Assert.Equal("hf_x", o.Token);
        Assert.True(o.Offline);
        Assert.Equal(HubOptions.DefaultEndpoint, HubOptions.FromEnvironment(_ => null).Endpoint);
    }

    [Theory]
    [InlineData("hf://Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B", "main")]
    [InlineData("hf://meta-llama/Llama-3.2-1B@v1.0", "meta-llama/Llama-3.2-1B", "v1.0")]
    public void Reference_parses_repo_and_revision(string source, string repo, string revision)
    {
        var r = HubModelReference.Parse(source);
        Assert.Equal(repo, r.RepoId);
        Assert.Equal(revision, r.Revision);
    }

    [Fact]
    public void Default_patterns_take_model_files_at_top_level_only()
    {
        var m = GlobPattern.Matcher(null);
        Assert.True(m("model-00001-of-00002.safetensors"));
        Assert.True(m("tokenizer.json"));
        Assert.True(m("merges.txt"));
        Assert.False(m("pytorch_model.bin"));
        Assert.False(m("original/params.json"));
        Assert.True(GlobPattern.Matcher(["**/*.json"])("original/params.json"));
    }
}
