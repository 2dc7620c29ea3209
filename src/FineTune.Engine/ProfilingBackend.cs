using System.Diagnostics;

namespace FineTune.Engine;

/// <summary>
/// A backend decorator that times every operation (synchronising the device after each, so the numbers are
/// per-operation wall times, not overlap). For profiling only: where a training step spends its time.
/// </summary>
public sealed class ProfilingBackend(IBackend inner) : IBackend
{
    private readonly IBackend _inner = inner;
    private readonly Dictionary<string, (long Calls, long Ticks)> _stats = [];

    public string Name => _inner.Name;
    public DType ComputeDType => _inner.ComputeDType;
    public void BindToCurrentThread() => _inner.BindToCurrentThread();
    public IBackend Inner => _inner;
    public DeviceMemory? Memory => _inner.Memory;

    /// <summary>Per operation: calls and total milliseconds, most expensive first.</summary>
    public IReadOnlyList<(string Op, long Calls, double Ms)> Report() =>
        _stats.Select(kv => (kv.Key, kv.Value.Calls, kv.Value.Ticks * 1000.0 / Stopwatch.Frequency)).OrderByDescending(x => x.Item3).ToList();

    public void Reset() => _stats.Clear();

    private long Begin() => Stopwatch.GetTimestamp();

    private void End(string op, long start)
    {
        _inner.Synchronize();
        long ticks = Stopwatch.GetTimestamp() - start;
        _stats.TryGetValue(op, out var s);
        _stats[op] = (s.Calls + 1, s.Ticks + ticks);
    }

    public void Dispose() => _inner.Dispose();

