using FineTune.Engine;
using FineTune.Models.Quantization;

namespace FineTune.Models;

// adamw_8bit: the arena holds AdamW's moments of large trainable tensors as bitsandbytes' 8-bit block-wise states
// (1 byte per value each, plus an F32 absmax per 256 values) instead of two F32 tensors.
public sealed partial class CausalLM
{
    private readonly Dictionary<Parameter, (int AbsmaxM, int AbsmaxV)> _eightBitMoments = [];
    private int _codeMHandle = -1, _codeVHandle = -1;

    /// <summary>Declares m and v of trainable p: F32, or 8-bit codes (I32-held bytes) with their block absmax.</summary>
    private (int M, int V) PlanMoments(TensorArena.Builder builder, Parameter p)
    {
        if (!Setup.EightBitOptimizerStates || p.Length < Optimizer8bit.MinSize)
            return (builder.Add(p.Name + ".exp_avg", DType.F32, p.Shape), builder.Add(p.Name + ".exp_avg_sq", DType.F32, p.Shape));
        int words = QuantizedWeight.WordsFor(p.Length);
        int blocks = checked((int)((p.Length + Optimizer8bit.BlockSize - 1) / Optimizer8bit.BlockSize));
        if (_codeMHandle < 0)
        {
            _codeMHandle = builder.Add("optimizer.dynamic_map", DType.F32, 256);
            _codeVHandle = builder.Add("optimizer.dynamic_map_unsigned", DType.F32, 256);
        }
        _eightBitMoments[p] = (builder.Add(p.Name + ".exp_avg.absmax", DType.F32, blocks), builder.Add(p.Name + ".exp_avg_sq.absmax", DType.F32, blocks));
        return (builder.Add(p.Name + ".exp_avg", DType.I32, words), builder.Add(p.Name + ".exp_avg_sq", DType.I32, words));
    }

    /// <summary>The 8-bit moments' absmax and code books of p (uploading the code books once), or null for F32 moments.</summary>
    private EightBitMoments? EightBitMomentsOf(Parameter p)
    {
        if (!_eightBitMoments.TryGetValue(p, out var h)) return null;
        var codeM = _weights[_codeMHandle];
        var codeV = _weights[_codeVHandle];
        if (!_eightBitCodesUploaded)
        {
            Backend.Upload(codeM, BnbDynamicMap.Signed);
            Backend.Upload(codeV, BnbDynamicMap.Unsigned);
            _eightBitCodesUploaded = true;
        }
        return new EightBitMoments(_weights[h.AbsmaxM], _weights[h.AbsmaxV], codeM, codeV);
    }

    private bool _eightBitCodesUploaded;

    /// <summary>Bytes of optimizer state over every trainable tensor (the progress line shows it).</summary>
    public long OptimizerStateBytes => _trainable.Sum(t => t.StateBytes);
}
