using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FineTune.Models.Hub;

public enum BlobState
{
    /// <summary>Not in the store, or (for a file the hub lists no hash for) never confirmed complete.</summary>
    Missing,
    /// <summary>Holds what the hub lists.</summary>
    Intact,
    /// <summary>Holds something else (changed on disk); to be discarded and fetched again.</summary>
    Damaged,
}

/// <param name="Problem">For <see cref="BlobState.Damaged"/>: what differs ("no longer matches the hub's sha256 …").</param>
public sealed record BlobCheck(BlobState State, string BlobPath, string? Problem);

/// <summary>
/// Where downloads live between runs (partial files for resume, verified blobs for offline use):
/// <c>{root}/{org}--{name}/refs/{revision}</c> holds the commit a revision resolved to,
/// <c>snapshots/{commit}.json</c> the file list with sizes and hashes, <c>blobs/{hash}</c> the verified
/// content, <c>blobs/{hash}.incomplete</c> a partial download, and for a file the hub lists no hash for
/// <c>blobs/nohash-{…}.complete</c> the SHA-256 and size it arrived with (without it the blob does not count).
/// </summary>
public sealed partial class HubStore(string root)
{
    public string Root { get; } = Path.GetFullPath(root);

    public string RepoDirectory(string repoId) => Path.Combine(Root, repoId.Replace("/", "--", StringComparison.Ordinal));

    /// <summary>The manifest of a commit: its content identifies the model (the download stage fingerprints it).</summary>
    public string SnapshotManifestPath(string repoId, string commit) => Path.Combine(RepoDirectory(repoId), "snapshots", commit + ".json");

    private string RefPath(string repoId, string revision) =>
        Path.Combine(RepoDirectory(repoId), "refs", Uri.EscapeDataString(revision));

