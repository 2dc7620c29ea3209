using FineTune.Engine.Cuda;

namespace FineTune.Engine.Tests.Cuda;

public sealed class CudaSelectionTests
{
    [Theory]
    [InlineData("auto", DeviceKind.Auto, 0)]
    [InlineData(null, DeviceKind.Auto, 0)]
    [InlineData("CPU", DeviceKind.Cpu, 0)]
    [InlineData("cuda", DeviceKind.Cuda, 0)]
    [InlineData("cuda:3", DeviceKind.Cuda, 3)]
    public void Device_settings_parse(string? text, DeviceKind kind, int ordinal) =>
        Assert.Equal(new DeviceSpec(kind, ordinal), DeviceSpec.Parse(text));

    [Theory]
    [InlineData("cuda:-1")]
    [InlineData("cuda:x")]
    [InlineData("tpu")]
    public void A_bad_device_setting_names_the_accepted_forms(string text)
    {
        var e = Assert.Throws<ArgumentException>(() => DeviceSpec.Parse(text));
        Assert.Contains($"'{text}'", e.Message);
        Assert.Contains("auto, cpu, cuda, cuda:N", e.Message);
    }

    [Fact]
    public void A_missing_driver_library_is_reported_as_unavailable_with_the_names_tried()
    {
        var e = Assert.Throws<CudaUnavailableException>(() => CudaDriver.Load(["libcuda-not-here.so.1", "libcuda-nor-here.so"]));
        Assert.Equal("no CUDA driver: none of [libcuda-not-here.so.1, libcuda-nor-here.so] could be loaded", e.Message);
    }

    [Fact]
    public void Cpu_is_created_without_touching_the_driver()
    {
        using var b = BackendFactory.Create("cpu");
        Assert.Equal("cpu", b.Name);
    }
}
