using System.Runtime.InteropServices;

namespace FineTune.Engine.Cuda;

/// <summary>
/// The CUDA driver API (libcuda.so.1) through function pointers resolved at load time, so a machine
/// without the driver fails with <see cref="CudaUnavailableException"/> instead of a missing-library crash.
/// Every call goes through <see cref="Check"/>, which puts the driver's own error name and string in the exception.
/// </summary>
internal sealed unsafe class CudaDriver
{
    public const int CUDA_SUCCESS = 0;
    public const int CUDA_ERROR_OUT_OF_MEMORY = 2;
    public const int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
    public const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
    public const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
    public const int CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;
    public const int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
    public const int CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 9;

    public static readonly string[] LibraryNames = OperatingSystem.IsWindows() ? ["nvcuda.dll"] : ["libcuda.so.1", "libcuda.so"];

    readonly NativeLibraryProbe _lib;
    public string LibraryName => _lib.LoadedName;

    readonly delegate* unmanaged<uint, int> _cuInit;
    readonly delegate* unmanaged<int*, int> _cuDriverGetVersion;
    readonly delegate* unmanaged<int*, int> _cuDeviceGetCount;
    readonly delegate* unmanaged<int*, int, int> _cuDeviceGet;
    readonly delegate* unmanaged<byte*, int, int, int> _cuDeviceGetName;
    readonly delegate* unmanaged<int*, int, int, int> _cuDeviceGetAttribute;
    readonly delegate* unmanaged<nuint*, int, int> _cuDeviceTotalMem;
    readonly delegate* unmanaged<nint*, int, int> _cuDevicePrimaryCtxRetain;
    readonly delegate* unmanaged<int, int> _cuDevicePrimaryCtxRelease;
    readonly delegate* unmanaged<nint, int> _cuCtxSetCurrent;
    readonly delegate* unmanaged<int> _cuCtxSynchronize;
    readonly delegate* unmanaged<nint*, uint, int> _cuStreamCreate;
    readonly delegate* unmanaged<nint, int> _cuStreamDestroy;
    readonly delegate* unmanaged<nint, int> _cuStreamSynchronize;
    readonly delegate* unmanaged<nint, int> _cuStreamQuery;
    readonly delegate* unmanaged<ulong*, nuint, int> _cuMemAlloc;
    readonly delegate* unmanaged<ulong, int> _cuMemFree;
    readonly delegate* unmanaged<nuint*, nuint*, int> _cuMemGetInfo;
    readonly delegate* unmanaged<ulong, void*, nuint, nint, int> _cuMemcpyHtoDAsync;
    readonly delegate* unmanaged<void*, ulong, nuint, nint, int> _cuMemcpyDtoHAsync;
    readonly delegate* unmanaged<ulong, ulong, nuint, nint, int> _cuMemcpyDtoDAsync;
    readonly delegate* unmanaged<ulong, byte, nuint, nint, int> _cuMemsetD8Async;
    readonly delegate* unmanaged<ulong, uint, nuint, nint, int> _cuMemsetD32Async;
    readonly delegate* unmanaged<nint*, void*, int> _cuModuleLoadData;
    readonly delegate* unmanaged<nint, int> _cuModuleUnload;
    readonly delegate* unmanaged<nint*, nint, byte*, int> _cuModuleGetFunction;
    readonly delegate* unmanaged<nint, int, int, int> _cuFuncSetAttribute;
    readonly delegate* unmanaged<int*, int, nint, int> _cuFuncGetAttribute;
    readonly delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int> _cuLaunchKernel;
    readonly delegate* unmanaged<LaunchConfig*, nint, void**, void**, int> _cuLaunchKernelEx;
    readonly delegate* unmanaged<int*, nint, int, nuint, int> _cuOccupancyMaxActiveBlocksPerMultiprocessor;
    readonly delegate* unmanaged<nint*, uint, int> _cuEventCreate;
    readonly delegate* unmanaged<nint, nint, int> _cuEventRecord;
    readonly delegate* unmanaged<nint, int> _cuEventSynchronize;
    readonly delegate* unmanaged<float*, nint, nint, int> _cuEventElapsedTime;
    readonly delegate* unmanaged<nint, int> _cuEventDestroy;
    readonly delegate* unmanaged<int, byte**, int> _cuGetErrorString;
    // CUDA graphs (null where the driver lacks them: graphs are then off).
    readonly delegate* unmanaged<nint, int, int> _cuStreamBeginCapture;
    readonly delegate* unmanaged<nint, nint*, int> _cuStreamEndCapture;
    readonly delegate* unmanaged<nint*, nint, ulong, int> _cuGraphInstantiateWithFlags;
    readonly delegate* unmanaged<nint, nint, int> _cuGraphLaunch;
    readonly delegate* unmanaged<nint, int> _cuGraphExecDestroy;
    readonly delegate* unmanaged<nint, int> _cuGraphDestroy;
    readonly delegate* unmanaged<int, byte**, int> _cuGetErrorName;

