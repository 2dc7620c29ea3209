using System.Buffers.Binary;
using System.Text;

namespace FineTune.Models.Tests.Formats;

public sealed class SafetensorsTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    [Fact]
    public void Single_f32_tensor_file_has_the_exact_bytes_of_the_format()
    {
        var w = new SafetensorsWriter();
        w.Add("a", [1.0f, 2.0f], [2]);
        var path = _dir.File("m.safetensors");
        w.Save(path);

        const string json = """{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""";
        Assert.Equal(85, json.Length);
        var expected = new List<byte>();
        expected.AddRange(BitConverter.GetBytes(88UL)); // 85 bytes of JSON padded to 88
        expected.AddRange(Encoding.ASCII.GetBytes(json + "   "));
        expected.AddRange(new byte[] { 0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0x40 });
        Assert.Equal(expected.ToArray(), File.ReadAllBytes(path));
    }

    [Fact]
    public void Header_length_keeps_data_8_byte_aligned()
    {
        var w = new SafetensorsWriter(new Dictionary<string, string>());
        w.Add("x", [1f], [1]);
        var path = _dir.File("m.safetensors");
        w.Save(path);
        var bytes = File.ReadAllBytes(path);
        var n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, (8 + n) % 8);
        Assert.Equal("""{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}  """, Encoding.ASCII.GetString(bytes, 8, (int)n));
    }

    [Fact]
    public void Mixed_dtypes_are_ordered_by_element_size_then_layer_number()
    {
        var w = new SafetensorsWriter(new Dictionary<string, string>());
        w.Add("layers.10.w", [1f], [1], SafetensorsDType.BF16);
        w.Add("layers.2.w", [1f], [1], SafetensorsDType.BF16);
        w.Add("norm", [1f], [1], SafetensorsDType.F32);
        var path = _dir.File("m.safetensors");
        w.Save(path);
        var bytes = File.ReadAllBytes(path);
        var header = Encoding.ASCII.GetString(bytes, 8, (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes)).TrimEnd();
        Assert.Equal("""{"norm":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"layers.2.w":{"dtype":"BF16","shape":[1],"data_offsets":[4,6]},"layers.10.w":{"dtype":"BF16","shape":[1],"data_offsets":[6,8]}}""", header);
    }

    [Fact]
    public void Bf16_rounds_to_nearest_even()
    {
        Assert.Equal(0x3F80, FloatConversions.SingleToBFloat16(1.00390625f));   // halfway, even below
        Assert.Equal(0x3F82, FloatConversions.SingleToBFloat16(1.01171875f));   // halfway, even above
        Assert.Equal(0x3F81, FloatConversions.SingleToBFloat16(1.0060000f));    // above half → up
        Assert.Equal(0xC040, FloatConversions.SingleToBFloat16(-3.0f));
        Assert.Equal(0x7F80, FloatConversions.SingleToBFloat16(float.PositiveInfinity));
        Assert.True(float.IsNaN(FloatConversions.BFloat16ToSingle(FloatConversions.SingleToBFloat16(float.NaN))));
    }

    [Theory]
    [InlineData(SafetensorsDType.F32)]
    [InlineData(SafetensorsDType.F16)]
    [InlineData(SafetensorsDType.BF16)]
    public void Float_tensors_round_trip_through_reader(SafetensorsDType dtype)
    {
        // Values exactly representable in all three formats.
        float[] values = [0f, 1f, -2.5f, 0.15625f, 1024f, -0.0078125f];
        var w = new SafetensorsWriter();
        w.Add("model.embed_tokens.weight", values, [2, 3], dtype);
        var path = _dir.File("m.safetensors");
        w.Save(path);
        using var r = SafetensorsReader.Open(path);
        var info = r.Get("model.embed_tokens.weight");
        Assert.Equal(dtype, info.DType);
        Assert.Equal(new long[] { 2, 3 }, info.Shape);
        Assert.Equal(6L * dtype.ElementSize(), info.ByteLength);
        Assert.Equal(values, r.ReadAsFloat32("model.embed_tokens.weight"));
        Assert.Equal("pt", r.Metadata["format"]);
    }

    [Fact]
    public void Bf16_bytes_are_the_top_halves_of_f32()
    {
        var w = new SafetensorsWriter();
        w.Add("t", [1f, -2f], [2], SafetensorsDType.BF16);
        var path = _dir.File("m.safetensors");
        w.Save(path);
        using var r = SafetensorsReader.Open(path);
        Assert.Equal(new byte[] { 0x80, 0x3F, 0x00, 0xC0 }, r.GetBytes("t").ToArray());
    }

    [Fact]
    public void Integer_tensors_convert_to_float()
    {
        var w = new SafetensorsWriter();
        w.AddRaw("ids", SafetensorsDType.I64, [3], BitConverter.GetBytes(5L).Concat(BitConverter.GetBytes(-7L)).Concat(BitConverter.GetBytes(1L << 20)).ToArray());
        w.AddRaw("mask", SafetensorsDType.U8, [2], [0, 200]);
        var path = _dir.File("m.safetensors");
        w.Save(path);
        using var r = SafetensorsReader.Open(path);
        Assert.Equal(new float[] { 5, -7, 1 << 20 }, r.ReadAsFloat32("ids"));
        Assert.Equal(new float[] { 0, 200 }, r.ReadAsFloat32("mask"));
    }

    [Fact]
    public void Sharded_save_writes_index_and_reader_opens_the_directory()
    {
        var w = new SafetensorsWriter();
        for (int i = 0; i < 3; i++)
            w.Add($"model.layers.{i}.w", Enumerable.Range(0, 10).Select(v => (float)(v + 10 * i)).ToArray(), [10]);
        var files = w.SaveSharded(_dir.Path, maxShardBytes: 80);
        Assert.Equal(new[] { "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json" }, files);
        Assert.Equal("""
            {
              "metadata": {
                "total_size": 120
              },
              "weight_map": {
                "model.layers.0.w": "model-00001-of-00002.safetensors",
                "model.layers.1.w": "model-00001-of-00002.safetensors",
                "model.layers.2.w": "model-00002-of-00002.safetensors"
              }
            }

            """.ReplaceLineEndings("\n"), File.ReadAllText(_dir.File("model.safetensors.index.json")));
        using var r = SafetensorsReader.Open(_dir.Path);
        Assert.Equal(3, r.Tensors.Count);
        Assert.Equal(_dir.File("model-00002-of-00002.safetensors"), r.Get("model.layers.2.w").FilePath);
        Assert.Equal(25f, r.ReadAsFloat32("model.layers.2.w")[5]);
    }

    [Fact]
    public void Everything_within_the_limit_is_one_file_without_index()
    {
        var w = new SafetensorsWriter();
        w.Add("a", [1f], [1]);
        w.Add("b", [2f], [1]);
        Assert.Equal(new[] { "model.safetensors" }, w.SaveSharded(_dir.Path, maxShardBytes: 1 << 20));
        Assert.False(File.Exists(_dir.File("model.safetensors.index.json")));
    }

    [Fact]
    public void Deferred_tensor_is_filled_at_write_time()
    {
        var w = new SafetensorsWriter();
        w.AddDeferred("d", SafetensorsDType.F32, [2], span => FloatConversions.Encode([3f, 4f], SafetensorsDType.F32, span));
        w.Save(_dir.File("m.safetensors"));
        using var r = SafetensorsReader.Open(_dir.File("m.safetensors"));
        Assert.Equal(new[] { 3f, 4f }, r.ReadAsFloat32("d"));
    }

    [Fact]
    public void Missing_tensor_error_names_the_file_and_tensor()
    {
        var w = new SafetensorsWriter();
        w.Add("a", [1f], [1]);
        var path = _dir.File("m.safetensors");
        w.Save(path);
        using var r = SafetensorsReader.Open(path);
        var e = Assert.Throws<ModelFormatException>(() => r.Get("lm_head.weight"));
        Assert.Equal($"{path}: tensor \"lm_head.weight\" not found among the 1 tensors; the weights do not match the model's config.json (wrong architecture or a partial download).", e.Message);
    }

    [Fact]
    public void Truncated_file_is_reported_with_the_tensor()
    {
        var w = new SafetensorsWriter();
        w.Add("big", new float[16], [16]);
        var path = _dir.File("m.safetensors");
        w.Save(path);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^4]);
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsReader.Open(path));
        Assert.Equal($"{path}: tensor \"big\": data_offsets [0, 64] lie outside the 60 data bytes; the file is truncated.", e.Message);
    }

    [Fact]
    public void Index_naming_a_missing_shard_is_reported()
    {
        _dir.Write("model.safetensors.index.json", """{"metadata": {}, "weight_map": {"w": "model-00001-of-00001.safetensors"}}""");
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsReader.Open(_dir.Path));
        Assert.Equal($"{_dir.File("model.safetensors.index.json")}: shard \"model-00001-of-00001.safetensors\" (holding e.g. tensor \"w\") is missing; download the model again.", e.Message);
    }

    [Fact]
    public void Save_leaves_no_temporary_files()
    {
        var w = new SafetensorsWriter();
        w.Add("a", [1f], [1]);
        w.Save(_dir.File("m.safetensors"));
        Assert.Equal(new[] { "m.safetensors" }, Directory.GetFiles(_dir.Path).Select(Path.GetFileName).ToArray());
    }
    /// <summary>A safetensors file as written by hand: u64 header length, the header text, <paramref name="dataBytes"/> zero bytes.</summary>
    private string RawFile(string header, int dataBytes, byte[]? headerBytes = null)
    {
        var json = headerBytes ?? Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + json.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)json.Length);
        json.CopyTo(bytes, 8);
        var path = _dir.File("m.safetensors");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private ModelFormatException Rejected(string header, int dataBytes)
    {
        var path = RawFile(header, dataBytes);
        return Assert.Throws<ModelFormatException>(() => SafetensorsReader.Open(path));
    }

    [Fact]
    public void Overlapping_tensors_are_rejected_with_both_names()
    {
        var e = Rejected("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 12);
        Assert.Equal($"{_dir.File("m.safetensors")}: tensor \"b\": data_offsets [4, 12] overlap those of tensor \"a\" [0, 8]; the file is corrupt (download it again).", e.Message);
    }

    [Fact]
    public void Shape_whose_element_count_overflows_is_rejected()
    {
        // 2^32 · 2^32 elements wrap to 0 in 64 bits, which matched data_offsets [0, 0] before the check.
        var e = Rejected("""{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}""", 0);
        Assert.Equal($"{_dir.File("m.safetensors")}: tensor \"a\": shape [4294967296, 4294967296] of F32 needs more than 2^63 bytes; the header is corrupt.", e.Message);
    }

    [Fact]
    public void Tensor_named_twice_in_one_header_is_a_format_error()
    {
        var e = Rejected("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8);
        Assert.Equal($"{_dir.File("m.safetensors")}: key \"a\" appears twice; keep one.", e.Message);
    }

    [Fact]
    public void Header_that_is_not_utf8_names_the_offset()
    {
        var header = Encoding.Latin1.GetBytes("""{"café":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""");
        var path = RawFile("", 4, header);
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsReader.Open(path));
        Assert.StartsWith($"{path}: byte 0xE9 at offset 5 (line 1, column 6) is not UTF-8:", e.Message);
    }

    [Theory]
    [InlineData("""{"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}}""", 4, "tensor \"a\": unknown dtype \"F12\".")]
    [InlineData("""{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}""", 4, "tensor \"a\": shape[0] must be a non-negative integer.")]
    [InlineData("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}""", 4, "tensor \"a\": 4 bytes stored but shape [2] of F32 needs 8.")]
    [InlineData("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 4, "tensor \"a\": data_offsets [0, 8] lie outside the 4 data bytes; the file is truncated.")]
    [InlineData("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}""", 4, "tensor \"a\": data_offsets [-4, 0] lie outside the 4 data bytes; the file is truncated.")]
    public void Malformed_header_entry_names_the_file_and_tensor(string header, int dataBytes, string message)
    {
        var e = Rejected(header, dataBytes);
        Assert.Equal($"{_dir.File("m.safetensors")}: {message}", e.Message);
    }

    [Fact]
    public void Absurd_header_length_is_rejected()
    {
        var path = _dir.File("m.safetensors");
        var bytes = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, ulong.MaxValue);
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsReader.Open(path));
        Assert.Equal($"{path}: header length 18446744073709551615 does not fit the file (16 bytes); the file is truncated or not safetensors.", e.Message);
    }

    [Fact]
    public void Weights_linked_to_dev_zero_are_rejected()
    {
        var link = _dir.File("model.safetensors");
        File.CreateSymbolicLink(link, "/dev/zero");
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsReader.Open(_dir.Path));
        Assert.Equal($"{link}: links to /dev/zero, a character device, not a regular file; weights must be regular .safetensors files (download the model again).", e.Message);
    }

    [Fact]
    public void Index_with_a_repeated_tensor_is_a_format_error()
    {
        var index = _dir.Write("model.safetensors.index.json", """{"weight_map": {"w": "a.safetensors", "w": "b.safetensors"}}""");
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsReader.Open(_dir.Path));
        Assert.Equal($"{index}: key \"weight_map.w\" appears twice; keep one.", e.Message);
    }
}
