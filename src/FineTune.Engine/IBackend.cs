namespace FineTune.Engine;

/// <summary>
/// Shape of one attention call. Q is [Batch, QueryLen, QueryHeads, HeadDim]; K and V are
/// [Batch, KvCapacity, KvHeads, HeadDim] of which the first KeyLen positions per sequence are used.
/// Query i sits at key position (KeyLen - QueryLen + i), so training uses QueryLen == KeyLen and
/// decoding with a KV cache uses QueryLen ≪ KeyLen. Segment ids are [Batch, KvCapacity]:
/// a query attends to keys at or before its own position that carry the same segment id, and
/// segments are contiguous runs (packed sequences; padding has a segment of its own).
/// </summary>
public readonly record struct AttentionShape(int Batch, int QueryLen, int KeyLen, int KvCapacity, int QueryHeads, int KvHeads, int HeadDim)
{
    public static AttentionShape Training(int batch, int seqLen, int queryHeads, int kvHeads, int headDim) =>
        new(batch, seqLen, seqLen, seqLen, queryHeads, kvHeads, headDim);

    /// <summary>Softmax scale: the variant's query scale when set (gemma's query_pre_attn_scalar^-½), else 1/sqrt(head_dim).</summary>
    public float Scale => Variant.QueryScale ?? 1f / MathF.Sqrt(HeadDim);

    /// <summary>The attention variant of the layer (sliding window, logit soft-cap, scale); none by default.</summary>
    public AttentionVariant Variant { get; init; }

    /// <summary>
    /// Set by the caller when every row holds one sequence, at most followed by padding that no loss reaches (no packed
    /// sequences): then plain causal attention over the whole row gives every token of the sequence what the segment ids
    /// give it, and a backend may run a kernel that ignores them (CUDA: cuDNN's fused attention). Padding rows may then
    /// see the sequence's keys; their outputs carry no loss and their gradients are zero either way.
    /// </summary>
    public bool Unpacked { get; init; }
}

/// <summary>
/// What a layer's attention computes beyond causal softmax(q·kᵀ·scale)·v. <see cref="Window"/> &gt; 0: key j is
/// visible from the query at key position p only when p − j &lt; Window (HF's sliding-window mask; gemma's local
/// layers, mistral). <see cref="SoftCap"/> &gt; 0: each scaled score s becomes cap·tanh(s/cap) before the softmax
/// (gemma 2's attn_logit_softcapping). <see cref="QueryScale"/>: the score scale when it is not head_dim^-½.
/// </summary>
public readonly record struct AttentionVariant(int Window = 0, float SoftCap = 0f, float? QueryScale = null)
{
    public bool IsPlain => Window <= 0 && SoftCap <= 0f;
}

/// <summary>
/// Shape of attention over a paged KV cache (generation). Q is [Tokens, QueryHeads·HeadDim]; the caches are a pool of
/// Blocks blocks of BlockSize positions, [Blocks·BlockSize, KvHeads·HeadDim]. A sequence's keys live in the blocks its
/// row of the block table ([rows, TableWidth], I32) names: position j at cache row table[j / BlockSize]·BlockSize +
/// j % BlockSize. Token t belongs to table row sequences[t] at position positions[t] and attends to that sequence's
/// keys 0 … positions[t] (its own key included, so the caller writes the step's K/V into the cache first). Tokens of
/// one step may come from any sequences in any mix of prompt chunks and single decode tokens. (Whole-length slots are
/// the case BlockSize = capacity, TableWidth = 1, table row s = [s].)
/// </summary>
public readonly record struct CachedAttentionShape(int Tokens, int Blocks, int BlockSize, int TableWidth, int QueryHeads, int KvHeads, int HeadDim)
{
    /// <summary>Softmax scale: the variant's query scale when set, else 1/sqrt(head_dim).</summary>
    public float Scale => Variant.QueryScale ?? 1f / MathF.Sqrt(HeadDim);

    /// <summary>Sliding window and soft-cap as <see cref="AttentionShape.Variant"/> (the window counts cache positions).</summary>
    public AttentionVariant Variant { get; init; }
    /// <summary>The longest sequence the table can address.</summary>
    public int MaxPositions => BlockSize * TableWidth;
}

/// <summary>A recorded sequence of operations (<see cref="IBackend.BeginGraphCapture"/>), replayed by <see cref="Launch"/>.</summary>
public interface IDeviceGraph : IDisposable
{
    void Launch();
}

/// <summary>
/// Device memory in bytes: what the backend could still allocate (the driver's free memory plus its allocator's cached
/// blocks), what it holds in use, and the device's total.
/// </summary>
public readonly record struct DeviceMemory(long AvailableBytes, long HeldBytes, long TotalBytes);