    CudaDriver(NativeLibraryProbe lib)
    {
        _lib = lib;
        _cuInit = (delegate* unmanaged<uint, int>)lib.Export("cuInit");
        _cuDriverGetVersion = (delegate* unmanaged<int*, int>)lib.Export("cuDriverGetVersion");
        _cuDeviceGetCount = (delegate* unmanaged<int*, int>)lib.Export("cuDeviceGetCount");
        _cuDeviceGet = (delegate* unmanaged<int*, int, int>)lib.Export("cuDeviceGet");
        _cuDeviceGetName = (delegate* unmanaged<byte*, int, int, int>)lib.Export("cuDeviceGetName");
        _cuDeviceGetAttribute = (delegate* unmanaged<int*, int, int, int>)lib.Export("cuDeviceGetAttribute");
        _cuDeviceTotalMem = (delegate* unmanaged<nuint*, int, int>)lib.Export("cuDeviceTotalMem_v2");
        _cuDevicePrimaryCtxRetain = (delegate* unmanaged<nint*, int, int>)lib.Export("cuDevicePrimaryCtxRetain");
        _cuDevicePrimaryCtxRelease = (delegate* unmanaged<int, int>)lib.Export("cuDevicePrimaryCtxRelease_v2");
        _cuCtxSetCurrent = (delegate* unmanaged<nint, int>)lib.Export("cuCtxSetCurrent");
        _cuCtxSynchronize = (delegate* unmanaged<int>)lib.Export("cuCtxSynchronize");
        _cuStreamCreate = (delegate* unmanaged<nint*, uint, int>)lib.Export("cuStreamCreate");
        _cuStreamDestroy = (delegate* unmanaged<nint, int>)lib.Export("cuStreamDestroy_v2");
        _cuStreamSynchronize = (delegate* unmanaged<nint, int>)lib.Export("cuStreamSynchronize");
        _cuStreamQuery = (delegate* unmanaged<nint, int>)lib.Export("cuStreamQuery");
        _cuMemAlloc = (delegate* unmanaged<ulong*, nuint, int>)lib.Export("cuMemAlloc_v2");
        _cuMemFree = (delegate* unmanaged<ulong, int>)lib.Export("cuMemFree_v2");
        _cuMemGetInfo = (delegate* unmanaged<nuint*, nuint*, int>)lib.Export("cuMemGetInfo_v2");
        _cuMemcpyHtoDAsync = (delegate* unmanaged<ulong, void*, nuint, nint, int>)lib.Export("cuMemcpyHtoDAsync_v2");
        _cuMemcpyDtoHAsync = (delegate* unmanaged<void*, ulong, nuint, nint, int>)lib.Export("cuMemcpyDtoHAsync_v2");
        _cuMemcpyDtoDAsync = (delegate* unmanaged<ulong, ulong, nuint, nint, int>)lib.Export("cuMemcpyDtoDAsync_v2");
        _cuMemsetD8Async = (delegate* unmanaged<ulong, byte, nuint, nint, int>)lib.Export("cuMemsetD8Async");
        _cuMemsetD32Async = (delegate* unmanaged<ulong, uint, nuint, nint, int>)lib.Export("cuMemsetD32Async");
        _cuModuleLoadData = (delegate* unmanaged<nint*, void*, int>)lib.Export("cuModuleLoadData");
        _cuModuleUnload = (delegate* unmanaged<nint, int>)lib.Export("cuModuleUnload");
        _cuModuleGetFunction = (delegate* unmanaged<nint*, nint, byte*, int>)lib.Export("cuModuleGetFunction");
        _cuFuncSetAttribute = (delegate* unmanaged<nint, int, int, int>)lib.Export("cuFuncSetAttribute");
        _cuFuncGetAttribute = (delegate* unmanaged<int*, int, nint, int>)lib.Export("cuFuncGetAttribute");
        _cuLaunchKernel = (delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int>)lib.Export("cuLaunchKernel");
        _cuLaunchKernelEx = (delegate* unmanaged<LaunchConfig*, nint, void**, void**, int>)lib.TryExport("cuLaunchKernelEx");
        _cuOccupancyMaxActiveBlocksPerMultiprocessor =
            (delegate* unmanaged<int*, nint, int, nuint, int>)lib.TryExport("cuOccupancyMaxActiveBlocksPerMultiprocessor");
        _cuEventCreate = (delegate* unmanaged<nint*, uint, int>)lib.Export("cuEventCreate");
        _cuEventRecord = (delegate* unmanaged<nint, nint, int>)lib.Export("cuEventRecord");
        _cuEventSynchronize = (delegate* unmanaged<nint, int>)lib.Export("cuEventSynchronize");
        // CUDA 12.8 added cuEventElapsedTime_v2; older drivers only have the plain name.
        var elapsed = lib.TryExport("cuEventElapsedTime_v2");
        _cuEventElapsedTime = (delegate* unmanaged<float*, nint, nint, int>)(elapsed != 0 ? elapsed : lib.Export("cuEventElapsedTime"));
        _cuEventDestroy = (delegate* unmanaged<nint, int>)lib.Export("cuEventDestroy_v2");
        _cuGetErrorString = (delegate* unmanaged<int, byte**, int>)lib.Export("cuGetErrorString");
        _cuGetErrorName = (delegate* unmanaged<int, byte**, int>)lib.Export("cuGetErrorName");
        // cuda.h maps cuStreamBeginCapture to its _v2 (with a capture mode) since CUDA 10.1.
        var begin = lib.TryExport("cuStreamBeginCapture_v2");
        _cuStreamBeginCapture = (delegate* unmanaged<nint, int, int>)(begin != 0 ? begin : lib.TryExport("cuStreamBeginCapture"));
        _cuStreamEndCapture = (delegate* unmanaged<nint, nint*, int>)lib.TryExport("cuStreamEndCapture");
        _cuGraphInstantiateWithFlags = (delegate* unmanaged<nint*, nint, ulong, int>)lib.TryExport("cuGraphInstantiateWithFlags");
        _cuGraphLaunch = (delegate* unmanaged<nint, nint, int>)lib.TryExport("cuGraphLaunch");
        _cuGraphExecDestroy = (delegate* unmanaged<nint, int>)lib.TryExport("cuGraphExecDestroy");
        _cuGraphDestroy = (delegate* unmanaged<nint, int>)lib.TryExport("cuGraphDestroy");
    }

