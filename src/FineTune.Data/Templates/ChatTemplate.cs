using System.Text;
using System.Text.RegularExpressions;

namespace FineTune.Data.Templates;

/// <summary>
/// A chat template, LLaMA-Factory's way: formatter slots per role, a prefix (where BOS goes), a default system
/// prompt, stop words and the EOS rule. <see cref="Apply"/> turns a conversation into prompt/answer turns;
/// the text of all turns joined is what the model's own Jinja <c>chat_template</c> renders for it.
/// </summary>
public sealed record ChatTemplate
{
    public required string Name { get; init; }
    /// <summary>Emitted once before the first message (BOS for Llama-style models).</summary>
    public SlotFormat Prefix { get; init; } = SlotFormat.Of();
    public required SlotFormat System { get; init; }
    public required SlotFormat User { get; init; }
    public required SlotFormat Assistant { get; init; }
    public required SlotFormat Observation { get; init; }
    public required SlotFormat Function { get; init; }
    public ToolFormat Tools { get; init; } = ToolFormat.Default;
    public string DefaultSystem { get; init; } = "";
    public IReadOnlyList<string> StopWords { get; init; } = [];
    /// <summary>The first stop word replaces the tokenizer's EOS (its id ends answers and pads packs).</summary>
    public bool ReplaceEos { get; init; }
    /// <summary>Llama-2 style: the formatted system text is put inside the first user message.</summary>
    public bool SystemInFirstUser { get; init; }
    /// <summary>A reasoning template (Qwen3): answers carry a &lt;think&gt; block, an empty one when the data has none.</summary>
    public bool Reasoning { get; init; }
    public string ThoughtOpen { get; init; } = "<think>\n";
    public string ThoughtClose { get; init; } = "\n</think>\n\n";
    /// <summary>
    /// LLaMA-Factory's <c>enable_thinking</c> (default true): the empty think block is part of the answer (trained);
    /// false puts it at the end of the prompt (not trained) and removes thoughts found in the answers.
    /// </summary>
    public bool EnableThinking { get; init; } = true;

    /// <summary>The token that ends an answer: the first stop word when <see cref="ReplaceEos"/>, else the tokenizer's EOS (null).</summary>
    public string? EosToken => ReplaceEos ? StopWords[0] : null;

    public static IReadOnlyList<string> Names => ChatTemplates.All.Keys.ToList();

    /// <summary>The named template (default, empty, chatml, qwen, qwen3, llama2, llama3, mistral).</summary>
    public static ChatTemplate Get(string name, bool enableThinking = true)
    {
        if (!ChatTemplates.All.TryGetValue(name, out var template))
            throw new DatasetException($"Unknown chat template '{name}'. Known templates: {string.Join(", ", ChatTemplates.All.Keys)}.");
        return template with { EnableThinking = enableThinking };
    }

    /// <summary>Prompt/answer pairs for a supervised conversation (messages alternate prompt, answer).</summary>
    public IReadOnlyList<TemplateTurn> Apply(Conversation conversation)
    {
        var messages = conversation.Messages;
        if (messages.Count % 2 != 0)
            throw new DatasetException($"{conversation.Source}: a supervised sample needs prompt/answer pairs; found {messages.Count} messages.");
        var contents = messages.Select(m => m.Content).ToArray();
        if (Reasoning && !EnableThinking)
            for (var i = 1; i < contents.Length; i += 2) contents[i] = RemoveThought(contents[i]);

        var system = conversation.System.Length > 0 ? conversation.System : DefaultSystem;
        var toolText = conversation.Tools.Length > 0 ? ToolText.DescribeTools(Tools, conversation.Tools) : "";
        var encoded = new List<List<TemplatePiece>>(messages.Count);
        for (var i = 0; i < messages.Count; i++)
        {
            var pieces = new List<TemplatePiece>();
            var content = contents[i];
            if (i == 0)
            {
                pieces.AddRange(Prefix.Apply(""));
                if (system.Length > 0 || toolText.Length > 0)
                {
                    var systemPieces = System.Apply(system + toolText).ToList();
                    if (SystemInFirstUser) content = systemPieces[0].Text + content;
                    else pieces.AddRange(systemPieces);
                }
            }
            pieces.AddRange(messages[i].Role switch
            {
                ChatRole.User => User.Apply(content, (i / 2).ToString(global::System.Globalization.CultureInfo.InvariantCulture)),
                ChatRole.Assistant => Assistant.Apply(content),
                ChatRole.Observation => Observation.Apply(content),
                ChatRole.Function => Function.Apply(FunctionText(content)),
                _ => throw new InvalidOperationException(),
            });
            encoded.Add(pieces);
        }

        var turns = new List<TemplateTurn>(messages.Count / 2);
        for (var i = 0; i < messages.Count; i += 2)
        {
            var prompt = encoded[i];
            var answer = encoded[i + 1];
            if (Reasoning && !contents[i + 1].Contains(ThoughtOpen.Trim(), StringComparison.Ordinal) &&
                !contents[i + 1].Contains(ThoughtClose.Trim(), StringComparison.Ordinal))
            {
                // An empty thought, tokenised on its own as LLaMA-Factory's get_thought_word_ids does.
                var thought = new TemplatePiece(PieceKind.Text, ThoughtOpen + ThoughtClose);
                if (EnableThinking) answer = [thought, .. answer];
                else prompt = [.. prompt, thought];
            }
            turns.Add(new TemplateTurn(prompt, answer));
        }
        return turns;
    }

    /// <summary>The whole conversation as text, BOS/EOS printed as the given token strings.</summary>
    public string Render(Conversation conversation, SpecialTokenText special) =>
        Render(Apply(conversation).SelectMany(t => t.Prompt.Concat(t.Answer)), special);

    public string Render(IEnumerable<TemplatePiece> pieces, SpecialTokenText special)
    {
        var sb = new StringBuilder();
        foreach (var p in pieces)
            sb.Append(p.Kind switch
            {
                PieceKind.Text or PieceKind.Token => p.Text,
                PieceKind.Bos => special.Bos ?? "",
                _ => EosToken ?? special.Eos ?? "",
            });
        return sb.ToString();
    }

    private string FunctionText(string content) => ToolText.FormatCalls(Tools, ToolText.ParseCalls(content));

    private string RemoveThought(string content)
    {
        var pattern = Regex.Escape(ThoughtOpen) + "(.*?)" + Regex.Escape(ThoughtClose);
        return Regex.Replace(content, pattern, "", RegexOptions.Singleline).TrimStart('\n');
    }
}
