using System.Text;

namespace FineTune.Models;

/// <summary>
/// An Ollama Modelfile for a GGUF file: FROM, TEMPLATE (Go template syntax over .Messages, derived from the chat template
/// the model was trained with: FineTune.Data.Templates.OllamaTemplate), one PARAMETER stop per end token, and SYSTEM.
/// </summary>
public static class OllamaModelfile
{
    public static string Build(string ggufFileName, string goTemplate, IEnumerable<string> stopTokens, string? system)
    {
        var sb = new StringBuilder();
        sb.Append("FROM ./").Append(ggufFileName).Append('\n');
        if (goTemplate.Contains("\"\"\"", StringComparison.Ordinal))
            throw new ArgumentException("a Modelfile TEMPLATE cannot hold \"\"\"", nameof(goTemplate));
        sb.Append("TEMPLATE \"\"\"").Append(goTemplate).Append("\"\"\"\n");
        var stops = new List<string>();
        foreach (var s in stopTokens)
            if (!string.IsNullOrEmpty(s) && !stops.Contains(s))
                stops.Add(s);
        foreach (var s in stops)
            sb.Append("PARAMETER stop \"").Append(s.Replace("\\", "\\\\").Replace("\"", "\\\"")).Append("\"\n");
        if (!string.IsNullOrEmpty(system))
            sb.Append("SYSTEM \"\"\"").Append(system.Replace("\"\"\"", "\" \" \"")).Append("\"\"\"\n");
        return sb.ToString();
    }
}