    /// <summary>Loads libcuda and runs cuInit; throws <see cref="CudaUnavailableException"/> when there is no driver or no device.</summary>
    public static CudaDriver Load() => Load(LibraryNames);

    internal static CudaDriver Load(IEnumerable<string> libraryNames)
    {
        var lib = NativeLibraryProbe.TryLoad(libraryNames, out var tried)
            ?? throw new CudaUnavailableException($"no CUDA driver: none of [{tried}] could be loaded");
        var d = new CudaDriver(lib);
        int rc = d._cuInit(0);
        if (rc != CUDA_SUCCESS) throw new CudaUnavailableException($"cuInit failed: {d.Describe(rc)}");
        int n;
        rc = d._cuDeviceGetCount(&n);
        if (rc != CUDA_SUCCESS) throw new CudaUnavailableException($"cuDeviceGetCount failed: {d.Describe(rc)}");
        if (n == 0) throw new CudaUnavailableException("the CUDA driver reports no GPU");
        return d;
    }

    public string Describe(int rc)
    {
        byte* name = null, text = null;
        _cuGetErrorName(rc, &name);
        _cuGetErrorString(rc, &text);
        var n = name != null ? Marshal.PtrToStringUTF8((nint)name) : null;
        var t = text != null ? Marshal.PtrToStringUTF8((nint)text) : null;
        return $"{n ?? "CUDA_ERROR"} ({rc}): {t ?? "unknown error"}";
    }

