using System.CommandLine;
using System.Text.Json.Nodes;
using FineTune.Data;
using FineTune.Data.Templates;
using FineTune.Engine;
using FineTune.Models;
using FineTune.Tokenizers;
using FineTune.Training.Chat;

namespace FineTune.Cli.Commands;

/// <summary>`finetune chat`: talk to a model directory (optionally with a LoRA adapter), interactively or one-shot.</summary>
public sealed class ChatCommand : ICliCommand
{
    public Command Create()
    {
        var model = new Option<string>("--model") { Description = "HF model directory (config.json, safetensors, tokenizer.json).", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "PEFT LoRA adapter directory, applied unmerged." };
        var template = new Option<string?>("--template") { Description = $"Chat template: {string.Join(", ", ChatTemplate.Names)} (default: from the architecture)." };
        var system = new Option<string?>("--system") { Description = "System prompt (default: the template's)." };
        var prompt = new Option<string?>("--prompt") { Description = "One-shot: answer this message, print the reply and exit." };
        var maxNew = new Option<int>("--max-new-tokens") { DefaultValueFactory = _ => 512 };
        var doSample = new Option<bool>("--do-sample") { Description = "Sample instead of greedy decoding." };
        var temperature = new Option<double>("--temperature") { DefaultValueFactory = _ => 0.95 };
        var topP = new Option<double>("--top-p") { DefaultValueFactory = _ => 0.7 };
        var topK = new Option<int>("--top-k") { DefaultValueFactory = _ => 50 };
        var repetition = new Option<double>("--repetition-penalty") { DefaultValueFactory = _ => 1.0 };
        var seed = new Option<int>("--seed") { DefaultValueFactory = _ => 0 };
        var device = new Option<string>("--device") { Description = "auto, cpu, cuda or cuda:N.", DefaultValueFactory = _ => "auto" };
        var thinking = new Option<bool>("--enable-thinking") { Description = "Reasoning templates (qwen3): let the model think (default: off, as an empty think block).", };
        var command = new Command("chat", "Chat with a model (history, /clear, /exit) or answer one --prompt.")
        {
            model, adapter, template, system, prompt, maxNew, doSample, temperature, topP, topK, repetition, seed, device, thinking,
        };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            try
            {
                string dir = r.GetValue(model)!;
                if (!File.Exists(Path.Combine(dir, "config.json")))
                    throw new ArgumentException($"--model {dir}: no config.json there; pass a Hugging Face model directory (e.g. a merge stage output)");
                var tokenizer = Tokenizer.FromDirectory(dir);
                var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
                string templateName = r.GetValue(template) ?? DefaultTemplate(config.ModelType);
                var chatTemplate = ChatTemplate.Get(templateName, enableThinking: r.GetValue(thinking));
                using var backend = Backends.Create(r.GetValue(device)!, notice: Console.Error.WriteLine);
                using var lm = CausalLM.Load(dir, backend, TrainingSetup.Inference, r.GetValue(adapter));
                var options = new GenerationOptions
                {
                    MaxNewTokens = r.GetValue(maxNew),
                    DoSample = r.GetValue(doSample),
                    Temperature = r.GetValue(temperature),
                    TopP = r.GetValue(topP),
                    TopK = r.GetValue(topK),
                    RepetitionPenalty = r.GetValue(repetition),
                    Seed = r.GetValue(seed),
                    EosTokenIds = GenerationConfigEos(dir),
                };
                var session = new ChatSession(lm, tokenizer, chatTemplate, r.GetValue(system), options);
                if (r.GetValue(prompt) is { } oneShot)
                {
                    session.Reply(oneShot, Console.Write);
                    Console.WriteLine();
                    return 0;
                }
                Console.WriteLine($"Chatting with {dir}{(r.GetValue(adapter) is { } a ? " + " + a : "")} (template {templateName}). /clear resets the history, /exit quits.");
                while (true)
                {
                    Console.Write("\nUser: ");
                    string? line = Console.ReadLine();
                    if (line is null || line.Trim() == "/exit") return 0;
                    if (line.Trim() == "/clear")
                    {
                        session.Clear();
                        Console.WriteLine("History cleared.");
                        continue;
                    }
                    if (line.Trim().Length == 0) continue;
                    Console.Write("Assistant: ");
                    session.Reply(line, Console.Write);
                    Console.WriteLine();
                }
            }
            catch (Exception e) when (e is ModelFormatException or DatasetException or ArgumentException or NotSupportedException or IOException)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return CliSupport.ExitUserError;
            }
        }));
        return command;
    }

    /// <summary>The chat template an architecture uses when none is named (`chat` and `serve`).</summary>
    internal static string DefaultTemplate(string modelType) => modelType switch
    {
        "qwen3" => "qwen3",
        "qwen2" => "qwen",
        "llama" => "llama3",
        "mistral" => "mistral",
        _ => "default",
    };

    /// <summary>eos_token_id of generation_config.json (a number or a list), when the file is there.</summary>
    private static IReadOnlyList<int> GenerationConfigEos(string dir)
    {
        string path = Path.Combine(dir, "generation_config.json");
        if (!File.Exists(path)) return [];
        return JsonNode.Parse(File.ReadAllText(path))?["eos_token_id"] switch
        {
            JsonArray a => a.Select(x => x!.GetValue<int>()).ToList(),
            JsonValue v => [v.GetValue<int>()],
            _ => [],
        };
    }
}
