namespace FineTune.Engine.Cuda;

/// <summary>Where a caching allocator gets its memory from: cuMemAlloc/cuMemFree on a GPU.</summary>
public interface IRawDeviceMemory
{
    /// <summary>False when the memory is exhausted (any other failure throws).</summary>
    bool TryAllocate(long bytes, out ulong pointer);
    void Free(ulong pointer);
    (long Free, long Total) MemoryInfo();
}

/// <summary>Counters of a <see cref="CachingAllocator"/>; peaks are since construction or the last <see cref="CachingAllocator.ResetPeaks"/>.</summary>
public sealed record AllocatorStats(long InUseBytes, long CachedBytes, long PeakInUseBytes, long PeakReservedBytes, long RawAllocations, long RawFrees)
{
    public long ReservedBytes => InUseBytes + CachedBytes;
}

/// <summary>
/// A caching device allocator in the spirit of PyTorch's: freed blocks go to a free list keyed by their rounded size
/// and are handed out again, so a training step that repeats the same shapes never calls cuMemAlloc after the first
/// step. With a single stream, a block freed by the host can be reused at once: every later kernel that writes it is
/// ordered after every earlier kernel that read it.
/// Sizes round up to 512 B below 1 MiB and to 2 MiB above (fewer distinct sizes, less fragmentation);
/// a cached large block is reused for a request up to a quarter smaller than itself.
/// On out-of-memory the cache is returned to the driver and the allocation retried once.
/// </summary>
public sealed class CachingAllocator(IRawDeviceMemory raw) : IDisposable
{
    public const long SmallAlignment = 512;
    public const long LargeThreshold = 1L << 20;
    public const long LargeAlignment = 2L << 20;

    readonly SortedDictionary<long, Stack<ulong>> _free = new();
    readonly Dictionary<ulong, long> _inUse = new();
    readonly Lock _lock = new();
    long _inUseBytes, _cachedBytes, _peakInUse, _peakReserved, _rawAllocs, _rawFrees;

    public static long RoundSize(long bytes)
    {
        if (bytes <= 0) return SmallAlignment;
        return bytes < LargeThreshold
            ? (bytes + SmallAlignment - 1) / SmallAlignment * SmallAlignment
            : (bytes + LargeAlignment - 1) / LargeAlignment * LargeAlignment;
    }

    /// <summary>A block of at least <paramref name="bytes"/> bytes; returns its pointer.</summary>
    public ulong Allocate(long bytes)
    {
        long size = RoundSize(bytes);
        lock (_lock)
        {
            if (TryTakeCached(size, out var cached, out var cachedSize))
            {
                _cachedBytes -= cachedSize;
                MarkInUse(cached, cachedSize);
                return cached;
            }
            if (!raw.TryAllocate(size, out var p))
            {
                ReleaseCachedLocked();
                if (!raw.TryAllocate(size, out p))
                {
                    var (free, total) = raw.MemoryInfo();
                    throw new CudaOutOfMemoryException(size, free, total, _cachedBytes, _inUseBytes);
                }
            }
            _rawAllocs++;
            MarkInUse(p, size);
            return p;
        }
    }

    bool TryTakeCached(long size, out ulong pointer, out long blockSize)
    {
        long limit = size >= LargeThreshold ? size + size / 4 : size;
        foreach (var (key, stack) in _free)
        {
            if (key < size) continue;
            if (key > limit) break;
            if (stack.Count == 0) continue;
            pointer = stack.Pop();
            blockSize = key;
            return true;
        }
        pointer = 0; blockSize = 0;
        return false;
    }

    void MarkInUse(ulong p, long size)
    {
        _inUse.Add(p, size);
        _inUseBytes += size;
        _peakInUse = Math.Max(_peakInUse, _inUseBytes);
        _peakReserved = Math.Max(_peakReserved, _inUseBytes + _cachedBytes);
    }

    /// <summary>Returns a block to the cache (not to the driver).</summary>
    public void Free(ulong pointer)
    {
        lock (_lock)
        {
            if (!_inUse.Remove(pointer, out var size))
                throw new InvalidOperationException($"device pointer 0x{pointer:x} was not allocated here or was freed twice");
            _inUseBytes -= size;
            if (!_free.TryGetValue(size, out var stack)) _free[size] = stack = new Stack<ulong>();
            stack.Push(pointer);
            _cachedBytes += size;
        }
    }

    /// <summary>Size of the block behind a live pointer.</summary>
    public long BlockSize(ulong pointer)
    {
        lock (_lock) return _inUse.TryGetValue(pointer, out var s) ? s : throw new InvalidOperationException($"0x{pointer:x} is not a live block");
    }

    /// <summary>Gives every cached block back to the driver.</summary>
    public void EmptyCache() { lock (_lock) ReleaseCachedLocked(); }

    void ReleaseCachedLocked()
    {
        foreach (var stack in _free.Values)
            while (stack.Count > 0) { raw.Free(stack.Pop()); _rawFrees++; }
        _free.Clear();
        _cachedBytes = 0;
    }

    public AllocatorStats Stats
    {
        get { lock (_lock) return new(_inUseBytes, _cachedBytes, _peakInUse, _peakReserved, _rawAllocs, _rawFrees); }
    }

    public void ResetPeaks()
    {
        lock (_lock) { _peakInUse = _inUseBytes; _peakReserved = _inUseBytes + _cachedBytes; }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            ReleaseCachedLocked();
            foreach (var p in _inUse.Keys) { raw.Free(p); _rawFrees++; }
            _inUse.Clear();
            _inUseBytes = 0;
        }
    }
}
