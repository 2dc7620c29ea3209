using FineTune.Models;
using FineTune.Models.Tests;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline.Tests.Stages;

public sealed class MergeStageTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private StageContext Context(string baseDir, string trainDir, MergeConfig merge) =>
        new(new PipelineDefinition { Name = "t", Model = new ModelSection { Source = "scratch" }, Stages = new StagesSection { Merge = merge } },
            _dir.Path, new Dictionary<StageKind, string> { [StageKind.Download] = baseDir, [StageKind.Train] = trainDir },
            Directory.CreateDirectory(_dir.File("out")).FullName, new NullStageProgress(), CancellationToken.None);

    [Fact]
    public void Lora_output_is_folded_into_the_base_model()
    {
        var baseDir = _dir.File("base");
        ScratchModel.Generate(new ScratchModelSpec { NumHiddenLayers = 1 }, baseDir);
        var train = Directory.CreateDirectory(_dir.File("train")).FullName;
        File.WriteAllText(Path.Combine(train, "adapter_config.json"), """{"peft_type": "LORA", "r": 1, "lora_alpha": 3, "target_modules": ["v_proj"]}""");
        var w = new SafetensorsWriter();
        w.Add("base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight", Enumerable.Repeat(1f, 64).ToArray(), [1, 64]);
        w.Add("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight", Enumerable.Repeat(0.5f, 32).ToArray(), [32, 1]);
        w.Save(Path.Combine(train, "adapter_model.safetensors"));

        var result = new MergeStage().Execute(Context(baseDir, train, new MergeConfig()));
        Assert.Equal(1, result.Metrics["merged_weights"]);
        Assert.Equal(3.0, result.Metrics["lora_scale"]);
        using var b = SafetensorsReader.Open(baseDir);
        using var m = SafetensorsReader.Open(_dir.File("out"));
        var before = b.ReadAsFloat32("model.layers.0.self_attn.v_proj.weight");
        var after = m.ReadAsFloat32("model.layers.0.self_attn.v_proj.weight");
        Assert.Equal(before[17] + 1.5f, after[17]); // + 3 · 0.5 · 1
        Assert.Equal(File.ReadAllBytes(Path.Combine(baseDir, "tokenizer.json")), File.ReadAllBytes(_dir.File("out/tokenizer.json")));
    }

    [Fact]
    public void Full_training_output_is_copied_in_the_requested_dtype()
    {
        var baseDir = _dir.File("base");
        ScratchModel.Generate(new ScratchModelSpec { NumHiddenLayers = 1 }, baseDir);
        var train = _dir.File("train");
        ScratchModel.Generate(new ScratchModelSpec { NumHiddenLayers = 1, Seed = 9 }, train);
        File.Delete(Path.Combine(train, "tokenizer.json"));
        new MergeStage().Execute(Context(baseDir, train, new MergeConfig { ExportDtype = ExportDtype.Bfloat16 }));
        using var m = SafetensorsReader.Open(_dir.File("out"));
        Assert.Equal(SafetensorsDType.BF16, m.Get("model.norm.weight").DType);
        Assert.Equal("bfloat16", ModelConfig.Load(_dir.File("out")).TorchDtype);
        Assert.True(File.Exists(_dir.File("out/tokenizer.json")));
    }
}
