using System.Text;
using FineTune.Models.Hub;

namespace FineTune.Models.Tests.Hub;

/// <summary>What the client must not trust: blobs changed on disk, malformed listings, paths that leave the output, cut transfers.</summary>
public sealed class HubTrustTests : IDisposable
{
    private const string Commit = "0123456789abcdef0123456789abcdef01234567";
    private readonly TempDir _dir = new();
    private readonly LoopbackHub _hub = new();
    private readonly byte[] _weights;
    private readonly byte[] _config = Encoding.UTF8.GetBytes("""{"model_type": "qwen3"}""");

    public HubTrustTests()
    {
        _weights = new byte[300_000];
        new Random(7).NextBytes(_weights);
        _hub.Add(new LoopbackHub.Repo("acme/tiny", Commit,
            new Dictionary<string, byte[]> { ["config.json"] = _config, ["model.safetensors"] = _weights },
            new HashSet<string> { "model.safetensors" }, RequiredToken: null));
    }

    public void Dispose()
    {
        _hub.Dispose();
        _dir.Dispose();
    }

    private static HubModelReference Tiny => HubModelReference.Parse("hf://acme/tiny");

    private string ListingUrl(string repo = "acme/tiny") => $"{_hub.Endpoint}/api/models/{repo}/revision/main?blobs=true";

    private HubClient Client(bool offline = false) =>
        new(new HubOptions { Endpoint = _hub.Endpoint, Offline = offline, RetryDelay = TimeSpan.FromMilliseconds(10), MaxAttempts = 3 });

    private HubStore Store => new(_dir.File("store"));

    private int Gets(string file) => _hub.Requests.Count(r => r.StartsWith("GET ", StringComparison.Ordinal) && r.Contains($"/resolve/{Commit}/{file}"));

    private static void FlipFirstByte(string path)
    {
        using var s = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        int b = s.ReadByte();
        s.Position = 0;
        s.WriteByte((byte)(b ^ 0xFF)); // in place: the same inode, as an editor that writes through a hard link
    }

    [Theory]
    [InlineData("model.safetensors")] // an LFS file: checked against the listed sha256
    [InlineData("config.json")]       // a git file: checked against the listed git blob id
    public async Task Blob_changed_on_disk_is_verified_again_and_fetched_afresh(string file)
    {
        using var client = Client();
        var (snapshot, _) = await client.DownloadAsync(Tiny, Store, _dir.File("a"));
        var blob = Store.BlobPath("acme/tiny", Commit, snapshot.Files.Single(f => f.Path == file));
        var original = File.ReadAllBytes(blob);
        FlipFirstByte(blob);

        await client.DownloadAsync(Tiny, Store, _dir.File("b"));

        Assert.Equal(original, File.ReadAllBytes(_dir.File("b/" + file)));
        Assert.Equal(original, File.ReadAllBytes(blob));
        Assert.Equal(2, Gets(file));
    }

    [Fact]
    public async Task Offline_a_blob_changed_on_disk_is_removed_and_reported()
    {
        HubSnapshot snapshot;
        using (var online = Client())
            (snapshot, _) = await online.DownloadAsync(Tiny, Store, _dir.File("a"));
        var blob = Store.BlobPath("acme/tiny", Commit, snapshot.Files.Single(f => f.Path == "model.safetensors"));
        FlipFirstByte(blob);

        using var offline = Client(offline: true);
        var e = await Assert.ThrowsAsync<HubException>(() => offline.DownloadAsync(Tiny, Store, _dir.File("b")));

        Assert.Equal(HubErrorKind.Integrity, e.Kind);
        Assert.Equal($"hf://acme/tiny: model.safetensors: the stored copy {blob} no longer matches the hub's sha256 {LoopbackHub.Sha256(_weights)} " +
            "(it was changed on disk); it was removed: unset HF_HUB_OFFLINE and run with network access to fetch it again.", e.Message);
        Assert.False(File.Exists(blob));
        Assert.False(File.Exists(_dir.File("b/model.safetensors")));
    }

