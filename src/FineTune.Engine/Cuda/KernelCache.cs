namespace FineTune.Engine.Cuda;

/// <summary>
/// On-disk cache of compiled kernels: <c>&lt;dir&gt;/&lt;fingerprint&gt;.cubin</c>, written to a temporary file and renamed
/// so a killed process never leaves a truncated CUBIN behind. Default directory: $FINETUNE_KERNEL_CACHE, else
/// ~/.cache/finetune/kernels.
/// </summary>
public sealed class KernelCache(string directory)
{
    public string Directory { get; } = directory;

    public static string DefaultDirectory()
    {
        var env = Environment.GetEnvironmentVariable("FINETUNE_KERNEL_CACHE");
        if (!string.IsNullOrEmpty(env)) return env;
        var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        if (string.IsNullOrEmpty(home)) home = Path.GetTempPath();
        return Path.Combine(home, ".cache", "finetune", "kernels");
    }

    public string PathFor(string fingerprint) => Path.Combine(Directory, fingerprint + ".cubin");

    public byte[]? TryGet(string fingerprint)
    {
        var p = PathFor(fingerprint);
        try { return File.Exists(p) ? File.ReadAllBytes(p) : null; }
        catch (IOException) { return null; }
    }

    /// <summary>Stores a CUBIN; a cache that cannot be written (read-only home) is not an error, only slower next time.</summary>
    public bool TryPut(string fingerprint, byte[] cubin)
    {
        try
        {
            System.IO.Directory.CreateDirectory(Directory);
            var final = PathFor(fingerprint);
            var tmp = final + "." + Environment.ProcessId + "." + Guid.NewGuid().ToString("N") + ".tmp";
            File.WriteAllBytes(tmp, cubin);
            File.Move(tmp, final, overwrite: true);
            return true;
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    /// <summary>Returns the cached CUBIN or compiles it (and stores it). <paramref name="compiled"/> says which happened.</summary>
    public byte[] GetOrCompile(string fingerprint, Func<byte[]> compile, out bool compiled)
    {
        var hit = TryGet(fingerprint);
        if (hit is { Length: > 0 }) { compiled = false; return hit; }
        var cubin = compile();
        TryPut(fingerprint, cubin);
        compiled = true;
        return cubin;
    }
}
