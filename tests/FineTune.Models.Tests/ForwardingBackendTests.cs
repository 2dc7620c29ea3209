using System.Reflection;
using FineTune.Engine;
using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests;

/// <summary>
/// The test decorators (<see cref="RecordingBackend"/> on <see cref="ForwardingBackend"/>) see every IBackend member: none
/// falls through to an interface default, and every device operation passes the hook a decorator overrides.
/// </summary>
public sealed class ForwardingBackendTests
{
    /// <summary>IBackend's members that a decorator's type does not declare itself (or inherit from a class).</summary>
    private static string[] NotForwarded(Type decorator)
    {
        var map = decorator.GetInterfaceMap(typeof(IBackend));
        return map.TargetMethods.Where(m => m.DeclaringType!.IsInterface).Select(m => m.Name).Order().ToArray();
    }

    [Fact]
    public void Every_IBackend_member_is_forwarded_none_falls_to_the_interface_default()
    {
        Assert.Empty(NotForwarded(typeof(ForwardingBackend)));
        Assert.Empty(NotForwarded(typeof(RecordingBackend)));
    }

    /// <summary>Device operations: IBackend's methods less host transfers, allocation, synchronisation, graphs and lifetime.</summary>
    private static readonly string[] HostOrLifetime =
        ["AllocateBuffer", "Upload", "Download", "Synchronize", "BindToCurrentThread", "BeginGraphCapture", "EndGraphCapture", "Dispose"];

    [Fact]
    public void Every_device_operation_is_recorded_while_capturing_and_none_runs()
    {
        using var backend = new RecordingBackend(new CpuBackend(1));
        var operations = typeof(IBackend).GetMethods().Where(m => !m.IsSpecialName && !HostOrLifetime.Contains(m.Name)).ToArray();
        Assert.Contains(operations, m => m.Name == "MatMul");
        backend.BeginGraphCapture();
        var missed = new List<string>();
        foreach (var op in operations)
        {
            int before = backend.Pending;
            // Null tensors: an operation that ran instead of being recorded would throw here.
            object?[] args = op.GetParameters().Select(p => p.ParameterType.IsValueType ? Activator.CreateInstance(p.ParameterType) : null).ToArray();
            try { op.Invoke(backend, args); }
            catch (TargetInvocationException) { missed.Add(op.Name); continue; }
            if (backend.Pending != before + 1) missed.Add(op.Name);
        }
        Assert.Null(backend.EndGraphCapture(discard: true));
        Assert.Empty(missed);
    }

    [Fact]
    public void Transfers_allocation_and_synchronisation_are_refused_while_capturing()
    {
        using var backend = new RecordingBackend(new CpuBackend(1));
        var t = backend.Allocate(DType.F32, 2);
        backend.BeginGraphCapture();
        Assert.Equal("an upload while a graph is being recorded", Assert.Throws<NotSupportedException>(() => backend.Upload(t, [1f, 2f])).Message);
        Assert.Equal("a download while a graph is being recorded", Assert.Throws<NotSupportedException>(() => backend.Download(t, new float[2])).Message);
        Assert.Equal("an allocation while a graph is being recorded", Assert.Throws<NotSupportedException>(() => backend.AllocateBuffer(8)).Message);
        Assert.Equal("a synchronisation while a graph is being recorded", Assert.Throws<NotSupportedException>(() => backend.Synchronize()).Message);
        backend.EndGraphCapture(discard: true);
    }
}
