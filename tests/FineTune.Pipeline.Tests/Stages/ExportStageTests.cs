using FineTune.Data.Templates;
using FineTune.Models;
using FineTune.Models.Tests;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline.Tests.Stages;

public sealed class ExportStageTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private StageContext Context(ExportConfig export) => new(
        new PipelineDefinition
        {
            Name = "identity",
            Model = new ModelSection { Source = "scratch" },
            Data = new DataSection { Template = "qwen3" },
            Stages = new StagesSection { Export = export },
        },
        _dir.Path, new Dictionary<StageKind, string> { [StageKind.Merge] = _dir.File("merged") },
        Directory.CreateDirectory(_dir.File("out")).FullName, new NullStageProgress(), CancellationToken.None);

    [Fact]
    public void Several_gguf_types_write_one_file_and_one_modelfile_each()
    {
        ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 256, IntermediateSize = 256, NumHiddenLayers = 1, HeadDim = 64 }, _dir.File("merged"));
        var result = new ExportStage().Execute(Context(new ExportConfig { Formats = [ExportFormat.Gguf], GgufTypes = [GgufType.Q4_K_M, GgufType.Q8_0] }));

        Assert.Equal(
            ["Modelfile-q4_k_m", "Modelfile-q8_0", "model-q4_k_m.gguf", "model-q8_0.gguf"],
            Directory.GetFiles(_dir.File("out/gguf")).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.StartsWith("FROM ./model-q4_k_m.gguf\n", File.ReadAllText(_dir.File("out/gguf/Modelfile-q4_k_m")));
        Assert.StartsWith("FROM ./model-q8_0.gguf\n", File.ReadAllText(_dir.File("out/gguf/Modelfile-q8_0")));
        Assert.Equal(new FileInfo(_dir.File("out/gguf/model-q4_k_m.gguf")).Length, result.Metrics["gguf_bytes_q4_k_m"]);
        Assert.Equal(new FileInfo(_dir.File("out/gguf/model-q8_0.gguf")).Length, result.Metrics["gguf_bytes_q8_0"]);
        Assert.Equal(13, result.Metrics["gguf_tensors_q4_k_m"]); // token_embd, output_norm, 11 in the layer
        Assert.False(result.Metrics.ContainsKey("gguf_bytes"));
        // Tied embeddings of 256-value rows: token_embd is Q6_K, the 7 matrices of the layer Q4_K but ffn_down (Q6_K in
        // the first layers) and attn_v (Q6_K likewise); norms stay F32.
        Assert.Contains("gguf/model-q4_k_m.gguf: qwen3, 13 tensors (5 F32, 5 Q4_K, 3 Q6_K), ", string.Join("\n", result.Notes));
        Assert.Contains($"run: ollama create identity:q4_k_m -f \"$(finetune path \"{_dir.Path}\" --stage export)/gguf/Modelfile-q4_k_m\"", string.Join("\n", result.Notes));
        Assert.Contains($"run: ollama create identity:q8_0 -f \"$(finetune path \"{_dir.Path}\" --stage export)/gguf/Modelfile-q8_0\"", string.Join("\n", result.Notes));
    }

    [Fact]
    public void Hf_and_gguf_formats_write_shards_gguf_and_modelfile()
    {
        ScratchModel.Generate(new ScratchModelSpec(), _dir.File("merged"));
        var ctx = new StageContext(
            new PipelineDefinition
            {
                Name = "identity",
                Model = new ModelSection { Source = "scratch" },
                Data = new DataSection { Template = "qwen3" },
                Stages = new StagesSection { Export = new ExportConfig { Formats = [ExportFormat.Hf, ExportFormat.Gguf], GgufTypes = [GgufType.Q8_0], System = "You are Tiny." } },
            },
            _dir.Path, new Dictionary<StageKind, string> { [StageKind.Merge] = _dir.File("merged") },
            Directory.CreateDirectory(_dir.File("out")).FullName, new NullStageProgress(), CancellationToken.None);
        var result = new ExportStage().Execute(ctx);

        Assert.Equal(1, result.Metrics["hf_shards"]);
        Assert.Equal(File.ReadAllBytes(_dir.File("merged/model.safetensors")), File.ReadAllBytes(_dir.File("out/hf/model.safetensors")));
        Assert.True(File.Exists(_dir.File("out/hf/tokenizer.json")));
        Assert.Equal(24, result.Metrics["gguf_tensors"]); // token_embd, output_norm, 11 per layer
        Assert.Equal(new FileInfo(_dir.File("out/gguf/model-q8_0.gguf")).Length, result.Metrics["gguf_bytes"]);
        var modelfile = File.ReadAllText(_dir.File("out/gguf/Modelfile"));
        // The TEMPLATE is data.template's (qwen3), in Go template syntax: OllamaTemplateTests render it.
        Assert.StartsWith("FROM ./model-q8_0.gguf\nTEMPLATE \"\"\"" + OllamaTemplate.GoTemplate(ChatTemplate.Get("qwen3"), "<|endoftext|>", "<|im_end|>") + "\"\"\"\n", modelfile);
        Assert.Contains("{{ else if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n{{ if and $.IsThinkSet (not $.Think) }}<think>\n\n</think>\n\n{{ end }}", modelfile);
        Assert.Contains("\"\"\"\nPARAMETER stop \"<|im_end|>\"\nPARAMETER stop \"<|endoftext|>\"\nSYSTEM \"\"\"You are Tiny.\"\"\"\n", modelfile);
    }

    [Fact]
    public void Without_data_template_the_modelfile_follows_the_template_recognised_from_the_models_jinja()
    {
        // The scratch qwen3's tokenizer_config.json holds a ChatML template with the think block: FineTune's qwen3.
        ScratchModel.Generate(new ScratchModelSpec(), _dir.File("merged"));
        var ctx = Context(new ExportConfig { Formats = [ExportFormat.Gguf], GgufTypes = [GgufType.F16] });
        ctx = ctx with { Pipeline = ctx.Pipeline with { Data = new DataSection() } };
        var result = new ExportStage().Execute(ctx);
        var modelfile = File.ReadAllText(_dir.File("out/gguf/Modelfile"));
        Assert.StartsWith("FROM ./model-f16.gguf\nTEMPLATE \"\"\"" + OllamaTemplate.GoTemplate(ChatTemplate.Get("qwen3"), "<|endoftext|>", "<|im_end|>") + "\"\"\"\n", modelfile);
        Assert.Contains("data.template is not set: the Modelfile's TEMPLATE is FineTune's qwen3 template, recognised from the model's chat template", result.Notes);
    }
}
