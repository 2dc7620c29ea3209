using System.Text.Json;
using FineTune.Data.Registry;

namespace FineTune.Data.Reading;

/// <summary>What the records will train: supervised answers (sft) or plain text (pt, the prompt column only).</summary>
public enum DatasetPurpose { Sft, Pretrain }

public sealed record DatasetLoadOptions
{
    public DatasetPurpose Purpose { get; init; } = DatasetPurpose.Sft;
    /// <summary>Drop invalid records and count them instead of failing.</summary>
    public bool SkipInvalid { get; init; }
    /// <summary>Values for <c>{{key}}</c> placeholders in system prompts and message texts (e.g. name, author).</summary>
    public IReadOnlyDictionary<string, string> Placeholders { get; init; } = new Dictionary<string, string>();
    /// <summary>Read at most this many records per dataset, the first ones (LLaMA-Factory's max_samples).</summary>
    public int? MaxSamples { get; init; }
    /// <summary>Seed of the sample that <c>num_samples</c> takes.</summary>
    public int Seed { get; init; } = 42;
}

public sealed record LoadedDataset(string Name, IReadOnlyList<string> Files, IReadOnlyList<Conversation> Conversations,
    int RecordsRead, int Dropped, IReadOnlyList<DataProblem> DroppedProblems)
{
    /// <summary>Records kept but worth a look (a pair whose chosen and rejected answers are the same): the first 20.</summary>
    public IReadOnlyList<DataProblem> Warnings { get; init; } = [];
    public int WarningCount { get; init; }
}

/// <summary>
/// Reads a registered dataset, checks every record against its entry (columns, role order, non-empty answers),
/// and converts it to <see cref="Conversation"/>s — LLaMA-Factory's alpaca/sharegpt converters, but strict:
/// a record LLaMA-Factory would silently skip is a located error here (or a counted drop with skip_invalid).
/// </summary>
public static class DatasetLoader
{
    public static LoadedDataset Load(DatasetRegistry registry, string name, DatasetLoadOptions options)
    {
        var entry = registry.Get(name);
        if (options.Purpose == DatasetPurpose.Pretrain && entry.Formatting == DatasetFormatting.ShareGpt)
            throw new DatasetException($"{registry.RegistryPath}: dataset '{name}' is sharegpt, which pre-training (stage pt) cannot read; register the text as alpaca with columns: {{\"prompt\": \"text\"}}.");
        var files = registry.ResolveFiles(entry);
        var problems = new List<DataProblem>();
        var totalProblems = 0;
        var warnings = new List<DataProblem>();
        var totalWarnings = 0;
        var conversations = new List<Conversation>();
        var read = 0;
        var seen = 0;
        foreach (var file in files)
        {
            var rf = RecordReader.Read(file);
            foreach (var p in rf.Problems) Note(p);
            if (rf.Unreadable)
                throw new DatasetValidationException(name, problems.Take(DatasetValidationException.MaxListed).ToList(), totalProblems);
            read += rf.Records.Count + rf.Problems.Count;
            foreach (var record in rf.Records)
            {
                if (options.MaxSamples is { } max && seen++ >= max) break;
                var before = totalProblems;
                var warningsBefore = totalWarnings;
                var conversation = Convert(entry, record, options, Note, Warn);
                if (conversation is not null && totalProblems == before) conversations.Add(conversation);
                else if (totalWarnings > warningsBefore) Unwarn(warningsBefore); // a dropped record warns of nothing
            }
        }
        if (totalProblems > 0 && !options.SkipInvalid)
            throw new DatasetValidationException(name, problems, totalProblems);
        if (conversations.Count == 0)
            throw new DatasetException($"Dataset '{name}' ({string.Join(", ", files)}) holds no valid records" + (totalProblems > 0 ? $" ({totalProblems} dropped as invalid)." : "."));
        if (entry.NumSamples is { } n) conversations = Sample(conversations, n, options.Seed);
        return new LoadedDataset(name, files, conversations, read, totalProblems, problems) { Warnings = warnings, WarningCount = totalWarnings };

        void Note(DataProblem p)
        {
            totalProblems++;
            if (problems.Count < DatasetValidationException.MaxListed) problems.Add(p);
        }

        void Warn(DataProblem p)
        {
            totalWarnings++;
            if (warnings.Count < DatasetValidationException.MaxListed) warnings.Add(p);
        }

        void Unwarn(int count)
        {
            totalWarnings = count;
            if (warnings.Count > count) warnings.RemoveRange(count, warnings.Count - count);
        }
    }

