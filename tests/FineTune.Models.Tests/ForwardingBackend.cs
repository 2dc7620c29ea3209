using FineTune.Engine;

namespace FineTune.Models.Tests;

/// <summary>
/// An <see cref="IBackend"/> that forwards every member to an inner backend: each device operation through
/// <see cref="Run"/>, each transfer, allocation and synchronisation after <see cref="BeforeHost"/>. A test decorator
/// overrides the two hooks (and the members it changes) instead of forwarding each operation by hand, so an operation
/// added to IBackend is one line here, and <c>ForwardingBackendTests</c> fails while one is not declared here or does
/// not pass through <see cref="Run"/> (a default interface member would otherwise run the interface's body, silently).
/// </summary>
internal abstract class ForwardingBackend(IBackend inner) : IBackend
{
    protected IBackend Inner { get; } = inner;

    /// <summary>Runs one device operation; a decorator may record, time or refuse it instead.</summary>
    protected virtual void Run(Action operation) => operation();

    /// <summary>Called before a host transfer, an allocation or a synchronisation, naming it ("an upload").</summary>
    protected virtual void BeforeHost(string what) { }

    public virtual string Name => Inner.Name;
    public virtual DType ComputeDType => Inner.ComputeDType;
    public virtual DeviceMemory? Memory => Inner.Memory;
    public virtual void BindToCurrentThread() => Inner.BindToCurrentThread();
    public virtual bool SupportsGraphs => Inner.SupportsGraphs;
    public virtual void BeginGraphCapture() => Inner.BeginGraphCapture();
    public virtual IDeviceGraph? EndGraphCapture(bool discard = false) => Inner.EndGraphCapture(discard);
    public virtual void Dispose() => Inner.Dispose();

    public virtual DeviceBuffer AllocateBuffer(long byteLength) { BeforeHost("an allocation"); return Inner.AllocateBuffer(byteLength); }
    public virtual void Upload(Tensor dst, ReadOnlySpan<float> src) { BeforeHost("an upload"); Inner.Upload(dst, src); }
    public virtual void Upload(Tensor dst, ReadOnlySpan<int> src) { BeforeHost("an upload"); Inner.Upload(dst, src); }
    public virtual void Download(Tensor src, Span<float> dst) { BeforeHost("a download"); Inner.Download(src, dst); }
    public virtual void Download(Tensor src, Span<int> dst) { BeforeHost("a download"); Inner.Download(src, dst); }
    public virtual void Synchronize() { BeforeHost("a synchronisation"); Inner.Synchronize(); }

