namespace FineTune.Data.Templates;

/// <summary>
/// The built-in templates, each as LLaMA-Factory registers it (src/llamafactory/data/template.py). Roles a
/// template does not spell out fall back as there: observation → user format, function → assistant format.
/// </summary>
internal static class ChatTemplates
{
    private static readonly TemplatePiece Bos = TemplatePiece.Bos;
    private static readonly TemplatePiece Eos = TemplatePiece.Eos;

    public static readonly IReadOnlyDictionary<string, ChatTemplate> All = Build();

    private static Dictionary<string, ChatTemplate> Build()
    {
        var list = new List<ChatTemplate>();

        // "Human: …</s>\nAssistant:" with the tokenizer's EOS after every turn.
        var defaultUser = SlotFormat.Of("Human: {{content}}", Eos, "\nAssistant:");
        var defaultAssistant = SlotFormat.Of("{{content}}", Eos, "\n");
        list.Add(new ChatTemplate
        {
            Name = "default", User = defaultUser, Assistant = defaultAssistant,
            System = SlotFormat.Of("System: {{content}}", Eos, "\n"),
            Observation = defaultUser, Function = defaultAssistant,
        });

        // Plain concatenation: the answer is followed by nothing, the text is trained as-is.
        var plain = SlotFormat.Of("{{content}}");
        list.Add(new ChatTemplate
        {
            Name = "empty", User = plain, Assistant = plain, System = plain, Observation = plain, Function = plain,
        });

        var imUser = SlotFormat.Of("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n");
        var imAssistant = SlotFormat.Of("{{content}}<|im_end|>\n");
        var imSystem = SlotFormat.Of("<|im_start|>system\n{{content}}<|im_end|>\n");
        list.Add(new ChatTemplate
        {
            Name = "chatml", User = imUser, Assistant = imAssistant, System = imSystem,
            Observation = SlotFormat.Of("<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n"),
            Function = imAssistant, StopWords = ["<|im_end|>", "<|im_start|>"], ReplaceEos = true,
        });

        var qwenObservation = SlotFormat.Of("<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n");
        var qwen = new ChatTemplate
        {
            Name = "qwen", User = imUser, Assistant = imAssistant, System = imSystem, Observation = qwenObservation,
            Function = imAssistant, Tools = ToolFormat.Qwen,
            DefaultSystem = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
            StopWords = ["<|im_end|>"], ReplaceEos = true,
        };
        list.Add(qwen);
        list.Add(qwen with { Name = "qwen3", DefaultSystem = "", Reasoning = true });
        // LLaMA-Factory's qwen3_nothink: the Qwen format with neither a default system prompt nor thinking blocks.
        list.Add(qwen with { Name = "qwen3_nothink", DefaultSystem = "" });

        // Llama 2: BOS before every "[INST]", the system block inside the first user message.
        var llama2User = SlotFormat.Of(Bos, "[INST] {{content}} [/INST]");
        var llama2Assistant = SlotFormat.Of("{{content}}", Eos);
        list.Add(new ChatTemplate
        {
            Name = "llama2", User = llama2User, Assistant = llama2Assistant,
            System = SlotFormat.Of("<<SYS>>\n{{content}}\n<</SYS>>\n\n"), Observation = llama2User, Function = llama2Assistant,
            SystemInFirstUser = true,
        });

        list.Add(new ChatTemplate
        {
            Name = "llama3", Prefix = SlotFormat.Of(Bos),
            User = SlotFormat.Of("<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
            Assistant = SlotFormat.Of("{{content}}<|eot_id|>"),
            System = SlotFormat.Of("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>"),
            Observation = SlotFormat.Of("<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
            Function = SlotFormat.Of("{{content}}<|eot_id|>"), Tools = ToolFormat.Llama3,
            StopWords = ["<|eot_id|>", "<|eom_id|>"], ReplaceEos = true,
        });

        // Mistral (tokenizer v3): one BOS up front, system text prepended to the first user message.
        list.Add(new ChatTemplate
        {
            Name = "mistral", Prefix = SlotFormat.Of(Bos),
            User = SlotFormat.Of("[INST] {{content}}[/INST]"),
            Assistant = SlotFormat.Of(" {{content}}", Eos),
            System = SlotFormat.Of("{{content}}\n\n"),
            Observation = SlotFormat.Of("[TOOL_RESULTS] {\"content\": {{content}}}[/TOOL_RESULTS]"),
            Function = SlotFormat.Of("[TOOL_CALLS] {{content}}", Eos), Tools = ToolFormat.Mistral,
            SystemInFirstUser = true,
        });

        // Gemma 2/3: BOS up front, the system text prepended to the first user turn, the assistant's role is "model"
        // (the Gemma 3 tokenizer_config.json's Jinja renders the same for contents without surrounding whitespace, which it trims).
        var gemmaAssistant = SlotFormat.Of("{{content}}<end_of_turn>\n");
        list.Add(new ChatTemplate
        {
            Name = "gemma", Prefix = SlotFormat.Of(Bos),
            User = SlotFormat.Of("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n"),
            Assistant = gemmaAssistant,
            System = SlotFormat.Of("{{content}}\n\n"),
            Observation = SlotFormat.Of("<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n"),
            Function = gemmaAssistant, StopWords = ["<end_of_turn>"], ReplaceEos = true,
            SystemInFirstUser = true,
        });

        // Phi-4: ChatML with <|im_sep|> after the role and no newlines between turns.
        var phi4Assistant = SlotFormat.Of("{{content}}<|im_end|>");
        var phi4User = SlotFormat.Of("<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>");
        list.Add(new ChatTemplate
        {
            Name = "phi4", User = phi4User, Observation = phi4User,
            Assistant = phi4Assistant,
            System = SlotFormat.Of("<|im_start|>system<|im_sep|>{{content}}<|im_end|>"),
            Function = phi4Assistant, StopWords = ["<|im_end|>"], ReplaceEos = true,
        });

        return list.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }
}
