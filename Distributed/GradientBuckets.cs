using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Distributed;

/// <summary>
/// The gradient all-reduce of data-parallel training, in flattened buckets (PyTorch DDP's <c>Reducer</c>):
/// parameters in reverse order (the order in which backward completes their gradients), grouped into buckets of at
/// most <c>bucketBytes</c> of one dtype and device; each bucket is one contiguous buffer allocated once, so one
/// collective moves many small gradients. Per step: copy the gradients in, optionally multiply by this rank's
/// weight, all-reduce SUM, multiply by the normaliser, copy back. A parameter without a gradient contributes zeros
/// and is left without one (every rank must then agree on which parameters are used, as DDP without
/// <c>find_unused_parameters</c> requires).
/// </summary>
internal sealed class GradientBuckets : IDisposable
{
    private readonly List<Bucket> _buckets;

    private GradientBuckets(List<Bucket> buckets) => _buckets = buckets;

    /// <summary>The buckets' sizes in elements (for tests and logs).</summary>
    public IReadOnlyList<long> BucketElements => _buckets.Select(b => b.Flat.numel()).ToList();

    /// <summary>The parameters, in the order they were given.</summary>
    public IReadOnlyList<Parameter> Parameters { get; private init; } = Array.Empty<Parameter>();

    /// <summary>Plans buckets for <paramref name="parameters"/> (in model order; they are bucketed in reverse).</summary>
    public static GradientBuckets Build(IReadOnlyList<Parameter> parameters, long bucketBytes)
    {
        var buckets = new List<Bucket>();
        var current = new List<Parameter>();
        long bytes = 0;
        void Close()
        {
            if (current.Count == 0)
            {
                return;
            }

            long total = current.Sum(p => p.numel());
            Tensor flat = torch.zeros(total, dtype: current[0].dtype, device: current[0].device).DetachFromDisposeScope();
            buckets.Add(new Bucket(flat, current.ToArray()));
            current = new List<Parameter>();
            bytes = 0;
        }

        foreach (Parameter p in parameters.Reverse())
        {
            long size = p.numel() * TensorMemory.ElementSize(p.dtype);
            if (current.Count > 0 && (current[0].dtype != p.dtype || !SameDevice(current[0].device, p.device) || bytes + size > bucketBytes))
            {
                Close();
            }

            current.Add(p);
            bytes += size;
        }

        Close();
        return new GradientBuckets(buckets) { Parameters = parameters };
    }

    /// <summary>
    /// Replaces every gradient g_r by postScale · Σ_ranks (preScale_r · g_r).
    /// </summary>
    /// <param name="group">The ranks.</param>
    /// <param name="preScale">This rank's weight (1 to skip the multiplication).</param>
    /// <param name="postScale">The normaliser applied to the sum.</param>
    /// <param name="onBucket">Optional observer of each bucket's collective (for timing).</param>
    public void AllReduce(IProcessGroup group, double preScale, double postScale, Action<long>? onBucket = null)
    {
        using var noGrad = torch.no_grad();
        foreach (Bucket bucket in _buckets)
        {
            using var scope = torch.NewDisposeScope();
            var grads = new Tensor?[bucket.Params.Length];
            long offset = 0;
            for (int i = 0; i < bucket.Params.Length; i++)
            {
                Parameter p = bucket.Params[i];
                long n = p.numel();
                Tensor segment = bucket.Flat.narrow(0, offset, n);
                Tensor? grad = p.grad;
                grads[i] = grad;
                if (grad is null)
                {
                    segment.zero_();
                }
                else
                {
                    segment.copy_(grad.reshape(-1));
                }

                offset += n;
            }

            if (preScale != 1.0)
            {
                bucket.Flat.mul_(preScale);
            }

            group.AllReduce(bucket.Flat, ReduceOp.Sum);
            onBucket?.Invoke(bucket.Flat.numel());
            if (postScale != 1.0)
            {
                bucket.Flat.mul_(postScale);
            }

            offset = 0;
            for (int i = 0; i < bucket.Params.Length; i++)
            {
                long n = bucket.Params[i].numel();
                grads[i]?.copy_(bucket.Flat.narrow(0, offset, n).view(grads[i]!.shape));
                offset += n;
            }
        }
    }

    /// <summary>Frees the bucket buffers.</summary>
    public void Dispose()
    {
        foreach (Bucket bucket in _buckets)
        {
            bucket.Flat.Dispose();
        }

        _buckets.Clear();
    }

    private static bool SameDevice(Device a, Device b) => a.type == b.type && a.index == b.index;

    private sealed record Bucket(Tensor Flat, Parameter[] Params);
}
