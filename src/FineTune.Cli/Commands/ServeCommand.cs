using System.CommandLine;
using FineTune.Models;
using FineTune.Models.Generation;
using FineTune.Pipeline;
using FineTune.Pipeline.Engine;
using FineTune.Serving;

namespace FineTune.Cli.Commands;

/// <summary>
/// `finetune serve`: an OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models, /health) for a
/// model directory, with LoRA adapters served unmerged beside it, or for a pipeline's up-to-date merge output.
/// </summary>
public sealed class ServeCommand : ICliCommand
{
    public Command Create()
    {
        var model = new Option<string?>("--model") { Description = "HF model directory (config.json, safetensors, tokenizer.json)." };
        var pipeline = new Option<string?>("--pipeline") { Description = "Serve this pipeline's merged model (its merge stage must be up to date)." };
        var adapters = new Option<string[]>("--adapter") { Description = "NAME=DIR: a PEFT LoRA adapter served unmerged as model id NAME (repeatable).", AllowMultipleArgumentsPerToken = false };
        var name = new Option<string?>("--served-model-name") { Description = "Model id of the base model (default: --model as given, or the pipeline's name)." };
        var template = new Option<string?>("--template") { Description = "Chat template (default: the pipeline's data.template, else from the architecture, as `finetune chat`)." };
        var host = new Option<string>("--host") { Description = "Address to bind.", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port (0: any free port; the bound address is printed).", DefaultValueFactory = _ => 8000 };
        var apiKey = new Option<string?>("--api-key") { Description = "Require \"Authorization: Bearer KEY\" on /v1 requests (default: $FINETUNE_API_KEY)." };
        var device = new Option<string>("--device") { Description = "auto, cpu, cuda or cuda:N.", DefaultValueFactory = _ => "auto" };
        var maxBatch = new Option<int>("--max-batch") { Description = "Sequences decoded together.", DefaultValueFactory = _ => 32 };
        var kvBlocks = new Option<int>("--kv-cache-blocks") { Description = "Blocks of 16 positions in the paged KV cache (0: every sequence at the full model length; fewer let more sequences fit, the latest admitted is preempted and recomputed when the pool runs short).", DefaultValueFactory = _ => 0 };
        var noGraphs = new Option<bool>("--no-cuda-graphs") { Description = "Run decode steps eagerly instead of replaying CUDA graphs (also FINETUNE_CUDA_GRAPHS=0)." };
        var maxQueue = new Option<int>("--max-queue") { Description = "Requests that may wait for a slot; beyond, 429 with Retry-After.", DefaultValueFactory = _ => 256 };
        var maxLen = new Option<int?>("--max-model-len") { Description = "Prompt + completion tokens per sequence (default: max_position_embeddings, at most 4096)." };
        var maxBatchTokens = new Option<int>("--max-batch-tokens") { Description = "Tokens through the model per step (prompt chunks + decode tokens).", DefaultValueFactory = _ => 2048 };
        var maxTokens = new Option<int?>("--max-tokens-limit") { Description = "The largest max_tokens a request may ask (400 beyond; default: the model length)." };
        var maxBytes = new Option<long>("--max-request-bytes") { Description = "The largest request body (413 beyond).", DefaultValueFactory = _ => 1 << 20 };
        var command = new Command("serve", "Serve a model over an OpenAI-compatible HTTP API (vLLM's endpoints); SIGTERM drains in-flight requests, then exits.")
        {
            model, pipeline, adapters, name, template, host, port, apiKey, device, maxBatch, maxQueue, maxLen, maxBatchTokens, maxTokens, maxBytes, kvBlocks, noGraphs,
        };
        command.SetAction(r => CliSupport.Guard(ct =>
        {
            string? modelDir = r.GetValue(model), pipelineArg = r.GetValue(pipeline), id = r.GetValue(name), templateName = r.GetValue(template);
            if ((modelDir is null) == (pipelineArg is null))
                throw new PipelineUserException("serve needs exactly one of --model DIR or --pipeline PIPELINE.");
            if (pipelineArg is not null)
            {
                var loaded = CliSupport.Load(pipelineArg);
                var merge = PipelineRunner.CreateDefault().Status(loaded).Stages.LastOrDefault(s => s.Kind == StageKind.Merge)
                    ?? throw new PipelineUserException($"{loaded.FilePath}: the pipeline has no merge stage; serve --pipeline serves the merged model (or use --model with --adapter).");
                if (merge.State != StageState.UpToDate || merge.OutputDirectory is null)
                    throw new PipelineUserException($"{loaded.FilePath}: stage {merge.Name} is not up to date ({merge.Reason}); run `finetune run {pipelineArg}` first, then serve it.");
                modelDir = merge.OutputDirectory;
                id ??= loaded.Definition.Name;
                templateName ??= loaded.Definition.Data.Template;
            }
            if (!File.Exists(Path.Combine(modelDir!, "config.json")))
                throw new PipelineUserException($"--model {modelDir}: no config.json there; pass a Hugging Face model directory (e.g. a merge stage output).");
            var named = new List<NamedAdapter>();
            foreach (string a in r.GetValue(adapters) ?? [])
            {
                int eq = a.IndexOf('=');
                if (eq <= 0 || eq == a.Length - 1) throw new PipelineUserException($"--adapter {a}: expected NAME=DIR (the model id clients use, and the PEFT adapter directory).");
                named.Add(new NamedAdapter(a[..eq], a[(eq + 1)..]));
            }
            void Positive(string option, long value)
            {
                if (value < 1) throw new PipelineUserException($"{option} {value}: must be at least 1.");
            }
            Positive("--max-batch", r.GetValue(maxBatch));
            Positive("--max-batch-tokens", r.GetValue(maxBatchTokens));
            Positive("--max-request-bytes", r.GetValue(maxBytes));
            if (r.GetValue(kvBlocks) < 0) throw new PipelineUserException($"--kv-cache-blocks {r.GetValue(kvBlocks)}: must be 0 (every sequence at the full model length) or more.");
            if (r.GetValue(maxQueue) < 0) throw new PipelineUserException($"--max-queue {r.GetValue(maxQueue)}: must be 0 or more.");
            if (r.GetValue(port) is < 0 or > 65535) throw new PipelineUserException($"--port {r.GetValue(port)}: must be in 0–65535.");
            if (r.GetValue(maxLen) is < 2) throw new PipelineUserException($"--max-model-len {r.GetValue(maxLen)}: must be at least 2.");
            if (r.GetValue(maxTokens) is < 1) throw new PipelineUserException($"--max-tokens-limit {r.GetValue(maxTokens)}: must be at least 1.");
            var config = ModelConfig.Load(Path.Combine(modelDir!, "config.json"));
            var options = new ServeOptions
            {
                ModelDirectory = modelDir!,
                ModelId = id ?? modelDir!,
                Adapters = named,
                Template = templateName ?? ChatCommand.DefaultTemplate(config.ModelType),
                Host = r.GetValue(host)!,
                Port = r.GetValue(port),
                ApiKey = r.GetValue(apiKey) ?? Environment.GetEnvironmentVariable("FINETUNE_API_KEY"),
                Device = r.GetValue(device)!,
                MaxBatch = r.GetValue(maxBatch),
                MaxQueue = r.GetValue(maxQueue),
                MaxModelLength = r.GetValue(maxLen),
                MaxBatchTokens = r.GetValue(maxBatchTokens),
                MaxTokensLimit = r.GetValue(maxTokens),
                MaxRequestBytes = r.GetValue(maxBytes),
                KvCacheBlocks = r.GetValue(kvBlocks),
                CudaGraphs = !r.GetValue(noGraphs),
            };
            try
            {
                using var server = new OpenAiServer(options);
                server.Run(Console.Out, ct);
                return 0;
            }
            catch (ArgumentException e)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return CliSupport.ExitUserError;
            }
            catch (IOException e) when (e.InnerException is System.Net.Sockets.SocketException || e.Message.Contains("address", StringComparison.OrdinalIgnoreCase))
            {
                Console.Error.WriteLine($"error: cannot listen on {options.Host}:{options.Port}: {e.Message}; pick another --port.");
                return CliSupport.ExitUserError;
            }
        }));
        return command;
    }
}
