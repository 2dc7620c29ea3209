using System.Runtime.InteropServices;

namespace FineTune.Engine.Cuda;

// Values of cuDNN 9's backend (graph) API enums, each from the header cudnn_graph.h (cuDNN 9.6's text); only the
// members FineTune's attention graphs use. The members are the header's names without their CUDNN_ prefixes, so an
// error message that prints one can be searched in NVIDIA's documentation.

/// <summary>cudnnBackendDescriptorType_t (CUDNN_BACKEND_*_DESCRIPTOR), numbered in header order from 0.</summary>
internal enum CudnnDescriptorType
{
    Pointwise = 0, Convolution = 1, Engine = 2, EngineConfig = 3, EngineHeuristics = 4, ExecutionPlan = 5,
    IntermediateInfo = 6, KnobChoice = 7, KnobInfo = 8, LayoutInfo = 9, OperationConvolutionForward = 10,
    OperationConvolutionBackwardFilter = 11, OperationConvolutionBackwardData = 12, OperationPointwise = 13,
    OperationGenStats = 14, OperationGraph = 15, VariantPack = 16, Tensor = 17, Matmul = 18, OperationMatmul = 19,
    OperationBnFinalizeStatistics = 20, Reduction = 21, OperationReduction = 22, OperationBnBackwardWeights = 23,
    Resample = 24, OperationResampleForward = 25, OperationResampleBackward = 26, OperationConcat = 27,
    OperationSignal = 28, OperationNormForward = 29, OperationNormBackward = 30, OperationReshape = 31,
}

/// <summary>cudnnBackendAttributeName_t (CUDNN_ATTR_*).</summary>
internal enum CudnnAttribute
{
    POINTWISE_MODE = 0, POINTWISE_MATH_PREC = 1, POINTWISE_AXIS = 9,
    ENGINEHEUR_MODE = 200, ENGINEHEUR_OPERATION_GRAPH = 201, ENGINEHEUR_RESULTS = 202,
    ENGINECFG_ENGINE = 300, ENGINECFG_WORKSPACE_SIZE = 303,
    EXECUTION_PLAN_HANDLE = 400, EXECUTION_PLAN_ENGINE_CONFIG = 401, EXECUTION_PLAN_WORKSPACE_SIZE = 402,
    OPERATION_POINTWISE_PW_DESCRIPTOR = 750, OPERATION_POINTWISE_XDESC = 751, OPERATION_POINTWISE_BDESC = 752,
    OPERATION_POINTWISE_YDESC = 753, OPERATION_POINTWISE_ALPHA1 = 754, OPERATION_POINTWISE_ALPHA2 = 755,
    OPERATION_POINTWISE_TDESC = 758,
    OPERATIONGRAPH_HANDLE = 800, OPERATIONGRAPH_OPS = 801, OPERATIONGRAPH_ENGINE_GLOBAL_COUNT = 802,
    TENSOR_BYTE_ALIGNMENT = 900, TENSOR_DATA_TYPE = 901, TENSOR_DIMENSIONS = 902, TENSOR_STRIDES = 903,
    TENSOR_UNIQUE_ID = 906, TENSOR_IS_VIRTUAL = 907, TENSOR_IS_BY_VALUE = 908,
    VARIANT_PACK_UNIQUE_IDS = 1000, VARIANT_PACK_DATA_POINTERS = 1001, VARIANT_PACK_WORKSPACE = 1003,
    ENGINE_OPERATION_GRAPH = 1300, ENGINE_GLOBAL_INDEX = 1301,
    MATMUL_COMP_TYPE = 1500,
    OPERATION_MATMUL_ADESC = 1520, OPERATION_MATMUL_BDESC = 1521, OPERATION_MATMUL_CDESC = 1522, OPERATION_MATMUL_DESC = 1523,
    REDUCTION_OPERATOR = 1600, REDUCTION_COMP_TYPE = 1601,
    OPERATION_REDUCTION_XDESC = 1610, OPERATION_REDUCTION_YDESC = 1611, OPERATION_REDUCTION_DESC = 1612,
    OPERATION_RESHAPE_XDESC = 2200, OPERATION_RESHAPE_YDESC = 2201,
}

