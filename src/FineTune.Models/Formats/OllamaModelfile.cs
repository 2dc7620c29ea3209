using System.Text;

namespace FineTune.Models;

/// <summary>
/// An Ollama Modelfile for a GGUF file: FROM, TEMPLATE (Go template syntax over .Messages), stop
/// PARAMETERs and SYSTEM. The TEMPLATE is written for the chat format the model was trained with — taken
/// from the pipeline's template name, else recognised from the Jinja chat template's markers (ChatML,
/// Llama 3, Mistral [INST]); anything else gets a plain "role: content" layout.
/// </summary>
public static class OllamaModelfile
{
    public static string Build(string ggufFileName, string? templateName, string? jinjaChatTemplate, IEnumerable<string> stopTokens, string? system)
    {
        var format = FormatOf(templateName, jinjaChatTemplate);
        var sb = new StringBuilder();
        sb.Append("FROM ./").Append(ggufFileName).Append('\n');
        sb.Append("TEMPLATE \"\"\"").Append(GoTemplate(format)).Append("\"\"\"\n");
        var stops = new List<string>();
        foreach (var s in DefaultStops(format).Concat(stopTokens))
            if (!string.IsNullOrEmpty(s) && !stops.Contains(s))
                stops.Add(s);
        foreach (var s in stops)
            sb.Append("PARAMETER stop \"").Append(s.Replace("\\", "\\\\").Replace("\"", "\\\"")).Append("\"\n");
        if (!string.IsNullOrEmpty(system))
            sb.Append("SYSTEM \"\"\"").Append(system.Replace("\"\"\"", "\" \" \"")).Append("\"\"\"\n");
        return sb.ToString();
    }

    public enum ChatFormat { ChatMl, Llama3, Mistral, Plain }

    public static ChatFormat FormatOf(string? templateName, string? jinja)
    {
        switch (templateName?.ToLowerInvariant())
        {
            case "chatml" or "qwen" or "qwen3" or "qwen2" or "qwen3_nothink": return ChatFormat.ChatMl;
            case "llama3": return ChatFormat.Llama3;
            case "mistral" or "llama2": return ChatFormat.Mistral;
        }
        if (jinja is null) return ChatFormat.Plain;
        if (jinja.Contains("<|im_start|>", StringComparison.Ordinal)) return ChatFormat.ChatMl;
        if (jinja.Contains("<|start_header_id|>", StringComparison.Ordinal)) return ChatFormat.Llama3;
        if (jinja.Contains("[INST]", StringComparison.Ordinal)) return ChatFormat.Mistral;
        return ChatFormat.Plain;
    }

    public static string GoTemplate(ChatFormat format) => format switch
    {
        ChatFormat.ChatMl =>
            "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        ChatFormat.Llama3 =>
            "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        ChatFormat.Mistral =>
            "{{- range .Messages }}{{- if eq .Role \"system\" }}{{ .Content }}\n\n{{ else if eq .Role \"user\" }}[INST] {{ .Content }} [/INST]{{ else if eq .Role \"assistant\" }}{{ .Content }}</s>{{ end }}{{- end }}",
        _ =>
            "{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant: ",
    };

    private static IEnumerable<string> DefaultStops(ChatFormat format) => format switch
    {
        ChatFormat.ChatMl => ["<|im_end|>", "<|im_start|>"],
        ChatFormat.Llama3 => ["<|eot_id|>", "<|start_header_id|>"],
        ChatFormat.Mistral => ["[INST]", "</s>"],
        _ => ["user:"],
    };
}
