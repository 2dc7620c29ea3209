using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FineTune.Models.Hub;

/// <summary>
/// Where downloads live between runs (partial files for resume, verified blobs for offline use):
/// <c>{root}/{org}--{name}/refs/{revision}</c> holds the commit a revision resolved to,
/// <c>snapshots/{commit}.json</c> the file list with sizes and hashes, <c>blobs/{hash}</c> the verified
/// content and <c>blobs/{hash}.incomplete</c> a partial download.
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

    /// <summary>The snapshot a revision resolved to when it was last seen online; null if never.</summary>
    public HubSnapshot? Load(string repoId, string revision)
    {
        var refPath = RefPath(repoId, revision);
        string commit;
        if (File.Exists(refPath))
            commit = File.ReadAllText(refPath).Trim();
        else if (revision.Length == 40 && revision.All(char.IsAsciiHexDigitLower))
            commit = revision;
        else
            return null;
        var manifest = SnapshotManifestPath(repoId, commit);
        if (!File.Exists(manifest))
            return null;
        var o = JsonNode.Parse(File.ReadAllText(manifest))!.AsObject();
        var files = o["files"]!.AsArray().Select(n => new HubFile(
            n!["path"]!.GetValue<string>(),
            n["size"]?.GetValue<long>(),
            n["sha256"]?.GetValue<string>(),
            n["blob_id"]?.GetValue<string>())).ToArray();
        return new HubSnapshot(o["repo"]!.GetValue<string>(), o["commit"]!.GetValue<string>(), files);
    }

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

    /// <summary>
    /// Places verified blobs under their repository paths in <paramref name="destination"/>: a hard link where the
    /// file system allows (no second copy of a large model), a copy otherwise.
    /// </summary>
    public void Materialize(HubSnapshot snapshot, IEnumerable<HubFile> files, string destination)
    {
        foreach (var f in files)
        {
            var blob = BlobPath(snapshot.RepoId, snapshot.Commit, f);
            if (!File.Exists(blob))
                throw new HubException(HubErrorKind.Offline, $"{HubModelReference.Scheme}{snapshot.RepoId}: {f.Path} (commit {snapshot.Commit}) is not downloaded yet ({blob} is missing); run with network access (unset HF_HUB_OFFLINE) to fetch it.");
            var target = Path.GetFullPath(Path.Combine(destination, f.Path));
            if (!target.StartsWith(Path.GetFullPath(destination), StringComparison.Ordinal))
                throw new HubException(HubErrorKind.Server, $"the hub listed a file outside the repository: \"{f.Path}\".");
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
