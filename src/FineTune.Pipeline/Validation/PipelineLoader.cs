using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using FineTune.IO;
using FineTune.Pipeline.Config;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.RepresentationModel;

namespace FineTune.Pipeline.Validation;

/// <summary>A pipeline file read, validated and bound to <see cref="PipelineDefinition"/>.</summary>
/// <param name="FilePath">Absolute path of pipeline.yaml.</param>
/// <param name="Positions">JSON path (<c>$.stages.train.lora_rank</c>) → line and column of the value in the file.</param>
public sealed record LoadedPipeline(
    PipelineDefinition Definition,
    string FilePath,
    IReadOnlyDictionary<string, (int Line, int Column)> Positions)
{
    public string Directory => Path.GetDirectoryName(FilePath)!;

    /// <summary>The command-line overrides applied over the file (<c>stages.train.learning_rate=1e-4</c>), as given; recorded in the lock.</summary>
    public IReadOnlyList<string> Overrides { get; init; } = [];

    /// <summary>The stages present in the file, in pipeline order (by kind; stages of one kind in the file's order).</summary>
    public IReadOnlyList<StageInstance> Stages => Definition.Stages.All;

    /// <summary>An error about the key at <paramref name="jsonPath"/>, located at it or its closest located ancestor.</summary>
    public PipelineError ErrorAt(string jsonPath, string message)
    {
        var p = jsonPath;
        while (!Positions.ContainsKey(p) && p.Contains('.'))
            p = p[..p.LastIndexOfAny(['.', '['])];
        var (line, col) = Positions.GetValueOrDefault(p, (1, 1));
        return new PipelineError(FilePath, line, col, jsonPath, message);
    }
}

/// <summary>
/// Reads pipeline.yaml with YamlDotNet's node model (which keeps line/column), checks every key against the
/// configuration records (<see cref="ConfigModel"/>) and reports all errors at once.
/// </summary>
public static partial class PipelineLoader
{
    public const string DefaultFileName = "pipeline.yaml";

    /// <summary>Accepts the pipeline file or its directory (which must hold pipeline.yaml or pipeline.yml).</summary>
    public static string ResolvePipelineFile(string fileOrDirectory)
    {
        var full = Path.GetFullPath(fileOrDirectory);
        if (System.IO.Directory.Exists(full))
        {
            foreach (var name in new[] { DefaultFileName, "pipeline.yml" })
                if (File.Exists(Path.Combine(full, name)))
                    return Path.Combine(full, name);
            throw new PipelineUserException($"{fileOrDirectory}: no pipeline.yaml in this directory; pass the pipeline file or a directory holding pipeline.yaml.");
        }
        if (File.Exists(full))
            return full;
        throw new PipelineUserException($"{fileOrDirectory}: no such file or directory; pass a pipeline.yaml or the directory holding it.");
    }

    /// <summary>The most FineTune reads of a pipeline file; a pipeline names its data and models (a few KB).</summary>
    public const long MaxPipelineBytes = 1L << 20;

    /// <summary>How deep YAML may nest: a pipeline needs 4 levels; YamlDotNet builds nodes recursively, so 100,000 would overflow the stack.</summary>
    public const int MaxDepth = 64;

    public static LoadedPipeline Load(string fileOrDirectory, IReadOnlyList<string>? overrides = null)
    {
        var file = ResolvePipelineFile(fileOrDirectory);
        var bytes = InputFile.ReadAllBytes(file, MaxPipelineBytes, "pipeline.yaml", p => new PipelineUserException($"{file}: {p.Text}; " +
            (p.TooLarge ? "a pipeline names its data and models, it does not hold them." : "pipeline.yaml must be a regular text file.")));
        if (InputFile.Utf8Problem(bytes, out var bad) is { } encoding)
        {
            var (line, column) = bad < 0 ? (1, 1) : InputFile.LineAndColumn(bytes, bad);
            throw new PipelineValidationException([new PipelineError(file, line, column, "$", encoding)]);
        }
        return Parse(Encoding.UTF8.GetString(InputFile.WithoutByteOrderMark(bytes)), file, overrides);
    }

