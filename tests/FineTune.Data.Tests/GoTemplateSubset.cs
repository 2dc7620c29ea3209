using System.Text;

namespace FineTune.Data.Tests;

/// <summary>
/// The part of Go's text/template that Ollama TEMPLATEs written by FineTune use, for tests only (NuGet here has no Go
/// template package and the machine no Go): text, <c>{{ expr }}</c>, <c>if / else if / else / end</c>,
/// <c>range $i, $v := expr</c>, <c>$x := expr</c> and <c>$x = expr</c> (an assignment inside range changes the outer
/// variable, as in Go ≥ 1.11), and the functions eq, and, not; fields <c>.A.B</c>, <c>$.A</c>, <c>$v.A</c>, string
/// literals, true/false. Truth as in Go: false, "", 0, nil and empty lists are false. Data: dictionaries and lists.
/// </summary>
internal static class GoTemplateSubset
{
    private abstract record Node;
    private sealed record Text(string Value) : Node;
    private sealed record Output(string Expr) : Node;
    private sealed record Assign(string Name, string Expr, bool Declare) : Node;
    private sealed record If(List<(string? Cond, List<Node> Body)> Branches) : Node;
    private sealed record Range(string? Index, string? Value, string Expr, List<Node> Body) : Node;

    public static string Render(string template, IReadOnlyDictionary<string, object?> data)
    {
        var actions = Lex(template);
        int pos = 0;
        var body = Parse(actions, ref pos, out var end);
        if (end is not null) throw new FormatException($"unexpected {{{{ {end} }}}}");
        var sb = new StringBuilder();
        var vars = new List<Dictionary<string, object?>> { new() { ["$"] = data } };
        Exec(body, data, vars, sb);
        return sb.ToString();
    }

    private static List<(bool IsAction, string Text)> Lex(string s)
    {
        var items = new List<(bool, string)>();
        int i = 0;
        while (i < s.Length)
        {
            int open = s.IndexOf("{{", i, StringComparison.Ordinal);
            if (open < 0) { items.Add((false, s[i..])); break; }
            if (open > i) items.Add((false, s[i..open]));
            // The action ends at the first "}}" outside a string literal.
            int j = open + 2;
            bool inString = false;
            while (j < s.Length - 1 && (inString || s[j] != '}' || s[j + 1] != '}'))
            {
                if (s[j] == '\\' && inString) j++;
                else if (s[j] == '"') inString = !inString;
                j++;
            }
            if (j >= s.Length - 1) throw new FormatException("unclosed action");
            var action = s[(open + 2)..j].Trim();
            if (action.StartsWith('-') || action.EndsWith('-')) throw new FormatException("trim markers are not in this subset");
            items.Add((true, action));
            i = j + 2;
        }
        return items;
    }

    private static List<Node> Parse(List<(bool IsAction, string Text)> items, ref int pos, out string? end)
    {
        var nodes = new List<Node>();
        while (pos < items.Count)
        {
            var (isAction, text) = items[pos++];
            if (!isAction) { nodes.Add(new Text(text)); continue; }
            if (text == "end" || text == "else" || text.StartsWith("else if ", StringComparison.Ordinal)) { end = text; return nodes; }
            if (text.StartsWith("if ", StringComparison.Ordinal))
            {
                var branches = new List<(string?, List<Node>)>();
                string? cond = text[3..];
                while (true)
                {
                    var b = Parse(items, ref pos, out var stop);
                    branches.Add((cond, b));
                    if (stop == "end") break;
                    if (stop == "else") cond = null;
                    else if (stop is not null && stop.StartsWith("else if ", StringComparison.Ordinal)) cond = stop[8..];
                    else throw new FormatException("if without end");
                }
                nodes.Add(new If(branches));
            }
            else if (text.StartsWith("range ", StringComparison.Ordinal))
            {
                var spec = text[6..];
                string? index = null, value = null;
                int decl = spec.IndexOf(":=", StringComparison.Ordinal);
                if (decl >= 0)
                {
                    var names = spec[..decl].Split(',', StringSplitOptions.TrimEntries);
                    (index, value) = names.Length == 2 ? (names[0], names[1]) : (null, names[0]);
                    spec = spec[(decl + 2)..].Trim();
                }
                var b = Parse(items, ref pos, out var stop);
                if (stop != "end") throw new FormatException("range without end");
                nodes.Add(new Range(index, value, spec, b));
            }
            else if (text.StartsWith('$') && text.Contains(":=", StringComparison.Ordinal))
                nodes.Add(new Assign(text[..text.IndexOf(":=", StringComparison.Ordinal)].Trim(), text[(text.IndexOf(":=", StringComparison.Ordinal) + 2)..].Trim(), true));
            else if (text.StartsWith('$') && text.IndexOf(" = ", StringComparison.Ordinal) is var eq and > 0)
                nodes.Add(new Assign(text[..eq].Trim(), text[(eq + 3)..].Trim(), false));
            else
                nodes.Add(new Output(text));
        }
        end = null;
        return nodes;
    }