    /// <summary>num_samples: a seeded sample without replacement; more than the file holds repeats it whole, then samples the rest.</summary>
    private static List<Conversation> Sample(List<Conversation> all, int n, int seed)
    {
        var rng = new SeededRandom(seed);
        var result = new List<Conversation>(n);
        while (n - result.Count >= all.Count) result.AddRange(all);
        var perm = rng.Permutation(all.Count);
        for (var i = 0; result.Count < n; i++) result.Add(all[perm[i]]);
        return result;
    }

    private static Conversation? Convert(DatasetEntry entry, RawRecord record, DatasetLoadOptions options, Action<DataProblem> problem, Action<DataProblem> warning)
    {
        void Bad(string field, string message) => problem(new DataProblem(record.File, record.Number, record.Line, field, message));
        if (record.Value.ValueKind != JsonValueKind.Object)
        {
            Bad("", $"expected a JSON object, found {Kind(record.Value)}");
            return null;
        }
        var fill = options.Placeholders.Count == 0 ? (Func<string, string>)(s => s) : s => Fill(s, options.Placeholders);
        var system = entry.Columns.System is { } sc ? OptionalText(record.Value, sc, Bad) ?? "" : "";
        var tools = entry.Columns.Tools is { } tc ? ToolsText(record.Value, tc, Bad) : "";
        var conversation = entry.Formatting == DatasetFormatting.Alpaca
            ? ConvertAlpaca(entry, record, options, fill, system, tools, Bad)
            : ConvertShareGpt(entry, record, fill, system, tools, Bad);
        if (conversation is null || options.Purpose == DatasetPurpose.Pretrain) return conversation;
        if (entry.Columns.KtoTag is { } kc)
            return KtoTag(record, kc, Bad) is { } tag ? conversation with { KtoTag = tag } : null;
        if (conversation is { Chosen: { } chosen, Rejected: { } rejected } && chosen == rejected)
        {
            // Kept, as LLaMA-Factory and TRL keep it: such a pair has a DPO margin of exactly 0 (its gradient is 0),
            // so it trains nothing and counts as a miss in rewards/accuracies. Usually a tie the data should not hold.
            var (c, r) = entry.Formatting == DatasetFormatting.Alpaca ? (entry.Columns.Chosen!, entry.Columns.Rejected!)
                : ($"{entry.Columns.Chosen}.{entry.Tags.ContentTag}", $"{entry.Columns.Rejected}.{entry.Tags.ContentTag}");
            warning(new DataProblem(record.File, record.Number, record.Line, r,
                $"the rejected answer is the same as the chosen one ('{c}'); the pair trains nothing (its DPO margin is 0)"));
        }
        return conversation;
    }

    /// <summary>
    /// The kto_tag column: JSON true (the completion is desirable) or false, as LLaMA-Factory reads it; a CSV cell
    /// (always text) may say true/false in any case, as pandas reads CSV booleans.
    /// </summary>
    private static bool? KtoTag(RawRecord record, string column, Action<string, string> bad)
    {
        if (!record.Value.TryGetProperty(column, out var v) || v.ValueKind == JsonValueKind.Null)
        { bad(column, $"missing column '{column}' (the kto_tag): expected true (a desirable answer) or false (an undesirable one)"); return null; }
        if (v.ValueKind is JsonValueKind.True or JsonValueKind.False) return v.GetBoolean();
        if (v.ValueKind == JsonValueKind.String && record.File.EndsWith(".csv", StringComparison.OrdinalIgnoreCase) &&
            bool.TryParse(v.GetString(), out var cell)) return cell;
        bad(column, $"expected true (a desirable answer) or false (an undesirable one), found {Kind(v)}" +
                    (v.ValueKind is JsonValueKind.String or JsonValueKind.Number ? $" {v.GetRawText()}" : ""));
        return null;
    }

