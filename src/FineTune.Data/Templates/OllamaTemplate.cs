using System.Text;

namespace FineTune.Data.Templates;

/// <summary>
/// A <see cref="ChatTemplate"/> written as an Ollama Modelfile TEMPLATE: Go text/template over Ollama's <c>.Messages</c>
/// (each with <c>.Role</c> system/user/assistant/tool, <c>.Content</c>, <c>.Thinking</c>, <c>.ToolCalls</c>), so that Ollama
/// renders a conversation to the text FineTune trained on. Each role's slot becomes one branch: literal text as it is,
/// <c>{{content}}</c> as <c>{{ .Content }}</c>, EOS as the template's end token. Ollama puts the Modelfile's SYSTEM (or
/// the request's system message) first in .Messages; templates that put the system text into the first user message
/// (llama2, mistral) keep it in <c>$system</c> until then. The first BOS is left out, as llama.cpp adds it to the
/// prompt itself (add_bos_token); later ones (llama2's per-turn BOS) are written. Qwen3's thinking switch follows
/// Ollama's <c>think</c> option: with <c>think: false</c> the empty think block ends the prompt, as LLaMA-Factory's
/// enable_thinking=false; otherwise history answers carry their thought (or an empty one) as in training.
/// </summary>
public static class OllamaTemplate
{
    private const string ThinkOff = "and $.IsThinkSet (not $.Think)";

    /// <summary>The Go template; <paramref name="bosToken"/>/<paramref name="eosToken"/> are the tokenizer's BOS/EOS text.</summary>
    public static string GoTemplate(ChatTemplate t, string? bosToken, string? eosToken)
    {
        var sb = new StringBuilder();
        sb.Append("{{ $bos := false }}");
        if (t.SystemInFirstUser)
            sb.Append("{{ $system := \"\" }}");
        sb.Append(Slot(t.Prefix, "", t, bosToken, eosToken));
        sb.Append("{{ range $i, $_ := .Messages }}");
        sb.Append("{{ if eq .Role \"system\" }}");
        sb.Append(t.SystemInFirstUser ? "{{ $system = .Content }}" : Slot(t.System, "{{ .Content }}", t, bosToken, eosToken));
        string userContent = t.SystemInFirstUser
            ? "{{ if $system }}" + Slot(t.System, "{{ $system }}", t, bosToken, eosToken) + "{{ $system = \"\" }}{{ end }}{{ .Content }}"
            : "{{ .Content }}";
        sb.Append("{{ else if eq .Role \"user\" }}").Append(Slot(t.User, userContent, t, bosToken, eosToken));
        if (t.Reasoning)
            sb.Append("{{ if ").Append(ThinkOff).Append(" }}").Append(Escape(t.ThoughtOpen + t.ThoughtClose)).Append("{{ end }}");
        sb.Append("{{ else if eq .Role \"assistant\" }}");
        // Qwen3 answers start with their thought, or an empty one, unless thinking is off (then the prompt ended with it).
        string thought = t.Reasoning
            ? "{{ if not (" + ThinkOff + ") }}{{ if .Thinking }}" + Escape(t.ThoughtOpen) + "{{ .Thinking }}" + Escape(t.ThoughtClose) +
              "{{ else }}" + Escape(t.ThoughtOpen + t.ThoughtClose) + "{{ end }}{{ end }}"
            : "";
        if (t.Tools == ToolFormat.Qwen)
            sb.Append("{{ if .ToolCalls }}")
              .Append(Slot(t.Function, thought + "{{ range $j, $call := .ToolCalls }}{{ if $j }}\n{{ end }}<tool_call>\n{\"name\": \"{{ $call.Function.Name }}\", \"arguments\": {{ $call.Function.Arguments }}}\n</tool_call>{{ end }}", t, bosToken, eosToken))
              .Append("{{ else }}");
        sb.Append(Slot(t.Assistant, thought + "{{ .Content }}", t, bosToken, eosToken));
        if (t.Tools == ToolFormat.Qwen)
            sb.Append("{{ end }}");
        sb.Append("{{ else if eq .Role \"tool\" }}").Append(Slot(t.Observation, "{{ .Content }}", t, bosToken, eosToken));
        sb.Append("{{ end }}{{ end }}");
        return sb.ToString();
    }

    /// <summary>PARAMETER stop values: the template's stop words, then the end token its answers close with.</summary>
    public static IReadOnlyList<string> Stops(ChatTemplate t, string? eosToken)
    {
        var stops = new List<string>(t.StopWords);
        bool endsWithEos = t.Assistant.Slots.Any(s => s.Kind == PieceKind.Eos);
        if (endsWithEos && (t.EosToken ?? eosToken) is { Length: > 0 } eos && !stops.Contains(eos))
            stops.Add(eos);
        return stops;
    }

    /// <summary>True when the template's text starts with BOS, which the Go template leaves to llama.cpp.</summary>
    public static bool StartsWithBos(ChatTemplate t) =>
        t.Prefix.Slots.FirstOrDefault() is { Kind: PieceKind.Bos } || t.Prefix.Slots.Count == 0 && t.User.Slots.FirstOrDefault() is { Kind: PieceKind.Bos };

    private static string Slot(SlotFormat slot, string content, ChatTemplate t, string? bos, string? eos)
    {
        var sb = new StringBuilder();
        foreach (var piece in slot.Slots)
            switch (piece.Kind)
            {
                case PieceKind.Text or PieceKind.Token:
                    int at = piece.Text.IndexOf("{{content}}", StringComparison.Ordinal);
                    if (at < 0)
                        sb.Append(Escape(piece.Text));
                    else
                        sb.Append(Escape(piece.Text[..at])).Append(content).Append(Escape(piece.Text[(at + "{{content}}".Length)..]));
                    break;
                case PieceKind.Bos:
                    if (!string.IsNullOrEmpty(bos))
                        sb.Append("{{ if $bos }}").Append(Escape(bos)).Append("{{ end }}");
                    sb.Append("{{ $bos = true }}");
                    break;
                case PieceKind.Eos:
                    sb.Append(Escape(t.EosToken ?? eos ?? ""));
                    break;
            }
        return sb.ToString();
    }

    /// <summary>Literal text in a Go template: only "{{" would start an action.</summary>
    private static string Escape(string text) => text.Replace("{{", "{{ \"{{\" }}", StringComparison.Ordinal);
}
