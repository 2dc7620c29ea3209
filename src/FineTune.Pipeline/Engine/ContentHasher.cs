using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace FineTune.Pipeline.Engine;

/// <summary>One file of a hashed tree: path relative to the tree root with '/' separators.</summary>
public sealed record FileHash(string Path, long Size, string Sha256);

/// <summary>
/// SHA-256 of files and directory trees. A tree's hash covers each file's relative path, size and content hash
/// (sorted by path), never timestamps or the tree's own location. Hashes are remembered in a local index keyed by
/// absolute path + size + mtime, so an unchanged multi-GB model is not re-read on every build; a file whose size
/// or mtime differs from the index is hashed again.
/// </summary>
public sealed class ContentHasher
{
    private readonly string? _indexPath;
    private readonly Dictionary<string, IndexEntry> _index;
    private readonly bool _trustIndex;
    private bool _dirty;

    private sealed record IndexEntry(long Size, long MtimeTicks, string Sha256);

    /// <param name="indexPath">Where the index lives (.finetune/index.json); null keeps it in memory only.</param>
    /// <param name="trustIndex">False re-reads every file (`run --verify`).</param>
    public ContentHasher(string? indexPath, bool trustIndex = true)
    {
        _indexPath = indexPath;
        _trustIndex = trustIndex;
        _index = Load(indexPath);
    }

    /// <summary>Bytes hashed from disk by this instance (0 on a warm no-op build).</summary>
    public long BytesHashed { get; private set; }

    public string HashFile(string path)
    {
        var info = new FileInfo(path);
        var full = info.FullName;
        var mtime = info.LastWriteTimeUtc.Ticks;
        if (_trustIndex && _index.TryGetValue(full, out var e) && e.Size == info.Length && e.MtimeTicks == mtime)
            return e.Sha256;
        string sha;
        using (var stream = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan))
            sha = Convert.ToHexStringLower(SHA256.HashData(stream));
        BytesHashed += info.Length;
        _index[full] = new IndexEntry(info.Length, mtime, sha);
        _dirty = true;
        return sha;
    }

    /// <summary>Records the hash of a file known without reading it (a file just renamed into the cache).</summary>
    public void Remember(string path, string sha256)
    {
        var info = new FileInfo(path);
        _index[info.FullName] = new IndexEntry(info.Length, info.LastWriteTimeUtc.Ticks, sha256);
        _dirty = true;
    }

    /// <summary>Drops index entries under a directory that no longer exists.</summary>
    public void Forget(string directory)
    {
        var prefix = Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar;
        foreach (var key in _index.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).ToList())
            _index.Remove(key);
        _dirty = true;
    }

    /// <summary>Drops entries of files that no longer exist (`finetune clean`).</summary>
    public void Prune()
    {
        foreach (var key in _index.Keys.Where(k => !File.Exists(k)).ToList())
            _index.Remove(key);
        _dirty = true;
    }

    /// <summary>Every file under <paramref name="root"/>, sorted by relative path (ordinal).</summary>
    public IReadOnlyList<FileHash> HashTree(string root)
    {
        var files = Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories)
            .Select(f => (Rel: Path.GetRelativePath(root, f).Replace('\\', '/'), Full: f))
            .OrderBy(f => f.Rel, StringComparer.Ordinal)
            .ToList();
        return files.Select(f => new FileHash(f.Rel, new FileInfo(f.Full).Length, HashFile(f.Full))).ToArray();
    }

    /// <summary>SHA-256 over "path\nsize\nsha256\n" of each file in order: the identity of a directory's content.</summary>
    public static string TreeHash(IEnumerable<FileHash> files)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var f in files)
            h.AppendData(Encoding.UTF8.GetBytes($"{f.Path}\n{f.Size}\n{f.Sha256}\n"));
        return Convert.ToHexStringLower(h.GetHashAndReset());
    }

    /// <summary>Content hash of a file (its SHA-256) or a directory (its <see cref="TreeHash"/>).</summary>
    public string HashPath(string path) =>
        Directory.Exists(path) ? "tree:" + TreeHash(HashTree(path)) : HashFile(path);

    public static string Sha256Hex(string text) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));

    public void Save()
    {
        if (!_dirty || _indexPath is null) return;
        var doc = _index.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .ToDictionary(kv => kv.Key, kv => new[] { kv.Value.Size.ToString(), kv.Value.MtimeTicks.ToString(), kv.Value.Sha256 });
        AtomicFile.WriteAllText(_indexPath, JsonSerializer.Serialize(doc));
        _dirty = false;
    }

    private static Dictionary<string, IndexEntry> Load(string? path)
    {
        var index = new Dictionary<string, IndexEntry>(StringComparer.Ordinal);
        if (path is null || !File.Exists(path)) return index;
        try
        {
            var doc = JsonSerializer.Deserialize<Dictionary<string, string[]>>(File.ReadAllText(path));
            // An entry that is not [size, mtime, sha256] is dropped: the file is hashed again.
            foreach (var (k, v) in doc ?? [])
                if (v is [var size, var mtime, { Length: 64 } sha] && long.TryParse(size, out var s) && long.TryParse(mtime, out var m)
                    && sha.All(char.IsAsciiHexDigitLower))
                    index[k] = new IndexEntry(s, m, sha);
        }
        catch (JsonException)
        {
            // A damaged index only costs re-hashing; it is rebuilt on the next save.
        }
        return index;
    }
}

/// <summary>
/// Write to a temporary sibling <c>{file}.{pid}.{guid}.tmp</c>, then rename over the target: readers see the old or the
/// new file, never half. A writer killed in between leaves its temp file; <see cref="SweepStale"/> removes those.
/// </summary>
public static class AtomicFile
{
    public static void WriteAllText(string path, string text)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var tmp = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            File.WriteAllText(tmp, text, new UTF8Encoding(false));
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    /// <summary>Deletes the temp files of <paramref name="path"/> whose writer process no longer runs.</summary>
    public static void SweepStale(string path)
    {
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(dir)) return;
        var prefix = Path.GetFileName(full) + ".";
        foreach (var tmp in Directory.EnumerateFiles(dir, prefix + "*.tmp"))
        {
            var middle = Path.GetFileName(tmp)[prefix.Length..^".tmp".Length].Split('.'); // {pid}.{guid}
            if (middle is not [var pid, { Length: 32 }] || !int.TryParse(pid, out var id) || IsRunning(id)) continue;
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            using var _ = System.Diagnostics.Process.GetProcessById(pid);
            return true;
        }
        catch (ArgumentException)
        {
            return false; // no such process
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }
}