    private static Conversation? ConvertAlpaca(DatasetEntry entry, RawRecord record, DatasetLoadOptions options, Func<string, string> fill,
        string system, string tools, Action<string, string> bad)
    {
        var obj = record.Value;
        var c = entry.Columns;
        var messages = new List<ChatMessage>();
        var ok = true;
        if (c.History is { } hc && obj.TryGetProperty(hc, out var history) && history.ValueKind != JsonValueKind.Null)
        {
            if (history.ValueKind != JsonValueKind.Array) { bad(hc, $"expected an array of [prompt, response] pairs, found {Kind(history)}"); ok = false; }
            else
            {
                var i = 0;
                foreach (var pair in history.EnumerateArray())
                {
                    if (pair.ValueKind != JsonValueKind.Array || pair.GetArrayLength() != 2 ||
                        pair[0].ValueKind != JsonValueKind.String || pair[1].ValueKind != JsonValueKind.String)
                    { bad($"{hc}[{i}]", "expected a pair of strings [prompt, response]"); ok = false; }
                    else
                    {
                        messages.Add(new ChatMessage(ChatRole.User, fill(pair[0].GetString()!)));
                        messages.Add(new ChatMessage(ChatRole.Assistant, fill(pair[1].GetString()!)));
                    }
                    i++;
                }
            }
        }
        string? prompt = null, query = null;
        if (c.Prompt is { } pc)
        {
            if (!obj.TryGetProperty(pc, out _)) { bad(pc, $"missing column '{pc}' (the prompt)"); ok = false; }
            else prompt = OptionalText(obj, pc, bad);
        }
        if (c.Query is { } qc) query = OptionalText(obj, qc, bad);
        // LLaMA-Factory joins the two as "prompt\nquery", skipping empty parts.
        var user = string.Join("\n", new[] { prompt, query }.Where(s => !string.IsNullOrEmpty(s)));
        if (ok && user.Length == 0 && c.Prompt is not null && obj.TryGetProperty(c.Prompt, out _))
        { bad(c.Prompt, $"empty prompt: expected text in '{c.Prompt}'" + (c.Query is null ? "" : $" or '{c.Query}'")); ok = false; }
        messages.Add(new ChatMessage(ChatRole.User, fill(user)));

        if (options.Purpose == DatasetPurpose.Pretrain)
            return ok ? new Conversation(Source(entry, record), fill(system), tools, [messages[^1]]) : null;

        if (entry.Ranking)
        {
            var chosen = RequiredText(obj, c.Chosen, "chosen answer", bad);
            var rejected = RequiredText(obj, c.Rejected, "rejected answer", bad);
            if (!ok || chosen is null || rejected is null) return null;
            return new Conversation(Source(entry, record), fill(system), tools, messages,
                new ChatMessage(ChatRole.Assistant, fill(chosen)), new ChatMessage(ChatRole.Assistant, fill(rejected)));
        }
        var response = RequiredText(obj, c.Response, "response", bad);
        if (!ok || response is null) return null;
        messages.Add(new ChatMessage(ChatRole.Assistant, fill(response)));
        return new Conversation(Source(entry, record), fill(system), tools, messages);
    }

