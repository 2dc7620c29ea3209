using System.Globalization;

namespace FineTune.Models;

/// <summary>
/// gradient_checkpointing: off keeps every layer's activations, on recomputes every layer's forward in the backward
/// (but the last), auto keeps as many as a memory budget allows (<see cref="CheckpointingPlanner"/>).
/// </summary>
public enum CheckpointingMode { Off, On, Auto }

/// <summary>What one decoder layer keeps from its training forward for its backward.</summary>
public enum LayerStorage
{
    /// <summary>Nothing of its own: it runs in a scratch set shared with the other recomputed layers and its forward is
    /// run again before its backward (all its GEMMs a second time).</summary>
    Recompute,
    /// <summary>The GEMM outputs (q, k, v, attention, resMid, gate, up, LoRA xa) and the norm statistics; ln1 = rmsnorm(x),
    /// ln2 = rmsnorm(resMid) and act = silu(gate)·up live in a shared scratch and are recomputed before its backward
    /// (three cheap elementwise passes).</summary>
    Selective,
    /// <summary>Every activation its backward reads.</summary>
    Full,
}

/// <summary>
/// Which layers keep what, for one run shape, and the memory estimate behind the choice. Layers are in three bands from
/// the bottom: [0, R) recompute, [R, R+S) selective, [R+S, L) full. The topmost recompute layer is the last one its
/// shared set held in the forward, so its backward needs no recompute (the 'on' mode has always saved that one).
/// </summary>
public sealed record CheckpointingPlan(
    CheckpointingMode Mode,
    IReadOnlyList<LayerStorage> Layers,
    int Tokens,
    int RecomputedLayers,
    long ActivationBytes,
    long HeldBytes,
    long WorkspaceBytes,
    long? BudgetBytes)
{
    public int FullLayers => Layers.Count(s => s == LayerStorage.Full);
    public int SelectiveLayers => Layers.Count(s => s == LayerStorage.Selective);

    /// <summary>Layers whose GEMMs do not run twice (kept fully, selectively, or the free topmost recomputed one).</summary>
    public int KeptLayers => Layers.Count - RecomputedLayers;

    /// <summary>Weights, gradients, optimizer state and tables already held + the activation arena + op scratch.</summary>
    public long EstimatedPeakBytes => HeldBytes + ActivationBytes + WorkspaceBytes;

    public bool FitsBudget => BudgetBytes is not { } b || EstimatedPeakBytes <= b;

    /// <summary>"checkpointing auto: keeping 20/28 layers (3 selective), est. peak 31.2 GiB of a 40.0 GiB budget".</summary>
    public string Summary
    {
        get
        {
            var sb = new System.Text.StringBuilder($"checkpointing {Mode.ToString().ToLowerInvariant()}: keeping {KeptLayers}/{Layers.Count} layers");
            if (SelectiveLayers > 0) sb.Append(CultureInfo.InvariantCulture, $" ({SelectiveLayers} selective: norms and SwiGLU recomputed)");
            sb.Append(CultureInfo.InvariantCulture, $" at {Tokens} tokens, est. peak {Size(EstimatedPeakBytes)}");
            if (BudgetBytes is { } b)
                sb.Append(CultureInfo.InvariantCulture, $" of a {Size(b)} budget{(FitsBudget ? "" : " (over it: no plan fits, every layer is recomputed)")}");
            return sb.ToString();
        }
    }

    /// <summary>"31.2 GiB", or "3.4 MiB" below a GiB (tiny models).</summary>
    private static string Size(long bytes) => bytes >= 1L << 30
        ? (bytes / (double)(1L << 30)).ToString("F1", CultureInfo.InvariantCulture) + " GiB"
        : (bytes / (double)(1L << 20)).ToString("F1", CultureInfo.InvariantCulture) + " MiB";
}

/// <summary>Bytes of the activation arena for one run shape, split the way the plan spends them.</summary>
/// <param name="Fixed">Residual stream, gradient scratch, LM-head chunk and token tensors: what every plan holds.</param>
/// <param name="FullSet">One layer's full set of saved activations.</param>
/// <param name="SelectiveSet">One layer's saved activations without ln1, ln2 and act.</param>
/// <param name="SelectiveScratch">The shared ln1, ln2 and act a selective layer writes and recomputes into.</param>
public readonly record struct ActivationBytes(long Fixed, long FullSet, long SelectiveSet, long SelectiveScratch);

/// <summary>
/// Chooses the layers' storage for gradient_checkpointing: auto. Recomputing a layer costs its forward GEMMs again;
/// a selective layer removes all of them for (FullSet − ln1 − ln2 − act) bytes, so it removes the most recomputed GEMM FLOPs
/// per byte, and a full layer then removes only the three elementwise recomputes. The planner minimises, in order, the
/// layers whose GEMMs run twice, the selective layers (their elementwise recompute), and the bytes.
/// </summary>
public static class CheckpointingPlanner
{
    /// <summary>Left free of the device's available memory: the caching allocator's rounding and fragmentation, the driver's own.</summary>
    public static long Margin(long totalDeviceBytes) => Math.Max(1L << 30, totalDeviceBytes / 20);

