using FineTune.Models.Tests;
using FineTune.Pipeline.Validation;
using NJsonSchema;
using System.Globalization;
using System.Text.Json.Nodes;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace FineTune.Pipeline.Tests;

public sealed class SchemaTests
{
    private static string SchemaPath => Path.Combine(RepoRoot.Path, "schemas", "pipeline.schema.json");

    [Fact]
    public void CheckedInSchemaMatchesTheConfigurationTypes()
    {
        var expected = PipelineSchema.GenerateJson();
        var actual = File.ReadAllText(SchemaPath);
        Assert.True(expected == actual,
            "schemas/pipeline.schema.json is stale; regenerate it: dotnet run --project src/FineTune.Cli -- schema -o schemas/pipeline.schema.json");
    }

    private static async Task<ICollection<NJsonSchema.Validation.ValidationError>> ValidateWithSchema(string yaml)
    {
        var schema = await JsonSchema.FromJsonAsync(File.ReadAllText(SchemaPath));
        var stream = new YamlStream();
        stream.Load(new StringReader(yaml));
        return schema.Validate(ToJson(stream.Documents[0].RootNode)!.ToJsonString());
    }

    [Fact]
    public async Task ExamplePipelinePassesTheSchema()
    {
        var errors = await ValidateWithSchema(File.ReadAllText(Path.Combine(RepoRoot.Path, "pipelines", "identity", "pipeline.yaml")));
        Assert.Empty(errors);
    }

    [Fact]
    public async Task SchemaRejectsWhatTheLoaderRejects()
    {
        var yaml = TestPipelines.Full.Replace("learning_rate: 0.005", "lerning_rate: 0.005\n    lora_rank: 0");
        var errors = await ValidateWithSchema(yaml);
        Assert.Equal(["NoAdditionalPropertiesAllowed lerning_rate", "NumberTooSmall lora_rank"],
            errors.SelectMany(Flatten).Select(e => $"{e.Kind} {e.Property}").Order());
        using var dir = new TempDir();
        var loaderErrors = Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(TestPipelines.Write(dir, yaml))).Errors;
        Assert.Equal(["$.stages.train.lerning_rate", "$.stages.train.lora_rank"], loaderErrors.Select(e => e.JsonPath));
    }

    [Fact]
    public async Task SchemaTakesOneGgufTypeOrAListOfThem()
    {
        string With(string value) => TestPipelines.Full.Replace("formats: [hf]", "formats: [gguf]\n    gguf_type: " + value);
        Assert.Empty(await ValidateWithSchema(With("q4_k_m")));
        Assert.Empty(await ValidateWithSchema(With("[q4_k_m, q8_0, f16]")));
        Assert.NotEmpty(await ValidateWithSchema(With("q4_km")));
        Assert.NotEmpty(await ValidateWithSchema(With("[q4_k_m, q9]")));
    }

    private const string NamedStages = """
        name: named
        model: {source: scratch}
        data: {dataset: [identity], template: qwen3}
        stages:
          download: {}
          register: {}
          split: {cutoff_len: 256}
          sft: {kind: train, finetuning_type: lora}
          pref_register: {kind: register, dataset: [identity_pref]}
          pref_split: {kind: split, from: pref_register}
          dpo: {kind: train, learning_rate: 0.001, from: [sft, pref_split]}
          eval: {from: dpo}
          merge: {kind: merge, from: dpo}
          export: {}
        """;

    [Fact]
    public async Task SchemaTakesNamedStagesWhoseKindPicksTheirKeys()
    {
        Assert.Empty(await ValidateWithSchema(NamedStages));
        async Task<string[]> Kinds(string from, string to)
        {
            Assert.Contains(from, NamedStages);
            return (await ValidateWithSchema(NamedStages.Replace(from, to))).SelectMany(Flatten).Select(e => $"{e.Kind} {e.Property}").Distinct().Order().ToArray();
        }
        // No kind: no alternative of the named form fits.
        Assert.Contains("PropertyRequired kind", await Kinds("sft: {kind: train, finetuning_type: lora}", "sft: {finetuning_type: lora}"));
        // A train key in a split stage, an unknown kind, a name outside [a-z][a-z0-9_]*, kind: contradicting a kind's name.
        Assert.Contains("NoAdditionalPropertiesAllowed learning_rate", await Kinds("pref_split: {kind: split,", "pref_split: {kind: split, learning_rate: 0.1,"));
        Assert.Contains("NotInEnumeration kind", await Kinds("sft: {kind: train,", "sft: {kind: trian,"));
        Assert.Equal(["NoAdditionalPropertiesAllowed Sft"], await Kinds("sft: {kind: train,", "Sft: {kind: train,"));
        Assert.Equal(["NotInEnumeration kind"], await Kinds("merge: {kind: merge,", "merge: {kind: eval,"));
    }

    /// <summary>YAML 1.2 core schema: plain scalars that look like null/bool/number become those; the rest strings.</summary>
    private static JsonNode? ToJson(YamlNode node) => node switch
    {
        YamlMappingNode m => new JsonObject(m.Children.Select(kv => KeyValuePair.Create(((YamlScalarNode)kv.Key).Value!, ToJson(kv.Value)))),
        YamlSequenceNode s => new JsonArray(s.Children.Select(ToJson).ToArray()),
        YamlScalarNode { Style: ScalarStyle.Plain, Value: null or "" or "~" or "null" } => null,
        YamlScalarNode { Style: ScalarStyle.Plain, Value: "true" or "false" } b => JsonValue.Create(b.Value == "true"),
        YamlScalarNode { Style: ScalarStyle.Plain } n when long.TryParse(n.Value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l) => JsonValue.Create(l),
        YamlScalarNode { Style: ScalarStyle.Plain } n when double.TryParse(n.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) => JsonValue.Create(d),
        YamlScalarNode s => JsonValue.Create(s.Value),
        _ => throw new InvalidOperationException(node.GetType().Name),
    };

    private static IEnumerable<NJsonSchema.Validation.ValidationError> Flatten(NJsonSchema.Validation.ValidationError e) =>
        e is NJsonSchema.Validation.ChildSchemaValidationError c ? c.Errors.SelectMany(kv => kv.Value).SelectMany(Flatten) : [e];
}
