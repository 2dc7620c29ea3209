using FineTune.Data.Templates;
using FineTune.Tokenizers;

namespace FineTune.Data.Preprocessing;

public enum PreprocessStage { Sft, Pt }

/// <summary>LLaMA-Factory's data arguments that shape samples.</summary>
public sealed record PreprocessOptions
{
    public PreprocessStage Stage { get; init; } = PreprocessStage.Sft;
    public int CutoffLen { get; init; } = 2048;
    public bool TrainOnPrompt { get; init; }
    /// <summary>Train on the last turn only; earlier turns are kept as context (truncation keeps the last turns first).</summary>
    public bool MaskHistory { get; init; }
    public bool Packing { get; init; }
    /// <summary>Packing without attention across packed sequences: SequenceLengths keep each sequence's length.</summary>
    public bool NeatPacking { get; init; }
}

/// <summary>The result of preprocessing: samples plus counts for the dataset header and the stage report.</summary>
public sealed record PreprocessResult(IReadOnlyList<TokenizedSample> Samples, TokenizedDatasetStats Stats);

/// <summary>One tokenized sequence: ids and labels (-100 where not trained).</summary>
public sealed record EncodedSequence(int[] InputIds, int[] Labels);

/// <summary>A preference pair: prompt + chosen answer and the same prompt + rejected answer.</summary>
public sealed record EncodedPair(EncodedSequence Chosen, EncodedSequence Rejected, bool Truncated);

/// <summary>A KTO sample: prompt + its completion, the same prompt + a mismatched completion (for the KL estimate), and the tag.</summary>
public sealed record EncodedFeedback(EncodedSequence Completion, EncodedSequence Kl, bool Desirable, bool Truncated);

/// <summary>What a split's samples are, decided from the registered data (ranking: true, a kto_tag column, else supervised).</summary>
public enum SampleKind { Supervised, Pair, Kto }

/// <summary>
/// Conversations → token ids and labels, as LLaMA-Factory's supervised and pretrain processors build them:
/// each turn's prompt is masked (-100) unless train_on_prompt, each answer (with the template's end-of-turn
/// text or EOS) is trained; cutoff_len shortens turns with <see cref="InferSeqLen"/>; packing fills
/// cutoff_len blocks greedily (largest sequence that fits first). Preference pairs and KTO samples become one sample
/// of two sequences each, as LLaMA-Factory's pairwise and feedback processors build them (never packed).
/// </summary>
public sealed class Preprocessor
{
    private readonly Tokenizer _tokenizer;
    private readonly ChatTemplate _template;
    private readonly PreprocessOptions _options;

    public Preprocessor(Tokenizer tokenizer, ChatTemplate template, PreprocessOptions options)
    {
        if (options.CutoffLen < 1) throw new DatasetException($"cutoff_len must be at least 1, got {options.CutoffLen}.");
        _tokenizer = tokenizer;
        _template = template;
        _options = options;
        EosId = ResolveEos(tokenizer, template);
        PadId = tokenizer.PadTokenId ?? EosId;
    }

    /// <summary>The id that ends answers and texts: the template's stop word when it replaces EOS, else the tokenizer's EOS.</summary>
    public int EosId { get; }
    public int PadId { get; }

    private static int ResolveEos(Tokenizer tokenizer, ChatTemplate template)
    {
        if (template.EosToken is { } stop)
            return tokenizer.TokenToId(stop) ?? throw new DatasetException(
                $"Chat template '{template.Name}' ends answers with '{stop}', which the tokenizer's vocabulary lacks. Choose a template that matches the model (e.g. 'default' or 'empty').");
        return tokenizer.EosTokenId ?? tokenizer.TokenToId("<|endoftext|>") ?? throw new DatasetException(
            "The tokenizer names no EOS token (tokenizer_config.json eos_token) and has no <|endoftext|>; FineTune needs one to end each answer.");
    }