    /// <param name="layers">Decoder layers.</param>
    /// <param name="lowestBackwardLayer">Layers below it have no backward: they are never recomputed and keep nothing.</param>
    /// <param name="bytes">The arena's parts at this shape.</param>
    /// <param name="heldBytes">What the process holds on the device besides the activations (weights, grads, optimizer state).</param>
    /// <param name="workspaceBytes">Scratch the operations allocate inside a step (attention backward, cuBLASLt).</param>
    /// <param name="budgetBytes">The ceiling for held + activations + workspace; null: no ceiling (keep every layer).</param>
    /// <param name="allowSelective">Whether the block's selective recompute applies (llama-style pre-norm SwiGLU blocks).</param>
    public static CheckpointingPlan Choose(int layers, int lowestBackwardLayer, int tokens, ActivationBytes bytes, long heldBytes,
        long workspaceBytes, long? budgetBytes, bool allowSelective = true)
    {
        CheckpointingPlan? best = null;
        (int Recomputed, int Selective, long Bytes) bestKey = default;
        for (int r = 0; r <= layers; r++)
            for (int s = 0; r + s <= (allowSelective ? layers : r); s++)
            {
                var plan = Build(CheckpointingMode.Auto, layers, lowestBackwardLayer, tokens, r, s, bytes, heldBytes, workspaceBytes, budgetBytes);
                if (!plan.FitsBudget) continue;
                var key = (plan.RecomputedLayers, plan.SelectiveLayers, plan.ActivationBytes);
                if (best is null || key.CompareTo(bestKey) < 0) (best, bestKey) = (plan, key);
            }
        // Nothing fits: the least memory there is, every layer recomputed (the summary says it is over the budget).
        return best ?? Build(CheckpointingMode.Auto, layers, lowestBackwardLayer, tokens, layers, 0, bytes, heldBytes, workspaceBytes, budgetBytes);
    }

    /// <summary>The fixed plans of off (every layer full) and on (every layer recomputed).</summary>
    public static CheckpointingPlan Fixed(CheckpointingMode mode, int layers, int lowestBackwardLayer, int tokens, ActivationBytes bytes,
        long heldBytes, long workspaceBytes, long? budgetBytes) => mode switch
    {
        CheckpointingMode.Off => Build(mode, layers, lowestBackwardLayer, tokens, 0, 0, bytes, heldBytes, workspaceBytes, budgetBytes),
        CheckpointingMode.On => Build(mode, layers, lowestBackwardLayer, tokens, layers, 0, bytes, heldBytes, workspaceBytes, budgetBytes),
        _ => throw new ArgumentException("auto is chosen by Choose", nameof(mode)),
    };

    /// <summary>A plan with <paramref name="recompute"/> bottom layers recomputed and the <paramref name="selective"/> above them selective.</summary>
    public static CheckpointingPlan Build(CheckpointingMode mode, int layers, int lowestBackwardLayer, int tokens, int recompute, int selective,
        ActivationBytes bytes, long heldBytes, long workspaceBytes, long? budgetBytes)
    {
        var storage = new LayerStorage[layers];
        for (int l = 0; l < layers; l++)
            storage[l] = l < recompute ? LayerStorage.Recompute : l < recompute + selective ? LayerStorage.Selective : LayerStorage.Full;
        long act = bytes.Fixed + (recompute > 0 ? bytes.FullSet : 0) + selective * bytes.SelectiveSet
            + (selective > 0 ? bytes.SelectiveScratch : 0) + (layers - recompute - selective) * bytes.FullSet;
        int recomputed = RecomputedLayers(storage, lowestBackwardLayer);
        return new CheckpointingPlan(mode, storage, tokens, recomputed, act, heldBytes, workspaceBytes, budgetBytes);
    }

    /// <summary>Layers whose forward runs again in the backward: recompute layers with a backward, but the topmost of them.</summary>
    public static int RecomputedLayers(IReadOnlyList<LayerStorage> storage, int lowestBackwardLayer)
    {
        int top = -1;
        for (int l = 0; l < storage.Count; l++)
            if (storage[l] == LayerStorage.Recompute) top = l;
        int count = 0;
        for (int l = Math.Max(0, lowestBackwardLayer); l < top; l++)
            if (storage[l] == LayerStorage.Recompute) count++;
        return count;
    }

    /// <summary>Whether layer <paramref name="l"/>'s forward runs again before its backward under <paramref name="storage"/>.</summary>
    public static bool Recomputes(IReadOnlyList<LayerStorage> storage, int l)
    {
        if (storage[l] != LayerStorage.Recompute) return false;
        for (int above = l + 1; above < storage.Count; above++)
            if (storage[above] == LayerStorage.Recompute) return true;
        return false;
    }

    /// <summary>
    /// Parses a max_memory value: an integer or decimal number of bytes with an optional unit B, KB, MB, GB, TB (10³ steps)
    /// or KiB, MiB, GiB, TiB (2¹⁰ steps), e.g. "40GiB", "80 GB", "1.5TiB". Null when the text is not such a size.
    /// </summary>
    public static long? ParseBytes(string text)
    {
        var t = text.Trim();
        int i = 0;
        while (i < t.Length && (char.IsAsciiDigit(t[i]) || t[i] == '.')) i++;
        if (i == 0 || !double.TryParse(t[..i], NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double number)) return null;
        double unit = t[i..].Trim() switch
        {
            "" or "B" => 1,
            "KB" => 1e3, "MB" => 1e6, "GB" => 1e9, "TB" => 1e12,
            "KiB" => 1L << 10, "MiB" => 1L << 20, "GiB" => 1L << 30, "TiB" => 1L << 40,
            _ => double.NaN,
        };
        double value = number * unit;
        return double.IsFinite(value) && value >= 1 && value < 9e18 ? (long)value : null;
    }
}
