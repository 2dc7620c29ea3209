using System.Globalization;

namespace FineTune.Engine.Collectives;

/// <summary>
/// Where a job's ranks meet, read from the variables torchrun sets (and Slurm or Kubeflow's PyTorchJob set the same way):
/// MASTER_ADDR and MASTER_PORT (rank 0 listens there), RANK and WORLD_SIZE (this process among all), LOCAL_RANK and
/// LOCAL_WORLD_SIZE (among this machine's processes; LOCAL_RANK picks the GPU).
/// </summary>
public sealed record Rendezvous(string MasterAddr, int MasterPort, int Rank, int WorldSize, int LocalRank, int LocalWorldSize)
{
    public const string MasterAddrVariable = "MASTER_ADDR", MasterPortVariable = "MASTER_PORT", RankVariable = "RANK",
        WorldSizeVariable = "WORLD_SIZE", LocalRankVariable = "LOCAL_RANK", LocalWorldSizeVariable = "LOCAL_WORLD_SIZE";

    /// <summary>
    /// The rendezvous of this process; null when WORLD_SIZE is unset (a plain single process). A variable that is set but
    /// wrong is a <see cref="CollectiveException"/> naming it.
    /// </summary>
    public static Rendezvous? FromEnvironment(Func<string, string?>? environment = null)
    {
        var env = environment ?? Environment.GetEnvironmentVariable;
        if (string.IsNullOrWhiteSpace(env(WorldSizeVariable))) return null;
        int Int(string name, int? fallback, int min, int max)
        {
            string? text = env(name);
            if (string.IsNullOrWhiteSpace(text))
                return fallback ?? throw new CollectiveException($"{WorldSizeVariable} is set, but {name} is not; launch with `finetune run --nproc-per-node N` or torchrun, which set {MasterAddrVariable}, {MasterPortVariable}, {RankVariable}, {WorldSizeVariable} and {LocalRankVariable}.");
            if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) || v < min || v > max)
                throw new CollectiveException($"{name}={text} is not an integer in [{min}, {max}].");
            return v;
        }
        int world = Int(WorldSizeVariable, null, 1, 65536);
        int rank = Int(RankVariable, world == 1 ? 0 : null, 0, world - 1);
        int localWorld = Int(LocalWorldSizeVariable, world, 1, world);
        int localRank = Int(LocalRankVariable, rank % localWorld, 0, localWorld - 1);
        string addr = env(MasterAddrVariable) is { Length: > 0 } a ? a : world == 1 ? "127.0.0.1"
            : throw new CollectiveException($"{WorldSizeVariable}={world}, but {MasterAddrVariable} is not set; set it to the host of rank 0.");
        int port = Int(MasterPortVariable, world == 1 ? 29500 : null, 1, 65535);
        return new Rendezvous(addr, port, rank, world, localRank, localWorld);
    }

    /// <summary>The variables for one rank, as the launcher passes them to its child.</summary>
    public IReadOnlyDictionary<string, string> Variables() => new Dictionary<string, string>
    {
        [MasterAddrVariable] = MasterAddr,
        [MasterPortVariable] = MasterPort.ToString(CultureInfo.InvariantCulture),
        [RankVariable] = Rank.ToString(CultureInfo.InvariantCulture),
        [WorldSizeVariable] = WorldSize.ToString(CultureInfo.InvariantCulture),
        [LocalRankVariable] = LocalRank.ToString(CultureInfo.InvariantCulture),
        [LocalWorldSizeVariable] = LocalWorldSize.ToString(CultureInfo.InvariantCulture),
    };
}