    /// <summary>
    /// LLaMA-Factory's <c>infer_seqlen</c>: how much of a (source, target) pair fits into <paramref name="cutoffLen"/>.
    /// A short target (under half) is kept whole and the source cut; else a short source is kept and the target
    /// cut; else both shrink in proportion, target = floor(cutoff · target / (source + target)).
    /// </summary>
    public static (int Source, int Target) InferSeqLen(int sourceLen, int targetLen, int cutoffLen)
    {
        int maxTarget;
        if (targetLen * 2 < cutoffLen) maxTarget = cutoffLen;
        else if (sourceLen * 2 < cutoffLen) maxTarget = cutoffLen - sourceLen;
        else maxTarget = (int)(cutoffLen * ((double)targetLen / (sourceLen + targetLen)));
        var newTarget = Math.Min(maxTarget, targetLen);
        var maxSource = Math.Max(cutoffLen - newTarget, 0);
        return (Math.Min(maxSource, sourceLen), newTarget);
    }

    /// <summary>Token ids of template pieces, each text piece encoded on its own.</summary>
    public int[] Encode(IEnumerable<TemplatePiece> pieces)
    {
        var ids = new List<int>();
        foreach (var p in pieces)
        {
            switch (p.Kind)
            {
                case PieceKind.Text when p.Text.Length > 0: ids.AddRange(_tokenizer.Encode(p.Text)); break;
                case PieceKind.Bos when _tokenizer.BosTokenId is { } bos: ids.Add(bos); break;
                case PieceKind.Eos: ids.Add(EosId); break;
                case PieceKind.Token:
                    ids.Add(_tokenizer.TokenToId(p.Text) ?? throw new DatasetException($"Chat template '{_template.Name}' uses token '{p.Text}', which the tokenizer lacks."));
                    break;
            }
        }
        return ids.ToArray();
    }

    /// <summary>One supervised conversation: ids, labels and whether cutoff_len shortened it.</summary>
    public (int[] InputIds, int[] Labels, bool Truncated) EncodeSupervised(Conversation conversation)
    {
        if (conversation.Chosen is not null)
            throw new DatasetException($"{conversation.Source}: a ranking (preference) sample cannot train with stage sft; use its dataset for DPO/RM or drop ranking: true.");
        var turns = _template.Apply(conversation).Select(t => (Source: Encode(t.Prompt), Target: Encode(t.Answer))).ToList();
        if (_options.MaskHistory) turns.Reverse(); // the last turns get the budget first
        var cutoff = _options.CutoffLen;
        var total = 0;
        var truncated = false;
        var parts = new List<(int[] Ids, int[] Labels)>();
        for (var i = 0; i < turns.Count; i++)
        {
            if (total >= cutoff) { truncated = true; break; }
            var (source, target) = turns[i];
            var (sourceLen, targetLen) = InferSeqLen(source.Length, target.Length, cutoff - total);
            truncated |= sourceLen < source.Length || targetLen < target.Length;
            total += sourceLen + targetLen;
            var ids = new int[sourceLen + targetLen];
            var labels = new int[ids.Length];
            source.AsSpan(0, sourceLen).CopyTo(ids);
            target.AsSpan(0, targetLen).CopyTo(ids.AsSpan(sourceLen));
            if (_options.TrainOnPrompt) source.AsSpan(0, sourceLen).CopyTo(labels);
            else labels.AsSpan(0, sourceLen).Fill(TokenizedSample.IgnoreIndex);
            if (_options.MaskHistory && i != 0) labels.AsSpan(sourceLen).Fill(TokenizedSample.IgnoreIndex);
            else target.AsSpan(0, targetLen).CopyTo(labels.AsSpan(sourceLen));
            parts.Add((ids, labels));
        }
        if (_options.MaskHistory) parts.Reverse();
        return ([.. parts.SelectMany(p => p.Ids)], [.. parts.SelectMany(p => p.Labels)], truncated);
    }

    /// <summary>
    /// Prompt and answer ids of a conversation's last turn, as LLaMA-Factory's <c>encode_oneturn</c>: every earlier
    /// turn, answers included, belongs to the prompt (so history is never trained, whatever mask_history says).
    /// </summary>
    private (int[] Prompt, int[] Answer) EncodeLastTurn(Conversation conversation)
    {
        var turns = _template.Apply(conversation);
        var prompt = new List<int>();
        for (var i = 0; i < turns.Count - 1; i++)
        {
            prompt.AddRange(Encode(turns[i].Prompt));
            prompt.AddRange(Encode(turns[i].Answer));
        }
        prompt.AddRange(Encode(turns[^1].Prompt));
        return ([.. prompt], Encode(turns[^1].Answer));
    }

