namespace FineTune.Models;

/// <summary>Weights read from a model directory's safetensors (one file or shards with an index).</summary>
public sealed class SafetensorsWeights(SafetensorsReader reader, string source) : IWeightSource
{
    public bool Contains(string name) => reader.Contains(name);

    public void Read(string name, ReadOnlySpan<int> shape, Span<float> destination)
    {
        var info = reader.Get(name);
        if (info.Shape.Count != shape.Length || !info.Shape.Select(x => (int)x).SequenceEqual(shape.ToArray()))
            throw new ModelFormatException(info.FilePath,
                $"tensor \"{name}\" has shape [{string.Join(", ", info.Shape)}] but {source}/config.json implies [{string.Join(", ", shape.ToArray())}]; the weights and the config disagree.");
        reader.ReadAsFloat32(name, destination);
    }
}
