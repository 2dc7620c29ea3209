using FineTune.Engine.Cuda;

namespace FineTune.Engine.Tests.Cuda;

public sealed class KernelCacheTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "ft-kcache-" + Guid.NewGuid().ToString("N"));

    public void Dispose() { if (Directory.Exists(_dir)) Directory.Delete(_dir, true); }

    [Fact]
    public void A_compiled_kernel_is_stored_under_its_fingerprint_and_read_back_without_compiling()
    {
        var cache = new KernelCache(_dir);
        int compiles = 0;
        byte[] Compile() { compiles++; return [1, 2, 3, 4]; }
        var first = cache.GetOrCompile("abc123", Compile, out bool c1);
        var second = cache.GetOrCompile("abc123", Compile, out bool c2);
        Assert.True(c1);
        Assert.False(c2);
        Assert.Equal(1, compiles);
        Assert.Equal(first, second);
        Assert.Equal([1, 2, 3, 4], File.ReadAllBytes(Path.Combine(_dir, "abc123.cubin")));
    }

    [Fact]
    public void Storing_leaves_no_temporary_file_behind()
    {
        var cache = new KernelCache(_dir);
        Assert.True(cache.TryPut("f00d", [9, 9]));
        Assert.Equal(new[] { "f00d.cubin" }, Directory.GetFiles(_dir).Select(f => Path.GetFileName(f)).ToArray());
    }

    [Fact]
    public void An_empty_cache_file_counts_as_a_miss()
    {
        Directory.CreateDirectory(_dir);
        File.WriteAllBytes(Path.Combine(_dir, "e.cubin"), []);
        var cache = new KernelCache(_dir);
        cache.GetOrCompile("e", () => [7], out bool compiled);
        Assert.True(compiled);
        Assert.Equal([7], File.ReadAllBytes(Path.Combine(_dir, "e.cubin")));
    }

    [Fact]
    public void A_cache_directory_that_cannot_be_created_is_not_an_error()
    {
        var file = Path.Combine(Path.GetTempPath(), "ft-kcache-file-" + Guid.NewGuid().ToString("N"));
        File.WriteAllText(file, "x");
        try
        {
            var cache = new KernelCache(Path.Combine(file, "sub"));
            Assert.False(cache.TryPut("x", [1]));
            Assert.Equal([5], cache.GetOrCompile("x", () => [5], out _));
        }
        finally { File.Delete(file); }
    }
}
