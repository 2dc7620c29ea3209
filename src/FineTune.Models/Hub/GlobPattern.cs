using System.Text;
using System.Text.RegularExpressions;

namespace FineTune.Models.Hub;

/// <summary>File globs as in allow_patterns: '*' any characters but '/', '**' anything, '?' one character.</summary>
public sealed class GlobPattern
{
    private readonly Regex _regex;

    public GlobPattern(string pattern)
    {
        Pattern = pattern;
        var sb = new StringBuilder("^");
        for (int i = 0; i < pattern.Length; i++)
        {
            char c = pattern[i];
            if (c == '*' && i + 1 < pattern.Length && pattern[i + 1] == '*')
            {
                sb.Append(".*");
                i++;
                if (i + 1 < pattern.Length && pattern[i + 1] == '/')
                {
                    sb.Append("/?");
                    i++;
                }
            }
            else if (c == '*')
                sb.Append("[^/]*");
            else if (c == '?')
                sb.Append("[^/]");
            else
                sb.Append(Regex.Escape(c.ToString()));
        }
        sb.Append('$');
        _regex = new Regex(sb.ToString(), RegexOptions.CultureInvariant);
    }

    public string Pattern { get; }

    public bool IsMatch(string path) => _regex.IsMatch(path);

    /// <summary>What a model directory needs: configs, safetensors weights, tokenizer files, chat templates (top level only).</summary>
    public static IReadOnlyList<string> DefaultModelPatterns { get; } =
        ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"];

    public static Func<string, bool> Matcher(IReadOnlyList<string>? patterns)
    {
        var globs = (patterns is { Count: > 0 } ? patterns : DefaultModelPatterns).Select(p => new GlobPattern(p)).ToArray();
        return path => globs.Any(g => g.IsMatch(path));
    }
}
