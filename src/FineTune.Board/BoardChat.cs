using System.Collections.Concurrent;
using FineTune.Data.Templates;
using FineTune.Engine;
using FineTune.Models;
using FineTune.Serving;
using FineTune.Tokenizers;
using FineTune.Training.Chat;

namespace FineTune.Board;

/// <summary>A model the Chat page talks to: a model directory, and a PEFT adapter applied unmerged over it (or none).</summary>
public sealed record ChatModel(string Label, string ModelDirectory, string? Adapter);

/// <summary>What one Chat page message asks of one model.</summary>
public sealed record ChatAsk(string Prompt, string? System, string Template, bool EnableThinking, int MaxNewTokens);

/// <summary>
/// The Chat page's models, loaded once each and answered one request at a time per model, with <see cref="ChatSession"/>
/// (what `finetune chat` answers with: the template rendered as in training, the KV cache, the same stops).
/// </summary>
public sealed class BoardChat(string device) : IDisposable
{
    private readonly ConcurrentDictionary<string, Loaded> _models = new(StringComparer.Ordinal);
    private readonly Lock _loading = new();

    private sealed class Loaded(IBackend backend, CausalLM model, Tokenizer tokenizer, GenerationConfig generation) : IDisposable
    {
        public IBackend Backend { get; } = backend;
        public CausalLM Model { get; } = model;
        public Tokenizer Tokenizer { get; } = tokenizer;
        public GenerationConfig Generation { get; } = generation;
        public Lock Gate { get; } = new();

        public void Dispose()
        {
            Model.Dispose();
            Backend.Dispose();
        }
    }

    /// <summary>Streams the answer's text pieces to <paramref name="onText"/> and returns the whole answer.</summary>
    public string Reply(ChatModel which, ChatAsk ask, Action<string> onText, CancellationToken ct)
    {
        var loaded = Load(which);
        var template = ChatTemplate.Get(ask.Template, enableThinking: ask.EnableThinking);
        var options = new GenerationOptions { MaxNewTokens = Math.Clamp(ask.MaxNewTokens, 1, 2048), EosTokenIds = loaded.Generation.EosTokenIds };
        lock (loaded.Gate)
        {
            ct.ThrowIfCancellationRequested();
            var session = new ChatSession(loaded.Model, loaded.Tokenizer, template, ask.System, options);
            return session.Reply(ask.Prompt, piece => { ct.ThrowIfCancellationRequested(); onText(piece); });
        }
    }

    private Loaded Load(ChatModel which)
    {
        var key = which.ModelDirectory + "\n" + which.Adapter;
        if (_models.TryGetValue(key, out var m)) return m;
        lock (_loading)
        {
            if (_models.TryGetValue(key, out m)) return m;
            var backend = Backends.Create(device);
            try
            {
                var model = CausalLM.Load(which.ModelDirectory, backend, TrainingSetup.Inference, which.Adapter);
                m = new Loaded(backend, model, Tokenizer.FromDirectory(which.ModelDirectory), GenerationConfig.Read(which.ModelDirectory));
            }
            catch
            {
                backend.Dispose();
                throw;
            }
            _models[key] = m;
            return m;
        }
    }

    public void Dispose()
    {
        foreach (var m in _models.Values) m.Dispose();
        _models.Clear();
    }
}
