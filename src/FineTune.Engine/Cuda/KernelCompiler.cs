using System.Diagnostics;

namespace FineTune.Engine.Cuda;

/// <summary>One program's ahead-of-time compile result.</summary>
public sealed record KernelCompileResult(string Program, int CubinBytes, double Seconds);

/// <summary>
/// Compiles every embedded kernel program with NVRTC for an architecture, without a GPU or driver:
/// NVRTC is a compiler library only. Used by the device checks (and by developers without a GPU) to catch
/// kernel compile errors early. <paramref name="only"/> (program names, e.g. decode.cu): just those.
/// </summary>
public static class KernelCompiler
{
    public static (string Library, string Version, IReadOnlyList<KernelCompileResult> Results) CompileAll(string architecture, KernelCache? cache = null, IReadOnlyCollection<string>? only = null)
    {
        var nvrtc = Nvrtc.Load();
        var sources = KernelSources.Embedded();
        IReadOnlyList<string> options = [$"--gpu-architecture={architecture}", "--std=c++17", "-default-device"];
        var results = new List<KernelCompileResult>();
        foreach (var program in sources.Programs)
        {
            if (only is not null && !only.Contains(program)) continue;
            var sw = Stopwatch.StartNew();
            var cubin = nvrtc.CompileToCubin(program, sources.Source(program), sources.Headers, options);
            if (cache is not null)
                cache.TryPut(sources.Fingerprint(program, options, $"{nvrtc.LibraryName} {nvrtc.Version.Major}.{nvrtc.Version.Minor}"), cubin);
            results.Add(new KernelCompileResult(program, cubin.Length, sw.Elapsed.TotalSeconds));
        }
        return (nvrtc.LibraryName, $"{nvrtc.Version.Major}.{nvrtc.Version.Minor}", results);
    }
}
