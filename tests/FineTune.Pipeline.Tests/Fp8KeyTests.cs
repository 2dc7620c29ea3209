using FineTune.Models.Tests;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Import;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>stages.train.fp8: what validate refuses, what the key maps to, and the refusal of a device without FP8 tensor cores.</summary>
public sealed class Fp8KeyTests
{
    private static string[] Errors(string trainKeys)
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir, TestPipelines.Full.Replace("    learning_rate: 0.005\n", "    learning_rate: 0.005\n" + trainKeys));
        var e = Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(file));
        return e.Errors.Select(x => $"{x.JsonPath}: {x.Message}").ToArray();
    }

    [Fact]
    public void Fp8_with_full_finetuning_is_a_located_error()
    {
        Assert.Equal(["$.stages.train.fp8: fp8 holds the frozen base weights in FP8, and finetuning_type: full trains every weight: use finetuning_type: lora (or freeze), or remove fp8"],
            Errors("    fp8: true\n    finetuning_type: full\n"));
    }

    [Fact]
    public void Fp8_with_quantization_bit_is_a_located_error()
    {
        Assert.Equal(["$.stages.train.fp8: fp8 and quantization_bit both choose how the frozen base is held (FP8 tensor cores, or bitsandbytes QLoRA): remove one of them"],
            Errors("    fp8: true\n    quantization_bit: 4\n"));
    }

    [Fact]
    public void Fp8_on_device_cpu_is_a_located_error()
    {
        Assert.Equal(["$.stages.train.fp8: fp8 runs on the FP8 tensor cores of a Hopper GPU (sm_90) and the stage says device: cpu: set device: cuda (or auto on a GPU machine), or remove fp8"],
            Errors("    fp8: true\n    device: cpu\n"));
    }

    [Fact]
    public void The_key_maps_to_the_engines_fp8_and_stays_out_of_fingerprints_when_unset()
    {
        Assert.False(TrainStage.Setup(new TrainConfig()).Fp8);
        Assert.True(TrainStage.Setup(new TrainConfig { Fp8 = true }).Fp8);
        Assert.False(TrainStage.Setup(new TrainConfig { Fp8 = false }).Fp8);
        // fp8 and fp8_backend arrive from a LLaMA-Factory config: the first carried, the second ignored with its reason.
        Assert.Equal("stages.train.fp8", LlamaFactoryKeys.Find("fp8")!.Target);
        Assert.Equal(KeyFate.Ignored, LlamaFactoryKeys.Find("fp8_backend")!.Fate);
    }

    [Fact]
    public void Fp8_scaling_keys_without_fp8_or_delayed_scaling_are_located_errors()
    {
        Assert.Equal(["$.stages.train.fp8_scaling: fp8_scaling has no effect without fp8: add fp8: true, or remove fp8_scaling",
                      "$.stages.train.fp8_amax_history: fp8_amax_history has no effect without fp8: add fp8: true, or remove fp8_amax_history"],
            Errors("    fp8_scaling: delayed\n    fp8_amax_history: 16\n"));
        Assert.Equal(["$.stages.train.fp8_amax_history: fp8_amax_history is the history of delayed scaling: add fp8_scaling: delayed, or remove fp8_amax_history"],
            Errors("    fp8: true\n    device: cuda\n    fp8_amax_history: 16\n"));
        Assert.Contains(Errors("    fp8: true\n    device: cuda\n    fp8_scaling: delayed\n    fp8_amax_history: 0\n"), e => e.StartsWith("$.stages.train.fp8_amax_history"));
        Assert.Contains(Errors("    fp8: true\n    device: cuda\n    fp8_scaling: late\n"), e => e.StartsWith("$.stages.train.fp8_scaling"));
    }

    [Fact]
    public void Fp8_scaling_maps_to_the_engines_recipe_and_enters_the_fingerprint_only_when_set()
    {
        var plain = TrainStage.Setup(new TrainConfig { Fp8 = true });
        Assert.Equal((FineTune.Engine.Fp8Scaling.Current, 1024), (plain.Fp8Scaling, plain.Fp8AmaxHistory));
        var delayed = TrainStage.Setup(new TrainConfig { Fp8 = true, Fp8Scaling = Fp8ScalingChoice.Delayed, Fp8AmaxHistory = 16 });
        Assert.Equal((FineTune.Engine.Fp8Scaling.Delayed, 16), (delayed.Fp8Scaling, delayed.Fp8AmaxHistory));
        // A pipeline that never names the keys keeps its fingerprint; naming one (even its default) changes it.
        System.Text.Json.Nodes.JsonObject Fingerprint(string keys)
        {
            using var dir = new TempDir();
            var file = TestPipelines.Write(dir, TestPipelines.Full.Replace("    learning_rate: 0.005\n", "    learning_rate: 0.005\n" + keys));
            return CanonicalJson.FromRecord(PipelineLoader.Load(file).Definition.Stages.Train!);
        }
        var without = Fingerprint("    fp8: true\n    device: cuda\n");
        Assert.False(without.ContainsKey("fp8_scaling") || without.ContainsKey("fp8_amax_history"));
        var named = Fingerprint("    fp8: true\n    device: cuda\n    fp8_scaling: delayed\n    fp8_amax_history: 16\n");
        Assert.Equal("\"delayed\"", CanonicalJson.Serialize(named["fp8_scaling"]));
        Assert.Equal("16", CanonicalJson.Serialize(named["fp8_amax_history"]));
    }

    [Fact]
    public void A_llama_factory_config_with_fp8_imports_and_exports_it()
    {
        using var dir = new TempDir();
        var source = dir.Write("lf.yaml", """
            model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
            stage: sft
            do_train: true
            finetuning_type: lora
            dataset: identity
            template: llama3
            output_dir: saves/x
            fp8: true
            fp8_backend: te
            """);
        var file = dir.File("pipeline.yaml");
        var imported = LlamaFactoryImport.Import(source, RepoRoot.Path, file);
        File.WriteAllText(file, imported.Yaml);
        var p = PipelineLoader.Load(file);
        Assert.True(((TrainConfig)p.Stages.Single(s => s.Name == "train").Block).Fp8);
        Assert.Contains(imported.Notes, n => n.Key == "fp8_backend" && n.Fate == KeyFate.Ignored);
        var (yaml, _) = LlamaFactoryExport.Export(p, "train", dir.File("exported.yaml"), null);
        Assert.Contains("\nfp8: true\n", yaml);
    }

    [Fact]
    public void A_train_stage_with_fp8_on_a_backend_without_fp8_tensor_cores_stops_before_loading_the_model()
    {
        // device: auto resolves to the CPU on the machines that run these tests (no CUDA driver there).
        using var dir = new TempDir();
        var file = ResumeTests.WritePipeline(dir, ResumeTests.Yaml.Replace("train: {device: cpu,", "train: {device: auto, fp8: true,"));
        var e = Assert.ThrowsAny<PipelineUserException>(() =>
            PipelineRunner.CreateDefault().Run(PipelineLoader.Load(file), new RunOptions(), new NullProgress(), default));
        Assert.Equal("stage train: stages.train.fp8: fp8 trains on the CUDA backend of a Hopper GPU (sm_90); the cpu backend has no FP8 tensor cores. Set device: cuda or remove fp8: true.", e.Message);
    }

    private sealed class NullProgress : IStageProgress
    {
        public void Info(string line) { }
        public IProgressTask Start(string description, double total) => new Task();
        private sealed class Task : IProgressTask
        {
            public void Increment(double by) { }
            public void SetDescription(string description) { }
            public void Dispose() { }
        }
    }
}
