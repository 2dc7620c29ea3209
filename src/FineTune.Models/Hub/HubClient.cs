using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;

namespace FineTune.Models.Hub;

/// <summary>Where and how to reach the hub; <see cref="FromEnvironment"/> reads HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE.</summary>
public sealed record HubOptions
{
    public const string DefaultEndpoint = "https://huggingface.co";

    public string Endpoint { get; init; } = DefaultEndpoint;
    /// <summary>Sent as "Authorization: Bearer …" to the hub (not to the CDN it redirects to).</summary>
    public string? Token { get; init; }
    /// <summary>Use only what an earlier run downloaded; never touch the network.</summary>
    public bool Offline { get; init; }
    public int MaxParallelDownloads { get; init; } = 4;
    /// <summary>Attempts per file when a connection breaks; each retry resumes where the last one stopped.</summary>
    public int MaxAttempts { get; init; } = 4;
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromSeconds(1);
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(60);

    public static HubOptions FromEnvironment(Func<string, string?>? getVariable = null)
    {
        getVariable ??= Environment.GetEnvironmentVariable;
        var endpoint = getVariable("HF_ENDPOINT");
        var token = getVariable("HF_TOKEN") ?? getVariable("HUGGING_FACE_HUB_TOKEN");
        var offline = getVariable("HF_HUB_OFFLINE");
        return new HubOptions
        {
            Endpoint = string.IsNullOrWhiteSpace(endpoint) ? DefaultEndpoint : endpoint.TrimEnd('/'),
            Token = string.IsNullOrWhiteSpace(token) ? null : token.Trim(),
            Offline = offline is not null && offline.Trim().ToUpperInvariant() is "1" or "ON" or "YES" or "TRUE",
        };
    }
}

/// <summary>How much of one file is on disk (reported as bytes arrive, from several files at once).</summary>
public readonly record struct HubDownloadProgress(string File, long BytesDone, long? Size);

/// <summary>
/// A client of the Hugging Face Hub HTTP API: resolves a revision to a commit
/// (<c>GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true</c>: "sha" and "siblings" with
/// rfilename, size, blobId and lfs.sha256), downloads files in parallel from
/// <c>{endpoint}/{repo}/resolve/{commit}/{path}</c>, resumes partial files with HTTP Range and verifies
/// size and hash (LFS SHA-256, or the git blob SHA-1 for small files) before a file counts as downloaded; a stored
/// blob is checked again before it is placed, and a listing that is malformed or names a path outside the repository
/// is refused.
/// </summary>
public sealed class HubClient : IDisposable
{
    private readonly HttpClient _http;
    private readonly HubOptions _options;

    public HubClient(HubOptions options, HttpMessageHandler? handler = null)
    {
        _options = options;
        _http = handler is null ? new HttpClient(new SocketsHttpHandler { AutomaticDecompression = DecompressionMethods.None }) : new HttpClient(handler, disposeHandler: false);
        _http.Timeout = Timeout.InfiniteTimeSpan; // per-request timeouts below; a large file may take hours
        _http.DefaultRequestHeaders.UserAgent.Add(new ProductInfoHeaderValue("FineTune", "1.0"));
    }

    public HubOptions Options => _options;

    public void Dispose() => _http.Dispose();

