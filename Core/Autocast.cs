using ComposerSharp.Interop;
using TorchSharp;

namespace ComposerSharp.Core;

/// <summary>
/// Reads libtorch's autocast (automatic mixed precision) state, which TorchSharp 0.107 does not expose.
/// The functions are libtorch's own <c>at::autocast::*</c> (aten/src/ATen/autocast_mode.h), found at run time in
/// the <c>torch_cpu</c> library that TorchSharp loaded. The state is per thread, as in libtorch.
/// </summary>
public static class Autocast
{
    /// <summary>
    /// True when libtorch's autocast entry points were found on this platform. Where false, the amp precisions
    /// cannot be used (<see cref="AutocastScope"/> throws) and <c>fp32</c> still works.
    /// </summary>
    public static bool IsAvailable => AutocastNative.Instance.Value.Error is null;

    /// <summary>Whether autocast is enabled for <paramref name="deviceType"/> on the calling thread.</summary>
    /// <exception cref="PlatformNotSupportedException">The autocast entry points were not found (see <see cref="IsAvailable"/>).</exception>
    public static bool IsEnabled(DeviceType deviceType) => AutocastNative.Get().IsEnabled(deviceType);

    /// <summary>The autocast (low-precision) dtype for <paramref name="deviceType"/> on the calling thread (libtorch defaults: BFloat16 on CPU, Float16 on CUDA).</summary>
    /// <exception cref="PlatformNotSupportedException">The autocast entry points were not found.</exception>
    public static torch.ScalarType GetDtype(DeviceType deviceType) => AutocastNative.Get().GetDtype(deviceType);

    /// <summary>
    /// The autocast dtype if autocast is enabled for <paramref name="deviceType"/> on this thread, otherwise null.
    /// Returns null, without throwing, where autocast is unavailable.
    /// </summary>
    public static torch.ScalarType? ActiveDtype(DeviceType deviceType)
    {
        AutocastNative native = AutocastNative.Instance.Value;
        if (native.Error is not null || !native.IsEnabled(deviceType))
        {
            return null;
        }

        return native.GetDtype(deviceType);
    }
}

/// <summary>
/// A region of code run under autocast, with the meaning of PyTorch's
/// <c>torch.autocast(device_type, dtype, enabled)</c> context manager: on creation it sets autocast on or off and
/// its dtype for one device type on the calling thread; <see cref="Dispose"/> restores the previous setting (use
/// <c>using</c>, so exceptions restore it too) and, when the outermost scope closes, clears libtorch's cache of
/// casted weights. Scopes nest. Under an enabled CPU BFloat16 scope, <c>matmul</c> and <c>Linear</c> return
/// BFloat16 while the gradients of Float32 parameters stay Float32.
/// </summary>
/// <remarks>
/// libtorch keeps autocast state per thread, so a scope affects only the thread that opened it and must be
/// disposed on that thread. Only the forward pass and the loss belong in a scope, never backward or the
/// optimizer step (PyTorch's AMP recipe).
/// </remarks>
public sealed class AutocastScope : IDisposable
{
    private readonly AutocastNative? _native;
    private readonly bool _previousEnabled;
    private readonly torch.ScalarType _previousDtype;
    private readonly int _threadId;
    private bool _disposed;

    /// <summary>Opens a scope.</summary>
    /// <param name="deviceType">The device type whose autocast state to set (CPU or CUDA).</param>
    /// <param name="dtype">The low-precision dtype: BFloat16 or Float16.</param>
    /// <param name="enabled">False opens a scope that turns autocast off (for a region that must run in Float32).</param>
    /// <exception cref="ArgumentException"><paramref name="dtype"/> is not BFloat16 or Float16, or <paramref name="deviceType"/> is not CPU or CUDA.</exception>
    /// <exception cref="PlatformNotSupportedException">libtorch's autocast entry points were not found on this platform.</exception>
    public AutocastScope(DeviceType deviceType, torch.ScalarType dtype, bool enabled = true)
        : this(deviceType, dtype, enabled, AutocastNative.Get())
    {
    }

    private AutocastScope(DeviceType deviceType, torch.ScalarType dtype, bool enabled, AutocastNative? native)
    {
        RequireSupported(deviceType);
        if (dtype != torch.ScalarType.BFloat16 && dtype != torch.ScalarType.Float16)
        {
            throw new ArgumentException($"Autocast dtype {dtype} is not supported; expected BFloat16 or Float16.", nameof(dtype));
        }

        DeviceType = deviceType;
        Dtype = dtype;
        Enabled = enabled;
        _threadId = Environment.CurrentManagedThreadId;
        _native = native;
        if (native is null)
        {
            return;
        }

        _previousEnabled = native.IsEnabled(deviceType);
        _previousDtype = native.GetDtype(deviceType);
        native.SetDtype(deviceType, dtype);
        native.SetEnabled(deviceType, enabled);
        native.IncrementNesting();
    }

    /// <summary>
    /// A scope that turns autocast off for <paramref name="deviceType"/> and keeps the current autocast dtype, like
    /// <c>torch.autocast(device_type, enabled=False)</c>. Where libtorch's autocast is unavailable it does nothing
    /// (autocast cannot be on there), so <c>fp32</c> works on every platform.
    /// </summary>
    public static AutocastScope Disabled(DeviceType deviceType)
    {
        RequireSupported(deviceType);
        AutocastNative? native = Autocast.IsAvailable ? AutocastNative.Get() : null;
        torch.ScalarType current = native?.GetDtype(deviceType) ?? torch.ScalarType.BFloat16;
        if (current != torch.ScalarType.BFloat16 && current != torch.ScalarType.Float16)
        {
            current = torch.ScalarType.BFloat16;
        }

        return new(deviceType, current, enabled: false, native);
    }

    private static void RequireSupported(DeviceType deviceType)
    {
        if (deviceType != DeviceType.CPU && deviceType != DeviceType.CUDA)
        {
            // libtorch aborts the process (an uncatchable c10::Error) for autocast on other device types.
            throw new ArgumentException($"Autocast on device type {deviceType} is not supported; expected CPU or CUDA.", nameof(deviceType));
        }
    }

    /// <summary>The device type this scope sets.</summary>
    public DeviceType DeviceType { get; }

    /// <summary>The autocast dtype inside this scope.</summary>
    public torch.ScalarType Dtype { get; }

    /// <summary>Whether autocast is on inside this scope.</summary>
    public bool Enabled { get; }

    /// <summary>Restores the autocast state that was in force when the scope opened.</summary>
    /// <exception cref="InvalidOperationException">Called on a different thread than the one that opened the scope.</exception>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        if (Environment.CurrentManagedThreadId != _threadId)
        {
            throw new InvalidOperationException(
                $"An autocast scope opened on thread {_threadId} was disposed on thread {Environment.CurrentManagedThreadId}; libtorch's autocast state is per thread.");
        }

        _disposed = true;
        if (_native is null)
        {
            return;
        }

        _native.SetEnabled(DeviceType, _previousEnabled);
        _native.SetDtype(DeviceType, _previousDtype);
        if (_native.DecrementNesting() == 0)
        {
            _native.ClearCache();
        }
    }
}