    /// <summary>Parses pipeline text; <paramref name="filePath"/> names the file in messages and anchors relative paths.</summary>
    /// <param name="overrides">Dotted-path assignments (<c>stages.train.learning_rate=1e-4</c>, values in YAML) applied
    /// over the file before validation; errors about them name the override instead of a line.</param>
    public static LoadedPipeline Parse(string yaml, string filePath, IReadOnlyList<string>? overrides = null)
    {
        filePath = Path.GetFullPath(filePath);
        var binder = new Binder(filePath);
        var stream = new YamlStream();
        var scanner = new Scanner(new StringReader(yaml));
        var parser = new DepthLimitedParser(new Parser(scanner), MaxDepth);
        try
        {
            stream.Load(parser);
        }
        // YamlDotNet 16 lets two malformed inputs escape as bare exceptions instead of a YamlException:
        catch (InvalidOperationException e) when (e.Source == "YamlDotNet")
        {
            // a plain scalar at column 1 inside a flow collection ("a: [\nb: 1"): the scanner stops at it.
            throw SyntaxError(filePath, scanner.CurrentPosition, "a '[' or '{' above is not closed (or its items are not indented)");
        }
        catch (ArgumentException e) when (e.Source == "YamlDotNet")
        {
            // an empty key with a mapping on the same line ("model:\n : source: x"): the node model rejects the event.
            throw SyntaxError(filePath, parser.Current?.Start ?? scanner.CurrentPosition, "unexpected mapping here; write a key before ':' and a nested mapping on its own indented lines");
        }
        catch (YamlException e)
        {
            var message = e.InnerException is not null ? e.InnerException.Message : e.Message;
            // YamlDotNet prefixes messages with "(Lin: .., Col: ..) - (..): "; the location is printed our way instead.
            message = Regex.Replace(message, @"^\(Lin: \d+, Ck: \d+, Chr: \d+\) - \(Lin: \d+, Ck: \d+, Chr: \d+\): ", "");
            // Some scanner errors (a tab as indentation) carry no mark; the scanner stands where it stopped.
            var at = e.Start.Equals(Mark.Empty) ? scanner.CurrentPosition : e.Start;
            throw new PipelineValidationException([new PipelineError(filePath, (int)at.Line, (int)at.Column, "$",
                e is NestingTooDeepException ? message : "YAML syntax: " + message)]);
        }

        if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is not YamlMappingNode root)
        {
            var node = stream.Documents.Count == 0 ? null : stream.Documents[0].RootNode;
            throw new PipelineValidationException([new PipelineError(filePath, node is null ? 1 : (int)node.Start.Line,
                node is null ? 1 : (int)node.Start.Column, "$", "expected a mapping with keys name, model, data, stages")]);
        }