    private static void Exec(List<Node> nodes, object? dot, List<Dictionary<string, object?>> vars, StringBuilder sb)
    {
        foreach (var node in nodes)
            switch (node)
            {
                case Text t: sb.Append(t.Value); break;
                case Output o: sb.Append(Print(Eval(o.Expr, dot, vars))); break;
                case Assign a when a.Declare: vars[^1][a.Name] = Eval(a.Expr, dot, vars); break;
                case Assign a:
                    var scope = vars.LastOrDefault(v => v.ContainsKey(a.Name)) ?? throw new FormatException($"undefined variable {a.Name}");
                    scope[a.Name] = Eval(a.Expr, dot, vars);
                    break;
                case If i:
                    foreach (var (cond, body) in i.Branches)
                        if (cond is null || Truth(Eval(cond, dot, vars)))
                        {
                            vars.Add([]);
                            Exec(body, dot, vars, sb);
                            vars.RemoveAt(vars.Count - 1);
                            break;
                        }
                    break;
                case Range r:
                    var list = Eval(r.Expr, dot, vars) as System.Collections.IList ?? Array.Empty<object?>();
                    for (int k = 0; k < list.Count; k++)
                    {
                        var scopeVars = new Dictionary<string, object?>();
                        if (r.Index is not null) scopeVars[r.Index] = k;
                        if (r.Value is not null) scopeVars[r.Value] = list[k];
                        vars.Add(scopeVars);
                        Exec(r.Body, list[k], vars, sb);
                        vars.RemoveAt(vars.Count - 1);
                    }
                    break;
            }
    }

    private static string Print(object? v) => v switch { null => "<no value>", bool b => b ? "true" : "false", _ => v.ToString()! };

    private static bool Truth(object? v) => v switch
    {
        null => false,
        bool b => b,
        string s => s.Length > 0,
        int n => n != 0,
        System.Collections.ICollection c => c.Count > 0,
        _ => true,
    };

    private static object? Eval(string expr, object? dot, List<Dictionary<string, object?>> vars)
    {
        var tokens = Tokens(expr);
        int pos = 0;
        var value = Command(tokens, ref pos, dot, vars);
        if (pos != tokens.Count) throw new FormatException($"cannot parse \"{expr}\"");
        return value;
    }

    private static object? Command(List<string> tokens, ref int pos, object? dot, List<Dictionary<string, object?>> vars)
    {
        var head = tokens[pos];
        if (head is "eq" or "and" or "not")
        {
            pos++;
            var args = new List<object?>();
            while (pos < tokens.Count && tokens[pos] != ")")
                args.Add(Operand(tokens, ref pos, dot, vars));
            return head switch
            {
                "eq" => Equals(args[0], args[1]),
                "and" => args.All(Truth) ? args[^1] : args.First(a => !Truth(a)),
                _ => !Truth(args[0]),
            };
        }
        return Operand(tokens, ref pos, dot, vars);
    }

    private static object? Operand(List<string> tokens, ref int pos, object? dot, List<Dictionary<string, object?>> vars)
    {
        var t = tokens[pos++];
        if (t == "(")
        {
            var v = Command(tokens, ref pos, dot, vars);
            if (tokens[pos++] != ")") throw new FormatException("missing )");
            return v;
        }
        if (t.StartsWith('"')) return System.Text.Json.JsonSerializer.Deserialize<string>(t);
        if (t is "true" or "false") return t == "true";
        object? root;
        string path;
        if (t.StartsWith('.')) { root = dot; path = t; }
        else
        {
            int dotAt = t.IndexOf('.', StringComparison.Ordinal);
            var name = dotAt < 0 ? t : t[..dotAt];
            var scope = vars.LastOrDefault(v => v.ContainsKey(name)) ?? throw new FormatException($"undefined variable {name}");
            root = scope[name];
            path = dotAt < 0 ? "" : t[dotAt..];
        }
        foreach (var field in path.Split('.', StringSplitOptions.RemoveEmptyEntries))
            root = root is IReadOnlyDictionary<string, object?> d ? d.GetValueOrDefault(field) : throw new FormatException($"no field {field}");
        return root;
    }

    private static List<string> Tokens(string expr)
    {
        var tokens = new List<string>();
        int i = 0;
        while (i < expr.Length)
        {
            char c = expr[i];
            if (char.IsWhiteSpace(c)) { i++; continue; }
            if (c is '(' or ')') { tokens.Add(c.ToString()); i++; continue; }
            int start = i;
            if (c == '"')
            {
                i++;
                while (expr[i] != '"') i += expr[i] == '\\' ? 2 : 1;
                i++;
            }
            else
                while (i < expr.Length && !char.IsWhiteSpace(expr[i]) && expr[i] is not '(' and not ')') i++;
            tokens.Add(expr[start..i]);
        }
        return tokens;
    }
}
