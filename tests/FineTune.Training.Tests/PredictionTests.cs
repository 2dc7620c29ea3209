using FineTune.Training.Evaluation;

namespace FineTune.Training.Tests;

public sealed class PredictionTests
{
    [Fact]
    public void Label_is_the_last_trained_run_and_prompt_everything_before_it()
    {
        // Two turns: the first answer (7, 8) is history, the second (11, 12) is the label.
        var p = PredictionSet.FromSample([1, 2, 7, 8, 9, 10, 11, 12], [-100, -100, 7, 8, -100, -100, 11, 12], [8]).Single();
        Assert.Equal([1, 2, 7, 8, 9, 10], p.PromptIds);
        Assert.Equal([11, 12], p.LabelIds);
    }

    [Fact]
    public void Each_packed_sequence_gives_its_own_prompt()
    {
        var ps = PredictionSet.FromSample([1, 5, 2, 6, 7], [-100, 5, -100, 6, 7], [2, 3]).ToList();
        Assert.Equal([[1], [2]], ps.Select(p => p.PromptIds));
        Assert.Equal([[5], [6, 7]], ps.Select(p => p.LabelIds));
    }
}
