using System.Runtime.InteropServices;
using FineTune.Engine.Cuda;

namespace FineTune.Engine.Tests.Cuda;

/// <summary>Host memory standing in for device memory: real allocations with a capacity, counted.</summary>
sealed unsafe class HostMemory(long capacity) : IRawDeviceMemory, IDisposable
{
    readonly Dictionary<ulong, long> _live = new();
    public long Used { get; private set; }
    public int Allocations { get; private set; }
    public int Frees { get; private set; }

    public bool TryAllocate(long bytes, out ulong pointer)
    {
        pointer = 0;
        if (Used + bytes > capacity) return false;
        pointer = (ulong)NativeMemory.Alloc((nuint)bytes);
        _live[pointer] = bytes;
        Used += bytes;
        Allocations++;
        return true;
    }

    public void Free(ulong pointer)
    {
        Used -= _live[pointer];
        _live.Remove(pointer);
        NativeMemory.Free((void*)pointer);
        Frees++;
    }

    public (long Free, long Total) MemoryInfo() => (capacity - Used, capacity);

    public void Dispose() { foreach (var p in _live.Keys.ToList()) Free(p); }
}

public sealed class CachingAllocatorTests
{
    [Theory]
    [InlineData(1, 512)]
    [InlineData(512, 512)]
    [InlineData(513, 1024)]
    [InlineData(1048575, 1048576)]
    [InlineData(1048577, 2097152)]
    [InlineData(5_000_000, 6291456)]
    public void RoundSize_uses_512_byte_steps_below_1MiB_and_2MiB_steps_above(long request, long rounded) =>
        Assert.Equal(rounded, CachingAllocator.RoundSize(request));

    [Fact]
    public void A_freed_block_is_reused_without_a_new_raw_allocation()
    {
        using var mem = new HostMemory(1L << 30);
        using var alloc = new CachingAllocator(mem);
        ulong a = alloc.Allocate(3000);
        alloc.Free(a);
        ulong b = alloc.Allocate(2900); // same 3072-byte class
        Assert.Equal(a, b);
        Assert.Equal(1, mem.Allocations);
        Assert.Equal(1, alloc.Stats.RawAllocations);
    }

    [Fact]
    public void A_repeated_step_makes_no_raw_allocations_after_the_first()
    {
        using var mem = new HostMemory(1L << 30);
        using var alloc = new CachingAllocator(mem);
        long[] sizes = [4096, 3 << 20, 700, 8 << 20, 4096];
        for (int step = 0; step < 3; step++)
        {
            var live = sizes.Select(alloc.Allocate).ToList();
            foreach (var p in live) alloc.Free(p);
        }
        Assert.Equal(sizes.Length, mem.Allocations);
        Assert.Equal(0, alloc.Stats.InUseBytes);
        Assert.Equal(512 * 8 + 512 * 8 + 1024 + (4L << 20) + (8L << 20), alloc.Stats.CachedBytes);
    }

    [Fact]
    public void A_large_cached_block_serves_a_request_up_to_a_quarter_smaller_but_not_smaller_still()
    {
        using var mem = new HostMemory(1L << 30);
        using var alloc = new CachingAllocator(mem);
        ulong big = alloc.Allocate(10 << 20);
        alloc.Free(big);
        Assert.Equal(big, alloc.Allocate(8 << 20));      // 10 MiB ≤ 8 MiB · 1.25
        ulong other = alloc.Allocate(4 << 20);           // the 10 MiB block is taken; 4 MiB needs its own
        Assert.NotEqual(big, other);
        Assert.Equal(2, mem.Allocations);
    }

    [Fact]
    public void Peak_counters_track_the_high_water_mark()
    {
        using var mem = new HostMemory(1L << 30);
        using var alloc = new CachingAllocator(mem);
        ulong a = alloc.Allocate(2 << 20), b = alloc.Allocate(4 << 20);
        alloc.Free(a); alloc.Free(b);
        alloc.Allocate(2 << 20);
        var s = alloc.Stats;
        Assert.Equal(6L << 20, s.PeakInUseBytes);
        Assert.Equal(6L << 20, s.PeakReservedBytes);
        Assert.Equal(2L << 20, s.InUseBytes);
        Assert.Equal(4L << 20, s.CachedBytes);
    }

    [Fact]
    public void Out_of_memory_first_returns_the_cache_to_the_driver_then_retries()
    {
        using var mem = new HostMemory(10L << 20);
        using var alloc = new CachingAllocator(mem);
        ulong a = alloc.Allocate(6 << 20);
        alloc.Free(a);                                   // 6 MiB cached, 4 MiB free
        ulong b = alloc.Allocate(8 << 20);               // 8 MiB class does not fit beside the cache
        Assert.NotEqual(0UL, b);
        Assert.Equal(1, mem.Frees);
        Assert.Equal(0, alloc.Stats.CachedBytes);
    }

    [Fact]
    public void Out_of_memory_reports_needed_and_free_bytes_and_what_to_lower()
    {
        using var mem = new HostMemory(10L << 20);
        using var alloc = new CachingAllocator(mem);
        alloc.Allocate(6 << 20);
        var e = Assert.Throws<CudaOutOfMemoryException>(() => alloc.Allocate(8 << 20));
        Assert.Equal(8L << 20, e.RequestedBytes);
        Assert.Equal(4L << 20, e.FreeBytes);
        Assert.Equal(10L << 20, e.TotalBytes);
        Assert.Contains("needed 0.01 GiB", e.Message);
        Assert.Contains("cutoff_len", e.Message);
        Assert.Contains("gradient_checkpointing", e.Message);
    }

    [Fact]
    public void Freeing_a_pointer_twice_is_an_error()
    {
        using var mem = new HostMemory(1L << 30);
        using var alloc = new CachingAllocator(mem);
        ulong a = alloc.Allocate(100);
        alloc.Free(a);
        Assert.Throws<InvalidOperationException>(() => alloc.Free(a));
    }

    [Fact]
    public void Dispose_returns_every_block_to_the_driver()
    {
        using var mem = new HostMemory(1L << 30);
        var alloc = new CachingAllocator(mem);
        alloc.Allocate(100);
        alloc.Free(alloc.Allocate(5 << 20));
        alloc.Dispose();
        Assert.Equal(0, mem.Used);
        Assert.Equal(2, mem.Frees);
    }
}