/// <summary>Hyper-parameters of one decoupled AdamW update (Loshchilov &amp; Hutter; as torch.optim.AdamW).</summary>
public readonly record struct AdamWStep(float LearningRate, float Beta1, float Beta2, float Epsilon, float WeightDecay, int Step,
    float GradScale = 1f, float MaxGradNorm = 0f);

/// <summary>
/// The tensors of one parameter's AdamW update (<see cref="IBackend.AdamWMany"/>): the F32 master, its gradient and
/// moments, and the compute copy the update is also written to (null: none).
/// </summary>
public readonly record struct AdamWTensors(Tensor Param, Tensor Grad, Tensor M, Tensor V, Tensor? ComputeCopy);

/// <summary>
/// The operations the transformer needs, each with its backward, on one device. The model code drives
/// every backend through this interface alone, so CPU and CUDA run the same model. Operations are
/// enqueued in order on the backend's stream; only <see cref="Download(Tensor, Span{float})"/> and
/// <see cref="Synchronize"/> wait for the device. Unless a method says "accumulates", it overwrites its output.
/// Tensors of dtype <see cref="ComputeDType"/> hold activations and frozen weights; trainable weights keep an
/// F32 master copy, gradients and optimizer state are F32; token ids, labels and positions are I32.
/// </summary>
public interface IBackend : IDisposable
{
    /// <summary>"cpu" or "cuda:N".</summary>
    string Name { get; }

    /// <summary>Dtype of activations and frozen weights: F32 on CPU, BF16 on CUDA.</summary>
    DType ComputeDType { get; }

    /// <summary>
    /// Makes this backend usable from the calling thread. A CUDA context is current per thread, so a thread other than
    /// the one that opened the device (a server's scheduler thread) calls this before its first operation; the CPU
    /// backend needs nothing.
    /// </summary>
    void BindToCurrentThread() { }

    /// <summary>
    /// The device's memory as this backend sees it, for planning how much to keep (gradient_checkpointing: auto); null
    /// where tensors live in host memory (CPU).
    /// </summary>
    DeviceMemory? Memory => null;

    /// <summary>
    /// Whether <see cref="BeginGraphCapture"/> works: the backend can record a sequence of operations once and replay it
    /// with one launch (CUDA graphs). Replays read and write the same tensors the recording named.
    /// </summary>
    bool SupportsGraphs => false;
    /// <summary>Starts recording operations instead of running them (no transfer, synchronisation or allocation may follow).</summary>
    void BeginGraphCapture() => throw new NotSupportedException($"the {Name} backend cannot record graphs");
    /// <summary>Stops recording; returns the graph, or null with <paramref name="discard"/> (an operation failed while recording).</summary>
    IDeviceGraph? EndGraphCapture(bool discard = false) => throw new NotSupportedException($"the {Name} backend cannot record graphs");

    /// <summary>A zero-filled buffer of <paramref name="byteLength"/> bytes, to be carved into tensors.</summary>
    DeviceBuffer AllocateBuffer(long byteLength);

    // ---- host transfers (the only places where host memory meets the device) ----
    void Upload(Tensor dst, ReadOnlySpan<float> src);
    void Upload(Tensor dst, ReadOnlySpan<int> src);
    void Download(Tensor src, Span<float> dst);
    void Download(Tensor src, Span<int> dst);
    void Synchronize();

    // ---- elementwise ----
    void Zero(Tensor x);
    /// <summary>dst = src, converting dtype (F32 ↔ BF16).</summary>
    void Copy(Tensor dst, Tensor src);
    /// <summary>y += alpha·x.</summary>
    void Add(Tensor y, Tensor x, float alpha = 1f);
    /// <summary>x *= s.</summary>
    void Scale(Tensor x, float s);

    // ---- matrix products ----
    /// <summary>
    /// C = alpha·op(A)·op(B) (+ C when <paramref name="accumulate"/>), each tensor seen as [Rows, Cols];
    /// op(A) is [M,K] (A is [K,M] when transA), op(B) is [K,N] (B is [N,K] when transB), C is [M,N].
    /// A linear layer y = x·Wᵀ is MatMul(y, x, false, W, true).
    /// </summary>
    void MatMul(Tensor c, Tensor a, bool transA, Tensor b, bool transB, float alpha = 1f, bool accumulate = false);

    /// <summary>
    /// C = alpha·op(A)·op(B) + bias (broadcast over C's rows, one value per column): the bias rides along with a product
    /// that writes C (CUDA: in cuBLASLt's epilogue, no second pass over C). Composed from MatMul and AddBias by default.
    /// </summary>
    void MatMulBias(Tensor c, Tensor a, bool transA, Tensor b, bool transB, Tensor bias, float alpha = 1f)
    {
        MatMul(c, a, transA, b, transB, alpha);
        AddBias(c, bias);
    }

