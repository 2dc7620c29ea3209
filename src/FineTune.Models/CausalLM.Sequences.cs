using FineTune.Engine;

namespace FineTune.Models;

/// <summary>
/// Per-sequence scores of a batch: index k = row·SegmentsPerRow + segment id (SegmentsPerRow = the batch's largest
/// segment id + 1). SumLogProb[k] = Σ log p(label) over the labelled positions of that segment, Tokens[k] their count
/// (0 and 0 for padding and for segment ids a row does not hold).
/// </summary>
public sealed record SequenceScores(int Rows, int SegmentsPerRow, double[] SumLogProb, int[] Tokens);

/// <summary>
/// The objective seam. A preference pair (or a KTO sample with its KL sequence) is one row of packed segments, as
/// DataLoader.Collate packs them; every objective (DPO, ORPO, SimPO, KTO, a reward model) is a function of per-segment
/// summed log-probabilities or of a value at each segment's last token, and its gradient w.r.t. every token log-prob of
/// a segment is the one constant ∂L/∂SumLogProb[k]. So the model scores, the objective computes its loss and those
/// constants on the host, and the model continues the backward: LM head chunk by chunk with per-row gradient scales
/// (<see cref="IBackend.LabelLogProbs"/>), the final norm, the layers, exactly as <see cref="ForwardBackward"/> does.
/// </summary>
public sealed partial class CausalLM
{
    internal const string ValueHeadWeightName = "v_head.summary.weight";
    internal const string ValueHeadBiasName = "v_head.summary.bias";
    /// <summary>LLaMA-Factory's file for the reward model's value head, beside the adapter or the model.</summary>
    public const string ValueHeadFileName = "value_head.safetensors";

    /// <summary>A training forward that a backward may still continue: which head ran and what its backward needs.</summary>
    private sealed record SequencePass(TrainingPass Pass, bool Values, int Gathered, int[] KeyOfGathered, int Keys, long Forward, ulong DropoutSeed);

    private SequencePass? _sequencePass;

    /// <summary>Whether this model carries a value head (<see cref="TrainingSetup.ValueHead"/> or a loaded value_head.safetensors).</summary>
    public bool HasValueHead => _valueHeadWeight is not null;

    private bool IsValueHead(Parameter p) => ReferenceEquals(p, _valueHeadWeight) || ReferenceEquals(p, _valueHeadBias);

    /// <summary>
    /// Σ log p(label) and the labelled-token count of every (row, segment). <paramref name="forBackward"/>: the training
    /// forward (LoRA dropout, NEFTune, gradient checkpointing; <see cref="RandomCounter"/> advanced once), kept for
    /// <see cref="BackwardSequences"/>; false: the eval forward. <paramref name="adapters"/> false runs the base model
    /// with every LoRA adapter skipped and additional_target modules at their base values (PEFT's disable_adapter: the
    /// reference model of DPO/KTO for LoRA, without a second model in memory), eval only.
    /// The LM head runs over labelled rows only, ChunkRows at a time: no [tokens, vocab] logits exist at once.
    /// </summary>
    public SequenceScores ScoreSequences(TokenBatch batch, bool forBackward, bool adapters = true)
    {
        if (!adapters && forBackward)
            throw new ArgumentException("adapters: false runs the reference model, which never trains: score it with forBackward: false", nameof(adapters));
        int m = Prepare(batch, training: forBackward);
        int n = batch.TokenCount;
        int segments = SegmentsPerRow(batch);
        int keys = batch.BatchSize * segments;
        var keyOfRow = new int[m];
        for (int j = 0; j < m; j++)
        {
            int i = _hostRows[j];
            keyOfRow[j] = i / batch.SeqLen * segments + batch.SegmentIds[i];
        }
        var acts = _acts!;
        float[] Score()
        {
            FinalNormAndGather(n, m);
            HeadChunks(m, grad: false, (logits, r0, cr) =>
                Backend.LabelLogProbs(logits, acts.CompactLabels.View(r0, [cr]), acts.CompactLogProbs.View(r0, [cr]), null));
            var host = new float[m];
            if (m > 0) Backend.Download(Head1(acts.CompactLogProbs, m), host);
            return host;
        }
        TrainingPass? pass = null;
        float[] logp;
        if (forBackward)
        {
            pass = TrainingForward(batch, n, RandomCounter++);
            logp = Score();
        }
        else if (adapters)
        {
            RunForward(batch, n);
            logp = Score();
        }
        else logp = WithoutAdapters(() =>
        {
            RunForward(batch, n);
            return Score();
        });
        var sum = new double[keys];
        var tokens = new int[keys];
        for (int j = 0; j < m; j++)
        {
            sum[keyOfRow[j]] += logp[j];
            tokens[keyOfRow[j]]++;
        }
        _sequencePass = pass is { } p ? new SequencePass(p, Values: false, m, keyOfRow, keys, _forwardCount, 0) : null;
        return new SequenceScores(batch.BatchSize, segments, sum, tokens);
    }

