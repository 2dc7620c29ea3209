using System.Text.Json.Nodes;
using FineTune.Models.Tests;

namespace FineTune.Board.Tests;

/// <summary>
/// The board in a real browser: Playwright (npm, tests/fixtures/board-browser.mjs) driving Debian's Chromium
/// (/usr/bin/chromium, installed by .ci/run) over a temp copy of the demo — stage states, a located edit error, the demo
/// run with its loss chart growing, and the fine-tuned model's identity answer beside the base model's.
/// Set FINETUNE_BOARD_SHOTS=DIR to keep a screenshot of each page there (docs/board.md's come from that).
/// </summary>
public sealed class BoardBrowserTests
{
    [Fact]
    public void Demo_SeenTrainedAndChattedWithInTheBrowser()
    {
        Assert.True(File.Exists("/usr/bin/chromium"), "Debian's chromium is missing: apt-get install -y chromium (.ci/run does)");
        Assert.True(File.Exists(Path.Combine(NodeFixtures.FixturesDir, "node_modules", "playwright", "package.json")),
            $"playwright is missing. Install the fixtures with: (cd {NodeFixtures.FixturesDir} && npm ci)");
        // 40 epochs, as the serve tests train the demo: the identity answer is learnt, in about half the demo's time.
        using var demo = new DemoRoot(y => y.Replace("num_train_epochs: 60", "num_train_epochs: 40"));
        var shots = Environment.GetEnvironmentVariable("FINETUNE_BOARD_SHOTS");
        var seen = JsonNode.Parse(NodeFixtures.RunScript("board-browser.mjs", new JsonObject { ["url"] = demo.Address, ["shots"] = shots }.ToJsonString()))!;
        Assert.Null(seen["error"]);
        Assert.Empty(seen["console"]!.AsArray());

        // Pipelines: the graph and the table, every stage with its state and the runner's reason.
        string[] names = ["download", "register", "split", "train", "eval", "merge", "export"];
        Assert.Equal(names, seen["graphNodes"]!.AsArray().Select(n => n!.GetValue<string>()));
        var stages = seen["stages"]!.AsArray();
        Assert.Equal(names, stages.Select(s => s!["name"]!.GetValue<string>()));
        Assert.All(stages, s => Assert.Equal("stale", s!["state"]!.GetValue<string>()));
        Assert.Equal("no cached output", stages[0]!["why"]!.GetValue<string>());
        Assert.Equal("upstream stage download will run first", stages[3]!["why"]!.GetValue<string>());

        // Edit: the misspelt key, located at its line and column, with the key it meant.
        Assert.Equal("pipeline.yaml:39:5: error: $.stages.train.lora_rnk: unknown key 'lora_rnk' in stages.train; did you mean 'lora_rank'?",
            seen["editError"]!["text"]!.GetValue<string>());
        Assert.Equal([39], seen["badGutterLines"]!.AsArray().Select(n => n!.GetValue<int>()));

        // Live training: the chart gained points while it trained; at the end one per logging step (160 steps / 10).
        Assert.Equal("succeeded", seen["runState"]!.GetValue<string>());
        Assert.True(seen["pointsLater"]!.GetValue<int>() >= seen["pointsEarly"]!.GetValue<int>() + 2);
        Assert.Equal(16, seen["pointsAtEnd"]!.GetValue<int>());
        Assert.StartsWith("step 160/160", seen["stats"]!.GetValue<string>());
        Assert.Contains("27 samples, 4 steps per epoch, 160 steps", seen["log"]!.GetValue<string>());

        // Chat: the fine-tuned model knows who it is; the untrained base model does not.
        Assert.Equal("I am FineTune Assistant, an AI assistant made by the FineTune team.", seen["tuned"]!.GetValue<string>());
        Assert.DoesNotContain("FineTune", seen["base"]!.GetValue<string>());
    }
}
