namespace ComposerSharp.Core;

/// <summary>
/// A metric whose state is a vector of sums, so that the state over several processes is the element-wise sum of
/// theirs (torchmetrics' <c>dist_reduce_fx="sum"</c> states, synchronised by Composer before <c>compute</c>). The
/// Trainer sums these vectors over the ranks before <see cref="IMetric.Compute"/>, so an evaluation over two
/// ranks' shards equals one over the whole data set. Counts must stay below 2^53 to survive the double encoding.
/// </summary>
public interface IReducibleMetric : IMetric
{
    /// <summary>The state since the last reset, as sums (the same length on every rank).</summary>
    double[] GetState();

    /// <summary>Replaces the state with <paramref name="state"/> (from <see cref="GetState"/>, possibly summed over ranks).</summary>
    /// <exception cref="ArgumentException"><paramref name="state"/> has the wrong length.</exception>
    void SetState(double[] state);
}