    /// <summary>The first <paramref name="sourceLen"/> prompt ids and <paramref name="targetLen"/> answer ids; the prompt is labelled only with train_on_prompt.</summary>
    private EncodedSequence Sequence(int[] prompt, int sourceLen, int[] answer, int targetLen)
    {
        targetLen = Math.Min(targetLen, answer.Length);
        var ids = new int[sourceLen + targetLen];
        prompt.AsSpan(0, sourceLen).CopyTo(ids);
        answer.AsSpan(0, targetLen).CopyTo(ids.AsSpan(sourceLen));
        var labels = (int[])ids.Clone();
        if (!_options.TrainOnPrompt) labels.AsSpan(0, sourceLen).Fill(TokenizedSample.IgnoreIndex);
        return new EncodedSequence(ids, labels);
    }

    /// <summary>
    /// A preference pair, as LLaMA-Factory's pairwise processor: chosen = prompt + chosen answer, rejected = the same
    /// prompt + rejected answer (the prompt is the chosen conversation's, answers end with the template's end of turn).
    /// cutoff_len bounds each sequence: <see cref="InferSeqLen"/>(prompt, the longer answer) gives one budget for the
    /// prompt (its start is kept) and one for both answers, so the two sequences share their prompt ids.
    /// </summary>
    public EncodedPair EncodePair(Conversation conversation)
    {
        if (conversation is not { Chosen: { } chosenMessage, Rejected: { } rejectedMessage })
            throw new DatasetException($"{conversation.Source}: not a preference pair (no chosen/rejected answers); register its dataset with ranking: true.");
        var asked = conversation with { Chosen = null, Rejected = null };
        var (prompt, chosen) = EncodeLastTurn(asked with { Messages = [.. conversation.Messages, chosenMessage] });
        var (_, rejected) = EncodeLastTurn(asked with { Messages = [.. conversation.Messages, rejectedMessage] });
        var longer = Math.Max(chosen.Length, rejected.Length);
        var (sourceLen, targetLen) = InferSeqLen(prompt.Length, longer, _options.CutoffLen);
        return new EncodedPair(Sequence(prompt, sourceLen, chosen, targetLen), Sequence(prompt, sourceLen, rejected, targetLen),
            sourceLen < prompt.Length || targetLen < longer);
    }

    /// <summary>
    /// A KTO sample, as LLaMA-Factory's feedback processor: the conversation (its last answer is the completion) and
    /// the same prompt with <paramref name="klCompletion"/>, another sample's completion, for the KL estimate; each
    /// sequence is cut to cutoff_len on its own with <see cref="InferSeqLen"/>.
    /// </summary>
    public EncodedFeedback EncodeKto(Conversation conversation, ChatMessage klCompletion)
    {
        if (conversation.KtoTag is not { } tag)
            throw new DatasetException($"{conversation.Source}: not a KTO sample (no kto_tag); register its dataset with columns.kto_tag.");
        var (prompt, answer) = EncodeLastTurn(conversation);
        var (klPrompt, klAnswer) = EncodeLastTurn(conversation with { Messages = [.. conversation.Messages.Take(conversation.Messages.Count - 1), klCompletion] });
        var (sourceLen, targetLen) = InferSeqLen(prompt.Length, answer.Length, _options.CutoffLen);
        var (klSourceLen, klTargetLen) = InferSeqLen(klPrompt.Length, klAnswer.Length, _options.CutoffLen);
        return new EncodedFeedback(Sequence(prompt, sourceLen, answer, targetLen), Sequence(klPrompt, klSourceLen, klAnswer, klTargetLen), tag,
            sourceLen < prompt.Length || targetLen < answer.Length);
    }

    /// <summary>The kind of every sample of <paramref name="conversations"/>; a mix of kinds is an error naming one of each.</summary>
    public static SampleKind KindOf(IReadOnlyList<Conversation> conversations)
    {
        static SampleKind Of(Conversation c) => c.IsPair ? SampleKind.Pair : c.KtoTag.HasValue ? SampleKind.Kto : SampleKind.Supervised;
        if (conversations.Count == 0) return SampleKind.Supervised;
        var kind = Of(conversations[0]);
        foreach (var c in conversations)
            if (Of(c) != kind)
                throw new DatasetException($"The registered samples mix {Describe(kind)} ({conversations[0].Source}) and {Describe(Of(c))} ({c.Source}); " +
                                           "one split feeds one objective, so name datasets of one kind in data.dataset.");
        return kind;

        static string Describe(SampleKind k) => k switch
        {
            SampleKind.Pair => "preference pairs (ranking: true)", SampleKind.Kto => "KTO samples (kto_tag)", _ => "supervised samples",
        };
    }

