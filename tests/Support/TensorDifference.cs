using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Support;

/// <summary>Describes how two tensors differ, for the failure message of a bitwise comparison.</summary>
internal static class TensorDifference
{
    /// <summary>
    /// The dtypes and shapes of <paramref name="actual"/> and <paramref name="expected"/> and, where the shapes match,
    /// how many elements differ, the first that does (both values) and the largest absolute difference.
    /// </summary>
    public static string Describe(Tensor actual, Tensor expected)
    {
        string head = $"actual {actual.dtype} [{string.Join(", ", actual.shape)}], expected {expected.dtype} [{string.Join(", ", expected.shape)}]";
        if (!actual.shape.SequenceEqual(expected.shape))
        {
            return head;
        }

        using var scope = torch.NewDisposeScope();
        Tensor a = actual.detach().cpu().flatten().to(ScalarType.Float64);
        Tensor e = expected.detach().cpu().flatten().to(ScalarType.Float64);
        Tensor differs = a.ne(e);
        long count = differs.sum().item<long>();
        if (count == 0)
        {
            return $"{head}; the values are equal as float64";
        }

        long first = differs.nonzero()[0, 0].item<long>();
        double maxAbs = (a - e).abs().nan_to_num(double.PositiveInfinity).max().item<double>();
        return $"{head}; {count} element(s) differ, the first at flat index {first}: actual {a[first].item<double>():R}, " +
            $"expected {e[first].item<double>():R}; max |actual - expected| = {maxAbs:R}";
    }
}
