namespace FineTune.Data.Templates;

/// <summary>What a template slot emits: literal text (tokenised as a whole, special-token strings included), or a special id.</summary>
public enum PieceKind { Text, Bos, Eos, Token }

/// <summary>
/// One element of a rendered turn. Text pieces are tokenised one by one, as LLaMA-Factory's
/// <c>_convert_elements_to_ids</c> does; Bos/Eos become the tokenizer's ids; Token names a vocabulary entry.
/// </summary>
public sealed record TemplatePiece(PieceKind Kind, string Text)
{
    public static readonly TemplatePiece Bos = new(PieceKind.Bos, "");
    public static readonly TemplatePiece Eos = new(PieceKind.Eos, "");
}

/// <summary>A formatter: slots where <c>{{content}}</c> (and <c>{{idx}}</c>) are replaced by the message.</summary>
public sealed record SlotFormat(IReadOnlyList<TemplatePiece> Slots)
{
    public static SlotFormat Of(params object[] slots) => new(slots.Select(s => s switch
    {
        string text => new TemplatePiece(PieceKind.Text, text),
        TemplatePiece p => p,
        _ => throw new ArgumentException($"slot {s}"),
    }).ToList());

    public IEnumerable<TemplatePiece> Apply(string content, string? idx = null)
    {
        foreach (var slot in Slots)
        {
            if (slot.Kind != PieceKind.Text) { yield return slot; continue; }
            var text = ReplaceFirst(slot.Text, "{{content}}", content);
            if (idx is not null) text = ReplaceFirst(text, "{{idx}}", idx);
            yield return slot with { Text = text };
        }
    }

    private static string ReplaceFirst(string s, string what, string with)
    {
        var i = s.IndexOf(what, StringComparison.Ordinal);
        return i < 0 ? s : string.Concat(s.AsSpan(0, i), with, s.AsSpan(i + what.Length));
    }
}

/// <summary>One prompt/answer pair of a conversation after templating: labels mask the prompt and train the answer.</summary>
public sealed record TemplateTurn(IReadOnlyList<TemplatePiece> Prompt, IReadOnlyList<TemplatePiece> Answer);

/// <summary>How BOS/EOS pieces print when a template is rendered to text (the tokenizer's token strings; null = none).</summary>
public sealed record SpecialTokenText(string? Bos, string? Eos);