        overrides ??= [];
        var applied = PipelineOverrides.Apply(root, overrides);
        if (applied.Errors.Count > 0)
            throw new PipelineValidationException(applied.Errors);
        var definition = (PipelineDefinition)binder.BindObject(root, typeof(PipelineDefinition), "$");
        definition = SemanticChecks.Apply(definition, binder);
        DatasetChecks.Apply(definition, binder);
        if (binder.Errors.Count > 0)
            throw new PipelineValidationException(binder.Errors.Select(applied.Locate).OrderBy(e => e.Line).ThenBy(e => e.Column).ToArray());
        return new LoadedPipeline(definition, filePath, binder.Positions) { Overrides = overrides.ToArray() };
    }

    private static PipelineValidationException SyntaxError(string file, Mark at, string message) =>
        new([new PipelineError(file, (int)at.Line, (int)at.Column, "$", "YAML syntax: " + message)]);

    private sealed class NestingTooDeepException(Mark start, Mark end, string message) : YamlException(start, end, message);

    /// <summary>Passes YamlDotNet's events through and stops at the first collection nested deeper than the limit.</summary>
    private sealed class DepthLimitedParser(IParser inner, int maxDepth) : IParser
    {
        private int _depth;

        public ParsingEvent? Current => inner.Current;

        public bool MoveNext()
        {
            if (!inner.MoveNext()) return false;
            switch (inner.Current)
            {
                case MappingStart or SequenceStart when ++_depth > maxDepth:
                    throw new NestingTooDeepException(inner.Current.Start, inner.Current.End,
                        $"YAML nested deeper than {maxDepth} levels; a pipeline needs 4 (flatten the value here)");
                case MappingEnd or SequenceEnd:
                    _depth--;
                    break;
            }
            return true;
        }
    }

    /// <summary>Walks the YAML nodes against the record types, collecting errors instead of stopping at the first.</summary>
    internal sealed partial class Binder(string filePath)
    {
        public List<PipelineError> Errors { get; } = [];
        public Dictionary<string, (int Line, int Column)> Positions { get; } = new(StringComparer.Ordinal);
        public string FilePath { get; } = filePath;

        /// <summary>Stages whose key or kind was wrong (reported, not bound): a from: naming one is not reported again.</summary>
        public HashSet<string> FailedStages { get; } = new(StringComparer.Ordinal);

        /// <summary>Paths whose value had an error and kept its default.</summary>
        private HashSet<string> Unbound { get; } = new(StringComparer.Ordinal);

        public void Error(YamlNode node, string path, string message) =>
            Errors.Add(new PipelineError(FilePath, (int)node.Start.Line, (int)node.Start.Column, path, message));

        public void Error(string path, string message)
        {
            // A value that failed to bind was left at its default; a rule about it would only repeat that error.
            if (Unbound.Contains(path)) return;
            // The closest located ancestor: a missing key is reported at its parent mapping.
            var p = path;
            while (!Positions.ContainsKey(p) && p.Contains('.'))
                p = p[..p.LastIndexOfAny(['.', '['])];
            var (line, col) = Positions.GetValueOrDefault(p, (1, 1));
            Errors.Add(new PipelineError(FilePath, line, col, path, message));
        }

        /// <param name="structure">Keys handled by the caller (a stage's kind and from), skipped here.</param>
        public object BindObject(YamlMappingNode map, Type type, string path, IReadOnlySet<string>? structure = null)
        {
            if (type == typeof(StagesSection))
                return BindStages(map, path);
            Positions[path] = ((int)map.Start.Line, (int)map.Start.Column);
            var instance = Activator.CreateInstance(type)!;
            var keys = ConfigModel.Keys(type);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var (keyNode, valueNode) in map.Children)
            {
                if (keyNode is not YamlScalarNode { Value: { } keyName })
                {
                    Error(keyNode, path, "keys must be plain strings");
                    continue;
                }
                if (structure?.Contains(keyName) == true)
                    continue;
                var key = keys.FirstOrDefault(k => k.Name == keyName);
                var childPath = $"{path}.{keyName}";
                if (key is null)
                {
                    Error(keyNode, childPath, UnknownKeyMessage(keyName, keys, path));
                    continue;
                }
                if (!seen.Add(keyName))
                {
                    Error(keyNode, childPath, $"duplicate key '{keyName}'");
                    continue;
                }
                Positions[childPath] = ((int)valueNode.Start.Line, (int)valueNode.Start.Column);
                if (BindValue(valueNode, key, childPath, out var value))
                    key.Property.SetValue(instance, value);
                else
                    Unbound.Add(childPath);
            }
            foreach (var key in keys.Where(k => k.Required && !seen.Contains(k.Name)))
                Error(map, $"{path}.{key.Name}", $"missing required key '{key.Name}'" + (key.Description is null ? "" : $" ({key.Description})"));
            return instance;
        }

        private static readonly IReadOnlySet<string> StageStructure = new HashSet<string>(StringComparer.Ordinal) { StageKeys.Kind, StageKeys.From };

        /// <summary>
        /// <c>stages</c>: each key is a stage. A kind's name is a stage of that kind; any other name (<c>[a-z][a-z0-9_]*</c>)
        /// says its kind with <c>kind:</c>. <c>kind</c> and <c>from</c> are read here; the rest binds to the kind's block record.
        /// </summary>
        private StagesSection BindStages(YamlMappingNode map, string path)
        {
            Positions[path] = ((int)map.Start.Line, (int)map.Start.Column);
            var stages = new List<StageInstance>();
            var kindNames = StageTable.All.Select(d => d.Name).ToArray();
            foreach (var (keyNode, valueNode) in map.Children)
            {
                if (keyNode is not YamlScalarNode { Value: { } name })
                {
                    Error(keyNode, path, "keys must be plain strings");
                    continue;
                }
                var at = $"{path}.{name}";
                if (stages.Any(s => s.Name == name))
                {
                    Error(keyNode, at, $"duplicate key '{name}'");
                    continue;
                }
                var block = valueNode as YamlMappingNode;
                if (block is null && !IsNull(valueNode))
                {
                    Error(valueNode, at, $"expected a mapping, got {Describe(valueNode)}");
                    continue;
                }
                Positions[at] = ((int)valueNode.Start.Line, (int)valueNode.Start.Column);
                var byName = StageGraph.TryParse(name, out var named) && StageGraph.Name(named) == name ? named : (StageKind?)null;
                var kindNode = Child(block, StageKeys.Kind);
                StageKind kind;
                if (kindNode is not null)
                {
                    Positions[$"{at}.kind"] = ((int)kindNode.Start.Line, (int)kindNode.Start.Column);
                    if (kindNode is not YamlScalarNode { Value: { } kindText } || !StageGraph.TryParse(kindText, out kind) || StageGraph.Name(kind) != kindText)
                    {
                        var text = (kindNode as YamlScalarNode)?.Value ?? "";
                        var suggestion = DidYouMean.Suggest(text, kindNames);
                        FailedStages.Add(name);
                        Error(kindNode, $"{at}.kind", $"expected one of {string.Join(", ", kindNames)}, got {Describe(kindNode)}" + (suggestion is null ? "" : $"; did you mean '{suggestion}'?"));
                        continue;
                    }
                    if (byName is { } k && k != kind)
                    {
                        FailedStages.Add(name);
                        Error(kindNode, $"{at}.kind", $"stages.{name} is the {name} stage by its name; kind: {StageGraph.Name(kind)} contradicts it (give a {StageGraph.Name(kind)} stage another name)");
                        continue;
                    }
                }
                else if (byName is { } k)
                    kind = k;
                else
                {
                    var suggestion = DidYouMean.Suggest(name, kindNames);
                    // Close to a kind's name: most likely a typo of it. Otherwise a named stage that forgot its kind.
                    FailedStages.Add(name);
                    Error(keyNode, at, suggestion is not null
                        ? $"unknown key '{name}' in stages; did you mean '{suggestion}'?"
                        : $"stage '{name}' needs kind: one of {string.Join(", ", kindNames)} (a key that is not a kind's name is a stage of the kind its kind: says)");
                    continue;
                }
                // Still bound: its keys are checked, and the stages reading it do not repeat this error.
                if (!StageName().IsMatch(name))
                    Error(keyNode, at, $"stage name '{name}' must match [a-z][a-z0-9_]* (a lower-case letter, then lower-case letters, digits or _)");
                var type = StageTable.Of(kind).Block;
                var bound = block is null ? Activator.CreateInstance(type)! : BindObject(block, type, at, StageStructure);
                stages.Add(new StageInstance(name, kind, bound) { From = BindFrom(Child(block, StageKeys.From), $"{at}.from") });
            }
            return new StagesSection { All = stages };
        }

        private static YamlNode? Child(YamlMappingNode? map, string key) =>
            map?.Children.FirstOrDefault(c => c.Key is YamlScalarNode { Value: { } k } && k == key).Value;

        /// <summary><c>from: sft</c> or <c>from: [sft, pref_split]</c>: the names, each located.</summary>
        private IReadOnlyList<string> BindFrom(YamlNode? node, string path)
        {
            if (node is null) return [];
            Positions[path] = ((int)node.Start.Line, (int)node.Start.Column);
            if (node is YamlScalarNode { Value: { } one } && !IsNull(node))
            {
                Positions[$"{path}[0]"] = Positions[path];
                return [one];
            }
            if (node is YamlSequenceNode seq)
            {
                var names = new List<string>();
                for (var i = 0; i < seq.Children.Count; i++)
                {
                    var item = seq.Children[i];
                    Positions[$"{path}[{i}]"] = ((int)item.Start.Line, (int)item.Start.Column);
                    if (item is YamlScalarNode { Value: { } v } && !IsNull(item)) names.Add(v);
                    else Error(item, $"{path}[{i}]", $"expected a stage name, got {Describe(item)}");
                }
                return names;
            }
            Error(node, path, $"expected a stage name or a list of them, got {Describe(node)}");
            return [];
        }

        [GeneratedRegex("^[a-z][a-z0-9_]*$")]
        private static partial Regex StageName();

        private static string UnknownKeyMessage(string keyName, IReadOnlyList<ConfigKey> keys, string path)
        {
            var names = keys.Select(k => k.Name).ToArray();
            var suggestion = DidYouMean.Suggest(keyName, names);
            var where = path == "$" ? "at the top level" : $"in {path[2..]}";
            // A LLaMA-Factory argument: say where it goes (or that it is ignored/unsupported), not the nearest spelling here.
            if (Import.LlamaFactoryKeys.Find(keyName) is { } lf)
                return $"unknown key '{keyName}' {where}; {lf.Hint}";
            return suggestion is not null
                ? $"unknown key '{keyName}' {where}; did you mean '{suggestion}'?"
                : $"unknown key '{keyName}' {where}; expected one of: {string.Join(", ", names)}";
        }

        private static bool IsNull(YamlNode node) =>
            node is YamlScalarNode { Style: ScalarStyle.Plain or ScalarStyle.Any, Value: null or "" or "~" or "null" or "Null" or "NULL" };

        private static string Describe(YamlNode node) => node switch
        {
            YamlScalarNode s => $"'{s.Value}'",
            YamlMappingNode => "a mapping",
            YamlSequenceNode => "a list",
            _ => "an alias",
        };

        private bool BindValue(YamlNode node, ConfigKey key, string path, out object? value)
        {
            value = null;
            if (IsNull(node))
            {
                if (key.Kind == ValueKind.Object)
                {
                    // `merge:` with nothing after it: the block is present with all defaults.
                    value = Activator.CreateInstance(key.ObjectType!);
                    Positions[path] = ((int)node.Start.Line, (int)node.Start.Column);
                    return true;
                }
                if (key.Nullable)
                    return true;
                Error(node, path, $"expected {Expected(key)}, got null");
                return false;
            }
            switch (key.Kind)
            {
                case ValueKind.Object:
                    if (node is not YamlMappingNode map) { Error(node, path, $"expected a mapping, got {Describe(node)}"); return false; }
                    value = BindObject(map, key.ObjectType!, path);
                    return true;
                case ValueKind.StringList or ValueKind.EnumList:
                    return BindList(node, key, path, out value);
                case ValueKind.StringMap:
                    return BindMap(node, path, out value);
                default:
                    if (node is not YamlScalarNode scalar) { Error(node, path, $"expected {Expected(key)}, got {Describe(node)}"); return false; }
                    return BindScalar(scalar, key, key.Kind, path, out value);
            }
        }

        private bool BindList(YamlNode node, ConfigKey key, string path, out object? value)
        {
            value = null;
            var items = new List<(YamlNode Node, string Text)>();
            if (node is YamlSequenceNode seq)
            {
                var ok = true;
                for (var i = 0; i < seq.Children.Count; i++)
                {
                    var item = seq.Children[i];
                    // Each item is located, so that rules about it (an unknown dataset name) point at its line.
                    Positions[$"{path}[{i}]"] = ((int)item.Start.Line, (int)item.Start.Column);
                    if (item is YamlScalarNode { Value: { } v } && !IsNull(item)) items.Add((item, v));
                    else { Error(item, $"{path}[{i}]", $"expected a string, got {Describe(item)}"); ok = false; }
                }
                if (!ok) return false;
            }
            else if (node is YamlScalarNode { Value: { } text } && key.ScalarOrList)
            {
                if (key.Kind == ValueKind.EnumList)
                {
                    Positions[$"{path}[0]"] = ((int)node.Start.Line, (int)node.Start.Column);
                    items.Add((node, text));
                }
                else
                    foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                    {
                        Positions[$"{path}[{items.Count}]"] = ((int)node.Start.Line, (int)node.Start.Column);
                        items.Add((node, part));
                    }
            }
            else
            {
                Error(node, path, $"expected {Expected(key)}, got {Describe(node)}");
                return false;
            }

            if (key.Kind == ValueKind.StringList)
            {
                value = items.Select(i => i.Text).ToArray();
                return true;
            }
            var list = Array.CreateInstance(key.EnumType!, items.Count);
            var good = true;
            for (var i = 0; i < items.Count; i++)
            {
                var parsed = ConfigModel.ParseEnum(key.EnumType!, items[i].Text);
                if (parsed is null) { Error(items[i].Node, node is YamlSequenceNode ? $"{path}[{i}]" : path, EnumMessage(key, items[i].Text)); good = false; }
                else list.SetValue(parsed, i);
            }
            value = list;
            return good;
        }

        private bool BindMap(YamlNode node, string path, out object? value)
        {
            value = null;
            if (node is not YamlMappingNode map) { Error(node, path, $"expected a mapping of strings, got {Describe(node)}"); return false; }
            var dict = new Dictionary<string, string>(StringComparer.Ordinal);
            var ok = true;
            foreach (var (k, v) in map.Children)
            {
                if (k is YamlScalarNode { Value: { } ks } && v is YamlScalarNode { Value: { } vs })
                {
                    dict[ks] = vs;
                    // Each value located, so a rule about one entry (a malformed eval gate) points at its line.
                    Positions[$"{path}.{ks}"] = ((int)v.Start.Line, (int)v.Start.Column);
                }
                else { Error(v, $"{path}.{(k as YamlScalarNode)?.Value}", $"expected a string, got {Describe(v)}"); ok = false; }
            }
            value = dict;
            return ok;
        }

        private static string EnumMessage(ConfigKey key, string text)
        {
            var names = key.EnumNames;
            // split's older stage key takes pt/sft only; dpo, kto and rm are the train stage's objective (LLaMA-Factory's stage).
            if (key.EnumType == typeof(TrainingStage) && ConfigModel.ParseEnum(typeof(TrainingObjective), text) is not null)
                return $"expected one of {string.Join(", ", names)}, got '{text}'; {text} is a training objective: write stage: {text} in the train stage's block (stages.train.stage)";
            var suggestion = DidYouMean.Suggest(text, names);
            return $"expected one of {string.Join(", ", names)}, got '{text}'" + (suggestion is null ? "" : $"; did you mean '{suggestion}'?");
        }

        private bool BindScalar(YamlScalarNode node, ConfigKey key, ValueKind kind, string path, out object? value)
        {
            value = null;
            var text = node.Value ?? "";
            switch (kind)
            {
                case ValueKind.String:
                    if (key.Pattern is not null && !Regex.IsMatch(text, key.Pattern))
                    {
                        Error(node, path, $"'{text}' does not match {PatternHint(key)}");
                        return false;
                    }
                    value = text;
                    return true;
                case ValueKind.Boolean:
                    if (text is "true" or "True" or "TRUE") { value = true; return true; }
                    if (text is "false" or "False" or "FALSE") { value = false; return true; }
                    Error(node, path, $"expected true or false, got '{text}'");
                    return false;
                case ValueKind.Integer:
                    if (!long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l))
                    {
                        Error(node, path, $"expected {Expected(key)}, got '{text}'");
                        return false;
                    }
                    if (!InRange(key, l)) { Error(node, path, $"{text} is out of range: expected {Expected(key)}"); return false; }
                    value = (int)l;
                    return true;
                case ValueKind.Number:
                    if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) || !double.IsFinite(d))
                    {
                        Error(node, path, $"expected {Expected(key)}, got '{text}'");
                        return false;
                    }
                    if (!InRange(key, d)) { Error(node, path, $"{text} is out of range: expected {Expected(key)}"); return false; }
                    value = d;
                    return true;
                case ValueKind.Enum:
                    // An enum with true and false among its values takes every YAML boolean spelling of them.
                    value = ConfigModel.ParseEnum(key.EnumType!, text is "True" or "TRUE" or "False" or "FALSE" ? text.ToLowerInvariant() : text);
                    if (value is null) { Error(node, path, EnumMessage(key, text)); return false; }
                    return true;
                default:
                    throw new InvalidOperationException(kind.ToString());
            }
        }

        private static string PatternHint(ConfigKey key) =>
            key.Pattern == TrainConfig.DevicePattern ? "auto, cpu, cuda or cuda:N" : $"the pattern {key.Pattern}";

        private static bool InRange(ConfigKey key, double v)
        {
            if (key.Range is not { } r) return true;
            var min = Convert.ToDouble(r.Minimum, CultureInfo.InvariantCulture);
            var max = Convert.ToDouble(r.Maximum, CultureInfo.InvariantCulture);
            return (r.MinimumIsExclusive ? v > min : v >= min) && (r.MaximumIsExclusive ? v < max : v <= max);
        }

        /// <summary>"an integer in [1, 65536]", "a number in (0, 10]", "one of lora, freeze, full".</summary>
        public static string Expected(ConfigKey key)
        {
            var noun = key.Kind switch
            {
                ValueKind.Integer => "an integer",
                ValueKind.Number => "a number",
                ValueKind.Boolean => "true or false",
                ValueKind.String => key.Pattern is null ? "a string" : key.Pattern == TrainConfig.DevicePattern ? PatternHint(key) : "a string matching " + PatternHint(key),
                ValueKind.Enum => "one of " + string.Join(", ", key.EnumNames),
                ValueKind.StringList => key.ScalarOrList ? "a list of strings or a comma-separated string" : "a list of strings",
                ValueKind.EnumList => (key.ScalarOrList ? "one of, or a list of, " : "a list of ") + string.Join(" | ", key.EnumNames),
                ValueKind.StringMap => "a mapping of strings",
                _ => "a mapping",
            };
            if (key.Range is not { } r) return noun;
            var min = Convert.ToDouble(r.Minimum, CultureInfo.InvariantCulture);
            var max = Convert.ToDouble(r.Maximum, CultureInfo.InvariantCulture);
            var unboundedMax = max >= int.MaxValue;
            if (unboundedMax)
                return $"{noun} {(r.MinimumIsExclusive ? ">" : "≥")} {Fmt(min)}";
            return $"{noun} in {(r.MinimumIsExclusive ? "(" : "[")}{Fmt(min)}, {Fmt(max)}{(r.MaximumIsExclusive ? ")" : "]")}";
        }

        private static string Fmt(double v) => v.ToString("G", CultureInfo.InvariantCulture);
    }
}
