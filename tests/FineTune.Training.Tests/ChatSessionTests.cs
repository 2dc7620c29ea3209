using FineTune.Data.Templates;
using FineTune.Engine.Cpu;
using FineTune.Models;
using FineTune.Tokenizers;
using FineTune.Training.Chat;

namespace FineTune.Training.Tests;

public sealed class ChatSessionTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "ft-chat-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private (ChatSession Session, CausalLM Model, Tokenizer Tokenizer) Create(int maxNew = 8)
    {
        ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 32, IntermediateSize = 48, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8, Seed = 5 }, _dir);
        var tokenizer = Tokenizer.FromDirectory(_dir);
        var model = CausalLM.Load(_dir, new CpuBackend(2), TrainingSetup.Inference);
        var session = new ChatSession(model, tokenizer, ChatTemplate.Get("qwen3", enableThinking: false), "You are a test.", new GenerationOptions { MaxNewTokens = maxNew });
        return (session, model, tokenizer);
    }

    [Fact]
    public void PromptIsTheTemplateRenderingEndingWithTheAssistantPrefix()
    {
        var (session, model, tokenizer) = Create();
        using var _ = model;
        string text = tokenizer.Decode(session.PromptIds("Hi"));
        Assert.Equal("<|im_start|>system\nYou are a test.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", text);
    }

    [Fact]
    public void ReplyStreamsTheWholeTextAndEntersTheHistory()
    {
        var (session, model, tokenizer) = Create();
        using var __ = model;
        var streamed = new System.Text.StringBuilder();
        string reply = session.Reply("Hello", s => streamed.Append(s));
        Assert.Equal(reply, streamed.ToString());
        Assert.Equal(2, session.History.Count);
        Assert.Equal(reply, session.History[1].Content);
        string next = tokenizer.Decode(session.PromptIds("Again"));
        Assert.StartsWith("<|im_start|>system\nYou are a test.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", next);
        Assert.EndsWith("<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", next);
        session.Clear();
        Assert.Empty(session.History);
    }
}