/// <summary>cudnnBackendAttributeType_t (CUDNN_TYPE_*), numbered in header order from 0.</summary>
internal enum CudnnAttributeType
{
    HANDLE = 0, DATA_TYPE = 1, BOOLEAN = 2, INT64 = 3, FLOAT = 4, DOUBLE = 5, VOID_PTR = 6, CONVOLUTION_MODE = 7,
    HEUR_MODE = 8, KNOB_TYPE = 9, NAN_PROPOGATION = 10, NUMERICAL_NOTE = 11, LAYOUT_TYPE = 12, ATTRIB_NAME = 13,
    POINTWISE_MODE = 14, BACKEND_DESCRIPTOR = 15, GENSTATS_MODE = 16, BN_FINALIZE_STATS_MODE = 17,
    REDUCTION_OPERATOR_TYPE = 18, BEHAVIOR_NOTE = 19, TENSOR_REORDERING_MODE = 20, RESAMPLE_MODE = 21,
    PADDING_MODE = 22, INT32 = 23, CHAR = 24,
}

/// <summary>cudnnDataType_t (CUDNN_DATA_*).</summary>
internal enum CudnnDataType { FLOAT = 0, DOUBLE = 1, HALF = 2, INT8 = 3, INT32 = 4, BFLOAT16 = 9, INT64 = 10, BOOLEAN = 11 }

/// <summary>cudnnPointwiseMode_t (CUDNN_POINTWISE_*).</summary>
internal enum CudnnPointwiseMode
{
    ADD = 0, MUL = 1, DIV = 6, SUB = 9, EXP = 13, LOG = 15, IDENTITY = 21,
    CMP_GE = 303, GEN_INDEX = 501, BINARY_SELECT = 601,
}

/// <summary>cudnnReduceTensorOp_t (CUDNN_REDUCE_TENSOR_*), the values CUDNN_ATTR_REDUCTION_OPERATOR takes.</summary>
internal enum CudnnReduction { ADD = 0, MAX = 3 }

/// <summary>cudnnBackendHeurMode_t (CUDNN_HEUR_MODE_*).</summary>
internal enum CudnnHeuristicMode { INSTANT = 0, B = 1, FALLBACK = 2, A = 3 }

/// <summary>
/// A cuDNN call failed. The message names the call, the descriptor and attribute being set, the status (number and
/// cudnnGetErrorString) and cuDNN's own last error string, which usually says why a graph is refused.
/// </summary>
public sealed class CudnnException(string message, int status) : CudaException(message)
{
    public int Status { get; } = status;
}

/// <summary>
/// libcudnn 9 (cudnn64_9.dll): the handle functions and the backend descriptor API (create, set/get attribute,
/// finalize, execute, destroy). The graph FineTune builds on it is <see cref="CudnnGraph"/>; its lowering,
/// <see cref="CudnnPlan"/>. Loaded on the first unpacked causal attention (CudaBackend.AttentionKernels); where it is
/// missing, the flash kernels run.
/// </summary>
internal sealed unsafe class Cudnn : IDisposable
{
    public const int StatusSuccess = 0;

    public static readonly string[] LibraryNames = OperatingSystem.IsWindows()
        ? ["cudnn64_9.dll"]
        : ["libcudnn.so.9", "libcudnn.so"];

    // The sub-libraries libcudnn.so.9 opens by name; loaded first from the directory of a library found by path, so
    // that a copy outside the loader's search path (a Python wheel's) finds its siblings.
    static readonly string[] SubLibraries =
        ["libcudnn_graph.so.9", "libcudnn_engines_precompiled.so.9", "libcudnn_engines_runtime_compiled.so.9",
         "libcudnn_heuristic.so.9", "libcudnn_ops.so.9", "libcudnn_cnn.so.9", "libcudnn_adv.so.9"];

    readonly NativeLibraryProbe _lib;
    readonly delegate* unmanaged<nuint> _getVersion;
    readonly delegate* unmanaged<int, byte*> _errorString;
    readonly delegate* unmanaged<byte*, nuint, void> _lastErrorString; // absent before 9.0
    readonly delegate* unmanaged<nint*, int> _create;
    readonly delegate* unmanaged<nint, int> _destroy;
    readonly delegate* unmanaged<nint, nint, int> _setStream;
    readonly delegate* unmanaged<int, nint*, int> _descCreate;
    readonly delegate* unmanaged<nint, int> _descDestroy;
    readonly delegate* unmanaged<nint, int, int, long, void*, int> _setAttribute;
    readonly delegate* unmanaged<nint, int, int, long, long*, void*, int> _getAttribute;
    readonly delegate* unmanaged<nint, int> _finalize;
    readonly delegate* unmanaged<nint, nint, nint, int> _execute;