    /// <summary>
    /// All conversations → samples (packed when asked) with counts. The kind of samples is the data's
    /// (<see cref="KindOf"/>); pass <paramref name="kind"/> (the kind of the whole registered set) so that an empty
    /// validation split is still written as a paired or KTO file.
    /// </summary>
    public PreprocessResult Process(IEnumerable<Conversation> conversations, long droppedUpstream = 0, SampleKind? kind = null)
    {
        var list = conversations as IReadOnlyList<Conversation> ?? conversations.ToList();
        var listKind = KindOf(list);
        if (kind is { } expected && list.Count > 0 && listKind != expected)
            throw new ArgumentException($"samples are {listKind}, the caller expects {expected}", nameof(kind));
        if (_options.Stage == PreprocessStage.Sft && (kind ?? listKind) is var twoSequence and not SampleKind.Supervised)
            return ProcessTwoSequence(list, twoSequence, droppedUpstream);
        var sequences = new List<(int[] Ids, int[] Labels)>();
        long truncated = 0, dropped = droppedUpstream;
        foreach (var c in list)
        {
            if (_options.Stage == PreprocessStage.Pt)
            {
                var text = string.Concat(c.Messages.Where(m => m.Role == ChatRole.User).Select(m => m.Content));
                int[] ids = [.. _tokenizer.Encode(text), EosId];
                if (!_options.Packing && ids.Length > _options.CutoffLen) { ids = ids[.._options.CutoffLen]; truncated++; }
                sequences.Add((ids, ids));
                continue;
            }
            var (inputIds, labels, wasTruncated) = EncodeSupervised(c);
            if (wasTruncated) truncated++;
            if (!labels.Any(l => l != TokenizedSample.IgnoreIndex)) { dropped++; continue; }
            sequences.Add((inputIds, labels));
        }

        IReadOnlyList<TokenizedSample> samples;
        if (!_options.Packing) samples = sequences.Select(s => TokenizedSample.Single(s.Ids, s.Labels)).ToList();
        else if (_options.Stage == PreprocessStage.Pt) samples = PackText(sequences);
        else samples = PackSupervised(sequences);

        long tokens = 0, trained = 0;
        foreach (var s in samples)
        {
            tokens += s.InputIds.Length;
            foreach (var l in s.Labels) if (l != TokenizedSample.IgnoreIndex) trained++;
        }
        return new PreprocessResult(samples, new TokenizedDatasetStats
        {
            Samples = samples.Count, Tokens = tokens, TrainedTokens = trained, Truncated = truncated, Dropped = dropped,
            Packed = _options.Packing, NeatPacking = _options.Packing && _options.NeatPacking,
        });
    }

    /// <summary>
    /// Pairs or KTO samples: one row of two sequences each, never packed (LLaMA-Factory packs supervised data only).
    /// A sample whose either sequence has nothing left to train after truncation is dropped, as a supervised one is.
    /// KTO's KL completion of sample i is the completion of sample i − 1 (the first takes the last's), LLaMA-Factory's
    /// "+1 offset" of completions against prompts.
    /// </summary>
    private PreprocessResult ProcessTwoSequence(IReadOnlyList<Conversation> conversations, SampleKind kind, long droppedUpstream)
    {
        var samples = new List<TokenizedSample>(conversations.Count);
        long truncated = 0, dropped = droppedUpstream, tokens = 0, trained = 0, desirable = 0;
        for (var i = 0; i < conversations.Count; i++)
        {
            EncodedSequence first, second;
            int? tag = null;
            bool wasTruncated;
            if (kind == SampleKind.Pair) (first, second, wasTruncated) = EncodePair(conversations[i]);
            else
            {
                var previous = conversations[(i + conversations.Count - 1) % conversations.Count];
                var feedback = EncodeKto(conversations[i], previous.Messages[^1]);
                (first, second, wasTruncated) = (feedback.Completion, feedback.Kl, feedback.Truncated);
                tag = feedback.Desirable ? TokenizedSample.Desirable : TokenizedSample.Undesirable;
            }
            if (wasTruncated) truncated++;
            if (!Trains(first.Labels) || !Trains(second.Labels)) { dropped++; continue; }
            samples.Add(new TokenizedSample([.. first.InputIds, .. second.InputIds], [.. first.Labels, .. second.Labels],
                [first.InputIds.Length, second.InputIds.Length], tag));
            if (tag == TokenizedSample.Desirable) desirable++;
            tokens += first.InputIds.Length + second.InputIds.Length;
            trained += first.Labels.Count(l => l != TokenizedSample.IgnoreIndex) + second.Labels.Count(l => l != TokenizedSample.IgnoreIndex);
        }
        return new PreprocessResult(samples, new TokenizedDatasetStats
        {
            Samples = samples.Count, Tokens = tokens, TrainedTokens = trained, Truncated = truncated, Dropped = dropped,
            Paired = kind == SampleKind.Pair, Kto = kind == SampleKind.Kto, Desirable = desirable,
        });

        static bool Trains(int[] labels) => labels.Any(l => l != TokenizedSample.IgnoreIndex);
    }