    public virtual void Zero(Tensor x) => Run(() => Inner.Zero(x));
    public virtual void Copy(Tensor dst, Tensor src) => Run(() => Inner.Copy(dst, src));
    public virtual void Add(Tensor y, Tensor x, float alpha = 1f) => Run(() => Inner.Add(y, x, alpha));
    public virtual void Scale(Tensor x, float s) => Run(() => Inner.Scale(x, s));
    public virtual void MatMul(Tensor c, Tensor a, bool transA, Tensor b, bool transB, float alpha = 1f, bool accumulate = false) => Run(() => Inner.MatMul(c, a, transA, b, transB, alpha, accumulate));
    public virtual void MatMulBias(Tensor c, Tensor a, bool transA, Tensor b, bool transB, Tensor bias, float alpha = 1f) => Run(() => Inner.MatMulBias(c, a, transA, b, transB, bias, alpha));
    public virtual void MatMulShared(IReadOnlyList<Tensor> cs, Tensor a, IReadOnlyList<Tensor> bs) => Run(() => Inner.MatMulShared(cs, a, bs));
    public virtual string? Fp8Refusal => Inner.Fp8Refusal;
    public virtual void QuantizeFp8(Tensor codes, Tensor scaleInverse, Tensor x, Fp8Format format) => Run(() => Inner.QuantizeFp8(codes, scaleInverse, x, format));
    public virtual void Fp8MatMul(Tensor c, Tensor a, QuantizedWeight w, bool inputGradient, bool accumulate = false, Fp8DelayedScale? delayed = null) => Run(() => Inner.Fp8MatMul(c, a, w, inputGradient, accumulate, delayed));
    public virtual void Fp8MatMulShared(IReadOnlyList<Tensor> cs, Tensor a, IReadOnlyList<QuantizedWeight> ws, bool accumulate = false, Fp8DelayedScale? delayed = null) => Run(() => Inner.Fp8MatMulShared(cs, a, ws, accumulate, delayed));
    public virtual void Fp8MatMulSharedCodes(IReadOnlyList<Tensor> cs, Fp8Operand a, IReadOnlyList<QuantizedWeight> ws, bool accumulate = false) => Run(() => Inner.Fp8MatMulSharedCodes(cs, a, ws, accumulate));
    public virtual void Fp8AdvanceHistories(Tensor states, int sites, int history) => Run(() => Inner.Fp8AdvanceHistories(states, sites, history));
    public virtual void Fp8MatMulCodes(Tensor c, Fp8Operand a, QuantizedWeight w, bool inputGradient, bool accumulate = false) => Run(() => Inner.Fp8MatMulCodes(c, a, w, inputGradient, accumulate));
    public virtual void SwiGluFp8(Tensor h, Tensor gate, Tensor up, Fp8Operand hCodes, Fp8DelayedScale site) => Run(() => Inner.SwiGluFp8(h, gate, up, hCodes, site));
    public virtual void SwiGluBackwardFp8(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up, Fp8Operand dgateCodes, Fp8DelayedScale dgateSite,
        Fp8Operand dupCodes, Fp8DelayedScale dupSite) => Run(() => Inner.SwiGluBackwardFp8(dgate, dup, dh, gate, up, dgateCodes, dgateSite, dupCodes, dupSite));
    public virtual void AddBias(Tensor y, Tensor bias) => Run(() => Inner.AddBias(y, bias));
    public virtual void BiasBackward(Tensor dbias, Tensor dy) => Run(() => Inner.BiasBackward(dbias, dy));
    public virtual void Embedding(Tensor output, Tensor table, Tensor ids) => Run(() => Inner.Embedding(output, table, ids));
    public virtual void EmbeddingBackward(Tensor dtable, Tensor doutput, Tensor ids) => Run(() => Inner.EmbeddingBackward(dtable, doutput, ids));
    public virtual void RmsNorm(Tensor y, Tensor rstd, Tensor x, Tensor weight, float eps, float weightOffset = 0f) => Run(() => Inner.RmsNorm(y, rstd, x, weight, eps, weightOffset));
    public virtual void ResidualRmsNorm(Tensor resid, Tensor y, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps, float weightOffset = 0f) => Run(() => Inner.ResidualRmsNorm(resid, y, rstd, a, b, weight, eps, weightOffset));
    public virtual void RmsNormFp8(Tensor y, Tensor rstd, Tensor x, Tensor weight, float eps, float weightOffset, Fp8Operand yCodes, Fp8DelayedScale site) =>
        Run(() => Inner.RmsNormFp8(y, rstd, x, weight, eps, weightOffset, yCodes, site));
    public virtual void ResidualRmsNormFp8(Tensor resid, Tensor y, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps, float weightOffset, Fp8Operand yCodes,
        Fp8DelayedScale site) => Run(() => Inner.ResidualRmsNormFp8(resid, y, rstd, a, b, weight, eps, weightOffset, yCodes, site));
    public virtual void RmsNormBackward(Tensor dx, Tensor? dweight, Tensor dy, Tensor x, Tensor weight, Tensor rstd, float weightOffset = 0f, bool accumulate = true) => Run(() => Inner.RmsNormBackward(dx, dweight, dy, x, weight, rstd, weightOffset, accumulate));
    public virtual void Rope(Tensor x, Tensor positions, Tensor cos, Tensor sin, int headDim, bool inverse) => Run(() => Inner.Rope(x, positions, cos, sin, headDim, inverse));
    public virtual void Attention(Tensor output, Tensor lse, Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape shape) => Run(() => Inner.Attention(output, lse, q, k, v, segmentIds, shape));
    public virtual void AttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor doutput, Tensor output, Tensor lse,
        Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape shape, Tensor? scratch = null) => Run(() => Inner.AttentionBackward(dq, dk, dv, doutput, output, lse, q, k, v, segmentIds, shape, scratch));
    public virtual void ScatterRows(Tensor dst, Tensor src, Tensor rows) => Run(() => Inner.ScatterRows(dst, src, rows));
    public virtual void CachedAttention(Tensor output, Tensor q, Tensor kCache, Tensor vCache, Tensor sequences, Tensor positions, Tensor blockTables, CachedAttentionShape shape) => Run(() => Inner.CachedAttention(output, q, kCache, vCache, sequences, positions, blockTables, shape));
    public virtual void ArgMax(Tensor x, Tensor output) => Run(() => Inner.ArgMax(x, output));
    public virtual void SampleRows(Tensor logits, Tensor parameters, Tensor seen, Tensor output, Tensor scratch) => Run(() => Inner.SampleRows(logits, parameters, seen, output, scratch));
    public virtual void SwiGlu(Tensor h, Tensor gate, Tensor up) => Run(() => Inner.SwiGlu(h, gate, up));
    public virtual void SwiGluBackward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up) => Run(() => Inner.SwiGluBackward(dgate, dup, dh, gate, up));
    public virtual void NormMatMulShared(IReadOnlyList<Tensor> cs, Tensor ln, Tensor rstd, Tensor x, Tensor normWeight, float eps, IReadOnlyList<Tensor> bs) =>
        Run(() => Inner.NormMatMulShared(cs, ln, rstd, x, normWeight, eps, bs));
    public virtual void NormSwiGluMatMul(Tensor h, Tensor gate, Tensor up, Tensor ln, Tensor rstd, Tensor x, Tensor normWeight, float eps, Tensor gateWeight, Tensor upWeight) =>
        Run(() => Inner.NormSwiGluMatMul(h, gate, up, ln, rstd, x, normWeight, eps, gateWeight, upWeight));
    public virtual void MatMulResidual(Tensor y, Tensor a, Tensor weight, Tensor residual) => Run(() => Inner.MatMulResidual(y, a, weight, residual));
    public virtual void AttentionOutputMlp(Tensor y, Tensor mid, Tensor h, Tensor gate, Tensor up, Tensor ln, Tensor rstd, Tensor att, Tensor oWeight, Tensor x,
        Tensor normWeight, float eps, Tensor gateWeight, Tensor upWeight, Tensor downWeight) =>
        Run(() => Inner.AttentionOutputMlp(y, mid, h, gate, up, ln, rstd, att, oWeight, x, normWeight, eps, gateWeight, upWeight, downWeight));
    public virtual void DecodeLayer(DecodeLayerTensors layer) => Run(() => Inner.DecodeLayer(layer));
    public virtual void QkRopeCache(Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm, Tensor? qRstd, Tensor? kRstd, float eps,
        Tensor positions, Tensor cos, Tensor sin, int headDim, Tensor kCache, Tensor vCache, Tensor cacheRows) =>
        Run(() => Inner.QkRopeCache(q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, eps, positions, cos, sin, headDim, kCache, vCache, cacheRows));
    public virtual void QkRopeCacheAttention(Tensor output, Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm, Tensor? qRstd, Tensor? kRstd,
        float eps, Tensor positions, Tensor cos, Tensor sin, int headDim, Tensor kCache, Tensor vCache, Tensor cacheRows, Tensor sequences, Tensor blockTables,
        CachedAttentionShape shape) =>
        Run(() => Inner.QkRopeCacheAttention(output, q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, eps, positions, cos, sin, headDim, kCache, vCache, cacheRows,
            sequences, blockTables, shape));
    public virtual void GeGlu(Tensor h, Tensor gate, Tensor up) => Run(() => Inner.GeGlu(h, gate, up));
    public virtual void GeGluBackward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up) => Run(() => Inner.GeGluBackward(dgate, dup, dh, gate, up));
    public virtual void SoftCap(Tensor y, Tensor x, float cap) => Run(() => Inner.SoftCap(y, x, cap));
    public virtual void SoftCapBackward(Tensor dx, Tensor y, float cap) => Run(() => Inner.SoftCapBackward(dx, y, cap));
    public virtual void MoeRoute(Tensor logits, Tensor probs, Tensor topIdx, Tensor topWeight, bool normalize) => Run(() => Inner.MoeRoute(logits, probs, topIdx, topWeight, normalize));
    public virtual void MoeRouteBackward(Tensor dlogits, Tensor dTopWeight, Tensor probs, Tensor topIdx, Tensor topWeight, bool normalize, Tensor? auxGrad, Tensor? tokenMask, float auxScale) =>
        Run(() => Inner.MoeRouteBackward(dlogits, dTopWeight, probs, topIdx, topWeight, normalize, auxGrad, tokenMask, auxScale));
    public virtual void MoeRouterStatistics(Tensor counts, Tensor probSums, Tensor probs, Tensor topIdx, Tensor tokenMask) => Run(() => Inner.MoeRouterStatistics(counts, probSums, probs, topIdx, tokenMask));
    public virtual void MoeSort(Tensor topIdx, Tensor offsets, Tensor sortedToken, Tensor rowOf) => Run(() => Inner.MoeSort(topIdx, offsets, sortedToken, rowOf));
    public virtual void GroupedMatMul(Tensor c, Tensor a, Tensor w, bool transW, Tensor offsets, bool accumulate = false) => Run(() => Inner.GroupedMatMul(c, a, w, transW, offsets, accumulate));
    public virtual void GroupedMatMulWeightGrad(Tensor dw, Tensor dc, Tensor a, Tensor offsets) => Run(() => Inner.GroupedMatMulWeightGrad(dw, dc, a, offsets));
    public virtual void MoeCombine(Tensor y, Tensor rows, Tensor topWeight, Tensor rowOf) => Run(() => Inner.MoeCombine(y, rows, topWeight, rowOf));
    public virtual void MoeCombineBackward(Tensor drows, Tensor dTopWeight, Tensor dy, Tensor rows, Tensor topWeight, Tensor rowOf) => Run(() => Inner.MoeCombineBackward(drows, dTopWeight, dy, rows, topWeight, rowOf));
    public virtual void MoeCombineDownBackward(Tensor dact, Tensor dTopWeight, Tensor h, Tensor act, Tensor topWeight, Tensor rowOf) => Run(() => Inner.MoeCombineDownBackward(dact, dTopWeight, h, act, topWeight, rowOf));
    public virtual void MoeGatherBackward(Tensor dx, Tensor drows, Tensor rowOf) => Run(() => Inner.MoeGatherBackward(dx, drows, rowOf));
    public virtual void CrossEntropy(Tensor logits, Tensor labels, Tensor lossSum, float gradScale, bool computeGrad) => Run(() => Inner.CrossEntropy(logits, labels, lossSum, gradScale, computeGrad));
    public virtual void LabelLogProbs(Tensor logits, Tensor labels, Tensor logProbs, Tensor? gradScales) => Run(() => Inner.LabelLogProbs(logits, labels, logProbs, gradScales));
    public virtual void Dropout(Tensor y, Tensor x, float p, ulong seed) => Run(() => Inner.Dropout(y, x, p, seed));
    public virtual void AddUniformNoise(Tensor x, float magnitude, ulong seed) => Run(() => Inner.AddUniformNoise(x, magnitude, seed));
    public virtual void SumOfSquares(Tensor x, Tensor acc) => Run(() => Inner.SumOfSquares(x, acc));
    public virtual void SumOfSquaresMany(IReadOnlyList<Tensor> xs, Tensor acc) => Run(() => Inner.SumOfSquaresMany(xs, acc));
    public virtual void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor? computeCopy, Tensor? gradNormSquared, AdamWStep step) => Run(() => Inner.AdamW(param, grad, m, v, computeCopy, gradNormSquared, step));
    public virtual void AdamWMany(IReadOnlyList<AdamWTensors> tensors, IReadOnlyList<AdamWStep> steps, Tensor? gradNormSquared) => Run(() => Inner.AdamWMany(tensors, steps, gradNormSquared));
    public virtual void AdamW8bit(Tensor param, Tensor grad, Tensor m8, Tensor v8, Tensor absmaxM, Tensor absmaxV, Tensor codeM, Tensor codeV,
        Tensor? computeCopy, Tensor? gradNormSquared, AdamWStep step) => Run(() => Inner.AdamW8bit(param, grad, m8, v8, absmaxM, absmaxV, codeM, codeV, computeCopy, gradNormSquared, step));
    public virtual void Dequantize(Tensor dst, QuantizedWeight weight) => Run(() => Inner.Dequantize(dst, weight));
}