    /// <summary>Resolves a revision to a commit and lists its files.</summary>
    public async Task<HubSnapshot> ResolveAsync(HubModelReference model, CancellationToken cancellation = default)
    {
        if (_options.Offline)
            throw new HubException(HubErrorKind.Offline, $"{model}: HF_HUB_OFFLINE is set, so the hub is not asked; use {nameof(DownloadAsync)} with a store that holds an earlier download, or unset HF_HUB_OFFLINE.");
        var url = $"{_options.Endpoint}/api/models/{EscapeRepo(model.RepoId)}/revision/{Uri.EscapeDataString(model.Revision)}?blobs=true";
        using var request = new HttpRequestMessage(HttpMethod.Get, url);
        AddAuth(request);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        cts.CancelAfter(_options.Timeout);
        HttpResponseMessage response;
        try
        {
            response = await _http.SendAsync(request, cts.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is HttpRequestException or IOException || (e is OperationCanceledException && !cancellation.IsCancellationRequested))
        {
            throw new HubException(HubErrorKind.Network, $"{model}: cannot reach {_options.Endpoint} ({e.Message}); check the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use a model downloaded before.", e);
        }
        using (response)
        {
            if (!response.IsSuccessStatusCode)
                throw StatusError(model, response, file: null);
            var text = await response.Content.ReadAsStringAsync(cts.Token).ConfigureAwait(false);
            JsonDocument body;
            try
            {
                body = JsonDocument.Parse(text);
            }
            catch (JsonException e)
            {
                throw new HubException(HubErrorKind.Server, $"{model}: {url} did not answer with the model's JSON ({e.Message}); check HF_ENDPOINT.", e);
            }
            using (body)
                return HubListing.FromHubAnswer(body.RootElement, model.RepoId, problem =>
                    new HubException(HubErrorKind.Server, $"{model}: {url}: {problem}; the hub's listing is malformed, check HF_ENDPOINT."));
        }
    }

    /// <summary>
    /// Makes <paramref name="destination"/> hold the model's files (those <paramref name="include"/> accepts):
    /// resolves the revision (or, offline, reads the store), downloads missing blobs into the store in
    /// parallel, verifies them, and links or copies them into place. Returns the snapshot and its manifest
    /// path in the store.
    /// </summary>
    public async Task<(HubSnapshot Snapshot, string Manifest)> DownloadAsync(
        HubModelReference model, HubStore store, string destination, Func<string, bool>? include = null,
        IProgress<HubDownloadProgress>? progress = null, CancellationToken cancellation = default)
    {
        var snapshot = await SnapshotAsync(model, store, cancellation).ConfigureAwait(false);
        await DownloadAsync(snapshot, store, destination, include, progress, cancellation).ConfigureAwait(false);
        return (snapshot, store.SnapshotManifestPath(snapshot.RepoId, snapshot.Commit));
    }

    /// <summary>The files of a resolved snapshot that <paramref name="include"/> accepts (default: <see cref="GlobPattern.DefaultModelPatterns"/>).</summary>
    public static IReadOnlyList<HubFile> Select(HubSnapshot snapshot, Func<string, bool>? include)
    {
        var wanted = snapshot.Files.Where(f => (include ?? GlobPattern.Matcher(null))(f.Path)).ToArray();
        if (wanted.Length == 0)
            throw new HubException(HubErrorKind.NotFound, $"{HubModelReference.Scheme}{snapshot.RepoId}: no file of commit {snapshot.Commit} matches the allow patterns; the repository lists {string.Join(", ", snapshot.Files.Take(8).Select(f => f.Path))}.");
        return wanted;
    }

    /// <summary>
    /// Downloads (unless offline) and places the selected files of an already resolved snapshot. Every stored blob is
    /// checked against the hub's hash before it is placed: one changed on disk is fetched again (offline: removed and
    /// reported).
    /// </summary>
    public async Task DownloadAsync(HubSnapshot snapshot, HubStore store, string destination, Func<string, bool>? include = null,
        IProgress<HubDownloadProgress>? progress = null, CancellationToken cancellation = default)
    {
        var wanted = Select(snapshot, include);
        if (_options.Offline)
            CheckOffline(snapshot, wanted, store);
        else
            await FetchAsync(snapshot, wanted, store, progress, cancellation).ConfigureAwait(false);
        store.Materialize(snapshot, wanted, destination);
    }

    private static void CheckOffline(HubSnapshot snapshot, IReadOnlyList<HubFile> files, HubStore store)
    {
        foreach (var f in files)
        {
            var check = store.Check(snapshot.RepoId, snapshot.Commit, f);
            var label = $"{HubModelReference.Scheme}{snapshot.RepoId}: {f.Path}";
            if (check.State == BlobState.Missing)
                throw new HubException(HubErrorKind.Offline, $"{label} (commit {snapshot.Commit}) is not downloaded yet ({check.BlobPath} is missing or incomplete); run with network access (unset HF_HUB_OFFLINE) to fetch it.");
            if (check.State == BlobState.Damaged)
            {
                HubStore.Discard(check.BlobPath);
                throw new HubException(HubErrorKind.Integrity, $"{label}: the stored copy {check.BlobPath} {check.Problem} (it was changed on disk); it was removed: unset HF_HUB_OFFLINE and run with network access to fetch it again.");
            }
        }
    }

    /// <summary>
    /// The snapshot of a revision: from the store when offline or when the revision is a commit already
    /// seen; otherwise from the hub (and recorded in the store). Online, a damaged stored listing is fetched again.
    /// </summary>
    public async Task<HubSnapshot> SnapshotAsync(HubModelReference model, HubStore store, CancellationToken cancellation = default)
    {
        if (_options.Offline || model.RevisionIsCommit)
        {
            HubSnapshot? stored;
            try
            {
                stored = store.Load(model.RepoId, model.Revision);
            }
            catch (HubException) when (!_options.Offline)
            {
                stored = null; // damaged: the hub's answer replaces it
            }
            if (stored is not null)
                return stored;
            if (_options.Offline)
                throw new HubException(HubErrorKind.Offline, $"{model}: HF_HUB_OFFLINE is set and this model was never downloaded here (nothing in {store.RepoDirectory(model.RepoId)}); unset HF_HUB_OFFLINE and run once with network access.");
        }
        var snapshot = await ResolveAsync(model, cancellation).ConfigureAwait(false);
        store.Save(snapshot, model.Revision);
        return snapshot;
    }

    /// <summary>
    /// Downloads and verifies every file whose blob is not in the store, or is there but no longer holds what the hub
    /// lists (a damaged blob is deleted first).
    /// </summary>
    public async Task FetchAsync(HubSnapshot snapshot, IReadOnlyList<HubFile> files, HubStore store,
        IProgress<HubDownloadProgress>? progress, CancellationToken cancellation)
    {
        var missing = new List<HubFile>();
        foreach (var f in files)
        {
            var check = store.Check(snapshot.RepoId, snapshot.Commit, f);
            if (check.State == BlobState.Intact)
                continue;
            if (File.Exists(check.BlobPath))
                HubStore.Discard(check.BlobPath);
            missing.Add(f);
        }
        if (missing.Count == 0)
            return;
        CheckFreeSpace(snapshot, missing, store);
        using var gate = new SemaphoreSlim(Math.Max(1, _options.MaxParallelDownloads));
        var tasks = missing.Select(async f =>
        {
            await gate.WaitAsync(cancellation).ConfigureAwait(false);
            try
            {
                await FetchFileAsync(snapshot, f, store.BlobPath(snapshot.RepoId, snapshot.Commit, f), progress, cancellation).ConfigureAwait(false);
            }
            finally
            {
                gate.Release();
            }
        }).ToArray();
        try
        {
            await Task.WhenAll(tasks).ConfigureAwait(false);
        }
        catch
        {
            // Report the first hub error (not an aggregate); the others' partial files stay for resume.
            var first = tasks.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException!).FirstOrDefault();
            if (first is not null)
                throw first;
            throw;
        }
    }