    /// <summary>
    /// LLaMA-Factory's greedy knapsack: sort lengths ascending, then fill each pack by repeatedly taking the
    /// largest sequence that still fits. Without neat_packing a pack is one sequence (attention crosses the joins).
    /// </summary>
    private List<TokenizedSample> PackSupervised(List<(int[] Ids, int[] Labels)> sequences)
    {
        var byLength = new Dictionary<int, Stack<int>>();
        var lengths = new List<int>(sequences.Count);
        for (var i = 0; i < sequences.Count; i++)
        {
            var len = sequences[i].Ids.Length;
            if (!byLength.TryGetValue(len, out var stack)) byLength[len] = stack = new Stack<int>();
            stack.Push(i);
            lengths.Add(len);
        }
        lengths.Sort();
        var packs = new List<TokenizedSample>();
        while (lengths.Count > 0)
        {
            var remaining = _options.CutoffLen;
            var members = new List<int>();
            while (true)
            {
                // Largest length <= remaining: upper bound of remaining, minus one.
                var index = UpperBound(lengths, remaining) - 1;
                if (index < 0) break;
                remaining -= lengths[index];
                members.Add(byLength[lengths[index]].Pop());
                lengths.RemoveAt(index);
            }
            packs.Add(Join(members.Select(m => sequences[m]).ToList()));
        }
        return packs;
    }

    /// <summary>Plain text: all sequences concatenated and cut into cutoff_len blocks (the last block may be shorter).</summary>
    private List<TokenizedSample> PackText(List<(int[] Ids, int[] Labels)> sequences)
    {
        var blocks = new List<TokenizedSample>();
        var ids = new List<int>();
        var lengths = new List<int>();
        var cutoff = _options.CutoffLen;
        foreach (var (seq, _) in sequences)
        {
            var at = 0;
            while (at < seq.Length)
            {
                var take = Math.Min(cutoff - ids.Count, seq.Length - at);
                ids.AddRange(seq.AsSpan(at, take));
                lengths.Add(take);
                at += take;
                if (ids.Count == cutoff) Flush();
            }
        }
        if (ids.Count > 0) Flush();
        return blocks;

        void Flush()
        {
            int[] block = [.. ids];
            blocks.Add(new TokenizedSample(block, block, _options.NeatPacking ? [.. lengths] : [block.Length]));
            ids.Clear();
            lengths.Clear();
        }
    }

    private TokenizedSample Join(List<(int[] Ids, int[] Labels)> members)
    {
        int[] ids = [.. members.SelectMany(m => m.Ids)];
        int[] labels = [.. members.SelectMany(m => m.Labels)];
        return new TokenizedSample(ids, labels, _options.NeatPacking ? [.. members.Select(m => m.Ids.Length)] : [ids.Length]);
    }

    private static int UpperBound(List<int> sorted, int value)
    {
        int lo = 0, hi = sorted.Count;
        while (lo < hi)
        {
            var mid = (lo + hi) >>> 1;
            if (sorted[mid] <= value) lo = mid + 1; else hi = mid;
        }
        return lo;
    }
}