    [Fact]
    public async Task Listing_whose_sha_is_a_number_is_a_hub_error_naming_url_and_field()
    {
        _hub.ListingBody["acme/tiny"] = """{"sha": 12345, "siblings": []}""";
        using var client = Client();
        var e = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(Tiny));
        Assert.Equal(HubErrorKind.Server, e.Kind);
        Assert.Equal($"hf://acme/tiny@main: {ListingUrl()}: \"sha\" is a number, expected a commit id (40 hex digits); the hub's listing is malformed, check HF_ENDPOINT.", e.Message);
    }

    [Fact]
    public async Task Listing_whose_lfs_hash_is_not_hex_is_refused_before_it_names_a_file()
    {
        // The hash names the blob file: "../../x" must never become a path.
        _hub.ListingBody["acme/tiny"] = $$$"""{"sha": "{{{Commit}}}", "siblings": [{"rfilename": "model.safetensors", "size": 3, "lfs": {"sha256": "../../x", "size": 3}}]}""";
        using var client = Client();
        var e = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(Tiny));
        Assert.Equal($"hf://acme/tiny@main: {ListingUrl()}: \"siblings[0].lfs.sha256\" is \"../../x\", expected a SHA-256 (64 hex digits); the hub's listing is malformed, check HF_ENDPOINT.", e.Message);
    }

    [Fact]
    public void Damaged_listings_are_hub_errors_never_a_crash()
    {
        var valid = $$$"""
            {"id": "acme/tiny", "sha": "{{{Commit}}}", "siblings": [
              {"rfilename": "config.json", "size": 23, "blobId": "{{{LoopbackHub.GitBlobId(_config)}}}"},
              {"rfilename": "model.safetensors", "size": 300000, "blobId": "{{{LoopbackHub.GitBlobId("pointer"u8.ToArray())}}}",
               "lfs": {"sha256": "{{{LoopbackHub.Sha256(_weights)}}}", "size": 300000, "pointerSize": 134}}]}
            """;
        using var client = Client();
        var bad = JsonFuzz.Misbehaving<HubException>(valid, body =>
        {
            _hub.ListingBody["acme/tiny"] = body;
            client.ResolveAsync(Tiny).GetAwaiter().GetResult();
        });
        Assert.Empty(bad);
    }

    [Fact]
    public async Task Damaged_stored_listing_is_fetched_again_online_and_reported_offline()
    {
        var pinned = HubModelReference.Parse($"hf://acme/tiny@{Commit}");
        using (var client = Client())
            await client.DownloadAsync(pinned, Store, _dir.File("a"));
        var manifest = Store.SnapshotManifestPath("acme/tiny", Commit);
        var good = File.ReadAllText(manifest);
        File.WriteAllText(manifest, """{"repo": "acme/tiny", "commit": 7, "files": []}""");

        using (var offline = Client(offline: true))
        {
            var e = await Assert.ThrowsAsync<HubException>(() => offline.DownloadAsync(pinned, Store, _dir.File("b")));
            Assert.Equal($"{manifest}: \"commit\" is a number, expected a commit id (40 hex digits); this stored listing is damaged: run with network access (HF_HUB_OFFLINE unset) to fetch it again.", e.Message);
        }
        using (var online = Client())
            await online.DownloadAsync(pinned, Store, _dir.File("c"));
        Assert.Equal(good, File.ReadAllText(manifest));
        Assert.Equal(_weights, File.ReadAllBytes(_dir.File("c/model.safetensors")));
    }

    [Fact]
    public async Task Damaged_stored_listings_are_hub_errors_never_a_crash()
    {
        using (var client = Client())
            await client.DownloadAsync(Tiny, Store, _dir.File("a"));
        var manifest = Store.SnapshotManifestPath("acme/tiny", Commit);
        var bad = JsonFuzz.Misbehaving<HubException>(File.ReadAllText(manifest), text =>
        {
            File.WriteAllText(manifest, text);
            Store.Load("acme/tiny", "main");
        });
        Assert.Empty(bad);
    }

    [Theory]
    [InlineData("../out-evil/x.json")]
    [InlineData("/tmp/x.json")]
    [InlineData("a/../../x.json")]
    [InlineData("a\\..\\..\\x.json")]
    [InlineData("C:/x.json")]
    [InlineData("C:x.json")]
    [InlineData("./x.json")]
    [InlineData("a//x.json")]
    public async Task File_listed_outside_the_repository_is_refused(string path)
    {
        _hub.Add(new LoopbackHub.Repo("acme/evil", Commit,
            new Dictionary<string, byte[]> { [path] = "{}"u8.ToArray(), ["zz.json"] = _config }, new HashSet<string>(), RequiredToken: null));
        using var client = Client();
        var e = await Assert.ThrowsAsync<HubException>(() =>
            client.DownloadAsync(HubModelReference.Parse("hf://acme/evil"), Store, _dir.File("out"), GlobPattern.Matcher(["**"])));
        Assert.Equal(HubErrorKind.Server, e.Kind);
        Assert.Equal($"hf://acme/evil@main: {ListingUrl("acme/evil")}: \"siblings[0].rfilename\" is \"{path}\", which is not a path inside the repository " +
            "(absolute paths, drive letters, backslashes and empty, '.' or '..' segments are refused); the hub's listing is malformed, check HF_ENDPOINT.", e.Message);
        Assert.False(Directory.Exists(_dir.File("out-evil")));
        Assert.False(Directory.Exists(_dir.File("out")));
    }

    [Fact]
    public void Placing_refuses_a_path_beside_the_destination_that_shares_its_name_prefix()
    {
        // "out" + "/../out-evil/x.json" is "out-evil/x.json": it starts with "out" but is not inside it.
        var evil = new HubFile("../out-evil/x.json", 2, null, LoopbackHub.GitBlobId("{}"u8.ToArray()));
        var blob = Store.BlobPath("acme/evil", Commit, evil);
        Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
        File.WriteAllBytes(blob, "{}"u8.ToArray());
        var e = Assert.Throws<HubException>(() => Store.Materialize(new HubSnapshot("acme/evil", Commit, [evil]), [evil], _dir.File("out")));
        Assert.Equal($"hf://acme/evil: \"../out-evil/x.json\" is not a path inside the repository ({HubListing.PathRule}); nothing was written.", e.Message);
        Assert.False(File.Exists(_dir.File("out-evil/x.json")));
    }

    [Fact]
    public async Task Cut_transfer_that_the_server_will_not_resume_is_fetched_again_not_kept()
    {
        // No listed size or hash: only the server's lengths can tell a cut file from a whole one.
        _hub.BareListing["acme/tiny"] = true;
        _hub.DropMidFile["model.safetensors"] = 1;
        _hub.RefuseRanges = true;
        using var client = Client();
        await client.DownloadAsync(Tiny, Store, _dir.File("out"));
        Assert.Equal(_weights, File.ReadAllBytes(_dir.File("out/model.safetensors")));
        var gets = _hub.Requests.Where(r => r.Contains("/resolve/") && r.Contains("model.safetensors")).ToArray();
        Assert.Equal(3, gets.Length);
        Assert.EndsWith("Range=bytes=150000-", gets[1]);
        Assert.DoesNotContain("Range=", gets[2]);
    }

    [Fact]
    public async Task Body_without_a_length_that_ends_early_is_resumed_not_taken_as_complete()
    {
        _hub.BareListing["acme/tiny"] = true;
        _hub.CutCleanly["model.safetensors"] = 1;
        using var client = Client();
        await client.DownloadAsync(Tiny, Store, _dir.File("out"));
        Assert.Equal(_weights, File.ReadAllBytes(_dir.File("out/model.safetensors")));
        var gets = _hub.Requests.Where(r => r.Contains("/resolve/") && r.Contains("model.safetensors")).ToArray();
        Assert.Equal(2, gets.Length);
        Assert.EndsWith("Range=bytes=150000-", gets[1]);
    }

    [Fact]
    public async Task Unlisted_blob_without_a_completed_download_marker_is_fetched_again()
    {
        // What an earlier version kept after a cut transfer of a file the listing gives no size or hash for.
        _hub.BareListing["acme/tiny"] = true;
        var blob = Store.BlobPath("acme/tiny", Commit, new HubFile("model.safetensors", null, null, null));
        Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
        File.WriteAllBytes(blob, _weights[..150_000]);
        using var client = Client();
        await client.DownloadAsync(Tiny, Store, _dir.File("out"));
        Assert.Equal(_weights, File.ReadAllBytes(_dir.File("out/model.safetensors")));
        Assert.Equal(1, Gets("model.safetensors"));
    }

    [Fact]
    public async Task Unlisted_blob_changed_on_disk_is_caught_by_the_hash_recorded_when_it_was_downloaded()
    {
        _hub.BareListing["acme/tiny"] = true;
        using var client = Client();
        await client.DownloadAsync(Tiny, Store, _dir.File("a"));
        FlipFirstByte(Store.BlobPath("acme/tiny", Commit, new HubFile("model.safetensors", null, null, null)));
        await client.DownloadAsync(Tiny, Store, _dir.File("b"));
        Assert.Equal(_weights, File.ReadAllBytes(_dir.File("b/model.safetensors")));
        Assert.Equal(2, Gets("model.safetensors"));
    }
}
