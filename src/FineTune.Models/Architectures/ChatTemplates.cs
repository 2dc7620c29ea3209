namespace FineTune.Models.Architectures;

/// <summary>The Jinja chat templates scratch models carry (tokenizer_config.json's chat_template).</summary>
internal static class ChatTemplates
{
    private const string ChatMlTurns =
        "{%- for message in messages %}" +
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}" +
        "{%- endfor %}";

    /// <summary>ChatML turns and the assistant header as the generation prompt.</summary>
    public const string ChatMl = ChatMlTurns + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

    /// <summary>ChatML; enable_thinking=false adds Qwen3's empty think block to the generation prompt.</summary>
    public const string ChatMlWithThinkSwitch = ChatMlTurns +
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}" +
        "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}" +
        "{%- endif %}";
}

/// <summary>Extra config.json keys of scratch models (transformers writes them; loading does not need them).</summary>
internal static class ScratchExtras
{
    public static readonly IReadOnlyDictionary<string, Func<System.Text.Json.Nodes.JsonNode?>> Common = new Dictionary<string, Func<System.Text.Json.Nodes.JsonNode?>>
    {
        ["attention_dropout"] = () => 0.0,
        ["use_cache"] = () => true,
    };
}
