using System.Diagnostics;

namespace FineTune.Engine.Cuda;

/// <summary>What <see cref="CudaDevice"/> found on open: the GPU, its architecture and the libraries it loaded.</summary>
public sealed record CudaDeviceInfo(int Ordinal, string Name, int ComputeMajor, int ComputeMinor, int Multiprocessors,
    long TotalMemoryBytes, int DriverVersion, string DriverLibrary)
{
    public string Architecture => $"sm_{ComputeMajor}{ComputeMinor}";
}

/// <summary>
/// One GPU: its primary context, one non-blocking stream that every operation is queued on, the caching
/// allocator, the kernel modules (compiled by NVRTC on first use, cached on disk by source hash) and cuBLASLt.
/// Not thread-safe: a training step drives it from one thread.
/// </summary>
public sealed unsafe class CudaDevice : IDisposable
{
    readonly CudaDriver _driver;
    readonly int _device;
    readonly nint _context;
    readonly KernelSources _sources;
    readonly KernelCache _cache;
    readonly Dictionary<string, nint> _modules = new(StringComparer.Ordinal);
    readonly Dictionary<(string, string), nint> _functions = new();
    readonly Dictionary<nint, int> _sharedLimits = new();
    Nvrtc? _nvrtc;
    CublasLt? _blas;
    ulong _blasWorkspace;
    bool _disposed;

    public CudaDeviceInfo Info { get; }
    public nint Stream { get; }
    public CachingAllocator Allocator { get; }
    /// <summary>Seconds spent in NVRTC (cache misses) and module loads since open.</summary>
    public double CompileSeconds { get; private set; }
    public int KernelsCompiled { get; private set; }
    public int KernelsFromCache { get; private set; }

    public const long CublasWorkspaceBytes = 32L << 20;

    /// <summary>Makes this device's context current on the calling thread (contexts are per thread in the driver API).</summary>
    public void MakeCurrent() => _driver.SetCurrent(_context);

