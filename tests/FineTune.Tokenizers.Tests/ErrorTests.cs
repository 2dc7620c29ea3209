namespace FineTune.Tokenizers.Tests;

/// <summary>Unreadable tokenizer files give a TokenizerFormatException naming the file and the JSON path.</summary>
public sealed class ErrorTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("finetune-tokenizer-errors-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string json)
    {
        string path = Path.Combine(_dir, "tokenizer.json");
        File.WriteAllText(path, json);
        return path;
    }

    [Fact]
    public void Missing_file_names_the_path()
    {
        string path = Path.Combine(_dir, "nope.json");
        var e = Assert.Throws<TokenizerFormatException>(() => Tokenizer.FromFile(path));
        Assert.Equal(path, e.Path);
        Assert.Contains("not found", e.Message);
    }

    [Fact]
    public void Directory_without_tokenizer_json_says_what_is_needed()
    {
        var e = Assert.Throws<TokenizerFormatException>(() => Tokenizer.FromDirectory(_dir));
        Assert.Contains("tokenizer.json", e.Message);
    }

    [Fact]
    public void Invalid_json_reports_the_line()
    {
        string path = Write("{\n  \"model\": {\n    \"vocab\": {\"a\": 0,,}\n  }\n}");
        var e = Assert.Throws<TokenizerFormatException>(() => Tokenizer.FromFile(path));
        Assert.Contains("line 3", e.Message);
    }

    [Fact]
    public void Unsupported_model_type_is_named()
    {
        string path = Write("""{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}""");
        var e = Assert.Throws<TokenizerFormatException>(() => Tokenizer.FromFile(path));
        Assert.Contains("model.type", e.Message);
        Assert.Contains("Unigram", e.Message);
    }

    [Fact]
    public void Merge_with_unknown_token_names_its_index()
    {
        string path = Write("""{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b", "a c"]}}""");
        var e = Assert.Throws<TokenizerFormatException>(() => Tokenizer.FromFile(path));
        Assert.Contains("model.merges[1]", e.Message);
    }

    [Fact]
    public void Unsupported_pre_tokenizer_lists_the_supported_ones()
    {
        string path = Write("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "BertPreTokenizer"}}""");
        var e = Assert.Throws<TokenizerFormatException>(() => Tokenizer.FromFile(path));
        Assert.Contains("pre_tokenizer.type", e.Message);
        Assert.Contains("Metaspace", e.Message);
    }

    [Fact]
    public void Split_regex_with_an_unsupported_property_names_it_and_its_offset()
    {
        string path = Write("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\p{Han}+|\\p{L}+"}, "behavior": "Isolated"}]}}""");
        var e = Assert.Throws<TokenizerFormatException>(() => Tokenizer.FromFile(path));
        Assert.Equal(
            $"{path}: pre_tokenizer.pretokenizers[0].pattern: regex \"\\p{{Han}}+|\\p{{L}}+\" at offset 0: the Unicode property \\p{{Han}} is not supported " +
            "(general categories such as L, Lu, M, N, Nd, P, S, Z, C and their long names, or Any); FineTune runs Oniguruma's syntax (HF tokenizers' regex engine) without this construct.",
            e.Message);
    }
}