    /// <summary>
    /// c_j = a·b_jᵀ for up to three weights that read the same input (a layer's q/k/v, or gate/up): one launch where the
    /// backend can (CUDA's decode-step GEMV), else one <see cref="MatMul"/> each — the same values either way.
    /// </summary>
    void MatMulShared(IReadOnlyList<Tensor> cs, Tensor a, IReadOnlyList<Tensor> bs)
    {
        if (cs.Count != bs.Count) throw new ArgumentException($"{cs.Count} outputs for {bs.Count} weights");
        for (int j = 0; j < cs.Count; j++) MatMul(cs[j], a, false, bs[j], true);
    }
    /// <summary>y[r, :] += bias for every row r.</summary>
    void AddBias(Tensor y, Tensor bias);
    /// <summary>Accumulates dbias += Σ_r dy[r, :].</summary>
    void BiasBackward(Tensor dbias, Tensor dy);

    // ---- embedding ----
    /// <summary>out[i, :] = table[ids[i], :].</summary>
    void Embedding(Tensor output, Tensor table, Tensor ids);
    /// <summary>Accumulates dtable[ids[i], :] += dout[i, :].</summary>
    void EmbeddingBackward(Tensor dtable, Tensor doutput, Tensor ids);

    // ---- RMSNorm: y = x / sqrt(mean(x²) + eps) · (weightOffset + w), rows of width w.Length; statistics in F32 ----
    // weightOffset is 0 for llama-style norms and 1 for gemma's (1 + w), whose product is taken in F32 and rounded once.
    void RmsNorm(Tensor y, Tensor rstd, Tensor x, Tensor weight, float eps, float weightOffset = 0f);
    /// <summary>
    /// resid = a + b, then y = RMSNorm(resid) of the sum as stored (rounded to resid's dtype), in one pass: the
    /// residual add and the next sub-layer's pre-norm fused. resid may be the same tensor as a or b; y may not.
    /// </summary>
    void ResidualRmsNorm(Tensor resid, Tensor y, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps, float weightOffset = 0f);
    /// <summary>
    /// Accumulates dx += ∂L/∂x (or, without <paramref name="accumulate"/>, writes dx = ∂L/∂x: the bits of zeroing dx
    /// first, without the memset) and (when <paramref name="dweight"/> is given) dweight += ∂L/∂w,
    /// with rstd from the forward: dx = rstd·(w⊙dy − x̂·mean(x̂⊙w⊙dy)), x̂ = x·rstd, w read as weightOffset + w
    /// (dweight is the same either way: ∂(offset + w)/∂w = 1).
    /// </summary>
    void RmsNormBackward(Tensor dx, Tensor? dweight, Tensor dy, Tensor x, Tensor weight, Tensor rstd, float weightOffset = 0f, bool accumulate = true);

    // ---- rotary position embedding (rotate-half convention of HF transformers), in place ----
    /// <summary>
    /// x is [N, heads·headDim]; for each token n at position p = positions[n] and pair i &lt; headDim/2:
    /// (x_i, x_{i+h}) ← (x_i·cos − x_{i+h}·sin, x_{i+h}·cos + x_i·sin) with cos/sin = table[p, i] ([maxPos, headDim/2], F32).
    /// <paramref name="inverse"/> rotates by −θ, which is the backward of the forward rotation.
    /// </summary>
    void Rope(Tensor x, Tensor positions, Tensor cos, Tensor sin, int headDim, bool inverse);