    CudaDevice(CudaDriver driver, int ordinal, KernelSources sources, KernelCache cache)
    {
        _driver = driver;
        int count = driver.DeviceCount;
        if (ordinal < 0 || ordinal >= count)
            throw new CudaUnavailableException($"device cuda:{ordinal} does not exist: the driver reports {count} GPU(s) (cuda:0..cuda:{count - 1})");
        _device = driver.DeviceGet(ordinal);
        _context = driver.PrimaryContextRetain(_device);
        driver.SetCurrent(_context);
        Stream = driver.StreamCreate();
        Info = new CudaDeviceInfo(ordinal, driver.DeviceName(_device),
            driver.Attribute(_device, CudaDriver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
            driver.Attribute(_device, CudaDriver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
            driver.Attribute(_device, CudaDriver.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
            driver.TotalMemory(_device), driver.DriverVersion, driver.LibraryName);
        Allocator = new CachingAllocator(new DriverMemory(driver));
        _sources = sources;
        _cache = cache;
    }

    /// <summary>Opens GPU <paramref name="ordinal"/>; throws <see cref="CudaUnavailableException"/> without a driver or GPU.</summary>
    public static CudaDevice Open(int ordinal = 0, KernelCache? cache = null) =>
        new(CudaDriver.Load(), ordinal, KernelSources.Embedded(), cache ?? new KernelCache(KernelCache.DefaultDirectory()));

    sealed class DriverMemory(CudaDriver driver) : IRawDeviceMemory
    {
        public bool TryAllocate(long bytes, out ulong pointer)
        {
            int rc = driver.TryMemAlloc(bytes, out pointer);
            if (rc == CudaDriver.CUDA_ERROR_OUT_OF_MEMORY) return false;
            driver.Check(rc, $"cuMemAlloc({bytes} bytes)");
            return true;
        }
        public void Free(ulong pointer) => driver.Check(driver.TryFree(pointer), "cuMemFree");
        public (long Free, long Total) MemoryInfo() => driver.MemInfo();
    }

    internal CublasLt Blas
    {
        get
        {
            if (_blas is null)
            {
                _blasWorkspace = Allocator.Allocate(CublasWorkspaceBytes);
                _blas = CublasLt.Load(_blasWorkspace, CublasWorkspaceBytes);
            }
            return _blas;
        }
    }

    public string? NvrtcLibrary => _nvrtc?.LibraryName;
    public string? CublasLtLibrary => _blas?.LibraryName;

    /// <summary>NVRTC options: the device's own architecture, fast but IEEE-correct division and sqrt kept.</summary>
    public IReadOnlyList<string> CompileOptions =>
        [$"--gpu-architecture=sm_{Info.ComputeMajor}{Info.ComputeMinor}", "--std=c++17", "-default-device"];

    /// <summary>cuFuncGetAttribute of a loaded kernel (e.g. 4: registers per thread).</summary>
    public int FunctionAttribute(nint function, int attribute) => _driver.FuncGetAttribute(function, attribute);

    /// <summary>Kernel <paramref name="function"/> of program <paramref name="program"/> (e.g. "rmsnorm.cu").</summary>
    public nint Function(string program, string function)
    {
        if (_functions.TryGetValue((program, function), out var f)) return f;
        if (!_modules.TryGetValue(program, out var module)) _modules[program] = module = LoadModule(program);
        f = _driver.ModuleGetFunction(module, function);
        _functions[(program, function)] = f;
        return f;
    }

    nint LoadModule(string program)
    {
        var sw = Stopwatch.StartNew();
        _nvrtc ??= Nvrtc.Load();
        var options = CompileOptions;
        var fingerprint = _sources.Fingerprint(program, options, $"{_nvrtc.LibraryName} {_nvrtc.Version.Major}.{_nvrtc.Version.Minor}");
        var cubin = _cache.GetOrCompile(fingerprint, () => _nvrtc.CompileToCubin(program, _sources.Source(program), _sources.Headers, options), out bool compiled);
        if (compiled) KernelsCompiled++; else KernelsFromCache++;
        var module = _driver.ModuleLoadData(cubin);
        CompileSeconds += sw.Elapsed.TotalSeconds;
        return module;
    }

    /// <summary>Raises a kernel's dynamic shared memory limit above the default 48 KiB.</summary>
    public void SetDynamicSharedMemory(nint function, int bytes) =>
        _driver.FuncSetAttribute(function, CudaDriver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes);

    /// <summary>
    /// Asks for the largest shared-memory share of the multiprocessor's L1/shared storage for a kernel (a hint), so
    /// blocks that each need over half of it can still run two at a time.
    /// </summary>
    public void PreferMaxSharedMemory(nint function) =>
        _driver.FuncSetAttribute(function, CudaDriver.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100);

    public int MaxSharedMemoryPerBlock => _driver.Attribute(_device, CudaDriver.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);

    /// <summary>
    /// Queues a kernel. Each argument occupies an 8-byte slot; the driver reads as many bytes as the kernel's
    /// parameter has (4 for int/float, 8 for pointers), and x86-64/arm64 are little-endian.
    /// </summary>
    public void Launch(nint function, (int X, int Y, int Z) grid, (int X, int Y, int Z) block, int sharedBytes, ReadOnlySpan<KernelArg> args, string name) =>
        Queue(LaunchMode.Plain, function, grid, block, sharedBytes, args, name);

    /// <summary>
    /// As <see cref="Launch(nint, ValueTuple{int, int, int}, ValueTuple{int, int, int}, int, ReadOnlySpan{KernelArg}, string)"/>,
    /// but the kernel may start while the previous one on the stream finishes (programmatic dependent launch, Hopper):
    /// only for kernels that wait (griddepcontrol.wait) before reading the previous kernel's output. Falls back to a plain
    /// launch on a driver without cuLaunchKernelEx.
    /// </summary>
    public void LaunchDependent(nint function, (int X, int Y, int Z) grid, (int X, int Y, int Z) block, int sharedBytes, ReadOnlySpan<KernelArg> args, string name) =>
        Queue(_driver.HasLaunchEx ? LaunchMode.Dependent : LaunchMode.Plain, function, grid, block, sharedBytes, args, name);

    /// <summary>Whether cooperative launches (<see cref="LaunchCooperative"/>) are available.</summary>
    public bool HasCooperativeLaunch => _driver.HasCooperativeLaunch;

    /// <summary>Blocks of <paramref name="threads"/> threads with <paramref name="sharedBytes"/> dynamic shared memory one SM holds at once.</summary>
    public int MaxActiveBlocksPerSm(nint function, int threads, int sharedBytes)
    {
        AllowDynamicShared(function, sharedBytes);
        return _driver.MaxActiveBlocksPerSm(function, threads, sharedBytes);
    }

    /// <summary>
    /// A cooperative launch (every block resident at once: the kernel may meet at grid barriers); <paramref name="dependent"/>:
    /// also programmatic (<see cref="LaunchDependent"/>: the kernel executes griddepcontrol.wait before its first read).
    /// </summary>
    public void LaunchCooperative(nint function, (int X, int Y, int Z) grid, (int X, int Y, int Z) block, int sharedBytes, ReadOnlySpan<KernelArg> args, string name,
        bool dependent = false) =>
        Queue(dependent ? LaunchMode.CooperativeDependent : LaunchMode.Cooperative, function, grid, block, sharedBytes, args, name);

    enum LaunchMode { Plain, Dependent, Cooperative, CooperativeDependent }

    void Queue(LaunchMode mode, nint function, (int X, int Y, int Z) grid, (int X, int Y, int Z) block, int sharedBytes, ReadOnlySpan<KernelArg> args, string name)
    {
        AllowDynamicShared(function, sharedBytes);
        var values = stackalloc ulong[args.Length];
        var ptrs = stackalloc void*[args.Length];
        for (int i = 0; i < args.Length; i++) { values[i] = args[i].Bits; ptrs[i] = &values[i]; }
        var (gx, gy, gz, bx, by, bz, smem) = ((uint)grid.X, (uint)grid.Y, (uint)grid.Z, (uint)block.X, (uint)block.Y, (uint)block.Z, (uint)sharedBytes);
        int rc = mode switch
        {
            LaunchMode.Plain => _driver.LaunchKernel(function, gx, gy, gz, bx, by, bz, smem, Stream, ptrs),
            LaunchMode.Dependent => _driver.LaunchKernelDependent(function, gx, gy, gz, bx, by, bz, smem, Stream, ptrs),
            _ => _driver.LaunchKernelCooperative(mode == LaunchMode.CooperativeDependent, function, gx, gy, gz, bx, by, bz, smem, Stream, ptrs),
        };
        if (rc == 0) return;
        string kind = mode switch
        {
            LaunchMode.Plain => "launch", LaunchMode.Dependent => "dependent launch", LaunchMode.Cooperative => "cooperative launch",
            _ => "cooperative dependent launch",
        };
        throw new CudaException($"{kind} of kernel '{name}' (grid {grid}, block {block}, {sharedBytes} B shared) failed: {_driver.Describe(rc)}");
    }

    /// <summary>
    /// A launch with more than 48 KiB of dynamic shared memory needs the kernel's limit raised first
    /// (<see cref="SetDynamicSharedMemory"/>): done here, once per kernel and size, for every launch that asks for more.
    /// </summary>
    void AllowDynamicShared(nint function, int sharedBytes)
    {
        if (sharedBytes <= 48 * 1024 || (_sharedLimits.TryGetValue(function, out int limit) && limit >= sharedBytes)) return;
        SetDynamicSharedMemory(function, sharedBytes);
        _sharedLimits[function] = sharedBytes;
    }

    public void Synchronize() => _driver.StreamSynchronize(Stream);
    /// <summary>True when the stream has no work left (a collective's wait polls this beside NCCL's async error).</summary>
    public bool StreamDone() => _driver.StreamDone(Stream);

    // ---- CUDA graphs ----
    public bool HasGraphs => _driver.HasGraphs;
    /// <summary>True between <see cref="BeginCapture"/> and <see cref="EndCapture"/>: allocation is refused then.</summary>
    public bool Capturing { get; private set; }

    /// <summary>Starts recording the stream's work instead of running it.</summary>
    public void BeginCapture()
    {
        if (Capturing) throw new InvalidOperationException("a CUDA graph capture is already in progress on this stream");
        _driver.StreamBeginCapture(Stream);
        Capturing = true;
    }

    /// <summary>
    /// Stops recording and instantiates what was recorded. With <paramref name="discard"/> (an operation failed while
    /// recording) the recording is thrown away and the stream is usable again.
    /// </summary>
    public CudaGraph? EndCapture(bool discard = false)
    {
        Capturing = false;
        int rc = _driver.StreamEndCapture(Stream, out var graph);
        if (discard || rc != CudaDriver.CUDA_SUCCESS)
        {
            if (graph != 0) { try { _driver.GraphDestroy(graph); } catch (CudaException) { } }
            if (discard) return null;
            _driver.Check(rc, "cuStreamEndCapture");
        }
        try { return new CudaGraph(_driver, _driver.GraphInstantiate(graph), Stream); }
        finally { _driver.GraphDestroy(graph); }
    }

    public ulong Allocate(long bytes) => Capturing
        ? throw new NotSupportedException($"an allocation of {bytes} bytes while a CUDA graph is being captured (the graph would keep a block the allocator hands on); this step runs without a graph")
        : Allocator.Allocate(bytes);
    public void Free(ulong pointer) => Allocator.Free(pointer);

    public void CopyToDevice<T>(ulong dst, ReadOnlySpan<T> src) where T : unmanaged
    {
        if (Capturing) throw new NotSupportedException("a host-to-device copy while a CUDA graph is being captured (the graph would keep the host address); inputs go in before the capture");
        fixed (T* p = src) _driver.CopyHtoD(dst, p, (long)src.Length * sizeof(T), Stream);
    }

    /// <summary>Copies device memory to the host; waits for the stream (the host needs the data now).</summary>
    public void CopyToHost<T>(Span<T> dst, ulong src) where T : unmanaged
    {
        if (Capturing) throw new NotSupportedException("a device-to-host copy while a CUDA graph is being captured");
        fixed (T* p = dst)
        {
            _driver.CopyDtoH(p, src, (long)dst.Length * sizeof(T), Stream);
            _driver.StreamSynchronize(Stream);
        }
    }

    public void CopyDeviceToDevice(ulong dst, ulong src, long bytes) => _driver.CopyDtoD(dst, src, bytes, Stream);
    public void Zero(ulong dst, long bytes) => _driver.MemsetD8(dst, 0, bytes, Stream);
    public void Fill32(ulong dst, uint bits, long count) => _driver.MemsetD32(dst, bits, count, Stream);

    public (long Free, long Total) MemoryInfo() => _driver.MemInfo();

    /// <summary>A pair of events around queued work; <see cref="GpuTimer.StopMs"/> waits and returns device milliseconds.</summary>
    public GpuTimer StartTimer() => new(_driver, Stream);

    // ---- per-operation device timing (profiling) ----
    readonly List<nint> _eventPool = [];
    readonly List<(nint Event, string Op)> _marks = [];
    nint _markStart;

    /// <summary>Starts attributing device time to operations: each <see cref="Mark"/> closes the span since the previous one.</summary>
    public void BeginProfile()
    {
        _marks.Clear();
        _markStart = NextEvent(0);
        _driver.EventRecord(_markStart, Stream);
    }

    public bool Profiling => _markStart != 0;

    /// <summary>Records that the work queued since the previous mark belongs to <paramref name="op"/>.</summary>
    public void Mark(string op)
    {
        if (_markStart == 0) return;
        var e = NextEvent(_marks.Count + 1);
        _driver.EventRecord(e, Stream);
        _marks.Add((e, op));
    }

    /// <summary>Waits, then returns device milliseconds per operation name since <see cref="BeginProfile"/>.</summary>
    public Dictionary<string, double> EndProfile()
    {
        var result = new Dictionary<string, double>(StringComparer.Ordinal);
        if (_markStart == 0) return result;
        _driver.StreamSynchronize(Stream);
        nint prev = _markStart;
        foreach (var (e, op) in _marks)
        {
            result[op] = result.GetValueOrDefault(op) + _driver.EventElapsedMs(prev, e);
            prev = e;
        }
        _marks.Clear();
        _markStart = 0;
        return result;
    }

    nint NextEvent(int index)
    {
        while (_eventPool.Count <= index) _eventPool.Add(_driver.EventCreate());
        return _eventPool[index];
    }

    public void Dispose()
    {
        if (_disposed) return;
        foreach (var e in _eventPool) { try { _driver.EventDestroy(e); } catch (CudaException) { } }
        _disposed = true;
        try { _driver.StreamSynchronize(Stream); } catch (CudaException) { /* a failed kernel left the context broken; still release */ }
        _blas?.Dispose();
        Allocator.Dispose();
        foreach (var m in _modules.Values) { try { _driver.ModuleUnload(m); } catch (CudaException) { } }
        try { _driver.StreamDestroy(Stream); } catch (CudaException) { }
        try { _driver.PrimaryContextRelease(_device); } catch (CudaException) { }
    }
}

/// <summary>An instantiated CUDA graph: the recorded work, replayed on the device's stream by <see cref="Launch"/>.</summary>
public sealed class CudaGraph : IDeviceGraph
{
    readonly CudaDriver _driver;
    readonly nint _stream;
    nint _exec;

    internal CudaGraph(CudaDriver driver, nint exec, nint stream) { _driver = driver; _exec = exec; _stream = stream; }

    public void Launch()
    {
        ObjectDisposedException.ThrowIf(_exec == 0, this);
        _driver.GraphLaunch(_exec, _stream);
    }

    public void Dispose()
    {
        if (_exec == 0) return;
        try { _driver.GraphExecDestroy(_exec); } catch (CudaException) { }
        _exec = 0;
    }
}

/// <summary>One kernel argument as raw bits: a device pointer, an int or a float.</summary>
public readonly struct KernelArg
{
    public ulong Bits { get; }
    KernelArg(ulong bits) => Bits = bits;
    public static implicit operator KernelArg(ulong devicePointer) => new(devicePointer);
    public static implicit operator KernelArg(int value) => new((uint)value);
    public static implicit operator KernelArg(float value) => new(BitConverter.SingleToUInt32Bits(value));
    public static implicit operator KernelArg(long value) => new((ulong)value);
}

/// <summary>Device-side timing with CUDA events.</summary>
public sealed class GpuTimer : IDisposable
{
    readonly CudaDriver _driver;
    readonly nint _stream, _start, _end;

    internal GpuTimer(CudaDriver driver, nint stream)
    {
        _driver = driver; _stream = stream;
        _start = driver.EventCreate(); _end = driver.EventCreate();
        driver.EventRecord(_start, stream);
    }

    public double StopMs()
    {
        _driver.EventRecord(_end, _stream);
        _driver.EventSynchronize(_end);
        return _driver.EventElapsedMs(_start, _end);
    }

    public void Dispose() { _driver.EventDestroy(_start); _driver.EventDestroy(_end); }
}
