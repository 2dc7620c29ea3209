using FineTune.Engine.Cuda;
using Xunit;

namespace FineTune.Engine.Tests.Cuda;

public class AttentionKernelsSettingTests
{
    [Theory]
    [InlineData(null, AttentionKernels.Cudnn)]
    [InlineData("", AttentionKernels.Cudnn)]
    [InlineData("flash", AttentionKernels.Flash)]
    [InlineData(" CUDNN ", AttentionKernels.Cudnn)]
    [InlineData("cudnn-fast", AttentionKernels.CudnnFast)]
    public void Parses_each_name_and_defaults_to_cudnn(string? text, AttentionKernels expected)
    {
        Assert.Equal(expected, AttentionKernelsSetting.Parse(text));
        Assert.Equal(expected, AttentionKernelsSetting.Parse(AttentionKernelsSetting.Name(expected)));
    }

    [Fact]
    public void An_unknown_name_is_refused_with_the_choices()
    {
        var e = Assert.Throws<ArgumentException>(() => AttentionKernelsSetting.Parse("fa3"));
        Assert.Contains("flash, cudnn, cudnn-fast", e.Message);
    }
}