    // ---- causal grouped-query attention with segment masks ----
    /// <summary>
    /// output [Batch, QueryLen, QueryHeads·HeadDim]; lse [Batch, QueryHeads, QueryLen] (F32) holds the
    /// log-sum-exp of each softmax row for the backward. Query head h reads KV head h / (QueryHeads/KvHeads).
    /// </summary>
    void Attention(Tensor output, Tensor lse, Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape shape);
    /// <summary>
    /// Writes dq, dk, dv (QueryLen == KeyLen == KvCapacity) from dout and the forward's output and lse.
    /// <paramref name="scratch"/>: device memory no later operation reads before writing it (the caller's spent
    /// activations), which the call may overwrite: a backend puts the workspace it would otherwise borrow there where it
    /// fits (CUDA: cuDNN's backward, the flash backward's F32 partials), so the step's peak does not grow by it.
    /// </summary>
    void AttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor doutput, Tensor output, Tensor lse,
        Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape shape, Tensor? scratch = null);

    // ---- generation: the paged KV cache and picking ----
    /// <summary>dst[rows[i], :] = src[i, :] (the inverse of <see cref="Embedding"/>; rows must be distinct).</summary>
    void ScatterRows(Tensor dst, Tensor src, Tensor rows);
    /// <summary>
    /// output [Tokens, QueryHeads·HeadDim] = softmax(q·kᵀ·scale)·v over each token's keys 0 … positions[t], read through
    /// its sequence's row of <paramref name="blockTables"/> (see <see cref="CachedAttentionShape"/>). Query head h reads
    /// KV head h / (QueryHeads/KvHeads). Forward only.
    /// </summary>
    void CachedAttention(Tensor output, Tensor q, Tensor kCache, Tensor vCache, Tensor sequences, Tensor positions, Tensor blockTables, CachedAttentionShape shape);
    /// <summary>output[r] = the index of the largest value of row r of x [rows, cols] (I32); ties go to the lowest index.</summary>
    void ArgMax(Tensor x, Tensor output);
    /// <summary>
    /// output[r] = the token row r of <paramref name="logits"/> [rows, V] picks with the settings in
    /// <paramref name="parameters"/> (I32 [rows·<see cref="Sampling.SamplingRow.Ints"/>], <see cref="Sampling.SamplingRow"/>)
    /// and the distinct ids <paramref name="seen"/> (I32) each row's repetition penalty reads, with exactly the
    /// semantics of <see cref="Sampling.TokenSampling.Pick"/>; −1 where a device could not decide within its candidate
    /// limit (the caller then picks that row on the host with the same uniform). <paramref name="scratch"/> is F32
    /// [rows, V]. The logits are left as they were.
    /// </summary>
    void SampleRows(Tensor logits, Tensor parameters, Tensor seen, Tensor output, Tensor scratch);

    // ---- SwiGLU: h = silu(gate) ⊙ up ----
    void SwiGlu(Tensor h, Tensor gate, Tensor up);
    /// <summary>Writes dgate and dup from dh; in place is allowed (dgate the same tensor as gate, dup as up).</summary>
    void SwiGluBackward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up);

    // ---- a decode step's layer, fused: each is exactly the composition in DecodeComposition (same outputs, same
    // bits); CUDA runs it as one kernel for steps of one or two tokens (decode.cu), every backend else composes it ----
    /// <summary>ln = RMSNorm(x) (rstd written), then cs[j] = ln·bs[j]ᵀ for up to three weights (a layer's q/k/v).</summary>
    void NormMatMulShared(IReadOnlyList<Tensor> cs, Tensor ln, Tensor rstd, Tensor x, Tensor normWeight, float eps, IReadOnlyList<Tensor> bs) =>
        DecodeComposition.NormMatMulShared(this, cs, ln, rstd, x, normWeight, eps, bs);
    /// <summary>ln = RMSNorm(x), gate = ln·gateWeightᵀ, up = ln·upWeightᵀ, h = silu(gate) ⊙ up (a llama MLP's first half).</summary>
    void NormSwiGluMatMul(Tensor h, Tensor gate, Tensor up, Tensor ln, Tensor rstd, Tensor x, Tensor normWeight, float eps, Tensor gateWeight, Tensor upWeight) =>
        DecodeComposition.NormSwiGluMatMul(this, h, gate, up, ln, rstd, x, normWeight, eps, gateWeight, upWeight);
    /// <summary>y = a·weightᵀ, rounded to y's dtype, then y += residual (o_proj or down_proj and the residual add).</summary>
    void MatMulResidual(Tensor y, Tensor a, Tensor weight, Tensor residual) =>
        DecodeComposition.MatMulResidual(this, y, a, weight, residual);
    /// <summary>
    /// A layer after its attention: mid = att·oWeightᵀ + x (<see cref="MatMulResidual"/>), then
    /// <see cref="NormSwiGluMatMul"/> of mid into h, then y = h·downWeightᵀ + mid; CUDA may run the three as one
    /// cooperative launch (decode.cu's decode_mlp_tail, <c>CudaBackend.UsePersistentMlp</c>).
    /// </summary>
    void AttentionOutputMlp(Tensor y, Tensor mid, Tensor h, Tensor gate, Tensor up, Tensor ln, Tensor rstd, Tensor att, Tensor oWeight, Tensor x,
        Tensor normWeight, float eps, Tensor gateWeight, Tensor upWeight, Tensor downWeight) =>
        DecodeComposition.AttentionOutputMlp(this, y, mid, h, gate, up, ln, rstd, att, oWeight, x, normWeight, eps, gateWeight, upWeight, downWeight);
    /// <summary>
    /// A step's attention inputs into the cache: with norm weights (qwen3's q_norm/k_norm) q = RMSNorm(qIn) and
    /// k = RMSNorm(kIn) per head (qRstd/kRstd written), else q and k are qIn and kIn (the same tensors); then RoPE on q
    /// and k (<see cref="Rope"/>), and k's and v's rows scattered into the caches at <paramref name="cacheRows"/>
    /// (<see cref="ScatterRows"/>).
    /// </summary>
    void QkRopeCache(Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm, Tensor? qRstd, Tensor? kRstd, float eps,
        Tensor positions, Tensor cos, Tensor sin, int headDim, Tensor kCache, Tensor vCache, Tensor cacheRows) =>
        DecodeComposition.QkRopeCache(this, q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, eps, positions, cos, sin, headDim, kCache, vCache, cacheRows);
    /// <summary>
    /// <see cref="QkRopeCache"/>, then <see cref="CachedAttention"/> of q over the caches into <paramref name="output"/>
    /// (a decode layer's attention up to o_proj); CUDA runs a one-token step as one kernel (kv_cache.cu).
    /// </summary>
    void QkRopeCacheAttention(Tensor output, Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm, Tensor? qRstd, Tensor? kRstd,
        float eps, Tensor positions, Tensor cos, Tensor sin, int headDim, Tensor kCache, Tensor vCache, Tensor cacheRows, Tensor sequences, Tensor blockTables,
        CachedAttentionShape shape) =>
        DecodeComposition.QkRopeCacheAttention(this, output, q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, eps, positions, cos, sin, headDim, kCache, vCache,
            cacheRows, sequences, blockTables, shape);

    /// <summary>
    /// A whole decode layer (<see cref="DecodeComposition.DecodeLayer"/>: <see cref="NormMatMulShared"/> of x into q/k/v,
    /// <see cref="QkRopeCacheAttention"/>, <see cref="AttentionOutputMlp"/> into y); CUDA may run a one-token step's
    /// layer as one persistent launch (decode.cu's decode_layer, <c>CudaBackend.UsePersistentLayer</c>).
    /// </summary>
    void DecodeLayer(DecodeLayerTensors t) => DecodeComposition.DecodeLayer(this, t);

    // ---- GeGLU (gemma): h = gelu_tanh(gate) ⊙ up, gelu_tanh(g) = ½·g·(1 + tanh(√(2/π)·(g + 0.044715·g³))) ----
    void GeGlu(Tensor h, Tensor gate, Tensor up);
    /// <summary>Writes dgate and dup from dh; in place is allowed (dgate the same tensor as gate, dup as up).</summary>
    void GeGluBackward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up);

    // ---- soft-capping (gemma's final_logit_softcapping) ----
    /// <summary>y = cap·tanh(x/cap) elementwise (y may be x).</summary>
    void SoftCap(Tensor y, Tensor x, float cap);
    /// <summary>dx ⊙= 1 − (y/cap)², y the forward's output: the backward of <see cref="SoftCap"/> in place.</summary>
    void SoftCapBackward(Tensor dx, Tensor y, float cap);

    // ---- loss ----
    /// <summary>
    /// Softmax cross-entropy over rows of <paramref name="logits"/> [N, V] with I32 <paramref name="labels"/> [N]
    /// (-100 = ignored). Accumulates lossSum[0] += Σ −log p[label] (F32 scalar). The logits are used as scratch;
    /// when <paramref name="computeGrad"/> they end as gradScale·(softmax − onehot) (zero rows for ignored labels).
    /// </summary>
    void CrossEntropy(Tensor logits, Tensor labels, Tensor lossSum, float gradScale, bool computeGrad);
    /// <summary>
    /// Per-row log-probability of the label: logProbs[r] = log_softmax(logits[r])[labels[r]] (F32 [N]; 0 where the
    /// label is −100), over logits [N, V] in the compute dtype or F32 as <see cref="CrossEntropy"/> takes them. The
    /// logits are scratch; when <paramref name="gradScales"/> (F32 [N]) is given they end as
    /// gradScales[r]·(softmax − onehot) (zero rows for ignored labels): pass −∂L/∂logProb[r] for ∂L/∂logits, since
    /// ∂logp/∂logits = onehot − softmax. The preference objectives' per-sequence log-probabilities come from here.
    /// </summary>
    void LabelLogProbs(Tensor logits, Tensor labels, Tensor logProbs, Tensor? gradScales);

    // ---- randomness (counter-based, so the same seed reproduces the same mask on any backend) ----
    /// <summary>y = x ⊙ mask / (1 − p), mask_i = [u(seed, i) ≥ p]. The backward is the same call on dy.</summary>
    void Dropout(Tensor y, Tensor x, float p, ulong seed);
    /// <summary>x += magnitude·u, u uniform in [−1, 1) from (seed, i) (NEFTune).</summary>
    void AddUniformNoise(Tensor x, float magnitude, ulong seed);

    // ---- optimizer ----
    /// <summary>Accumulates acc[0] += Σ x² (F32 scalar) — the squared gradient norm.</summary>
    void SumOfSquares(Tensor x, Tensor acc);
    /// <summary>
    /// <see cref="SumOfSquares"/> of each tensor in list order into the same acc: the same bits as those calls in turn
    /// (the clipping norm over every trainable tensor; CUDA runs the whole list in two launches).
    /// </summary>
    void SumOfSquaresMany(IReadOnlyList<Tensor> xs, Tensor acc)
    {
        foreach (var x in xs) SumOfSquares(x, acc);
    }
    /// <summary>
    /// One AdamW update of the F32 master <paramref name="param"/> from <paramref name="grad"/> (scaled by
    /// step.GradScale, and further by min(1, MaxGradNorm/(‖g‖+1e-6)) with ‖g‖² = gradNormSquared[0] when
    /// MaxGradNorm &gt; 0, so clipping needs no host round trip). Writes the updated weight also into
    /// <paramref name="computeCopy"/> (e.g. the BF16 weight the forward reads) when given.
    /// </summary>
    void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor? computeCopy, Tensor? gradNormSquared, AdamWStep step);
    /// <summary>
    /// <see cref="AdamW"/> of tensors[i] with steps[i] for every i, all reading one <paramref name="gradNormSquared"/>:
    /// the same bits as those calls in turn (CUDA: one launch for the list). The entries' tensors must not overlap.
    /// </summary>
    void AdamWMany(IReadOnlyList<AdamWTensors> tensors, IReadOnlyList<AdamWStep> steps, Tensor? gradNormSquared)
    {
        if (tensors.Count != steps.Count) throw new ArgumentException($"{tensors.Count} AdamW updates for {steps.Count} steps");
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            AdamW(t.Param, t.Grad, t.M, t.V, t.ComputeCopy, gradNormSquared, steps[i]);
        }
    }

    /// <summary>
    /// AdamW with 8-bit block-wise states as bitsandbytes' AdamW8bit (kOptimizerStatic8bit2StateBlockwise, blocks of
    /// 256): per element m = codeM[qm]·absmaxM[b], v = codeV[qv]·absmaxV[b], then m = β1·m + (1−β1)·g,
    /// v = β2·v + (1−β2)·g², p += −lr·√bc2/bc1 · m/(√v + √bc2·eps), p ·= 1 − lr·wd; then each block's new absmax and the
    /// nearest codes (ties to the lower code, the sign of m kept). m8/v8 are I32-held bytes (see <see cref="QuantizedWeight"/>);
    /// codeM is bnb's signed dynamic map, codeV its unsigned one (F32 [256] each). Gradient scaling and clipping as <see cref="AdamW"/>.
    /// </summary>
    void AdamW8bit(Tensor param, Tensor grad, Tensor m8, Tensor v8, Tensor absmaxM, Tensor absmaxV, Tensor codeM, Tensor codeV,
        Tensor? computeCopy, Tensor? gradNormSquared, AdamWStep step);

    // ---- mixture of experts (router, expert-sorted rows, grouped products, weighted combine) ----
    /// <summary>
    /// The router of n tokens over E experts: probs [n, E] (F32) = softmax(logits [n, E]) computed in fp32; topIdx [n, k]
    /// (I32) the k largest probabilities per row in descending order (ties to the lower index, as torch.topk on CUDA);
    /// topWeight [n, k] (F32) their probabilities, divided by their sum when <paramref name="normalize"/>.
    /// </summary>
    void MoeRoute(Tensor logits, Tensor probs, Tensor topIdx, Tensor topWeight, bool normalize);
    /// <summary>
    /// Backward of <see cref="MoeRoute"/> (the top-k indices carry no gradient): dp_i = dw_i (or (dw_i − Σ_j dw_j·w_j)/S with
    /// S the sum of the chosen probabilities when normalised) for chosen i, 0 elsewhere; plus, when <paramref name="auxGrad"/>
    /// is given, dp[t, e] += auxScale·auxGrad[e]·tokenMask[t] (the load-balancing loss); then through the softmax
    /// dlogits = p ⊙ (dp − Σ p·dp). Writes dlogits [n, E].
    /// </summary>
    void MoeRouteBackward(Tensor dlogits, Tensor dTopWeight, Tensor probs, Tensor topIdx, Tensor topWeight, bool normalize,
        Tensor? auxGrad, Tensor? tokenMask, float auxScale);
    /// <summary>
    /// The load-balancing statistics of one layer, accumulated: counts[e] += Σ_t mask[t]·[e ∈ topIdx[t]], probSums[e] +=
    /// Σ_t mask[t]·probs[t, e] (F32 [E] each; mask F32 [n]).
    /// </summary>
    void MoeRouterStatistics(Tensor counts, Tensor probSums, Tensor probs, Tensor topIdx, Tensor tokenMask);
    /// <summary>
    /// Sorts the n·k (token, slot) choices by expert, stably (token order within an expert): offsets [E + 1] (I32) the first
    /// sorted row of each expert, sortedToken [n·k] the token of each sorted row, rowOf [n·k] the sorted row of choice t·k + j.
    /// </summary>
    void MoeSort(Tensor topIdx, Tensor offsets, Tensor sortedToken, Tensor rowOf);
    /// <summary>
    /// One product per expert over its rows [offsets[e], offsets[e + 1]) of a: c_e = a_e·w_eᵀ with w [E, N, K] when
    /// <paramref name="transW"/>, else c_e = a_e·w_e with w [E, K, N]; c [rows, N], a [rows, K] (+ c when accumulate).
    /// </summary>
    void GroupedMatMul(Tensor c, Tensor a, Tensor w, bool transW, Tensor offsets, bool accumulate = false);
    /// <summary>Accumulates dw_e += dc_eᵀ·a_e over each expert's rows: dw [E, N, K] (F32), dc [rows, N], a [rows, K].</summary>
    void GroupedMatMulWeightGrad(Tensor dw, Tensor dc, Tensor a, Tensor offsets);
    /// <summary>y[t] = Σ_j topWeight[t, j]·rows[rowOf[t·k + j]] (y [n, C], rows [n·k, C]).</summary>
    void MoeCombine(Tensor y, Tensor rows, Tensor topWeight, Tensor rowOf);
    /// <summary>Backward of <see cref="MoeCombine"/>: drows[rowOf[t·k + j]] = topWeight[t, j]·dy[t] and dTopWeight[t, j] = dy[t]·rows[rowOf[t·k + j]] (F32).</summary>
    void MoeCombineBackward(Tensor drows, Tensor dTopWeight, Tensor dy, Tensor rows, Tensor topWeight, Tensor rowOf);
    /// <summary>
    /// Backward of <see cref="MoeCombine"/> carried through the experts' down product, for when its output rows were not
    /// kept: with h[r] = dy[t]·W_down,e (dy's rows gathered unscaled into the sorted order and multiplied by the chosen
    /// expert's down weight, the product the old backward ran on the scaled rows), dTopWeight[t, j] = h[r]·act[r] (F32;
    /// = dy[t]·rows[r], since rows[r] = act[r]·W_down,eᵀ) and dact[r] = topWeight[t, j]·h[r], with r = rowOf[t·k + j].
    /// dact, h, act [n·k, I].
    /// </summary>
    void MoeCombineDownBackward(Tensor dact, Tensor dTopWeight, Tensor h, Tensor act, Tensor topWeight, Tensor rowOf);
    /// <summary>dx[t] = Σ_j drows[rowOf[t·k + j]]: the backward of gathering each token's row into its k sorted rows (writes dx).</summary>
    void MoeGatherBackward(Tensor dx, Tensor drows, Tensor rowOf);

    // ---- quantized frozen weights (QLoRA) ----
    /// <summary>
    /// dst [Rows, Cols] (compute dtype) = the dequantized weight: 4-bit w = code[nibble]·absmax[block] (absmax itself
    /// dequantized first when nested), int8 w = c·(SCB[row]·(1/127)); computed in f32, rounded once to dst's dtype.
    /// </summary>
    void Dequantize(Tensor dst, QuantizedWeight weight);

    // ---- FP8 frozen weights (fp8: true; Hopper's FP8 tensor cores) ----
    /// <summary>
    /// Why training with fp8: true is refused on this backend (null: it runs FP8 tensor-core products). The CPU backend
    /// emulates <see cref="Fp8MatMul"/> exactly, as the reference for tests, but trains nothing in FP8.
    /// </summary>
    string? Fp8Refusal => $"fp8 trains on the CUDA backend of a Hopper GPU (sm_90); the {Name} backend has no FP8 tensor cores. Set device: cuda or remove fp8: true";
    /// <summary>
    /// Per-tensor current scaling, exactly <see cref="Fp8.Quantize"/>: amax = max |x| and s = max/amax (1 when amax is 0
    /// or not finite) computed on the device, codes (I32-held bytes, x.Length of them) = cast(x·s) rounded to nearest even
    /// and saturated, scaleInverse (F32 [1]) = 1/s.
    /// </summary>
    void QuantizeFp8(Tensor codes, Tensor scaleInverse, Tensor x, Fp8Format format);
    /// <summary>
    /// A product with a frozen <see cref="QuantFormat.Fp8E4M3"/> weight W [N, K]: c [M, N] = a·Wᵀ (the forward, a quantized
    /// to E4M3) or, with <paramref name="inputGradient"/>, c [M, K] = a·W (a = ∂L/∂y quantized to E5M2, whose range holds
    /// gradients; Transformer Engine's and torchao's choice). a is quantized per call as <see cref="QuantizeFp8"/> does;
    /// the products of the codes are summed in f32, multiplied by both scale inverses and rounded once to c's dtype (+ c
    /// when accumulate). No gradient of W is formed: it is frozen. With <paramref name="delayed"/> the cast takes its scale
    /// from that site's history instead (<see cref="Fp8DelayedScale"/>: one pass over a, its amax recorded for the next
    /// advance).
    /// </summary>
    void Fp8MatMul(Tensor c, Tensor a, QuantizedWeight w, bool inputGradient, bool accumulate = false, Fp8DelayedScale? delayed = null);
    /// <summary>
    /// The forward products of several FP8 weights that read one input (a layer's q, k, v or gate, up): cs[i] = a·Wᵢᵀ
    /// (+ cs[i] when accumulate), a cast to E4M3 once for all of them; each product otherwise as <see cref="Fp8MatMul"/>.
    /// </summary>
    void Fp8MatMulShared(IReadOnlyList<Tensor> cs, Tensor a, IReadOnlyList<QuantizedWeight> ws, bool accumulate = false, Fp8DelayedScale? delayed = null);
    /// <summary>
    /// Ends a pass of delayed scaling for the first <paramref name="sites"/> sites of <paramref name="states"/> (F32,
    /// <see cref="Fp8DelayedScale.Stride"/>(history) values each): every site whose pass amax is non-zero pushes it into
    /// its ring, each site's scale amax becomes its ring's largest value, the pass amaxes return to 0
    /// (<see cref="Fp8DelayedScale.Advance"/>, bit for bit). One launch for the whole model.
    /// </summary>
    void Fp8AdvanceHistories(Tensor states, int sites, int history);
    /// <summary>
    /// <see cref="SwiGlu"/> that also casts its output for the next product (fp8_scaling: delayed, a <paramref name="site"/>
    /// already advanced): h = silu(gate) ⊙ up exactly as SwiGlu writes it, <paramref name="hCodes"/> = the E4M3 codes of h
    /// as stored (rounded to h's dtype) with the site's scale, and max |h| max-ed into the site's pass amax. The bits of
    /// SwiGlu then <see cref="Fp8MatMul"/>'s delayed cast of h, without reading h again.
    /// </summary>
    void SwiGluFp8(Tensor h, Tensor gate, Tensor up, Fp8Operand hCodes, Fp8DelayedScale site);
    /// <summary>
    /// <see cref="SwiGluBackward"/> (in place allowed as there) that also casts each output to E5M2 with its own ready
    /// site, as the delayed cast of the gate's and the up projection's input gradients would: the codes of dgate and dup
    /// as stored, each amax recorded into its site.
    /// </summary>
    void SwiGluBackwardFp8(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up, Fp8Operand dgateCodes, Fp8DelayedScale dgateSite,
        Fp8Operand dupCodes, Fp8DelayedScale dupSite);
    /// <summary>
    /// <see cref="Fp8MatMul"/> from an operand cast already (c.Rows × the product's K codes, E4M3 for the forward, E5M2 with
    /// <paramref name="inputGradient"/>): the same product and accumulation, no cast inside.
    /// </summary>
    void Fp8MatMulCodes(Tensor c, Fp8Operand a, QuantizedWeight w, bool inputGradient, bool accumulate = false);
    /// <summary>
    /// <see cref="RmsNorm"/> that also casts its output for the next products (fp8_scaling: delayed, a ready
    /// <paramref name="site"/>: ln1 for q/k/v, as <see cref="SwiGluFp8"/> does for down): y and rstd exactly as RmsNorm
    /// writes them, <paramref name="yCodes"/> = the E4M3 codes of y as stored with the site's scale, max |y| max-ed into the
    /// site's pass amax. The bits of RmsNorm then <see cref="Fp8MatMulShared"/>'s delayed cast of y, without reading y again.
    /// </summary>
    void RmsNormFp8(Tensor y, Tensor rstd, Tensor x, Tensor weight, float eps, float weightOffset, Fp8Operand yCodes, Fp8DelayedScale site);
    /// <summary>
    /// <see cref="ResidualRmsNorm"/> (resid may be a or b, as there) that also casts y for the next products as
    /// <see cref="RmsNormFp8"/> does (ln2 for gate/up).
    /// </summary>
    void ResidualRmsNormFp8(Tensor resid, Tensor y, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps, float weightOffset, Fp8Operand yCodes,
        Fp8DelayedScale site);
    /// <summary>
    /// <see cref="Fp8MatMulShared"/> from an input cast already (E4M3 codes of cs[i].Rows × Wᵢ.Cols values, all alike):
    /// the same products and accumulation, no cast inside.
    /// </summary>
    void Fp8MatMulSharedCodes(IReadOnlyList<Tensor> cs, Fp8Operand a, IReadOnlyList<QuantizedWeight> ws, bool accumulate = false);
}
