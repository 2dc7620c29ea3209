using FineTune.Engine;

namespace FineTune.Models.Tests;

/// <summary>
/// The CPU backend with graphs: between BeginGraphCapture and EndGraphCapture every operation is recorded instead of
/// run, and the graph's Launch runs the recorded operations again on the same tensors, as a CUDA graph replays its
/// kernels. Transfers, synchronisation and allocation while recording are refused as the CUDA backend refuses them.
/// Lets the CPU tests drive the engine's decode graphs (padding to buckets, recording, replay with new inputs).
/// </summary>
internal sealed class RecordingBackend(IBackend inner) : IBackend
{
    private readonly IBackend _inner = inner;
    private List<Action>? _recording;

    public string Name => _inner.Name;
    public DType ComputeDType => _inner.ComputeDType;
    public void BindToCurrentThread() => _inner.BindToCurrentThread();
    public bool SupportsGraphs => true;
    public int Recorded { get; private set; }
    public int Launches { get; private set; }

    public void BeginGraphCapture()
    {
        if (_recording is not null) throw new InvalidOperationException("already recording");
        _recording = [];
    }

    public IDeviceGraph? EndGraphCapture(bool discard = false)
    {
        var ops = _recording ?? throw new InvalidOperationException("not recording");
        _recording = null;
        if (discard) return null;
        Recorded++;
        return new Graph(this, [.. ops]);
    }

    private sealed class Graph(RecordingBackend owner, Action[] ops) : IDeviceGraph
    {
        public void Launch()
        {
            owner.Launches++;
            foreach (var op in ops) op();
        }

        public void Dispose() { }
    }

    private void Do(Action op)
    {
        if (_recording is not null) _recording.Add(op);
        else op();
    }

    private void Outside(string what)
    {
        if (_recording is not null) throw new NotSupportedException($"{what} while a graph is being recorded");
    }

    public void Dispose() => _inner.Dispose();