    /// <summary>
    /// Continues the backward of the last <see cref="ScoreSequences"/>(forBackward: true): accumulates ∂L/∂θ into every
    /// trainable gradient, given ∂L/∂SumLogProb[k] (indexed as <see cref="SequenceScores"/>). Each labelled row's
    /// logits are recomputed and end as −∂L/∂SumLogProb[k]·(softmax − onehot) = ∂L/∂logits, then the head's products,
    /// the final norm and the layers' backward as in <see cref="ForwardBackward"/>. Score the reference model first:
    /// any forward in between discards the activations this needs.
    /// </summary>
    public void BackwardSequences(ReadOnlySpan<double> dLossDSum)
    {
        var sp = PendingPass(values: false, nameof(BackwardSequences), nameof(ScoreSequences));
        if (dLossDSum.Length != sp.Keys)
            throw new ArgumentException($"BackwardSequences needs one gradient per (row, segment), {sp.Keys}, got {dLossDSum.Length}", nameof(dLossDSum));
        var acts = _acts!;
        int m = sp.Gathered, n = sp.Pass.Tokens;
        var scales = new float[m];
        for (int j = 0; j < m; j++) scales[j] = (float)-dLossDSum[sp.KeyOfGathered[j]];
        if (m > 0) Backend.Upload(Head1(acts.CompactScales, m), scales);
        HeadChunks(m, grad: true, (logits, r0, cr) =>
            Backend.LabelLogProbs(logits, acts.CompactLabels.View(r0, [cr]), acts.CompactLogProbs.View(r0, [cr]), acts.CompactScales.View(r0, [cr])));
        HeadBackwardTail(n, m);
        LayersBackward(sp.Pass);
    }