    public nint Handle { get; }
    public string LibraryName => _lib.LoadedName;

    /// <summary>cudnnGetVersion: major·10000 + minor·100 + patch for cuDNN 9 (e.g. 90100 is 9.1.0).</summary>
    public long Version { get; }

    /// <summary>cudnnGetCudartVersion: the CUDA runtime cuDNN was built with (e.g. 12080), 0 when not exported.</summary>
    public long CudartVersion { get; }

    public string VersionText => $"{Version / 10000}.{Version / 100 % 100}.{Version % 100}";

    Cudnn(NativeLibraryProbe lib)
    {
        _lib = lib;
        _getVersion = (delegate* unmanaged<nuint>)lib.Export("cudnnGetVersion");
        _errorString = (delegate* unmanaged<int, byte*>)lib.Export("cudnnGetErrorString");
        _lastErrorString = (delegate* unmanaged<byte*, nuint, void>)lib.TryExport("cudnnGetLastErrorString");
        _create = (delegate* unmanaged<nint*, int>)lib.Export("cudnnCreate");
        _destroy = (delegate* unmanaged<nint, int>)lib.Export("cudnnDestroy");
        _setStream = (delegate* unmanaged<nint, nint, int>)lib.Export("cudnnSetStream");
        _descCreate = (delegate* unmanaged<int, nint*, int>)lib.Export("cudnnBackendCreateDescriptor");
        _descDestroy = (delegate* unmanaged<nint, int>)lib.Export("cudnnBackendDestroyDescriptor");
        _setAttribute = (delegate* unmanaged<nint, int, int, long, void*, int>)lib.Export("cudnnBackendSetAttribute");
        _getAttribute = (delegate* unmanaged<nint, int, int, long, long*, void*, int>)lib.Export("cudnnBackendGetAttribute");
        _finalize = (delegate* unmanaged<nint, int>)lib.Export("cudnnBackendFinalize");
        _execute = (delegate* unmanaged<nint, nint, nint, int>)lib.Export("cudnnBackendExecute");
        Version = (long)_getVersion();
        var cudart = (delegate* unmanaged<nuint>)lib.TryExport("cudnnGetCudartVersion");
        CudartVersion = cudart != null ? (long)cudart() : 0;
        // cuDNN 9 is a shim over sub-libraries: a mix of copies (a wheel's and the system's) fails here, named.
        var versionCheck = (delegate* unmanaged<int>)lib.TryExport("cudnnGraphVersionCheck");
        if (versionCheck != null) Check(versionCheck(), "cudnnGraphVersionCheck");
        nint h;
        Check(_create(&h), "cudnnCreate");
        Handle = h;
    }

    /// <summary>
    /// Loads cuDNN: <paramref name="path"/> when given, else the first of <see cref="LibraryNames"/> the loader
    /// finds, else the first of <see cref="FindLibraryFiles"/>. The caller's CUDA context must be current.
    /// </summary>
    public static Cudnn Load(string? path = null)
    {
        NativeLibraryProbe? lib;
        string tried;
        var preloaded = new List<string>();
        if (path is not null) lib = LoadFile(path, out tried, preloaded);
        else
        {
            lib = NativeLibraryProbe.TryLoad(LibraryNames, out tried);
            foreach (var file in lib is null ? FindLibraryFiles() : [])
            {
                lib = LoadFile(file, out var t, preloaded);
                tried += ", " + t;
                if (lib is not null) break;
            }
        }
        var dnn = new Cudnn(lib ?? throw new CudaUnavailableException($"no cuDNN 9: none of [{tried}] could be loaded"));
        dnn.Preloaded.AddRange(preloaded);
        return dnn;
    }

    // A wheel's cuDNN (site-packages/nvidia/cudnn/lib) finds its CUDA 12 dependencies in sibling wheels
    // (nvidia/cublas/lib, nvidia/cuda_nvrtc/lib; its runtime-compiled engines open NVRTC by name), which the loader
    // does not search; those are loaded first too, by path.
    static readonly (string Wheel, string File)[] WheelDependencies =
        [("cublas", "libcublasLt.so.12"), ("cublas", "libcublas.so.12"), ("cuda_nvrtc", "libnvrtc.so.12"), ("cuda_nvrtc", "libnvrtc-builtins.so.12")];

