using FineTune.Training;

namespace FineTune.Training.Tests;

public sealed class TrainerLogTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ft-log-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Entry_serialises_with_llama_factory_field_names_and_omits_absent_values()
    {
        var e = new TrainerLogEntry(5, 10, 1.25, null, 1e-4, 0.5, TrainerLogEntry.PercentageOf(5, 10), "0:00:07", "0:00:07", GradNorm: 2.5, Throughput: 100, TotalTokens: 640);
        Assert.Equal(
            "{\"current_steps\":5,\"total_steps\":10,\"loss\":1.25,\"lr\":0.0001,\"epoch\":0.5,\"percentage\":50,\"elapsed_time\":\"0:00:07\",\"remaining_time\":\"0:00:07\",\"grad_norm\":2.5,\"throughput\":100,\"total_tokens\":640}",
            e.ToJson());
    }

    [Theory]
    [InlineData(0, "0:00:00")]
    [InlineData(83.9, "0:01:23")]
    [InlineData(3723, "1:02:03")]
    [InlineData(90061, "1 day, 1:01:01")]
    public void Durations_print_like_python_timedelta(double seconds, string expected) =>
        Assert.Equal(expected, TrainerLogEntry.FormatDuration(seconds));

    [Fact]
    public void Percentage_rounds_to_two_places() => Assert.Equal(33.33, TrainerLogEntry.PercentageOf(1, 3));

    [Fact]
    public void Appended_lines_read_back_in_order()
    {
        var log = new TrainerLog(_dir);
        log.Append(new TrainerLogEntry(1, 2, 3.0, null, 0.1, 0.5, 50, "0:00:01", "0:00:01"));
        log.Append(new TrainerLogEntry(2, 2, null, 2.0, null, 1.0, 100, "0:00:02", "0:00:00"));
        var back = log.ReadAll();
        Assert.Equal([3.0, null], back.Select(e => e.Loss));
        Assert.Equal(2.0, back[1].EvalLoss);
        Assert.Equal(2, File.ReadAllLines(log.Path).Length);
    }

    [Fact]
    public void Smooth_matches_llama_factory_ema()
    {
        // w = 1.8·(1/(1+e^(−0.15)) − 0.5) = 0.0673737…; s = [1, w·1 + (1−w)·2, …].
        Assert.Equal([1.0, 1.9326262783812507, 2.92808706001649], LossPlot.Smooth([1, 2, 3]));
    }

    [Fact]
    public void Plot_writes_loss_svg_with_both_lines_and_eval_svg_when_present()
    {
        var entries = new[]
        {
            new TrainerLogEntry(1, 3, 2.0, null, 0.1, 0.3, 33.33, "0:00:01", "0:00:02"),
            new TrainerLogEntry(2, 3, 1.0, null, 0.1, 0.6, 66.67, "0:00:02", "0:00:01"),
            new TrainerLogEntry(2, 3, null, 1.5, null, 0.6, 66.67, "0:00:02", "0:00:01"),
        };
        var paths = LossPlot.Write(_dir, entries);
        Assert.Equal(["training_loss.svg", "training_eval_loss.svg"], paths.Select(Path.GetFileName));
        string svg = File.ReadAllText(Path.Combine(_dir, "training_loss.svg"));
        Assert.Contains("<polyline id=\"original\"", svg);
        Assert.Contains("<polyline id=\"smoothed\"", svg);
        Assert.StartsWith("<svg xmlns=\"http://www.w3.org/2000/svg\"", svg);
    }

    [Fact]
    public void Plot_of_a_single_logged_loss_draws_one_point()
    {
        // One entry (max_steps 4 with logging_steps 10): the smoothed value 2.2999999999999994 differs from 2.3 by an ulp,
        // and tick spacing below an ulp never advanced (the loop grew until OutOfMemoryException).
        string svg = LossPlot.Render([(4, 2.3)], "training loss", "loss");
        Assert.Contains("<polyline id=\"original\" fill=\"none\" stroke=\"#1f77b4\" stroke-opacity=\"0.4\" stroke-width=\"1.5\" points=\"345,232.5\"/>", svg);
        Assert.Contains(">2.2</text>", svg);
    }
}
