using FineTune.Models;
using FineTune.Models.Tests;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline.Tests.Stages;

public sealed class ExportStageTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

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
                Stages = new StagesSection { Export = new ExportConfig { Formats = [ExportFormat.Hf, ExportFormat.Gguf], GgufType = GgufType.Q8_0, System = "You are Tiny." } },
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
        Assert.StartsWith("FROM ./model-q8_0.gguf\nTEMPLATE \"\"\"{{- range .Messages }}<|im_start|>", modelfile);
        Assert.Contains("PARAMETER stop \"<|im_end|>\"\nPARAMETER stop \"<|im_start|>\"\nPARAMETER stop \"<|endoftext|>\"\n", modelfile);
        Assert.EndsWith("SYSTEM \"\"\"You are Tiny.\"\"\"\n", modelfile);
    }
}