    public void Check(int rc, string call)
    {
        if (rc != CUDA_SUCCESS) throw new CudaException($"{call} failed: {Describe(rc)}");
    }

    public int DriverVersion { get { int v; Check(_cuDriverGetVersion(&v), "cuDriverGetVersion"); return v; } }
    public int DeviceCount { get { int n; Check(_cuDeviceGetCount(&n), "cuDeviceGetCount"); return n; } }

    public int DeviceGet(int ordinal) { int d; Check(_cuDeviceGet(&d, ordinal), "cuDeviceGet"); return d; }

    public string DeviceName(int device)
    {
        var buf = stackalloc byte[256];
        Check(_cuDeviceGetName(buf, 256, device), "cuDeviceGetName");
        return Marshal.PtrToStringUTF8((nint)buf) ?? "";
    }

    public int Attribute(int device, int attribute) { int v; Check(_cuDeviceGetAttribute(&v, attribute, device), "cuDeviceGetAttribute"); return v; }
    public long TotalMemory(int device) { nuint b; Check(_cuDeviceTotalMem(&b, device), "cuDeviceTotalMem"); return (long)b; }
    public nint PrimaryContextRetain(int device) { nint c; Check(_cuDevicePrimaryCtxRetain(&c, device), "cuDevicePrimaryCtxRetain"); return c; }
    public void PrimaryContextRelease(int device) => Check(_cuDevicePrimaryCtxRelease(device), "cuDevicePrimaryCtxRelease");
    public void SetCurrent(nint ctx) => Check(_cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
    public void ContextSynchronize() => Check(_cuCtxSynchronize(), "cuCtxSynchronize");
    public nint StreamCreate() { nint s; Check(_cuStreamCreate(&s, 1 /* CU_STREAM_NON_BLOCKING */), "cuStreamCreate"); return s; }
    public void StreamDestroy(nint s) => Check(_cuStreamDestroy(s), "cuStreamDestroy");
    public void StreamSynchronize(nint s) => Check(_cuStreamSynchronize(s), "cuStreamSynchronize");
    /// <summary>True when everything queued on the stream has finished (CUDA_ERROR_NOT_READY, 600: not yet).</summary>
    public bool StreamDone(nint s) { int rc = _cuStreamQuery(s); if (rc == 600) return false; Check(rc, "cuStreamQuery"); return true; }

    /// <summary>Raw allocation; returns the CUresult so the caching allocator can react to out-of-memory.</summary>
    public int TryMemAlloc(long bytes, out ulong ptr) { ulong p; int rc = _cuMemAlloc(&p, (nuint)bytes); ptr = p; return rc; }
    public void MemFree(ulong ptr) => Check(_cuMemFree(ptr), "cuMemFree");
    public int TryFree(ulong ptr) => _cuMemFree(ptr);
    public (long Free, long Total) MemInfo() { nuint f, t; Check(_cuMemGetInfo(&f, &t), "cuMemGetInfo"); return ((long)f, (long)t); }

    public void CopyHtoD(ulong dst, void* src, long bytes, nint stream) => Check(_cuMemcpyHtoDAsync(dst, src, (nuint)bytes, stream), "cuMemcpyHtoDAsync");
    public void CopyDtoH(void* dst, ulong src, long bytes, nint stream) => Check(_cuMemcpyDtoHAsync(dst, src, (nuint)bytes, stream), "cuMemcpyDtoHAsync");
    public void CopyDtoD(ulong dst, ulong src, long bytes, nint stream) => Check(_cuMemcpyDtoDAsync(dst, src, (nuint)bytes, stream), "cuMemcpyDtoDAsync");
    public void MemsetD8(ulong dst, byte value, long count, nint stream) => Check(_cuMemsetD8Async(dst, value, (nuint)count, stream), "cuMemsetD8Async");
    public void MemsetD32(ulong dst, uint value, long count, nint stream) => Check(_cuMemsetD32Async(dst, value, (nuint)count, stream), "cuMemsetD32Async");

    public nint ModuleLoadData(byte[] image)
    {
        nint m;
        fixed (byte* p = image) Check(_cuModuleLoadData(&m, p), "cuModuleLoadData");
        return m;
    }

    public void ModuleUnload(nint module) => Check(_cuModuleUnload(module), "cuModuleUnload");

    public nint ModuleGetFunction(nint module, string name)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(name + "\0");
        nint f;
        fixed (byte* p = bytes) Check(_cuModuleGetFunction(&f, module, p), $"cuModuleGetFunction('{name}')");
        return f;
    }

