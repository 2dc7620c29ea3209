using FineTune.Data;
using FineTune.Data.Preprocessing;
using FineTune.Data.Templates;
using FineTune.Tokenizers;

namespace FineTune.Serving;

/// <summary>
/// Messages → prompt ids with the model's <see cref="ChatTemplate"/>, as `finetune chat` renders its history (the same
/// turns, the assistant prefix last), and the ids and strings that end an answer: the tokenizer's EOS,
/// generation_config.json's eos_token_id, and the template's stop words (single tokens stop as ids, others as text).
/// </summary>
public sealed class ChatPrompt
{
    private readonly ChatTemplate _template;
    private readonly Preprocessor _encoder;

    public ChatPrompt(Tokenizer tokenizer, ChatTemplate template, IReadOnlyList<int> generationConfigEos)
    {
        _template = template;
        _encoder = new Preprocessor(tokenizer, template, new PreprocessOptions());
        var eos = new HashSet<int>(generationConfigEos);
        if (tokenizer.EosTokenId is { } e) eos.Add(e);
        eos.Add(_encoder.EosId);
        var stops = new List<string>();
        foreach (string w in template.StopWords)
        {
            if (tokenizer.TokenToId(w) is { } id) eos.Add(id);
            else stops.Add(w);
        }
        EosTokenIds = [.. eos.Order()];
        StopStrings = stops;
    }

    public IReadOnlyList<int> EosTokenIds { get; }
    public IReadOnlyList<string> StopStrings { get; }
    public string TemplateName => _template.Name;

    /// <summary>
    /// Prompt ids for the answer to the last user message of <paramref name="turns"/> (user, assistant, …, user);
    /// an empty <paramref name="system"/> takes the template's default.
    /// </summary>
    public int[] Encode(string system, IReadOnlyList<ChatMessage> turns)
    {
        var messages = new List<ChatMessage>(turns) { new(ChatRole.Assistant, "") };
        var rendered = _template.Apply(new Conversation("request", system, "", messages));
        var pieces = new List<TemplatePiece>();
        for (int i = 0; i < rendered.Count; i++)
        {
            pieces.AddRange(rendered[i].Prompt);
            if (i < rendered.Count - 1) pieces.AddRange(rendered[i].Answer);
        }
        return _encoder.Encode(pieces);
    }
}
