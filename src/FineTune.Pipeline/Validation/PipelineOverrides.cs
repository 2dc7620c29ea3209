using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace FineTune.Pipeline.Validation;

/// <summary>
/// Command-line overrides, torchtune/Hydra style: <c>stages.train.learning_rate=1e-4</c>, <c>data.dataset=[identity, alpaca_mini]</c>.
/// Each sets (or adds) the value at a dotted path of the YAML tree before it is bound, so an override is validated exactly
/// as the file is; an error about an overridden value names the override (<c>override stages.train.lerning_rate=1e-4</c>).
/// </summary>
public static class PipelineOverrides
{
    /// <summary>What applying the overrides did: path-level errors, and a way to attribute binder errors to overrides.</summary>
    public sealed class Applied(IReadOnlyList<PipelineError> errors, IReadOnlyDictionary<string, string> byPath)
    {
        public IReadOnlyList<PipelineError> Errors { get; } = errors;

        /// <summary>An error at or under an overridden path, named by that override (line 0) instead of a file position.</summary>
        public PipelineError Locate(PipelineError e)
        {
            foreach (var (path, text) in byPath)
                if (e.JsonPath == path || e.JsonPath.StartsWith(path + ".", StringComparison.Ordinal) || e.JsonPath.StartsWith(path + "[", StringComparison.Ordinal))
                    return e with { File = $"override {text}", Line = 0, Column = 0 };
            return e;
        }
    }

    public static Applied Apply(YamlMappingNode root, IReadOnlyList<string> overrides)
    {
        var errors = new List<PipelineError>();
        var byPath = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var text in overrides)
        {
            var eq = text.IndexOf('=');
            var path = eq > 0 ? text[..eq].Trim() : "";
            var segments = path.Split('.');
            if (eq <= 0 || segments.Any(s => s.Length == 0))
            {
                errors.Add(new PipelineError($"override {text}", 0, 0, "$", "expected a dotted key path, '=' and a value, e.g. stages.train.learning_rate=1e-4"));
                continue;
            }
            if (!TryParseValue(text[(eq + 1)..], out var value, out var problem))
            {
                errors.Add(new PipelineError($"override {text}", 0, 0, "$." + path, $"the value is not YAML: {problem}"));
                continue;
            }
            var map = root;
            var at = "$";
            var ok = true;
            foreach (var segment in segments[..^1])
            {
                at += "." + segment;
                var key = new YamlScalarNode(segment);
                if (!map.Children.TryGetValue(key, out var child) || IsNull(child))
                {
                    var created = new YamlMappingNode();
                    map.Children[key] = created;
                    map = created;
                }
                else if (child is YamlMappingNode m)
                    map = m;
                else
                {
                    errors.Add(new PipelineError($"override {text}", 0, 0, at, $"{at[2..]} is a value in the file, not a block; override it as {at[2..]}=…"));
                    ok = false;
                    break;
                }
            }
            if (!ok) continue;
            map.Children[new YamlScalarNode(segments[^1])] = value;
            byPath["$." + path] = text;
        }
        return new Applied(errors, byPath);
    }

    private static bool TryParseValue(string text, out YamlNode value, out string problem)
    {
        value = new YamlScalarNode(text);
        problem = "";
        if (text.Trim().Length == 0) { value = new YamlScalarNode(null); return true; }
        try
        {
            var stream = new YamlStream();
            stream.Load(new StringReader(text));
            value = stream.Documents.Count == 0 ? new YamlScalarNode(null) : stream.Documents[0].RootNode;
            return true;
        }
        catch (YamlException e)
        {
            problem = e.InnerException?.Message ?? e.Message;
            return false;
        }
    }

    private static bool IsNull(YamlNode node) =>
        node is YamlScalarNode { Style: ScalarStyle.Plain or ScalarStyle.Any, Value: null or "" or "~" or "null" or "Null" or "NULL" };
}
