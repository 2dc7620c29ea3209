using System.Text;
using FineTune.Data;
using FineTune.Data.Preprocessing;
using FineTune.Data.Templates;
using FineTune.Models;
using FineTune.Tokenizers;

namespace FineTune.Training.Chat;

/// <summary>
/// A conversation with a model: the history is rendered with a <see cref="ChatTemplate"/> (as training rendered
/// it), the reply generated with the KV cache and streamed as text. Stops on the tokenizer's EOS, the ids of
/// generation_config.json's eos_token_id, and the template's stop words.
/// </summary>
public sealed class ChatSession
{
    private readonly CausalLM _model;
    private readonly Tokenizer _tokenizer;
    private readonly ChatTemplate _template;
    private readonly Preprocessor _encoder;
    private readonly List<ChatMessage> _history = [];
    private readonly string[] _stopStrings;

    public ChatSession(CausalLM model, Tokenizer tokenizer, ChatTemplate template, string? system, GenerationOptions options)
    {
        _model = model;
        _tokenizer = tokenizer;
        _template = template;
        System = system ?? "";
        _encoder = new Preprocessor(tokenizer, template, new PreprocessOptions());
        var eos = new HashSet<int>(options.EosTokenIds);
        if (tokenizer.EosTokenId is { } e) eos.Add(e);
        eos.Add(_encoder.EosId);
        var stops = new List<string>();
        foreach (string w in template.StopWords)
        {
            if (tokenizer.TokenToId(w) is { } id) eos.Add(id);
            else stops.Add(w);
        }
        _stopStrings = [.. stops];
        Options = options with { EosTokenIds = [.. eos.Order()] };
    }

    public string System { get; }
    public GenerationOptions Options { get; }
    public IReadOnlyList<ChatMessage> History => _history;

    public void Clear() => _history.Clear();

    /// <summary>Token ids of the prompt for the next reply: history, the new user message, and the assistant prefix.</summary>
    public int[] PromptIds(string userMessage)
    {
        var messages = new List<ChatMessage>(_history) { new(ChatRole.User, userMessage), new(ChatRole.Assistant, "") };
        var turns = _template.Apply(new Conversation("chat", System, "", messages));
        var pieces = new List<TemplatePiece>();
        for (int i = 0; i < turns.Count; i++)
        {
            pieces.AddRange(turns[i].Prompt);
            if (i < turns.Count - 1) pieces.AddRange(turns[i].Answer);
        }
        return _encoder.Encode(pieces);
    }

    /// <summary>Generates the reply to <paramref name="userMessage"/>, streaming text pieces to <paramref name="onText"/>, and adds both to the history.</summary>
    public string Reply(string userMessage, Action<string>? onText = null)
    {
        int[] prompt = PromptIds(userMessage);
        var tokens = new List<int>();
        int shown = 0;
        string text = "";
        bool stopped = false;
        _model.Generate([prompt], Options, (_, token) =>
        {
            tokens.Add(token);
            text = _tokenizer.Decode(tokens.ToArray(), skipSpecialTokens: true);
            int cut = StopIndex(text);
            if (cut >= 0) { text = text[..cut]; stopped = true; }
            // Hold back a trailing replacement character: the rest of a multi-byte character is still to come.
            int visible = stopped ? text.Length : text.EndsWith('\uFFFD') ? text.Length - 1 : text.Length;
            if (visible > shown && onText is not null) onText(text[shown..visible]);
            shown = Math.Max(shown, visible);
            return !stopped;
        });
        if (shown < text.Length) onText?.Invoke(text[shown..]);
        _history.Add(new ChatMessage(ChatRole.User, userMessage));
        _history.Add(new ChatMessage(ChatRole.Assistant, text));
        return text;
    }

    private int StopIndex(string text)
    {
        int best = -1;
        foreach (string s in _stopStrings)
        {
            int i = text.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (best < 0 || i < best)) best = i;
        }
        return best;
    }
}
