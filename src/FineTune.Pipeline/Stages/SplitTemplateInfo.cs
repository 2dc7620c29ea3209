using System.Text.Json.Nodes;

namespace FineTune.Pipeline;

/// <summary>What train and eval read from the split stage's <c>template.json</c>: special token ids and stop words.</summary>
internal sealed record SplitTemplateInfo(string Template, int? EosTokenId, int? PadTokenId, IReadOnlyList<string> StopWords)
{
    public static SplitTemplateInfo Read(string splitDirectory)
    {
        string path = new SplitOutput(splitDirectory).Template;
        if (!File.Exists(path)) return new SplitTemplateInfo("", null, null, []);
        try
        {
            var doc = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
            var tok = doc["tokenizer"] as JsonObject;
            return new SplitTemplateInfo(
                doc["template"]?.GetValue<string>() ?? "",
                tok?["eos_token_id"]?.GetValue<int?>(),
                tok?["pad_token_id"]?.GetValue<int?>(),
                doc["stop_words"] is JsonArray words ? words.Select(w => w!.GetValue<string>()).ToList() : []);
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or FormatException)
        {
            throw new PipelineUserException($"{path} is not the split stage's template description ({e.Message}); re-run the split stage.", e);
        }
    }

    /// <summary>Padding id for collation: the template's pad, else its EOS, else 0 (padding is never attended to or trained).</summary>
    public int PadOrDefault => PadTokenId ?? EosTokenId ?? 0;
}