    private static void CheckFreeSpace(HubSnapshot snapshot, IReadOnlyList<HubFile> files, HubStore store)
    {
        long needed = 0;
        foreach (var f in files)
        {
            var partial = HubStore.IncompletePath(store.BlobPath(snapshot.RepoId, snapshot.Commit, f));
            needed += Math.Max(0, (f.Size ?? 0) - (File.Exists(partial) ? new FileInfo(partial).Length : 0));
        }
        Directory.CreateDirectory(store.Root);
        long free;
        try
        {
            free = new DriveInfo(store.Root).AvailableFreeSpace;
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException)
        {
            return; // the drive cannot be queried; the write itself will report a full disk
        }
        if (needed > free)
            throw new HubException(HubErrorKind.DiskFull, $"{HubModelReference.Scheme}{snapshot.RepoId}: {needed:N0} bytes to download but only {free:N0} free under {store.Root}; free {needed - free:N0} bytes (or move the .finetune cache) and run again.");
    }

    private async Task FetchFileAsync(HubSnapshot snapshot, HubFile file, string blobPath, IProgress<HubDownloadProgress>? progress, CancellationToken cancellation)
    {
        var partial = HubStore.IncompletePath(blobPath);
        Directory.CreateDirectory(Path.GetDirectoryName(blobPath)!);
        var url = $"{_options.Endpoint}/{EscapeRepo(snapshot.RepoId)}/resolve/{snapshot.Commit}/{string.Join('/', file.Path.Split('/').Select(Uri.EscapeDataString))}";
        var label = $"{HubModelReference.Scheme}{snapshot.RepoId}: {file.Path}";
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                await DownloadOnceAsync(url, file, partial, label, progress, cancellation).ConfigureAwait(false);
                break;
            }
            catch (Exception e) when (IsTransient(e, cancellation))
            {
                long kept = File.Exists(partial) ? new FileInfo(partial).Length : 0;
                if (attempt >= _options.MaxAttempts)
                    throw new HubException(HubErrorKind.Network, $"{label}: download failed after {attempt} attempts ({e.Message}); {kept:N0} bytes are kept in {partial} and the next run resumes from there.", e);
                await Task.Delay(_options.RetryDelay * attempt, cancellation).ConfigureAwait(false);
            }
        }
        var unlisted = Verify(file, partial, label);
        long length = new FileInfo(partial).Length;
        File.Move(partial, blobPath, overwrite: true);
        if (unlisted is not null)
            HubStore.MarkCompleted(blobPath, unlisted, length); // after the rename: a blob without its marker never counts

    }

    private static bool IsTransient(Exception e, CancellationToken cancellation) => e switch
    {
        HubException { Kind: HubErrorKind.Network or HubErrorKind.Server } => true,
        HubException => false,
        HttpRequestException or HttpIOException => true,
        IOException io => !IsDiskFull(io),
        OperationCanceledException => !cancellation.IsCancellationRequested,
        _ => false,
    };

    /// <summary>
    /// One request that adds to (or restarts) the partial file. Returns only when the partial file is whole by a length
    /// the hub gave — the listed size, the Content-Length of a full answer or the total of a Content-Range — so a
    /// transfer cut short, even one whose body ended cleanly, is never taken as complete; otherwise it throws an
    /// <see cref="IOException"/> and the next attempt resumes (or, where the hub will not resume, starts again).
    /// </summary>
    private async Task DownloadOnceAsync(string url, HubFile file, string partial, string label, IProgress<HubDownloadProgress>? progress, CancellationToken cancellation)
    {
        long have = File.Exists(partial) ? new FileInfo(partial).Length : 0;
        if (file.Size is { } size && have >= size)
        {
            if (have == size)
                return; // complete; verification decides
            File.Delete(partial); // longer than the file can be: start again
            have = 0;
        }
        using var request = new HttpRequestMessage(HttpMethod.Get, url);
        AddAuth(request);
        if (have > 0)
            request.Headers.Range = new RangeHeaderValue(have, null);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        cts.CancelAfter(_options.Timeout);
        using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token).ConfigureAwait(false);
        if (response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable && have > 0)
        {
            // "Nothing past byte {have}" means complete only if the hub's total says the file ends there.
            var ends = response.Content.Headers.ContentRange?.Length;
            if (ends == have)
                return;
            File.Delete(partial);
            throw new IOException(ends is { } total
                ? $"the hub will not resume at byte {have:N0} of {total:N0}; the partial file was dropped and the download starts again"
                : $"the hub will not resume at byte {have:N0} and gives no length to tell whether the file ends there; the partial file was dropped and the download starts again");
        }
        if ((int)response.StatusCode >= 500)
            throw new HubException(HubErrorKind.Server, $"{label}: the hub answered {(int)response.StatusCode} {response.ReasonPhrase}.");
        if (!response.IsSuccessStatusCode)
            throw StatusError(new HubModelReference("", ""), response, label);
        bool append = have > 0 && response.StatusCode == HttpStatusCode.PartialContent;
        var range = response.Content.Headers.ContentRange;
        if (response.StatusCode == HttpStatusCode.PartialContent && range?.From != (append ? have : 0))
        {
            File.Delete(partial); // a range we did not ask for: its bytes cannot be placed
            throw new IOException($"the hub answered bytes from {range?.From?.ToString("N0") ?? "?"} to a request from byte {have:N0}; the download starts again");
        }
        // The whole file's length as this answer states it.
        long? stated = response.StatusCode == HttpStatusCode.PartialContent
            ? range!.Length ?? (response.Content.Headers.ContentLength + have)
            : response.Content.Headers.ContentLength;
        if (file.Size is { } listed && stated is { } served && served != listed)
        {
            File.Delete(partial);
            throw new HubException(HubErrorKind.Integrity, $"{label}: the hub lists {listed:N0} bytes but serves {served:N0}; the partial file was removed, run again to download it afresh (a proxy or mirror may be altering files).");
        }
        long? whole = file.Size ?? stated;
        cts.CancelAfter(Timeout.InfiniteTimeSpan);
        await using var body = await response.Content.ReadAsStreamAsync(cancellation).ConfigureAwait(false);
        await using var output = new FileStream(partial, append ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true);
        long done = append ? have : 0;
        progress?.Report(new HubDownloadProgress(file.Path, done, whole));
        var buffer = new byte[1 << 16];
        while (true)
        {
            // A stalled connection counts as broken after the timeout.
            using var readCts = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
            readCts.CancelAfter(_options.Timeout);
            int n = await body.ReadAsync(buffer, readCts.Token).ConfigureAwait(false);
            if (n == 0)
                break;
            try
            {
                await output.WriteAsync(buffer.AsMemory(0, n), cancellation).ConfigureAwait(false);
            }
            catch (IOException e) when (IsDiskFull(e))
            {
                throw new HubException(HubErrorKind.DiskFull, $"{label}: the disk is full while writing {partial}; free space and run again (the partial download is kept and resumes).", e);
            }
            done += n;
            progress?.Report(new HubDownloadProgress(file.Path, done, whole));
        }
        await output.FlushAsync(cancellation).ConfigureAwait(false);
        if (whole is null)
            throw new IOException($"the answer ended after {done:N0} bytes without a length to check that against (no Content-Length, and the listing gives no size); asking for what follows");
        if (done < whole)
            throw new IOException($"connection closed after {done:N0} of {whole:N0} bytes");
        if (done > whole)
        {
            output.Close();
            File.Delete(partial);
            throw new HubException(HubErrorKind.Integrity, $"{label}: received {done:N0} bytes but the hub said {whole:N0}; the partial file was removed, run again to download it afresh.");
        }
    }

    private static bool IsDiskFull(IOException e) =>
        e.HResult == 28 /* ENOSPC */ || (e.HResult & 0xFFFF) == 112 /* ERROR_DISK_FULL */ || (e.HResult & 0xFFFF) == 39 /* ERROR_HANDLE_DISK_FULL */;

    /// <summary>
    /// Checks size and hash; a mismatch removes the file, so the next run downloads it afresh. Returns the file's
    /// SHA-256 when the hub lists no hash (it becomes the completed-download marker), else null.
    /// </summary>
    private static string? Verify(HubFile file, string path, string label)
    {
        long length = new FileInfo(path).Length;
        if (file.Size is { } size && length != size)
        {
            File.Delete(path);
            throw new HubException(HubErrorKind.Integrity, $"{label}: downloaded {length:N0} bytes but the hub lists {size:N0}; the file was removed, run again to download it afresh.");
        }
        if (file.Sha256 is null && file.BlobId is null)
            return HubStore.Sha256Of(path);
        var (what, expected, actual) = file.Sha256 is { } sha
            ? ("sha256", sha, HubStore.Sha256Of(path))
            : ("git blob id", file.BlobId!, HubStore.GitBlobId(path));
        if (actual != expected)
        {
            File.Delete(path);
            throw new HubException(HubErrorKind.Integrity, $"{label}: {what} is {actual} but the hub lists {expected}; the file was removed, run again to download it afresh (a proxy or mirror may be altering files).");
        }
        return null;
    }

    private void AddAuth(HttpRequestMessage request)
    {
        if (_options.Token is not null)
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _options.Token);
    }

    private static string EscapeRepo(string repoId) => string.Join('/', repoId.Split('/').Select(Uri.EscapeDataString));

    private HubException StatusError(HubModelReference model, HttpResponseMessage response, string? file)
    {
        var code = response.Headers.TryGetValues("X-Error-Code", out var v) ? v.FirstOrDefault() : null;
        var who = file ?? model.ToString();
        var page = $"{_options.Endpoint}/{(file is null ? model.RepoId : "")}".TrimEnd('/');
        int status = (int)response.StatusCode;
        var tokenState = _options.Token is null ? "HF_TOKEN is not set" : "HF_TOKEN is set";
        if (code == "GatedRepo" || status == 403)
            return new HubException(HubErrorKind.Gated, $"{who}: {status} — the repository is gated; accept its licence on {page} with your account and set HF_TOKEN to a read token of that account ({tokenState}).");
        if (status == 401)
            return new HubException(HubErrorKind.Unauthorized, $"{who}: 401 — the repository does not exist or needs authentication ({tokenState}); check the name, set HF_TOKEN to a token with access, and for gated models accept the licence on {page}.");
        if (status == 404)
            return new HubException(HubErrorKind.NotFound, code switch
            {
                "RevisionNotFound" => $"{who}: 404 — revision \"{model.Revision}\" not found; use a branch, tag or commit that exists in {model.RepoId}.",
                "EntryNotFound" => $"{who}: 404 — the file is not in this commit; download again to refresh the file list.",
                _ => $"{who}: 404 — repository or revision not found on {_options.Endpoint}; check the name and revision (and HF_ENDPOINT for mirrors).",
            });
        return new HubException(status >= 500 ? HubErrorKind.Server : HubErrorKind.Network, $"{who}: the hub answered {status} {response.ReasonPhrase}; try again later or check HF_ENDPOINT.");
    }
}
