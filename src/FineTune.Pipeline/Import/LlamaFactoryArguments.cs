using System.Text;
using System.Text.RegularExpressions;
using FineTune.IO;
using FineTune.Pipeline.Validation;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace FineTune.Pipeline.Import;

/// <summary>One argument of a LLaMA-Factory config, as written, with where it stands in the file (1-based).</summary>
/// <param name="Value">The scalar text; null for a YAML null (the argument's default).</param>
/// <param name="Items">The items of a list value (a YAML sequence, or several words after one --key), else null.</param>
/// <param name="IsMapping">A mapping value (rope_scaling: {…}): no FineTune key takes one.</param>
public sealed record LlamaFactoryArgument(string Key, string? Value, IReadOnlyList<string>? Items, bool IsMapping, int Line, int Column)
{
    /// <summary>The value as one string: a list joined with commas, as LLaMA-Factory's own list arguments are written.</summary>
    public string? Text => Items is not null ? string.Join(",", Items) : Value;
}

/// <summary>
/// Reads a LLaMA-Factory training config: a YAML or JSON file of arguments (examples/train_lora/*.yaml), or a text file
/// holding a <c>llamafactory-cli train --key value …</c> command as LlamaBoard previews it (backslash or backtick line
/// continuations, a bash code fence around it, bare <c>--flag</c> meaning true).
/// </summary>
public static partial class LlamaFactoryArguments
{
    /// <summary>True when the text is a LLaMA-Factory config rather than a FineTune pipeline.</summary>
    public static bool IsLlamaFactory(string text)
    {
        if (IsCommand(text)) return true;
        try
        {
            var stream = new YamlStream();
            stream.Load(new StringReader(text));
            if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is not YamlMappingNode root) return false;
            var keys = root.Children.Keys.OfType<YamlScalarNode>().Select(k => k.Value).ToHashSet(StringComparer.Ordinal);
            // A FineTune pipeline has name/model/stages; LLaMA-Factory's arguments are flat.
            return !keys.Contains("stages") && !keys.Contains("model") &&
                   (keys.Contains("model_name_or_path") || keys.Contains("stage") || keys.Contains("do_train"));
        }
        catch (YamlException)
        {
            return false;
        }
    }

    /// <summary>True when the file at <paramref name="path"/> is a LLaMA-Factory config (see <see cref="IsLlamaFactory"/>).</summary>
    public static bool IsLlamaFactoryFile(string path) =>
        File.Exists(path) && new FileInfo(path).Length <= PipelineLoader.MaxPipelineBytes && IsLlamaFactory(File.ReadAllText(path));

    public static IReadOnlyList<LlamaFactoryArgument> Read(string file)
    {
        var bytes = InputFile.ReadAllBytes(file, PipelineLoader.MaxPipelineBytes, "LLaMA-Factory config", p => new PipelineUserException(
            $"{file}: {p.Text}; pass a LLaMA-Factory YAML or JSON config, or a text file holding a llamafactory-cli train command."));
        if (InputFile.Utf8Problem(bytes, out var bad) is { } encoding)
        {
            var (line, column) = bad < 0 ? (1, 1) : InputFile.LineAndColumn(bytes, bad);
            throw new PipelineValidationException([new PipelineError(file, line, column, "$", encoding)]);
        }
        var text = Encoding.UTF8.GetString(InputFile.WithoutByteOrderMark(bytes));
        return IsCommand(text) ? ParseCommand(text, file) : ParseYaml(text, file);
    }

    /// <summary>A command, not a YAML mapping that merely mentions one (in a comment, say).</summary>
    private static bool IsCommand(string text)
    {
        if (!CommandStart().IsMatch(text)) return false;
        try
        {
            var stream = new YamlStream();
            stream.Load(new StringReader(text));
            return stream.Documents.Count == 0 || stream.Documents[0].RootNode is not YamlMappingNode;
        }
        catch (YamlException)
        {
            return true;
        }
    }

    /// <summary>A YAML (or JSON, which is YAML's flow style) mapping of arguments.</summary>
    public static IReadOnlyList<LlamaFactoryArgument> ParseYaml(string text, string file)
    {
        var stream = new YamlStream();
        try
        {
            stream.Load(new StringReader(text));
        }
        catch (YamlException e)
        {
            var message = Regex.Replace(e.InnerException?.Message ?? e.Message, @"^\(Lin: \d+, Ck: \d+, Chr: \d+\) - \(Lin: \d+, Ck: \d+, Chr: \d+\): ", "");
            throw new PipelineValidationException([new PipelineError(file, (int)Math.Max(1, e.Start.Line), (int)Math.Max(1, e.Start.Column), "$", "YAML syntax: " + message)]);
        }
        if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is not YamlMappingNode root)
            throw new PipelineValidationException([new PipelineError(file, 1, 1, "$",
                "expected a mapping of LLaMA-Factory arguments (model_name_or_path: …, stage: sft, …), or a llamafactory-cli train command")]);
        var args = new List<LlamaFactoryArgument>();
        var errors = new List<PipelineError>();
        foreach (var (k, v) in root.Children)
        {
            var (line, col) = ((int)k.Start.Line, (int)k.Start.Column);
            if (k is not YamlScalarNode { Value: { } key })
            {
                errors.Add(new PipelineError(file, line, col, "$", "keys must be plain strings"));
                continue;
            }
            if (args.Any(a => a.Key == key))
            {
                errors.Add(new PipelineError(file, line, col, key, $"duplicate key '{key}'; keep one"));
                continue;
            }
            switch (v)
            {
                case YamlScalarNode s:
                    args.Add(new(key, IsNull(s) ? null : s.Value, null, false, line, col));
                    break;
                case YamlSequenceNode seq:
                    var items = new List<string>();
                    foreach (var item in seq.Children)
                        if (item is YamlScalarNode { Value: { } t }) items.Add(t);
                        else errors.Add(new PipelineError(file, (int)item.Start.Line, (int)item.Start.Column, key, "expected a list of plain values"));
                    args.Add(new(key, null, items, false, line, col));
                    break;
                default:
                    args.Add(new(key, null, null, true, line, col));
                    break;
            }
        }
        if (errors.Count > 0) throw new PipelineValidationException(errors);
        return args;
    }

    private static bool IsNull(YamlScalarNode s) =>
        s.Style is ScalarStyle.Plain or ScalarStyle.Any && s.Value is null or "" or "~" or "null" or "Null" or "NULL";

    /// <summary>
    /// <c>llamafactory-cli train --key value …</c>: each <c>--key</c> takes the words up to the next <c>--key</c> (none: true,
    /// as a bare flag; several: a list, as LlamaBoard writes list values), or <c>--key=value</c>.
    /// </summary>
    public static IReadOnlyList<LlamaFactoryArgument> ParseCommand(string text, string file)
    {
        // A markdown fence around the command (LlamaBoard's preview is one): blanked, so that lines keep their numbers.
        var words = ShellWords(Fence().Replace(text, ""), file);
        var start = words.FindIndex(w => w.Text is "llamafactory-cli" or "lmf" || w.Text.EndsWith("/llamafactory-cli", StringComparison.Ordinal));
        if (start < 0 || start + 1 >= words.Count || words[start + 1].Text != "train")
        {
            var at = start < 0 ? (Line: 1, Column: 1) : (words[start].Line, words[start].Column);
            throw new PipelineValidationException([new PipelineError(file, at.Line, at.Column, "$",
                "expected a `llamafactory-cli train --key value …` command (FineTune imports training commands)")]);
        }
        var args = new List<LlamaFactoryArgument>();
        var errors = new List<PipelineError>();
        var i = start + 2;
        while (i < words.Count)
        {
            var w = words[i];
            if (!w.Text.StartsWith("--", StringComparison.Ordinal))
            {
                errors.Add(new PipelineError(file, w.Line, w.Column, "$", w.Text.EndsWith(".yaml", StringComparison.Ordinal) || w.Text.EndsWith(".json", StringComparison.Ordinal)
                    ? $"'{w.Text}' is a config file: import that file (finetune import llamafactory {w.Text})"
                    : $"expected --key, got '{w.Text}'"));
                i++;
                continue;
            }
            var key = w.Text[2..];
            string? inline = null;
            if (key.IndexOf('=') is var eq and > 0) { inline = key[(eq + 1)..]; key = key[..eq]; }
            i++;
            var values = new List<string>();
            if (inline is not null) values.Add(inline);
            else
                while (i < words.Count && !words[i].Text.StartsWith("--", StringComparison.Ordinal))
                    values.Add(words[i++].Text);
            if (values.FirstOrDefault(v => v.Contains("${", StringComparison.Ordinal) || v.StartsWith('$')) is { } variable)
            {
                errors.Add(new PipelineError(file, w.Line, w.Column, key, $"'{variable}' is a shell variable; write its value into the command"));
                continue;
            }
            if (args.Any(a => a.Key == key))
            {
                errors.Add(new PipelineError(file, w.Line, w.Column, key, $"--{key} is given twice; keep one"));
                continue;
            }
            args.Add(values.Count switch
            {
                0 => new(key, "true", null, false, w.Line, w.Column),
                1 => new(key, values[0], null, false, w.Line, w.Column),
                _ => new(key, null, values, false, w.Line, w.Column),
            });
        }
        if (errors.Count > 0) throw new PipelineValidationException(errors);
        return args;
    }

    private readonly record struct Word(string Text, int Line, int Column);

    /// <summary>Splits the text into words as a POSIX shell would (quotes, backslash-newline), keeping each word's position.</summary>
    private static List<Word> ShellWords(string text, string file)
    {
        var words = new List<Word>();
        var sb = new StringBuilder();
        int line = 1, col = 0, wordLine = 0, wordCol = 0;
        char quote = '\0';
        var inWord = false;
        void Flush()
        {
            if (inWord) words.Add(new Word(sb.ToString(), wordLine, wordCol));
            sb.Clear();
            inWord = false;
        }
        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            col++;
            if (c == '\n') { line++; col = 0; }
            if (quote != '\0')
            {
                if (c == quote) quote = '\0';
                else sb.Append(c);
                continue;
            }
            // A line continuation: backslash (bash) or backtick (PowerShell, as LlamaBoard writes on Windows) before the newline.
            if ((c == '\\' || c == '`') && NextIsNewline(text, i, out var skip))
            {
                i += skip;
                line++;
                col = 0;
                continue;
            }
            if (c == '#' && !inWord)
            {
                while (i + 1 < text.Length && text[i + 1] != '\n') i++;
                continue;
            }
            if (char.IsWhiteSpace(c)) { Flush(); continue; }
            if (!inWord) { inWord = true; wordLine = line; wordCol = col; }
            if (c is '"' or '\'') { quote = c; continue; }
            if (c == '\\' && i + 1 < text.Length) { sb.Append(text[++i]); col++; continue; }
            sb.Append(c);
        }
        if (quote != '\0')
            throw new PipelineValidationException([new PipelineError(file, wordLine, wordCol, "$", $"a {quote} quote is not closed")]);
        Flush();
        return words;
    }

    private static bool NextIsNewline(string text, int i, out int skip)
    {
        skip = 0;
        var j = i + 1;
        while (j < text.Length && text[j] is ' ' or '\t') j++;
        if (j < text.Length && text[j] == '\r') j++;
        if (j < text.Length && text[j] == '\n') { skip = j - i; return true; }
        return false;
    }

    [GeneratedRegex(@"^[ \t]*```[^\n]*$", RegexOptions.Multiline)]
    private static partial Regex Fence();

    [GeneratedRegex(@"(^|\s|/)(llamafactory-cli|lmf)\s+train\b", RegexOptions.Multiline)]
    private static partial Regex CommandStart();
}
