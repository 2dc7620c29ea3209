using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

/// <summary>
/// The combine's backward carried through the experts' down product (MoeCombineDownBackward) against the one through
/// the expert outputs (MoeCombineBackward, then dact = dout·W_down): the same gradients up to fp32 rounding, since
/// dy·(act·W_downᵀ) = (dy·W_down)·act and (w·dy)·W_down = w·(dy·W_down) are only summed in another order.
/// </summary>
public sealed class MoeCombineTests
{
    [Fact]
    public void The_combine_backward_through_down_gives_the_gradients_of_the_one_through_the_outputs()
    {
        using var b = new CpuBackend(2);
        const int n = 11, k = 3, e = 4, hidden = 24, inter = 20;
        var rng = new Random(7);
        // Each token's k distinct experts; weights in (0, 1).
        var choice = new int[n * k];
        for (int t = 0; t < n; t++)
        {
            var experts = Enumerable.Range(0, e).OrderBy(_ => rng.Next()).Take(k).ToArray();
            experts.CopyTo(choice, t * k);
        }
        int rows = n * k;
        var topIdx = b.I32(choice, n, k);
        var topW = b.F32(TestTensors.Random(n * k, 2).Select(x => 0.5f + 0.5f * x).ToArray(), n, k);
        var offsets = b.Allocate(DType.I32, e + 1);
        var sorted = b.Allocate(DType.I32, rows);
        var rowOf = b.Allocate(DType.I32, rows);
        b.MoeSort(topIdx, offsets, sorted, rowOf);
        var act = b.F32(TestTensors.Random(rows * inter, 3), rows, inter);
        var wDown = b.F32(TestTensors.Random(e * hidden * inter, 4, 0.3f), e, hidden, inter);
        var dy = b.F32(TestTensors.Random(n * hidden, 5), n, hidden);

        // Through the outputs: out = act·W_downᵀ, dout = w·dy, dtopW = dy·out, dact = dout·W_down.
        var outRows = b.Allocate(DType.F32, rows, hidden);
        b.GroupedMatMul(outRows, act, wDown, true, offsets);
        var dout = b.Allocate(DType.F32, rows, hidden);
        var dtopOld = b.Allocate(DType.F32, n, k);
        b.MoeCombineBackward(dout, dtopOld, dy, outRows, topW, rowOf);
        var dactOld = b.Allocate(DType.F32, rows, inter);
        b.GroupedMatMul(dactOld, dout, wDown, false, offsets);

        // Through down: dy gathered unscaled, h = dy_rows·W_down, dtopW = h·act, dact = w·h.
        var dyRows = b.Allocate(DType.F32, rows, hidden);
        b.Embedding(dyRows, dy, sorted);
        var h = b.Allocate(DType.F32, rows, inter);
        b.GroupedMatMul(h, dyRows, wDown, false, offsets);
        var dactNew = b.Allocate(DType.F32, rows, inter);
        var dtopNew = b.Allocate(DType.F32, n, k);
        b.MoeCombineDownBackward(dactNew, dtopNew, h, act, topW, rowOf);

        double Rel(Tensor got, Tensor want) => TestTensors.RelativeError(b.Read(got), [.. b.Read(want).Select(x => (double)x)]);
        Assert.InRange(Rel(dtopNew, dtopOld), 1e-9, 1e-6); // not 0: the dot products are summed over other terms
        Assert.InRange(Rel(dactNew, dactOld), 0, 1e-6);
        // The values themselves, by hand for one choice: dtopW = Σ_c dy[t, c]·out[r, c].
        var dyHost = b.Read(dy);
        var outHost = b.Read(outRows);
        var rowOfHost = new int[rows];
        b.Download(rowOf, rowOfHost);
        double dot = 0;
        for (int c = 0; c < hidden; c++) dot += (double)dyHost[4 * hidden + c] * outHost[rowOfHost[4 * k + 1] * hidden + c];
        Assert.Equal(dot, b.Read(dtopNew)[4 * k + 1], 1e-5);
    }

    [Fact]
    public void The_combine_backward_through_down_refuses_rows_that_do_not_match_the_choices()
    {
        using var b = new CpuBackend(1);
        var h = b.Allocate(DType.F32, 6, 4);
        var act = b.Allocate(DType.F32, 5, 4);
        var e = Assert.Throws<ArgumentException>(() =>
            b.MoeCombineDownBackward(b.Allocate(DType.F32, 6, 4), b.Allocate(DType.F32, 3, 2), h, act, b.Allocate(DType.F32, 3, 2), b.Allocate(DType.I32, 6)));
        Assert.Contains("shapes do not agree", e.Message);
    }
}
