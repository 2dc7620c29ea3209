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

        return list.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }
}