    /// <summary>A verified blob's path; the name is the content hash the hub lists (or commit + path when it lists none).</summary>
    public string BlobPath(string repoId, string commit, HubFile file)
    {
        string key = file.Sha256 ?? (file.BlobId is not null ? "git-" + file.BlobId
            : "nohash-" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(commit + "/" + file.Path))));
        return Path.Combine(RepoDirectory(repoId), "blobs", key);
    }

    public static string IncompletePath(string blobPath) => blobPath + ".incomplete";

    /// <summary>Records that <paramref name="revision"/> resolved to the snapshot's commit, and the snapshot's file list.</summary>
    public string Save(HubSnapshot snapshot, string revision)
    {
        var manifest = SnapshotManifestPath(snapshot.RepoId, snapshot.Commit);
        AtomicFile.WriteAllText(manifest, ManifestJson(snapshot));
        AtomicFile.WriteAllText(RefPath(snapshot.RepoId, revision), snapshot.Commit + "\n");
        return manifest;
    }

    /// <summary>
    /// The snapshot a revision resolved to when it was last seen online; null if never. A damaged ref or manifest is a
    /// <see cref="HubException"/> (<see cref="HubErrorKind.Integrity"/>) naming the file and the field.
    /// </summary>
    public HubSnapshot? Load(string repoId, string revision)
    {
        var refPath = RefPath(repoId, revision);
        string commit;
        if (File.Exists(refPath))
        {
            commit = File.ReadAllText(refPath).Trim();
            if (!HubListing.IsHex(commit, 40))
                throw Damaged(refPath, $"it holds \"{commit}\", expected a commit id (40 hex digits)");
            commit = commit.ToLowerInvariant();
        }
        else if (revision.Length == 40 && revision.All(char.IsAsciiHexDigitLower))
            commit = revision;
        else
            return null;
        var manifest = SnapshotManifestPath(repoId, commit);
        if (!File.Exists(manifest))
            return null;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(manifest));
            return HubListing.FromManifest(doc.RootElement, repoId, commit, problem => Damaged(manifest, problem));
        }
        catch (JsonException e)
        {
            throw Damaged(manifest, $"not valid JSON ({e.Message})");
        }
    }

    private static HubException Damaged(string file, string problem) =>
        new(HubErrorKind.Integrity, $"{file}: {problem}; this stored listing is damaged: run with network access (HF_HUB_OFFLINE unset) to fetch it again.");

    /// <summary>Sorted, stable JSON: repo, commit and every file's size and hash (never the revision name).</summary>
    public static string ManifestJson(HubSnapshot snapshot)
    {
        var files = new JsonArray();
        foreach (var f in snapshot.Files.OrderBy(f => f.Path, StringComparer.Ordinal))
        {
            var o = new JsonObject { ["path"] = f.Path };
            if (f.Size is { } size) o["size"] = size;
            if (f.Sha256 is not null) o["sha256"] = f.Sha256;
            if (f.BlobId is not null) o["blob_id"] = f.BlobId;
            files.Add(o);
        }
        var root = new JsonObject { ["repo"] = snapshot.RepoId, ["commit"] = snapshot.Commit, ["files"] = files };
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }) + "\n";
    }

    /// <summary>Where the SHA-256 of a blob the hub lists no hash for is recorded once its download completed whole.</summary>
    public static string CompletedMarkerPath(string blobPath) => blobPath + ".complete";

    /// <summary>
    /// Whether the stored blob of <paramref name="file"/> holds what the hub lists — its size, and its LFS SHA-256 or git
    /// blob id — or, for a file the hub lists no hash for, the SHA-256 its completed-download marker recorded. Reads the
    /// whole blob: a file edited through a hard link of the stage output has the blob's name but not its content.
    /// </summary>
    public BlobCheck Check(string repoId, string commit, HubFile file)
    {
        var blob = BlobPath(repoId, commit, file);
        if (!File.Exists(blob))
            return new BlobCheck(BlobState.Missing, blob, null);
        long length = new FileInfo(blob).Length;
        if (file.Sha256 is null && file.BlobId is null)
        {
            // No hash to check against: only a transfer that completed whole left a marker (older versions left none).
            if (ReadMarker(blob) is not var (sha256, size))
                return new BlobCheck(BlobState.Missing, blob, null);
            if (length != size || (file.Size is { } listed && listed != size))
                return new BlobCheck(BlobState.Damaged, blob, $"is {length:N0} bytes, not the {file.Size ?? size:N0} it had when its download completed");
            var actual = Sha256Of(blob);
            return actual == sha256
                ? new BlobCheck(BlobState.Intact, blob, null)
                : new BlobCheck(BlobState.Damaged, blob, $"no longer matches the sha256 {sha256} it had when its download completed");
        }
        if (file.Size is { } expectedSize && length != expectedSize)
            return new BlobCheck(BlobState.Damaged, blob, $"is {length:N0} bytes, not the {expectedSize:N0} the hub lists");
        var (what, expected, found) = file.Sha256 is { } sha
            ? ("sha256", sha, Sha256Of(blob))
            : ("git blob id", file.BlobId!, GitBlobId(blob));
        return found == expected
            ? new BlobCheck(BlobState.Intact, blob, null)
            : new BlobCheck(BlobState.Damaged, blob, $"no longer matches the hub's {what} {expected}");
    }

    /// <summary>Records that a blob the hub lists no hash for arrived whole (its length confirmed by the hub), with its SHA-256.</summary>
    public static void MarkCompleted(string blobPath, string sha256, long size) =>
        AtomicFile.WriteAllText(CompletedMarkerPath(blobPath), $"{sha256} {size}\n");

    /// <summary>Deletes a blob and its marker (a damaged copy, to be fetched again).</summary>
    public static void Discard(string blobPath)
    {
        File.Delete(CompletedMarkerPath(blobPath));
        File.Delete(blobPath);
    }

    private static (string Sha256, long Size)? ReadMarker(string blobPath)
    {
        var marker = CompletedMarkerPath(blobPath);
        if (!File.Exists(marker)) return null;
        var parts = File.ReadAllText(marker).Split(' ', StringSplitOptions.TrimEntries);
        return parts is [var sha, var size] && HubListing.IsHex(sha, 64) && long.TryParse(size, out var n) && n >= 0 ? (sha, n) : null;
    }

    internal static string Sha256Of(string path)
    {
        using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
        return Convert.ToHexStringLower(SHA256.HashData(s));
    }

    /// <summary>git's object id of a file: SHA-1 over "blob {length}\0" followed by the content.</summary>
    public static string GitBlobId(string path)
    {
        using var sha1 = IncrementalHash.CreateHash(HashAlgorithmName.SHA1);
        var length = new FileInfo(path).Length;
        sha1.AppendData(Encoding.ASCII.GetBytes($"blob {length}\0"));
        using var s = File.OpenRead(path);
        var buffer = new byte[1 << 16];
        int n;
        while ((n = s.Read(buffer)) > 0)
            sha1.AppendData(buffer, 0, n);
        return Convert.ToHexStringLower(sha1.GetHashAndReset());
    }

    /// <summary>
    /// Places blobs (checked by <see cref="Check"/> or just verified) under their repository paths in
    /// <paramref name="destination"/>: a hard link where the file system allows (no second copy of a large model),
    /// a copy otherwise. A path that would leave <paramref name="destination"/> is refused before anything is written.
    /// </summary>
    public void Materialize(HubSnapshot snapshot, IEnumerable<HubFile> files, string destination)
    {
        var root = Path.GetFullPath(destination);
        var inside = root.EndsWith(Path.DirectorySeparatorChar) ? root : root + Path.DirectorySeparatorChar;
        var placed = files.ToArray();
        foreach (var f in placed)
        {
            var target = Path.GetFullPath(Path.Combine(root, f.Path));
            if (!HubListing.IsRepositoryPath(f.Path) || !target.StartsWith(inside, StringComparison.Ordinal))
                throw new HubException(HubErrorKind.Server, $"{HubModelReference.Scheme}{snapshot.RepoId}: \"{f.Path}\" is not a path inside the repository ({HubListing.PathRule}); nothing was written.");
        }
        foreach (var f in placed)
        {
            var blob = BlobPath(snapshot.RepoId, snapshot.Commit, f);
            if (!File.Exists(blob))
                throw new HubException(HubErrorKind.Offline, $"{HubModelReference.Scheme}{snapshot.RepoId}: {f.Path} (commit {snapshot.Commit}) is not downloaded yet ({blob} is missing); run with network access (unset HF_HUB_OFFLINE) to fetch it.");
            var target = Path.GetFullPath(Path.Combine(root, f.Path));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            if (File.Exists(target))
                File.Delete(target);
            if (!TryHardLink(blob, target))
                File.Copy(blob, target);
        }
    }

    private static bool TryHardLink(string existing, string link)
    {
        try
        {
            if (OperatingSystem.IsWindows())
                return CreateHardLinkW(link, existing, IntPtr.Zero);
            return LinkUnix(existing, link) == 0;
        }
        catch (DllNotFoundException) { return false; }
        catch (EntryPointNotFoundException) { return false; }
    }

    [LibraryImport("libc", EntryPoint = "link", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int LinkUnix(string oldPath, string newPath);

    [LibraryImport("kernel32.dll", EntryPoint = "CreateHardLinkW", StringMarshalling = StringMarshalling.Utf16, SetLastError = true)]
    [return: MarshalAs(UnmanagedType.Bool)]
    private static partial bool CreateHardLinkW(string fileName, string existingFileName, IntPtr securityAttributes);
}
