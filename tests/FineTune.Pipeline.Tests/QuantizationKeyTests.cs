using FineTune.Engine;
using FineTune.Models.Quantization;
using FineTune.Models.Tests;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>The QLoRA and optimizer keys of stages.train: what validate says about them and what they map to.</summary>
public sealed class QuantizationKeyTests
{
    private static string[] Errors(string trainKeys)
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir, TestPipelines.Full.Replace("    learning_rate: 0.005\n", "    learning_rate: 0.005\n" + trainKeys));
        var e = Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(file));
        return e.Errors.Select(x => $"{x.JsonPath}: {x.Message}").ToArray();
    }

    [Fact]
    public void Quantization_with_full_finetuning_is_a_located_error()
    {
        Assert.Equal(["$.stages.train.quantization_bit: quantization_bit needs finetuning_type: lora (a quantized base cannot be trained; LLaMA-Factory allows it with LoRA only), got finetuning_type: full"],
            Errors("    quantization_bit: 4\n    finetuning_type: full\n"));
    }

    [Fact]
    public void A_method_other_than_bnb_is_a_located_error()
    {
        Assert.Equal(["$.stages.train.quantization_method: hqq is not implemented; FineTune quantizes with bnb (bitsandbytes' NF4/FP4 and LLM.int8 formats): use quantization_method: bnb or remove the key"],
            Errors("    quantization_bit: 4\n    quantization_method: hqq\n"));
    }

    [Fact]
    public void Widths_other_than_4_and_8_and_4_bit_keys_without_quantization_are_errors()
    {
        Assert.Equal(["$.stages.train.quantization_bit: 6 is not a bitsandbytes width: use 4 (NF4/FP4) or 8 (LLM.int8)"], Errors("    quantization_bit: 6\n"));
        Assert.Equal(["$.stages.train.quantization_type: quantization_type has no effect without quantization_bit: add quantization_bit: 4 (or 8), or remove quantization_type"],
            Errors("    quantization_type: fp4\n"));
    }

    [Fact]
    public void The_keys_map_to_the_engines_quantization_with_llama_factorys_defaults()
    {
        Assert.Null(FineTune.Pipeline.TrainStage.Setup(new TrainConfig()).Quantization);
        Assert.Equal(new QuantizationSetup(4, QuantFormat.Nf4, true), FineTune.Pipeline.TrainStage.Setup(new TrainConfig { QuantizationBit = 4 }).Quantization);
        Assert.Equal(new QuantizationSetup(4, QuantFormat.Fp4, false),
            FineTune.Pipeline.TrainStage.Setup(new TrainConfig { QuantizationBit = 4, QuantizationType = QuantizationType.Fp4, DoubleQuantization = false }).Quantization);
        Assert.Equal(8, FineTune.Pipeline.TrainStage.Setup(new TrainConfig { QuantizationBit = 8 }).Quantization!.Bits);
    }
}
