using System.Runtime.InteropServices;
using System.Text;

namespace FineTune.Engine.Cuda;

/// <summary>
/// NVRTC, the CUDA run-time compiler, probed by name so CUDA 13, 12 and 11 installs all work.
/// Compiles CUDA C++ straight to a CUBIN for one architecture (no PTX JIT at module load).
/// </summary>
internal sealed unsafe class Nvrtc
{
    public static readonly string[] LibraryNames = OperatingSystem.IsWindows()
        ? ["nvrtc64_130_0.dll", "nvrtc64_120_0.dll", "nvrtc64_112_0.dll"]
        : ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"];

    readonly NativeLibraryProbe _lib;
    readonly delegate* unmanaged<int, byte*> _getErrorString;
    readonly delegate* unmanaged<int*, int*, int> _version;
    readonly delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, int> _create;
    readonly delegate* unmanaged<nint*, int> _destroy;
    readonly delegate* unmanaged<nint, int, byte**, int> _compile;
    readonly delegate* unmanaged<nint, nuint*, int> _logSize;
    readonly delegate* unmanaged<nint, byte*, int> _log;
    readonly delegate* unmanaged<nint, nuint*, int> _cubinSize;
    readonly delegate* unmanaged<nint, byte*, int> _cubin;

    public string LibraryName => _lib.LoadedName;
    public (int Major, int Minor) Version { get; }

    Nvrtc(NativeLibraryProbe lib)
    {
        _lib = lib;
        _getErrorString = (delegate* unmanaged<int, byte*>)lib.Export("nvrtcGetErrorString");
        _version = (delegate* unmanaged<int*, int*, int>)lib.Export("nvrtcVersion");
        _create = (delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, int>)lib.Export("nvrtcCreateProgram");
        _destroy = (delegate* unmanaged<nint*, int>)lib.Export("nvrtcDestroyProgram");
        _compile = (delegate* unmanaged<nint, int, byte**, int>)lib.Export("nvrtcCompileProgram");
        _logSize = (delegate* unmanaged<nint, nuint*, int>)lib.Export("nvrtcGetProgramLogSize");
        _log = (delegate* unmanaged<nint, byte*, int>)lib.Export("nvrtcGetProgramLog");
        _cubinSize = (delegate* unmanaged<nint, nuint*, int>)lib.Export("nvrtcGetCUBINSize");
        _cubin = (delegate* unmanaged<nint, byte*, int>)lib.Export("nvrtcGetCUBIN");
        int major, minor;
        Check(_version(&major, &minor), "nvrtcVersion");
        Version = (major, minor);
    }

    public static Nvrtc Load() =>
        new(NativeLibraryProbe.TryLoad(LibraryNames, out var tried)
            ?? throw new CudaUnavailableException($"no NVRTC: none of [{tried}] could be loaded (install the CUDA toolkit's nvrtc library)"));

    void Check(int rc, string call)
    {
        if (rc != 0) throw new CudaException($"{call} failed: NVRTC error {rc}: {Marshal.PtrToStringUTF8((nint)_getErrorString(rc))}");
    }

    /// <summary>
    /// Compiles <paramref name="source"/> (with in-memory headers) for <c>sm_{arch}</c> and returns the CUBIN.
    /// A compile error throws with the compiler's log, which names the file and line.
    /// </summary>
    public byte[] CompileToCubin(string name, string source, IReadOnlyDictionary<string, string> headers, IReadOnlyList<string> options)
    {
        var alloc = new List<nint>();
        nint Utf8(string s) { var p = Marshal.StringToCoTaskMemUTF8(s); alloc.Add(p); return p; }
        try
        {
            var hdrSrc = stackalloc byte*[Math.Max(1, headers.Count)];
            var hdrName = stackalloc byte*[Math.Max(1, headers.Count)];
            int i = 0;
            foreach (var (hName, hSrc) in headers) { hdrName[i] = (byte*)Utf8(hName); hdrSrc[i] = (byte*)Utf8(hSrc); i++; }
            nint prog;
            Check(_create(&prog, (byte*)Utf8(source), (byte*)Utf8(name), headers.Count, hdrSrc, hdrName), "nvrtcCreateProgram");
            try
            {
                var opts = stackalloc byte*[Math.Max(1, options.Count)];
                for (int k = 0; k < options.Count; k++) opts[k] = (byte*)Utf8(options[k]);
                int rc = _compile(prog, options.Count, opts);
                string log = ReadLog(prog);
                if (rc != 0)
                    throw new CudaException($"NVRTC could not compile kernel source '{name}' ({string.Join(' ', options)}):\n{log}");
                nuint size;
                Check(_cubinSize(prog, &size), "nvrtcGetCUBINSize");
                var cubin = new byte[(int)size];
                fixed (byte* p = cubin) Check(_cubin(prog, p), "nvrtcGetCUBIN");
                return cubin;
            }
            finally { _destroy(&prog); }
        }
        finally { foreach (var p in alloc) Marshal.FreeCoTaskMem(p); }
    }

    string ReadLog(nint prog)
    {
        nuint size;
        if (_logSize(prog, &size) != 0 || size <= 1) return "";
        var buf = new byte[(int)size];
        fixed (byte* p = buf) _log(prog, p);
        return Encoding.UTF8.GetString(buf, 0, buf.Length - 1);
    }
}
