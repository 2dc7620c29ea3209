using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

/// <summary>
/// The list forms of the optimizer ops (the clipping norm and AdamW over every trainable tensor) are the per-tensor
/// calls in turn, bit for bit; CUDA's one-launch kernels are held to the same bits by DeviceChecks.
/// </summary>
public sealed class MultiTensorOptimizerTests
{
    private readonly CpuBackend _cpu = new(2);

    // Odd lengths, an empty tensor, and one past the CPU sum's 2¹⁶-value chunk (its parallel path).
    private static readonly int[] Lengths = [1, 7, 0, 257, 1023, 70_001, 33];

    private Tensor[] Gradients(int seed) =>
        [.. Lengths.Select((n, i) => _cpu.F32(TestTensors.Random(n, seed + i, 3f), n))];

    [Fact]
    public void SumOfSquaresMany_is_the_per_tensor_sums_in_list_order()
    {
        IBackend b = _cpu;
        var grads = Gradients(1);
        var loop = _cpu.F32([0.5f], 1);
        foreach (var g in grads) b.SumOfSquares(g, loop);
        var many = _cpu.F32([0.5f], 1);
        b.SumOfSquaresMany(grads, many);
        Assert.Equal(BitConverter.SingleToInt32Bits(_cpu.Read(loop)[0]), BitConverter.SingleToInt32Bits(_cpu.Read(many)[0]));
        double exact = 0.5 + grads.Sum(g => _cpu.Read(g).Sum(x => (double)x * x));
        Assert.Equal(exact, _cpu.Read(many)[0], exact * 1e-6);
    }

    /// <summary>Master, moments and compute copy of one parameter per length, the same values in every set.</summary>
    private AdamWTensors[] States(bool withCopy)
    {
        var grads = Gradients(10);
        return [.. Lengths.Select((n, i) => new AdamWTensors(
            _cpu.F32(TestTensors.Random(n, 20 + i), n), grads[i],
            _cpu.F32(TestTensors.Random(n, 30 + i, 0.01f), n),
            _cpu.F32([.. TestTensors.Random(n, 40 + i, 0.01f).Select(MathF.Abs)], n),
            withCopy && i % 2 == 0 ? _cpu.Allocate(DType.F32, n) : null))];
    }

    [Theory]
    [InlineData(false, 0f)]
    [InlineData(true, 0f)]
    [InlineData(true, 1f)]
    public void AdamWMany_is_each_tensors_own_update_with_its_own_step(bool withCopy, float maxGradNorm)
    {
        IBackend b = _cpu;
        var norm = _cpu.F32([123.25f], 1);
        // Per-tensor hyper-parameters as a LoRA+ run has them: B's larger rate, no decay on some, the step count shared.
        AdamWStep Step(int i) => new(i % 3 == 0 ? 2e-3f : 1e-3f, 0.9f, 0.999f, 1e-8f, i % 2 == 0 ? 0.01f : 0f, 3, 0.5f, maxGradNorm);
        var loop = States(withCopy);
        for (int i = 0; i < loop.Length; i++)
        {
            var t = loop[i];
            b.AdamW(t.Param, t.Grad, t.M, t.V, t.ComputeCopy, norm, Step(i));
        }
        var many = States(withCopy);
        b.AdamWMany(many, [.. Enumerable.Range(0, many.Length).Select(Step)], norm);
        for (int i = 0; i < loop.Length; i++)
        {
            Assert.Equal(Bits(loop[i].Param), Bits(many[i].Param));
            Assert.Equal(Bits(loop[i].M), Bits(many[i].M));
            Assert.Equal(Bits(loop[i].V), Bits(many[i].V));
            if (loop[i].ComputeCopy is { } copy) Assert.Equal(Bits(loop[i].Param), Bits(copy));
        }
        Assert.NotEqual(Bits(States(withCopy)[4].Param), Bits(many[4].Param)); // the update did something
    }

    [Fact]
    public void AdamWMany_refuses_a_step_count_that_does_not_match_the_tensors()
    {
        IBackend b = _cpu;
        var states = States(false);
        var e = Assert.Throws<ArgumentException>(() => b.AdamWMany(states, [new AdamWStep(1e-3f, 0.9f, 0.999f, 1e-8f, 0f, 1)], null));
        Assert.Equal($"{states.Length} AdamW updates for 1 steps", e.Message);
    }

    private int[] Bits(Tensor t) => [.. _cpu.Read(t).Select(BitConverter.SingleToInt32Bits)];
}
