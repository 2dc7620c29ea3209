using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using FineTune.Models.Hub;

namespace FineTune.Models.Tests.Hub;

/// <summary>
/// A real HTTP server on 127.0.0.1 that answers the Hugging Face Hub's URL layout for a few repositories:
/// <c>/api/models/{repo}/revision/{rev}</c> and <c>/{repo}/resolve/{commit}/{file}</c>, with Range support,
/// gated repositories, and switches that break connections or serve altered bytes.
/// </summary>
public sealed class LoopbackHub : IDisposable
{
    private readonly HttpListener _listener = new();
    private readonly Dictionary<string, Repo> _repos = new(StringComparer.Ordinal);
    private readonly Task _loop;

    public sealed record Repo(string Id, string Commit, IReadOnlyDictionary<string, byte[]> Files, IReadOnlySet<string> LfsFiles, string? RequiredToken);

    public LoopbackHub()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        Endpoint = $"http://127.0.0.1:{port}";
        _listener.Prefixes.Add(Endpoint + "/");
        _listener.Start();
        _loop = Task.Run(Serve);
    }

    public string Endpoint { get; }

    /// <summary>Every request: "GET /path" plus " Range=…" and " Auth=…" when present.</summary>
    public ConcurrentQueue<string> Requests { get; } = new();

    /// <summary>file path → how many more responses to cut after half the bytes.</summary>
    public ConcurrentDictionary<string, int> DropMidFile { get; } = new();

    /// <summary>Files served with one byte flipped (the API still lists the true hash).</summary>
    public ConcurrentDictionary<string, bool> Corrupt { get; } = new();

    /// <summary>Repositories whose listing gives only file names: no size, no blobId, no lfs (as some mirrors answer).</summary>
    public ConcurrentDictionary<string, bool> BareListing { get; } = new();

    /// <summary>repo id → the raw body the revision API answers instead of the real listing (malformed answers).</summary>
    public ConcurrentDictionary<string, string> ListingBody { get; } = new();

    /// <summary>Answer every Range request with 416 (as a server that cannot serve ranges of this file).</summary>
    public bool RefuseRanges { get; set; }

    /// <summary>file path → how many more responses to send chunked, without Content-Length, ending cleanly after half the bytes.</summary>
    public ConcurrentDictionary<string, int> CutCleanly { get; } = new();

    public void Add(Repo repo) => _repos[repo.Id] = repo;

    public static string Sha256(byte[] b) => Convert.ToHexStringLower(SHA256.HashData(b));

    public static string GitBlobId(byte[] b) =>
        Convert.ToHexStringLower(SHA1.HashData(Encoding.ASCII.GetBytes($"blob {b.Length}\0").Concat(b).ToArray()));

    private async Task Serve()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext ctx;
            try { ctx = await _listener.GetContextAsync(); }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException) { return; }
            _ = Task.Run(() => Handle(ctx));
        }
    }

    private void Handle(HttpListenerContext ctx)
    {
        var req = ctx.Request;
        var res = ctx.Response;
        var path = Uri.UnescapeDataString(req.Url!.AbsolutePath);
        var range = req.Headers["Range"];
        var auth = req.Headers["Authorization"];
        Requests.Enqueue($"{req.HttpMethod} {path}" + (range is null ? "" : $" Range={range}") + (auth is null ? "" : $" Auth={auth}"));
        try
        {
            if (path.StartsWith("/api/models/", StringComparison.Ordinal))
                Api(path["/api/models/".Length..], auth, res);
            else
                Resolve(path[1..], range, auth, res);
        }
        catch (HttpListenerException) { }
        catch (IOException) { }
    }

    private bool Authorized(Repo repo, string? auth, HttpListenerResponse res)
    {
        if (repo.RequiredToken is null || auth == $"Bearer {repo.RequiredToken}")
            return true;
        res.Headers["X-Error-Code"] = "GatedRepo";
        Finish(res, auth is null ? 401 : 403, "Access to this model is restricted.");
        return false;
    }

    private void Api(string rest, string? auth, HttpListenerResponse res)
    {
        // {org}/{name}/revision/{rev}
        var parts = rest.Split('/', 4);
        if (parts.Length < 4 || parts[2] != "revision" || !_repos.TryGetValue($"{parts[0]}/{parts[1]}", out var repo))
        {
            res.Headers["X-Error-Code"] = "RepoNotFound";
            Finish(res, 401, "Repository not found");
            return;
        }
        if (!Authorized(repo, auth, res))
            return;
        if (ListingBody.TryGetValue(repo.Id, out var raw))
        {
            res.ContentType = "application/json";
            Finish(res, 200, raw);
            return;
        }
        if (parts[3] != "main" && parts[3] != repo.Commit)
        {
            res.Headers["X-Error-Code"] = "RevisionNotFound";
            Finish(res, 404, $"Invalid rev id: {parts[3]}");
            return;
        }
        var siblings = new JsonArray();
        foreach (var (name, bytes) in repo.Files.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            var s = new JsonObject { ["rfilename"] = name };
            if (BareListing.ContainsKey(repo.Id))
            {
                siblings.Add(s);
                continue;
            }
            s["size"] = bytes.Length;
            if (repo.LfsFiles.Contains(name))
            {
                s["blobId"] = GitBlobId(Encoding.ASCII.GetBytes("pointer"));
                s["lfs"] = new JsonObject { ["sha256"] = Sha256(bytes), ["size"] = bytes.Length, ["pointerSize"] = 134 };
            }
            else
                s["blobId"] = GitBlobId(bytes);
            siblings.Add(s);
        }
        var body = new JsonObject { ["id"] = repo.Id, ["sha"] = repo.Commit, ["siblings"] = siblings };
        res.ContentType = "application/json";
        Finish(res, 200, body.ToJsonString());
    }

    private void Resolve(string rest, string? range, string? auth, HttpListenerResponse res)
    {
        // {org}/{name}/resolve/{commit}/{file}
        var parts = rest.Split('/', 5);
        if (parts.Length < 5 || parts[2] != "resolve" || !_repos.TryGetValue($"{parts[0]}/{parts[1]}", out var repo))
        {
            res.Headers["X-Error-Code"] = "RepoNotFound";
            Finish(res, 401, "Repository not found");
            return;
        }
        if (!Authorized(repo, auth, res))
            return;
        if (parts[3] != repo.Commit || !repo.Files.TryGetValue(parts[4], out var content))
        {
            res.Headers["X-Error-Code"] = "EntryNotFound";
            Finish(res, 404, "Entry not found");
            return;
        }
        if (Corrupt.ContainsKey(parts[4]))
        {
            content = (byte[])content.Clone();
            content[^1] ^= 0xFF;
        }
        long from = 0;
        if (range is not null && range.StartsWith("bytes=", StringComparison.Ordinal) && range.EndsWith('-'))
            from = long.Parse(range["bytes=".Length..^1]);
        if ((from >= content.Length && from > 0) || (RefuseRanges && range is not null))
        {
            res.Headers["Content-Range"] = $"bytes */{content.Length}";
            Finish(res, 416, "");
            return;
        }
        res.StatusCode = from > 0 ? 206 : 200;
        if (from > 0)
            res.Headers["Content-Range"] = $"bytes {from}-{content.Length - 1}/{content.Length}";
        res.Headers["ETag"] = $"\"{Sha256(repo.Files[parts[4]])}\"";
        var slice = content.AsSpan((int)from).ToArray();
        if (CutCleanly.TryGetValue(parts[4], out var cuts) && cuts > 0 && CutCleanly.TryUpdate(parts[4], cuts - 1, cuts))
        {
            res.SendChunked = true; // no Content-Length: the body's end is the chunked terminator, sent after half the bytes
            res.OutputStream.Write(slice, 0, slice.Length / 2);
            res.Close();
            return;
        }
        res.ContentLength64 = slice.Length;
        bool drop = DropMidFile.TryGetValue(parts[4], out var left) && left > 0 && DropMidFile.TryUpdate(parts[4], left - 1, left);
        if (drop)
        {
            res.OutputStream.Write(slice, 0, slice.Length / 2);
            res.OutputStream.Flush();
            res.Abort(); // the connection breaks mid-file
            return;
        }
        res.OutputStream.Write(slice);
        res.Close();
    }

    private static void Finish(HttpListenerResponse res, int status, string text)
    {
        res.StatusCode = status;
        var bytes = Encoding.UTF8.GetBytes(text);
        res.ContentLength64 = bytes.Length;
        res.OutputStream.Write(bytes);
        res.Close();
    }

    private bool _disposed;

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        // Close alone: after Stop, Close removes the prefix again and HttpListener re-binds the port to do it, which fails
        // with "Address already in use" when another test process took the freed port in between (seen in CI, where the
        // test projects run in parallel); a listener that cannot be re-bound has nothing left to release.
        try { _listener.Close(); }
        catch (HttpListenerException) { }
        try { _loop.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
    }
}
