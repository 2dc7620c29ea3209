using System.Text;
using System.Text.Json;

namespace FineTune.Data.Templates;

/// <summary>How a template describes tools in the system prompt and writes function calls (LLaMA-Factory's tool_format).</summary>
public enum ToolFormat { Default, Qwen, Llama3, Mistral }

/// <summary>One function call: name and arguments as JSON text.</summary>
public sealed record FunctionCall(string Name, string Arguments);

public static class ToolText
{
    /// <summary>Date written into Llama 3 tool prompts; fixed (Llama 3.1's own default) so that renders are reproducible.</summary>
    public const string Llama3ToolDate = "26 Jul 2024";

    /// <summary>The text appended to the system prompt for a tools description (JSON list of functions).</summary>
    public static string DescribeTools(ToolFormat format, string toolsJson)
    {
        using var doc = JsonDocument.Parse(toolsJson);
        var tools = doc.RootElement.ValueKind == JsonValueKind.Array ? doc.RootElement.EnumerateArray().ToList() : [doc.RootElement];
        if (tools.Count == 0) return "";
        var sb = new StringBuilder();
        switch (format)
        {
            case ToolFormat.Qwen:
                foreach (var tool in tools) sb.Append('\n').Append(Wrapped(tool));
                return "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
                       "You are provided with function signatures within <tools></tools> XML tags:\n<tools>" + sb +
                       "\n</tools>\n\nFor each function call, return a json object with function name and arguments within " +
                       "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>";
            case ToolFormat.Llama3:
                foreach (var tool in tools) sb.Append(Wrapped(tool, 4)).Append("\n\n");
                return $"Cutting Knowledge Date: December 2023\nToday Date: {Llama3ToolDate}\n\n" +
                       "You have access to the following functions. To call a function, please respond with JSON for a function call. " +
                       "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}. " +
                       "Do not use variables.\n\n" + sb;
            case ToolFormat.Mistral:
                return "[AVAILABLE_TOOLS] [" + string.Join(", ", tools.Select(t => Wrapped(t))) + "][/AVAILABLE_TOOLS]";
            default:
            {
                var names = new List<string>();
                foreach (var raw in tools)
                {
                    var tool = Unwrapped(raw);
                    var args = new StringBuilder();
                    if (tool.TryGetProperty("parameters", out var parameters) && parameters.TryGetProperty("properties", out var props))
                    {
                        var required = parameters.TryGetProperty("required", out var req) ? req.EnumerateArray().Select(r => r.GetString()).ToHashSet() : [];
                        foreach (var p in props.EnumerateObject())
                        {
                            var type = p.Value.TryGetProperty("type", out var ty) ? ty.ToString() : "";
                            var desc = p.Value.TryGetProperty("description", out var de) ? de.ToString() : "";
                            var en = p.Value.TryGetProperty("enum", out var e) && e.GetArrayLength() > 0
                                ? $", should be one of [{string.Join(", ", e.EnumerateArray().Select(x => x.ToString()))}]" : "";
                            var items = p.Value.TryGetProperty("items", out var it) && it.ValueKind == JsonValueKind.Object && it.EnumerateObject().Any()
                                ? $", where each item should be {(it.TryGetProperty("type", out var itt) ? itt.ToString() : "")}" : "";
                            args.Append($"  - {p.Name} ({type}{(required.Contains(p.Name) ? ", required" : "")}): {desc}{en}{items}\n");
                        }
                    }
                    var name = tool.GetProperty("name").GetString()!;
                    names.Add(name);
                    var description = tool.TryGetProperty("description", out var d) ? d.ToString() : "";
                    sb.Append($"> Tool Name: {name}\nTool Description: {description}\nTool Args:\n{args}\n");
                }
                return $"You have access to the following tools:\n{sb}Use the following format if using a tool:\n```\n" +
                       $"Action: tool name (one of [{string.Join(", ", names)}])\n" +
                       "Action Input: the input to the tool, in a JSON format representing the kwargs (e.g. ```{\"input\": \"hello world\", \"num_beams\": 5}```)\n```\n";
            }
        }
    }

    /// <summary>Parses a function message: {"name", "arguments"} or a list of them.</summary>
    public static IReadOnlyList<FunctionCall> ParseCalls(string content)
    {
        using var doc = JsonDocument.Parse(content);
        var calls = doc.RootElement.ValueKind == JsonValueKind.Array ? doc.RootElement.EnumerateArray().ToList() : [doc.RootElement];
        return calls.Select(c => new FunctionCall(c.GetProperty("name").GetString()!, PythonJson.Dumps(c.GetProperty("arguments")))).ToList();
    }

    /// <summary>Checks a function message; null when valid, else what is wrong.</summary>
    public static string? CheckCalls(string content)
    {
        try
        {
            using var doc = JsonDocument.Parse(content);
            var calls = doc.RootElement.ValueKind == JsonValueKind.Array ? doc.RootElement.EnumerateArray().ToList() : [doc.RootElement];
            foreach (var c in calls)
                if (c.ValueKind != JsonValueKind.Object || !c.TryGetProperty("name", out var n) || n.ValueKind != JsonValueKind.String || !c.TryGetProperty("arguments", out _))
                    return "a function call must be JSON {\"name\": ..., \"arguments\": {...}} or a list of them";
            return null;
        }
        catch (JsonException e)
        {
            return "a function call must be JSON: " + Registry.DatasetRegistry.FirstSentence(e.Message);
        }
    }

    public static string FormatCalls(ToolFormat format, IReadOnlyList<FunctionCall> calls)
    {
        switch (format)
        {
            case ToolFormat.Qwen:
                return string.Join("\n", calls.Select(c => $"<tool_call>\n{{\"name\": {PythonJson.Quote(c.Name)}, \"arguments\": {c.Arguments}}}\n</tool_call>"));
            case ToolFormat.Llama3:
            {
                var objects = calls.Select(c => $"{{\"name\": {PythonJson.Quote(c.Name)}, \"parameters\": {c.Arguments}}}").ToList();
                return objects.Count == 1 ? objects[0] : "[" + string.Join(", ", objects) + "]";
            }
            case ToolFormat.Mistral:
                return "[" + string.Join(", ", calls.Select(c => $"{{\"name\": {PythonJson.Quote(c.Name)}, \"arguments\": {c.Arguments}}}")) + "]";
            default:
                return string.Join("\n", calls.Select(c => $"Action: {c.Name}\nAction Input: {c.Arguments}"));
        }
    }

    private static string Wrapped(JsonElement tool, int? indent = null)
    {
        var dumped = PythonJson.Dumps(tool, indent);
        if (tool.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "function") return dumped;
        // {"type": "function", "function": tool}, re-indented as one document.
        using var doc = JsonDocument.Parse("{\"type\":\"function\",\"function\":" + tool.GetRawText() + "}");
        return PythonJson.Dumps(doc.RootElement, indent);
    }

    private static JsonElement Unwrapped(JsonElement tool) =>
        tool.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "function" && tool.TryGetProperty("function", out var f) ? f : tool;
}
