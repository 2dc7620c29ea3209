using System.Text;
using System.Text.Json;

namespace FineTune.Data;

/// <summary>
/// The register stage's normalised output: one conversation per line,
/// <c>{"source", "system", "tools", "messages": [{"role", "content"}], "chosen"?, "rejected"?, "kto_tag"?}</c>
/// with roles user/assistant/observation/function.
/// </summary>
public static class ConversationFile
{
    public static void Write(string path, IEnumerable<Conversation> conversations)
    {
        var temp = path + ".tmp";
        using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write))
        using (var text = new StreamWriter(stream, new UTF8Encoding(false)))
        {
            foreach (var c in conversations)
            {
                text.Write(Serialize(c));
                text.Write('\n');
            }
        }
        File.Move(temp, path, overwrite: true);
    }

    public static string Serialize(Conversation c)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteString("source", c.Source);
            w.WriteString("system", c.System);
            w.WriteString("tools", c.Tools);
            w.WriteStartArray("messages");
            foreach (var m in c.Messages) WriteMessage(w, m);
            w.WriteEndArray();
            if (c.Chosen is not null) { w.WritePropertyName("chosen"); WriteMessage(w, c.Chosen); }
            if (c.Rejected is not null) { w.WritePropertyName("rejected"); WriteMessage(w, c.Rejected); }
            // Written only for KTO data, so that supervised files keep their bytes (and register its output hash).
            if (c.KtoTag is { } tag) w.WriteBoolean("kto_tag", tag);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    private static void WriteMessage(Utf8JsonWriter w, ChatMessage m)
    {
        w.WriteStartObject();
        w.WriteString("role", RoleName(m.Role));
        w.WriteString("content", m.Content);
        w.WriteEndObject();
    }

    public static string RoleName(ChatRole role) => role switch
    {
        ChatRole.User => "user", ChatRole.Assistant => "assistant", ChatRole.Observation => "observation", _ => "function",
    };

    public static IReadOnlyList<Conversation> Read(string path)
    {
        var result = new List<Conversation>();
        var lineNumber = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNumber++;
            if (line.Length == 0) continue;
            try
            {
                using var doc = JsonDocument.Parse(line);
                var r = doc.RootElement;
                result.Add(new Conversation(r.GetProperty("source").GetString()!, r.GetProperty("system").GetString()!, r.GetProperty("tools").GetString()!,
                    r.GetProperty("messages").EnumerateArray().Select(ReadMessage).ToList(),
                    r.TryGetProperty("chosen", out var ch) ? ReadMessage(ch) : null,
                    r.TryGetProperty("rejected", out var rj) ? ReadMessage(rj) : null,
                    r.TryGetProperty("kto_tag", out var tag) ? tag.GetBoolean() : null));
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
            {
                throw new DatasetException($"{path}: line {lineNumber}: not a FineTune conversation record ({e.Message}). Re-run the register stage.", e);
            }
        }
        return result;
    }

    private static ChatMessage ReadMessage(JsonElement m) => new(m.GetProperty("role").GetString() switch
    {
        "user" => ChatRole.User, "assistant" => ChatRole.Assistant, "observation" => ChatRole.Observation,
        "function" => ChatRole.Function, var other => throw new InvalidOperationException($"unknown role '{other}'"),
    }, m.GetProperty("content").GetString()!);
}