    public void FuncSetAttribute(nint f, int attribute, int value) => Check(_cuFuncSetAttribute(f, attribute, value), "cuFuncSetAttribute");

    public int FuncGetAttribute(nint f, int attribute)
    {
        int value;
        Check(_cuFuncGetAttribute(&value, attribute, f), "cuFuncGetAttribute");
        return value;
    }

    public int LaunchKernel(nint f, uint gx, uint gy, uint gz, uint bx, uint by, uint bz, uint smem, nint stream, void** args) =>
        _cuLaunchKernel(f, gx, gy, gz, bx, by, bz, smem, stream, args, null);

    /// <summary>Whether the driver has cuLaunchKernelEx (CUDA 12+), which programmatic dependent launch needs.</summary>
    public bool HasLaunchEx => _cuLaunchKernelEx != null;

    // CUlaunchConfig and one CUlaunchAttribute (id, padding to 8 bytes, a 64-byte value union) as cuda.h lays them out.
    [StructLayout(LayoutKind.Sequential)]
    struct LaunchConfig
    {
        public uint GridX, GridY, GridZ, BlockX, BlockY, BlockZ, SharedBytes;
        public nint Stream;
        public LaunchAttribute* Attrs;
        public uint NumAttrs;
    }

    [StructLayout(LayoutKind.Sequential, Size = 72)]
    struct LaunchAttribute
    {
        public int Id;
        public int Pad;
        public int Value; // the union's first int: programmaticStreamSerializationAllowed
    }

    const int LaunchAttributeCooperative = 2; // CU_LAUNCH_ATTRIBUTE_COOPERATIVE
    const int LaunchAttributeProgrammaticStreamSerialization = 6; // CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION

    /// <summary>
    /// A launch that may begin before the previous kernel on the stream has finished (programmatic dependent launch):
    /// the kernel must execute griddepcontrol.wait before it reads anything the previous kernel writes.
    /// </summary>
    public int LaunchKernelDependent(nint f, uint gx, uint gy, uint gz, uint bx, uint by, uint bz, uint smem, nint stream, void** args) =>
        LaunchKernelWith(LaunchAttributeProgrammaticStreamSerialization, 0, f, gx, gy, gz, bx, by, bz, smem, stream, args);

    /// <summary>
    /// A cooperative launch: every block of the grid resident at once (the driver refuses a grid that cannot be), so the
    /// blocks may wait for each other (a grid barrier); <paramref name="dependent"/>: also a programmatic dependent launch
    /// (<see cref="LaunchKernelDependent"/>).
    /// </summary>
    public int LaunchKernelCooperative(bool dependent, nint f, uint gx, uint gy, uint gz, uint bx, uint by, uint bz, uint smem, nint stream, void** args) =>
        LaunchKernelWith(LaunchAttributeCooperative, dependent ? LaunchAttributeProgrammaticStreamSerialization : 0, f, gx, gy, gz, bx, by, bz, smem,
            stream, args);