    /// <summary>Libraries loaded by path before the cuDNN file (its sub-libraries and a wheel's dependencies).</summary>
    public List<string> Preloaded { get; } = [];

    static NativeLibraryProbe? LoadFile(string path, out string tried, List<string>? preloaded = null)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        var wheels = Path.GetDirectoryName(Path.GetDirectoryName(dir)); // …/nvidia when dir is …/nvidia/cudnn/lib
        var candidates = WheelDependencies.Select(w => wheels is null ? "" : Path.Combine(wheels, w.Wheel, "lib", w.File))
            .Concat(SubLibraries.Select(sub => Path.Combine(dir, sub)));
        foreach (var p in candidates)
            if (p.Length > 0 && File.Exists(p) && NativeLibrary.TryLoad(p, out _)) preloaded?.Add(p);
        return NativeLibraryProbe.TryLoad([path], out tried);
    }

    /// <summary>
    /// libcudnn.so.9 files on this machine outside the loader's default search: the CUDA toolkit's and the Python
    /// wheels' (nvidia-cudnn-cu12, which PyTorch installs under site-packages/nvidia/cudnn/lib). Bounded globbing of
    /// the usual roots; nothing is searched recursively.
    /// </summary>
    public static List<string> FindLibraryFiles()
    {
        var found = new List<string>();
        if (OperatingSystem.IsWindows()) return found;
        void Add(string file) { if (File.Exists(file) && !found.Contains(file)) found.Add(file); }
        foreach (var dir in new[] { "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/aarch64-linux-gnu" })
            Add(Path.Combine(dir, "libcudnn.so.9"));
        var home = Environment.GetEnvironmentVariable("HOME");
        var roots = new List<string> { "/usr/lib", "/usr/local/lib", "/opt/conda/lib" };
        if (home is not null) roots.Add(Path.Combine(home, ".local", "lib"));
        var venv = Environment.GetEnvironmentVariable("VIRTUAL_ENV");
        if (venv is not null) roots.Add(Path.Combine(venv, "lib"));
        foreach (var root in roots)
        {
            if (!Directory.Exists(root)) continue;
            foreach (var py in Directory.EnumerateDirectories(root, "python3*"))
                foreach (var packages in new[] { "site-packages", "dist-packages" })
                    Add(Path.Combine(py, packages, "nvidia", "cudnn", "lib", "libcudnn.so.9"));
        }
        return found;
    }

    /// <summary>
    /// The files of cuDNN, cuBLAS and NVRTC mapped into this process (Linux, from /proc/self/maps): which copies the
    /// loader actually took, sub-libraries (opened lazily) included.
    /// </summary>
    public static List<string> MappedFiles()
    {
        const string maps = "/proc/self/maps";
        if (!File.Exists(maps)) return [];
        return File.ReadLines(maps)
            .Select(l => l.IndexOf('/') is int i and >= 0 ? l[i..] : "")
            .Where(p => Path.GetFileName(p) is var f && (f.StartsWith("libcudnn") || f.StartsWith("libnvrtc") || f.StartsWith("libcublas")))
            .Distinct().ToList();
    }

    /// <summary>
    /// Asks cuDNN to log to stderr (CUDNN_LOGERR_DBG=1, CUDNN_LOGWARN_DBG=1 and CUDNN_LOGDEST_DBG=stderr, and cuDNN 9's
    /// CUDNN_LOGLEVEL_DBG=2: errors and warnings) unless the caller set them. Level 3 (information) traces every API call,
    /// which makes each call ~1 ms slower (measured on the H200: a 0.02 ms attention took 0.8 ms with it). cuDNN reads them when it loads, through
    /// the C runtime's environment, which .NET's Environment.SetEnvironmentVariable does not reach on Linux.
    /// </summary>
    public static void EnableDiagnosticLogging()
    {
        foreach (var (name, value) in new[] { ("CUDNN_LOGERR_DBG", "1"), ("CUDNN_LOGWARN_DBG", "1"), ("CUDNN_LOGDEST_DBG", "stderr"), ("CUDNN_LOGLEVEL_DBG", "2") })
        {
            if (Environment.GetEnvironmentVariable(name) is not null) continue;
            Environment.SetEnvironmentVariable(name, value);
            if (!OperatingSystem.IsWindows()) SetEnv(name, value, 0);
        }
    }

    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetEnv([MarshalAs(UnmanagedType.LPUTF8Str)] string name, [MarshalAs(UnmanagedType.LPUTF8Str)] string value, int overwrite);

    public void SetStream(nint stream) => Check(_setStream(Handle, stream), "cudnnSetStream");

    public string StatusText(int status) => Marshal.PtrToStringUTF8((nint)_errorString(status)) ?? "";

    /// <summary>cudnnGetLastErrorString (cuDNN 9): the library's explanation of the most recent failure, or "".</summary>
    public string LastError()
    {
        if (_lastErrorString == null) return "";
        var buf = stackalloc byte[4096];
        buf[0] = 0;
        _lastErrorString(buf, 4096);
        return Marshal.PtrToStringUTF8((nint)buf) ?? "";
    }

    public CudnnException Error(int status, string what)
    {
        var last = LastError();
        return new CudnnException($"{what} failed: cuDNN status {status} {StatusText(status)}" +
            (last.Length > 0 ? $"; cuDNN says: {last.Trim()}" : ""), status);
    }

    public void Check(int status, string what)
    {
        if (status != StatusSuccess) throw Error(status, what);
    }

    // ---- backend descriptors ----

    public nint Create(CudnnDescriptorType type)
    {
        nint d;
        Check(_descCreate((int)type, &d), $"cudnnBackendCreateDescriptor({type})");
        return d;
    }

    public void Destroy(nint descriptor) { if (descriptor != 0) _descDestroy(descriptor); }

    public int TrySet(nint descriptor, CudnnAttribute name, CudnnAttributeType type, long count, void* values) =>
        _setAttribute(descriptor, (int)name, (int)type, count, values);

    /// <summary>cudnnBackendSetAttribute; <paramref name="what"/> names the descriptor (and tensor) for the error.</summary>
    public void Set(nint descriptor, string what, CudnnAttribute name, CudnnAttributeType type, long count, void* values) =>
        Check(_setAttribute(descriptor, (int)name, (int)type, count, values), $"cudnnBackendSetAttribute({what}, CUDNN_ATTR_{name}, CUDNN_TYPE_{type})");

    public void SetDescriptor(nint descriptor, string what, CudnnAttribute name, nint value) =>
        Set(descriptor, what, name, CudnnAttributeType.BACKEND_DESCRIPTOR, 1, &value);

    public void SetInt64(nint descriptor, string what, CudnnAttribute name, long value) =>
        Set(descriptor, what, name, CudnnAttributeType.INT64, 1, &value);

    public void SetInt64s(nint descriptor, string what, CudnnAttribute name, ReadOnlySpan<long> values)
    {
        fixed (long* p = values) Set(descriptor, what, name, CudnnAttributeType.INT64, values.Length, p);
    }

    public void SetDataType(nint descriptor, string what, CudnnAttribute name, CudnnDataType value)
    {
        int v = (int)value;
        Set(descriptor, what, name, CudnnAttributeType.DATA_TYPE, 1, &v);
    }

    /// <summary>CUDNN_TYPE_BOOLEAN is C's bool: one byte.</summary>
    public void SetBool(nint descriptor, string what, CudnnAttribute name, bool value)
    {
        byte v = value ? (byte)1 : (byte)0;
        Set(descriptor, what, name, CudnnAttributeType.BOOLEAN, 1, &v);
    }

    public int TryFinalize(nint descriptor) => _finalize(descriptor);

    public void Finalize(nint descriptor, string what) => Check(_finalize(descriptor), $"cudnnBackendFinalize({what})");

    public int TryGet(nint descriptor, CudnnAttribute name, CudnnAttributeType type, long requested, long* count, void* values) =>
        _getAttribute(descriptor, (int)name, (int)type, requested, count, values);

    public long GetInt64(nint descriptor, string what, CudnnAttribute name)
    {
        long v = 0, n = 0;
        Check(_getAttribute(descriptor, (int)name, (int)CudnnAttributeType.INT64, 1, &n, &v), $"cudnnBackendGetAttribute({what}, CUDNN_ATTR_{name})");
        return v;
    }

    public void Execute(nint plan, nint variantPack, string what) => Check(_execute(Handle, plan, variantPack), $"cudnnBackendExecute({what})");

    public void Dispose()
    {
        if (Handle != 0) _destroy(Handle);
    }
}
