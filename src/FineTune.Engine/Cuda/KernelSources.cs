using System.Reflection;
using System.Security.Cryptography;
using System.Text;

namespace FineTune.Engine.Cuda;

/// <summary>
/// The CUDA C++ kernel sources embedded in this assembly (Cuda/Kernels/*.cu and *.cuh, one file per operation,
/// the llm.c way). Headers are handed to NVRTC in memory, so nothing is read from disk at run time.
/// </summary>
public sealed class KernelSources
{
    const string Prefix = "FineTune.Engine.Cuda.Kernels.";
    readonly Dictionary<string, string> _files;

    public KernelSources(IReadOnlyDictionary<string, string> files) => _files = new(files, StringComparer.Ordinal);

    /// <summary>The sources embedded in FineTune.Engine.</summary>
    public static KernelSources Embedded()
    {
        var asm = typeof(KernelSources).Assembly;
        var files = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var res in asm.GetManifestResourceNames())
        {
            if (!res.StartsWith(Prefix, StringComparison.Ordinal)) continue;
            using var s = asm.GetManifestResourceStream(res)!;
            using var r = new StreamReader(s, Encoding.UTF8);
            files[res[Prefix.Length..]] = r.ReadToEnd();
        }
        return new KernelSources(files);
    }

    /// <summary>Operation files (*.cu), each compiled to its own module.</summary>
    public IEnumerable<string> Programs => _files.Keys.Where(k => k.EndsWith(".cu", StringComparison.Ordinal)).Order(StringComparer.Ordinal);

    /// <summary>Shared headers (*.cuh) offered to every program.</summary>
    public IReadOnlyDictionary<string, string> Headers =>
        _files.Where(kv => kv.Key.EndsWith(".cuh", StringComparison.Ordinal)).ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);

    public string Source(string program) =>
        _files.TryGetValue(program, out var s) ? s : throw new CudaException($"no embedded kernel source '{program}'");

    /// <summary>
    /// Cache key for a compiled program: SHA-256 over the program's source, every header, the compiler options and
    /// the compiler version, so an edited kernel or a new NVRTC never reuses a stale CUBIN.
    /// </summary>
    public string Fingerprint(string program, IReadOnlyList<string> options, string compilerVersion)
    {
        var sb = new StringBuilder();
        sb.Append("program\0").Append(program).Append('\0').Append(Source(program)).Append('\0');
        foreach (var (name, text) in Headers.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            sb.Append("header\0").Append(name).Append('\0').Append(text).Append('\0');
        foreach (var o in options) sb.Append("option\0").Append(o).Append('\0');
        sb.Append("compiler\0").Append(compilerVersion);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString())));
    }
}