    public DeviceBuffer AllocateBuffer(long byteLength) => _inner.AllocateBuffer(byteLength);
    public void Upload(Tensor dst, ReadOnlySpan<float> src) { var t = Begin(); _inner.Upload(dst, src); End("Upload", t); }
    public void Upload(Tensor dst, ReadOnlySpan<int> src) { var t = Begin(); _inner.Upload(dst, src); End("Upload", t); }
    public void Download(Tensor src, Span<float> dst) { var t = Begin(); _inner.Download(src, dst); End("Download", t); }
    public void Download(Tensor src, Span<int> dst) { var t = Begin(); _inner.Download(src, dst); End("Download", t); }
    public void Synchronize() { var t = Begin(); _inner.Synchronize(); End("Synchronize", t); }
    public void Zero(Tensor x) { var t = Begin(); _inner.Zero(x); End("Zero", t); }
    public void Copy(Tensor dst, Tensor src) { var t = Begin(); _inner.Copy(dst, src); End("Copy", t); }
    public void Add(Tensor y, Tensor x, float alpha = 1f) { var t = Begin(); _inner.Add(y, x, alpha); End("Add", t); }
    public void Scale(Tensor x, float s) { var t = Begin(); _inner.Scale(x, s); End("Scale", t); }
    public void MatMul(Tensor c, Tensor a, bool transA, Tensor b, bool transB, float alpha = 1f, bool accumulate = false) { var t = Begin(); _inner.MatMul(c, a, transA, b, transB, alpha, accumulate); End("MatMul", t); }
    public void MatMulBias(Tensor c, Tensor a, bool transA, Tensor b, bool transB, Tensor bias, float alpha = 1f) { var t = Begin(); _inner.MatMulBias(c, a, transA, b, transB, bias, alpha); End("MatMulBias", t); }
    public void AddBias(Tensor y, Tensor bias) { var t = Begin(); _inner.AddBias(y, bias); End("AddBias", t); }
    public void BiasBackward(Tensor dbias, Tensor dy) { var t = Begin(); _inner.BiasBackward(dbias, dy); End("BiasBackward", t); }
    public void Embedding(Tensor output, Tensor table, Tensor ids) { var t = Begin(); _inner.Embedding(output, table, ids); End("Embedding", t); }
    public void EmbeddingBackward(Tensor dtable, Tensor doutput, Tensor ids) { var t = Begin(); _inner.EmbeddingBackward(dtable, doutput, ids); End("EmbeddingBackward", t); }
    public void RmsNorm(Tensor y, Tensor rstd, Tensor x, Tensor weight, float eps, float weightOffset = 0f) { var t = Begin(); _inner.RmsNorm(y, rstd, x, weight, eps, weightOffset); End("RmsNorm", t); }
    public void ResidualRmsNorm(Tensor resid, Tensor y, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps, float weightOffset = 0f) { var t = Begin(); _inner.ResidualRmsNorm(resid, y, rstd, a, b, weight, eps, weightOffset); End("ResidualRmsNorm", t); }
    public void RmsNormFp8(Tensor y, Tensor rstd, Tensor x, Tensor weight, float eps, float weightOffset, Fp8Operand yCodes, Fp8DelayedScale site)
    { var t = Begin(); _inner.RmsNormFp8(y, rstd, x, weight, eps, weightOffset, yCodes, site); End("RmsNormFp8", t); }
    public void ResidualRmsNormFp8(Tensor resid, Tensor y, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps, float weightOffset, Fp8Operand yCodes,
        Fp8DelayedScale site)
    { var t = Begin(); _inner.ResidualRmsNormFp8(resid, y, rstd, a, b, weight, eps, weightOffset, yCodes, site); End("ResidualRmsNormFp8", t); }
    public void RmsNormBackward(Tensor dx, Tensor? dweight, Tensor dy, Tensor x, Tensor weight, Tensor rstd, float weightOffset = 0f, bool accumulate = true) { var t = Begin(); _inner.RmsNormBackward(dx, dweight, dy, x, weight, rstd, weightOffset, accumulate); End("RmsNormBackward", t); }
    public void Rope(Tensor x, Tensor positions, Tensor cos, Tensor sin, int headDim, bool inverse) { var t = Begin(); _inner.Rope(x, positions, cos, sin, headDim, inverse); End("Rope", t); }
    public void Attention(Tensor output, Tensor lse, Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape shape) { var t = Begin(); _inner.Attention(output, lse, q, k, v, segmentIds, shape); End("Attention", t); }
    public void AttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor doutput, Tensor output, Tensor lse,
        Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape shape, Tensor? scratch = null) { var t = Begin(); _inner.AttentionBackward(dq, dk, dv, doutput, output, lse, q, k, v, segmentIds, shape, scratch); End("AttentionBackward", t); }
    public void ScatterRows(Tensor dst, Tensor src, Tensor rows) { var t = Begin(); _inner.ScatterRows(dst, src, rows); End("ScatterRows", t); }
    public void CachedAttention(Tensor output, Tensor q, Tensor kCache, Tensor vCache, Tensor sequences, Tensor positions, Tensor blockTables, CachedAttentionShape shape) { var t = Begin(); _inner.CachedAttention(output, q, kCache, vCache, sequences, positions, blockTables, shape); End("CachedAttention", t); }
    public void ArgMax(Tensor x, Tensor output) { var t = Begin(); _inner.ArgMax(x, output); End("ArgMax", t); }
    public void SampleRows(Tensor logits, Tensor parameters, Tensor seen, Tensor output, Tensor scratch) { var t = Begin(); _inner.SampleRows(logits, parameters, seen, output, scratch); End("SampleRows", t); }
    public void SwiGlu(Tensor h, Tensor gate, Tensor up) { var t = Begin(); _inner.SwiGlu(h, gate, up); End("SwiGlu", t); }
    public void SwiGluBackward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up) { var t = Begin(); _inner.SwiGluBackward(dgate, dup, dh, gate, up); End("SwiGluBackward", t); }
    public void GeGlu(Tensor h, Tensor gate, Tensor up) { var t = Begin(); _inner.GeGlu(h, gate, up); End("GeGlu", t); }
    public void GeGluBackward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up) { var t = Begin(); _inner.GeGluBackward(dgate, dup, dh, gate, up); End("GeGluBackward", t); }
    public void SoftCap(Tensor y, Tensor x, float cap) { var t = Begin(); _inner.SoftCap(y, x, cap); End("SoftCap", t); }
    public void SoftCapBackward(Tensor dx, Tensor y, float cap) { var t = Begin(); _inner.SoftCapBackward(dx, y, cap); End("SoftCapBackward", t); }
    public void CrossEntropy(Tensor logits, Tensor labels, Tensor lossSum, float gradScale, bool computeGrad) { var t = Begin(); _inner.CrossEntropy(logits, labels, lossSum, gradScale, computeGrad); End("CrossEntropy", t); }
    public void LabelLogProbs(Tensor logits, Tensor labels, Tensor logProbs, Tensor? gradScales) { var t = Begin(); _inner.LabelLogProbs(logits, labels, logProbs, gradScales); End("LabelLogProbs", t); }
    public void Dropout(Tensor y, Tensor x, float p, ulong seed) { var t = Begin(); _inner.Dropout(y, x, p, seed); End("Dropout", t); }
    public void AddUniformNoise(Tensor x, float magnitude, ulong seed) { var t = Begin(); _inner.AddUniformNoise(x, magnitude, seed); End("AddUniformNoise", t); }
    public void SumOfSquares(Tensor x, Tensor acc) { var t = Begin(); _inner.SumOfSquares(x, acc); End("SumOfSquares", t); }
    public void SumOfSquaresMany(IReadOnlyList<Tensor> xs, Tensor acc) { var t = Begin(); _inner.SumOfSquaresMany(xs, acc); End("SumOfSquaresMany", t); }
    public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor? computeCopy, Tensor? gradNormSquared, AdamWStep step) { var t = Begin(); _inner.AdamW(param, grad, m, v, computeCopy, gradNormSquared, step); End("AdamW", t); }
    public void AdamWMany(IReadOnlyList<AdamWTensors> tensors, IReadOnlyList<AdamWStep> steps, Tensor? gradNormSquared) { var t = Begin(); _inner.AdamWMany(tensors, steps, gradNormSquared); End("AdamWMany", t); }
    public void AdamW8bit(Tensor param, Tensor grad, Tensor m8, Tensor v8, Tensor absmaxM, Tensor absmaxV, Tensor codeM, Tensor codeV,
        Tensor? computeCopy, Tensor? gradNormSquared, AdamWStep step) { var t = Begin(); _inner.AdamW8bit(param, grad, m8, v8, absmaxM, absmaxV, codeM, codeV, computeCopy, gradNormSquared, step); End("AdamW8bit", t); }
    public void Dequantize(Tensor dst, QuantizedWeight weight) { var t = Begin(); _inner.Dequantize(dst, weight); End("Dequantize", t); }
    public string? Fp8Refusal => _inner.Fp8Refusal;
    public void QuantizeFp8(Tensor codes, Tensor scaleInverse, Tensor x, Fp8Format format) { var t = Begin(); _inner.QuantizeFp8(codes, scaleInverse, x, format); End("QuantizeFp8", t); }
    public void Fp8MatMul(Tensor c, Tensor a, QuantizedWeight w, bool inputGradient, bool accumulate = false, Fp8DelayedScale? delayed = null) { var t = Begin(); _inner.Fp8MatMul(c, a, w, inputGradient, accumulate, delayed); End("Fp8MatMul", t); }
    public void Fp8AdvanceHistories(Tensor states, int sites, int history) { var t = Begin(); _inner.Fp8AdvanceHistories(states, sites, history); End("Fp8AdvanceHistories", t); }
    public void Fp8MatMulCodes(Tensor c, Fp8Operand a, QuantizedWeight w, bool inputGradient, bool accumulate = false) { var t = Begin(); _inner.Fp8MatMulCodes(c, a, w, inputGradient, accumulate); End("Fp8MatMulCodes", t); }
    public void SwiGluFp8(Tensor h, Tensor gate, Tensor up, Fp8Operand hCodes, Fp8DelayedScale site) { var t = Begin(); _inner.SwiGluFp8(h, gate, up, hCodes, site); End("SwiGluFp8", t); }
    public void SwiGluBackwardFp8(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up, Fp8Operand dgateCodes, Fp8DelayedScale dgateSite,
        Fp8Operand dupCodes, Fp8DelayedScale dupSite)
    { var t = Begin(); _inner.SwiGluBackwardFp8(dgate, dup, dh, gate, up, dgateCodes, dgateSite, dupCodes, dupSite); End("SwiGluBackwardFp8", t); }
    public void MatMulShared(IReadOnlyList<Tensor> cs, Tensor a, IReadOnlyList<Tensor> bs) { var t = Begin(); _inner.MatMulShared(cs, a, bs); End("MatMulShared", t); }
    public void NormMatMulShared(IReadOnlyList<Tensor> cs, Tensor ln, Tensor rstd, Tensor x, Tensor normWeight, float eps, IReadOnlyList<Tensor> bs)
    { var t = Begin(); _inner.NormMatMulShared(cs, ln, rstd, x, normWeight, eps, bs); End("NormMatMulShared", t); }
    public void NormSwiGluMatMul(Tensor h, Tensor gate, Tensor up, Tensor ln, Tensor rstd, Tensor x, Tensor normWeight, float eps, Tensor gateWeight, Tensor upWeight)
    { var t = Begin(); _inner.NormSwiGluMatMul(h, gate, up, ln, rstd, x, normWeight, eps, gateWeight, upWeight); End("NormSwiGluMatMul", t); }
    public void MatMulResidual(Tensor y, Tensor a, Tensor weight, Tensor residual) { var t = Begin(); _inner.MatMulResidual(y, a, weight, residual); End("MatMulResidual", t); }
    public void AttentionOutputMlp(Tensor y, Tensor mid, Tensor h, Tensor gate, Tensor up, Tensor ln, Tensor rstd, Tensor att, Tensor oWeight, Tensor x,
        Tensor normWeight, float eps, Tensor gateWeight, Tensor upWeight, Tensor downWeight)
    {
        var t = Begin();
        _inner.AttentionOutputMlp(y, mid, h, gate, up, ln, rstd, att, oWeight, x, normWeight, eps, gateWeight, upWeight, downWeight);
        End("AttentionOutputMlp", t);
    }
    public void DecodeLayer(DecodeLayerTensors layer) { var t = Begin(); _inner.DecodeLayer(layer); End("DecodeLayer", t); }
    public void QkRopeCache(Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm, Tensor? qRstd, Tensor? kRstd, float eps,
        Tensor positions, Tensor cos, Tensor sin, int headDim, Tensor kCache, Tensor vCache, Tensor cacheRows)
    { var t = Begin(); _inner.QkRopeCache(q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, eps, positions, cos, sin, headDim, kCache, vCache, cacheRows); End("QkRopeCache", t); }
    public void QkRopeCacheAttention(Tensor output, Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm, Tensor? qRstd, Tensor? kRstd,
        float eps, Tensor positions, Tensor cos, Tensor sin, int headDim, Tensor kCache, Tensor vCache, Tensor cacheRows, Tensor sequences, Tensor blockTables,
        CachedAttentionShape shape)
    {
        var t = Begin();
        _inner.QkRopeCacheAttention(output, q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, eps, positions, cos, sin, headDim, kCache, vCache, cacheRows, sequences, blockTables, shape);
        End("QkRopeCacheAttention", t);
    }
    public void Fp8MatMulShared(IReadOnlyList<Tensor> cs, Tensor a, IReadOnlyList<QuantizedWeight> ws, bool accumulate = false, Fp8DelayedScale? delayed = null) { var t = Begin(); _inner.Fp8MatMulShared(cs, a, ws, accumulate, delayed); End("Fp8MatMulShared", t); }
    public void Fp8MatMulSharedCodes(IReadOnlyList<Tensor> cs, Fp8Operand a, IReadOnlyList<QuantizedWeight> ws, bool accumulate = false) { var t = Begin(); _inner.Fp8MatMulSharedCodes(cs, a, ws, accumulate); End("Fp8MatMulSharedCodes", t); }
    public void MoeRoute(Tensor logits, Tensor probs, Tensor topIdx, Tensor topWeight, bool normalize) { var t = Begin(); _inner.MoeRoute(logits, probs, topIdx, topWeight, normalize); End("MoeRoute", t); }
    public void MoeRouteBackward(Tensor dlogits, Tensor dTopWeight, Tensor probs, Tensor topIdx, Tensor topWeight, bool normalize, Tensor? auxGrad, Tensor? tokenMask, float auxScale)
    { var t = Begin(); _inner.MoeRouteBackward(dlogits, dTopWeight, probs, topIdx, topWeight, normalize, auxGrad, tokenMask, auxScale); End("MoeRouteBackward", t); }
    public void MoeRouterStatistics(Tensor counts, Tensor probSums, Tensor probs, Tensor topIdx, Tensor tokenMask) { var t = Begin(); _inner.MoeRouterStatistics(counts, probSums, probs, topIdx, tokenMask); End("MoeRouterStatistics", t); }
    public void MoeSort(Tensor topIdx, Tensor offsets, Tensor sortedToken, Tensor rowOf) { var t = Begin(); _inner.MoeSort(topIdx, offsets, sortedToken, rowOf); End("MoeSort", t); }
    public void GroupedMatMul(Tensor c, Tensor a, Tensor w, bool transW, Tensor offsets, bool accumulate = false) { var t = Begin(); _inner.GroupedMatMul(c, a, w, transW, offsets, accumulate); End("GroupedMatMul", t); }
    public void GroupedMatMulWeightGrad(Tensor dw, Tensor dc, Tensor a, Tensor offsets) { var t = Begin(); _inner.GroupedMatMulWeightGrad(dw, dc, a, offsets); End("GroupedMatMulWeightGrad", t); }
    public void MoeCombine(Tensor y, Tensor rows, Tensor topWeight, Tensor rowOf) { var t = Begin(); _inner.MoeCombine(y, rows, topWeight, rowOf); End("MoeCombine", t); }
    public void MoeCombineBackward(Tensor drows, Tensor dTopWeight, Tensor dy, Tensor rows, Tensor topWeight, Tensor rowOf) { var t = Begin(); _inner.MoeCombineBackward(drows, dTopWeight, dy, rows, topWeight, rowOf); End("MoeCombineBackward", t); }
    public void MoeCombineDownBackward(Tensor dact, Tensor dTopWeight, Tensor h, Tensor act, Tensor topWeight, Tensor rowOf) { var t = Begin(); _inner.MoeCombineDownBackward(dact, dTopWeight, h, act, topWeight, rowOf); End("MoeCombineDownBackward", t); }
    public void MoeGatherBackward(Tensor dx, Tensor drows, Tensor rowOf) { var t = Begin(); _inner.MoeGatherBackward(dx, drows, rowOf); End("MoeGatherBackward", t); }
}
