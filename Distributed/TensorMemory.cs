using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Distributed;

/// <summary>
/// Raw access to a tensor's storage for the communication libraries: the data pointer (TorchSharp's exported
/// <c>THSTensor_data</c>), a contiguous staging copy for tensors that are not contiguous or whose dtype the
/// library lacks, and the split of element counts above <see cref="int.MaxValue"/> into chunks (the C APIs take
/// <c>int</c> counts).
/// </summary>
internal static class TensorMemory
{
    /// <summary>Largest element count passed to one library call.</summary>
    internal const long MaxChunk = int.MaxValue;

    [DllImport("LibTorchSharp", EntryPoint = "THSTensor_data")]
    private static extern IntPtr THSTensor_data(IntPtr handle);

    /// <summary>The address of <paramref name="tensor"/>'s first element.</summary>
    public static IntPtr DataPointer(Tensor tensor) => THSTensor_data(tensor.Handle);

    /// <summary>
    /// Runs <paramref name="body"/> on a contiguous tensor in <paramref name="wireType"/> holding
    /// <paramref name="tensor"/>'s values: the tensor itself when it already is one, else a staged copy whose result
    /// is copied back into <paramref name="tensor"/> when <paramref name="writeBack"/> is set.
    /// </summary>
    public static void Staged(Tensor tensor, ScalarType wireType, bool writeBack, Action<Tensor> body)
    {
        if (tensor.is_contiguous() && tensor.dtype == wireType)
        {
            body(tensor);
            return;
        }

        using var scope = torch.NewDisposeScope();
        Tensor staged = tensor.to(wireType).contiguous();
        if (ReferenceEquals(staged, tensor) || staged.Handle == tensor.Handle)
        {
            staged = staged.clone();
        }

        body(staged);
        if (writeBack)
        {
            using var noGrad = torch.no_grad();
            tensor.copy_(staged);
        }
    }

    /// <summary>
    /// Calls <paramref name="call"/>(address, count) for consecutive chunks of at most <paramref name="maxChunk"/>
    /// elements covering the <paramref name="numel"/> elements at <paramref name="address"/>.
    /// </summary>
    /// <param name="address">The first element.</param>
    /// <param name="numel">Elements in all.</param>
    /// <param name="elementSize">Bytes per element.</param>
    /// <param name="call">Receives each chunk's address and element count.</param>
    /// <param name="maxChunk">The chunk limit (tests lower it to exercise the split).</param>
    public static void ForEachChunk(IntPtr address, long numel, long elementSize, Action<IntPtr, int> call, long maxChunk = MaxChunk)
    {
        for (long offset = 0; offset < numel; offset += maxChunk)
        {
            int count = (int)Math.Min(maxChunk, numel - offset);
            call(address + (nint)(offset * elementSize), count);
        }
    }

    /// <summary>Bytes per element of <paramref name="type"/>.</summary>
    public static int ElementSize(ScalarType type) => type switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        ScalarType.Byte or ScalarType.Int8 or ScalarType.Bool => 1,
        _ => throw new ArgumentException($"Tensors of dtype {type} cannot be communicated; expected a float, integer or bool tensor.", nameof(type)),
    };
}