    private static Conversation? ConvertShareGpt(DatasetEntry entry, RawRecord record, Func<string, string> fill,
        string system, string tools, Action<string, string> bad)
    {
        var t = entry.Tags;
        var mc = entry.Columns.Messages ?? "conversations";
        if (!record.Value.TryGetProperty(mc, out var list)) { bad(mc, $"missing column '{mc}' (the messages)"); return null; }
        if (list.ValueKind != JsonValueKind.Array) { bad(mc, $"expected an array of messages, found {Kind(list)}"); return null; }
        var items = list.EnumerateArray().ToList();
        if (items.Count == 0)
        {
            bad(mc, entry.Ranking ? "empty conversation: expected at least one prompt, answered by chosen/rejected"
                : "empty conversation: expected at least one user and one assistant message");
            return null;
        }

        var roles = new Dictionary<string, ChatRole>(StringComparer.Ordinal)
        {
            [t.UserTag] = ChatRole.User, [t.AssistantTag] = ChatRole.Assistant,
            [t.ObservationTag] = ChatRole.Observation, [t.FunctionTag] = ChatRole.Function,
        };
        var start = 0;
        if (t.SystemTag.Length > 0 && items[0].ValueKind == JsonValueKind.Object && items[0].TryGetProperty(t.RoleTag, out var r0) &&
            r0.ValueKind == JsonValueKind.String && r0.GetString() == t.SystemTag)
        {
            // A leading system message overrides the system column, as in LLaMA-Factory.
            system = items[0].TryGetProperty(t.ContentTag, out var sv) && sv.ValueKind == JsonValueKind.String ? sv.GetString()! : "";
            start = 1;
        }
        var messages = new List<ChatMessage>();
        var ok = true;
        for (var i = start; i < items.Count; i++)
        {
            var field = $"{mc}[{i}]";
            var m = items[i];
            if (m.ValueKind != JsonValueKind.Object) { bad(field, $"expected a message object, found {Kind(m)}"); ok = false; continue; }
            if (!m.TryGetProperty(t.RoleTag, out var roleValue) || roleValue.ValueKind != JsonValueKind.String)
            { bad($"{field}.{t.RoleTag}", $"missing role: expected key '{t.RoleTag}' with one of {RoleList(t)}"); ok = false; continue; }
            if (!m.TryGetProperty(t.ContentTag, out var content) || content.ValueKind != JsonValueKind.String)
            { bad($"{field}.{t.ContentTag}", $"missing content: expected key '{t.ContentTag}' with a string"); ok = false; continue; }
            var roleText = roleValue.GetString()!;
            if (!roles.TryGetValue(roleText, out var role))
            {
                bad($"{field}.{t.RoleTag}", roleText == t.SystemTag
                    ? "a system message may only come first"
                    : $"unknown role '{roleText}': expected one of {RoleList(t)}");
                ok = false;
                continue;
            }
            var turn = i - start;
            var expectPrompt = turn % 2 == 0;
            var isPrompt = role is ChatRole.User or ChatRole.Observation;
            if (expectPrompt != isPrompt)
            {
                bad($"{field}.{t.RoleTag}", expectPrompt
                    ? $"wrong role order: '{roleText}' where a prompt ('{t.UserTag}' or '{t.ObservationTag}') must come (turns alternate prompt, answer)"
                    : $"wrong role order: '{roleText}' where an answer ('{t.AssistantTag}' or '{t.FunctionTag}') must come (turns alternate prompt, answer)");
                ok = false;
                continue;
            }
            if (role == ChatRole.Function && Templates.ToolText.CheckCalls(content.GetString()!) is { } callProblem)
            { bad($"{field}.{t.ContentTag}", callProblem); ok = false; continue; }
            messages.Add(new ChatMessage(role, fill(content.GetString()!)));
        }
        if (!ok) return null;
        var count = items.Count - start;
        if (entry.Ranking)
        {
            if (count % 2 == 0)
            {
                bad(mc, count == 0 ? "no prompt: a ranking conversation ends with a prompt, answered by chosen/rejected"
                    : $"{count} turns: a ranking conversation ends with a prompt ('{t.UserTag}' or '{t.ObservationTag}'), answered by chosen/rejected");
                return null;
            }
            var chosen = RankedMessage(record.Value, entry.Columns.Chosen!, "chosen", t, bad);
            var rejected = RankedMessage(record.Value, entry.Columns.Rejected!, "rejected", t, bad);
            if (chosen is null || rejected is null) return null;
            return new Conversation(Source(entry, record), fill(system), tools, messages, chosen with { Content = fill(chosen.Content) }, rejected with { Content = fill(rejected.Content) });
        }
        if (count % 2 != 0)
        {
            bad(mc, $"{count} turns: the conversation must end with an answer ('{t.AssistantTag}' or '{t.FunctionTag}')");
            return null;
        }
        if (string.IsNullOrWhiteSpace(messages[^1].Content))
        {
            bad($"{mc}[{items.Count - 1}].{t.ContentTag}", "empty response: the last answer has no text");
            return null;
        }
        return new Conversation(Source(entry, record), fill(system), tools, messages);
    }