    public DeviceBuffer AllocateBuffer(long byteLength) { Outside("an allocation"); return _inner.AllocateBuffer(byteLength); }
    public void Upload(Tensor dst, ReadOnlySpan<float> src) { Outside("an upload"); _inner.Upload(dst, src); }
    public void Upload(Tensor dst, ReadOnlySpan<int> src) { Outside("an upload"); _inner.Upload(dst, src); }
    public void Download(Tensor src, Span<float> dst) { Outside("a download"); _inner.Download(src, dst); }
    public void Download(Tensor src, Span<int> dst) { Outside("a download"); _inner.Download(src, dst); }
    public void Synchronize() { Outside("a synchronisation"); _inner.Synchronize(); }
    public void Zero(Tensor x) => Do(() => _inner.Zero(x));
    public void Copy(Tensor dst, Tensor src) => Do(() => _inner.Copy(dst, src));
    public void Add(Tensor y, Tensor x, float alpha = 1f) => Do(() => _inner.Add(y, x, alpha));
    public void Scale(Tensor x, float s) => Do(() => _inner.Scale(x, s));
    public void MatMul(Tensor c, Tensor a, bool transA, Tensor b, bool transB, float alpha = 1f, bool accumulate = false) => Do(() => _inner.MatMul(c, a, transA, b, transB, alpha, accumulate));
    public void AddBias(Tensor y, Tensor bias) => Do(() => _inner.AddBias(y, bias));
    public void BiasBackward(Tensor dbias, Tensor dy) => Do(() => _inner.BiasBackward(dbias, dy));
    public void Embedding(Tensor output, Tensor table, Tensor ids) => Do(() => _inner.Embedding(output, table, ids));
    public void EmbeddingBackward(Tensor dtable, Tensor doutput, Tensor ids) => Do(() => _inner.EmbeddingBackward(dtable, doutput, ids));
    public void RmsNorm(Tensor y, Tensor rstd, Tensor x, Tensor weight, float eps, float weightOffset = 0f) => Do(() => _inner.RmsNorm(y, rstd, x, weight, eps, weightOffset));
    public void ResidualRmsNorm(Tensor resid, Tensor y, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps, float weightOffset = 0f) => Do(() => _inner.ResidualRmsNorm(resid, y, rstd, a, b, weight, eps, weightOffset));
    public void RmsNormBackward(Tensor dx, Tensor? dweight, Tensor dy, Tensor x, Tensor weight, Tensor rstd, float weightOffset = 0f) => Do(() => _inner.RmsNormBackward(dx, dweight, dy, x, weight, rstd, weightOffset));
    public void Rope(Tensor x, Tensor positions, Tensor cos, Tensor sin, int headDim, bool inverse) => Do(() => _inner.Rope(x, positions, cos, sin, headDim, inverse));
    public void Attention(Tensor output, Tensor lse, Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape shape) => Do(() => _inner.Attention(output, lse, q, k, v, segmentIds, shape));
    public void AttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor doutput, Tensor output, Tensor lse,
        Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape shape) => Do(() => _inner.AttentionBackward(dq, dk, dv, doutput, output, lse, q, k, v, segmentIds, shape));
    public void ScatterRows(Tensor dst, Tensor src, Tensor rows) => Do(() => _inner.ScatterRows(dst, src, rows));
    public void CachedAttention(Tensor output, Tensor q, Tensor kCache, Tensor vCache, Tensor sequences, Tensor positions, Tensor blockTables, CachedAttentionShape shape) => Do(() => _inner.CachedAttention(output, q, kCache, vCache, sequences, positions, blockTables, shape));
    public void ArgMax(Tensor x, Tensor output) => Do(() => _inner.ArgMax(x, output));
    public void SampleRows(Tensor logits, Tensor parameters, Tensor seen, Tensor output, Tensor scratch) => Do(() => _inner.SampleRows(logits, parameters, seen, output, scratch));
    public void SwiGlu(Tensor h, Tensor gate, Tensor up) => Do(() => _inner.SwiGlu(h, gate, up));
    public void SwiGluBackward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up) => Do(() => _inner.SwiGluBackward(dgate, dup, dh, gate, up));
    public void GeGlu(Tensor h, Tensor gate, Tensor up) => Do(() => _inner.GeGlu(h, gate, up));
    public void GeGluBackward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up) => Do(() => _inner.GeGluBackward(dgate, dup, dh, gate, up));
    public void SoftCap(Tensor y, Tensor x, float cap) => Do(() => _inner.SoftCap(y, x, cap));
    public void SoftCapBackward(Tensor dx, Tensor y, float cap) => Do(() => _inner.SoftCapBackward(dx, y, cap));
    public void MoeRoute(Tensor logits, Tensor probs, Tensor topIdx, Tensor topWeight, bool normalize) => Do(() => _inner.MoeRoute(logits, probs, topIdx, topWeight, normalize));
    public void MoeRouteBackward(Tensor dlogits, Tensor dTopWeight, Tensor probs, Tensor topIdx, Tensor topWeight, bool normalize, Tensor? auxGrad, Tensor? tokenMask, float auxScale) =>
        Do(() => _inner.MoeRouteBackward(dlogits, dTopWeight, probs, topIdx, topWeight, normalize, auxGrad, tokenMask, auxScale));
    public void MoeRouterStatistics(Tensor counts, Tensor probSums, Tensor probs, Tensor topIdx, Tensor tokenMask) => Do(() => _inner.MoeRouterStatistics(counts, probSums, probs, topIdx, tokenMask));
    public void MoeSort(Tensor topIdx, Tensor offsets, Tensor sortedToken, Tensor rowOf) => Do(() => _inner.MoeSort(topIdx, offsets, sortedToken, rowOf));
    public void GroupedMatMul(Tensor c, Tensor a, Tensor w, bool transW, Tensor offsets, bool accumulate = false) => Do(() => _inner.GroupedMatMul(c, a, w, transW, offsets, accumulate));
    public void GroupedMatMulWeightGrad(Tensor dw, Tensor dc, Tensor a, Tensor offsets) => Do(() => _inner.GroupedMatMulWeightGrad(dw, dc, a, offsets));
    public void MoeCombine(Tensor y, Tensor rows, Tensor topWeight, Tensor rowOf) => Do(() => _inner.MoeCombine(y, rows, topWeight, rowOf));
    public void MoeCombineBackward(Tensor drows, Tensor dTopWeight, Tensor dy, Tensor rows, Tensor topWeight, Tensor rowOf) => Do(() => _inner.MoeCombineBackward(drows, dTopWeight, dy, rows, topWeight, rowOf));
    public void MoeGatherBackward(Tensor dx, Tensor drows, Tensor rowOf) => Do(() => _inner.MoeGatherBackward(dx, drows, rowOf));
    public void CrossEntropy(Tensor logits, Tensor labels, Tensor lossSum, float gradScale, bool computeGrad) => Do(() => _inner.CrossEntropy(logits, labels, lossSum, gradScale, computeGrad));
    public void LabelLogProbs(Tensor logits, Tensor labels, Tensor logProbs, Tensor? gradScales) => Do(() => _inner.LabelLogProbs(logits, labels, logProbs, gradScales));
    public void Dropout(Tensor y, Tensor x, float p, ulong seed) => Do(() => _inner.Dropout(y, x, p, seed));
    public void AddUniformNoise(Tensor x, float magnitude, ulong seed) => Do(() => _inner.AddUniformNoise(x, magnitude, seed));
    public void SumOfSquares(Tensor x, Tensor acc) => Do(() => _inner.SumOfSquares(x, acc));
    public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor? computeCopy, Tensor? gradNormSquared, AdamWStep step) => Do(() => _inner.AdamW(param, grad, m, v, computeCopy, gradNormSquared, step));
    public void AdamW8bit(Tensor param, Tensor grad, Tensor m8, Tensor v8, Tensor absmaxM, Tensor absmaxV, Tensor codeM, Tensor codeV,
        Tensor? computeCopy, Tensor? gradNormSquared, AdamWStep step) => Do(() => _inner.AdamW8bit(param, grad, m8, v8, absmaxM, absmaxV, codeM, codeV, computeCopy, gradNormSquared, step));
    public void Dequantize(Tensor dst, QuantizedWeight weight) => Do(() => _inner.Dequantize(dst, weight));
    public string? Fp8Refusal => _inner.Fp8Refusal;
    public void QuantizeFp8(Tensor codes, Tensor scaleInverse, Tensor x, Fp8Format format) => Do(() => _inner.QuantizeFp8(codes, scaleInverse, x, format));
    public void Fp8MatMul(Tensor c, Tensor a, QuantizedWeight w, bool inputGradient, bool accumulate = false) => Do(() => _inner.Fp8MatMul(c, a, w, inputGradient, accumulate));
    public void Fp8MatMulShared(IReadOnlyList<Tensor> cs, Tensor a, IReadOnlyList<QuantizedWeight> ws, bool accumulate = false) => Do(() => _inner.Fp8MatMulShared(cs, a, ws, accumulate));
}
