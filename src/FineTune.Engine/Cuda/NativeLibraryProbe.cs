using System.Runtime.InteropServices;

namespace FineTune.Engine.Cuda;

/// <summary>Loads the first shared library of a list of candidate names and resolves its exports.</summary>
internal sealed class NativeLibraryProbe : IDisposable
{
    public nint Handle { get; }
    public string LoadedName { get; }

    NativeLibraryProbe(nint handle, string name) { Handle = handle; LoadedName = name; }

    /// <summary>Tries each name in order (the loader's search path applies); null when none loads.</summary>
    public static NativeLibraryProbe? TryLoad(IEnumerable<string> names, out string tried)
    {
        var list = names.ToList();
        tried = string.Join(", ", list);
        foreach (var name in list)
            if (NativeLibrary.TryLoad(name, out var h)) return new NativeLibraryProbe(h, name);
        return null;
    }

    public nint Export(string symbol) =>
        NativeLibrary.TryGetExport(Handle, symbol, out var p) ? p
            : throw new CudaException($"{LoadedName} has no export '{symbol}' (library too old for FineTune?)");

    public nint TryExport(string symbol) => NativeLibrary.TryGetExport(Handle, symbol, out var p) ? p : 0;

    public void Dispose() { /* Driver libraries stay loaded for the process lifetime, as the CUDA runtime does. */ }
}