    /// <summary>
    /// The value head at the last token of every (row, segment), indexed as <see cref="SequenceScores"/> (a segment id
    /// a row does not hold gets 0). <paramref name="forBackward"/> as in <see cref="ScoreSequences"/>, with TRL's
    /// summary dropout on the hidden state the head reads; the pass is kept for <see cref="BackwardValues"/>.
    /// </summary>
    public double[] SequenceValues(TokenBatch batch, bool forBackward)
    {
        if (_valueHeadWeight is null || _valueHeadBias is null)
            throw new InvalidOperationException($"this model has no value head: build it with TrainingSetup.ValueHead, or load a directory holding {ValueHeadFileName}");
        Prepare(batch, training: forBackward);
        int n = batch.TokenCount, c = Spec.HiddenSize;
        int segments = SegmentsPerRow(batch);
        int keys = batch.BatchSize * segments;
        // Segments are contiguous runs of a row, so the last token of (row, segment) is the last index seen with it.
        var lastToken = new int[keys];
        Array.Fill(lastToken, -1);
        for (int i = 0; i < n; i++) lastToken[i / batch.SeqLen * segments + batch.SegmentIds[i]] = i;
        var keyOfRow = new List<int>(keys);
        int g = 0;
        for (int k = 0; k < keys; k++)
            if (lastToken[k] >= 0)
            {
                _hostRows[g++] = lastToken[k];
                keyOfRow.Add(k);
            }
        var acts = _acts!;
        Backend.Upload(Head1(acts.CompactRows, g), _hostRows.AsSpan(0, g));
        TrainingPass? pass = forBackward ? TrainingForward(batch, n, RandomCounter++) : null;
        if (!forBackward) RunForward(batch, n);
        FinalNormAndGather(n, g);
        var h = acts.Hc.View(0, [g, c]);
        ulong dropSeed = pass is { } tp ? Seeds.Mix(tp.Seed, 0x5EAD) : 0;
        if (pass is not null && Setup.ValueHeadDropout > 0) Backend.Dropout(h, h, (float)Setup.ValueHeadDropout, dropSeed);
        var v = acts.CompactLogProbs.View(0, [g, 1]);
        Backend.MatMul(v, h, false, _valueHeadWeight.Value, true);
        Backend.AddBias(v, _valueHeadBias.Value);
        var host = new float[g];
        Backend.Download(v, host);
        var values = new double[keys];
        for (int j = 0; j < g; j++) values[keyOfRow[j]] = host[j];
        _sequencePass = pass is { } p ? new SequencePass(p, Values: true, g, [.. keyOfRow], keys, _forwardCount, dropSeed) : null;
        return values;
    }

    /// <summary>
    /// Continues the backward of the last <see cref="SequenceValues"/>(forBackward: true) from ∂L/∂value[k]: the value
    /// head's own gradients (dW += dvᵀ·h, db += Σ dv), then dh = dv·W through the summary dropout, the final norm and
    /// the layers.
    /// </summary>
    public void BackwardValues(ReadOnlySpan<double> dLossDValue)
    {
        var sp = PendingPass(values: true, nameof(BackwardValues), nameof(SequenceValues));
        if (dLossDValue.Length != sp.Keys)
            throw new ArgumentException($"BackwardValues needs one gradient per (row, segment), {sp.Keys}, got {dLossDValue.Length}", nameof(dLossDValue));
        var B = Backend;
        var acts = _acts!;
        int g = sp.Gathered, n = sp.Pass.Tokens, c = Spec.HiddenSize;
        var dv = new float[g];
        for (int j = 0; j < g; j++) dv[j] = (float)dLossDValue[sp.KeyOfGathered[j]];
        var tdv = acts.CompactScales.View(0, [g, 1]);
        B.Upload(tdv, dv);
        var h = acts.Hc.View(0, [g, c]);
        B.MatMul(_valueHeadWeight!.Grad!, tdv, true, h, false, 1f, accumulate: true);
        B.BiasBackward(_valueHeadBias!.Grad!, tdv);
        var dh = acts.Dhc.View(0, [g, c]);
        B.MatMul(dh, tdv, false, _valueHeadWeight.Value, false);
        if (Setup.ValueHeadDropout > 0) B.Dropout(dh, dh, (float)Setup.ValueHeadDropout, sp.DropoutSeed);
        HeadBackwardTail(n, g);
        LayersBackward(sp.Pass);
    }

    /// <summary>The kept training pass of the named head, once; throws when another forward ran since or none did.</summary>
    private SequencePass PendingPass(bool values, string backward, string forward)
    {
        var sp = _sequencePass;
        _sequencePass = null;
        if (sp is null || sp.Values != values || sp.Forward != _forwardCount)
            throw new InvalidOperationException(
                $"{backward} continues the last {forward}(forBackward: true), and no forward may run in between (score the reference model before the policy); " +
                "call it once per training forward");
        return sp;
    }

    private static int SegmentsPerRow(TokenBatch batch)
    {
        int max = 0;
        foreach (int s in batch.SegmentIds)
        {
            if (s < 0) throw new ArgumentException($"negative segment id {s} in the batch");
            max = Math.Max(max, s);
        }
        return max + 1;
    }
}
