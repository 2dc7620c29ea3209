using FineTune.Engine;

namespace FineTune.Models.Tests;

/// <summary>
/// The CPU backend, counting the products that read a weight whose name ends with <paramref name="weightSuffix"/>
/// (as b of MatMul or w of GroupedMatMul) and the MoeCombine calls: what a recompute runs again and what it skips.
/// </summary>
internal sealed class ProductCountingBackend(IBackend inner, string weightSuffix) : ForwardingBackend(inner)
{
    public int Products { get; private set; }
    public int Combines { get; private set; }

    private void Count(Tensor w)
    {
        if (w.Name.EndsWith(weightSuffix, StringComparison.Ordinal)) Products++;
    }

    public override void MatMul(Tensor c, Tensor a, bool transA, Tensor b, bool transB, float alpha = 1f, bool accumulate = false)
    {
        Count(b);
        base.MatMul(c, a, transA, b, transB, alpha, accumulate);
    }

    public override void MatMulShared(IReadOnlyList<Tensor> cs, Tensor a, IReadOnlyList<Tensor> bs)
    {
        foreach (var b in bs) Count(b);
        base.MatMulShared(cs, a, bs);
    }

    public override void GroupedMatMul(Tensor c, Tensor a, Tensor w, bool transW, Tensor offsets, bool accumulate = false)
    {
        Count(w);
        base.GroupedMatMul(c, a, w, transW, offsets, accumulate);
    }

    public override void MoeCombine(Tensor y, Tensor rows, Tensor topWeight, Tensor rowOf)
    {
        Combines++;
        base.MoeCombine(y, rows, topWeight, rowOf);
    }
}
