using FineTune.Training;

namespace FineTune.Training.Tests;

public sealed class CheckpointStoreTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ft-ckpt-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static void WriteFile(string dir, string name, string text) => File.WriteAllText(Path.Combine(dir, name), text);

    [Fact]
    public void Save_creates_checkpoint_directory_with_contents()
    {
        var store = new CheckpointStore(_dir);
        string path = store.Save(7, d => WriteFile(d, "a.txt", "seven"));
        Assert.Equal(Path.Combine(_dir, "checkpoint-7"), path);
        Assert.Equal("seven", File.ReadAllText(Path.Combine(path, "a.txt")));
    }

    [Fact]
    public void Failure_mid_write_leaves_previous_checkpoint_intact_and_no_partial_one()
    {
        var store = new CheckpointStore(_dir);
        store.Save(2, d => WriteFile(d, "a.txt", "two"));
        Assert.Throws<IOException>(() => store.Save(4, d =>
        {
            WriteFile(d, "a.txt", "four, half");
            throw new IOException("disk unplugged");
        }));
        Assert.Equal([2], store.List().Select(c => c.Step));
        Assert.Equal("two", File.ReadAllText(Path.Combine(store.Latest()!, "a.txt")));
        Assert.Single(Directory.GetDirectories(_dir));
    }

    [Fact]
    public void Stale_temporary_directories_are_removed_and_never_listed()
    {
        Directory.CreateDirectory(Path.Combine(_dir, ".tmp-checkpoint-9-abc"));
        var store = new CheckpointStore(_dir);
        Assert.Empty(store.List());
        Assert.Equal(1, store.RemoveIncomplete());
        Assert.Empty(Directory.GetDirectories(_dir));
    }

    [Fact]
    public void Save_total_limit_keeps_the_newest()
    {
        var store = new CheckpointStore(_dir);
        foreach (int step in new[] { 5, 10, 15, 20 }) store.Save(step, d => WriteFile(d, "s", $"{step}"), saveTotalLimit: 2);
        Assert.Equal([15, 20], store.List().Select(c => c.Step));
    }

    [Fact]
    public void Steps_sort_numerically_not_lexically()
    {
        var store = new CheckpointStore(_dir);
        store.Save(100, d => WriteFile(d, "s", "100"));
        store.Save(20, d => WriteFile(d, "s", "20"));
        Assert.EndsWith("checkpoint-100", store.Latest());
    }

    [Fact]
    public void Resume_true_without_checkpoints_is_no_checkpoint()
    {
        Assert.Null(new CheckpointStore(_dir).Resolve("true"));
    }

    [Fact]
    public void Resume_path_without_trainer_state_is_rejected()
    {
        var e = Assert.Throws<TrainingException>(() => new CheckpointStore(_dir).Resolve(_dir));
        Assert.Contains("trainer_state.json", e.Message);
    }
}
