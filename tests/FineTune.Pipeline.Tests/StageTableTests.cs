using FineTune.Pipeline.Config;

namespace FineTune.Pipeline.Tests;

/// <summary>The one table of stage kinds that the runner, status, dag, the lock and the checks read.</summary>
public sealed class StageTableTests
{
    [Fact]
    public void EveryKindIsDescribedOnceInPipelineOrder()
    {
        Assert.Equal(Enum.GetValues<StageKind>(), StageTable.All.Select(d => d.Kind));
        Assert.Equal(["download", "register", "split", "train", "eval", "merge", "export"], StageTable.All.Select(d => d.Name));
        Assert.Equal(Enum.GetValues<StageKind>(), StageRegistry.CreateDefault().Select(e => e.Kind));
    }

    [Fact]
    public void AStageReadsOnlyStagesBeforeIt()
    {
        foreach (var d in StageTable.All)
            Assert.All(d.Reads, up => Assert.True(up < d.Kind, $"{d.Name} reads {up}, which runs after it"));
        Assert.Equal([StageKind.Download, StageKind.Split, StageKind.Train], StageGraph.Upstream(StageKind.Eval));
    }

    [Fact]
    public void ABlockIsFoundThroughTheTable()
    {
        var stages = new StagesSection { Train = new TrainConfig { LoraRank = 4 }, Export = new ExportConfig() };
        Assert.Equal([StageKind.Train, StageKind.Export], stages.All.Select(s => s.Kind));
        Assert.Equal(4, ((TrainConfig)stages["train"]!.Block).LoraRank);
        Assert.Equal(typeof(TrainConfig), StageTable.Of(StageKind.Train).Block);
    }
}
