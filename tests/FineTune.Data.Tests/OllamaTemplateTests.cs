using FineTune.Data.Templates;

namespace FineTune.Data.Tests;

/// <summary>
/// The Modelfile TEMPLATE derived from each bundled chat template renders, in Go's template language as Ollama runs it
/// (<see cref="GoTemplateSubset"/>), the text FineTune's own template renders for the same conversation: whole
/// conversations, the prompt for the next answer, tool turns, qwen's tool calls and qwen3's thinking switch.
/// </summary>
public sealed class OllamaTemplateTests
{
    private const string Bos = "<s>", Eos = "</s>";
    private static readonly SpecialTokenText Special = new(Bos, Eos);

    public static TheoryData<string> Templates() => [.. ChatTemplate.Names];

    private static Dictionary<string, object?> Message(string role, string content, string? thinking = null, List<object?>? toolCalls = null) =>
        new() { ["Role"] = role, ["Content"] = content, ["Thinking"] = thinking ?? "", ["ToolCalls"] = toolCalls ?? [] };

    /// <summary>Ollama's render; the Modelfile's SYSTEM (the template's default system) goes first when the request has none.</summary>
    private static string Ollama(ChatTemplate t, List<object?> messages, bool? think = null)
    {
        if (t.DefaultSystem.Length > 0 && !messages.Any(m => ((Dictionary<string, object?>)m!)["Role"] as string == "system"))
            messages.Insert(0, Message("system", t.DefaultSystem));
        return GoTemplateSubset.Render(OllamaTemplate.GoTemplate(t, Bos, Eos), new Dictionary<string, object?>
        {
            ["Messages"] = messages, ["IsThinkSet"] = think is not null, ["Think"] = think ?? false,
        });
    }

    /// <summary>FineTune's text with the leading BOS taken off: llama.cpp adds that one itself.</summary>
    private static string Ours(ChatTemplate t, Conversation c, bool promptOnly = false)
    {
        var turns = t.Apply(c);
        var pieces = turns.SelectMany((turn, i) => promptOnly && i == turns.Count - 1 ? turn.Prompt : turn.Prompt.Concat(turn.Answer));
        var text = t.Render(pieces, Special);
        if (OllamaTemplate.StartsWithBos(t))
        {
            Assert.StartsWith(Bos, text);
            text = text[Bos.Length..];
        }
        return text;
    }

    private static ChatMessage U(string s) => new(ChatRole.User, s);
    private static ChatMessage A(string s) => new(ChatRole.Assistant, s);

    [Theory]
    [MemberData(nameof(Templates))]
    public void Go_template_renders_a_two_turn_conversation_with_a_system_prompt_as_finetune_does(string name)
    {
        var t = ChatTemplate.Get(name);
        var c = new Conversation("s", "You are helpful.", "", [U("Hi"), A("Hello!"), U("2+2?"), A("4")]);
        var go = Ollama(t, [Message("system", "You are helpful."), Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "2+2?"), Message("assistant", "4")]);
        Assert.Equal(Ours(t, c), go);
    }

    [Theory]
    [MemberData(nameof(Templates))]
    public void Go_template_renders_the_prompt_for_the_next_answer_as_finetune_does(string name)
    {
        var t = ChatTemplate.Get(name);
        var c = new Conversation("s", "", "", [U("Hi"), A("Hello!"), U("Who are you?"), A("")]);
        var go = Ollama(t, [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "Who are you?")]);
        Assert.Equal(Ours(t, c, promptOnly: true), go);
    }

    [Theory]
    [MemberData(nameof(Templates))]
    public void Go_template_renders_a_tool_result_turn_as_finetune_does(string name)
    {
        var t = ChatTemplate.Get(name);
        var c = new Conversation("s", "", "", [U("Weather?"), A("Let me look."), new ChatMessage(ChatRole.Observation, "{\"temp\": 21}"), A("21 degrees.")]);
        var go = Ollama(t, [Message("user", "Weather?"), Message("assistant", "Let me look."), Message("tool", "{\"temp\": 21}"), Message("assistant", "21 degrees.")]);
        Assert.Equal(Ours(t, c), go);
    }

    [Theory]
    [InlineData("qwen")]
    [InlineData("qwen3")]
    public void Go_template_writes_qwen_tool_calls_as_finetune_does(string name)
    {
        var t = ChatTemplate.Get(name);
        var call = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
        var c = new Conversation("s", "", "", [U("Weather in Paris?"), new ChatMessage(ChatRole.Function, call), new ChatMessage(ChatRole.Observation, "21"), A("21 degrees.")]);
        // Ollama prints the arguments as JSON; given here in the spacing FineTune trains with.
        var toolCall = new Dictionary<string, object?> { ["Function"] = new Dictionary<string, object?> { ["Name"] = "get_weather", ["Arguments"] = "{\"city\": \"Paris\"}" } };
        var go = Ollama(t, [Message("user", "Weather in Paris?"), Message("assistant", "", toolCalls: [toolCall]), Message("tool", "21"), Message("assistant", "21 degrees.")]);
        Assert.Equal(Ours(t, c), go);
        Assert.Contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>", go);
    }

    [Fact]
    public void Qwen3_think_false_ends_the_prompt_with_the_empty_think_block_as_enable_thinking_false_does()
    {
        var off = ChatTemplate.Get("qwen3", enableThinking: false);
        var c = new Conversation("s", "", "", [U("Hi"), A("<think>\nGreeting.\n</think>\n\nHello!"), U("Who are you?"), A("")]);
        var go = Ollama(off, [Message("user", "Hi"), Message("assistant", "Hello!", thinking: "Greeting."), Message("user", "Who are you?")], think: false);
        Assert.Equal(Ours(off, c, promptOnly: true), go);
        Assert.EndsWith("<|im_start|>assistant\n<think>\n\n</think>\n\n", go);
    }

    [Fact]
    public void Qwen3_with_thinking_keeps_history_thoughts_and_leaves_the_prompt_open()
    {
        var on = ChatTemplate.Get("qwen3");
        var c = new Conversation("s", "", "", [U("Hi"), A("<think>\nGreeting.\n</think>\n\nHello!"), U("2+2?"), A("4"), U("Who are you?"), A("")]);
        var go = Ollama(on, [Message("user", "Hi"), Message("assistant", "Hello!", thinking: "Greeting."), Message("user", "2+2?"), Message("assistant", "4"), Message("user", "Who are you?")], think: true);
        Assert.Equal(Ours(on, c, promptOnly: true), go);
        Assert.Contains("<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>", go);
        Assert.EndsWith("<|im_start|>assistant\n", go);
    }

    [Fact]
    public void Stops_are_the_templates_stop_words_then_its_end_token()
    {
        Assert.Equal(["<|im_end|>", "<|im_start|>"], OllamaTemplate.Stops(ChatTemplate.Get("chatml"), Eos));
        Assert.Equal(["<|eot_id|>", "<|eom_id|>"], OllamaTemplate.Stops(ChatTemplate.Get("llama3"), "<|end_of_text|>"));
        Assert.Equal(["</s>"], OllamaTemplate.Stops(ChatTemplate.Get("llama2"), Eos));
        Assert.Equal([], OllamaTemplate.Stops(ChatTemplate.Get("empty"), Eos));
    }
}