    /// <summary>Whether the driver has what a cooperative launch through cuLaunchKernelEx and its occupancy query need.</summary>
    public bool HasCooperativeLaunch => _cuLaunchKernelEx != null && _cuOccupancyMaxActiveBlocksPerMultiprocessor != null;

    /// <summary>Blocks of <paramref name="blockSize"/> threads that one SM holds at once (cuOccupancyMaxActiveBlocksPerMultiprocessor).</summary>
    public int MaxActiveBlocksPerSm(nint f, int blockSize, int sharedBytes)
    {
        int blocks;
        Check(_cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, f, blockSize, (nuint)sharedBytes), "cuOccupancyMaxActiveBlocksPerMultiprocessor");
        return blocks;
    }

    /// <summary>cuLaunchKernelEx with one or two attributes set to 1 (<paramref name="second"/> 0: none).</summary>
    int LaunchKernelWith(int first, int second, nint f, uint gx, uint gy, uint gz, uint bx, uint by, uint bz, uint smem, nint stream, void** args)
    {
        var attrs = stackalloc LaunchAttribute[2];
        attrs[0] = new LaunchAttribute { Id = first, Value = 1 };
        attrs[1] = new LaunchAttribute { Id = second, Value = 1 };
        var config = new LaunchConfig
        {
            GridX = gx, GridY = gy, GridZ = gz, BlockX = bx, BlockY = by, BlockZ = bz, SharedBytes = smem, Stream = stream,
            Attrs = attrs, NumAttrs = second == 0 ? 1u : 2u,
        };
        return _cuLaunchKernelEx(&config, f, args, null);
    }

    /// <summary>Whether the driver exports what stream capture and graph launch need.</summary>
    public bool HasGraphs => _cuStreamBeginCapture != null && _cuStreamEndCapture != null && _cuGraphInstantiateWithFlags != null
        && _cuGraphLaunch != null && _cuGraphExecDestroy != null && _cuGraphDestroy != null;

    /// <summary>CU_STREAM_CAPTURE_MODE_THREAD_LOCAL: this thread's unsafe calls (cuMemAlloc, syncs) fail the capture instead of running.</summary>
    public const int CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1;

    public void StreamBeginCapture(nint stream) => Check(_cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "cuStreamBeginCapture");
    /// <summary>Ends the capture; returns the CUresult so a failed capture can be cleaned up and reported by the caller.</summary>
    public int StreamEndCapture(nint stream, out nint graph) { nint g; int rc = _cuStreamEndCapture(stream, &g); graph = g; return rc; }
    public nint GraphInstantiate(nint graph) { nint e; Check(_cuGraphInstantiateWithFlags(&e, graph, 0), "cuGraphInstantiateWithFlags"); return e; }
    public void GraphLaunch(nint exec, nint stream) => Check(_cuGraphLaunch(exec, stream), "cuGraphLaunch");
    public void GraphExecDestroy(nint exec) => Check(_cuGraphExecDestroy(exec), "cuGraphExecDestroy");
    public void GraphDestroy(nint graph) => Check(_cuGraphDestroy(graph), "cuGraphDestroy");

    public nint EventCreate() { nint e; Check(_cuEventCreate(&e, 0), "cuEventCreate"); return e; }
    public void EventRecord(nint e, nint stream) => Check(_cuEventRecord(e, stream), "cuEventRecord");
    public void EventSynchronize(nint e) => Check(_cuEventSynchronize(e), "cuEventSynchronize");
    public float EventElapsedMs(nint start, nint end) { float ms; Check(_cuEventElapsedTime(&ms, start, end), "cuEventElapsedTime"); return ms; }
    public void EventDestroy(nint e) => Check(_cuEventDestroy(e), "cuEventDestroy");
}
