using FineTune.Engine.Cuda;

namespace FineTune.Engine.Tests.Cuda;

public sealed class Bf16Tests
{
    [Theory]
    [InlineData(1.0f, (ushort)0x3F80)]
    [InlineData(-2.0f, (ushort)0xC000)]
    [InlineData(3.140625f, (ushort)0x4049)]       // exactly representable
    [InlineData(1.00390625f, (ushort)0x3F80)]     // halfway 1 + 2^-8: ties to even (down)
    [InlineData(1.01171875f, (ushort)0x3F82)]     // halfway 1 + 3·2^-8: ties to even (up)
    [InlineData(float.PositiveInfinity, (ushort)0x7F80)]
    public void Float_to_bf16_rounds_to_nearest_even(float f, ushort bits) => Assert.Equal(bits, Bf16.FromFloat(f));

    [Fact]
    public void NaN_stays_NaN() => Assert.True(float.IsNaN(Bf16.ToFloat(Bf16.FromFloat(float.NaN))));

    [Fact]
    public void Bf16_to_float_is_exact() => Assert.Equal(-0.5f, Bf16.ToFloat(0xBF00));
}
