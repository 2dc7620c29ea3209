using System.Diagnostics;
using System.Text.Json;

namespace FineTune.Models.Tests.Formats;

/// <summary>The built-in scratch tokenizer, loaded and run by Hugging Face tokenizers (Rust, via npm).</summary>
public sealed class ScratchTokenizerHfTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task Hf_tokenizers_loads_the_scratch_tokenizer_and_applies_its_merges()
    {
        ScratchModel.Generate(new ScratchModelSpec(), _dir.Path);
        var psi = new ProcessStartInfo("node", [Path.Combine(NodeFixtures.FixturesDir, "hf-reference.js")])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = NodeFixtures.FixturesDir,
        };
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        p.StandardInput.Write(JsonSerializer.Serialize(new { jobs = new[] { new { tokenizer = _dir.File("tokenizer.json"), texts = new[] { "the cat", "<|im_start|>user\nhi<|im_end|>" } } } }));
        p.StandardInput.Close();
        var output = await p.StandardOutput.ReadToEndAsync();
        await p.WaitForExitAsync();
        Assert.True(p.ExitCode == 0, await stderr);
        using var doc = JsonDocument.Parse(output);
        var result = doc.RootElement.GetProperty("results")[0];
        var ids = result.GetProperty("ids").EnumerateArray().Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        Assert.Equal(new[] { 116, 257, 32, 99, 97, 116 }, ids[0]);              // t · he · Ġ · c · a · t
        Assert.Equal(new[] { 265, 117, 115, 259, 10, 104, 105, 266 }, ids[1]);  // <|im_start|> u s er Ċ h i <|im_end|>
        Assert.Equal("the cat", result.GetProperty("decoded")[0].GetString());
    }
}