    /// <summary>A sharegpt chosen/rejected answer: one message object whose role is an answer role, with text.</summary>
    private static ChatMessage? RankedMessage(JsonElement obj, string column, string what, DatasetTags t, Action<string, string> bad)
    {
        var shape = $"a message object {{\"{t.RoleTag}\": \"{t.AssistantTag}\", \"{t.ContentTag}\": ...}}";
        if (!obj.TryGetProperty(column, out var v) || v.ValueKind == JsonValueKind.Null)
        { bad(column, $"missing column '{column}' (the {what} answer): expected {shape}"); return null; }
        if (v.ValueKind != JsonValueKind.Object) { bad(column, $"expected {shape} (the {what} answer), found {Kind(v)}"); return null; }
        if (!v.TryGetProperty(t.RoleTag, out var role) || role.ValueKind != JsonValueKind.String)
        { bad($"{column}.{t.RoleTag}", $"missing role: expected key '{t.RoleTag}' with '{t.AssistantTag}' or '{t.FunctionTag}'"); return null; }
        var roleText = role.GetString()!;
        if (roleText != t.AssistantTag && roleText != t.FunctionTag)
        { bad($"{column}.{t.RoleTag}", $"the {what} answer has role '{roleText}', expected an answer ('{t.AssistantTag}' or '{t.FunctionTag}')"); return null; }
        if (!v.TryGetProperty(t.ContentTag, out var content) || content.ValueKind != JsonValueKind.String)
        { bad($"{column}.{t.ContentTag}", $"missing content: expected key '{t.ContentTag}' with a string"); return null; }
        var text = content.GetString()!;
        if (text.Trim().Length == 0) { bad($"{column}.{t.ContentTag}", $"empty {what} answer"); return null; }
        var answerRole = roleText == t.AssistantTag ? ChatRole.Assistant : ChatRole.Function;
        if (answerRole == ChatRole.Function && Templates.ToolText.CheckCalls(text) is { } callProblem)
        { bad($"{column}.{t.ContentTag}", callProblem); return null; }
        return new ChatMessage(answerRole, text);
    }

    private static string RoleList(DatasetTags t) => $"'{t.UserTag}', '{t.AssistantTag}', '{t.ObservationTag}', '{t.FunctionTag}'";

    private static string? RequiredText(JsonElement obj, string? column, string what, Action<string, string> bad)
    {
        if (column is null) { bad(what, $"no {what} column configured"); return null; }
        if (!obj.TryGetProperty(column, out var v) || v.ValueKind == JsonValueKind.Null) { bad(column, $"missing column '{column}' (the {what})"); return null; }
        if (v.ValueKind != JsonValueKind.String) { bad(column, $"expected a string, found {Kind(v)}"); return null; }
        var s = v.GetString()!;
        if (s.Trim().Length == 0) { bad(column, $"empty {what}"); return null; }
        return s;
    }

    private static string? OptionalText(JsonElement obj, string column, Action<string, string> bad)
    {
        if (!obj.TryGetProperty(column, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.String) return v.GetString();
        bad(column, $"expected a string, found {Kind(v)}");
        return null;
    }

    /// <summary>Tools may be written as a JSON string or as the JSON itself; either way the template gets JSON text.</summary>
    private static string ToolsText(JsonElement obj, string column, Action<string, string> bad)
    {
        if (!obj.TryGetProperty(column, out var v) || v.ValueKind == JsonValueKind.Null) return "";
        if (v.ValueKind is JsonValueKind.Array or JsonValueKind.Object) return v.GetRawText();
        if (v.ValueKind != JsonValueKind.String) { bad(column, $"expected a JSON string describing tools, found {Kind(v)}"); return ""; }
        var s = v.GetString()!;
        if (s.Trim().Length == 0) return "";
        try { using var _ = JsonDocument.Parse(s); }
        catch (JsonException e) { bad(column, $"tools must be valid JSON (a list of function descriptions): {DatasetRegistry.FirstSentence(e.Message)}"); }
        return s;
    }

    private static string Source(DatasetEntry entry, RawRecord record) => $"{entry.Name}:{Path.GetFileName(record.File)}#{record.Number}";

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object", JsonValueKind.Array => "an array", JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number", JsonValueKind.True or JsonValueKind.False => "a boolean", _ => "null",
    };

    public static string Fill(string text, IReadOnlyDictionary<string, string> placeholders)
    {
        if (!text.Contains("{{", StringComparison.Ordinal)) return text;
        foreach (var (key, value) in placeholders) text = text.Replace("{{" + key + "}}", value, StringComparison.Ordinal);
        return text;
    }
}
